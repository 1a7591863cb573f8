"""The aiohttp application: thin handlers that parse, validate, journal and answer.

A handler never remediates; it hands journaled alerts to the engine. No input makes
it answer 500: every failure of the input is a 4xx, counted by kind.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import sqlite3
from typing import TYPE_CHECKING, Any

import structlog
import yarl
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from remediator import errors
from remediator.backends.audit import Query
from remediator.clients import sns as sns_client
from remediator.intake import alertmanager, sns
from remediator.models.alert import Alert, parse_time
from remediator.web import auth

if TYPE_CHECKING:
    from remediator.runner import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
SNS_GATE: web.AppKey[sns.Gate] = web.AppKey("sns_gate", sns.Gate)
log = structlog.get_logger("remediator.web")
_request_ids = itertools.count(1)
_BOOT = os.urandom(3).hex()


def make_app(daemon: Daemon) -> web.Application:
    # aiohttp enforces the body bound while reading (413) before any JSON work.
    app = web.Application(client_max_size=daemon.settings.intake.max_body_bytes)
    app[DAEMON] = daemon
    app[SNS_GATE] = sns.Gate(daemon.settings.sns)
    app.router.add_post("/webhook/alertmanager", alertmanager_webhook)
    app.router.add_post("/webhook/sns", sns_webhook)
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
        return _stopping()
    if not auth.webhook_ok(request, d.settings.auth):
        d.metrics.bad_input.labels(source=source, kind="unauthorized").inc()
        return _error(401, "missing or wrong credentials", **{"WWW-Authenticate": "Bearer"})
    body = await _read_body(request, d, source)
    if isinstance(body, web.Response):
        return body
    received_at = dt.datetime.fromtimestamp(d.clock.now(), dt.UTC)  # the engine's clock
    try:
        alerts = alertmanager.parse(
            body, received_at=received_at, max_alerts=d.settings.intake.max_alerts_per_request
        )
    except errors.IntakeError as exc:
        return _refused(d, source, exc)
    return await _journal(
        d, alerts, source=source, payload=body, request_id=_request_id(request),
        received_at=received_at,
    )  # fmt: skip


# -- shared by the webhook handlers ----------------------------------------------------


def _stopping() -> web.Response:
    return _error(503, "shutting down; retry on another replica", **{"Retry-After": "5"})


async def _read_body(request: web.Request, d: Daemon, source: str) -> bytes | web.Response:
    """The body, or the 413 answer (counted) when it is larger than intake.max_body_bytes."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        d.metrics.bad_input.labels(source=source, kind="too_large").inc()
        return _error(
            413,
            f"body larger than {d.settings.intake.max_body_bytes} bytes (intake.max_body_bytes)",
        )


def _refused(d: Daemon, source: str, exc: errors.IntakeError, *, kind: str = "") -> web.Response:
    """A 4xx for bad input, counted in rejected_inputs_total{source,kind}."""
    kind = kind or {400: "malformed", 413: "too_large", 422: "schema"}.get(exc.status, "invalid")
    d.metrics.bad_input.labels(source=source, kind=kind).inc()
    return _error(exc.status, str(exc))


