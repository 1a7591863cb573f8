"""`notify.webhook`: POST a Slack-compatible message; the URL comes from the environment.

The URL is a secret (Slack webhook URLs are bearer credentials): rules name the
environment variable, and neither logs nor the audit ever show the URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import errors
from remediator.actions import params, registry
from remediator.actions.base import Context, Result
from remediator.matching import templates
from remediator.settings import Settings


class NotifyWebhook:
    type: ClassVar[str] = "notify.webhook"
    # A timeout or a 5xx may come after the receiver posted the message: not retried, so
    # a channel never shows an escalation twice. Errors that say nothing was delivered
    # (cannot connect, 429) are retried all the same (errors.NotSent).
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "url_env": params.Field(params.env_name(), doc="environment variable holding the URL"),
            "text": params.Field(
                params.text(max_len=4000),
                required=False,
                doc="message text (Slack mrkdwn; values from templates are escaped)",
                escape=templates.slack_escape,
            ),
        }
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
        return {"text": values.get("text") or default_text(ctx)}

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
    if e.url:
        lines.append(f"Decision {e.decision_id}: {e.url}")
    elif e.decision_id:
        lines.append(f"Decision {e.decision_id} (GET /api/v1/decisions/{e.decision_id})")
    return "\n".join(lines)[:4000]


registry.register(NotifyWebhook())
