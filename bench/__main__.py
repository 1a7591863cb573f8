"""``python -m bench``: run the benchmark suite, print the figures, write results.json.

Exit status: 0 when every selected phase was measured, 1 when one could not be (a server
did not start, an API answered nonsense). A figure that misses its target never changes
the exit status: timing is reported, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import report, suite

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results.json"
#: 1-minute load average above which the run warns that other work skews the figures.
BUSY_LOAD = 0.5


def _phases(value: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    unknown = names - set(suite.PHASES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(suite.PHASES)}"
        )
    return names


async def _run(bench: suite.Suite) -> None:
    """Run the suite; SIGTERM cancels it like Ctrl-C does, so servers are still stopped."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # we are inside asyncio.run
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await bench.run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["soak"]:  # `python -m bench soak ...`: the bounded soak (bench/soak.py)
        from bench import soak  # noqa: PLC0415 - only this command needs it

        return soak.main(args_in[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark remediator against DESIGN.md's performance targets.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run (about 30 s) instead of the full one"
    )
    parser.add_argument(
        "--only",
        type=_phases,
        default=frozenset(),
        help=f"comma-separated phases to run (default all): {','.join(suite.PHASES)}",
    )
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="where to write the JSON results"
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs the servers under test (default: this one)",
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary directory (logs, data)"
    )
    args = parser.parse_args(args_in)

    profile = suite.QUICK if args.quick else suite.FULL
    workdir = Path(tempfile.mkdtemp(prefix="remediator-bench-"))
    bench = suite.Suite(profile=profile, workdir=workdir, python=args.python, only=args.only)
    started = datetime.datetime.now(datetime.UTC)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    print(
        f"remediator bench ({profile.name}), {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f}, work dir {workdir}"
    )
    if load_before > BUSY_LOAD:
        print(f"warning: the machine is busy (load {load_before:.2f}): figures will be noisy")
    try:
        asyncio.run(_run(bench))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every server started was stopped", file=sys.stderr)
        return 130
    finally:
        keep = args.keep_tmp or bool(bench.problems)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - began

    print()
    print(report.render_table(bench.figures))
    for warning in bench.warnings:
        print(f"warning: {warning}")
    for problem in bench.problems:
        print(f"not measured: {problem.splitlines()[0]}")
    if keep:
        print(f"logs and data kept in {workdir}")
    report.write_results(
        args.results,
        {
            "started_at": started.isoformat(),
            "elapsed_s": round(elapsed, 1),
            "profile": profile.name,
            "host": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_average_before": round(load_before, 2),
                "load_average_after": round(os.getloadavg()[0], 2),
            },
            "figures": [f.as_json() for f in bench.figures],
            "runs": bench.details,
            "warnings": bench.warnings,
            "problems": bench.problems,
        },
    )
    print(f"{elapsed:.0f} s in all; results in {args.results}")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
