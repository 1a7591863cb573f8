"""What the webhook handlers share: the app's daemon key, answers, body, journal.

Handlers are thin: they parse, validate, journal and answer; they never remediate. No
input makes one answer 500: every failure of the input is a 4xx, counted by kind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import sqlite3
import zlib
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from remediator import errors
from remediator.backends import journal as journal_mod
from remediator.models.alert import Alert

if TYPE_CHECKING:
    from remediator.runner import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
log = structlog.get_logger("remediator.web")
_request_ids = itertools.count(1)
_BOOT = os.urandom(3).hex()


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=headers)


def decision_id(text: str) -> int | None:
    """A decision id from a URL: ASCII digits, 1 .. 2**63-1; None for anything else
    (checked before int(), which refuses over 4,300 digits with an error of its own)."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 0 < value < 2**63 else None


class BodyError(ValueError):
    """A small body that was too large (413), too slow (408) or cut short (400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def small_body(request: web.Request, d: Daemon, limit: int) -> bytes:
    """The whole of a small body (a form, a control's JSON): every byte up to the end,
    at most `limit` of them, within http.body_timeout — never the part that happened to
    have arrived."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(d.settings.http.body_timeout):
            while chunk := await request.content.read(limit + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise BodyError(413, f"body larger than {limit} bytes")
    except TimeoutError:
        raise BodyError(
            408, f"body not received within {d.settings.http.body_timeout:g}s"
        ) from None
    except (web.RequestPayloadError, ConnectionError) as exc:
        raise BodyError(400, f"body incomplete: {exc}") from exc
    return b"".join(chunks)


async def small_json(request: web.Request, d: Daemon, limit: int) -> dict[str, Any]:
    """An optional small JSON object body ({} when empty), read whole (small_body)."""
    raw = await small_body(request, d, limit)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("body is not JSON") from exc
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def stopping() -> web.Response:
    return error(503, "shutting down; retry on another replica", **{"Retry-After": "5"})


async def read_body(request: web.Request, d: Daemon, source: str) -> bytes | web.Response:
    """The body (decoded from gzip or deflate), or the counted 4xx answer: 413 larger than
    intake.max_body_bytes (before or after decoding), 408 slower than http.body_timeout,
    400 truncated or not decodable, 415 an encoding we do not speak."""
    limit = d.settings.intake.max_body_bytes
    try:
        if request.content.is_eof():
            raw = await request.read()  # all of it arrived with the headers: no wait
        else:
            async with asyncio.timeout(d.settings.http.body_timeout):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _body_refused(d, source, 413, "too_large", _too_large(limit))
    except TimeoutError:
        return _body_refused(
            d, source, 408, "timeout",
            f"body not received within {d.settings.http.body_timeout:g}s (http.body_timeout)",
        )  # fmt: skip
    except (web.RequestPayloadError, ConnectionError) as exc:
        # The sender went away mid-body, or framed it wrongly (bad chunking, short body).
        return _body_refused(d, source, 400, "truncated", f"body incomplete: {exc}")
    except asyncio.CancelledError:
        # aiohttp cancels the handler of a connection lost mid-body: nobody is left to
        # answer, but it is still input we refused.
        if not d.stopping:
            d.metrics.bad_input.labels(source=source, kind="truncated").inc()
        raise
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    try:
        return decode(raw, encoding, limit=limit)
    except errors.PayloadTooLarge:
        return _body_refused(d, source, 413, "too_large", _too_large(limit) + " once decoded")
    except errors.IntakeError as exc:
        kind = "bad_encoding" if exc.status == 400 else "unsupported_encoding"
        return _body_refused(d, source, exc.status, kind, str(exc))


def decode(raw: bytes, encoding: str, *, limit: int) -> bytes:
    """A gzip or deflate (zlib or raw) body, never more than `limit` bytes once decoded."""
    if encoding in ("gzip", "x-gzip"):
        wbits = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":
        wbits = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped, as the RFC says, or raw
    else:
        raise errors.IntakeError(
            f"Content-Encoding {encoding[:40]!r} is not supported (gzip, deflate or none)",
            status=415,
        )
    problem = ""
    for bits in wbits:
        inflater = zlib.decompressobj(wbits=bits)
        try:
            out = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            problem = str(exc)
            continue
        if len(out) > limit:
            raise errors.PayloadTooLarge(f"decoded body larger than {limit} bytes")
        if not inflater.eof or inflater.unused_data:
            problem = "truncated or followed by other data"
            continue
        return out
    raise errors.IntakeError(f"body is not valid {encoding}: {problem}")


def _too_large(limit: int) -> str:
    return f"body larger than {limit} bytes (intake.max_body_bytes)"


def _body_refused(d: Daemon, source: str, status: int, kind: str, message: str) -> web.Response:
    d.metrics.bad_input.labels(source=source, kind=kind).inc()
    response = error(status, message)
    response.force_close()  # what is left of the body is not worth reading
    return response


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
    also: journal_mod.Also | None = None,
) -> web.Response:
    """Journal durably (with `also` in the same transaction), then 200; 503 (the sender
    retries) when the backlog is full or the journal cannot be written."""
    try:
        entries = await d.accept(
            alerts, source=source, payload=payload, request_id=request_id,
            received_at=received_at, also=also,
        )  # fmt: skip
    except errors.Backpressure as exc:
        return error(503, str(exc), **{"Retry-After": "5"})
    except (errors.RemediatorError, sqlite3.Error) as exc:
        # Not journaled (a full disk, shutting down): refuse, so the sender retries.
        log.error("journal_append_failed", source=source, request_id=request_id, error=str(exc))
        return error(503, "cannot journal the alerts right now; retry", **{"Retry-After": "5"})
    # The text json.dumps would write, without its cost per request: the request id is
    # ASCII letters, digits and dashes (`request_id`), nothing to escape.
    return web.Response(
        text=f'{{"status": "ok", "accepted": {len(entries)}, "request_id": "{request_id}"}}',
        content_type="application/json",
    )


def request_id(request: web.Request) -> str:
    """The sender's X-Request-Id when it is a short token, else one of ours; the same for
    every call on one request."""
    known: str | None = request.get(_REQUEST_ID)
    if known is not None:
        return known
    given = request.headers.get("X-Request-Id", "")
    if not (0 < len(given) <= 64 and given.isascii() and given.replace("-", "").isalnum()):
        given = f"{_BOOT}-{next(_request_ids)}"
    request[_REQUEST_ID] = given
    return given


_REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
