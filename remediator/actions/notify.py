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
            "text": params.Field(params.text(max_len=4000), required=False, doc="message text"),
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
        alert = ctx.alert
        text = values.get("text") or (
            f"[remediator] {alert.name} ({alert.status}) rule={ctx.rule} "
            f"{alert.annotations.get('summary', '')}".strip()
        )
        return {"text": text}

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


registry.register(NotifyWebhook())
