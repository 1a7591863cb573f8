"""Decisions: every matched (alert, rule) pair ends in exactly one of these."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any


class Outcome(enum.StrEnum):
    EXECUTED = "executed"
    DRY_RUN = "dry_run"
    FAILED = "failed"
    SKIPPED = "skipped"
    AWAITING_APPROVAL = "awaiting_approval"
    """Not final: a human approves or rejects it (or it expires), then it becomes one of
    the others."""


class Reason(enum.StrEnum):
    """Why a decision is `skipped` (or, for `failed`, what failed)."""

    NONE = ""
    PAUSED = "paused"
    BLACKOUT = "blackout"
    SILENCED = "silenced"
    SILENCE_CHECK_FAILED = "silence_check_failed"
    """Alertmanager could not be asked and `alertmanager.on_error` is fail_closed."""
    TOO_YOUNG = "too_young"
    COOLDOWN = "cooldown"
    RATE_LIMITED = "rate_limited"
    MAX_ATTEMPTS = "max_attempts"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CIRCUIT_OPEN = "circuit_open"
    LOCKED = "locked"
    TEMPLATE_ERROR = "template_error"
    NOT_ALLOWED = "not_allowed"
    RESOLVED = "resolved"
    """A retry or a ladder's next step was due, but the alert had resolved meanwhile."""
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_EXPIRED = "approval_expired"
    HELD_FULL = "held_full"
    """`intake.max_held` alerts already wait for their `for`: this one is not held; a
    re-delivery is decided again."""
    # dry_run decisions
    SHADOW = "shadow"
    """The rule is in shadow mode (`dry_run: true`) while the daemon acts."""
    # failed decisions
    ACTION_ERROR = "action_error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    """The daemon stopped while the action ran; never re-run, to avoid acting twice."""


GUARDS: tuple[tuple[str, frozenset[Reason]], ...] = (
    ("paused", frozenset({Reason.PAUSED})),
    ("blackout", frozenset({Reason.BLACKOUT})),
    ("silenced", frozenset({Reason.SILENCED, Reason.SILENCE_CHECK_FAILED})),
    ("for", frozenset({Reason.TOO_YOUNG, Reason.HELD_FULL})),
    ("params", frozenset({Reason.TEMPLATE_ERROR, Reason.NOT_ALLOWED})),
    ("limits", frozenset({
        Reason.COOLDOWN, Reason.RATE_LIMITED, Reason.MAX_ATTEMPTS, Reason.BUDGET_EXHAUSTED,
        Reason.CIRCUIT_OPEN, Reason.LOCKED,
    })),
    ("still firing", frozenset({Reason.RESOLVED})),
    ("approval", frozenset({Reason.APPROVAL_REJECTED, Reason.APPROVAL_EXPIRED})),
    ("dry-run", frozenset({Reason.SHADOW})),
    ("act", frozenset({Reason.ACTION_ERROR, Reason.TIMEOUT, Reason.INTERRUPTED})),
)  # fmt: skip
"""The guard chain as a decision's story tells it (engine/deciding.py runs it), each
guard with the reasons it refuses with: the guards before the one a decision names passed,
those after it were not reached. `duplicate` records no decision, so it is not here."""


def decision_url(external_url: str, decision_id: int) -> str:
    """A decision's page in the console under `external_url` ("" without one): the link
    escalations, pages and approval requests carry."""
    if not external_url or not decision_id:
        return ""
    return f"{external_url}/ui/decisions/{decision_id}"


@dataclasses.dataclass(slots=True)
class Decision:
    """The recorded outcome of one (alert, rule) pair.

    Not frozen: one is built per decision on the hot path, and a frozen dataclass pays
    an object.__setattr__ per field. Treat it as immutable all the same.
    """

    rule: str
    alertname: str
    fingerprint: str
    starts_at: str
    source: str
    outcome: Outcome
    reason: Reason
    decided_at: str
    """RFC 3339 (models.alert.iso_ts of the engine clock)."""
    received_at: dt.datetime
    target: str = ""
    action: str = ""
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    detail: str = ""
    request_id: str = ""
    attempt: int = 1
    step: int = 1
    """Which step of the rule's ladder this decision is about (1-based)."""
    result: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """What the action reported (Result.data): what it changed or would change."""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The alert's, so the audit says what it was about (and a restart can verify it)."""
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """What the action's family saw before it acted (bounded; actions/evidence.py)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Escalation:
    """Why a remediation gave up and what it tried: what the escalation tells a human."""

    why: str
    tried: tuple[str, ...]
    """One line per step attempted: action, target, outcome, verification, decision id."""
    decision_id: int
    """The decision that gave up (the last of the remediation)."""
    url: str
    """Its link (under `external_url`), or "" when no external URL is configured."""
    evidence: str = ""
    """What the last step's family saw before it acted, as a few lines."""

    @property
    def tried_text(self) -> str:
        return "\n".join(self.tried) if self.tried else "nothing was attempted"
