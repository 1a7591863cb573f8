"""The aiohttp application: thin handlers that parse, validate, journal and answer.

A handler never remediates; it hands journaled alerts to the engine. No input makes
it answer 500: every failure of the input is a 4xx, counted by kind.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from remediator import errors
from remediator.backends.audit import Query
from remediator.intake import alertmanager
from remediator.models.alert import parse_time
from remediator.web import auth

if TYPE_CHECKING:
    from remediator.runner import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
log = structlog.get_logger("remediator.web")
_request_ids = itertools.count(1)
_BOOT = os.urandom(3).hex()


def make_app(daemon: Daemon) -> web.Application:
    # aiohttp enforces the body bound while reading (413) before any JSON work.
    app = web.Application(client_max_size=daemon.settings.intake.max_body_bytes)
    app[DAEMON] = daemon
    app.router.add_post("/webhook/alertmanager", alertmanager_webhook)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/api/v1/rules", rules)
    app.router.add_get("/api/v1/decisions", decisions)
    app.router.add_post("/api/v1/pause", pause)
    app.router.add_post("/api/v1/resume", resume)
    return app


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=headers)


async def alertmanager_webhook(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    source = alertmanager.SOURCE
    response = await _intake(request, d)
    d.metrics.webhook_requests.labels(source=source, code=str(response.status)).inc()
    return response


async def _intake(request: web.Request, d: Daemon) -> web.Response:
    source = alertmanager.SOURCE
    if d.stopping:
        return _error(503, "shutting down; retry on another replica", **{"Retry-After": "5"})
    if not auth.webhook_ok(request, d.settings.auth):
        d.metrics.bad_input.labels(source=source, kind="unauthorized").inc()
        return _error(401, "missing or wrong credentials", **{"WWW-Authenticate": "Bearer"})
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        d.metrics.bad_input.labels(source=source, kind="too_large").inc()
        return _error(
            413,
            f"body larger than {d.settings.intake.max_body_bytes} bytes (intake.max_body_bytes)",
        )
    received_at = dt.datetime.now(dt.UTC)
    try:
        alerts = alertmanager.parse(
            body, received_at=received_at, max_alerts=d.settings.intake.max_alerts_per_request
        )
    except errors.IntakeError as exc:
        kind = {400: "malformed", 413: "too_large", 422: "schema"}.get(exc.status, "invalid")
        d.metrics.bad_input.labels(source=source, kind=kind).inc()
        return _error(exc.status, str(exc))
    request_id = _request_id(request)
    try:
        entries = await d.accept(
            alerts, source=source, payload=body, request_id=request_id, received_at=received_at
        )
    except errors.Backpressure as exc:
        return _error(503, str(exc), **{"Retry-After": "5"})
    return web.json_response({"status": "ok", "accepted": len(entries), "request_id": request_id})


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    if 0 < len(given) <= 64 and given.isascii() and given.replace("-", "").isalnum():
        return given
    return f"{_BOOT}-{next(_request_ids)}"


async def metrics(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    d.refresh_gauges()
    body = generate_latest(d.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    problems = d.readiness_problems()
    if problems:
        return web.json_response({"status": "not_ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready", "rules": len(d.engine.index)})


async def reload(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    if not auth.admin_ok(request, d.settings.auth):
        return _admin_refused(d)
    ok, message = d.reload()
    return web.json_response(
        {"status": "ok" if ok else "error", "message": message}, status=200 if ok else 422
    )


async def pause(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    d = request.app[DAEMON]
    if not auth.admin_ok(request, d.settings.auth):
        return _admin_refused(d)
    d.set_paused(paused, by=request.remote or "")
    return web.json_response({"status": "ok", "paused": paused})


def _admin_refused(d: Daemon) -> web.Response:
    if d.settings.auth.admin_token is None:
        return _error(403, "admin API disabled: set REMEDIATOR_ADMIN_TOKEN (auth.admin_token_env)")
    return _error(401, "missing or wrong admin token", **{"WWW-Authenticate": "Bearer"})


async def rules(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    now = d.clock.now()
    out: list[dict[str, Any]] = []
    for rule in d.engine.index.rules:
        out.append(
            {
                "name": rule.name,
                "description": rule.description,
                "runbook_url": rule.runbook_url,
                "source": rule.source,
                "file": f"{rule.file}:{rule.line}",
                "matchers": [str(m) for m in rule.matchers],
                "for_seconds": rule.for_,
                "action": rule.action.type,
                "escalate": rule.escalate.type if rule.escalate else None,
                "limits": {
                    "cooldown_seconds": rule.limits.cooldown,
                    "max_attempts": rule.limits.max_attempts,
                    "window_seconds": rule.limits.window,
                    "max_actions": rule.limits.max_actions,
                    "retry_while_firing": rule.limits.retry_while_firing,
                },
                "verify": {"resolve_within_seconds": rule.resolve_within},
                "circuit_breaker": {
                    "open_after": rule.circuit_breaker.open_after,
                    "reset_after_seconds": rule.circuit_breaker.reset_after,
                },
                "state": await d.state.snapshot(rule, now),
            }
        )
    return web.json_response(
        {"rules": out, "paused": d.state.paused, "dry_run": d.settings.dry_run}
    )


async def decisions(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
        before = int(q["before"]) if "before" in q else None
        since = _since(q["since"], now=d.clock.now()) if "since" in q else None
    except ValueError as exc:
        return _error(400, f"bad query: {exc}")
    if not 1 <= limit <= 1000:
        return _error(400, "limit must be in 1..1000")
    outcome = q.get("outcome")
    if outcome is not None and outcome not in ("executed", "dry_run", "failed", "skipped"):
        return _error(400, "outcome must be executed, dry_run, failed or skipped")
    query = Query(
        rule=q.get("rule"), alertname=q.get("alertname"), outcome=outcome, since=since,
        before=before, limit=limit,
    )  # fmt: skip
    rows = await d.audit.query(query)
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return web.json_response({"decisions": rows, "next_before": next_before})


def _since(text: str, *, now: float) -> dt.datetime:
    """RFC 3339, Unix seconds, or a duration ago (`15m`)."""
    from remediator import durations  # noqa: PLC0415 - only this query form needs it

    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        return dt.datetime.fromtimestamp(now - durations.parse(text), dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"since={text!r}: expected RFC 3339, Unix seconds or a duration") from exc
