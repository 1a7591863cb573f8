"""CloudWatch alarms through SNS: an internet-facing endpoint that only trusts what SNS signed.

Messages are signed here with an RSA key whose certificate is served over https on
loopback by a test CA the daemon is told to trust (`sns.ca_file`, test-only), with
127.0.0.1 as the allowed SNS host. Every refusal is checked for its status, its count in
`remediator_sns_messages_total{type,result}` and the absence of any decision.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import hashlib
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediator import cli, errors, intake
from remediator import settings as settings_mod
from remediator.clients import sns as sns_client
from remediator.intake import sns
from tests import fuzz
from tests.harness import START, Harness
from tests.sns_fixtures import (
    ALARM_ARN,
    CERT_PATH,
    OTHER_CERT_PATH,
    OTHER_TOPIC,
    TOPIC,
    CertServer,
    Pki,
    alarm_message,
    confirmation,
    make_pki,
    notification,
    post_sns,
    sign,
    sns_config,
)

RULES = """
rules:
  - name: api-errors
    source: sns
    matchers: ['alertname = "PlooralAPIHighErrorRate"']
    action:
      type: log
      params:
        message: "would force a new deployment of {{ labels.ServiceName }}"
        target: "{{ labels.ClusterName }}/{{ labels.ServiceName }}"
    verify: {resolve_within: 10m}
  - name: alertmanager-only
    source: alertmanager
    matchers: ['alertname = "PlooralAPIHighErrorRate"']
    action: {type: log, params: {message: "never for an SNS alert"}}
