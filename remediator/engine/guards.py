"""Pure guard logic over limit state: no I/O, no clock of its own (`now` is passed in).

State backends keep the numbers; these functions decide. The memory backend calls them
under the event loop's natural atomicity; a shared backend evaluates the same rules
atomically in one script (backends/redis.py, whose tests hold both to the same answers),
so that several replicas act once. The refusal texts are built here for both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter, deque

from remediator import models
from remediator.matching import matchers
from remediator.models.alert import Alert
from remediator.models.decision import Outcome, Reason
from remediator.models.rule import Limits, Rule
from remediator.settings import Blackout, Budgets

TRANSIENT = frozenset(
    {Reason.PAUSED, Reason.BLACKOUT, Reason.SILENCED, Reason.SILENCE_CHECK_FAILED,
     Reason.HELD_FULL}
)  # fmt: skip
"""A skip for one of these holds only while the reason does: once the pause, blackout or
silence is over, the next re-delivery of a still-firing alert is decided again."""
HELD = "held"
"""Occurrence status: held for the rule's `for`."""
DECIDING = "deciding"
"""Occurrence status: claimed by a decision under way."""
LOCK_RECHECK = 10.0
"""Seconds after which a remediation refused by a target lock tries again."""


def should_decide(prev: str | None, skip: Reason | None, *, aged: bool) -> bool:
    """The duplicate guard: is this delivery a new decision, or one already made?

    `prev` is the occurrence's status (None: never seen), `skip` the transient reason
    this delivery would be skipped for (None: none), `aged` a held alert come of age."""
    if prev is None:
        return True
    if prev == HELD:
        return aged
    if prev == DECIDING:
        return False
    outcome, _, reason = prev.partition("/")
    if outcome == Outcome.SKIPPED and reason in TRANSIENT:
        return skip is None or skip != reason
    return False


@dataclasses.dataclass(slots=True)
class Circuit:
    failures: int = 0
    """Consecutive failed or ineffective attempts."""
    opened_at: float | None = None
    trial: bool = False
    """Half-open: the one attempt let through after `reset_after` has not reported yet."""


@models.value
class Verdict:
    reason: Reason | None
    """None: go ahead (the attempt is reserved); else why to skip."""
    detail: str = ""
    attempt: int = 0
    """1-based attempt number for this rule and target within the window."""
    retry_at: float | None = None
    """For a refusal that lifts by itself (cooldown, lock): when to try again."""
    token: int = 0
    """The fencing token of the target lock taken (0: none taken, e.g. a dry run; the
    embedded backend's lock cannot lapse). It travels with the action and is checked
    before the side effect and before the outcome is recorded."""


def cooldown(target: str, last: float, now: float, lim: Limits) -> Verdict:
    return Verdict(
        Reason.COOLDOWN,
        f"{target} was acted on {now - last:.0f}s ago (limits.cooldown={lim.cooldown:.0f}s)",
        retry_at=last + lim.cooldown,
    )


def max_attempts(target: str, count: int, lim: Limits) -> Verdict:
    return Verdict(
        Reason.MAX_ATTEMPTS,
        f"{count} attempts on {target} in the last {lim.window:.0f}s "
        f"(limits.max_attempts={lim.max_attempts})",
    )


def rate_limited(count: int, lim: Limits) -> Verdict:
    return Verdict(
        Reason.RATE_LIMITED,
        f"rule ran {count} actions in the last {lim.window:.0f}s "
        f"(limits.max_actions={lim.max_actions})",
    )


def budget_actions(count: int, budgets: Budgets) -> str:
    return (
        f"{count} actions in the last {budgets.window:.0f}s "
        f"(limits.max_actions_per_window={budgets.max_actions_per_window})"
    )


def budget_targets(distinct: int, budgets: Budgets) -> str:
    return (
        f"{distinct} distinct targets acted on in the last {budgets.window:.0f}s "
        f"(limits.max_targets_per_window={budgets.max_targets_per_window})"
    )


def circuit_open(target: str, c: Circuit, rule: Rule, now: float) -> Verdict:
    if c.trial:
        return Verdict(
            Reason.CIRCUIT_OPEN, f"half-open: the trial attempt on {target} has not reported yet"
        )
    closes_in = rule.circuit_breaker.reset_after - (now - (c.opened_at or now))
    return Verdict(
        Reason.CIRCUIT_OPEN,
        f"{c.failures} consecutive failed or ineffective attempts on {target}; "
        f"half-opens {closes_in:.0f}s from now (circuit_breaker.reset_after)",
    )


def locked(target: str, now: float) -> Verdict:
    return Verdict(
        Reason.LOCKED, f"an action on {target} is still running", retry_at=now + LOCK_RECHECK
    )


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
            return budget_actions(len(self.actions), budgets)
        distinct = len(self.per_target)
        if target not in self.per_target and distinct >= budgets.max_targets_per_window:
            return budget_targets(distinct, budgets)
        return None
