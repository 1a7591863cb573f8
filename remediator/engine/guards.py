"""Pure guard logic over limit state: no I/O, no clock of its own (`now` is passed in).

State backends keep the numbers; these functions decide. The memory backend calls them
under the event loop's natural atomicity; a shared backend must evaluate them
atomically (one script), so that several replicas act once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import deque

from remediator.matching import matchers
from remediator.models.alert import Alert
from remediator.models.decision import Reason
from remediator.models.rule import Rule
from remediator.settings import Blackout, Budgets


@dataclasses.dataclass(slots=True)
class Circuit:
    failures: int = 0
    """Consecutive failed or ineffective attempts."""
    opened_at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason | None
    """None: go ahead (the attempt is reserved); else why to skip."""
    detail: str = ""
    attempt: int = 0
    """1-based attempt number for this rule and target within the window."""


def prune(times: deque[float], now: float, window: float) -> deque[float]:
    """Drop timestamps older than the window from the left (times are appended in order)."""
    while times and times[0] <= now - window:
        times.popleft()
    return times


def circuit_blocks(c: Circuit | None, rule: Rule, now: float) -> bool:
    """Open: enough consecutive failures and not yet `reset_after` since it opened.

    After `reset_after` the circuit is half-open: one attempt may go; its failure
    re-opens it at once (the failure count is still past the threshold).
    """
    if c is None or c.opened_at is None:
        return False
    return now - c.opened_at < rule.circuit_breaker.reset_after


def blackout(
    blackouts: tuple[Blackout, ...], rule: Rule, alert: Alert, now_dt: dt.datetime
) -> str | None:
    """Name of the first active blackout window that covers this rule and alert."""
    for b in blackouts:
        if b.rules and rule.name not in b.rules:
            continue
        if b.matchers and not matchers.match_all(b.matchers, alert.labels):
            continue
        if b.active(now_dt):
            return b.name
    return None


def budget_exhausted(
    budgets: Budgets, actions: deque[tuple[float, str]], target: str, now: float
) -> str | None:
    """Why global budgets refuse one more action on `target`, or None."""
    while actions and actions[0][0] <= now - budgets.window:
        actions.popleft()
    if len(actions) >= budgets.max_actions_per_window:
        return (
            f"{len(actions)} actions in the last {budgets.window:.0f}s "
            f"(limits.max_actions_per_window={budgets.max_actions_per_window})"
        )
    targets = {t for _, t in actions}
    if target not in targets and len(targets) >= budgets.max_targets_per_window:
        return (
            f"{len(targets)} distinct targets acted on in the last {budgets.window:.0f}s "
            f"(limits.max_targets_per_window={budgets.max_targets_per_window})"
        )
    return None
