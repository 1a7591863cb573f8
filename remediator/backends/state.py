"""Limit state: occurrences decided, attempts, budgets, circuits, locks, pause.

`State` is the interface the engine uses; `MemoryState` is the embedded default (one
replica). Each method that checks and changes state does so atomically — the memory
backend never awaits inside one — so two deliveries racing through the engine cannot
both pass a guard.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import NamedTuple, Protocol

from remediator.engine import guards
from remediator.engine.guards import Circuit, Verdict
from remediator.models.decision import Reason
from remediator.models.rule import Rule
from remediator.settings import Budgets

_EMPTY: deque[float] = deque()
"""Stands for "no attempts yet" in reads; never appended to."""
GC_EVERY = 1000
"""Reservations between sweeps of lapsed per-target state."""
MAX_OCCURRENCES = 200_000
"""Occurrence records kept for dedup; the oldest go first past this (bounded memory)."""


class Occurrence(NamedTuple):
    """A tuple, not an object: tuples of str and float are untracked by the cyclic GC,
    so 200,000 of them cost the collector nothing."""

    status: str
    """`held`, `deciding`, or the decision as `outcome/reason`."""
    at: float
    """When that status was set."""


class State(Protocol):
    paused: bool

    async def occurrence(self, key: str) -> Occurrence | None: ...

    async def set_occurrence(self, key: str, status: str, now: float) -> None: ...

    async def forget_occurrence(self, key: str) -> None:
        """Drop a claim left by a decision that failed half-way (decided afresh later)."""

    async def reserve(self, *, rule: Rule, target: str, budgets: Budgets, now: float,
                      dry_run: bool) -> Verdict: ...  # fmt: skip

    async def release(self, target: str) -> None: ...

    async def end_trial(self, *, rule: Rule, target: str) -> None:
        """A half-open circuit's trial was refused before it acted: let another through."""

    async def record_result(self, *, rule: Rule, target: str, ok: bool, now: float) -> bool: ...

    async def should_escalate(self, *, rule: Rule, target: str, now: float) -> bool: ...

    async def snapshot(self, rule: Rule, now: float) -> dict[str, object]: ...

    def open_circuits(self, rules: Mapping[str, Rule], now: float) -> dict[str, int]:
        """Open circuits per rule name, in one pass (it runs on every /metrics scrape)."""

    def restore_attempt(self, *, rule: str, target: str, at: float) -> None: ...


