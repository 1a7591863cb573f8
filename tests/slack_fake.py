"""A local HTTP server standing in for Slack's Web API, and clicks signed as Slack signs.

    async with SlackApi(groups={"S0DBA": ["U0ANA"]}) as slack:
        config = slack.config()         # approvals.slack pointing at it
        ...
        [post] = slack.calls("chat.postMessage")
        body, headers = click(post_ts, "U0ANA", approve=True, decision_id=1, now=...)

It answers the methods remediator calls (chat.postMessage, chat.update,
chat.postEphemeral, usergroups.users.list) as Slack does (`{"ok": true, ...}`), checks
the bot token, and records every call with its decoded arguments.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from tests.servers import LOOPBACK

BOT_TOKEN = "xoxb-test-bot-token"
SIGNING_SECRET = "test-signing-secret-8f1c"
BOT_ENV = "REMEDIATOR_TEST_SLACK_BOT"
SECRET_ENV = "REMEDIATOR_TEST_SLACK_SECRET"
ENV = {BOT_ENV: BOT_TOKEN, SECRET_ENV: SIGNING_SECRET}


@dataclasses.dataclass
class Call:
    method: str
    args: dict[str, Any]


class SlackApi:
    def __init__(self, *, groups: dict[str, list[str]] | None = None) -> None:
        self.groups = groups or {}
        self.received: list[Call] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._ts = 1000

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/api/"

    def config(self, channel: str = "#approvals") -> str:
        return (
            "approvals:\n  slack:\n"
            f"    bot_token_env: {BOT_ENV}\n    signing_secret_env: {SECRET_ENV}\n"
            f'    channel: "{channel}"\n    api_url: {self.url}\n'
        )

    def calls(self, method: str) -> list[Call]:
        return [c for c in self.received if c.method == method]

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if request.content_type == "application/json":
            args = await request.json()
        else:
            args = dict(request.query) | dict(await request.post())
        self.received.append(Call(method, dict(args)))
        if method == "chat.postMessage":
            self._ts += 1
            return web.json_response({"ok": True, "channel": "C0APPROVE", "ts": f"{self._ts}.0001"})
        if method in ("chat.update", "chat.postEphemeral"):
            return web.json_response(
                {"ok": True, "channel": args.get("channel"), "ts": args.get("ts")}
            )
        if method == "usergroups.users.list":
            users = self.groups.get(str(args.get("usergroup")))
            if users is None:
                return web.json_response({"ok": False, "error": "no_such_subteam"})
            return web.json_response({"ok": True, "users": users})
        return web.json_response({"ok": False, "error": "unknown_method"})

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def click(
    user: str,
    *,
    approve: bool,
    decision_id: int,
    now: float,
    secret: str = SIGNING_SECRET,
    channel: str = "C0APPROVE",
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a button click, signed as Slack signs (v0 HMAC-SHA256)."""
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower()},
        "channel": {"id": channel},
        "container": {"type": "message", "channel_id": channel, "message_ts": "1001.0001"},
        "actions": [
            {
                "action_id": "remediator_approve" if approve else "remediator_reject",
                "value": str(decision_id),
                "type": "button",
            }
        ],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    return body, sign(body, now=now, secret=secret)


def sign(body: bytes, *, now: float, secret: str = SIGNING_SECRET) -> dict[str, str]:
    timestamp = str(int(now))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }
