"""``python -m bench soak``: a bounded soak of the daemon, one line of figures per minute.

A fresh daemon (the bench config: dry-run, budgets raised) gets a steady open-loop load
of ``--rate`` alerts/s, one alert per request, for ``--minutes``. After every minute it
prints what a leak or a slow drift would show first: resident memory, open file
descriptors, the journal backlog, and the request latency of that minute (p50, p99),
and at the end whether each stayed flat (the last minute against the second, the first
being warm-up) within ``--noise``, a relative band. Nothing is asserted: the exit status
is 1 only when the daemon could not be started or died.

A soak looks for leaks, so every table the daemon bounds by design is at its steady
state before the first line: every alert is a new occurrence on a new target, so
- the rule's and the global windows (attempts, budgets, circuits per target) are one
  minute long (``WINDOW``): they are full after the warm-up minute;
- the occurrence dedup table is filled to its bound first (``--prefill``, by default
  ``MAX_OCCURRENCES`` alerts sent 50 per request), so the soak runs where each new
  occurrence replaces an old one, as a daemon that has run for days does.
Growth after that is memory the daemon keeps and should not.

    python -m bench soak --minutes 10 --rate 200
    python -m bench soak --minutes 2 --rate 100 --interval 15 --prefill 0   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench import daemon, loadgen, procs
from remediator.backends.state import MAX_OCCURRENCES

MAX_MINUTES = 120
MAX_RATE = 5000.0
WINDOW = "1m"
"""The soak's rule and budget windows: short, so their tables are full after warm-up."""
_RULES = """\
# Written by bench/soak.py: the bench rule with one-minute windows.
rules:
  - name: bench-log
    matchers: ['alertname = "BenchAlert"']
    action: {type: log, params: {message: "bench {{ labels.instance }}"}}
    limits: {cooldown: 0s, max_attempts: 1000000, window: WINDOW}
    circuit_breaker: {reset_after: WINDOW}
""".replace("WINDOW", WINDOW)


@dataclasses.dataclass(frozen=True)
class Sample:
    minute: int
    accepted: int
    refused: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    rss_mib: float
    fds: int
    backlog: float


def open_fds(pid: int) -> int:
    """File descriptors the process holds now (Linux /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settled_fds(pid: int, *, seconds: float = 1.0) -> int:
    """The fewest fds the process held over `seconds` after a minute's load: connections
    still closing come and go, a leaked descriptor is in every sample."""
    fewest = open_fds(pid)
    for _ in range(int(seconds / 0.1)):
        await asyncio.sleep(0.1)
        fewest = min(fewest, open_fds(pid))
    return fewest


async def backlog(url: str) -> float:
    """remediator_journal_backlog from /metrics (-1 if it cannot be read)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url + "/metrics") as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return -1.0
    for line in text.splitlines():
        if line.startswith("remediator_journal_backlog "):
            return float(line.split()[1])
    return -1.0


