"""notify.pagerduty against a local Events API v2 server, notify.email against aiosmtpd.

The PagerDuty server below checks every body the way the Events API v2 documents it
(routing_key, event_action, dedup_key ≤ 255; for a trigger payload.summary ≤ 1024,
payload.source, payload.severity in critical/error/warning/info; links with href) and
answers 202 `{"status": "success", ...}` or 400 `{"status": "invalid event", ...}`.
The SMTP relay is aiosmtpd on loopback with STARTTLS required (a test CA's certificate)
and AUTH required over TLS; the test reads the mail it received.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import ssl
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from remediator import errors
from remediator.actions import registry
from remediator.matching import loader
from tests.harness import Harness, am_alert
from tests.servers import free_port
from tests.sns_fixtures import Pki, make_pki

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 characters, like PagerDuty's
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- PagerDuty


@dataclasses.dataclass
class PagerDuty:
    """Events API v2 on loopback: checks bodies, records the events, keeps open alerts."""

    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)
    open: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    fail_next: int = 0
    """Answer this many requests with 500 (after recording them): a lost answer."""
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> PagerDuty:
        app = web.Application()
        app.router.add_post("/v2/enqueue", self._enqueue)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.url = f"http://{LOOPBACK}:{self._runner.addresses[0][1]}/v2/enqueue"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _enqueue(self, request: web.Request) -> web.Response:
        try:
            event = await request.json()
        except ValueError:
            return self._invalid("body is not JSON")
        problem = _invalid_event(event)
        if problem:
            return self._invalid(problem)
        self.events.append(event)
        key = event["dedup_key"]
        if event["event_action"] == "trigger":
            self.open.setdefault(key, event)  # a repeat joins the open alert
        elif event["event_action"] == "resolve":
            self.open.pop(key, None)
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"status": "error"}, status=500)
        return web.json_response(
            {"status": "success", "message": "Event processed", "dedup_key": key}, status=202
        )

    def _invalid(self, why: str) -> web.Response:
        self.refused.append(why)
        return web.json_response(
            {"status": "invalid event", "message": "Event object is invalid", "errors": [why]},
            status=400,
        )


def _invalid_event(event: Any) -> str:
    if not isinstance(event, dict):
        return "an event is an object"
    if not isinstance(event.get("routing_key"), str) or len(event["routing_key"]) != 32:
        return "routing_key must be a 32 character integration key"
    if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        return "event_action must be trigger, acknowledge or resolve"
    key = event.get("dedup_key")
    if not isinstance(key, str) or not 0 < len(key) <= 255:
        return "dedup_key must be 1..255 characters"
    if event["event_action"] != "trigger":
        extra = set(event) - {"routing_key", "event_action", "dedup_key"}
        return f"unexpected fields for {event['event_action']}: {sorted(extra)}" if extra else ""
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return "payload is required for a trigger"
    if not isinstance(payload.get("summary"), str) or not 0 < len(payload["summary"]) <= 1024:
        return "payload.summary must be 1..1024 characters"
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        return "payload.source is required"
    if payload.get("severity") not in ("critical", "error", "warning", "info"):
        return "payload.severity must be critical, error, warning or info"
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        return "payload.custom_details must be an object"
    for link in event.get("links") or []:
        if not isinstance(link, dict) or not str(link.get("href", "")).startswith("http"):
            return "each link needs an href"
    return ""


@pytest.fixture
async def pagerduty() -> AsyncIterator[PagerDuty]:
    async with PagerDuty() as server:
        yield server


PAGE = """
rules:
  - name: plooral-api-down-page
    matchers: ['alertname = "PlooralAPIDown"']
    action:
      type: notify.pagerduty
      params:
        routing_key_env: PAGERDUTY_ROUTING_KEY
        severity: critical
        summary: "P0: {{ alert.name }} in {{ labels.ClusterName }}"
