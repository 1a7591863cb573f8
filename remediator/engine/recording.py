"""Recording a decision: its audit row, the occurrence's status, a metric, a log event.

Every matched (alert, rule) pair ends here, whatever the path that decided it (a new
alert, one held for `for`, a retry or a ladder's next step). Rows of skips and dry runs
are not awaited: the journal entry they came from waits for them (`Recorder.durable`).
An action's row is awaited before the action runs (`durable=True`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping
from typing import Any

import structlog

from remediator import errors, logs, models
from remediator.backends.audit import Audit
from remediator.backends.state import Mark, State
from remediator.engine.clock import Clock
from remediator.metrics import Metrics
from remediator.models.alert import Alert, iso_ts
from remediator.models.decision import Decision, Outcome, Reason
from remediator.models.rule import Rule

log = structlog.get_logger("remediator.engine")


def occurrence_key(rule: str, fingerprint: str, starts_at: str) -> str:
    """The state key of one rule's decisions on one occurrence (fingerprint, startsAt)."""
    return f"{rule}\x00{fingerprint}\x00{starts_at}"


@models.value
class Work:
    """One rule deciding about one firing alert, at one moment, for one step."""

    alert: Alert
    rule: Rule
    now: float
    request_id: str
    owner: Hashable | None = None
    """What waits for this decision's rows to be durable before it lets go of the alert:
    the journal entry it came from, or the held record of an alert that came of age. None
    for a retry or a ladder's next step, whose remediation record is the durable state."""
    step: int = 0
    """Index into `rule.steps`."""
    token: int = 0
    """The fencing token of the claim on this occurrence (its first decision's, or the
    remediation's that owns it): every status and audit write is made under it, so a
    replica whose claim was taken over records nothing (`errors.Superseded`)."""
    row: int = 0
    """The row a replica that died (or a decision that failed) wrote for this attempt and
    never acted on, taken over with the claim: this decision's row is that one, updated,
    not a second one beside it."""

    @property
    def key(self) -> str:
        return occurrence_key(self.rule.name, self.alert.fingerprint, self.alert.starts_iso)

    def with_token(self, token: int, row: int = 0) -> Work:
        """The same work under another fencing token (and the claim's `row`), as
        `dataclasses.replace` without its cost per decision."""
        if token == self.token and row == self.row:
            return self
        return Work(
            self.alert, self.rule, self.now, self.request_id, self.owner, self.step, token, row
        )


