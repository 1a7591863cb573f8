"""Asking a human: the Slack message with Approve / Reject, who may decide, and the update.

The waiting itself is a phase of the remediation (engine/loop.py, `awaiting`): its record
is durable, its deadline a timer, and a decision — from Slack, the API or the CLI — goes
through `Loop.decide_approval`, which runs the guards again before anything acts.
Everything shown in Slack that came from the alert is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from remediator import errors
from remediator.clients.slack import SlackClient
from remediator.matching.templates import slack_escape
from remediator.metrics import Metrics
from remediator.models.alert import iso_ts
from remediator.models.decision import decision_url
from remediator.models.rule import Rule
from remediator.settings import Settings, SlackApp

if TYPE_CHECKING:
    from remediator.engine.loop import Remediation

log = structlog.get_logger("remediator.engine")
APPROVE, REJECT = "remediator_approve", "remediator_reject"
"""The buttons' action ids; their value is the decision id."""
MAX_LABELS = 20
GUARDS_PASSED = "paused · blackout · silenced · duplicate · for · params · limits"


class Approvals:
    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        metrics: Metrics,
        spawn: Callable[[Awaitable[None], str], None],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._spawn = spawn
        self._client: tuple[SlackApp, SlackClient] | None = None

    def slack(self) -> SlackClient | None:
        """The Slack client of the current config (None when Slack is not configured)."""
        app = self._settings().approvals.slack
        if not app.enabled:
            return None
        if self._client is None or self._client[0] != app:
            self._client = (app, SlackClient(app))
        return self._client[1]

    def requested(
        self, rem: Remediation, *, dry: bool, saved: Callable[[], Awaitable[None]]
    ) -> None:
        """Tell the approvers (in a task); `saved` persists the message's id once posted."""
        self._metrics.approvals.labels(rule=rem.rule.name, result="requested").inc()
        slack = self.slack()
        if slack is None:
            return
        channel = rem.rule.approval.channel if rem.rule.approval else ""
        channel = channel or self._settings().approvals.slack.channel
        if not channel:
            log.warning("approval_not_posted", rule=rem.rule.name, why="no Slack channel")
            return

        async def post() -> None:
            try:
                rem.approval_message = await slack.post(
                    channel, self.summary(rem, dry=dry), self.blocks(rem, dry=dry)
                )
            except errors.ActionError as exc:
                log.warning("approval_post_failed", rule=rem.rule.name, error=str(exc))
                return
            await saved()

        self._spawn(post(), f"approval-post:{rem.decision_id}")

    def settled(self, rem: Remediation, text: str) -> None:
        """Replace the buttons with how it ended (in a task)."""
        slack = self.slack()
        if slack is None or not rem.approval_message:
            return
        message = rem.approval_message
        blocks = [
            *self.blocks(rem, dry=rem.dry, buttons=False),
            {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(text)}},
        ]

        async def update() -> None:
            try:
                await slack.update(message, f"{self.summary(rem, dry=rem.dry)}: {text}", blocks)
            except errors.ActionError as exc:
                log.warning("approval_update_failed", rule=rem.rule.name, error=str(exc))

        self._spawn(update(), f"approval-update:{rem.decision_id}")

    async def slack_user_may_decide(self, rule: Rule, user: str) -> bool:
        """A Slack user listed in the rule's approvers, or in a user group listed there."""
        if rule.approval is None:
            return False
        approvers = rule.approval.approvers
        if user in approvers:
            return True
        slack = self.slack()
        if slack is None:
            return False
        for group in (a for a in approvers if a.startswith("S")):
            try:
                if user in await slack.group_members(group):
                    return True
            except errors.ActionError as exc:
                log.warning("approver_group_unreadable", group=group, error=str(exc))
        return False

    def summary(self, rem: Remediation, *, dry: bool) -> str:
        mark = "[dry run] " if dry else ""
        return (
            f"{mark}remediator asks to {rem.rule.steps[rem.step].action.type} "
            f"{slack_escape(rem.target)} for {slack_escape(rem.alert.name)} "
            f"(rule {rem.rule.name})"
        )

    def blocks(self, rem: Remediation, *, dry: bool, buttons: bool = True) -> list[dict[str, Any]]:
        alert, rule = rem.alert, rem.rule
        labels = sorted(alert.labels.items())[:MAX_LABELS]
        shown = ", ".join(f"{slack_escape(k)}={slack_escape(v)}" for k, v in labels)[:1500]
        summary = slack_escape(alert.annotations.get("summary", ""))[:500]
        url = self._settings().external_url
        link = decision_url(url, rem.decision_id)
        head = ("[DRY RUN — nothing will change] " if dry else "") + "Approval needed"
        out: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": self.summary(rem, dry=dry)}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Alert*\n{slack_escape(alert.name)}"},
                    {"type": "mrkdwn", "text": f"*Step*\n{rem.step + 1} of {len(rule.steps)}"},
                    {"type": "mrkdwn", "text": f"*Target*\n{slack_escape(rem.target)}"},
                    {"type": "mrkdwn", "text": f"*Expires*\n{iso_ts(rem.due)}"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Labels* {shown}"}},
        ]
        if summary:
            out.append({"type": "section", "text": {"type": "mrkdwn", "text": summary}})
        if rem.evidence:
            text = slack_escape(_evidence_text(rem.evidence))[:2900]
            out.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{text}```"}})
        context = f"Guards passed: {GUARDS_PASSED}. Decision {rem.decision_id}"
        out.append(
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": context + (f" — {link}" if link else "")}
            ]}
        )  # fmt: skip
        if buttons:
            value = str(rem.decision_id)
            out.append(
                {"type": "actions", "elements": [
                    {"type": "button", "action_id": APPROVE, "value": value, "style": "primary",
                     "text": {"type": "plain_text", "text": "Approve"}},
                    {"type": "button", "action_id": REJECT, "value": value, "style": "danger",
                     "text": {"type": "plain_text", "text": "Reject"}},
                ]}
            )  # fmt: skip
        return out


def _evidence_text(evidence: Any) -> str:
    return json.dumps(evidence, indent=1, default=str)
