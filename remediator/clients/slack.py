"""Slack: the Web API (post, update, user groups) and request signatures, through slack-sdk.

Slack's own SDK signs and calls; nothing here re-implements HMAC or the Web API's error
conventions. Failures become errors.py's types: a rate limit or an I/O failure is
temporary, anything Slack refuses (`not_in_channel`, `invalid_auth`) is permanent and
names Slack's error code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from remediator import errors
from remediator.settings import SlackApp

GROUP_CACHE_SECONDS = 60.0
"""How long a user group's members are reused before Slack is asked again."""
SIGNATURE_WINDOW = 300
"""Seconds a signed request's timestamp may be away from now (Slack's own bound)."""


class _Clock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def signed(secret: str, body: bytes, headers: Mapping[str, str], *, now: float) -> bool:
    """Whether Slack signed this request with `secret`, within the timestamp window
    (constant-time comparison, by slack-sdk)."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return False
    if not signature.isascii() or len(signature) > 200:
        return False
    verifier = SignatureVerifier(secret, clock=_Clock(now))
    return bool(verifier.is_valid(body=body, timestamp=timestamp, signature=signature))


class SlackClient:
    def __init__(self, app: SlackApp) -> None:
        self._app = app
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}

    def _client(self) -> AsyncWebClient:
        return AsyncWebClient(
            token=self._app.bot_token, base_url=self._app.api_url, timeout=int(self._app.timeout)
        )

    async def post(self, channel: str, text: str, blocks: Sequence[Mapping[str, Any]]) -> str:
        """Post a message; returns `channel_id:ts`, what `update` needs."""
        answer = await self._call(
            "chat_postMessage", channel=channel, text=text, blocks=list(blocks)
        )
        return f"{answer.get('channel', channel)}:{answer.get('ts', '')}"

    async def update(self, message: str, text: str, blocks: Sequence[Mapping[str, Any]]) -> None:
        channel, _, ts = message.partition(":")
        await self._call("chat_update", channel=channel, ts=ts, text=text, blocks=list(blocks))

    async def ephemeral(self, channel: str, user: str, text: str) -> None:
        await self._call("chat_postEphemeral", channel=channel, user=user, text=text)

    async def group_members(self, group: str) -> frozenset[str]:
        cached = self._groups.get(group)
        if cached is not None and time.monotonic() - cached[0] < GROUP_CACHE_SECONDS:
            return cached[1]
        answer = await self._call("usergroups_users_list", usergroup=group)
        users = frozenset(u for u in answer.get("users", []) if isinstance(u, str))
        self._groups[group] = (time.monotonic(), users)
        return users

    async def _call(self, method: str, **params: Any) -> Mapping[str, Any]:
        """One Web API method by the SDK's name for it (`chat_postMessage`)."""
        what = f"slack {method.replace('_', '.', 1)}"
        try:
            response = await getattr(self._client(), method)(**params)
        except SlackApiError as exc:
            code = exc.response.get("error", "") if exc.response is not None else ""
            status = getattr(exc.response, "status_code", 0)
            if status == 429 or code == "ratelimited":
                raise errors.NotSent(f"{what}: rate limited", delay=1.0) from exc
            if status >= 500:
                raise errors.TemporaryError(f"{what}: HTTP {status}") from exc
            raise errors.PermanentError(f"{what}: Slack refused it: {code or status}") from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise errors.TemporaryError(f"{what}: {type(exc).__name__}") from exc
        data = response.data
        return data if isinstance(data, Mapping) else {}
