"""Alerts held for a rule's `for`: kept compactly, bounded, durable, decided on time.

An alert younger than a rule's `for` is not decided now: it is held (the alert itself,
not the request that brought it) and decided when it reaches that age, without waiting
for Alertmanager to send it again. Its journal entry is let go once the held record is
durable, so a storm of young alerts never fills the journal's backlog: intake stays open
for other alerts and for resolves. Past `intake.max_held` a new one is refused with
`skipped/held_full` (a re-delivery is decided again).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from remediator.backends.state import State
from remediator.engine.clock import Clock, Timer
from remediator.engine.recording import Work
from remediator.models.alert import Alert, iso_ts
from remediator.models.rule import Rule

log = structlog.get_logger("remediator.engine")


@dataclasses.dataclass(slots=True, eq=False)
class Held:
    key: str
    alert: Alert
    rule: Rule
    request_id: str
    due: float
    timer: Timer
    token: int = 0
    """The fencing token it is held under: deciding it claims with this token."""


class HeldAlerts:
    def __init__(
        self, *, state: State, clock: Clock, due: Callable[[Held], None], limit: Callable[[], int]
    ) -> None:
        """`due` is called (on the loop) when a held alert reaches its rule's `for`."""
        self._state = state
        self._clock = clock
        self._due = due
        self._limit = limit
        self._held: dict[str, Held] = {}
        self._by_occurrence: dict[str, set[str]] = {}
        """Occurrence → keys: a resolve finds what it releases whatever the rules are now
        (a reload may have renamed or narrowed a rule)."""

    def __len__(self) -> int:
        return len(self._held)

    @property
    def full(self) -> bool:
        return len(self._held) >= self._limit()

    def hold(self, w: Work, due: float) -> asyncio.Future[Any] | None:
        """Hold an alert until `due`; returns the durable write to wait for (if any)."""
        key = w.key
        record = {
            "key": key, "rule": w.rule.name, "alert": w.alert.to_json(),
            "request_id": w.request_id, "due": due, "token": w.token,
        }  # fmt: skip
        timer = self._timer(key, due)
        self._add(Held(key, w.alert, w.rule, w.request_id, due, timer, w.token))
        log.info(
            "alert_held", rule=w.rule.name, fingerprint=w.alert.fingerprint,
            request_id=w.request_id, decided_at=iso_ts(due),
        )  # fmt: skip
        return self._state.save_held(key, record)

    def take(self, key: str, only: Held | None = None) -> Held | None:
        """Stop holding one in memory (it is being decided now, or it resolved) — `only`
        that one, if given. Its durable record stays until `forget`: the caller drops it
        once its decision is durable."""
        held = self._held.get(key)
        if held is None or (only is not None and held is not only):
            return None
        del self._held[key]
        held.timer.cancel()
        keys = self._by_occurrence.get(held.alert.occurrence)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_occurrence[held.alert.occurrence]
        return held

    def forget(self, key: str) -> None:
        """Drop the durable record of a held alert that has been decided."""
        self._state.drop_held(key)

    def of_occurrence(self, occurrence: str) -> Iterator[str]:
        return iter(sorted(self._by_occurrence.get(occurrence, ())))

    async def restore(self, rules: dict[str, Rule]) -> int:
        """Hold again what an earlier run held (due ones are decided at once)."""
        return self.adopt(rules, await self._state.held())

    def abandon(self) -> None:
        """Forget every held alert (this replica lost its lease: another adopts them)."""
        self.cancel_timers()
        self._held.clear()
        self._by_occurrence.clear()

    def adopt(self, rules: dict[str, Rule], records: list[dict[str, Any]]) -> int:
        """Hold alerts from their records (an earlier run's, or a dead replica's)."""
        count = 0
        for record in records:
            try:
                key = record["key"]
                rule = rules.get(record["rule"])
                if rule is None:
                    log.warning("held_alert_dropped", rule=record["rule"], reason="rule is gone")
                    self._state.drop_held(key)
                    continue
                alert = Alert.from_json(record["alert"])
                due = float(record["due"])
                request_id, token = record["request_id"], record.get("token", 0)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # One record it cannot read (another version's, hand-edited) is left out;
                # the others are still held. Alertmanager sends the alert again.
                log.error("record_unreadable", kind="held", error=repr(exc)[:200])
                continue
            self._add(Held(key, alert, rule, request_id, due, self._timer(key, due), token))
            count += 1
        return count

    def cancel_timers(self) -> None:
        for held in self._held.values():
            held.timer.cancel()

    def _add(self, held: Held) -> None:
        old = self._held.pop(held.key, None)
        if old is not None:
            old.timer.cancel()
        self._held[held.key] = held
        self._by_occurrence.setdefault(held.alert.occurrence, set()).add(held.key)

    def _timer(self, key: str, due: float) -> Timer:
        def fire() -> None:
            held = self._held.get(key)
            if held is not None:
                self._due(held)

        return self._clock.call_at(due, fire)
