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
again. Reading the occurrence and claiming it is one atomic call (`State.claim`: no
await in between in memory, one Lua script in Redis), so two deliveries racing through
the workers — or through two replicas — cannot both act. The claim's fencing token then
goes with every write of the decision (`Work.token`).

A remediation's next attempt (a ladder's next step, a retry) runs the same chain from
`paused` on, without `duplicate` and `for` (it owns its occurrence and is old enough): a
transient refusal makes it wait and look again, a cooldown or lock makes it wait for
that, and any other refusal ends it with an escalation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final, Literal

import structlog

from remediator import errors
from remediator.backends.state import GLOBAL, Claim, Mark, State
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

TRANSIENT = guards.TRANSIENT
NEVER_STARTED: Final = "never started: the daemon stopped while the action waited for a slot"
"""What an action's row says until the action holds a slot (executing.py then says more)."""
INTERRUPTED: Final = f"{Outcome.FAILED}/{Reason.INTERRUPTED}"
WAITS: Final = frozenset({Reason.COOLDOWN, Reason.LOCKED})
"""Refusals that lift by themselves: a remediation (or `retry_while_firing`) waits."""
TRANSIENT_RECHECK = 60.0
"""Seconds after which a remediation held back by a pause, blackout or silence looks again."""
HELD: Final = "held"  # the occurrence status guards.HELD, as a verdict
DECIDED: Final = "decided"
DUPLICATE: Final = "duplicate"
PENDING: Final = "pending"
"""A dry run doing I/O in its own task: it records the decision (and releases what
waits for it) when done, so a slow API never holds an engine worker."""
Verdict = Literal["decided", "held", "duplicate", "pending"]
log = structlog.get_logger("remediator.engine")


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

    async def decide(self, w: Work, *, aged: bool, held_token: int = 0) -> Verdict:
        """Decide one rule for one firing alert; `aged`: a held alert has come of age
        (held under `held_token`)."""
        skip = await self._transient(w)
        if self._loop.get(w) is not None:
            return DUPLICATE  # a remediation owns this occurrence: it decides what is next
        claim = await self._state.claim(
            w.key, skip=None if skip is None else skip[0], aged=aged, now=w.now,
            token=held_token,
        )  # fmt: skip
        if claim is None:
            return DUPLICATE
        w = w.with_token(claim.token, claim.row)
        try:
            return await self._decide(w, skip, aged=aged, claim=claim)
        except errors.Superseded as exc:
            # Another replica took the occurrence over while this one stalled: it decides.
            log.warning("decision_superseded", rule=w.rule.name, error=str(exc))
            self._loop.let_go(w)
            return DUPLICATE
        except Exception:
            # A bug or a failed write: forget the claim so a later delivery decides afresh.
            # (No remediation owned this occurrence when it began: one it started goes.)
            self._loop.let_go(w)
            try:
                await self._state.forget_occurrence(w.key, token=w.token)
            except errors.BackendUnavailable as exc:
                # Forgotten once it answers, before the alert is handed out again; the
                # error that failed the decision is the one worth raising.
                log.warning("claim_forget_deferred", rule=w.rule.name, error=str(exc))
            raise

    async def _decide(
        self, w: Work, skip: tuple[Reason, str] | None, *, aged: bool, claim: Claim
    ) -> Verdict:
        alert, rule, now = w.alert, w.rule, w.now
        if skip is not None:
            await self._recorder.record(w, Outcome.SKIPPED, skip[0], detail=skip[1])
            return DECIDED
        if self._loop.resolved_lately(alert) or (
            aged and await self._state.resolved_at(alert.occurrence) is not None
        ):
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
            await self._state.set_occurrence(w.key, HELD, now, token=w.token)
            self._recorder.durable(w.owner, self._held.hold(w, started + rule.for_))
            self._metrics.held.set(len(self._held))
            return HELD
        return await self._attempt(w, None, taken_over=claim)

    async def step(self, w: Work, rem: Remediation) -> None:
        """A remediation's next attempt: the same guards but `duplicate` and `for`."""
        skip = await self._transient(w)
        if skip is not None:
            if rem.last_skip != skip[0]:
                rem.last_skip = skip[0]
                await self._recorder.record(
                    w, Outcome.SKIPPED, skip[0], detail=skip[1], target=rem.target
                )
            await self._loop.wait(rem, w.now + TRANSIENT_RECHECK, skip[1])
            return
        await self._state.set_occurrence(w.key, guards.DECIDING, w.now, token=w.token)
        await self._attempt(w, rem)

    def held_back(self, w: Work) -> tuple[Reason, str] | None:
        """paused · blackout: the transient guards that need no I/O."""
        pause = self._state.pause_of(w.rule.name, w.now)
        if pause is not None:
            everything = pause is self._state.pauses().get(GLOBAL)
            what = "all actions are" if everything else f"rule {w.rule.name} is"
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
        return None

    async def _transient(self, w: Work) -> tuple[Reason, str] | None:
        """paused · blackout · silenced."""
        skip = self.held_back(w)
        if skip is None and self._silences is not None:
            return await self._silences.check(w.alert)
        return skip

    async def _attempt(
        self, w: Work, rem: Remediation | None, *, taken_over: Claim | None = None
    ) -> Verdict:
        """params · limits · dry-run · act, for step `w.step`. `taken_over`: the claim
        this replica took from a dead one, with what that one had reserved and written
        for this attempt (inherited, not taken or written twice)."""
        rule, settings = w.rule, self._settings()
        spec = rule.steps[w.step].action
        prepared = prepare(spec, rule, w.alert, settings)
        if not isinstance(prepared, Prepared):
            reason, detail = prepared.reason, prepared.detail
            decision_id = await self._recorder.record(
                w, Outcome.SKIPPED, reason, detail=detail, action=spec.type, durable=rem is not None
            )
            if rem is not None:  # the ladder cannot go on: a human must
                await self._loop.give_up(
                    w, rem, decision_id=decision_id, why=detail, outcome=f"skipped/{reason}"
                )
            return DECIDED
        p = prepared
        if rem is not None and (rem.resolved or self._loop.resolved_lately(w.alert)):
            # It resolved while this step's guards were checked: nothing to do.
            await self._recorder.record(
                w, Outcome.SKIPPED, Reason.RESOLVED, target=p.target, action=p.action.type,
                detail=f"step {w.step + 1} not tried: the alert resolved",
            )  # fmt: skip
            self._loop.finish(rem)
            return DECIDED
        dry = settings.dry_run or rule.dry_run
        shadow = rule.dry_run and not settings.dry_run
        verdict = None
        if w.row and taken_over is not None and taken_over.target not in ("", p.target):
            # The row taken over was written for another target (the rule changed since):
            # it says so, and this attempt gets its own.
            await self._recorder.audit.update(
                w.row, outcome=Outcome.SKIPPED, reason=Reason.NOT_ALLOWED,
                detail=f"not run: the rule names {p.target} now; decided again on a new row",
            )  # fmt: skip
            w = w.with_token(w.token)
        if taken_over is not None and taken_over.lock:
            verdict = await self._inherit(w, p, taken_over, dry=dry)
        if verdict is None:
            verdict = await self._state.reserve(
                rule=rule, target=p.target, budgets=settings.budgets, now=w.now, dry_run=dry,
                shadow=shadow, occurrence=w.key, claim=w.token,
            )  # fmt: skip
        if verdict.reason is not None:
            return await self._refused(w, rem, p, verdict)
        p = p.with_token(verdict.token)
        if rule.approval is not None:
            # Every guard passed and the target is reserved: a human decides now.
            await self._ask(w, rem, p, attempt=verdict.attempt, dry=dry)
            return DECIDED
        if dry:
            if rem is not None:
                self._loop.finish(rem)  # a dry run is not verified: the remediation ends here
            if p.action.local:
                await self._executor.dry_run(w, p, attempt=verdict.attempt, shadow=shadow)
                return DECIDED
            self._spawn(self._dry_run(w, p, verdict.attempt, shadow), f"dry-run:{p.target}")
            return PENDING
        try:
            # Written before the action runs: if the process dies now, the row already
            # says so and the occurrence is never acted on again after a restart. (A row
            # a dead replica wrote for it and never acted on is this one: `Work.row`.)
            decision_id = await self._recorder.record(
                w, Outcome.FAILED, Reason.INTERRUPTED, detail=NEVER_STARTED,
                target=p.target, action=p.action.type, params=p.values,
                attempt=verdict.attempt, durable=True, final=False, act="=",
            )  # fmt: skip
            rem = await self._loop.acting(w, p, decision_id=decision_id, rem=rem)
        except BaseException:
            await self._state.release(p.target, p.token)  # reserved above; nothing will run
            raise
        self._loop.start(rem, w, p)
        return DECIDED

    async def _ask(
        self, w: Work, rem: Remediation | None, p: Prepared, *, attempt: int, dry: bool
    ) -> None:
        """Ask the rule's approvers. The row is marked on the occurrence: a replica taking
        this over before the request's record is kept asks again, on that row."""
        rule = w.rule
        assert rule.approval is not None
        detail = (
            f"waiting for one of {', '.join(rule.approval.approvers)} to approve "
            f"within {rule.approval.timeout:.0f}s" + (" (dry run)" if dry else "")
        )
        decision_id = await self._recorder.record(
            w, Outcome.AWAITING_APPROVAL, Reason.NONE, detail=detail, target=p.target,
            action=p.action.type, params=p.values, attempt=attempt, durable=True,
            final=False, act="=",
        )  # fmt: skip
        # What the family sees now, for the approvers (and the row).
        ctx = self._executor.context(rule, w.alert, decision_id=decision_id, target=p.target)
        seen = await self._executor.evidence(rule, p, ctx)
        if seen:
            self._recorder.audit.annotate(decision_id, evidence=seen)
        await self._loop.awaiting(w, p, decision_id=decision_id, rem=rem, dry=dry, evidence=seen)

    async def _inherit(
        self, w: Work, p: Prepared, taken_over: Claim, *, dry: bool
    ) -> guards.Verdict | None:
        """The reservation of a claim taken over from a dead replica, as this attempt's
        (None: this attempt reserves its own)."""
        if dry or taken_over.target != p.target:
            # Not the attempt it reserved (the rule names another target now, or it is a
            # dry run): that lock goes, and this attempt reserves its own.
            await self._state.release(taken_over.target, taken_over.lock)
            return None
        # The dead replica reserved this very attempt (its cooldown, counts and lock):
        # its lock is this replica's now, unless another holder took it since.
        token = await self._take_over(w, p.target, taken_over.lock, "reservation_inherited")
        return guards.Verdict(None, attempt=1, token=token) if token else None

    async def _take_over(self, w: Work, target: str, lock: int, event: str, **also: Any) -> int:
        """The lock a dead replica (or a failed decision) reserved `target` with, as this
        claim's: its new token, or 0 if another holder has it now."""
        token = await self._state.take_lock(target, lock, occurrence=w.key, claim=w.token)
        if token:
            log.warning(event, rule=w.rule.name, target=target,
                        fingerprint=w.alert.fingerprint, **also)  # fmt: skip
        return token

    async def act_again(self, w: Work, rem: Remediation) -> bool:
        """A remediation taken over from a dead replica whose step's action had not
        started (its row written, its target reserved, waiting for a slot): run it now,
        on that row and that reservation (its lock, inherited). False if it cannot be:
        a pause, blackout or silence holds it back, the alert stopped firing, the
        reservation is older than a takeover takes (`claim_idle` + `lock_ttl`: not the
        same attempt any more), another holder has the target's lock, the rule now names
        another target, or it would be a dry run — then it is decided again like any next
        attempt (which records the skip, or reserves afresh)."""
        rule, settings = w.rule, self._settings()
        if settings.dry_run or rule.dry_run or not rem.lock_token or not rem.decision_id:
            return False
        prepared = prepare(rule.steps[w.step].action, rule, w.alert, settings)
        redis = settings.backend.redis
        stale = w.now - rem.started > redis.claim_idle + redis.lock_ttl
        if (
            not isinstance(prepared, Prepared)
            or prepared.target != rem.target
            or stale
            or await self._transient(w) is not None
            or await self._loop.stopped_firing(rem) is not None
        ):
            # Not this reservation's attempt: its lock (if it still stands) goes.
            await self._state.release(rem.target, rem.lock_token)
            return False
        token = await self._take_over(
            w, rem.target, rem.lock_token, "action_taken_over", decision_id=rem.decision_id
        )
        if not token:
            return False
        p = prepared.with_token(token)
        try:
            await self._loop.acting(w, p, decision_id=rem.decision_id, rem=rem)
        except BaseException:
            await self._state.release(p.target, p.token)
            raise
        self._loop.start(rem, w, p)
        return True

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
        if refusal is None and isinstance(prepared, Prepared) and prepared.target != rem.target:
            # A reload changed the step: the approvers saw (and the lock is on) another one.
            refusal = (
                Reason.NOT_ALLOWED,
                (
                    f"the rule now names {prepared.target}, not the {rem.target} that was "
                    "asked for: what was approved is not what would run"
                ),
            )
        if refusal is None and not rem.dry:
            over = await self._state.over_budget(settings.budgets, w.now)
            if over is not None:
                refusal = Reason.BUDGET_EXHAUSTED, over
        if refusal is not None or not isinstance(prepared, Prepared):
            reason, detail = refusal or (Reason.TEMPLATE_ERROR, "cannot render the action")
            if not rem.dry:
                await self._state.release(rem.target, rem.lock_token)
            await self._recorder.update(
                w, decision_id, Outcome.SKIPPED, reason,
                detail=f"{said}, but not run: {detail}", target=rem.target,
            )  # fmt: skip
            self._loop.finish(rem)
            return f"not run: {detail}"
        p = prepared.with_token(rem.lock_token)
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
            self._loop.finish(rem)
            return f"dry run: {detail}"
        try:
            await self._recorder.audit.update(
                decision_id, outcome=Outcome.FAILED, reason=Reason.INTERRUPTED,
                detail=f"{said}; {NEVER_STARTED}", mark=Mark(w.key, INTERRUPTED, w.token, "="),
            )  # fmt: skip
            await self._loop.acting(w, p, decision_id=decision_id, rem=rem)
        except BaseException:
            await self._state.release(p.target, p.token)  # reserved while it awaited
            raise
        self._loop.start(rem, w, p)
        return f"{p.target} is running"  # the target names its action

    async def _refused(
        self, w: Work, rem: Remediation | None, p: Prepared, verdict: guards.Verdict
    ) -> Verdict:
        reason = verdict.reason
        assert reason is not None  # only refusals come here
        waits = reason in WAITS and verdict.retry_at is not None
        if rem is not None and waits:
            assert verdict.retry_at is not None
            await self._loop.wait(rem, verdict.retry_at, verdict.detail)  # not decided yet
            return DECIDED
        decision_id = await self._recorder.record(
            w, Outcome.SKIPPED, reason, detail=verdict.detail, target=p.target,
            action=p.action.type, params=p.values, durable=True,
        )  # fmt: skip
        if waits:
            # Another attempt on this target just happened (or runs): this occurrence gets
            # its own once the cooldown or lock lets it, if it still fires then.
            assert verdict.retry_at is not None
            await self._loop.first_later(w, decision_id, p.target, verdict.retry_at, verdict.detail)
        else:
            # Attempts ran out, the circuit is open, a budget is spent: this occurrence
            # gets no attempt now, so a human is called.
            await self._loop.give_up(
                w, rem, decision_id=decision_id, why=verdict.detail,
                outcome=f"skipped/{reason}", target=p.target,
            )  # fmt: skip
        return DECIDED

    async def _dry_run(self, w: Work, p: Prepared, attempt: int, shadow: bool) -> None:
        try:
            await self._executor.dry_run(w, p, attempt=attempt, shadow=shadow)
        finally:
            self._release(w.owner)
