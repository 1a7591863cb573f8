"""`notify.*`: tell humans — a chat webhook, a page, a mail.

    notify.webhook    POST a Slack-compatible message to the URL in an environment variable
    notify.pagerduty  PagerDuty Events API v2: trigger (one alert per rule and target),
                      and `resolve` with the same dedup key when the alert resolves
    notify.email      a plain-text mail through the SMTP relay the `notify.email` config
                      names (STARTTLS, credentials from the environment), only to allowed
                      recipients, at most `max_recipients`

Secrets never sit in rules or in the audit: a webhook URL and a PagerDuty routing key are
bearer credentials, so rules name the environment variable that holds them — written in
the rule, never a template (`url_env: "{{ labels.x }}"` would let a label pick any
variable of the daemon, a secret, and post it), which loading refuses; the SMTP
credentials come from the variables the config names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, ClassVar

from remediator import errors, settings
from remediator.actions import params, registry
from remediator.actions.base import Context, Result
from remediator.matching import templates
from remediator.models.decision import decision_url
from remediator.settings import Settings

MAX_TEXT = 4000
"""Characters of a message sent (Slack shows up to 40,000; a page needs far fewer)."""

SECTION = "notify"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_URL = re.compile(r"https?://[^\s]{1,2000}")
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}"
)
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, slots=True)
class EmailConfig:
    """`notify.email`: the relay mail goes through, and who may receive it."""

    host: str
    """The SMTP relay (a submission service: port 587 with STARTTLS)."""
    from_address: str
    """The From address (`from`), e.g. remediator@plooral.com."""
    allowed_recipients: frozenset[str]
    """Addresses, or `@domain` for a whole domain, a rule may send to. Required: a
    label can fill in a recipient, and must never reach outside these."""
    port: int = 587
    starttls: bool = True
    """Upgrade with STARTTLS and refuse a relay that does not offer it. Off only for a
    relay on loopback or a trusted network segment."""
    ca_file: Path | None = None
    """PEM bundle that replaces the system trust store for the relay's certificate."""
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    """From the environment variables `username_env` and `password_env` name (AUTH is
    used only when a username is set)."""
    max_recipients: int = 10
    """Recipients of one mail at most, whatever a rule lists."""
    timeout: float = 10.0
    """Seconds for each step of the SMTP dialogue (connect, each command, the data)."""


@dataclasses.dataclass(frozen=True, slots=True)
class NotifyConfig:
    """The `notify:` section (optional: notify.webhook and notify.pagerduty work without)."""

    pagerduty_events_url: str = PAGERDUTY_EVENTS_URL
    """`pagerduty.events_url`: the Events API v2 endpoint (another only for tests, or the
    EU service region's https://events.eu.pagerduty.com/v2/enqueue)."""
    pagerduty_timeout: float = 10.0
    email: EmailConfig | None = None


@settings.section(SECTION)
def _config(r: settings.Reader, env: Mapping[str, str]) -> NotifyConfig:
    pd = r.section("pagerduty")
    events_url = pd.text("events_url", PAGERDUTY_EVENTS_URL)
    if not _URL.fullmatch(events_url):
        raise errors.ConfigError(f"{pd.prefix}events_url", f"not an http(s) URL: {events_url!r}")
    pd_timeout = pd.duration("timeout", 10.0)
    if not 0 < pd_timeout <= 60:
        raise errors.ConfigError(f"{pd.prefix}timeout", "must be in (0s, 1m]")
    pd.finish()
    email = _email(r.section("email"), env) if r.data.get("email") is not None else None
    if email is None:
        r.seen.add("email")
    return NotifyConfig(
        pagerduty_events_url=events_url,
        pagerduty_timeout=pd_timeout,
        email=email,
    )


def _email(r: settings.Reader, env: Mapping[str, str]) -> EmailConfig:
    p = r.prefix
    host = r.text("host", "")
    if not _HOST.fullmatch(host):
        raise errors.ConfigError(f"{p}host", "required: the SMTP relay's host name")
    sender = r.text("from", "")
    if not _ADDRESS.fullmatch(sender):
        raise errors.ConfigError(f"{p}from", f"required: the From address, got {sender!r}")
    allowed = r.raw_list("allowed_recipients")
    if not allowed:
        raise errors.ConfigError(
            f"{p}allowed_recipients", "required: the addresses (or @domains) mail may go to"
        )
    for i, item in enumerate(allowed):
        ok = isinstance(item, str) and (
            _ADDRESS.fullmatch(item) or (item.startswith("@") and _ADDRESS.fullmatch("x" + item))
        )
        if not ok:
            raise errors.ConfigError(
                f"{p}allowed_recipients[{i}]", f"not an address or @domain: {item!r}"
            )
    ca = r.text("ca_file", "")
    username = r.secret("username_env", env)
    password = r.secret("password_env", env)
    timeout = r.duration("timeout", 10.0)
    if not 0 < timeout <= 120:
        raise errors.ConfigError(f"{p}timeout", "must be in (0s, 2m]")
    cfg = EmailConfig(
        host=host,
        from_address=sender,
        allowed_recipients=frozenset(a.lower() for a in allowed),
        port=r.integer("port", 587, lo=1, hi=65535),
        starttls=r.flag("starttls", True),
        ca_file=Path(ca) if ca else None,
        username=username,
        password=password,
        max_recipients=r.integer("max_recipients", 10, lo=1, hi=100),
        timeout=timeout,
    )
    r.finish()
    return cfg


