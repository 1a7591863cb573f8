"""Pure guard logic over limit state: no I/O, no clock of its own (`now` is passed in).

State backends keep the numbers; these functions decide. The memory backend calls them
under the event loop's natural atomicity; a shared backend must evaluate them
atomically (one script), so that several replicas act once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter, deque

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
    trial: bool = False
    """Half-open: the one attempt let through after `reset_after` has not reported yet."""


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason | None
    """None: go ahead (the attempt is reserved); else why to skip."""
    detail: str = ""
    attempt: int = 0
    """1-based attempt number for this rule and target within the window."""
    retry_at: float | None = None
    """For a refusal that lifts by itself (cooldown, lock): when to try again."""


def prune(times: deque[float], now: float, window: float) -> deque[float]:
    """Drop timestamps older than the window from the left (times are appended in order)."""
    while times and times[0] <= now - window:
        times.popleft()
    return times


def circuit_blocks(c: Circuit | None, rule: Rule, now: float) -> bool:
    """Open: enough consecutive failures and not yet `reset_after` since it opened.

    After `reset_after` the circuit is half-open: one trial attempt may go, and nothing
    else until it reports; its failure re-opens the circuit at once, its success closes it.
    """
    if c is None or c.opened_at is None:
        return False
    return c.trial or now - c.opened_at < rule.circuit_breaker.reset_after


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


class Budget:
    """Actions in the global window, with a count per target: O(1) per check."""

    def __init__(self) -> None:
        self.actions: deque[tuple[float, str]] = deque()
        self.per_target: Counter[str] = Counter()

    def add(self, now: float, target: str) -> None:
        self.actions.append((now, target))
        self.per_target[target] += 1

    def prune(self, now: float, window: float) -> None:
        while self.actions and self.actions[0][0] <= now - window:
            _, target = self.actions.popleft()
            self.per_target[target] -= 1
            if self.per_target[target] <= 0:
                del self.per_target[target]

    def refuses(self, budgets: Budgets, target: str, now: float) -> str | None:
        """Why the global budgets refuse one more action on `target`, or None."""
        self.prune(now, budgets.window)
        if len(self.actions) >= budgets.max_actions_per_window:
            return (
                f"{len(self.actions)} actions in the last {budgets.window:.0f}s "
                f"(limits.max_actions_per_window={budgets.max_actions_per_window})"
            )
        distinct = len(self.per_target)
        if target not in self.per_target and distinct >= budgets.max_targets_per_window:
            return (
                f"{distinct} distinct targets acted on in the last {budgets.window:.0f}s "
                f"(limits.max_targets_per_window={budgets.max_targets_per_window})"
            )
        return None
