"""Human approval over HTTP: the approvals API and Slack's interactivity callback.

    GET  /api/v1/approvals                      what awaits a decision (admin/approver token)
    POST /api/v1/approvals/{id}/approve|reject  decide (admin token, or an approver token
                                                whose name the rule's approvers list)
    POST /slack/interactions                    Approve / Reject buttons (Slack-signed)

The Slack endpoint trusts nothing before the signature: the body is read (bounded), its
signature checked against the signing secret within Slack's 5-minute window (constant
time, by slack-sdk), a replay of a seen signature refused; only then is it parsed, and
the clicking user checked against the rule's approvers (user ids, or user groups).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import urllib.parse
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from remediator.clients import slack
from remediator.engine.approvals import APPROVE, REJECT
from remediator.models.alert import iso_ts
from remediator.web import auth, common

if TYPE_CHECKING:
    from remediator.engine.loop import Remediation
    from remediator.models.rule import Rule
    from remediator.runner import Daemon

log = structlog.get_logger("remediator.web.approvals")
SOURCE = "slack"
MAX_BODY = 64 << 10
"""Largest interaction payload read (a block_actions payload is a few kB)."""
MAX_CONTROL_BODY = 4096
"""Largest approve/reject body read (a reason is at most 500 characters)."""
REPLAY_MEMORY = 10_000
_seen: web.AppKey[collections.OrderedDict[str, float]] = web.AppKey("slack_seen")


def setup(app: web.Application) -> None:
    app[_seen] = collections.OrderedDict()
    app.router.add_get("/api/v1/approvals", listing)
    app.router.add_post("/api/v1/approvals/{id}/approve", approve)
    app.router.add_post("/api/v1/approvals/{id}/reject", reject)
    app.router.add_post("/slack/interactions", interactions)


def _who(request: web.Request, d: Daemon) -> tuple[str, bool] | None:
    """(name, is_admin) of the caller's token, or None."""
    if auth.admin_ok(request, d.settings.auth):
        return "admin", True
    name = auth.approver(request, d.settings.approvals.tokens)
    return (name, False) if name is not None else None


def _refused(d: Daemon) -> web.Response:
    if d.settings.auth.admin_token is None and not d.settings.approvals.tokens:
        return common.error(
            403, "approvals API disabled: set REMEDIATOR_ADMIN_TOKEN or approvals.tokens"
        )
    return common.error(401, "missing or wrong admin or approver token",
                        **{"WWW-Authenticate": "Bearer"})  # fmt: skip


def rule_now(d: Daemon, rem: Remediation) -> Rule:
    """The rule whose approvers may answer `rem`: the rule as loaded now. A reload that
    removed an approver takes away their say on a request asked before it too; a rule
    a reload removed has no approvers left (`rem.rule` without its approval)."""
    rule = d.engine.rule(rem.rule.name)
    return rule if rule is not None else dataclasses.replace(rem.rule, approval=None)


def view(rem: Remediation) -> dict[str, Any]:
    approval = rem.rule.approval
    return {
        "id": rem.decision_id,
        "rule": rem.rule.name,
        "alertname": rem.alert.name,
        "fingerprint": rem.alert.fingerprint,
        "labels": dict(rem.alert.labels),
        "step": rem.step + 1,
        "action": rem.rule.steps[rem.step].action.type,
        "target": rem.target,
        "dry_run": rem.dry,
        "approvers": list(approval.approvers) if approval else [],
        "expires_at": iso_ts(rem.due),
    }