"""
FINGERPRINT = hashlib.sha256(ALARM_ARN.encode()).hexdigest()[:16]
ALARM_AT = START - dt.timedelta(minutes=1)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("sns-pki"))


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[CertServer]:
    async with CertServer(pki) as s:
        yield s


@contextlib.asynccontextmanager
async def daemon(
    tmp_path: Path, pki: Pki, *, topics: tuple[str, ...] = (TOPIC,), extra: str = ""
) -> AsyncIterator[Harness]:
    async with Harness(
        tmp_path, rules=RULES, config=sns_config(pki, topics=topics, extra=extra)
    ) as h:
        yield h


async def counted(h: Harness, kind: str, result: str) -> float:
    return await h.metric("remediator_sns_messages_total", type=kind, result=result)


async def journal_rows(h: Harness) -> int:
    rows: int = await h.daemon.db.read(
        lambda c: c.execute("SELECT count(*) FROM journal").fetchone()[0]
    )
    return rows


async def assert_refused(
    h: Harness, resp: Any, *, status: int, result: str, kind: str = "Notification"
) -> None:
    """Refused with `status`, counted once as `result`, and nothing journaled or decided."""
    assert resp.status == status, await resp.text()
    await h.settle()
    assert await counted(h, kind, result) == 1
    assert await counted(h, kind, "verified") == 0
    assert await h.metric("remediator_webhook_requests_total", source="sns", code=str(status)) == 1
    assert await h.decisions() == []
    assert await journal_rows(h) == 0


def alarm(server: CertServer, pki: Pki, **fields: Any) -> dict[str, Any]:
    """A signed notification of PlooralAPIHighErrorRate going into ALARM a minute ago."""
    fields.setdefault("cert_url", server.cert_url)
    return notification(alarm_message(), key=pki.signing_key, **fields)


def flip(text: str, at: int) -> str:
    """`text` with one character changed to another of the same kind."""
    c = text[at]
    other = ("1" if c == "0" else "0") if c.isdigit() else ("b" if c == "a" else "a")
    return text[:at] + other + text[at + 1 :]


# -- verified intake ------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"], ids=["SHA1withRSA", "SHA256withRSA"])
async def test_a_signed_cloudwatch_alarm_is_verified_journaled_and_decided(
    tmp_path: Path, pki: Pki, server: CertServer, version: str
) -> None:
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, alarm(server, pki, version=version))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["accepted"] == 1
        await h.settle()
        [d] = await h.decisions()
        assert (d["rule"], d["outcome"], d["source"]) == ("api-errors", "dry_run", "sns")
        assert d["target"] == "log plooral-prod/plooral-api"
        assert d["fingerprint"] == FINGERPRINT
        assert d["starts_at"] == "2027-01-15T11:59:00.000000Z"
        assert await counted(h, "Notification", "verified") == 1
        assert (
            await h.metric("remediator_alerts_received_total", source="sns", status="firing") == 1
        )
        assert await h.metric("remediator_sns_notifications_total", state="ALARM") == 1
        assert server.fetches() == 1
        assert await journal_rows(h) == 0


@pytest.mark.parametrize(
    "field", ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Signature"]
)
async def test_a_flipped_byte_in_any_signed_field_is_refused_with_403(
    tmp_path: Path, pki: Pki, server: CertServer, field: str
) -> None:
    body = alarm(server, pki, version="2")
    if field == "Signature":
        raw = bytearray(base64.b64decode(body["Signature"]))
        raw[17] ^= 0x01
        body["Signature"] = base64.b64encode(raw).decode()
    elif field == "Timestamp":
        body["Timestamp"] = flip(body["Timestamp"], len(body["Timestamp"]) - 2)  # a millisecond
    else:
        body[field] = flip(body[field], len(body[field]) - 1 if field != "Message" else 40)
    # A pattern, so that the altered TopicArn is still allowed and reaches the signature check.
    async with daemon(tmp_path, pki, topics=("arn:aws:sns:us-east-1:123456789012:plooral-*",)) as h:
        resp = await post_sns(h, body)
        await assert_refused(h, resp, status=403, result="bad_signature")
        assert "Signature does not match" in (await resp.json())["error"]
        assert (
            await h.metric("remediator_rejected_inputs_total", source="sns", kind="bad_signature")
            == 1
        )


@pytest.mark.parametrize(
    "cert_url",
    [
        pytest.param("http://127.0.0.1:{port}" + CERT_PATH, id="http instead of https"),
        pytest.param("https://localhost:{port}" + CERT_PATH, id="a host outside the pattern"),
        pytest.param(
            "https://127.0.0.1.evil.example:{port}" + CERT_PATH, id="the host as a prefix"
        ),
        pytest.param("https://127.0.0.1:{port}@evil.example" + CERT_PATH, id="the host as a user"),
        pytest.param("https://x:y@127.0.0.1:{port}" + CERT_PATH, id="credentials"),
        pytest.param(
            "https://127.0.0.1:{port}/certs/anything.pem", id="a path outside the pattern"
        ),
        pytest.param("not a url at all", id="not a URL"),
    ],
)
async def test_a_signing_certificate_url_outside_https_and_the_host_pattern_is_never_fetched(
    tmp_path: Path, pki: Pki, server: CertServer, cert_url: str
) -> None:
    body = notification(
        alarm_message(), cert_url=cert_url.format(port=server.port), key=pki.signing_key
    )
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, body)
        await assert_refused(h, resp, status=403, result="bad_signature")
        assert "SigningCertURL" in (await resp.json())["error"]
        assert sum(server.hits.values()) == 0


async def test_a_certificate_that_did_not_sign_the_message_is_refused(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, alarm(server, pki, cert_url=server.url + OTHER_CERT_PATH))
        await assert_refused(h, resp, status=403, result="bad_signature")
        assert server.fetches(OTHER_CERT_PATH) == 1


async def test_a_certificate_url_that_serves_no_certificate_is_refused_and_not_asked_again(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    missing = "/SimpleNotificationService-00000000000000000000000000000000.pem"
    async with daemon(tmp_path, pki, extra="  cert_path_pattern: '^/.*\\.pem$'\n") as h:
        for _ in range(3):
            resp = await post_sns(h, alarm(server, pki, cert_url=server.url + missing))
            assert resp.status == 403
        resp = await post_sns(h, alarm(server, pki, cert_url=server.url + "/huge.pem"))
        assert resp.status == 403
        assert "larger than" in (await resp.json())["error"]
        assert server.fetches(missing) == 1, "a refused URL is remembered for a while"
        assert await counted(h, "Notification", "bad_signature") == 4
        assert await h.metric("remediator_sns_cert_fetches_total", result="error") == 2


async def test_an_unreachable_certificate_server_gets_503_so_that_sns_retries(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = alarm(server, pki)
    await server.stop()
    async with daemon(tmp_path, pki) as h:
        for _ in range(2):  # not remembered as seen: the retry is verified again
            resp = await post_sns(h, body)
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) > 0
        assert await counted(h, "Notification", "cert_unavailable") == 2
        assert await h.decisions() == []


async def test_a_message_from_a_topic_not_on_the_allow_list_is_refused_before_any_fetch(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, alarm(server, pki, topic=OTHER_TOPIC))
        await assert_refused(h, resp, status=403, result="topic_not_allowed")
        assert "sns.allowed_topics" in (await resp.json())["error"]
        assert server.fetches() == 0


async def test_with_no_allowed_topics_every_message_is_refused(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    async with daemon(tmp_path, pki, topics=()) as h:
        resp = await post_sns(h, alarm(server, pki))
        await assert_refused(h, resp, status=403, result="topic_not_allowed")


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(START - dt.timedelta(minutes=61), id="older than max_age"),
        pytest.param(START + dt.timedelta(minutes=10), id="from the future"),
    ],
)
async def test_a_message_outside_the_timestamp_window_is_refused_as_a_replay(
    tmp_path: Path, pki: Pki, server: CertServer, sent: dt.datetime
) -> None:
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, alarm(server, pki, timestamp=sent))
        await assert_refused(h, resp, status=403, result="replay")
        assert server.fetches() == 0


async def test_a_recorded_message_replayed_after_max_age_is_refused(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = alarm(server, pki, timestamp=START)
    async with daemon(tmp_path, pki, extra="  max_age: 30m\n") as h:
        h.clock.advance(29 * 60)
        assert (await post_sns(h, body)).status == 200
        h.clock.advance(2 * 60)  # the daemon's clock decides, not the wall clock
        fresh = alarm(server, pki, timestamp=START)
        resp = await post_sns(h, fresh)
        assert resp.status == 403
        assert await counted(h, "Notification", "replay") == 1
        assert "sns.max_age" in (await resp.json())["error"]


async def test_a_redelivered_message_id_is_acknowledged_without_a_second_decision(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = alarm(server, pki)
    async with daemon(tmp_path, pki) as h:
        assert (await post_sns(h, body)).status == 200
        await h.settle()
        again = await post_sns(h, body)
        assert again.status == 200
        assert (await again.json())["duplicate"] is True
        await h.settle()
        assert len(await h.decisions()) == 1
        assert await counted(h, "Notification", "duplicate") == 1
        assert await counted(h, "Notification", "verified") == 1
        assert (
            await h.metric("remediator_alerts_received_total", source="sns", status="firing") == 1
        )
        assert await journal_rows(h) == 0


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("SubscriptionConfirmation", id="another type"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
    ],
)
async def test_a_type_header_that_disagrees_with_the_body_is_refused_with_400(
    tmp_path: Path, pki: Pki, server: CertServer, header: str | None
) -> None:
    body = json.dumps(alarm(server, pki)).encode()
    async with daemon(tmp_path, pki) as h:
        if header is None:
            resp = await h.client.post("/webhook/sns", data=body)
        else:
            resp = await post_sns(h, body, message_type=header or " ")
        assert resp.status == 400
        assert "x-amz-sns-message-type" in (await resp.json())["error"]
        assert (
            await h.metric("remediator_rejected_inputs_total", source="sns", kind="malformed") == 1
        )
        assert server.fetches() == 0


async def test_a_body_above_max_body_bytes_is_refused_with_413(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    huge = notification("x" * 5000, cert_url=server.cert_url, key=pki.signing_key)
    async with daemon(tmp_path, pki, extra="intake: {max_body_bytes: 4096}\n") as h:
        resp = await post_sns(h, huge)
        await assert_refused(h, resp, status=413, result="too_large")


# -- subscriptions --------------------------------------------------------------------


def subscribe_url(server: CertServer, topic: str = TOPIC) -> str:
    query = urllib.parse.urlencode(
        {"Action": "ConfirmSubscription", "TopicArn": topic, "Token": "2336412f37fb"}
    )
    return f"{server.url}/confirm?{query}"


async def test_a_subscription_confirmation_for_an_allowed_topic_calls_subscribe_url(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = confirmation(
        cert_url=server.cert_url, subscribe_url=subscribe_url(server), key=pki.signing_key
    )
    async with daemon(tmp_path, pki) as h:
        with structlog.testing.capture_logs() as logs:
            resp = await post_sns(h, body)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["confirmed"] is True
        assert len(server.confirmations) == 1
        assert "Token=2336412f37fb" in server.confirmations[0]
        assert await h.metric("remediator_sns_subscriptions_total", event="confirmed") == 1
        assert await counted(h, "SubscriptionConfirmation", "verified") == 1
        [event] = [e for e in logs if e["event"] == "sns_subscription_confirmed"]
        assert event["topic"] == TOPIC
        assert event["subscription"] == TOPIC + ":0f1e2d3c"


async def test_a_subscription_confirmation_for_another_topic_never_calls_subscribe_url(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = confirmation(
        cert_url=server.cert_url, subscribe_url=subscribe_url(server, OTHER_TOPIC),
        key=pki.signing_key, topic=OTHER_TOPIC,
    )  # fmt: skip
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, body)
        await assert_refused(
            h, resp, status=403, result="topic_not_allowed", kind="SubscriptionConfirmation"
        )
        assert server.confirmations == []
        assert server.fetches() == 0


@pytest.mark.parametrize("change", ["SubscribeURL", "Token", "another host"])
async def test_an_altered_subscription_confirmation_never_calls_any_url(
    tmp_path: Path, pki: Pki, server: CertServer, change: str
) -> None:
    body = confirmation(
        cert_url=server.cert_url, subscribe_url=subscribe_url(server), key=pki.signing_key
    )
    if change == "SubscribeURL":
        body["SubscribeURL"] += "&Extra=1"
    elif change == "Token":
        body["Token"] = flip(body["Token"], 3)
    else:  # signed as is, but not a host SNS would send us to
        body = sign({**body, "SubscribeURL": "https://localhost/confirm"}, pki.signing_key)
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, body)
        await assert_refused(
            h, resp, status=403, result="bad_signature", kind="SubscriptionConfirmation"
        )
        assert server.confirmations == []


async def test_with_confirmation_turned_off_a_subscription_is_only_recorded(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = confirmation(
        cert_url=server.cert_url, subscribe_url=subscribe_url(server), key=pki.signing_key
    )
    async with daemon(tmp_path, pki, extra="  confirm_subscriptions: false\n") as h:
        resp = await post_sns(h, body)
        assert resp.status == 200
        assert (await resp.json())["confirmed"] is False
        assert server.confirmations == []
        assert await h.metric("remediator_sns_subscriptions_total", event="left_unconfirmed") == 1


async def test_an_unsubscribe_confirmation_is_logged_and_counted_and_calls_nothing(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = confirmation(
        cert_url=server.cert_url, subscribe_url=subscribe_url(server), key=pki.signing_key,
        kind="UnsubscribeConfirmation", version="2",
    )  # fmt: skip
    async with daemon(tmp_path, pki) as h:
        with structlog.testing.capture_logs() as logs:
            resp = await post_sns(h, body)
        assert resp.status == 200, await resp.text()
        assert server.confirmations == []
        assert await h.metric("remediator_sns_subscriptions_total", event="unsubscribed") == 1
        assert await counted(h, "UnsubscribeConfirmation", "verified") == 1
        assert [e["topic"] for e in logs if e["event"] == "sns_unsubscribed"] == [TOPIC]


# -- alarms ---------------------------------------------------------------------------


def transition(
    server: CertServer,
    pki: Pki,
    state: str,
    at: dt.datetime,
    *,
    old_state: str = "OK",
    **fields: Any,
) -> dict[str, Any]:
    """A signed notification of PlooralAPIHighErrorRate changing to `state` at `at`."""
    message = alarm_message(state=state, old_state=old_state, changed_at=at)
    return notification(
        message,
        cert_url=server.cert_url,
        key=pki.signing_key,
        timestamp=at + dt.timedelta(seconds=1),
        **fields,
    )


async def test_an_alarm_then_ok_gives_one_firing_decision_and_one_effective_verification(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    async with daemon(tmp_path, pki, extra="dry_run: false\n") as h:
        assert (await post_sns(h, transition(server, pki, "ALARM", ALARM_AT))).status == 200
        await h.settle()
        await h.advance(180)
        ok = transition(server, pki, "OK", START + 2 * MINUTE, old_state="ALARM")
        resp = await post_sns(h, ok)
        assert resp.status == 200
        await h.settle()
        [d] = await h.decisions()
        assert (d["rule"], d["outcome"]) == ("api-errors", "executed")
        assert d["verification"].startswith("effective")
        assert (
            await h.metric(
                "remediator_remediation_verified_total", rule="api-errors", result="effective"
            )
            == 1
        )
        assert (
            await h.metric(
                "remediator_remediation_verified_total", rule="api-errors", result="ineffective"
            )
            == 0
        )
        assert (
            await h.metric("remediator_alerts_received_total", source="sns", status="resolved") == 1
        )
        await h.advance(3600)  # no late "ineffective" either
        assert (
            await h.metric(
                "remediator_remediation_verified_total", rule="api-errors", result="ineffective"
            )
            == 0
        )
        assert server.fetches() == 1


async def test_an_ok_whose_alarm_this_daemon_never_saw_resolves_nothing(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    async with daemon(tmp_path, pki, extra="dry_run: false\n") as h:
        resp = await post_sns(h, transition(server, pki, "OK", ALARM_AT, old_state="ALARM"))
        assert resp.status == 200
        assert (await resp.json())["accepted"] == 1
        await h.settle()
        assert await h.decisions() == []


async def test_an_ok_delivered_before_its_alarm_keeps_the_late_alarm_from_acting(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    async with daemon(tmp_path, pki) as h:
        assert (
            await post_sns(h, transition(server, pki, "OK", START, old_state="ALARM"))
        ).status == 200
        late = await post_sns(h, transition(server, pki, "ALARM", ALARM_AT))
        assert late.status == 200
        assert (await late.json())["ignored"] == "stale"
        await h.settle()
        assert await h.decisions() == []
        assert await h.metric("remediator_sns_notifications_total", state="stale") == 1


async def test_insufficient_data_is_recorded_but_not_acted_on_and_does_not_end_the_episode(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(h, transition(server, pki, "INSUFFICIENT_DATA", ALARM_AT - MINUTE))
        assert resp.status == 200
        assert (await resp.json())["accepted"] == 0
        await h.settle()
        assert await h.decisions() == []
        assert await journal_rows(h) == 0
        assert await h.metric("remediator_sns_notifications_total", state="INSUFFICIENT_DATA") == 1
        # ALARM → INSUFFICIENT_DATA (say, the service restarting) → ALARM is one episode.
        await post_sns(h, transition(server, pki, "ALARM", ALARM_AT))
        await post_sns(
            h, transition(server, pki, "INSUFFICIENT_DATA", ALARM_AT + MINUTE, old_state="ALARM")
        )
        again = transition(
            server, pki, "ALARM", ALARM_AT + 2 * MINUTE, old_state="INSUFFICIENT_DATA"
        )
        assert (await post_sns(h, again)).status == 200
        await h.settle()
        [d] = await h.decisions()
        assert d["starts_at"] == "2027-01-15T11:59:00.000000Z"
        assert await h.metric("remediator_duplicates_total", source="sns") == 1


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("Hello from the console", id="plain text"),
        pytest.param(
            json.dumps({"source": "aws.ecs", "detail-type": "ECS Task State Change"}),
            id="other JSON",
        ),
        pytest.param("[1, 2", id="broken JSON"),
    ],
)
async def test_a_notification_that_is_not_a_cloudwatch_alarm_is_acknowledged_and_not_acted_on(
    tmp_path: Path, pki: Pki, server: CertServer, message: str
) -> None:
    async with daemon(tmp_path, pki) as h:
        resp = await post_sns(
            h, notification(message, cert_url=server.cert_url, key=pki.signing_key, subject=None)
        )
        assert resp.status == 200
        assert (await resp.json())["ignored"] == "not_alarm"
        await h.settle()
        assert await h.decisions() == []
        assert await h.metric("remediator_sns_notifications_total", state="not_alarm") == 1
        assert await counted(h, "Notification", "verified") == 1


async def test_an_alarm_with_a_bad_field_is_refused_with_422_every_time(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    body = notification(
        {**alarm_message(), "NewStateValue": "ON_FIRE"},
        cert_url=server.cert_url,
        key=pki.signing_key,
    )
    async with daemon(tmp_path, pki) as h:
        for _ in range(2):  # not remembered as seen: refused again, never "duplicate"
            resp = await post_sns(h, body)
            assert resp.status == 422
            assert "NewStateValue" in (await resp.json())["error"]
        assert await h.metric("remediator_rejected_inputs_total", source="sns", kind="schema") == 2
        assert await h.decisions() == []


async def test_a_burst_of_300_concurrent_notifications_fetches_the_certificate_once(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    def sign_all() -> list[bytes]:  # 300 RSA signatures: the test's own work, off the loop
        return [
            notification(
                alarm_message(f"QueueBacklog{i}"),
                cert_url=server.cert_url,
                key=pki.signing_key,
                version="2",
            )
            for i in range(300)
        ]

    bodies = await asyncio.to_thread(sign_all)
    async with daemon(tmp_path, pki) as h:
        statuses = await asyncio.gather(*(post_sns(h, b) for b in bodies))
        assert [r.status for r in statuses] == [200] * 300
        assert server.fetches() == 1
        assert await h.metric("remediator_sns_cert_fetches_total", result="ok") == 1
        assert await counted(h, "Notification", "verified") == 300
        await h.settle()
        assert (
            await h.metric("remediator_alerts_received_total", source="sns", status="firing") == 300
        )


class SlowToRefuse(CertServer):
    """A certificate host that answers the paths it does not serve only once `release`
    is set: a forger's made-up URLs keeping every download of the daemon busy."""

    def __init__(self, pki: Pki) -> None:
        super().__init__(pki)
        self.release = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path in self.bodies:
            return await super()._handle(request)
        self.hits[request.path] += 1
        await self.release.wait()
        return web.Response(status=404)