class Recorder:
    def __init__(self, *, audit: Audit, state: State, metrics: Metrics, clock: Clock) -> None:
        self.audit = audit
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._counters: dict[tuple[str, Outcome, Reason], Any] = {}
        self._unsaved: dict[Hashable, list[asyncio.Future[Any]]] = {}
        """Writes per owner (see Work.owner) not yet known durable; the owner waits."""

    def durable(self, owner: Hashable | None, write: asyncio.Future[Any] | None) -> None:
        """`owner` may only let go of its alert once `write` is committed."""
        if owner is not None and write is not None:
            self._unsaved.setdefault(owner, []).append(write)

    def writes_of(self, owner: Hashable) -> list[asyncio.Future[Any]]:
        """The writes `owner` waits for (handed over once: the caller waits for them)."""
        return self._unsaved.pop(owner, [])

    async def record(
        self,
        w: Work,
        outcome: Outcome,
        reason: Reason,
        *,
        detail: str,
        target: str = "",
        action: str = "",
        params: Mapping[str, Any] | None = None,
        attempt: int = 0,
        result: Mapping[str, Any] | None = None,
        evidence: Mapping[str, Any] | None = None,
        durable: bool = False,
        final: bool = True,
        act: str = "",
    ) -> int:
        """Record a decision; returns its id when `durable` (else 0: not awaited). `act`:
        the action's progress marked with it (`Mark.act`: `=` for an action's own row)."""
        status = f"{outcome}/{reason}"
        if w.row and self.audit.marks_occurrences:
            # The row taken over with the claim is this decision's (its columns but the
            # outcome stay those of the attempt it was written for).
            decision_id = w.row
            write = self.audit.update(
                w.row, outcome=outcome, reason=reason, detail=detail, result=result,
                mark=Mark(w.key, status, w.token, act),
            )  # fmt: skip
            if durable or w.owner is None:
                await write
            else:  # as an insert's batch: the alert is let go of once it is written
                self.durable(w.owner, asyncio.ensure_future(write))
        else:
            decision_id = await self._insert(
                w, outcome, reason, status, detail=detail, target=target, action=action,
                params=params, attempt=attempt, result=result, evidence=evidence,
                durable=durable, act=act,
            )  # fmt: skip
        if final:
            self.count(w.rule, outcome, reason)
            self.log(w, outcome, reason, target=target, detail=detail, decision_id=decision_id)
        return decision_id

    async def _insert(
        self, w: Work, outcome: Outcome, reason: Reason, status: str, *, detail: str,
        target: str, action: str, params: Mapping[str, Any] | None, attempt: int,
        result: Mapping[str, Any] | None, evidence: Mapping[str, Any] | None, durable: bool,
        act: str,
    ) -> int:  # fmt: skip
        """A new row for the decision; its id when `durable` (else 0)."""
        alert = w.alert
        decision = Decision(
            rule=w.rule.name, alertname=alert.name, fingerprint=alert.fingerprint,
            starts_at=alert.starts_iso, source=alert.source, outcome=outcome, reason=reason,
            decided_at=iso_ts(self._clock.now()),
            received_at=alert.received_at, target=target, action=action,
            params=params or {}, detail=detail, request_id=w.request_id, attempt=attempt,
            step=w.step + 1, result=result or {}, labels=alert.labels,
            annotations=alert.annotations, evidence=evidence or {},
        )  # fmt: skip
        if self.audit.marks_occurrences:
            # The status with the row, in one step fenced by the claim: an occurrence
            # marked decided always has its row, and a claim taken over writes neither.
            receipt = self.audit.record(decision, Mark(w.key, status, w.token, act))
        else:
            # Before the audit write: a claim taken over by another replica stops here.
            await self._state.set_occurrence(w.key, status, w.now, token=w.token)
            receipt = self.audit.record(decision)
        if not durable:
            self.durable(w.owner, receipt.batch)
            return 0
        decision_id = await receipt.id()
        if not decision_id:
            raise errors.Superseded(
                f"occurrence {w.key!r} was taken over by another replica: not recorded"
            )
        return decision_id

    async def update(
        self, w: Work, decision_id: int, outcome: Outcome, reason: Reason, *, detail: str,
        target: str = "", result: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """A decision that waited (for an approval, or for a slot it then did not use)
        reaches its outcome: the same row, and the occurrence's status, fenced by the
        claim like `record`: a replica whose occurrence was taken over (and whose row the
        new owner may have acted on) writes neither (`errors.Superseded`)."""
        status = f"{outcome}/{reason}"
        mark = None
        if self.audit.marks_occurrences:
            # The row and the status in one step; nothing of the action is in progress.
            mark = Mark(w.key, status, w.token, "-")
        else:
            await self._state.set_occurrence(w.key, status, w.now, token=w.token)
        await self.audit.update(decision_id, outcome=outcome, reason=reason, detail=detail,
                                result=result, mark=mark)  # fmt: skip
        self.count(w.rule, outcome, reason)
        self.log(w, outcome, reason, target=target, detail=detail, decision_id=decision_id)

    def count(self, rule: Rule, outcome: Outcome, reason: Reason) -> None:
        key = (rule.name, outcome, reason)
        counter = self._counters.get(key)
        if counter is None:  # labels() costs a lock and a tuple build: once per label set
            counter = self._metrics.decisions.labels(
                rule=rule.name, outcome=str(outcome), reason=str(reason)
            )
            self._counters[key] = counter
        counter.inc()

    def log(
        self,
        w: Work,
        outcome: Outcome,
        reason: Reason,
        *,
        target: str,
        detail: str,
        decision_id: int,
    ) -> None:
        if not logs.enabled(logging.INFO):
            return
        alert = w.alert
        log.info(
            "decision_recorded",
            rule=w.rule.name,
            outcome=str(outcome),
            reason=str(reason),
            target=target,
            fingerprint=alert.fingerprint,
            alertname=alert.name,
            request_id=w.request_id,
            step=w.step + 1,
            detail=detail[:500],
            decision_id=decision_id or None,
        )