def _fmt(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def line(s: Sample) -> str:
    return (
        f"{s.minute:>6} {s.accepted:>9} {s.refused:>7} {s.errors:>6} {_fmt(s.p50_ms)} "
        f"{_fmt(s.p99_ms)} {s.rss_mib:>8.1f} {s.fds:>5} {s.backlog:>8.0f}"
    )


HEADER = (
    f"{'minute':>6} {'accepted':>9} {'non-2xx':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'RSS MiB':>8} {'fds':>5} {'backlog':>8}"
)


def drift(samples: list[Sample], noise: float) -> list[str]:
    """One verdict per figure: the last minute against the first (after warm-up)."""
    if len(samples) < 2:
        return ["too short to judge drift (one minute)"]
    first, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
    out = []
    for name, a, b, floor in (
        ("RSS", first.rss_mib, last.rss_mib, 5.0),
        ("open fds", float(first.fds), float(last.fds), 3.0),
        ("p99 latency", first.p99_ms, last.p99_ms, 2.0),
    ):
        if a is None or b is None:
            out.append(f"{name}: not measured")
            continue
        change = b - a
        grows = change > max(floor, noise * abs(a))  # only growth is a leak or a drift
        out.append(
            f"{name}: {a:.1f} → {b:.1f} ({change:+.1f}) "
            + ("GROWS" if grows else "flat within noise")
        )
    return out


async def prefill(base_url: str, count: int) -> None:
    """Send `count` distinct alerts, 50 per request, as fast as they are taken, and wait
    until all are decided."""
    url = base_url + daemon.WEBHOOK_PATH
    spec = loadgen.LoadSpec(
        url=url, rate=None, per_request=50, count=count, duration=600.0, connections=8,
        timeout=30.0,
    )  # fmt: skip
    result = await loadgen.run_load(spec)
    waited = 0
    while await backlog(base_url) != 0 and waited < 300:
        await asyncio.sleep(1)
        waited += 1
    print(
        f"prefill: {result.accepted_count} of {count} distinct alerts accepted in "
        f"{result.elapsed:.0f}s, decided {waited}s later (the dedup table keeps up to "
        f"{MAX_OCCURRENCES})"
    )


async def soak(
    *, minutes: int, rate: float, interval: float, noise: float, workdir: Path, fill: int
) -> int:
    rules = workdir / "soak-rules"
    rules.mkdir()
    (rules / "soak.yaml").write_text(_RULES)
    proc = daemon.daemon_process(name="soak", workdir=workdir, rules=rules, window=WINDOW)
    await proc.start()
    try:
        await proc.wait_http(method="GET", path="/healthz", timeout=30)
        url = proc.base_url + daemon.WEBHOOK_PATH
        print(
            f"soak: {minutes} x {interval:g}s at {rate:g} alerts/s, 1 alert/request; "
            f"daemon pid {proc.pid}, log {proc.log_path}"
        )
        if fill:
            await prefill(proc.base_url, fill)
        print(HEADER)
        samples: list[Sample] = []
        for minute in range(1, minutes + 1):
            spec = loadgen.LoadSpec(
                url=url, rate=rate, per_request=1, count=max(1, int(rate * interval)),
                duration=interval, connections=64, timeout=10.0,
            )  # fmt: skip
            result = await loadgen.run_load(spec)
            if proc.exited() is not None:
                print(f"the daemon exited with {proc.exited()}:\n{proc.log_tail()}")
                return 1
            lat = sorted(result.request_latencies)
            p50, p99 = loadgen.percentile(lat, 50), loadgen.percentile(lat, 99)
            sample = Sample(
                minute=minute,
                accepted=result.accepted_count,
                refused=sum(n for code, n in result.requests_by_status.items() if code >= 300),
                errors=sum(result.errors.values()),
                p50_ms=None if p50 is None else p50 * 1000,
                p99_ms=None if p99 is None else p99 * 1000,
                rss_mib=proc.memory().rss_mib,
                fds=await settled_fds(proc.pid),
                backlog=await backlog(proc.base_url),
            )
            samples.append(sample)
            print(line(sample), flush=True)
        for verdict in drift(samples, noise):
            print(verdict)
        return 0
    finally:
        await proc.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--minutes", type=int, default=10, help=f"how long (1..{MAX_MINUTES})")
    parser.add_argument("--rate", type=float, default=200.0, help="alerts per second offered")
    parser.add_argument(
        "--interval", type=float, default=60.0, help="seconds per line (default a minute)"
    )
    parser.add_argument(
        "--noise", type=float, default=0.15, help="relative band called flat (default 15%%)"
    )
    parser.add_argument(
        "--prefill", type=int, default=MAX_OCCURRENCES,
        help=f"distinct alerts sent first, to fill the dedup table (default {MAX_OCCURRENCES})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not 1 <= args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in 1..{MAX_MINUTES}")
    if not 0 < args.rate <= MAX_RATE:
        parser.error(f"--rate must be in (0, {MAX_RATE:g}]")
    if not 1 <= args.interval <= 600:
        parser.error("--interval must be in 1..600 seconds")
    if not 0 <= args.prefill <= 10 * MAX_OCCURRENCES:
        parser.error(f"--prefill must be in 0..{10 * MAX_OCCURRENCES}")
    with tempfile.TemporaryDirectory(prefix="remediator-soak-") as tmp:

        async def run() -> int:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            return await soak(
                minutes=args.minutes, rate=args.rate, interval=args.interval,
                noise=args.noise, workdir=Path(tmp), fill=args.prefill,
            )  # fmt: skip

        try:
            return asyncio.run(run())
        except procs.BenchError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; the daemon was stopped", file=sys.stderr)
            return 130