async def _journal(
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
        return _error(503, str(exc), **{"Retry-After": "5"})
    except (errors.RemediatorError, sqlite3.Error) as exc:
        # Not journaled (a full disk, shutting down): refuse, so the sender retries.
        log.error("journal_append_failed", source=source, request_id=request_id, error=str(exc))
        return _error(503, "cannot journal the alerts right now; retry", **{"Retry-After": "5"})
    return web.json_response({"status": "ok", "accepted": len(entries), "request_id": request_id})


# -- SNS ------------------------------------------------------------------------------


async def sns_webhook(request: web.Request) -> web.Response:
    """SNS HTTP(S) subscription: verify, then confirm, record or journal (docs/sns.md)."""
    d = request.app[DAEMON]
    response = await _sns_intake(request, d, request.app[SNS_GATE])
    d.metrics.webhook_requests.labels(source=sns.SOURCE, code=str(response.status)).inc()
    return response


async def _sns_intake(request: web.Request, d: Daemon, gate: sns.Gate) -> web.Response:
    source = sns.SOURCE
    header = request.headers.get(sns.TYPE_HEADER)
    claimed = header if header in sns.TYPES else "unknown"
    if d.stopping:
        return _stopping()
    body = await _read_body(request, d, source)
    if isinstance(body, web.Response):
        d.metrics.sns_messages.labels(type=claimed, result="too_large").inc()
        return body
    now = d.clock.now()
    try:
        envelope = sns.parse(body, type_header=header)
    except errors.IntakeError as exc:
        d.metrics.sns_messages.labels(type=claimed, result="malformed").inc()
        return _refused(d, source, exc)
    bound = log.bind(
        sns_type=envelope.type, message_id=envelope.message_id, topic=envelope.topic_arn
    )
    # Cheapest first: forged traffic for other topics or of another day costs no fetch.
    try:
        urls = gate.check(envelope, now=now)
        client = await _sns_client(d)
        sns.verify_signature(envelope, await client.public_key(urls.cert))
    except sns.Rejected as exc:
        d.metrics.sns_messages.labels(type=envelope.type, result=exc.result).inc()
        bound.info("sns_message_rejected", result=exc.result, error=str(exc))
        return _refused(d, source, exc, kind=exc.result)
    except errors.IntakeError as exc:  # the certificate itself was refused
        d.metrics.sns_messages.labels(type=envelope.type, result="bad_signature").inc()
        bound.info("sns_message_rejected", result="bad_signature", error=str(exc))
        return _refused(d, source, exc, kind="bad_signature")
    except errors.TemporaryError as exc:
        d.metrics.sns_messages.labels(type=envelope.type, result="cert_unavailable").inc()
        bound.warning("sns_cert_unavailable", error=str(exc))
        return _error(503, f"cannot verify the message now: {exc}", **{"Retry-After": "10"})
    seen = gate.seen.reserve(
        envelope.message_id, expires=gate.remember_until(envelope, now=now), now=now
    )
    if seen != "new":
        d.metrics.sns_messages.labels(type=envelope.type, result="duplicate").inc()
        if seen == "pending":  # its first copy may still fail: this one must not be acked
            return _error(503, "this MessageId is being accepted; retry", **{"Retry-After": "5"})
        return web.json_response({"status": "ok", "duplicate": True})
    d.metrics.sns_messages.labels(type=envelope.type, result="verified").inc()
    response: web.Response | None = None
    try:
        if envelope.type == sns.NOTIFICATION:
            received_at = dt.datetime.fromtimestamp(now, dt.UTC)
            response = await _sns_notification(d, gate, envelope, received_at=received_at)
        elif envelope.type == sns.SUBSCRIPTION:
            assert urls.subscribe is not None  # checked by gate.check for this type
            response = await _sns_subscribe(d, client, urls.subscribe, bound)
        else:
            d.metrics.sns_subscriptions.labels(event="unsubscribed").inc()
            bound.warning("sns_unsubscribed")
            response = web.json_response({"status": "ok"})
        return response
    finally:
        if response is None or response.status >= 300:
            gate.seen.release(envelope.message_id)  # not accepted: SNS's retry must be
        else:
            gate.seen.settle(envelope.message_id)


async def _sns_client(d: Daemon) -> sns_client.SnsClient:
    assert d.clients is not None  # set by Daemon.start, before the app serves

    def fetched(result: str) -> None:
        d.metrics.sns_cert_fetches.labels(result=result).inc()

    async def opener() -> sns_client.SnsClient:
        return await sns_client.open_client(d.settings.sns, fetched=fetched)

    return await d.clients.get("sns", opener, sns_client.SnsClient.close)


async def _sns_subscribe(
    d: Daemon, client: sns_client.SnsClient, url: yarl.URL, bound: Any
) -> web.Response:
    """Confirm a verified subscription of an allowed topic (or leave it to a human)."""
    if not d.settings.sns.confirm_subscriptions:
        d.metrics.sns_subscriptions.labels(event="left_unconfirmed").inc()
        bound.warning("sns_subscription_left_unconfirmed", hint="sns.confirm_subscriptions: false")
        return web.json_response({"status": "ok", "confirmed": False})
    try:
        subscription = await client.confirm(url)
    except errors.TemporaryError as exc:
        d.metrics.sns_subscriptions.labels(event="confirm_failed").inc()
        bound.error("sns_subscription_confirm_failed", error=str(exc))
        return _error(503, f"could not confirm the subscription: {exc}", **{"Retry-After": "10"})
    d.metrics.sns_subscriptions.labels(event="confirmed").inc()
    bound.warning("sns_subscription_confirmed", subscription=subscription)
    return web.json_response({"status": "ok", "confirmed": True})


async def _sns_notification(
    d: Daemon, gate: sns.Gate, envelope: sns.Envelope, *, received_at: dt.datetime
) -> web.Response:
    """Journal an ALARM (firing) or OK (resolved); record and answer 2xx for the rest."""
    try:
        alarm = sns.parse_alarm(envelope)
    except errors.IntakeError as exc:
        return _refused(d, sns.SOURCE, exc)
    if alarm is None:
        d.metrics.sns_notifications.labels(state="not_alarm").inc()
        log.info("sns_notification_ignored", message_id=envelope.message_id, reason="not_alarm")
        return web.json_response({"status": "ok", "accepted": 0, "ignored": "not_alarm"})
    transition, undo = gate.alarms.advance(alarm)
    state = "stale" if transition.note == "stale" else alarm.state
    d.metrics.sns_notifications.labels(state=state).inc()
    log.info(
        "sns_alarm", alarm=alarm.name, state=alarm.state, old_state=alarm.old_state,
        fingerprint=alarm.fingerprint, message_id=envelope.message_id, note=transition.note,
    )  # fmt: skip
    if transition.status == "ignored":
        return web.json_response({"status": "ok", "accepted": 0, "ignored": transition.note})
    alert = sns.to_alert(alarm, starts_at=transition.starts_at, received_at=received_at)
    response = await _journal(
        d, [alert], source=sns.SOURCE, payload=sns.journal_payload(envelope, alert),
        request_id=envelope.message_id[:64], received_at=received_at,
    )  # fmt: skip
    if response.status != 200:
        undo()
    return response


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
    ok, message = await d.reload()
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
        if before is not None and not 0 < before < 2**63:
            raise ValueError("before must be a decision id (next_before of the previous page)")
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
