"""The benchmark phases, each against its own server process, and the figures they yield.

Phases, in run order:

- ``bare``: the bare aiohttp ceiling, 1 and 50 alerts per request;
- ``daemon``: two fresh daemons, one bench rule vs 1,000 unrelated rules plus the bench
  rule; start-up of each, then 1 alert/request at max rate, taking turns;
- ``latency``: a fresh daemon at fixed offered rates, webhook sent → decision recorded;
- ``memory``: idle RSS, then 100,000 alerts at 50 per request, RSS/HWM once drained;
- ``overload``: a small backlog bound, load far above capacity; 503s, peak RSS, and every
  accepted alert decided exactly once;
- ``matching``: in process, regex matching cost of hostile patterns as the label value
  grows (RE2: linear).

A phase that cannot run (the daemon does not start, an API answers nonsense) is reported
and the others still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import daemon, decisions, ha, loadgen, matching, procs, report
from bench.report import Figure

STARTUP_TIMEOUT = 30.0
CONNECTIONS = 32
OVERLOAD_CONNECTIONS = 64
OVERLOAD_BACKLOG = 200

S_ONE = "throughput, 1 alert/request"
S_BATCH = "throughput, 50 alerts/request"
S_CPU = "CPU per accepted alert"
S_LATENCY = "latency webhook → decision"
S_OVERLOAD = "overload"
S_MEMORY = "memory"
S_STARTUP = "start-up"
S_RULES = "cost vs rule count"
S_MATCHING = "regex matching cost"


@dataclasses.dataclass(frozen=True)
class Profile:
    """How long and how big each phase is."""

    name: str
    #: Closed-loop runs at 1 alert/request: seconds and alerts, whichever ends first.
    max_seconds: float
    max_alerts: int
    #: Bare server at 50 alerts/request.
    batch_seconds: float
    batch_alerts: int
    #: Each fixed-rate latency run, seconds.
    latency_seconds: float
    #: Alerts to have accepted before the "after N alerts" memory figure, and the bound
    #: in seconds on getting there.
    memory_alerts: int
    memory_seconds: float
    #: Overload run: seconds and offered alerts/s (50 per request).
    overload_seconds: float
    overload_rate: float
    #: Waiting for decisions: overall bound, and give up after this long without progress.
    drain_timeout: float
    drain_idle: float
    #: Seconds the daemon sits idle before its idle RSS is read.
    settle_seconds: float
    #: Label value sizes (bytes) the regex patterns are matched against, ascending; the
    #: last two 16x apart so their ratio shows the growth. Runs per size (median).
    matching_sizes: tuple[int, ...]
    matching_repeats: int


FULL = Profile(
    name="full",
    max_seconds=10,
    max_alerts=30_000,
    batch_seconds=5,
    batch_alerts=100_000,
    latency_seconds=10,
    memory_alerts=100_000,
    memory_seconds=60,
    overload_seconds=10,
    overload_rate=30_000,
    drain_timeout=90,
    drain_idle=5,
    settle_seconds=2,
    matching_sizes=(1 << 10, 1 << 12, 1 << 14, 1 << 18),
    matching_repeats=3,
)

QUICK = Profile(
    name="quick",
    max_seconds=2,
    max_alerts=3_000,
    batch_seconds=1,
    batch_alerts=20_000,
    latency_seconds=2,
    memory_alerts=10_000,
    memory_seconds=10,
    overload_seconds=2,
    overload_rate=30_000,
    drain_timeout=20,
    drain_idle=3,
    settle_seconds=0.5,
    matching_sizes=(1 << 10, 1 << 12, 1 << 16),
    matching_repeats=1,
)

PHASES = ("bare", "daemon", "latency", "memory", "overload", "matching", "ha")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _load_note(result: loadgen.LoadResult) -> str:
    parts = [f"{result.accepted_count:,} accepted in {result.elapsed:.1f} s"]
    rejected = sum(n for code, n in result.requests_by_status.items() if not 200 <= code < 300)
    if rejected:
        codes = ", ".join(
            f"{n:,}x{code}" for code, n in sorted(result.requests_by_status.items()) if code >= 300
        )
        parts.append(f"requests rejected: {codes}")
    if result.errors:
        parts.append("errors: " + ", ".join(f"{n:,}x{e}" for e, n in result.errors.items()))
    return "; ".join(parts)


class Suite:
    """Runs the phases and collects figures, raw details and problems."""

    def __init__(
        self, *, profile: Profile, workdir: Path, python: str, only: frozenset[str]
    ) -> None:
        self.profile = profile
        self.workdir = workdir
        self.python = python
        self.only = only
        self.figures: list[Figure] = []
        self.details: dict[str, Any] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self._run_ids = itertools.count(secrets.randbelow(0xF00000))
        self._accepted_1: dict[str, float] = {}
        self._decided_1: dict[str, float] = {}
        self._accepted_50: dict[str, float] = {}
        #: CPU seconds and accepted alerts per measured server and batch size.
        self._cpu: dict[str, tuple[float, int]] = {}

    # -- plumbing ----------------------------------------------------------------------

    def _figure(
        self,
        section: str,
        label: str,
        *,
        value: float | None,
        unit: str,
        target: report.Target = report.NO_TARGET,
        note: str = "",
    ) -> None:
        self.figures.append(Figure(section, label, value, unit, target, note))

    def _run_id(self) -> str:
        return f"{next(self._run_ids) % 0x1000000:06x}"

    @contextlib.asynccontextmanager
    async def _running(self, server: procs.ServerProcess) -> AsyncIterator[procs.ServerProcess]:
        await server.start()
        try:
            yield server
        finally:
            code = await server.stop()
            if code != 0:
                self.warnings.append(
                    f"{server.name} (pid {server.pid}) exited with code {code} after SIGTERM "
                    f"(log: {server.log_path})"
                )

    async def _ready(self, server: procs.ServerProcess) -> tuple[float, float]:
        """Seconds from spawn to ``/healthz`` 200 and to the first accepted webhook."""
        factory = loadgen.PayloadFactory(
            run_id=self._run_id(),
            starts_at=loadgen.rfc3339_utc(
                datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
            ),
        )
        body, _ = factory.body(range(1))
        healthy, accepted = await asyncio.gather(
            server.wait_http(method="GET", path="/healthz", timeout=STARTUP_TIMEOUT),
            server.wait_http(
                method="POST",
                path=daemon.WEBHOOK_PATH,
                body=body,
                headers=loadgen.JSON_HEADERS,
                timeout=STARTUP_TIMEOUT,
            ),
        )
        print(
            f"  {server.name}: healthy after {healthy:.2f} s, first webhook accepted "
            f"after {accepted:.2f} s (pid {server.pid})",
            flush=True,
        )
        return healthy, accepted

    async def _load(
        self,
        server: procs.ServerProcess,
        key: str,
        *,
        rate: float | None,
        per_request: int,
        count: int,
        duration: float,
        connections: int = CONNECTIONS,
        cpu_key: str = "",
    ) -> loadgen.LoadResult:
        """One load run. With ``cpu_key``, the server's CPU time from the first request
        until it is idle again (its backlog decided, journal and audit written) is added
        up under that key, with the alerts it accepted."""
        cpu_before = server.cpu_seconds() if cpu_key else 0.0
        spec = loadgen.LoadSpec(
            url=server.base_url + daemon.WEBHOOK_PATH,
            rate=rate,
            per_request=per_request,
            count=count,
            duration=duration,
            connections=connections,
            run_id=self._run_id(),
        )
        result = await loadgen.run_load(spec)
        summary = result.summary()
        cpu_note = ""
        if cpu_key:
            used = await server.wait_cpu_idle(timeout=self.profile.drain_timeout) - cpu_before
            seconds, alerts = self._cpu.get(cpu_key, (0.0, 0))
            self._cpu[cpu_key] = (seconds + used, alerts + result.accepted_count)
            summary["cpu_s"] = round(used, 3)
            if result.accepted_count:
                per_alert = used / result.accepted_count * 1e6
                summary["cpu_per_accepted_alert_us"] = round(per_alert, 1)
                cpu_note = f"; CPU {used:.2f} s, {per_alert:,.1f} µs per accepted alert"
        self.details[key] = summary
        print(
            f"  {key}: offered {summary['offered_alerts_per_s']:,.0f}/s, accepted "
            f"{summary['accepted_alerts_per_s']:,.0f} alerts/s; "
            f"{_load_note(result)}{cpu_note}",
            flush=True,
        )
        code = server.exited()
        if code is not None:
            raise procs.BenchError(
                f"{server.name} exited with code {code} during {key}:\n{server.log_tail()}"
            )
        return result

    @contextlib.asynccontextmanager
    async def _reader(self, server: procs.ServerProcess) -> AsyncIterator[decisions.DecisionReader]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield decisions.DecisionReader(session, server.base_url)

    async def _drain(
        self, reader: decisions.DecisionReader, key: str, fingerprints: set[str]
    ) -> int:
        """Wait until ``fingerprints`` are decided (bounded); return how many are not."""
        missing, waited = await reader.wait_for(
            fingerprints, timeout=self.profile.drain_timeout, idle=self.profile.drain_idle
        )
        self.details.setdefault(key, {}).update(
            {"undecided_alerts": missing, "drain_wait_s": round(waited, 2)}
        )
        print(
            f"  {key}: decisions read after {waited:.1f} s; {missing:,} accepted alerts "
            "without a decision",
            flush=True,
        )
        return missing

    @staticmethod
    def _decided_span(
        reader: decisions.DecisionReader, result: loadgen.LoadResult
    ) -> tuple[int, float]:
        """Accepted alerts decided, and seconds from the first send to the last decision."""
        times = [
            reader.by_fingerprint[fp][0].decided_at
            for fp in result.accepted
            if fp in reader.by_fingerprint
        ]
        return len(times), max(0.0, max(times, default=0.0) - result.started_at)

    # -- phases ------------------------------------------------------------------------

    async def run(self) -> None:
        phases: dict[str, Callable[[], Awaitable[None]]] = {
            "bare": self.bare,
            "daemon": self.one_vs_many_rules,
            "latency": self.latency,
            "memory": self.memory,
            "overload": self.overload,
            "matching": self.matching,
            "ha": functools.partial(ha.run, self),  # Redis + PostgreSQL, 1 and 3 replicas
        }
        for name, phase in phases.items():
            if self.only and name not in self.only:
                continue
            print(f"== {name}", flush=True)
            began = time.perf_counter()
            try:
                await phase()
            except procs.BenchError as exc:
                self.problems.append(f"{name}: {exc}")
                print(f"  ! {name} not measured: {exc}", flush=True)
            print(f"  ({time.perf_counter() - began:.1f} s)", flush=True)
        self._ratios()

    async def bare(self) -> None:
        p = self.profile
        server = daemon.bare_process(workdir=self.workdir, python=self.python)
        async with self._running(server):
            await server.wait_http(method="GET", path="/healthz", timeout=STARTUP_TIMEOUT)
            one = await self._load(
                server,
                "bare 1/request max",
                rate=None,
                per_request=1,
                count=p.max_alerts,
                duration=p.max_seconds,
                cpu_key="bare 1",
            )
            self._accepted_1["bare"] = one.accepted_per_s
            self._figure(
                S_ONE,
                "bare aiohttp ceiling (same run)",
                value=one.accepted_per_s,
                unit="alerts/s",
                target=report.Target("reference ≥ 7,000"),
                note=_load_note(one),
            )
            batch = await self._load(
                server,
                "bare 50/request max",
                rate=None,
                per_request=50,
                count=p.batch_alerts,
                duration=p.batch_seconds,
                cpu_key="bare 50",
            )
            self._accepted_50["bare"] = batch.accepted_per_s
            self._figure(
                S_BATCH,
                "bare aiohttp ceiling (same run)",
                value=batch.accepted_per_s,
                unit="alerts/s",
                note=_load_note(batch),
            )
        for writes in ("journal", "decided"):  # the floor under the daemon's CPU per alert
            floor = daemon.bare_process(workdir=self.workdir, python=self.python, writes=writes)
            async with self._running(floor):
                await floor.wait_http(method="GET", path="/healthz", timeout=STARTUP_TIMEOUT)
                await self._load(
                    floor,
                    f"bare + writes ({writes}) 1/request max",
                    rate=None,
                    per_request=1,
                    count=p.max_alerts,
                    duration=p.max_seconds,
                    cpu_key=f"writes {writes} 1",
                )
                if writes == "decided":
                    floor_50 = await self._load(
                        floor,
                        "bare + writes (decided) 50/request max",
                        rate=None,
                        per_request=50,
                        count=p.batch_alerts,
                        duration=p.batch_seconds,
                        cpu_key="writes decided 50",
                    )
                    self._figure(
                        S_BATCH,
                        "bare + every durable write (the floor, same run)",
                        value=floor_50.accepted_per_s,
                        unit="alerts/s",
                        note=_load_note(floor_50),
                    )

    async def one_vs_many_rules(self) -> None:
        """1 rule vs 1,000 unrelated rules + the bench rule, at 1 alert/request, max rate.

        Both daemons run side by side and take turns (A B B A, half the time each), so a
        slow drift of the machine or of the daemon (it fills as it goes) cancels out of
        the ratio instead of landing on one side.
        """
        p = self.profile
        rules = daemon.write_many_rules(self.workdir / "rules-1000-unrelated", unrelated=1000)
        servers = {
            "daemon": daemon.daemon_process(
                name="daemon-1-rule", workdir=self.workdir, python=self.python
            ),
            "rules": daemon.daemon_process(
                name="daemon-1000-rules", workdir=self.workdir, rules=rules, python=self.python
            ),
        }
        async with contextlib.AsyncExitStack() as stack:
            readers: dict[str, decisions.DecisionReader] = {}
            started: dict[str, float] = {}
            for name, server in servers.items():  # one at a time: start-up is a figure
                await stack.enter_async_context(self._running(server))
                _, started[name] = await self._ready(server)
                readers[name] = await stack.enter_async_context(self._reader(server))
            self._figure(
                S_STARTUP,
                "spawn → first accepted webhook, 1 rule",
                value=started["daemon"],
                unit="s",
                note="reference",
            )
            self._figure(
                S_STARTUP,
                "spawn → first accepted webhook, 1,000 rules",
                value=started["rules"],
                unit="s",
                target=report.below(2.0, "< 2 s"),
            )
            runs: dict[str, list[loadgen.LoadResult]] = {"daemon": [], "rules": []}
            spans: dict[str, list[tuple[int, float]]] = {"daemon": [], "rules": []}
            for turn, name in enumerate(("daemon", "rules", "rules", "daemon")):
                server, reader = servers[name], readers[name]
                key = f"{server.name} 1/request max, turn {turn + 1}"
                result = await self._load(
                    server,
                    key,
                    rate=None,
                    per_request=1,
                    count=p.max_alerts // 2,
                    duration=p.max_seconds / 2,
                    cpu_key=f"{name} 1",
                )
                # Drained before the next turn, so that no backlog steals the other's CPU.
                await self._drain(reader, key, result.accepted)
                runs[name].append(result)
                spans[name].append(self._decided_span(reader, result))
        for name, results in runs.items():
            accepted = sum(r.accepted_count for r in results)
            elapsed = sum(r.elapsed for r in results)
            decided = sum(n for n, _ in spans[name])
            decided_seconds = sum(t for _, t in spans[name])
            self._accepted_1[name] = accepted / elapsed if elapsed > 0 else 0.0
            if decided_seconds > 0:
                self._decided_1[name] = decided / decided_seconds
            note = f"{accepted:,} accepted in 2 turns: " + ", ".join(
                f"{r.accepted_per_s:,.0f}/s" for r in results
            )
            rejected = sum(r.alerts_sent - r.accepted_count for r in results)
            if rejected:
                note += f"; {rejected:,} alerts not accepted (non-2xx or errors)"
            if name == "daemon":
                self._figure(
                    S_ONE,
                    "daemon, journal on",
                    value=self._accepted_1[name],
                    unit="alerts/s",
                    target=report.at_least(4500, "≥ 4,500"),
                    note=note,
                )
                self._figure(
                    S_ONE,
                    "daemon, decided end to end",
                    value=self._decided_1.get(name),
                    unit="alerts/s",
                    note="accepted alerts / (last decision - first send)",
                )
            else:
                self._figure(
                    S_RULES,
                    "accepted, 1,000 unrelated rules + bench rule",
                    value=self._accepted_1[name],
                    unit="alerts/s",
                    note=note,
                )
                self._figure(
                    S_RULES,
                    "decided end to end, 1,000 rules",
                    value=self._decided_1.get(name),
                    unit="alerts/s",
                )

    async def latency(self) -> None:
        p = self.profile
        server = daemon.daemon_process(
            name="daemon-latency", workdir=self.workdir, python=self.python
        )
        async with self._running(server), self._reader(server) as reader:
            await self._ready(server)
            for rate, p99_target in ((50, 5.0), (500, 20.0)):
                key = f"daemon latency {rate}/s"
                result = await self._load(
                    server,
                    key,
                    rate=rate,
                    per_request=1,
                    count=int(rate * p.latency_seconds),
                    duration=p.latency_seconds + 1,
                )
                missing = await self._drain(reader, key, result.accepted)
                # The first decision of each alert: a second one is a bug shown elsewhere.
                latencies = sorted(
                    reader.by_fingerprint[fp][0].decided_at - result.sent_at[fp]
                    for fp in result.accepted
                    if fp in reader.by_fingerprint
                )
                p50 = _ms(loadgen.percentile(latencies, 50))
                p99 = _ms(loadgen.percentile(latencies, 99))
                worst = _ms(latencies[-1]) if latencies else None
                self.details[key].update(
                    {"decision_p50_ms": p50, "decision_p99_ms": p99, "decision_max_ms": worst}
                )
                note = f"{len(latencies):,} decided, {missing:,} accepted without decision"
                if result.accepted_count < result.alerts_sent:
                    note += f", {result.alerts_sent - result.accepted_count:,} not accepted"
                self._figure(S_LATENCY, f"p50 at {rate}/s offered", value=p50, unit="ms", note=note)
                self._figure(
                    S_LATENCY,
                    f"p99 at {rate}/s offered",
                    value=p99,
                    unit="ms",
                    target=report.below(p99_target, f"< {p99_target:g} ms"),
                    note="" if worst is None else f"max {worst:.1f} ms",
                )

    async def memory(self) -> None:
        p = self.profile
        server = daemon.daemon_process(
            name="daemon-memory", workdir=self.workdir, python=self.python
        )
        async with self._running(server), self._reader(server) as reader:
            await self._ready(server)
            await asyncio.sleep(p.settle_seconds)
            idle = server.memory()
            self._figure(
                S_MEMORY,
                "RSS idle after start",
                value=idle.rss_mib,
                unit="MiB",
                target=report.below(100, "< 100 MiB"),
            )
            # Top up until memory_alerts are accepted: a 503 loses nothing here but time.
            accepted: set[str] = set()
            rates: list[float] = []
            load_seconds = 0.0
            deadline = time.perf_counter() + p.memory_seconds
            for attempt in itertools.count():
                left = deadline - time.perf_counter()
                if len(accepted) >= p.memory_alerts or left <= 0:
                    break
                result = await self._load(
                    server,
                    f"daemon 50/request max #{attempt + 1}",
                    rate=None,
                    per_request=50,
                    count=p.memory_alerts - len(accepted),
                    duration=min(left, p.max_seconds),
                    cpu_key="daemon 50" if attempt == 0 else "",
                )
                if attempt == 0:
                    self._accepted_50["daemon"] = result.accepted_per_s
                    self._figure(
                        S_BATCH,
                        "daemon, journal on",
                        value=result.accepted_per_s,
                        unit="alerts/s",
                        target=report.at_least(20_000, "≥ 20,000"),
                        note=_load_note(result),
                    )
                accepted |= result.accepted
                rates.append(result.accepted_per_s)
                load_seconds += result.elapsed
                if result.requests_503 or not result.accepted:
                    await asyncio.sleep(0.5)  # let the backlog drain before topping up
            if len(rates) > 1:
                # Several runs were needed: show whether intake slows as the daemon fills.
                self._figure(
                    S_BATCH,
                    f"daemon, sustained over {len(accepted):,} alerts",
                    value=len(accepted) / load_seconds if load_seconds > 0 else None,
                    unit="alerts/s",
                    note=f"{len(rates)} runs of <= {p.max_seconds:g} s: "
                    + ", ".join(f"{r:,.0f}" for r in rates),
                )
            loaded = server.memory()
            missing = await self._drain(reader, "daemon memory", accepted)
            drained = server.memory()
            self.details["daemon memory"].update(
                {
                    "accepted_alerts": len(accepted),
                    "idle": dataclasses.asdict(idle),
                    "after_load": dataclasses.asdict(loaded),
                    "drained": dataclasses.asdict(drained),
                }
            )
            after = f"after {len(accepted):,} accepted alerts"
            self._figure(
                S_MEMORY,
                f"RSS {after}, load just ended",
                value=loaded.rss_mib,
                unit="MiB",
                note=f"{p.memory_alerts:,} wanted" if len(accepted) < p.memory_alerts else "",
            )
            self._figure(
                S_MEMORY,
                f"RSS {after}, backlog drained",
                value=drained.rss_mib,
                unit="MiB",
                target=report.below(150, "< 150 MiB"),
                note=f"{missing:,} without decision",
            )
            self._figure(
                S_MEMORY,
                f"VmHWM (peak RSS) {after}",
                value=drained.hwm_mib,
                unit="MiB",
                target=report.below(150, "< 150 MiB"),
            )

    async def overload(self) -> None:
        p = self.profile
        server = daemon.daemon_process(
            name="daemon-overload",
            workdir=self.workdir,
            backlog_limit=OVERLOAD_BACKLOG,
            python=self.python,
        )
        async with self._running(server), self._reader(server) as reader:
            await self._ready(server)
            idle = server.memory()
            peak = idle.rss_mib
            stop = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, server.memory().rss_mib)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.05)

            sampler = asyncio.create_task(sample(), name="bench-rss-sampler")
            key = f"daemon overload (backlog_limit {OVERLOAD_BACKLOG})"
            try:
                result = await self._load(
                    server,
                    key,
                    rate=p.overload_rate,
                    per_request=50,
                    count=int(p.overload_rate * p.overload_seconds),
                    duration=p.overload_seconds,
                    connections=OVERLOAD_CONNECTIONS,
                )
            finally:
                stop.set()
                await sampler
            missing = await self._drain(reader, key, result.accepted)
            final = server.memory()
            by_fp = reader.by_fingerprint
            records = sum(len(by_fp.get(fp, ())) for fp in result.sent_at)
            doubled = sum(1 for fp in result.sent_at if len(by_fp.get(fp, ())) > 1)
            decided_rejected = sum(1 for fp in result.rejected if fp in by_fp)
            decided_unknown = sum(1 for fp in result.unknown if fp in by_fp)
            self.details[key].update(
                {
                    "decision_records": records,
                    "fingerprints_decided_twice": doubled,
                    "decided_but_rejected": decided_rejected,
                    "decided_but_unknown": decided_unknown,
                    "idle_rss_mib": idle.rss_mib,
                    "peak_rss_mib": peak,
                    "final": dataclasses.asdict(final),
                }
            )
            self._figure(
                S_OVERLOAD,
                "requests answered 503",
                value=result.requests_503,
                unit="requests",
                target=report.Target("> 0 once the backlog is full", lambda v: v > 0),
                note=f"offered {result.offered_per_s:,.0f} alerts/s, accepted "
                f"{result.accepted_per_s:,.0f}/s; {_load_note(result)}",
            )
            self._figure(
                S_OVERLOAD,
                "peak RSS under overload (incl. drain)",
                value=max(peak, final.hwm_mib),
                unit="MiB",
                target=report.Target("bounded"),
                note=f"idle {idle.rss_mib:.1f} MiB; sampled peak during load {peak:.1f} MiB; "
                f"VmHWM after drain {final.hwm_mib:.1f} MiB",
            )
            self._figure(
                S_OVERLOAD,
                "decisions - accepted alerts, after drain",
                value=records - result.accepted_count,
                unit="decisions",
                target=report.equals(0, "= 0"),
                note=f"{records:,} decisions for {result.accepted_count:,} accepted alerts; "
                f"{missing:,} accepted without decision",
            )
            self._figure(
                S_OVERLOAD,
                "fingerprints with 2+ decisions",
                value=doubled,
                unit="fingerprints",
                target=report.equals(0, "= 0"),
                note=f"decided though answered non-2xx: {decided_rejected:,}; "
                f"after a transport error: {decided_unknown:,}",
            )

    async def matching(self) -> None:
        """Matching cost per pattern: at the longest value intake takes, and its growth."""
        p = self.profile
        costs = await asyncio.to_thread(matching.measure, p.matching_sizes, p.matching_repeats)
        small, large = p.matching_sizes[-2], p.matching_sizes[-1]
        for pattern, _ in matching.PATTERNS:
            mine = {c.size: c.seconds for c in costs if c.pattern == pattern}
            self.details[f"matching {pattern}"] = {f"{size} B": s for size, s in mine.items()}
            print(
                f"  {pattern}: "
                + ", ".join(f"{size // 1024} KiB {s * 1e6:,.1f} µs" for size, s in mine.items()),
                flush=True,
            )
            self._figure(
                S_MATCHING,
                f"{pattern}, {small // 1024} KiB value",
                value=mine[small] * 1e6,
                unit="µs",
                note=", ".join(
                    f"{size // 1024} KiB: {s * 1e6:,.1f} µs" for size, s in mine.items()
                ),
            )
            self._figure(
                S_MATCHING,
                f"{pattern}, cost of a {large // small}x longer value",
                value=mine[large] / mine[small] if mine[small] > 0 else None,
                unit="x",
                target=report.below(2.0 * large / small, f"≈ {large // small}x (linear)"),
            )

    def _selected(self, phase: str) -> bool:
        return not self.only or phase in self.only

    def _ratios(self) -> None:
        """Ratios between phases; shown as not measured when a side is missing."""

        def ratio(values: dict[str, float], num: str, den: str) -> float | None:
            if num in values and den in values and values[den] > 0:
                return values[num] / values[den]
            return None

        ceilings = (
            (S_ONE, "daemon", self._accepted_1, 0.5),
            (S_BATCH, "memory", self._accepted_50, 0.15),
        )
        for section, phase, accepted, floor in ceilings:  # the daemon's phase at that size
            if self._selected("bare") and self._selected(phase):
                self._figure(
                    section,
                    "daemon / bare ceiling",
                    value=ratio(accepted, "daemon", "bare"),
                    unit="x",
                    target=report.at_least(floor, f"≥ {floor:.2f}x"),
                )
        self._cpu_figures()
        if self._selected("daemon"):
            cost = report.at_least(0.9, "≥ 0.90x (≤ 10% cost)")
            self._figure(
                S_RULES,
                "accepted: 1,000 rules / 1 rule",
                value=ratio(self._accepted_1, "rules", "daemon"),
                unit="x",
                target=cost,
            )
            self._figure(
                S_RULES,
                "decided: 1,000 rules / 1 rule",
                value=ratio(self._decided_1, "rules", "daemon"),
                unit="x",
                target=cost,
            )

    def _cpu_figures(self) -> None:
        """CPU time per accepted alert, each server's whole process (every thread) from
        the first request until it was idle again, and the daemon's over the bare one's."""
        per_alert = {
            key: seconds / alerts * 1e6 for key, (seconds, alerts) in self._cpu.items() if alerts
        }
        shown = (  # key, label, over which bare key, ratio label, ratio target
            ("bare 1", "bare aiohttp, 1 alert/request", "", "", report.NO_TARGET),
            ("writes journal 1", "bare + the journal row, 1 alert/request", "bare 1",
             "bare + the journal row / bare (the floor of a 2xx)", report.NO_TARGET),
            ("writes decided 1", "bare + journal, audit row, removal, 1 alert/request",
             "bare 1", "bare + every durable write / bare (the floor of a decision)",
             report.NO_TARGET),
            ("daemon 1", "daemon, 1 alert/request (journal + audit)", "bare 1",
             "daemon / bare, 1 alert/request", report.at_most(1.7, "≤ 1.70x")),
            ("rules 1", "daemon with 1,000 rules, 1 alert/request", "bare 1",
             "daemon with 1,000 rules / bare, 1 alert/request", report.NO_TARGET),
            ("bare 50", "bare aiohttp, 50 alerts/request", "", "", report.NO_TARGET),
            ("writes decided 50", "bare + every durable write, 50 alerts/request", "bare 50",
             "bare + every durable write / bare, 50 alerts/request", report.NO_TARGET),
            ("daemon 50", "daemon, 50 alerts/request (journal + audit)", "bare 50",
             "daemon / bare, 50 alerts/request", report.NO_TARGET),
        )  # fmt: skip
        for key, label, bare, ratio_label, target in shown:
            if key not in self._cpu:
                continue
            seconds, alerts = self._cpu[key]
            self._figure(
                S_CPU, label, value=per_alert.get(key), unit="µs",
                note=f"{seconds:.2f} s CPU for {alerts:,} accepted alerts",
            )  # fmt: skip
            if bare in self._cpu:
                mine, theirs = per_alert.get(key), per_alert.get(bare)
                self._figure(
                    S_CPU, ratio_label, unit="x", target=target,
                    value=mine / theirs if mine is not None and theirs else None,
                )  # fmt: skip
