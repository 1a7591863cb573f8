"""structlog pipeline: JSON when not on a terminal, readable on one. Events, not prose."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from remediator.models.alert import iso_ts


def _serialize(event: Any, *, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """One JSON log line, msgspec's: one event is logged per decision, and the standard
    library's encoder costs several times more per event. What msgspec refuses is written
    by the standard library."""
    try:
        return msgspec.json.encode(event, enc_hook=default).decode()
    except (TypeError, ValueError):  # msgspec.EncodeError is a ValueError
        return json.dumps(event, default=default, **kwargs)


def _timestamp(_logger: Any, _name: str, event: Any) -> Any:
    """`timestamp`: RFC 3339 UTC with microseconds, as structlog's TimeStamper(fmt="iso",
    utc=True) writes it (always with the microseconds), at a fraction of its cost: the
    text of the second is made once per second (`iso_ts`), and one event is logged per
    decision."""
    event["timestamp"] = iso_ts(time.time())
    return event


_level = logging.NOTSET
"""The lowest level logged (`configure`); NOTSET: not configured, everything is."""


def enabled(level: int) -> bool:
    """Events at `level` are logged: callers that log per alert skip building an event
    the level filters out (structlog drops it only once its fields are built)."""
    return level >= _level


def configure(*, fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once for the process. `fmt`: auto, json or console."""
    global _level  # noqa: PLW0603 - the one process-wide setting, like structlog's own
    _level = logging.getLevelNamesMapping()[level.upper()]
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        # Plain tracebacks: the rich ones (when rich is installed) take up to a second to
        # render on a loaded machine, on the event loop.
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer(serializer=_serialize)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
