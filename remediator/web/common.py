"""What the webhook handlers share: the app's daemon key, answers, body, journal.

Handlers are thin: they parse, validate, journal and answer; they never remediate. No
input makes one answer 500: every failure of the input is a 4xx, counted by kind.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import sqlite3
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from remediator import errors
from remediator.models.alert import Alert

if TYPE_CHECKING:
    from remediator.runner import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
log = structlog.get_logger("remediator.web")
_request_ids = itertools.count(1)
_BOOT = os.urandom(3).hex()


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=headers)


def stopping() -> web.Response:
    return error(503, "shutting down; retry on another replica", **{"Retry-After": "5"})


async def read_body(request: web.Request, d: Daemon, source: str) -> bytes | web.Response:
    """The body, or the 413 answer (counted) when it is larger than intake.max_body_bytes."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        d.metrics.bad_input.labels(source=source, kind="too_large").inc()
        return error(
            413,
            f"body larger than {d.settings.intake.max_body_bytes} bytes (intake.max_body_bytes)",
        )


def refused(d: Daemon, source: str, exc: errors.IntakeError, *, kind: str = "") -> web.Response:
    """A 4xx for bad input, counted in rejected_inputs_total{source,kind}."""
    kind = kind or {400: "malformed", 413: "too_large", 422: "schema"}.get(exc.status, "invalid")
    d.metrics.bad_input.labels(source=source, kind=kind).inc()
    return error(exc.status, str(exc))


async def journal(
    d: Daemon,
    alerts: list[Alert],
    *,
    source: str,
    payload: bytes,
    request_id: str,
    received_at: dt.datetime,
) -> web.Response:
    """Journal durably, then 200; 503 (the sender retries) when the backlog is full."""
    try:
        entries = await d.accept(
            alerts, source=source, payload=payload, request_id=request_id, received_at=received_at
        )
    except errors.Backpressure as exc:
        return error(503, str(exc), **{"Retry-After": "5"})
    except (errors.RemediatorError, sqlite3.Error) as exc:
        # Not journaled (a full disk, shutting down): refuse, so the sender retries.
        log.error("journal_append_failed", source=source, request_id=request_id, error=str(exc))
        return error(503, "cannot journal the alerts right now; retry", **{"Retry-After": "5"})
    return web.json_response({"status": "ok", "accepted": len(entries), "request_id": request_id})


def request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= 64 and given.isascii() and given.replace("-", "").isalnum():
        return given
    return f"{_BOOT}-{next(_request_ids)}"
