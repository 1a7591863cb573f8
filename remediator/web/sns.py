"""POST /webhook/sns: an SNS HTTP(S) subscription carrying CloudWatch alarms (docs/sns.md).

Cheapest checks first, so forged traffic for other topics or of another day costs no
certificate fetch; nothing is trusted before the signature is verified.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import TYPE_CHECKING, Any

import structlog
import yarl
from aiohttp import web

from remediator import errors
from remediator.clients import sns as sns_client
from remediator.intake import sns
from remediator.web import common, server

if TYPE_CHECKING:
    from remediator.runner import Daemon

SNS_GATE: web.AppKey[sns.Gate] = web.AppKey("sns_gate", sns.Gate)
SNS_CLIENTS: web.AppKey[server.ClientRates] = web.AppKey("sns_clients", server.ClientRates)
log = structlog.get_logger("remediator.web.sns")


async def webhook(request: web.Request) -> web.Response:
    """SNS HTTP(S) subscription: verify, then confirm, record or journal (docs/sns.md)."""
    d = request.app[common.DAEMON]
    response = await _sns_intake(request, d, request.app[SNS_GATE])
    d.metrics.webhook_requests.labels(source=sns.SOURCE, code=str(response.status)).inc()
    return response


async def _sns_intake(request: web.Request, d: Daemon, gate: sns.Gate) -> web.Response:
    source = sns.SOURCE
    header = request.headers.get(sns.TYPE_HEADER)
    claimed = header if header in sns.TYPES else "unknown"
    if d.stopping:
        return common.stopping()
    limited = _rate_limited(request, d, claimed)
    if limited is not None:
        return limited
    body = await common.read_body(request, d, source)
    if isinstance(body, web.Response):
        result = "too_large" if body.status == 413 else "malformed"
        d.metrics.sns_messages.labels(type=claimed, result=result).inc()
        return body
    now = d.clock.now()
    try:
        envelope = sns.parse(body, type_header=header)
    except errors.IntakeError as exc:
        d.metrics.sns_messages.labels(type=claimed, result="malformed").inc()
        return common.refused(d, source, exc)
    bound = log.bind(
        sns_type=envelope.type, message_id=envelope.message_id, topic=envelope.topic_arn
    )
    # Cheapest first: forged traffic for other topics or of another day costs no fetch.
    try:
        urls = gate.check(envelope, now=now)
        sns_api = await _sns_client(d)
        sns.verify_signature(envelope, await sns_api.public_key(urls.cert))
    except sns.Rejected as exc:
        d.metrics.sns_messages.labels(type=envelope.type, result=exc.result).inc()
        bound.info("sns_message_rejected", result=exc.result, error=str(exc))
        return common.refused(d, source, exc, kind=exc.result)
    except errors.IntakeError as exc:  # the certificate itself was refused
        d.metrics.sns_messages.labels(type=envelope.type, result="bad_signature").inc()
        bound.info("sns_message_rejected", result="bad_signature", error=str(exc))
        return common.refused(d, source, exc, kind="bad_signature")
    except errors.TemporaryError as exc:
        d.metrics.sns_messages.labels(type=envelope.type, result="cert_unavailable").inc()
        bound.warning("sns_cert_unavailable", error=str(exc))
        return common.error(503, f"cannot verify the message now: {exc}", **{"Retry-After": "10"})
    seen = gate.seen.reserve(
        envelope.message_id, expires=gate.remember_until(envelope, now=now), now=now
    )
    if seen != "new":
        d.metrics.sns_messages.labels(type=envelope.type, result="duplicate").inc()
        if seen == "pending":  # its first copy may still fail: this one must not be acked
            return common.error(
                503, "this MessageId is being accepted; retry", **{"Retry-After": "5"}
            )
        return web.json_response({"status": "ok", "duplicate": True})
    d.metrics.sns_messages.labels(type=envelope.type, result="verified").inc()
    response: web.Response | None = None
    try:
        response = await _verified(
            d, gate, envelope, urls=urls, sns_api=sns_api, bound=bound, now=now
        )
        return response
    finally:
        if response is None or response.status >= 300:
            gate.seen.release(envelope.message_id)  # not accepted: SNS's retry must be
        else:
            gate.seen.settle(envelope.message_id)


async def _verified(
    d: Daemon,
    gate: sns.Gate,
    envelope: sns.Envelope,
    *,
    urls: sns.Urls,
    sns_api: sns_client.SnsClient,
    bound: Any,
    now: float,
) -> web.Response:
    """Confirm, record or journal a verified message seen for the first time."""
    if envelope.type == sns.NOTIFICATION:
        received_at = dt.datetime.fromtimestamp(now, dt.UTC)
        return await _sns_notification(d, gate, envelope, received_at=received_at)
    if envelope.type == sns.SUBSCRIPTION:
        assert urls.subscribe is not None  # checked by gate.check for this type
        answer = await _sns_subscribe(d, sns_api, urls.subscribe, bound)
        return await _remembered(d, gate, envelope, answer)
    d.metrics.sns_subscriptions.labels(event="unsubscribed").inc()
    bound.warning("sns_unsubscribed")
    return await _remembered(d, gate, envelope, web.json_response({"status": "ok"}))


def _rate_limited(request: web.Request, d: Daemon, claimed: str) -> web.Response | None:
    """The 503 for a client past its SNS request budget, else None. The endpoint is
    unauthenticated: one address must not keep it busy (every message costs a signature
    check). 503 because SNS retries it later."""
    client = server.forwarded_client(
        server.client_of(request.transport),
        request.headers.get("X-Forwarded-For"),
        d.settings.http.trusted_proxies,
    )
    if request.app[SNS_CLIENTS].allow(client, now=d.clock.now()):
        return None
    d.metrics.sns_messages.labels(type=claimed, result="rate_limited").inc()
    d.metrics.bad_input.labels(source=sns.SOURCE, kind="rate_limited").inc()
    return common.error(
        503,
        "too many requests from this address (http.sns_rate_per_client); retry later",
        **{"Retry-After": "1"},
    )


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
        return common.error(
            503, f"could not confirm the subscription: {exc}", **{"Retry-After": "10"}
        )
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
        return common.refused(d, sns.SOURCE, exc)
    if alarm is None:
        d.metrics.sns_notifications.labels(state="not_alarm").inc()
        log.info("sns_notification_ignored", message_id=envelope.message_id, reason="not_alarm")
        return await _remembered(
            d, gate, envelope,
            web.json_response({"status": "ok", "accepted": 0, "ignored": "not_alarm"}),
        )  # fmt: skip
    try:
        gate.check_alarm_time(alarm, envelope)
    except sns.Rejected as exc:
        d.metrics.sns_notifications.labels(state="future_state_change").inc()
        log.info(
            "sns_message_rejected", message_id=envelope.message_id, result=exc.result,
            error=str(exc),
        )  # fmt: skip
        return common.refused(d, sns.SOURCE, exc, kind=exc.result)
    transition, undo = gate.alarms.advance(alarm)
    state = "stale" if transition.note == "stale" else alarm.state
    d.metrics.sns_notifications.labels(state=state).inc()
    log.info(
        "sns_alarm", alarm=alarm.name, state=alarm.state, old_state=alarm.old_state,
        fingerprint=alarm.fingerprint, message_id=envelope.message_id, note=transition.note,
    )  # fmt: skip
    if transition.status == "ignored":
        response = await _remembered(
            d, gate, envelope,
            web.json_response({"status": "ok", "accepted": 0, "ignored": transition.note}),
            alarm=alarm.fingerprint,
        )  # fmt: skip
    else:
        alert = sns.to_alert(alarm, starts_at=transition.starts_at, received_at=received_at)
        # The MessageId and the alarm's new state commit with the journal row, or not at all.
        remember = d.sns_memory.job(
            gate, message_id=envelope.message_id, alarm=alarm.fingerprint, now=d.clock.now()
        )
        response = await common.journal(
            d, [alert], source=sns.SOURCE, payload=sns.journal_payload(envelope, alert),
            request_id=envelope.message_id[:64], received_at=received_at, also=remember,
        )  # fmt: skip
    if response.status != 200:
        undo()
    return response


async def _remembered(
    d: Daemon,
    gate: sns.Gate,
    envelope: sns.Envelope,
    response: web.Response,
    *,
    alarm: str | None = None,
) -> web.Response:
    """`response`, once the MessageId (and the alarm's state) it settles are durable: a
    re-delivery after a restart is then a duplicate too. 503 if they cannot be written."""
    if response.status >= 300:
        return response
    job = d.sns_memory.job(gate, message_id=envelope.message_id, alarm=alarm, now=d.clock.now())
    try:
        await d.sns_memory.save(job)
    except (errors.RemediatorError, sqlite3.Error) as exc:
        log.error("sns_memory_write_failed", message_id=envelope.message_id, error=str(exc))
        return common.error(
            503, "cannot record the message right now; retry", **{"Retry-After": "5"}
        )
    return response
