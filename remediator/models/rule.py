"""Rules as loaded: pure values, validated at load time (see matching/loader.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from remediator.matching.matchers import Matcher, Op

Source = Literal["alertmanager", "sns", "any"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    cooldown: float = 900.0
    """Seconds after an attempt on a target before the next one (default 15m)."""
    max_attempts: int = 3
    """Attempts per target within `window` before the rule gives up and escalates."""
    window: float = 3600.0
    """Seconds over which `max_attempts` and `max_actions` count (default 1h)."""
    max_actions: int | None = None
    """Optional: actions of this rule across all its targets per `window` (rate_limited)."""
    retry_while_firing: bool = False
    """Act again on the same occurrence after the cooldown while it still fires."""


@dataclasses.dataclass(frozen=True, slots=True)
class CircuitBreaker:
    open_after: int = 3
    """Consecutive failed or ineffective attempts that open the circuit."""
    reset_after: float = 3600.0
    """Seconds after which an open circuit closes again (half-open: one attempt)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ActionSpec:
    type: str
    params: Mapping[str, Any]
    """Parsed templates (matching.templates.Template) and plain values."""
    line: int = 0
    """Where it is written in its rule file (for `remediator check`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One rung of a rule's ladder: an action, and how long the alert has to resolve."""

    action: ActionSpec
    resolve_within: float | None = 900.0
    """Seconds in which the alert must resolve after this step, else it was ineffective and
    the next step (or the escalation) follows. None (`never`): not verified."""


@dataclasses.dataclass(frozen=True, slots=True)
class Approval:
    """A human approves each attempt of the rule before it runs."""

    approvers: tuple[str, ...]
    """Slack user ids (U…, W…), Slack user-group ids (S…), or names of API approver
    tokens (`approvals.tokens` in config). The admin token may always decide."""
    timeout: float = 900.0
    """Seconds an attempt waits for a decision; then `skipped/approval_expired`."""
    channel: str = ""
    """Slack channel of the request; empty: `approvals.slack.channel` from config."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    matchers: tuple[Matcher, ...]
    steps: tuple[Step, ...]
    """What the rule does, in order: `action:` is a ladder of one step. Each step is tried
    only once the previous one was found ineffective (or failed) while the alert fires."""
    description: str = ""
    runbook_url: str = ""
    source: Source = "any"
    for_: float = 0.0
    limits: Limits = Limits()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    escalate: ActionSpec | None = None
    silence_while_remediating: float | None = None
    evidence: bool = True
    """Capture what the action's family sees before it acts (pods, events, logs...) into
    the decision and the escalation; `false` for a rule whose targets say too much."""
    approval: Approval | None = None
    """When set, every attempt waits for a human's approval (`awaiting_approval`)."""
    dry_run: bool = False
    """Shadow mode: this rule records what it would do (`dry_run/shadow`) while the others
    act. The global `dry_run` stays the master switch."""
    file: str = ""
    line: int = 0

    @property
    def action(self) -> ActionSpec:
        """The first step's action (the only one of a rule written with `action:`)."""
        return self.steps[0].action

    @property
    def alertname(self) -> str | None:
        """The alertname this rule is indexed under, if it has an equality matcher on it."""
        for m in self.matchers:
            if m.name == "alertname" and m.op is Op.EQ:
                return m.value
        return None

    def accepts_source(self, source: str) -> bool:
        return self.source in ("any", source)