async def listing(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    who = _who(request, d)
    if who is None:
        return _refused(d)
    name, admin = who
    pending = [
        view(r)
        for r in d.engine.loop.awaiting_approval()
        if admin or name in _approvers(rule_now(d, r))
    ]
    return web.json_response({"approvals": sorted(pending, key=lambda v: v["id"])})


async def approve(request: web.Request) -> web.Response:
    return await _decide(request, approve=True)


async def reject(request: web.Request) -> web.Response:
    return await _decide(request, approve=False)


async def _decide(request: web.Request, *, approve: bool) -> web.Response:
    d = request.app[common.DAEMON]
    who = _who(request, d)
    if who is None:
        return _refused(d)
    try:
        body = await common.small_json(request, d, MAX_CONTROL_BODY)
    except ValueError as exc:
        return common.error(400, f"bad request: {exc}")
    status, what = await decide(
        d, who, request.match_info["id"], approve=approve, reason=body.get("reason", ""),
        via="api",
    )  # fmt: skip
    if status != 200:
        return common.error(status, what)
    return web.json_response({"status": "ok", "id": int(request.match_info["id"]), "result": what})


async def decide(
    d: Daemon, who: tuple[str, bool], text: str, *, approve: bool, reason: Any, via: str
) -> tuple[int, str]:
    """Approve or reject decision `text` as `who` (name, is_admin): (200, what happened),
    or the refusal's HTTP status and why (the API and the console answer alike)."""
    name, admin = who
    number = common.decision_id(text)
    if number is None:
        return 400, "an approval id is a positive integer (its decision id)"
    if not isinstance(reason, str) or len(reason) > 500 or not reason.isprintable():
        return 400, "reason must be printable text of at most 500 characters"
    rem = d.engine.loop.approval(number)
    if rem is None:
        # Held by another replica, perhaps: it checks the approvers and decides, as here.
        handed = await d.state.hand_approval(
            {"id": number, "approve": approve, "via": via, "reason": reason, "name": name,
             "admin": admin},
        )  # fmt: skip
        if handed is not None:
            return handed
        if d.backends.shared:
            return 409, (
                f"no replica holds decision {text} awaiting approval (decided, expired or unknown)"
            )
        return 409, f"decision {text} is not awaiting approval (decided, expired or unknown)"
    return await _answer(d, rem, who, approve=approve, reason=reason, via=via)


async def _answer(
    d: Daemon, rem: Remediation, who: tuple[str, bool], *, approve: bool, reason: str, via: str
) -> tuple[int, str]:
    """The answer of an API or console caller to `rem`, held by this replica."""
    name, admin = who
    if not admin and name not in _approvers(rule_now(d, rem)):
        d.metrics.approvals.labels(rule=rem.rule.name, result="refused").inc()
        return 403, f"{name} is not an approver of rule {rem.rule.name}"
    taken, what = await d.engine.loop.decide_approval(
        rem.decision_id, approve=approve, by=name, via=via, reason=reason
    )
    return (200, what) if taken else (409, what)


async def answer_handed(d: Daemon, answer: dict[str, Any]) -> tuple[int, str]:
    """An answer another replica received (and handed over through the shared state) to
    an approval held here: the same checks and decision as one received here."""
    number, approve = answer.get("id"), answer.get("approve")
    if not isinstance(number, int) or not isinstance(approve, bool):
        return 400, "a handed answer names a decision id and approve: true or false"
    rem = d.engine.loop.approval(number)
    if rem is None:
        return 409, f"decision {number} is not awaiting approval (decided meanwhile)"
    if answer.get("via") == "slack":
        user, channel = answer.get("user"), answer.get("channel")
        if not isinstance(user, str) or not isinstance(channel, str):
            return 400, "a handed Slack answer names its user and channel"
        return await _slack_answer(d, rem, user, channel, approve=approve)
    name, admin, via = answer.get("name"), answer.get("admin"), answer.get("via")
    reason = answer.get("reason", "")
    if not all(isinstance(v, str) for v in (name, via, reason)) or not isinstance(admin, bool):
        return 400, "a handed answer names who answered, how, and why"
    return await _answer(d, rem, (str(name), admin), approve=approve, reason=str(reason),
                         via=str(via))  # fmt: skip


# -- Slack ---------------------------------------------------------------------------


async def interactions(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    response = await _interaction(request, d)
    d.metrics.webhook_requests.labels(source=SOURCE, code=str(response.status)).inc()
    return response


async def _interaction(request: web.Request, d: Daemon) -> web.Response:
    secret = d.settings.approvals.slack.signing_secret
    if secret is None:
        d.metrics.bad_input.labels(source=SOURCE, kind="unauthorized").inc()
        return common.error(
            401, "Slack interactions are off: set approvals.slack.signing_secret_env"
        )
    try:
        body = await common.small_body(request, d, MAX_BODY)
    except common.BodyError as exc:
        kind = {413: "too_large", 408: "timeout"}.get(exc.status, "truncated")
        d.metrics.bad_input.labels(source=SOURCE, kind=kind).inc()
        return common.error(413 if exc.status == 413 else 400, str(exc))
    now = d.clock.now()
    if not slack.signed(secret, body, request.headers, now=now):
        d.metrics.bad_input.labels(source=SOURCE, kind="bad_signature").inc()
        return common.error(401, "not signed by Slack with this app's signing secret, or stale")
    seen = request.app[_seen]
    mark = request.headers.get("X-Slack-Signature", "")
    while seen and next(iter(seen.values())) < now - slack.SIGNATURE_WINDOW:
        seen.popitem(last=False)
    if mark in seen:
        d.metrics.bad_input.labels(source=SOURCE, kind="replay").inc()
        return common.error(401, "this signed request was already received")
    seen[mark] = now
    while len(seen) > REPLAY_MEMORY:
        seen.popitem(last=False)
    try:
        user, channel, approve, decision_id = _button(body)
    except ValueError as exc:
        d.metrics.bad_input.labels(source=SOURCE, kind="schema").inc()
        return common.error(400, f"not an Approve/Reject click: {exc}")
    rem = d.engine.loop.approval(decision_id)
    if rem is None:
        # Held by another replica, perhaps: it checks the user and answers them itself.
        handed = await d.state.hand_approval(
            {"id": decision_id, "approve": approve, "via": SOURCE, "user": user,
             "channel": channel},
            wait_result=False,
        )  # fmt: skip
        if handed is None:
            await _tell(d, channel, user, f"Decision {decision_id} no longer awaits approval.")
        return web.Response(status=200)
    await _slack_answer(d, rem, user, channel, approve=approve)
    return web.Response(status=200)


async def _slack_answer(
    d: Daemon, rem: Remediation, user: str, channel: str, *, approve: bool
) -> tuple[int, str]:
    """A verified click's answer to `rem`, held by this replica; the user is told why
    when it is not taken."""
    decision_id = rem.decision_id
    if not await d.engine.approvals.slack_user_may_decide(rule_now(d, rem), user):
        d.metrics.approvals.labels(rule=rem.rule.name, result="refused").inc()
        log.warning("approval_refused", rule=rem.rule.name, user=user, decision_id=decision_id)
        what = f"You are not an approver of rule {rem.rule.name}."
        await _tell(d, channel, user, what)
        return 403, what
    taken, what = await d.engine.loop.decide_approval(
        decision_id, approve=approve, by=f"<@{user}>", via=SOURCE
    )
    if not taken:
        await _tell(d, channel, user, what)
    return (200, what) if taken else (409, what)


def _approvers(rule: Rule) -> tuple[str, ...]:
    return rule.approval.approvers if rule.approval is not None else ()


def _button(body: bytes) -> tuple[str, str, bool, int]:
    """(user id, channel id, approve?, decision id) of a verified block_actions payload."""
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise ValueError("expected form field `payload` holding JSON") from exc
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise ValueError("payload type is not block_actions")
    user = (payload.get("user") or {}).get("id")
    channel = (payload.get("channel") or {}).get("id", "")
    actions = payload.get("actions")
    if not isinstance(user, str) or not isinstance(actions, list) or not actions:
        raise ValueError("no user or no action")
    action = actions[0]
    if not isinstance(action, dict) or action.get("action_id") not in (APPROVE, REJECT):
        raise ValueError("not one of remediator's buttons")
    value = action.get("value")
    if (
        not isinstance(value, str)
        or not (value.isascii() and value.isdigit())
        or not 0 < int(value) < 2**63
    ):
        raise ValueError("the button carries no decision id")
    return (
        user,
        channel if isinstance(channel, str) else "",
        action["action_id"] == APPROVE,
        int(value),
    )


async def _tell(d: Daemon, channel: str, user: str, text: str) -> None:
    client = d.engine.approvals.slack()
    if client is None or not channel:
        return
    try:
        await client.ephemeral(channel, user, text)
    except Exception as exc:  # noqa: BLE001 - a courtesy message; the answer stands anyway
        log.warning("slack_ephemeral_failed", error=str(exc))