"""


def pd_config(server: PagerDuty) -> str:
    return textwrap.dedent(
        f"""
        external_url: https://remediator.example
        notify:
          pagerduty: {{events_url: "{server.url}", timeout: 5s}}
        """
    )


def api_down() -> dict[str, Any]:
    return am_alert("PlooralAPIDown", ClusterName="plooral-prod", instance="api.plooral.example")


async def test_a_page_is_an_events_v2_trigger_with_a_dedup_key_per_rule_and_target(
    tmp_path: Path, pagerduty: PagerDuty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    async with Harness(tmp_path, rules=PAGE, config=pd_config(pagerduty), dry_run=False) as h:
        await h.fire(api_down())
        [row] = await h.decisions()
    assert row["outcome"] == "executed", row["detail"]
    assert pagerduty.refused == []
    [event] = pagerduty.events
    assert event["event_action"] == "trigger" and event["routing_key"] == ROUTING_KEY
    assert event["dedup_key"].startswith("remediator/plooral-api-down-page/")
    payload = event["payload"]
    assert payload["summary"] == "P0: PlooralAPIDown in plooral-prod"
    assert (payload["severity"], payload["source"]) == ("critical", "api.plooral.example")
    assert payload["custom_details"]["labels"]["ClusterName"] == "plooral-prod"
    assert ROUTING_KEY not in row["detail"] and ROUTING_KEY not in str(row["params"])


async def test_the_page_links_to_the_decision_and_resolve_sends_the_same_dedup_key(
    tmp_path: Path, pagerduty: PagerDuty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    action = registry.get("notify.pagerduty")
    assert action is not None
    values = action.schema.validate(
        {"routing_key_env": "PAGERDUTY_ROUTING_KEY", "severity": "error", "summary": "gave up"}
    )
    target = "kubernetes.rollout_restart prod/deployment/api"
    async with Harness(tmp_path, rules=PAGE, config=pd_config(pagerduty), dry_run=False) as h:
        ctx = dataclasses.replace(h.context(decision_id=42), target=target)
        await action.run(values, ctx)
        assert len(pagerduty.open) == 1
        result = await action.resolve(values, ctx)  # type: ignore[attr-defined]
    trigger, resolve = pagerduty.events
    assert trigger["dedup_key"] == resolve["dedup_key"] == f"remediator/test-rule/{target}"
    assert resolve == {
        "routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": trigger["dedup_key"]
    }  # fmt: skip
    assert pagerduty.open == {}  # the alert is resolved
    assert {"href": "https://remediator.example/ui/decisions/42",
            "text": "remediator decision 42"} in trigger["links"]  # fmt: skip
    assert trigger["client_url"] == "https://remediator.example/ui/decisions/42"
    assert result.detail.startswith("resolved the page through $PAGERDUTY_ROUTING_KEY")


async def test_a_page_whose_answer_was_lost_is_sent_again_and_pages_once(
    tmp_path: Path, pagerduty: PagerDuty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    pagerduty.fail_next = 1
    async with Harness(tmp_path, rules=PAGE, config=pd_config(pagerduty), dry_run=False) as h:
        await h.fire(api_down())
        [row] = await h.decisions()
    assert row["outcome"] == "executed", row["detail"]
    assert len(pagerduty.events) == 2  # retried by the engine: the action is idempotent
    assert len({e["dedup_key"] for e in pagerduty.events}) == 1
    assert len(pagerduty.open) == 1  # one alert in PagerDuty


ESCALATE_PAGE = """
rules:
  - name: api-restart
    matchers: ['alertname = "PlooralAPIDown"']
    action: {type: log, params: {message: restart, target: "ecs/{{ labels.ClusterName }}"}}
    verify: {resolve_within: 5m}
    escalate:
      type: notify.pagerduty
      params:
        routing_key_env: PAGERDUTY_ROUTING_KEY
        severity: critical
        summary: "restart did not fix {{ labels.ClusterName }}"
"""


async def test_an_escalation_page_that_fails_is_sent_again_and_pages_once(
    tmp_path: Path, pagerduty: PagerDuty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    pagerduty.fail_next = 2  # PagerDuty answers 500 for a while (having taken the event)
    # action_timeout 1s: no retry within a send, so each send is one event.
    config = pd_config(pagerduty) + "limits: {action_timeout: 1s}\n"
    async with Harness(tmp_path, rules=ESCALATE_PAGE, config=config, dry_run=False) as h:
        alert = api_down()
        await h.fire(alert)
        await h.advance(5 * 60)  # ineffective: the page fails, tried again in 30 s
        assert len(pagerduty.events) == 1
        await h.advance(30)
        await h.advance(60)  # the third send gets through
        [row] = await h.decisions()
        assert len(pagerduty.events) == 3
        assert len({e["dedup_key"] for e in pagerduty.events}) == 1  # one PagerDuty alert
        assert len(pagerduty.open) == 1
        assert "paged through $PAGERDUTY_ROUTING_KEY" in row["escalation"]
        assert (
            "(attempt 3 of 5; the one before failed: notify.pagerduty trigger: HTTP 500)"
            in (row["escalation"])
        )
        await h.fire({**alert, "status": "resolved", "endsAt": "2027-01-15T12:06:00Z"})
    assert pagerduty.events[-1]["event_action"] == "resolve"
    assert pagerduty.open == {}  # closed with the alert, as a page sent at once is


async def test_a_page_dry_run_sends_nothing_and_a_missing_key_says_which_variable(
    tmp_path: Path, pagerduty: PagerDuty, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    async with Harness(tmp_path, rules=PAGE, config=pd_config(pagerduty)) as h:
        await h.fire(api_down())
        [row] = await h.decisions()
    assert row["outcome"] == "dry_run"
    assert row["detail"].startswith("would page through $PAGERDUTY_ROUTING_KEY (critical")
    monkeypatch.delenv("PAGERDUTY_ROUTING_KEY")
    async with Harness(tmp_path / "2", rules=PAGE, config=pd_config(pagerduty), dry_run=False) as h:
        await h.fire(api_down())
        [row] = await h.decisions()
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "environment variable PAGERDUTY_ROUTING_KEY is unset" in row["detail"]
    assert pagerduty.events == []


# --------------------------------------------------------------------------- email


@dataclasses.dataclass
class Mailbox:
    """What the relay received, and how the sender logged in."""

    messages: list[email.message.EmailMessage] = dataclasses.field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
    logins: list[str] = dataclasses.field(default_factory=list)
    tls: list[bool] = dataclasses.field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        data = raw if isinstance(raw, bytes) else raw.encode()
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        self.tls.append(session.ssl is not None)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"remediator", b"s3cret",
        )  # fmt: skip
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # False: aiosmtpd answers 535 itself


@dataclasses.dataclass
class Relay:
    mailbox: Mailbox
    port: int
    pki: Pki


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    pki = make_pki(tmp_path / "pki")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server_cert, pki.server_key)
    mailbox = Mailbox()
    controller = Controller(
        mailbox, hostname=LOOPBACK, port=free_port(), tls_context=tls, require_starttls=True,
        authenticator=mailbox.authenticate, auth_require_tls=True,
    )  # fmt: skip
    controller.start()  # its own thread and loop; start() waits until it answers
    try:
        yield Relay(mailbox, controller.port, pki)
    finally:
        controller.stop()


MAIL = """
rules:
  - name: p0-mail-eng-manager
    matchers: ['alertname = "PlooralAPIDown"']
    action:
      type: notify.email
      params:
        to: [eng-manager@plooral.com, "{{ labels.owner }}"]
        subject: "[INCIDENTE P0] {{ alert.name }}"
        body: "Status: Investigando. Cluster {{ labels.ClusterName }}."