def _cfg(settings_: Settings) -> NotifyConfig:
    found: NotifyConfig | None = settings_.section(SECTION)
    return found or NotifyConfig()


class NotifyWebhook:
    type: ClassVar[str] = "notify.webhook"
    # A timeout or a 5xx may come after the receiver posted the message: not retried
    # within a run. Errors that say nothing was delivered (cannot connect, 429) are
    # retried all the same (errors.NotSent). As an escalation, a failed send is tried
    # again minutes later whatever the error (loop.ESCALATION_RETRIES): a channel may
    # then show it twice, rather than nobody being called.
    idempotent: ClassVar[bool] = False
    duplicate_ok: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "url_env": params.Field(
                params.env_name(),
                doc="environment variable holding the URL (written in the rule)",
                chosen=params.ENV_CHOSEN,
            ),
            "text": params.Field(
                # Room for escaping (`<` becomes `&lt;`): the message is cut at 4000.
                params.text(max_len=16000),
                required=False,
                doc="message text (Slack mrkdwn; values from templates are escaped)",
                escape=templates.slack_escape,
            ),
        },
        literal=frozenset({"url_env"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        return None

    def target(self, values: Mapping[str, Any]) -> str:
        return str(values["url_env"])

    def _url(self, values: Mapping[str, Any]) -> str:
        url = os.environ.get(values["url_env"], "")
        if not url.startswith(("https://", "http://")):
            raise errors.PermanentError(
                f"environment variable {values['url_env']} is unset or not an http(s) URL"
            )
        return url

    def _message(self, values: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
        return {"text": (values.get("text") or default_text(ctx))[:MAX_TEXT]}

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        body = self._message(values, ctx)
        status = await ctx.clients.http.post_json(
            self._url(values), body, timeout=ctx.timeout, what=f"notify.webhook {values['url_env']}"
        )
        return Result(
            detail=f"posted to ${values['url_env']} (HTTP {status}): {body['text'][:200]}"
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        self._url(values)  # proves the variable is set, without posting
        body = self._message(values, ctx)
        return Result(detail=f"would post to ${values['url_env']}: {body['text'][:200]}")


def default_text(ctx: Context) -> str:
    """The message when a rule gives no `text`: the alert, and for an escalation why it
    gave up, what was tried and the link to the decision. Alert values are escaped."""
    esc = templates.slack_escape
    alert = ctx.alert
    summary = esc(alert.annotations.get("summary", ""))
    head = f"[remediator] {esc(alert.name)} ({alert.status}) rule={esc(ctx.rule)} {summary}"
    e = ctx.escalation
    if e is None:
        return head.strip()
    lines = [
        f"[remediator] rule {esc(ctx.rule)} gave up on {esc(alert.name)}: {esc(e.why)}",
        *(f"- {esc(line)}" for line in e.tried),
    ]
    if summary:
        lines.append(f"Alert: {summary}")
    if e.evidence:
        lines.append("What remediator saw before acting:")
        lines.extend(f"  {esc(line)}" for line in e.evidence.splitlines())
    if e.url:
        lines.append(f"Decision {e.decision_id}: {e.url}")
    elif e.decision_id:
        lines.append(f"Decision {e.decision_id} (/ui/decisions/{e.decision_id} on remediator)")
    return "\n".join(lines)[:MAX_TEXT]


# --------------------------------------------------------------------------- PagerDuty

SEVERITIES = ("critical", "error", "warning", "info")
DETAIL_LABELS = 30
"""Alert labels sent in `custom_details` at most (values cut to 200 characters)."""


class NotifyPagerDuty:
    type: ClassVar[str] = "notify.pagerduty"
    # PagerDuty folds events with one dedup key into one alert: sending it again (a
    # retry after a lost answer) adds a log entry, never a second page.
    idempotent: ClassVar[bool] = True
    duplicate_ok: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "routing_key_env": params.Field(
                params.env_name(),
                doc="environment variable holding the integration key (written in the rule)",
                chosen=params.ENV_CHOSEN,
            ),
            "severity": params.Field(
                params.choice(*SEVERITIES), doc="critical, error, warning, info"
            ),
            "summary": params.Field(
                params.text(max_len=1024, multiline=False), doc="the page's title (≤ 1024)"
            ),
            "source": params.Field(
                params.text(max_len=255, multiline=False),
                required=False,
                doc="the affected system (default: the alert's instance, job or name)",
            ),
        },
        literal=frozenset({"routing_key_env"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        return None

    def target(self, values: Mapping[str, Any]) -> str:
        return str(values["routing_key_env"])

    @staticmethod
    def dedup_key(ctx: Context) -> str:
        """One PagerDuty alert per rule and remediated target (or alert, without one)."""
        about = ctx.target or ctx.alert.fingerprint
        key = f"remediator/{ctx.rule}/{about}"
        if len(key) <= 255:
            return key
        return f"remediator/{ctx.rule[:100]}/{hashlib.sha256(about.encode()).hexdigest()}"

    def _key(self, values: Mapping[str, Any]) -> str:
        key = os.environ.get(values["routing_key_env"], "")
        if not re.fullmatch(r"[A-Za-z0-9]{20,64}", key):
            raise errors.PermanentError(
                f"environment variable {values['routing_key_env']} is unset or not a PagerDuty "
                "integration key (32 characters)"
            )
        return key

    def _event(self, values: Mapping[str, Any], ctx: Context, action: str) -> dict[str, Any]:
        event: dict[str, Any] = {
            "routing_key": self._key(values),
            "event_action": action,
            "dedup_key": self.dedup_key(ctx),
        }
        if action != "trigger":
            return event
        alert = ctx.alert
        labels = dict(list(alert.labels.items())[:DETAIL_LABELS])
        source = values.get("source") or (
            alert.labels.get("instance") or alert.labels.get("job") or alert.name
        )
        details: dict[str, Any] = {
            "rule": ctx.rule,
            "alert": alert.name,
            "status": alert.status,
            "labels": {k: str(v)[:200] for k, v in labels.items()},
        }
        if ctx.target:
            details["target"] = ctx.target
        if ctx.decision_id:
            details["decision"] = ctx.decision_id
        event["payload"] = {
            "summary": values["summary"],
            "source": str(source)[:255],
            "severity": values["severity"],
            "timestamp": alert.starts_iso,
            "component": ctx.target.partition(" ")[2][:255] if ctx.target else alert.name,
            "class": alert.name,
            "custom_details": details,
        }
        event["client"] = "remediator"
        links = []
        link = decision_url(ctx.settings.external_url, ctx.decision_id)
        if link:
            event["client_url"] = link
            links.append({"href": link, "text": f"remediator decision {ctx.decision_id}"})
        if alert.generator_url.startswith(("https://", "http://")):
            links.append({"href": alert.generator_url, "text": f"{alert.name} (source)"})
        if links:
            event["links"] = links
        return event

    async def _send(self, values: Mapping[str, Any], ctx: Context, action: str) -> Result:
        cfg = _cfg(ctx.settings)
        event = self._event(values, ctx, action)
        status, answer = await ctx.clients.http.request(
            "POST",
            cfg.pagerduty_events_url,
            body=event,
            timeout=min(cfg.pagerduty_timeout, ctx.timeout),
            what=f"notify.pagerduty {action}",
        )
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise errors.PermanentError(
                f"notify.pagerduty {action}: PagerDuty answered HTTP {status} without success: "
                f"{str(answer)[:200]}"
            )
        verb = "paged" if action == "trigger" else "resolved the page"
        return Result(
            detail=f"{verb} through ${values['routing_key_env']} (dedup key {event['dedup_key']})"
            + (f": {values['summary'][:200]}" if action == "trigger" else ""),
            data={"dedup_key": event["dedup_key"], "event_action": action, "http_status": status},
        )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._send(values, ctx, "trigger")

    async def resolve(self, values: Mapping[str, Any], ctx: Context) -> Result:
        """Resolve the alert `run` triggered (same dedup key): call when the alert resolves."""
        return await self._send(values, ctx, "resolve")

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        self._key(values)  # proves the variable is set, without paging
        return Result(
            detail=f"would page through ${values['routing_key_env']} ({values['severity']}, "
            f"dedup key {self.dedup_key(ctx)}): {values['summary'][:200]}",
            data={"dedup_key": self.dedup_key(ctx)},
        )


# --------------------------------------------------------------------------- email

MAX_TO = 20
"""Recipients a rule may list at most (the config's max_recipients may be lower)."""


def _recipients() -> params.Validator:
    def check(field: str, value: Any) -> list[str]:
        from remediator.matching.templates import Template  # noqa: PLC0415 - avoids a cycle

        items = value if isinstance(value, list) else [value]
        if not items or len(items) > MAX_TO:
            raise errors.ParamError(field, f"expected 1 to {MAX_TO} addresses")
        out = []
        for i, raw in enumerate(items):
            text = raw
            if isinstance(raw, Template):
                if not raw.is_literal:
                    out.append("")  # checked again once rendered
                    continue
                text = raw.render_literal()
            if not isinstance(text, str) or not _ADDRESS.fullmatch(text):
                raise errors.ParamError(f"{field}[{i}]", f"{str(text)[:80]!r} is not an address")
            out.append(text.lower())
        return out

    return check


class NotifyEmail:
    type: ClassVar[str] = "notify.email"
    # A lost answer after DATA may mean the relay took it: not repeated within a run
    # (a refusal before anything was sent is errors.NotSent, retried all the same). As
    # an escalation, a failed send is tried again minutes later whatever the error: a
    # second copy (same Message-ID) rather than no mail.
    idempotent: ClassVar[bool] = False
    duplicate_ok: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "to": params.Field(_recipients(), doc="an address, or a list of them"),
            "subject": params.Field(params.text(max_len=200, multiline=False), doc="the subject"),
            "body": params.Field(params.text(max_len=20_000), doc="the plain-text body"),
        }
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = settings.section(SECTION)
        email = cfg.email if cfg is not None else None
        if email is None:
            if settings.dry_run:
                return  # a dry run says nothing could be checked
            raise errors.NotAllowed(
                "to",
                "no `notify.email:` section in the config file: no relay to send through",
                what="config",
            )
        if len(values["to"]) > email.max_recipients:
            raise errors.NotAllowed(
                "to",
                f"{len(values['to'])} recipients, more than notify.email.max_recipients "
                f"({email.max_recipients})",
            )
        for address in values["to"]:
            domain = "@" + address.rpartition("@")[2]
            if address not in email.allowed_recipients and domain not in email.allowed_recipients:
                raise errors.NotAllowed(
                    "to", f"{address!r} is not in notify.email.allowed_recipients"
                )

    def target(self, values: Mapping[str, Any]) -> str:
        return ",".join(sorted(values["to"]))

    def message(self, values: Mapping[str, Any], ctx: Context, email: EmailConfig) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = email.from_address
        msg["To"] = ", ".join(values["to"])
        msg["Subject"] = values["subject"]
        msg["Date"] = formatdate(ctx.now(), usegmt=True)
        # One Message-ID per decision: a client shows a resend as the same mail.
        digest = hashlib.sha256(
            f"{ctx.rule}\x00{ctx.alert.occurrence}\x00{ctx.decision_id}".encode()
        ).hexdigest()[:24]
        msg["Message-ID"] = f"<remediator.{ctx.decision_id}.{digest}@{email.host}>"
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
        body = values["body"]
        link = decision_url(ctx.settings.external_url, ctx.decision_id)
        if link:
            body += f"\n\n-- \nremediator decision {ctx.decision_id}: {link}\n"
        msg.set_content(body)
        return msg

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        from remediator.clients import smtp  # noqa: PLC0415 - only when mail is sent

        email = _cfg(ctx.settings).email
        if email is None:  # check_allowed refuses a live run without it
            raise errors.NotAllowed("to", "no `notify.email:` section", what="config")
        relay = smtp.Relay(
            host=email.host, port=email.port, starttls=email.starttls, ca_file=email.ca_file,
            username=email.username, password=email.password,
            timeout=min(email.timeout, ctx.timeout),
        )  # fmt: skip
        message = self.message(values, ctx, email)
        refused = await smtp.send(relay, message, what="notify.email")
        sent = [a for a in values["to"] if a not in refused]
        detail = f"mailed {', '.join(sent)}: {values['subject']}"
        if refused:
            detail += f" (refused by the relay: {', '.join(refused)})"
        return Result(
            detail=detail,
            data={"to": sent, "refused": refused, "message_id": message["Message-ID"]},
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        email = _cfg(ctx.settings).email
        checked = "" if email is not None else " (not checked: no `notify.email:` config)"
        return Result(
            detail=f"would mail {', '.join(values['to'])}: {values['subject']}{checked}",
            data={"to": list(values["to"])},
        )


registry.register(NotifyWebhook())
registry.register(NotifyPagerDuty())
registry.register(NotifyEmail())