class MemoryState:
    def __init__(self) -> None:
        self.paused = False
        self._occurrences: OrderedDict[str, Occurrence] = OrderedDict()
        self._last_attempt: dict[str, float] = {}
        self._attempts: dict[tuple[str, str], deque[float]] = {}
        self._rule_actions: dict[str, deque[float]] = {}
        self._budget = guards.Budget()
        self._circuits: dict[tuple[str, str], Circuit] = {}
        self._locks: set[str] = set()
        self._escalated: dict[tuple[str, str], float] = {}
        self._expiry: dict[str, float] = {}
        """Per target: when its cooldown, attempts and circuit can no longer matter."""
        self._reserves = 0

    async def occurrence(self, key: str) -> Occurrence | None:
        found = self._occurrences.get(key)
        if found is not None:
            # Still being re-sent, so still firing: the last to be forgotten past the bound.
            self._occurrences.move_to_end(key)
        return found

    async def set_occurrence(self, key: str, status: str, now: float) -> None:
        self._occurrences[key] = Occurrence(status, now)
        self._occurrences.move_to_end(key)
        while len(self._occurrences) > MAX_OCCURRENCES:
            self._occurrences.popitem(last=False)

    async def reserve(
        self, *, rule: Rule, target: str, budgets: Budgets, now: float, dry_run: bool
    ) -> Verdict:
        """Check cooldown, attempts, rule rate, budgets, circuit, lock; reserve if all pass."""
        self._reserves += 1
        if self._reserves % GC_EVERY == 0:
            self._collect(now)
        lim = rule.limits
        last = self._last_attempt.get(target)
        if last is not None and now - last < lim.cooldown:
            return Verdict(
                Reason.COOLDOWN,
                f"{target} was acted on {now - last:.0f}s ago "
                f"(limits.cooldown={lim.cooldown:.0f}s)",
            )
        key = (rule.name, target)
        # Read without creating: a target refused below must leave nothing behind, or a
        # storm over many targets (pods, instances) would grow these tables for good.
        attempts = guards.prune(self._attempts.get(key, _EMPTY), now, lim.window)
        if len(attempts) >= lim.max_attempts:
            return Verdict(
                Reason.MAX_ATTEMPTS,
                f"{len(attempts)} attempts on {target} in the last {lim.window:.0f}s "
                f"(limits.max_attempts={lim.max_attempts})",
            )
        rule_actions = guards.prune(self._rule_actions.get(rule.name, _EMPTY), now, lim.window)
        if lim.max_actions is not None and len(rule_actions) >= lim.max_actions:
            return Verdict(
                Reason.RATE_LIMITED,
                f"rule ran {len(rule_actions)} actions in the last {lim.window:.0f}s "
                f"(limits.max_actions={lim.max_actions})",
            )
        why = self._budget.refuses(budgets, target, now)
        if why is not None:
            return Verdict(Reason.BUDGET_EXHAUSTED, why)
        circuit = self._circuits.get(key)
        if guards.circuit_blocks(circuit, rule, now):
            assert circuit is not None  # circuit_blocks is False for None
            closes_in = rule.circuit_breaker.reset_after - (now - (circuit.opened_at or now))
            if circuit.trial:
                return Verdict(
                    Reason.CIRCUIT_OPEN,
                    f"half-open: the trial attempt on {target} has not reported yet",
                )
            return Verdict(
                Reason.CIRCUIT_OPEN,
                f"{circuit.failures} consecutive failed or ineffective attempts on {target}; "
                f"half-opens {closes_in:.0f}s from now (circuit_breaker.reset_after)",
            )
        if target in self._locks:
            return Verdict(Reason.LOCKED, f"an action on {target} is still running")
        if circuit is not None and circuit.opened_at is not None and not dry_run:
            circuit.trial = True  # half-open: this is the one trial attempt
        # All guards passed: reserve the attempt. A dry run counts too, so that dry-run
        # shows exactly what production would do, cooldowns and budgets included.
        self._last_attempt[target] = now
        if attempts is _EMPTY:
            attempts = self._attempts[key] = deque()
        if rule_actions is _EMPTY:
            rule_actions = self._rule_actions[rule.name] = deque()
        attempts.append(now)
        rule_actions.append(now)
        self._budget.add(now, target)
        self._expiry[target] = max(
            self._expiry.get(target, 0.0),
            now + max(lim.cooldown, lim.window, rule.circuit_breaker.reset_after),
        )
        if not dry_run:
            self._locks.add(target)
        return Verdict(None, attempt=len(attempts))

    def _collect(self, now: float) -> None:
        """Forget targets whose limits have all lapsed, so memory follows live targets only."""
        gone = {t for t, until in self._expiry.items() if until < now and t not in self._locks}
        if not gone:
            return
        for t in gone:
            del self._expiry[t]
            self._last_attempt.pop(t, None)
        for table in (self._attempts, self._circuits, self._escalated):
            for key in [k for k in table if k[1] in gone]:
                del table[key]

    async def release(self, target: str) -> None:
        self._locks.discard(target)

    async def forget_occurrence(self, key: str) -> None:
        self._occurrences.pop(key, None)

    async def end_trial(self, *, rule: Rule, target: str) -> None:
        c = self._circuits.get((rule.name, target))
        if c is not None:
            c.trial = False

    async def record_result(self, *, rule: Rule, target: str, ok: bool, now: float) -> bool:
        """Count a failed/ineffective or successful attempt; True when the circuit opens now."""
        key = (rule.name, target)
        c = self._circuits.setdefault(key, Circuit())
        if ok:
            c.failures = 0
            c.opened_at = None
            c.trial = False
            return False
        c.failures += 1
        if c.failures >= rule.circuit_breaker.open_after:
            was_open = (
                c.opened_at is not None and now - c.opened_at < rule.circuit_breaker.reset_after
            )
            c.opened_at = now
            c.trial = False
            return not was_open
        return False

    async def should_escalate(self, *, rule: Rule, target: str, now: float) -> bool:
        """Escalate at most once per rule, target and window (no pager storm)."""
        key = (rule.name, target)
        last = self._escalated.get(key)
        if last is not None and now - last < rule.limits.window:
            return False
        self._escalated[key] = now
        return True

    async def snapshot(self, rule: Rule, now: float) -> dict[str, object]:
        """Live state of a rule for /api/v1/rules: cooldowns and circuits per target."""
        targets = {t for (r, t) in self._attempts if r == rule.name}
        out = {}
        for t in sorted(targets):
            last = self._last_attempt.get(t)
            c = self._circuits.get((rule.name, t))
            out[t] = {
                "cooldown_remaining_seconds": max(0.0, rule.limits.cooldown - (now - last))
                if last is not None
                else 0.0,
                "attempts_in_window": len(
                    guards.prune(self._attempts[(rule.name, t)], now, rule.limits.window)
                ),
                "consecutive_failures": c.failures if c else 0,
                "circuit_open": guards.circuit_blocks(c, rule, now),
                "locked": t in self._locks,
            }
        return {"targets": out}

    def open_circuits(self, rules: Mapping[str, Rule], now: float) -> dict[str, int]:
        counts = dict.fromkeys(rules, 0)
        for (name, _), c in self._circuits.items():
            rule = rules.get(name)
            if rule is not None and guards.circuit_blocks(c, rule, now):
                counts[name] += 1
        return counts

    def restore_attempt(self, *, rule: str, target: str, at: float) -> None:
        """Replay an attempt from the audit on start, so cooldowns survive a restart."""
        self._last_attempt[target] = max(at, self._last_attempt.get(target, 0.0))
        self._attempts.setdefault((rule, target), deque()).append(at)
        self._rule_actions.setdefault(rule, deque()).append(at)
        self._budget.add(at, target)
        self._expiry[target] = max(self._expiry.get(target, 0.0), at + 86400.0)