async def test_forged_certificate_urls_holding_every_download_do_not_stop_genuine_alarms(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anyone who knows an allowed TopicArn can post unsigned messages naming made-up
    # certificate paths on the SNS host: each is one download. Holding all of them, they
    # must not turn the genuine certificate's refetch (every CERT_TTL) into 503s — SNS's
    # default delivery policy gives up on a message after three retries, 20 s apart.
    monkeypatch.setattr(sns_client, "CERT_TTL", 0.0)  # the cached key's 6 h are over
    async with SlowToRefuse(pki) as server, daemon(tmp_path, pki) as h:
        assert (await post_sns(h, alarm(server, pki))).status == 200
        forged = [
            alarm(server, pki, cert_url=f"{server.url}/SimpleNotificationService-{i:032x}.pem")
            for i in range(sns_client.MAX_INFLIGHT)
        ]
        held = [asyncio.create_task(post_sns(h, body)) for body in forged]
        try:
            client = h.daemon.clients._opened["sns"][0]
            while len(client._inflight) < sns_client.MAX_INFLIGHT:
                await asyncio.sleep(0.01)
            resp = await post_sns(h, alarm(server, pki, timestamp=START + MINUTE))
            assert resp.status == 200, await resp.text()
            assert server.fetches() == 2  # the genuine certificate, asked again
        finally:
            server.release.set()
        assert [r.status for r in await asyncio.gather(*held)] == [403] * len(forged)


# -- the journal ----------------------------------------------------------------------


async def stop_engine(h: Harness) -> None:
    task = h.daemon._engine_task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_journaled_alarm_is_decided_after_a_restart_without_fetching_anything(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    h = Harness(tmp_path, rules=RULES, config=sns_config(pki))
    await h.start()
    await stop_engine(h)
    assert (await post_sns(h, alarm(server, pki))).status == 200
    # Down without deciding: the acknowledged alarm is only in the journal.
    await h.client.close()
    await h.daemon.shutdown()
    await server.stop()
    await h.start()
    try:
        await h.settle()
        [d] = await h.decisions()
        assert (d["rule"], d["source"], d["fingerprint"]) == ("api-errors", "sns", FINGERPRINT)
        assert d["starts_at"] == "2027-01-15T11:59:00.000000Z"
        assert server.fetches() == 1, "replay trusts the journal: no second fetch"
    finally:
        await h.stop()


async def test_a_full_backlog_answers_503_and_the_retry_of_that_message_is_accepted(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    bodies = [
        notification(
            alarm_message(f"WorkerFailure{i}"), cert_url=server.cert_url, key=pki.signing_key
        )
        for i in range(11)
    ]
    async with daemon(tmp_path, pki, extra="intake: {backlog_limit: 10}\n") as h:
        await stop_engine(h)
        for b in bodies[:10]:
            assert (await post_sns(h, b)).status == 200
        refused = await post_sns(h, bodies[10])
        assert refused.status == 503
        h.daemon._engine_task = asyncio.create_task(h.daemon.engine.run(h.daemon.settings.workers))
        await h.settle()
        retried = await post_sns(h, bodies[10])
        assert retried.status == 200
        assert (await retried.json())["accepted"] == 1


def test_a_journaled_payload_replays_to_the_same_alert(pki: Pki) -> None:
    ok = notification(
        alarm_message(state="OK", old_state="ALARM", changed_at=START),
        cert_url="https://sns.us-east-1.amazonaws.com" + CERT_PATH,
        key=pki.signing_key,
    )
    envelope = sns.parse(json.dumps(ok).encode(), type_header="Notification")
    parsed = sns.parse_alarm(envelope)
    assert parsed is not None
    alert = sns.to_alert(parsed, starts_at=ALARM_AT, received_at=START)
    payload = sns.journal_payload(envelope, alert)
    assert intake.replay("sns", payload, START) == [alert]
    [again] = intake.replay("sns", payload, START)
    assert (again.status, again.starts_at, again.ends_at) == ("resolved", ALARM_AT, START)


def test_a_message_id_is_pending_while_accepted_then_seen_until_it_would_be_too_old() -> None:
    ids = sns.MessageIds(max_entries=100)
    assert ids.reserve("m1", expires=100.0, now=0.0) == "new"
    assert ids.reserve("m1", expires=100.0, now=1.0) == "pending", "its first copy may still fail"
    ids.settle("m1")
    assert ids.reserve("m1", expires=100.0, now=2.0) == "seen"
    assert ids.reserve("m1", expires=200.0, now=100.0) == "new", "forgotten once too old anyway"
    ids.release("m1")
    assert ids.reserve("m1", expires=200.0, now=101.0) == "new", "a refused copy is not seen"


def test_message_ids_are_bounded() -> None:
    ids = sns.MessageIds(max_entries=100)
    for i in range(250):
        assert ids.reserve(f"m{i}", expires=1e9, now=0.0) == "new"
        ids.settle(f"m{i}")
    assert len(ids) == 100
    assert ids.reserve("m249", expires=1e9, now=0.0) == "seen"
    assert ids.reserve("m0", expires=1e9, now=0.0) == "new", "the oldest are forgotten first"


# -- the CloudWatch mapping ------------------------------------------------------------


def parsed_alarm(message: dict[str, Any], pki: Pki) -> sns.Alarm:
    """The alarm in a notification; its signature is not the point here."""
    body = notification(
        message, cert_url="https://sns.us-east-1.amazonaws.com" + CERT_PATH, key=pki.signing_key
    )
    alarm = sns.parse_alarm(sns.parse(json.dumps(body).encode(), type_header="Notification"))
    assert alarm is not None
    return alarm


def test_an_alarm_carries_its_name_region_account_metric_and_dimensions_as_labels(
    pki: Pki,
) -> None:
    a = parsed_alarm(alarm_message(changed_at=ALARM_AT), pki)
    assert a.labels == {
        "alertname": "PlooralAPIHighErrorRate",
        "region": "us-east-1",
        "account": "123456789012",
        "namespace": "AWS/ECS",
        "metric": "HTTPCode_Target_5XX_Count",
        "ClusterName": "plooral-prod",
        "ServiceName": "plooral-api",
    }
    assert a.annotations["description"] == "PlooralAPIHighErrorRate description"
    assert a.annotations["reason"] == "Threshold Crossed: ALARM"
    assert a.annotations["alarm_arn"] == ALARM_ARN
    assert a.annotations["topic_arn"] == TOPIC
    assert a.changed_at == ALARM_AT
    assert a.fingerprint == FINGERPRINT
    assert a.generator_url == (
        "https://console.aws.amazon.com/cloudwatch/home?region=us-east-1"
        "#alarmsV2:alarm/PlooralAPIHighErrorRate"
    )
    ok = parsed_alarm(alarm_message(state="OK", changed_at=START), pki)
    assert ok.fingerprint == a.fingerprint, "one fingerprint per alarm, whatever its state"


@pytest.mark.parametrize(
    ("dimensions", "labels"),
    [
        ({"QueueName": "plooral-jobs"}, {"QueueName": "plooral-jobs"}),
        (
            {"FunctionName": "resize", "Resource": "resize:live"},
            {"FunctionName": "resize", "Resource": "resize:live"},
        ),
        ({"Queue.Name": "a", "5xx": "b"}, {"Queue_Name": "a", "_5xx": "b"}),
        (
            {"region": "eu-west-1", "metric": "m"},
            {"dimension_region": "eu-west-1", "dimension_metric": "m"},
        ),
        ({"Queue-Name": "first", "Queue.Name": "second"}, {"Queue_Name": "first"}),
    ],
    ids=["as is", "several", "invalid characters", "reserved names", "first of two alike wins"],
)
def test_dimension_names_become_valid_label_names_deterministically(
    pki: Pki, dimensions: dict[str, str], labels: dict[str, str]
) -> None:
    a = parsed_alarm(alarm_message(dimensions=dimensions), pki)
    fixed = ("alertname", "region", "account", "namespace", "metric")
    assert {k: v for k, v in a.labels.items() if k not in fixed} == labels
    assert a.labels["region"] == "us-east-1"


def test_a_metric_math_alarm_takes_its_metric_and_dimensions_from_its_metric_stats(
    pki: Pki,
) -> None:
    message = alarm_message("PlooralAPIHighErrorRate")
    message["Trigger"] = {
        "Metrics": [
            {"Id": "rate", "Expression": "errors / requests * 100", "ReturnData": True},
            {
                "Id": "errors",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/ApplicationELB",
                        "MetricName": "HTTPCode_Target_5XX_Count",
                        "Dimensions": [
                            {"name": "LoadBalancer", "value": "app/plooral-api/50dc6c495c0c9188"}
                        ],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
                "ReturnData": False,
            },
        ]
    }
    a = parsed_alarm(message, pki)
    assert a.labels["namespace"] == "AWS/ApplicationELB"
    assert a.labels["metric"] == "HTTPCode_Target_5XX_Count"
    assert a.labels["LoadBalancer"] == "app/plooral-api/50dc6c495c0c9188"


def test_a_composite_alarm_without_a_trigger_still_names_region_and_account(pki: Pki) -> None:
    message = {k: v for k, v in alarm_message("PlooralDegraded").items() if k != "Trigger"}
    message["AlarmRule"] = 'ALARM("PlooralAPIHighErrorRate") OR ALARM("PlooralWorkerFailure")'
    a = parsed_alarm(message, pki)
    assert a.labels == {
        "alertname": "PlooralDegraded",
        "region": "us-east-1",
        "account": "123456789012",
    }


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("sns.us-east-1.amazonaws.com", True),
        ("sns.cn-north-1.amazonaws.com.cn", True),
        ("SNS.EU-WEST-1.AMAZONAWS.COM", True),
        ("sns.us-east-1.amazonaws.com.evil.example", False),
        ("sns.us-east-1.amazonaws.com.", False),
        ("evil-sns.us-east-1.amazonaws.com", False),
        ("sqs.us-east-1.amazonaws.com", False),
        # S3 virtual-hosted names of a bucket called `sns`: whoever owns it could serve
        # a certificate of their own.
        ("sns.s3.amazonaws.com", False),
        ("sns.s3-accelerate.amazonaws.com", False),
        ("sns.s3-us-west-2.amazonaws.com", False),
    ],
)
def test_the_default_host_pattern_admits_only_sns_endpoints(host: str, allowed: bool) -> None:
    s = settings_mod.Sns()
    url = f"https://{host}{CERT_PATH}"
    if allowed:
        assert sns.check_url(url, host=s.cert_host_pattern, path=s.cert_path_pattern, what="x").host
    else:
        with pytest.raises(sns.Rejected):
            sns.check_url(url, host=s.cert_host_pattern, path=s.cert_path_pattern, what="x")


@pytest.mark.parametrize(
    "suffix",
    [":8443" + CERT_PATH, ":443" + CERT_PATH + "?x=1", CERT_PATH + "?x=1", CERT_PATH + "#frag"],
)
def test_a_cert_url_with_another_port_a_query_or_a_fragment_is_refused(suffix: str) -> None:
    """Each variation would be one more URL a forger could make us fetch and cache."""
    s = settings_mod.Sns()
    with pytest.raises(sns.Rejected):
        sns.check_url(
            f"https://sns.us-east-1.amazonaws.com{suffix}",
            host=s.cert_host_pattern, path=s.cert_path_pattern, what="x", ports=s.cert_ports,
        )  # fmt: skip


def test_a_cert_from_another_regions_endpoint_is_refused_before_any_fetch(pki: Pki) -> None:
    doc = notification(
        alarm_message(),
        cert_url=f"https://sns.eu-west-1.amazonaws.com{CERT_PATH}",
        key=pki.signing_key,
    )
    envelope = sns.parse(json.dumps(doc).encode(), type_header="Notification")
    gate = sns.Gate(settings_mod.Sns(allowed_topics=(TOPIC,)))
    with pytest.raises(sns.Rejected, match="region eu-west-1"):
        gate.check(envelope, now=envelope.timestamp.timestamp())


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ("allowed_topics: [42]", "sns.allowed_topics[0]"),
        ("allowed_topics: ['my-topic']", "sns.allowed_topics[0]"),
        ("allowed_topics: ['arn:aws:sns:*:*:alarms']", "sns.allowed_topics[0]"),
        ("allowed_topics: ['arn:*']", "sns.allowed_topics[0]"),
        ("cert_ports: [0]", "sns.cert_ports"),
        ("cert_host_pattern: '('", "sns.cert_host_pattern"),
        ("ca_file: /nonexistent/ca.pem", "sns.ca_file"),
        ("max_age: 0s", "sns.max_age"),
        ("timeout: 5 minutes", "sns.timeout"),
        ("dedup_max_entries: 5", "sns.dedup_max_entries"),
        ("verify_signatures: false", "sns.verify_signatures"),
    ],
)
def test_a_bad_sns_config_names_the_key(tmp_path: Path, section: str, path: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"sns:\n  {section}\n")
    with pytest.raises(errors.ConfigError) as caught:
        settings_mod.load(config, environ={})
    assert caught.value.path == path