"""


def mail_config(relay: Relay, *, extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""
        notify:
          email:
            host: {LOOPBACK}
            port: {relay.port}
            ca_file: {relay.pki.ca_file}
            username_env: SMTP_USER
            password_env: SMTP_PASSWORD
            from: remediator@plooral.com
            allowed_recipients: [eng-manager@plooral.com, "@sre.plooral.com"]
            max_recipients: 3
            timeout: 5s
        """
        )
        + extra
    )


MAIL_ENV = {"SMTP_USER": "remediator", "SMTP_PASSWORD": "s3cret"}


def p0(owner: str = "oncall@sre.plooral.com") -> dict[str, Any]:
    return am_alert("PlooralAPIDown", ClusterName="plooral-prod", owner=owner)


async def test_a_mail_goes_through_the_relay_over_starttls_with_credentials_from_env(
    tmp_path: Path, relay: Relay
) -> None:
    async with Harness(
        tmp_path, rules=MAIL, config=mail_config(relay), env=MAIL_ENV, dry_run=False
    ) as h:
        await h.fire(p0())
        [row] = await h.decisions()
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"] == (
        "mailed eng-manager@plooral.com, oncall@sre.plooral.com: [INCIDENTE P0] PlooralAPIDown"
    )
    [message] = relay.mailbox.messages
    assert relay.mailbox.tls == [True] and relay.mailbox.logins == ["remediator"]
    assert relay.mailbox.envelopes == [
        ("remediator@plooral.com", ["eng-manager@plooral.com", "oncall@sre.plooral.com"])
    ]
    assert message["Subject"] == "[INCIDENTE P0] PlooralAPIDown"
    assert message["From"] == "remediator@plooral.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].startswith("<remediator.")
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Status: Investigando. Cluster plooral-prod." in body.get_content()
    assert "s3cret" not in str(row)


@pytest.mark.parametrize(
    ("owner", "message"),
    [
        (
            "ceo@elsewhere.example",
            "'ceo@elsewhere.example' is not in notify.email.allowed_recipients",
        ),
        ("a@b, c@d", "is not an address"),
        ("x\r\nBcc: all@plooral.com", "is not an address"),
    ],
)
async def test_a_label_cannot_add_a_recipient_outside_the_allowed_ones(
    tmp_path: Path, relay: Relay, owner: str, message: str
) -> None:
    async with Harness(
        tmp_path, rules=MAIL, config=mail_config(relay), env=MAIL_ENV, dry_run=False
    ) as h:
        await h.fire(p0(owner))
        [row] = await h.decisions()
    assert row["outcome"] == "skipped"
    assert row["reason"] in ("not_allowed", "template_error")
    assert message in row["detail"]
    assert relay.mailbox.messages == []


async def test_more_recipients_than_the_config_allows_are_refused(
    tmp_path: Path, relay: Relay
) -> None:
    rules = MAIL.replace(
        'to: [eng-manager@plooral.com, "{{ labels.owner }}"]',
        "to: [a@sre.plooral.com, b@sre.plooral.com, c@sre.plooral.com, d@sre.plooral.com]",
    )
    async with Harness(
        tmp_path, rules=rules, config=mail_config(relay), env=MAIL_ENV, dry_run=False
    ) as h:
        await h.fire(p0())
        [row] = await h.decisions()
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "4 recipients, more than notify.email.max_recipients (3)" in row["detail"]


async def test_a_relay_without_starttls_is_refused_never_sent_to_in_clear(
    tmp_path: Path, relay: Relay
) -> None:
    plain = Mailbox()
    controller = Controller(plain, hostname=LOOPBACK, port=free_port())
    controller.start()
    try:
        cfg = mail_config(relay).replace(f"port: {relay.port}", f"port: {controller.port}")
        async with Harness(tmp_path, rules=MAIL, config=cfg, env=MAIL_ENV, dry_run=False) as h:
            await h.fire(p0())
            [row] = await h.decisions()
    finally:
        controller.stop()
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "the relay does not offer STARTTLS; never sent in clear" in row["detail"]
    assert plain.messages == []


