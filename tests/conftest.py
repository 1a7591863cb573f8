"""Suite-wide guards (every async test must leave no task behind and never block the loop)
and the fixtures several test modules share."""

from __future__ import annotations

import asyncio
import bisect
import collections
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from remediator import logs
from remediator.actions import registry
from tests import servers

# moto's server and the AWS proxy, for every AWS test module.
from tests.aws_fixtures import aws, moto  # noqa: F401 - fixtures, found by pytest by name

# The daemon's own pipeline (plain tracebacks): structlog's default renders rich ones,
# which take up to a second on a loaded machine — on the event loop under test.
logs.configure(fmt="console", level="info")

# Every action family imported once, at collection: otherwise the first test that loads a
# config imports (and, without bytecode caching, compiles) them inside one step of its
# event loop, which the blocked-loop guard below rightly counts.
registry.names()

SLOW_CALLBACK_SECONDS = 1.0
"""A callback holding the loop this long is a blocking call (generous: CI boxes are loaded)."""

# The test process's own garbage collector: its full collections grow with the suite's
# heap (asyncio debug mode keeps a traceback per handle) and reach a second on a loaded
# CI box, inside whatever step of the loop happens to allocate. That pause belongs to the
# test process, not to the daemon's code, so the guard subtracts it from each step.
_GC_ENDS: collections.deque[tuple[float, float]] = collections.deque(maxlen=100_000)
"""(when a collection ended, seconds spent collecting up to then), oldest first."""
_GC_CLOCK = {"started": 0.0, "total": 0.0}


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    now = time.monotonic()  # asyncio's loop.time(), which times each step
    if phase == "start":
        _GC_CLOCK["started"] = now
    else:
        _GC_CLOCK["total"] += now - _GC_CLOCK["started"]
        _GC_ENDS.append((now, _GC_CLOCK["total"]))


gc.callbacks.append(_time_gc)


def _gc_seconds_since(start: float) -> float:
    """Seconds spent collecting in collections that ended after `start`."""
    before = bisect.bisect_left(_GC_ENDS, (start, 0.0))
    until_start = _GC_ENDS[before - 1][1] if before > 0 else 0.0
    return _GC_CLOCK["total"] - until_start


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not ("took" in message and "Executing" in message):
            return
        took = record.args[-1] if isinstance(record.args, tuple) and record.args else 0.0
        collecting = _gc_seconds_since(time.monotonic() - float(took)) if took else 0.0
        if float(took) - collecting >= SLOW_CALLBACK_SECONDS:
            self.seen.append(f"{message} ({collecting:.3f} s of it collecting garbage)")


@pytest.fixture(autouse=True)
async def _no_leaked_tasks_or_blocking() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
    slow = _SlowCallbacks()
    logging.getLogger("asyncio").addHandler(slow)
    try:
        yield
    finally:
        logging.getLogger("asyncio").removeHandler(slow)
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    for t in leaked:
        t.cancel()
    assert not leaked, f"test leaked tasks: {[t.get_name() for t in leaked]}"
    assert not slow.seen, f"the event loop was blocked: {slow.seen}"


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[servers.AlertmanagerServer]:
    """Debian's Alertmanager for one test module; nothing listens at its webhook URL (its
    deliveries do not matter to the tests that ask it about silences and matchers)."""
    with servers.AlertmanagerServer(
        f"http://127.0.0.1:{servers.free_port()}/unused", log_level="warn"
    ) as am:
        yield am


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection loaded (modules, test items) lives for the whole run: out of the
    collector's reach, full collections stay short."""
    gc.collect()
    gc.freeze()