def test_simulate_reads_an_sns_notification_without_checking_its_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES)
    example = Path(__file__).parent.parent / "examples" / "sns-notification.json"
    assert cli.main(["simulate", str(example), "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "signature not verified" in out
    assert "rule api-errors" in out
    assert "alertmanager-only" not in out


# -- fuzzing --------------------------------------------------------------------------

json_values = fuzz.json_values(nan=False)


@st.composite
def mutated(draw: st.DrawFn, valid: list[dict[str, Any]], key: Any) -> tuple[bytes, str]:
    """A valid signed message with values replaced, removed or added. Its alarm may be
    mutated too and signed again (with a new MessageId), so that the CloudWatch mapping
    behind the signature check is fuzzed as well."""
    doc = copy.deepcopy(draw(st.sampled_from(valid)))
    # Mostly the header SNS would send, so that most cases get past the type check.
    header = doc["Type"] if draw(st.integers(0, 4)) else draw(headers)
    if doc["Type"] == "Notification" and draw(st.booleans()):
        inner = json.loads(doc["Message"])
        for _ in range(draw(st.integers(1, 3))):
            container, slot = draw(st.sampled_from(fuzz.slots(inner)))
            container[slot] = draw(json_values)
        doc["Message"] = json.dumps(inner)
        doc["MessageId"] = str(draw(st.uuids()))
        doc = sign(doc, key, draw(st.sampled_from(["1", "2"])))
    fuzz.mutate(draw, doc, times=draw(st.integers(0, 3)), values=json_values)
    return fuzz.garble(draw, json.dumps(doc).encode()), header


headers = st.sampled_from([*sns.TYPES, "Bogus", " "])


def test_no_body_makes_the_sns_webhook_answer_5xx_or_stop_serving(tmp_path: Path, pki: Pki) -> None:
    # One daemon and one certificate server for the whole run, on a loop of our own:
    # hypothesis drives a sync test.
    loop = asyncio.new_event_loop()
    server = CertServer(pki)
    loop.run_until_complete(server.start())
    h = Harness(
        tmp_path, rules=RULES, config=sns_config(pki, extra="intake: {max_body_bytes: 8192}\n")
    )
    loop.run_until_complete(h.start())
    key = pki.signing_key
    valid = [
        transition(server, pki, "ALARM", ALARM_AT),
        transition(server, pki, "OK", START, old_state="ALARM", version="2"),
        confirmation(cert_url=server.cert_url, subscribe_url=subscribe_url(server), key=key),
        confirmation(
            cert_url=server.cert_url,
            subscribe_url=subscribe_url(server),
            key=key,
            kind="UnsubscribeConfirmation",
        ),
    ]
    cases = st.one_of(
        st.tuples(st.binary(max_size=1024), headers),
        st.tuples(json_values.map(lambda v: json.dumps(v).encode()), headers),
        mutated(valid, key),
    )
    answers: list[int] = []
    try:

        @settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=cases)
        def post_anything(case: tuple[bytes, str]) -> None:
            raw, header = case
            resp = loop.run_until_complete(post_sns(h, raw, message_type=header))
            answers.append(resp.status)
            assert resp.status < 500, (resp.status, raw[:300])

        post_anything()
        loop.run_until_complete(h.settle())
        for code in set(answers):
            total = loop.run_until_complete(
                h.metric("remediator_webhook_requests_total", source="sns", code=str(code))
            )
            assert total == answers.count(code)
        fresh = notification(alarm_message(changed_at=START), cert_url=server.cert_url, key=key)
        assert loop.run_until_complete(post_sns(h, fresh)).status == 200
    finally:
        loop.run_until_complete(h.stop())
        loop.run_until_complete(server.stop())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def test_the_example_notification_is_a_cloudwatch_alarm_as_sns_posts_it() -> None:
    example = Path(__file__).parent.parent / "examples" / "sns-notification.json"
    [alert] = sns.sample(example.read_bytes(), received_at=START)
    assert alert.source == "sns"
    assert alert.name == "PlooralAPIHighErrorRate"
    assert alert.status == "firing"
    assert alert.labels["ServiceName"] == "plooral-api"


async def _sns_statuses(h: Harness, forwarded: list[str | None]) -> list[int]:
    """Post one unsigned message per entry (with that X-Forwarded-For, or none)."""
    out = []
    for value in forwarded:
        headers = {"Content-Type": "text/plain", "x-amz-sns-message-type": "Notification"}
        if value is not None:
            headers["X-Forwarded-For"] = value
        resp = await h.client.post("/webhook/sns", data=b"{}", headers=headers)
        if resp.status == 503:
            assert resp.headers["Retry-After"] == "1"
        out.append(resp.status)
    return out


async def test_one_address_past_its_sns_budget_gets_503_whatever_it_forwards(
    tmp_path: Path, pki: Pki
) -> None:
    """No proxy is trusted: X-Forwarded-For is the client's own word, and ignored."""
    extra = "http: {sns_rate_per_client: 0.01, sns_burst_per_client: 3}\n"
    async with daemon(tmp_path, pki, extra=extra) as h:
        forged = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", None]
        assert await _sns_statuses(h, forged) == [422, 422, 422, 503, 503]
        kind = {"source": "sns", "kind": "rate_limited"}
        assert await h.metric("remediator_rejected_inputs_total", **kind) == 2


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_sns_budget(
    tmp_path: Path, pki: Pki
) -> None:
    extra = (
        "http: {sns_rate_per_client: 0.01, sns_burst_per_client: 2,"
        " trusted_proxies: ['127.0.0.0/8', '10.0.0.0/8']}\n"
    )
    async with daemon(tmp_path, pki, extra=extra) as h:
        one, other = "203.0.113.7", "198.51.100.9"
        # Through two proxies (10.1.2.3 appended the address it saw): the client is `one`.
        assert await _sns_statuses(h, [one, f"{one}, 10.1.2.3", one]) == [422, 422, 503]
        assert await _sns_statuses(h, [other]) == [422]  # another client is served
        # What a client writes left of what the proxy appended does not make it another.
        assert await _sns_statuses(h, [f"{other}, {one}"]) == [503]
        # A header that cannot be read counts against the proxy's own address.
        assert await _sns_statuses(h, ["not-an-address", "x", "y"]) == [422, 422, 503]
