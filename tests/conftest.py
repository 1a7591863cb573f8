"""Suite-wide guards (every async test must leave no task behind and never block the loop)
and the fixtures several test modules share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

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


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "took" in message and "Executing" in message:
            self.seen.append(message)


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
