"""Deciding: the guards, in the order of DESIGN.md, for one rule and one firing alert.

    paused · blackout · silenced        transient: the skip holds while its reason does
      └► duplicate                      a re-delivery of a decided occurrence adds nothing
           └► for                       too young: held, decided when it comes of age
                └► params               rendered, validated, allow-listed (the target)
                     └► limits          cooldown · attempts · rule rate · global budgets ·
                          │             circuit · target lock — checked and reserved at once
                          └► dry-run    global, or the rule's shadow mode
                               └► act   (engine/loop.py takes it from there)

`duplicate` comes after the transient guards because it needs their verdict: a
re-delivery of a still-paused alert is a duplicate, one whose pause has lifted is decided
again. The only await on I/O (the silence list, mostly from a cache) comes before the
duplicate check, never between reading the occurrence and claiming it, so two deliveries
racing through the workers cannot both act.

A remediation's next attempt (a ladder's next step, a retry) runs the same chain from
`paused` on, without `duplicate` and `for` (it owns its occurrence and is old enough): a
transient refusal makes it wait and look again, a cooldown or lock makes it wait for
that, and any other refusal ends it with an escalation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Hashable
from typing import Final, Literal

from remediator.backends.state import State
from remediator.engine import guards
from remediator.engine.clock import Clock
from remediator.engine.executing import Executor, Prepared, prepare
from remediator.engine.holding import HeldAlerts
from remediator.engine.loop import Loop, Remediation
from remediator.engine.recording import Recorder, Work
from remediator.engine.silences import Silences
from remediator.metrics import Metrics
from remediator.models.alert import iso_ts
from remediator.models.decision import Outcome, Reason
from remediator.settings import Settings

TRANSIENT = frozenset(
    {Reason.PAUSED, Reason.BLACKOUT, Reason.SILENCED, Reason.SILENCE_CHECK_FAILED,
     Reason.HELD_FULL}
)  # fmt: skip
"""A skip for one of these holds only while the reason does: once the pause, blackout or
silence is over, the next re-delivery of a still-firing alert is decided again."""
WAITS: Final = frozenset({Reason.COOLDOWN, Reason.LOCKED})
"""Refusals that lift by themselves: a remediation (or `retry_while_firing`) waits."""
TRANSIENT_RECHECK = 60.0
"""Seconds after which a remediation held back by a pause, blackout or silence looks again."""
HELD: Final = "held"
DECIDING: Final = "deciding"
DECIDED: Final = "decided"
DUPLICATE: Final = "duplicate"
PENDING: Final = "pending"
"""A dry run doing I/O in its own task: it records the decision (and releases what
waits for it) when done, so a slow API never holds an engine worker."""
Verdict = Literal["decided", "held", "duplicate", "pending"]


class Decider:
    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        state: State,
        silences: Silences | None,
        recorder: Recorder,
        executor: Executor,
        loop: Loop,
        held: HeldAlerts,
        metrics: Metrics,
        clock: Clock,
        spawn: Callable[[Awaitable[None], str], None],
        release: Callable[[Hashable], None],
    ) -> None:
        """`release(owner)` is called once a dry run in its own task has recorded."""
        self._settings = settings
        self._state = state
        self._silences = silences
        self._recorder = recorder
        self._executor = executor
        self._loop = loop
        self._held = held
        self._metrics = metrics
        self._clock = clock
        self._spawn = spawn
        self._release = release

    async def decide(self, w: Work, *, aged: bool) -> Verdict:
        """Decide one rule for one firing alert; `aged`: a held alert has come of age."""
        try:
            return await self._decide(w, aged=aged)
        except Exception:
            # A bug or a failed write: forget the claim so a later delivery decides afresh.
            await self._state.forget_occurrence(w.key)
            raise

    async def _decide(self, w: Work, *, aged: bool) -> Verdict:
        alert, rule, now = w.alert, w.rule, w.now
        skip = await self._transient(w)
        if self._loop.get(w) is not None:
            return DUPLICATE  # a remediation owns this occurrence: it decides what is next
        prev = await self._state.occurrence(w.key)
        if not _should_decide(prev.status if prev else None, skip, aged=aged):
            return DUPLICATE
        await self._state.set_occurrence(w.key, DECIDING, now)
        if skip is not None:
            await self._recorder.record(w, Outcome.SKIPPED, skip[0], detail=skip[1])
            return DECIDED
        if self._loop.resolved_lately(alert):
            await self._recorder.record(
                w, Outcome.SKIPPED, Reason.TOO_YOUNG,
                detail="resolved before it was decided: nothing to remediate",
            )  # fmt: skip
            return DECIDED
        # A startsAt ahead of our clock (a skewed or forged sender) counts from arrival:
        # never hold an alert longer than `for` after we received it.
        started = min(alert.starts_at.timestamp(), alert.received_at.timestamp())
        if now - started < rule.for_:
            if self._held.full:
                await self._recorder.record(
                    w, Outcome.SKIPPED, Reason.HELD_FULL,
                    detail=f"{len(self._held)} alerts already wait for their `for` "
                    "(intake.max_held): not held; decided when it is sent again",
                )  # fmt: skip
                return DECIDED
            await self._state.set_occurrence(w.key, HELD, now)
            self._recorder.durable(w.owner, self._held.hold(w, started + rule.for_))
            self._metrics.held.set(len(self._held))
            return HELD
        return await self._attempt(w, None)

    async def step(self, w: Work, rem: Remediation) -> None:
        """A remediation's next attempt: the same guards but `duplicate` and `for`."""
        skip = await self._transient(w)
        if skip is not None:
            if rem.last_skip != skip[0]:
                rem.last_skip = skip[0]
                await self._recorder.record(
                    w, Outcome.SKIPPED, skip[0], detail=skip[1], target=rem.target
                )
            self._loop.wait(rem, w.now + TRANSIENT_RECHECK, skip[1])
            return
        await self._state.set_occurrence(w.key, DECIDING, w.now)
        await self._attempt(w, rem)

    async def _transient(self, w: Work) -> tuple[Reason, str] | None:
        """paused · blackout · silenced."""
        pause = self._state.pause_of(w.rule.name, w.now)
        if pause is not None:
            what = "all actions are" if self._state.paused else f"rule {w.rule.name} is"
            until = "" if pause.until is None else f" until {iso_ts(pause.until)}"
            return Reason.PAUSED, (
                f"{what} paused by {pause.by or 'unknown'}{until}: "
                f"{pause.reason or 'no reason given'}"
            )
        settings = self._settings()
        if settings.blackouts:
            name = guards.blackout(
                settings.blackouts, w.rule, w.alert, dt.datetime.fromtimestamp(w.now, dt.UTC)
            )
            if name is not None:
                return Reason.BLACKOUT, f"blackout window {name!r} is active"
        if self._silences is not None:
            return await self._silences.check(w.alert)
        return None

    async def _attempt(self, w: Work, rem: Remediation | None) -> Verdict:
        """params · limits · dry-run · act, for step `w.step`."""
        rule, settings = w.rule, self._settings()
        spec = rule.steps[w.step].action
        prepared = prepare(spec, rule, w.alert, settings)
        if not isinstance(prepared, Prepared):
            reason, detail = prepared.reason, prepared.detail
            decision_id = await self._recorder.record(
                w, Outcome.SKIPPED, reason, detail=detail, action=spec.type, durable=rem is not None
            )
            if rem is not None:  # the ladder cannot go on: a human must
                self._loop.give_up(
                    w, rem, decision_id=decision_id, why=detail, outcome=f"skipped/{reason}"
                )
            return DECIDED
        p = prepared
        dry = settings.dry_run or rule.dry_run
        verdict = await self._state.reserve(
            rule=rule, target=p.target, budgets=settings.budgets, now=w.now, dry_run=dry
        )
        if verdict.reason is not None:
            return await self._refused(w, rem, p, verdict)
        if rule.approval is not None:
            # Every guard passed and the target is reserved: a human decides now.
            decision_id = await self._recorder.record(
                w, Outcome.AWAITING_APPROVAL, Reason.NONE,
                detail=f"waiting for one of {', '.join(rule.approval.approvers)} to approve "
                f"within {rule.approval.timeout:.0f}s" + (" (dry run)" if dry else ""),
                target=p.target, action=p.action.type, params=p.values,
                attempt=verdict.attempt, durable=True, final=False,
            )  # fmt: skip
            await self._loop.awaiting(w, p, decision_id=decision_id, rem=rem, dry=dry)
            return DECIDED
        if dry:
            if rem is not None:
                self._loop.end(rem)  # a dry run is not verified: the remediation ends here
            shadow = rule.dry_run and not settings.dry_run
            if p.action.local:
                await self._executor.dry_run(w, p, attempt=verdict.attempt, shadow=shadow)
                return DECIDED
            self._spawn(self._dry_run(w, p, verdict.attempt, shadow), f"dry-run:{p.target}")
            return PENDING
        try:
            # Written before the action runs: if the process dies now, the row already
            # says so and the occurrence is never acted on again after a restart.
            decision_id = await self._recorder.record(
                w, Outcome.FAILED, Reason.INTERRUPTED,
                detail="never started: the daemon stopped while the action waited for a slot",
                target=p.target, action=p.action.type, params=p.values,
                attempt=verdict.attempt, durable=True, final=False,
            )  # fmt: skip
            rem = await self._loop.acting(w, p, decision_id=decision_id, rem=rem)
        except BaseException:
            await self._state.release(p.target)  # reserved above; nothing will run
            raise
        self._metrics.inflight_actions.inc()
        self._spawn(self._loop.run(rem, w, p), f"action:{p.target}")
        return DECIDED

    async def approved(self, w: Work, rem: Remediation, said: str) -> str:
        """A human approved the attempt awaiting in `rem`: the guards again, then act.

        Returns what happened, for the approver. The approval row becomes the attempt's
        row: its outcome, or why it did not run after all.
        """
        rule, settings, decision_id = w.rule, self._settings(), rem.decision_id
        refusal = await self._transient(w)
        if refusal is None and self._loop.resolved_lately(w.alert):
            refusal = Reason.RESOLVED, "the alert resolved meanwhile"
        prepared = prepare(rule.steps[w.step].action, rule, w.alert, settings)
        if refusal is None and not isinstance(prepared, Prepared):
            refusal = prepared.reason, prepared.detail
        if refusal is None and not rem.dry:
            over = self._state.over_budget(settings.budgets, w.now)
            if over is not None:
                refusal = Reason.BUDGET_EXHAUSTED, over
        if refusal is not None or not isinstance(prepared, Prepared):
            reason, detail = refusal or (Reason.TEMPLATE_ERROR, "cannot render the action")
            if not rem.dry:
                await self._state.release(rem.target)
            await self._recorder.update(
                w, decision_id, Outcome.SKIPPED, reason,
                detail=f"{said}, but not run: {detail}", target=rem.target,
            )  # fmt: skip
            self._loop.end(rem)
            return f"not run: {detail}"
        p = prepared
        if rem.dry:
            ctx = self._executor.context(rule, w.alert, decision_id=decision_id)
            result, failure = await self._executor.call(p.action, p.values, ctx, dry=True)
            detail = (
                result.detail
                if result is not None
                else "dry run failed: " + (failure.detail if failure is not None else "no result")
            )
            await self._recorder.update(
                w, decision_id, Outcome.DRY_RUN, Reason.SHADOW if rule.dry_run else Reason.NONE,
                detail=f"{said}; {detail}", target=p.target,
                result=result.data if result is not None else None,
            )  # fmt: skip
            self._loop.end(rem)
            return f"dry run: {detail}"
        await self._recorder.audit.update(
            decision_id, outcome=Outcome.FAILED, reason=Reason.INTERRUPTED,
            detail=f"{said}; never started: the daemon stopped while the action waited for "
            "a slot",
        )  # fmt: skip
        await self._loop.acting(w, p, decision_id=decision_id, rem=rem)
        self._metrics.inflight_actions.inc()
        self._spawn(self._loop.run(rem, w, p), f"action:{p.target}")
        return f"{p.action.type} {p.target} is running"

    async def _refused(
        self, w: Work, rem: Remediation | None, p: Prepared, verdict: guards.Verdict
    ) -> Verdict:
        reason = verdict.reason
        assert reason is not None  # only refusals come here
        waits = reason in WAITS and verdict.retry_at is not None
        if rem is not None and waits:
            assert verdict.retry_at is not None
            self._loop.wait(rem, verdict.retry_at, verdict.detail)  # no row: not decided yet
            return DECIDED
        gives_up = not waits
        decision_id = await self._recorder.record(
            w, Outcome.SKIPPED, reason, detail=verdict.detail, target=p.target,
            action=p.action.type, params=p.values, durable=gives_up or rem is not None,
        )  # fmt: skip
        if gives_up:
            # Attempts ran out, the circuit is open, a budget is spent: this occurrence
            # gets no attempt now, so a human is called.
            self._loop.give_up(
                w, rem, decision_id=decision_id, why=verdict.detail,
                outcome=f"skipped/{reason}", target=p.target,
            )  # fmt: skip
        elif w.rule.limits.retry_while_firing and verdict.retry_at is not None:
            self._loop.retry_later(w, decision_id, verdict.retry_at, verdict.detail)
        return DECIDED

    async def _dry_run(self, w: Work, p: Prepared, attempt: int, shadow: bool) -> None:
        try:
            await self._executor.dry_run(w, p, attempt=attempt, shadow=shadow)
        finally:
            self._release(w.owner)


def _should_decide(prev: str | None, skip: tuple[Reason, str] | None, *, aged: bool) -> bool:
    """The duplicate guard: is this delivery a new decision, or one already made?"""
    if prev is None:
        return True
    if prev == HELD:
        return aged
    if prev == DECIDING:
        return False
    outcome, _, reason = prev.partition("/")
    if outcome == Outcome.SKIPPED and reason in TRANSIENT:
        return skip is None or skip[0] != reason
    return False
