"""The `ha` phase: the daemon on Redis (journal, state) and PostgreSQL (audit), with one
and with three replicas, beside the embedded figures of the same run.

Redis runs with the documented setting (`appendonly yes`, `appendfsync always`: every
journal write on disk before the 2xx) and PostgreSQL 15 from a fresh `initdb`, both on
loopback, started and stopped here (the test suite's server helpers, `tests/servers.py`).
The load generator splits its connections (closed loop) or its rate (fixed rate) evenly
over the replicas, as a Service spreads its clients; accepted alerts/s is the sum, and
webhook → decision is the moment the alert was sent to the `decided_at` of its audit row,
read back from PostgreSQL through one replica's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench import daemon, decisions, loadgen, procs, report

if TYPE_CHECKING:
    from bench.suite import Suite

SECTION = "Redis + PostgreSQL"
LATENCY_RATE = 50
"""Alerts/s offered (in all) for the webhook → decision figure: the embedded one's rate."""

_BACKENDS = """\
backend:
  kind: redis
  redis: {{key_prefix: {prefix}}}
audit:
  kind: postgres
"""
"""Appended to the bench config of daemon.py (budgets too high to skip a bench alert)."""


@contextlib.contextmanager
def _servers() -> Iterator[tuple[Any, Any]]:
    # The tests' helpers start both on a free loopback port and stop them by their PID.
    sys.path.insert(0, str(procs.REPO_ROOT))
    from tests import servers  # noqa: PLC0415 - only this phase needs them

    with (
        servers.RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as r,
        servers.PostgresServer() as pg,
    ):
        yield r, pg


def _replica(suite: Suite, name: str, prefix: str, env: dict[str, str]) -> procs.ServerProcess:
    server = daemon.daemon_process(name=name, workdir=suite.workdir, python=suite.python)
    config = Path(server.argv[server.argv.index("--config") + 1])
    daemon.write_config(config)
    config.write_text(config.read_text() + _BACKENDS.format(prefix=prefix))
    server.env = {**(server.env or {}), **env}
    return server


@contextlib.asynccontextmanager
async def _cluster(
    suite: Suite, n: int, env: dict[str, str]
) -> AsyncIterator[list[procs.ServerProcess]]:
    prefix = f"bench{n}"
    replicas = [_replica(suite, f"ha-{n}-r{i}", prefix, env) for i in range(n)]
    async with contextlib.AsyncExitStack() as stack:
        for r in replicas:
            await stack.enter_async_context(suite._running(r))
        for r in replicas:
            await suite._ready(r)
        yield replicas


async def _load(
    replicas: list[procs.ServerProcess], *, rate: float | None, count: int, duration: float
) -> list[loadgen.LoadResult]:
    share = len(replicas)
    specs = [
        loadgen.LoadSpec(
            url=r.base_url + daemon.WEBHOOK_PATH,
            rate=None if rate is None else rate / share,
            per_request=1,
            count=count // share,
            duration=duration,
            connections=max(1, 32 // share),
        )
        for r in replicas
    ]
    return list(await asyncio.gather(*(loadgen.run_load(s) for s in specs)))


async def run(suite: Suite) -> None:
    """One and three replicas: accepted alerts/s (1 alert/request, closed loop) and p99
    webhook → decision at LATENCY_RATE/s."""
    p = suite.profile
    try:
        with _servers() as (redis, pg):
            env = {"REMEDIATOR_REDIS_URL": redis.url, "REMEDIATOR_AUDIT_DSN": pg.dsn}
            for n in (1, 3):
                await _measure(suite, n, env, p.max_seconds, p.max_alerts, p.latency_seconds)
    except RuntimeError as exc:  # tests.servers.ServerError: Redis or PostgreSQL
        raise procs.BenchError(f"Redis or PostgreSQL: {exc}") from exc
    except FileNotFoundError as exc:  # not installed: the other phases' figures still count
        raise procs.BenchError(
            f"Redis or PostgreSQL 15 is not installed ({exc.filename}): run make system-deps"
        ) from exc


async def _measure(
    suite: Suite, n: int, env: dict[str, str], seconds: float, alerts: int, latency_s: float
) -> None:
    label = "1 replica" if n == 1 else f"{n} replicas"
    async with (
        _cluster(suite, n, env) as replicas,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
    ):
        reader = decisions.DecisionReader(session, replicas[0].base_url)
        results = await _load(replicas, rate=None, count=alerts, duration=seconds)
        accepted = sum(r.accepted_count for r in results)
        elapsed = max(r.elapsed for r in results)
        fingerprints = set().union(*(r.accepted for r in results))
        missing, _ = await reader.wait_for(
            fingerprints, timeout=suite.profile.drain_timeout, idle=suite.profile.drain_idle
        )
        embedded = suite._accepted_1.get("daemon")
        note = f"{accepted:,} accepted in {elapsed:.1f} s, {missing:,} undecided"
        if embedded:
            note += f"; embedded: {embedded:,.0f}/s"
        rate = accepted / elapsed if elapsed > 0 else None
        suite._figure(
            SECTION, f"accepted alerts/s, {label}", value=rate, unit="alerts/s", note=note
        )

        results = await _load(
            replicas, rate=LATENCY_RATE, count=int(LATENCY_RATE * latency_s),
            duration=latency_s + 1,
        )  # fmt: skip
        sent = {fp: t for r in results for fp, t in r.sent_at.items() if fp in r.accepted}
        missing, _ = await reader.wait_for(
            set(sent), timeout=suite.profile.drain_timeout, idle=suite.profile.drain_idle
        )
        latencies = sorted(
            reader.by_fingerprint[fp][0].decided_at - t
            for fp, t in sent.items()
            if fp in reader.by_fingerprint
        )
        p99 = loadgen.percentile(latencies, 99)
        suite.details[f"ha {label}"] = {
            "accepted_alerts_per_s": rate,
            "decision_p99_ms": None if p99 is None else p99 * 1000,
            "undecided": missing,
        }
        suite._figure(
            SECTION,
            f"p99 webhook → decision at {LATENCY_RATE}/s, {label}",
            value=None if p99 is None else p99 * 1000,
            unit="ms",
            target=report.NO_TARGET,
            note=f"{len(latencies):,} decided; embedded: see {LATENCY_RATE}/s above",
        )