async def test_wrong_credentials_and_an_unreachable_relay_say_what_to_fix(
    tmp_path: Path, relay: Relay
) -> None:
    wrong = {"SMTP_USER": "remediator", "SMTP_PASSWORD": "nope"}
    async with Harness(
        tmp_path, rules=MAIL, config=mail_config(relay), env=wrong, dry_run=False
    ) as h:
        await h.fire(p0())
        [row] = await h.decisions()
    assert "authentication refused (535)" in row["detail"]
    assert "notify.email.username_env / password_env" in row["detail"]
    # Refused before anything was sent: retried (errors.NotSent) until the action's time.
    cfg = mail_config(relay, extra="limits: {action_timeout: 3s}\n").replace(
        f"port: {relay.port}", f"port: {free_port()}"
    )
    async with Harness(tmp_path / "2", rules=MAIL, config=cfg, env=MAIL_ENV, dry_run=False) as h:
        await h.fire(p0())
        [row] = await h.decisions()
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "cannot connect" in row["detail"]
    assert relay.mailbox.messages == []


async def test_a_mail_dry_run_sends_nothing_and_a_live_run_needs_the_relay_config(
    tmp_path: Path, relay: Relay
) -> None:
    async with Harness(tmp_path, rules=MAIL, config=mail_config(relay), env=MAIL_ENV) as h:
        await h.fire(p0())
        [row] = await h.decisions()
    assert row["detail"] == (
        "would mail eng-manager@plooral.com, oncall@sre.plooral.com: [INCIDENTE P0] PlooralAPIDown"
    )
    async with Harness(tmp_path / "2", rules=MAIL, dry_run=False) as h:
        await h.fire(p0())
        [row] = await h.decisions()
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "no `notify.email:` section in the config file" in row["detail"]
    await asyncio.sleep(0)
    assert relay.mailbox.messages == []


def test_a_mail_rule_with_a_header_in_its_subject_fails_to_load(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(MAIL.replace(
        'subject: "[INCIDENTE P0] {{ alert.name }}"', 'subject: "P0\\nBcc: all@plooral.com"'
    ))  # fmt: skip
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    assert "param 'subject': contains control characters" in problem.message


# --------------------------------------------------------------------------- rule-only names

CHOSEN_BY_A_LABEL = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {{type: log, params: {{message: restart}}}}
    escalate:
      type: {action}
      params:
        {field}: "{value}"
{more}"""


@pytest.mark.parametrize(
    ("action", "field", "more"),
    [
        ("notify.webhook", "url_env", ""),
        ("notify.pagerduty", "routing_key_env", "        severity: critical\n        summary: s\n"),
    ],
)
def test_a_label_cannot_choose_which_environment_variable_is_read_and_sent(
    tmp_path: Path, action: str, field: str, more: str
) -> None:
    # `{{ labels.x }}` would let an alert pick any variable of the daemon (a secret, such
    # as REMEDIATOR_ADMIN_TOKEN) as the URL posted to or the routing key sent.
    path = tmp_path / "r.yaml"
    path.write_text(
        CHOSEN_BY_A_LABEL.format(action=action, field=field, value="{{ labels.x }}", more=more)
    )
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if f"{field}:" in t)
    assert str(problem) == (
        f"{path}:{line}: {action}: param {field!r}: must be written in the rule, not a "
        "template: a label must never choose which environment variable is read (it could "
        "send any secret of the daemon)"
    )
    # Written in the rule, it loads.
    path.write_text(
        CHOSEN_BY_A_LABEL.format(action=action, field=field, value="HOOK_URL", more=more)
    )
    [rule] = loader.load_dir(tmp_path)
    assert rule.escalate is not None and rule.escalate.type == action
