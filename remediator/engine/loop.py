"""The remediation loop: act, verify, step up or retry, and call a human when it gives up.

One remediation per rule and occurrence (fingerprint, startsAt), from its first action
(or its first decision refused by a cooldown) until the alert resolves or a human has
been called. Its record is durable (the state backend), so a restart resumes it at the
right step and never repeats one.

    first decision ──(guards pass)──► ACTING(step k) ── action done ──┐
         │  │                            ▲                            │
         │  │ approval: AWAITING ────────┤ approved: guards again     ▼
         │  │                            │               executed: VERIFYING(step k)
         │ refused: attempts out,     DECIDING ◄──┐        │ resolved: effective ── done
         │ circuit open, budget spent    ▲         │        │ resolve_within passes:
         │                               │         │        │   ineffective
         │              WAITING(step k) ─┘ due     │        │ failed / refused on read
         │                ▲   │ cooldown, lock,    │        ▼
         │                │   │ pause, blackout,   └── next attempt? step k+1 of the
         │     resolved:  └───┘ silence               ladder, or the same step again
         │   skipped/resolved (looked at again)       (`retry_while_firing`)
         │      ── done                                     │ none left
         ▼                                                  ▼
     ESCALATING ◄─────────── refused for good (attempts, circuit, budget, a bad step)
         │ the rule's `escalate` runs once, with what was tried and the decision's link
         │ (a send that fails for now is sent again: ESCALATION_RETRIES, durably)
         ▼
        done

DECIDING is the moment a next attempt's guards are checked (Alertmanager asked whether
the alert still fires, the silences): a resolve arriving then is remembered and seen
before anything acts. Every attempt is its own decision (audit row, `step` column);
verification and escalation are written onto the row they concern. Each transition runs
in a task guarded so that an unexpected error ends the remediation with an escalation,
never silently. A rule changed by a reload takes effect at the next transition (a rule
gone, or with fewer steps, ends its remediations with a decision saying so).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from remediator import errors
from remediator.actions import evidence as evidence_mod
from remediator.backends.state import State
from remediator.engine.approvals import Approvals
from remediator.engine.clock import Clock, Timer
from remediator.engine.executing import Executor, Prepared, prepare
from remediator.engine.recording import Recorder, Work, occurrence_key
from remediator.engine.silences import Silences
from remediator.matching import matchers
from remediator.metrics import Metrics
from remediator.models.alert import Alert, iso_ts
from remediator.models.decision import Escalation, Outcome, Reason, decision_url
from remediator.models.rule import ActionSpec, Rule, Step
from remediator.settings import Settings

if TYPE_CHECKING:
    from remediator.engine.deciding import Decider

log = structlog.get_logger("remediator.engine")
RESOLVED_MEMORY = 10_000
"""Occurrences remembered as resolved, for decisions and actions still under way."""


class Phase(enum.StrEnum):
    ACTING = "acting"
    """A step's action runs (its row says `interrupted` until it reports)."""
    VERIFYING = "verifying"
    """Waiting until `due` for the alert to resolve."""
    WAITING = "waiting"
    """The next attempt is due at `due` (a cooldown, a lock, a pause or silence)."""
    DECIDING = "deciding"
    """The next attempt's guards are being checked."""
    AWAITING = "awaiting"
    """The step passed the guards and waits until `due` for a human's approval; its
    target's lock is held meanwhile."""
    ESCALATING = "escalating"
    """Nothing more will be tried: the escalation is being sent; after a send that failed
    and will be tried again (`escalation_attempts` made so far), at `due`."""
    PAGED = "paged"
    """The escalation opened something that closes with the alert (a PagerDuty incident):
    its `resolve` is sent when the alert resolves, or the record lapses at `due`."""


class AlertsApi(Protocol):
    async def lists_alert(self, alertname: str, fingerprint: str, starts_at: float) -> bool: ...


@dataclasses.dataclass(slots=True, eq=False)
class Remediation:
    rule: Rule
    alert: Alert
    request_id: str
    step: int = 0
    """Index of the step acting, verifying, or due next."""
    phase: Phase = Phase.ACTING
    due: float = 0.0
    target: str = ""
    decision_id: int = 0
    """The latest decision of this remediation: verification and escalation go on it."""
    started: float = 0.0
    """When the current step's action was recorded (restores an interrupted one)."""
    verify_for: float = 0.0
    """Seconds the current step was given to resolve the alert."""
    changed: bool = True
    """The step's action changed something; a no-op's verification does not count for the
    circuit breaker (the fix was not tried), though a still-firing alert moves on."""
    resolved: bool = False
    """A resolve arrived while the step acted or its next attempt was being decided."""
    tried: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    last_skip: str = ""
    """The transient reason last recorded while waiting: a recheck adds no second row."""
    why: str = ""
    silence: dict[str, Any] | None = None
    """The silence held for it (`silence_while_remediating`), so a restart expires it."""
    dry: bool = False
    """AWAITING: approved, it would be a dry run."""
    approval_message: str = ""
    """AWAITING: the Slack message asking for it (`channel:ts`), updated once decided."""
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the action saw before it acted, shown to approvers and in the escalation."""
    token: int = 0
    """The fencing token it owns its occurrence under (a replica that adopts it gets a
    new one: the old owner's writes are refused from then on)."""
    lock_token: int = 0
    """AWAITING, ACTING: the token of the target lock its attempt holds (while a human
    decides, or until the action ends)."""
    page: dict[str, Any] | None = None
    """PAGED: the escalation's rendered params, for its `resolve`."""
    escalation_attempts: int = 0
    """ESCALATING: sends of the escalation made so far (each failed); the next is at `due`."""
    escalation_error: str = ""
    """ESCALATING: why the last send failed, for what the decision says once it is sent."""
    timer: Timer | None = None

    @property
    def key(self) -> str:
        return occurrence_key(self.rule.name, self.alert.fingerprint, self.alert.starts_iso)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "rule": self.rule.name, "alert": self.alert.to_json(),
            "request_id": self.request_id, "step": self.step, "phase": str(self.phase),
            "due": self.due, "target": self.target, "decision_id": self.decision_id,
            "started": self.started, "verify_for": self.verify_for, "changed": self.changed,
            "resolved": self.resolved, "tried": self.tried, "last_skip": self.last_skip,
            "why": self.why, "silence": self.silence, "dry": self.dry,
            "approval_message": self.approval_message, "evidence": self.evidence,
            "token": self.token, "lock_token": self.lock_token, "page": self.page,
            "escalation_attempts": self.escalation_attempts,
            "escalation_error": self.escalation_error,
        }  # fmt: skip

    @classmethod
    def from_json(cls, rule: Rule, r: dict[str, Any]) -> Remediation:
        return cls(
            rule, Alert.from_json(r["alert"]), r["request_id"], step=r["step"],
            phase=Phase(r["phase"]), due=r["due"], target=r["target"],
            decision_id=r["decision_id"], started=r["started"],
            verify_for=r.get("verify_for", 0.0), changed=r["changed"],
            resolved=r.get("resolved", False), tried=r["tried"], last_skip=r["last_skip"],
            why=r["why"], silence=r["silence"], dry=r.get("dry", False),
            approval_message=r.get("approval_message", ""), evidence=r.get("evidence") or {},
            token=r.get("token", 0), lock_token=r.get("lock_token", 0), page=r.get("page"),
            escalation_attempts=r.get("escalation_attempts", 0),
            escalation_error=r.get("escalation_error", ""),
        )  # fmt: skip

    def view(self) -> dict[str, Any]:
        """What /api/v1/rules shows of it."""
        return {
            "fingerprint": self.alert.fingerprint, "starts_at": self.alert.starts_iso,
            "step": self.step + 1, "steps": len(self.rule.steps), "phase": str(self.phase),
            "due": iso_ts(self.due) if self.phase in _TIMED or self._retrying else None,
            "target": self.target, "decision_id": self.decision_id, "tried": self.tried,
        }  # fmt: skip

    @property
    def _retrying(self) -> bool:
        """ESCALATING after a failed send: the next one is due at `due`."""
        return self.phase is Phase.ESCALATING and self.escalation_attempts > 0

    def note(self, *, step: int, action: str, target: str, decision_id: int, outcome: str) -> None:
        """Add an attempt to what the escalation will say was tried."""
        self.tried.append(
            {"step": step, "action": action, "target": target, "decision_id": decision_id,
             "outcome": outcome, "verification": ""}
        )  # fmt: skip

    def verified(self, text: str) -> None:
        if self.tried:
            self.tried[-1]["verification"] = text


_TIMED = frozenset({Phase.VERIFYING, Phase.WAITING, Phase.AWAITING})


def verify_for(rule: Rule, step: int) -> float | None:
    """Seconds a step has to resolve the alert (None: not verified). With
    `retry_while_firing` the next attempt is due once the cooldown ends, so no longer."""
    resolve_within = rule.steps[step].resolve_within
    if resolve_within is not None and rule.limits.retry_while_firing:
        return min(resolve_within, max(rule.limits.cooldown, 1.0))
    return resolve_within


class Loop:
    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        rules: Callable[[], dict[str, Rule]],
        state: State,
        recorder: Recorder,
        executor: Executor,
        metrics: Metrics,
        clock: Clock,
        silences: Silences | None,
        alerts: AlertsApi | None,
        approvals: Approvals,
        spawn: Callable[[Awaitable[None], str], None],
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._state = state
        self._recorder = recorder
        self._executor = executor
        self._metrics = metrics
        self._clock = clock
        self._silences = silences
        self._alerts = alerts
        self.approvals = approvals
        self._spawn = spawn
        self.decider: Decider
        """Set by the engine once both exist: the loop asks it to decide each next attempt."""
        self._active: dict[str, Remediation] = {}
        self._by_occurrence: dict[str, set[str]] = {}
        self._resolved: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Occurrences seen resolved (bounded): an action that finishes, or a decision
        made, after its alert resolved must not act or wait for a resolution."""
        self._closing = False
        self._loaded: list[Remediation] = []

    # -- what the decider calls ----------------------------------------------------

    def resolved_lately(self, alert: Alert) -> bool:
        return alert.occurrence in self._resolved

    def get(self, w: Work) -> Remediation | None:
        return self._active.get(w.key)

    async def acting(
        self, w: Work, p: Prepared, *, decision_id: int, rem: Remediation | None
    ) -> Remediation:
        """A step's row is written: remember (durably) that its action is about to run."""
        if rem is None:
            rem = Remediation(w.rule, w.alert, w.request_id, token=w.token)
        rem.phase, rem.step, rem.target = Phase.ACTING, w.step, p.target
        rem.decision_id, rem.started, rem.last_skip = decision_id, w.now, ""
        rem.lock_token = p.token  # a replica taking it over before it starts inherits it
        self._track(rem)
        await self._save(rem)  # failing, the decision lets go of it (`let_go`)
        return rem

    def let_go(self, w: Work) -> None:
        """A first decision failed: the remediation it may have begun (acting, awaiting,
        waiting, escalating) goes out of memory, or the decision made again would take
        it for a duplicate. Its record, if it was kept, goes with the claim
        (`State.forget_occurrence`), which keeps the reservation for that retry."""
        rem = self._active.get(w.key)
        if rem is not None:
            self._untrack(rem)

    def start(self, rem: Remediation, w: Work, p: Prepared) -> None:
        """Run the step's action in its own task (the decision is recorded)."""
        self._metrics.inflight_actions.inc()
        self._spawn(self._safely(rem, "running the action", lambda: self._run(rem, w, p)),
                    f"action:{p.target}")  # fmt: skip

    async def wait(self, rem: Remediation, due: float, why: str, *, event: str = "") -> None:
        """The next attempt is refused for now: try again at `due`. With `event`, a record
        the embedded database cannot write is logged as it and the wait goes on in memory
        (`_save_or_go_on`)."""
        rem.phase, rem.due = Phase.WAITING, due
        self._track(rem)
        self._arm(rem, self._attempt_due)
        log.info(
            "remediation_waiting", rule=rem.rule.name, fingerprint=rem.alert.fingerprint,
            step=rem.step + 1, until=iso_ts(due), why=why,
        )  # fmt: skip
        if event:
            await self._save_or_go_on(rem, event)
        else:
            await self._save(rem)

    async def _save_or_go_on(self, rem: Remediation, event: str, *, shared: bool = True) -> None:
        """Save `rem`'s record; one the embedded database cannot write (a full disk) is
        logged as `event` and the remediation goes on in memory, its timer armed — only a
        crash before it is due loses it, where failing now would leave it undone (nobody
        called, an attempt never made). Superseded always raises (another replica owns
        it); BackendUnavailable does while `shared` (the decision fails and the shared
        journal hands the alert out again)."""
        try:
            await self._save(rem)
        except errors.Superseded:
            raise
        except Exception as exc:
            if shared and isinstance(exc, errors.BackendUnavailable):
                raise
            log.exception(event, rule=rem.rule.name, decision_id=rem.decision_id)

    async def first_later(
        self, w: Work, decision_id: int, target: str, due: float, why: str
    ) -> None:
        """A first decision refused by a cooldown or lock: its attempt comes when that ends."""
        rem = Remediation(w.rule, w.alert, w.request_id, step=w.step, decision_id=decision_id,
                          target=target, token=w.token)  # fmt: skip
        # Its row is durable: failing the decision on a record the embedded database cannot
        # write would make every delivery of it a duplicate (dedup is rebuilt from the
        # audit), and it would never get its attempt.
        await self.wait(rem, due, why, event="remediation_not_saved")

    async def give_up(
        self, w: Work, rem: Remediation | None, *, decision_id: int, why: str,
        outcome: str = "", target: str = "",
    ) -> None:  # fmt: skip
        """Nothing more will be tried for this occurrence: escalate, once.

        The intent is durable when this returns (a crash before the message is sent sends
        it on restart) unless its write failed (a full disk: logged); either way the
        message goes out in a task. `outcome` and `target` describe
        the refused attempt that ends it, if that is what does (decision `decision_id`).
        """
        if rem is None:
            rem = Remediation(w.rule, w.alert, w.request_id, step=w.step, token=w.token)
        rem.decision_id = decision_id or rem.decision_id
        if outcome:
            rem.target = target or rem.target
            rem.note(step=w.step + 1, action=w.rule.steps[w.step].action.type,
                     target=target, decision_id=decision_id, outcome=outcome)  # fmt: skip
        if rem.timer is not None:
            rem.timer.cancel()
        rem.phase, rem.why, rem.due = Phase.ESCALATING, why, 0.0
        rem.escalation_attempts, rem.escalation_error = 0, ""
        self._track(rem)
        await self._save_or_go_on(rem, "escalation_not_saved")  # the human is called all the same
        self._spawn(self._safely(rem, "escalating", lambda: self._escalate(rem)),
                    f"escalate:{w.rule.name}")  # fmt: skip

    def finish(self, rem: Remediation) -> None:
        """The remediation ends (resolved, a dry run, rejected, sent)."""
        self._forget(rem)

    # -- approvals -------------------------------------------------------------------

    async def awaiting(
        self, w: Work, p: Prepared, *, decision_id: int, rem: Remediation | None, dry: bool,
        evidence: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """The step passed the guards: ask a human, and wait for the answer until due."""
        assert w.rule.approval is not None  # only rules with `approval` wait
        if rem is None:
            rem = Remediation(w.rule, w.alert, w.request_id, token=w.token)
        rem.phase, rem.step, rem.target = Phase.AWAITING, w.step, p.target
        rem.decision_id, rem.dry, rem.last_skip, rem.lock_token = decision_id, dry, "", p.token
        rem.due = w.now + w.rule.approval.timeout
        rem.evidence = evidence or rem.evidence
        self._track(rem)
        self._arm(rem, self._approval_due)
        await self._save(rem)
        log.info(
            "approval_requested", rule=w.rule.name, target=p.target, decision_id=decision_id,
            until=iso_ts(rem.due), dry_run=dry,
        )  # fmt: skip
        self.approvals.requested(rem, dry=dry, saved=lambda: self._save(rem))

    def awaiting_approval(self) -> list[Remediation]:
        return [r for r in self._active.values() if r.phase is Phase.AWAITING]

    def approval(self, decision_id: int) -> Remediation | None:
        for rem in self._active.values():
            if rem.decision_id == decision_id and rem.phase is Phase.AWAITING:
                return rem
        return None

    async def decide_approval(
        self, decision_id: int, *, approve: bool, by: str, via: str, reason: str = ""
    ) -> tuple[bool, str]:
        """A human's answer: (taken, what happened). A second answer to the same request
        (a double click, Slack and the API at once) is not taken."""
        rem = self.approval(decision_id)
        if rem is None:
            return False, f"decision {decision_id} is not awaiting approval"
        rem.phase = Phase.DECIDING  # taken: no second answer gets past the check above
        if rem.timer is not None:
            rem.timer.cancel()
        answer: list[tuple[bool, str]] = []

        async def decide() -> None:
            answer.append(
                await self._answered(
                    rem, decision_id, approve=approve, by=by, via=via, reason=reason
                )
            )

        # Taken, it has no timer left: an error now (a failed write) must end it with an
        # escalation, not leave it approved and never run.
        await self._safely(rem, "deciding its approval", decide)
        return answer[0] if answer else (True, "failed: an internal error (logged)")

    async def _answered(
        self, rem: Remediation, decision_id: int, *, approve: bool, by: str, via: str, reason: str
    ) -> tuple[bool, str]:
        now = self._clock.now()
        said = f"{'approved' if approve else 'rejected'} by {by} via {via} at {iso_ts(now)}"
        if reason:
            said += f": {reason}"
        self._recorder.audit.annotate(decision_id, approval=said)
        self._metrics.approvals.labels(
            rule=rem.rule.name, result="approved" if approve else "rejected"
        ).inc()
        log.warning("approval_decided", rule=rem.rule.name, decision_id=decision_id, answer=said)
        if not approve or not await self._refresh(rem):
            await self._unreserve(rem)
            if approve:
                return True, "the rule changed meanwhile: nothing was done"
            await self._recorder.update(
                self._work(rem), decision_id, Outcome.SKIPPED, Reason.APPROVAL_REJECTED,
                detail=f"{said}; nothing was done", target=rem.target,
            )  # fmt: skip
            self.approvals.settled(rem, f"Rejected by {by}: nothing was done.")
            self.finish(rem)
            return True, "rejected"
        outcome = await self.decider.approved(self._work(rem), rem, said)
        self.approvals.settled(rem, f"Approved by {by}: {outcome}.")
        return True, outcome

    async def _approval_due(self, key: str) -> None:
        rem = self._active.get(key)
        if rem is None or rem.phase is not Phase.AWAITING:
            return
        rem.phase = Phase.DECIDING  # taken, as by an answer
        timeout = rem.rule.approval.timeout if rem.rule.approval else 0.0
        why = f"nobody approved it within {timeout:.0f}s (approval.timeout)"
        self._metrics.approvals.labels(rule=rem.rule.name, result="expired").inc()
        await self._unreserve(rem)
        await self._recorder.update(
            self._work(rem), rem.decision_id, Outcome.SKIPPED, Reason.APPROVAL_EXPIRED,
            detail=f"{why}; nothing was done", target=rem.target,
        )  # fmt: skip
        self.approvals.settled(rem, f"Expired: {why}. Nothing was done.")
        await self.give_up(
            self._work(rem), rem, decision_id=rem.decision_id, why=why,
            outcome="skipped/approval_expired", target=rem.target,
        )  # fmt: skip

    async def _unreserve(self, rem: Remediation) -> None:
        """The awaited attempt will not run: its target's lock goes."""
        if not rem.dry:
            await self._state.release(rem.target, rem.lock_token)

    # -- the action and its verification ----------------------------------------------

    async def _run(self, rem: Remediation, w: Work, p: Prepared) -> None:
        outcome, reason, detail, result, seen = await self._executor.execute(
            w, p, decision_id=rem.decision_id, still_wanted=lambda: self._unwanted(rem, w)
        )
        rem.evidence = seen or rem.evidence
        rule, now, n = rem.rule, self._clock.now(), w.step + 1
        rem.note(step=n, action=p.action.type, target=p.target, decision_id=rem.decision_id,
                 outcome=f"{outcome}/{reason}".rstrip("/"))  # fmt: skip
        if outcome is Outcome.SKIPPED and reason is Reason.RESOLVED:
            self.finish(rem)  # resolved while it waited for a slot: never started
            return
        if outcome is Outcome.SKIPPED and reason in (Reason.PAUSED, Reason.BLACKOUT):
            rem.tried.pop()  # not attempted: tried again once the pause is over
            await self.wait(rem, now + TRANSIENT_RECHECK, detail)
            return
        if outcome is Outcome.SKIPPED:
            # Refused once the target was read: nothing was done, and a half-open
            # circuit's trial did not happen.
            await self._state.end_trial(rule=rule, target=p.target)
            await self._advance(rem, f"step {n} refused: {detail}")
            return
        if outcome is Outcome.FAILED:
            await self._state.record_result(rule=rule, target=p.target, ok=False, now=now)
            await self._advance(rem, f"step {n} failed: {detail}")
            return
        rem.changed = result is None or result.changed
        if rem.resolved or self.resolved_lately(rem.alert):
            # It resolved while the action ran: nothing to wait for.
            await self._state.record_result(rule=rule, target=p.target, ok=True, now=now)
            self._verified(rem, "effective: resolved while the action ran")
            self.finish(rem)
            return
        if rule.silence_while_remediating and self._silences is not None:
            text = await self._silences.hold(
                rem.alert, rule=rule.name, decision_id=rem.decision_id,
                duration=rule.silence_while_remediating,
            )  # fmt: skip
            rem.silence = self._silences.held_record(rem.alert)
            self._recorder.audit.annotate(rem.decision_id, silence=text)
        seconds = verify_for(rule, w.step)
        if seconds is None:
            if rem.changed:
                await self._state.record_result(rule=rule, target=p.target, ok=True, now=now)
            self.finish(rem)  # not verified: nothing more to wait for
            return
        rem.phase, rem.due, rem.verify_for = Phase.VERIFYING, now + seconds, seconds
        self._arm(rem, self._verification_due)
        await self._save(rem)

    def _unwanted(self, rem: Remediation, w: Work) -> tuple[Reason, str] | None:
        """Checked once an action has its slot, just before it runs."""
        if rem.resolved or self.resolved_lately(w.alert):
            return Reason.RESOLVED, "not started: the alert resolved while it waited for a slot"
        return self.decider.held_back(w)

    async def _verification_due(self, key: str) -> None:
        rem = self._active.get(key)
        if rem is None or rem.phase is not Phase.VERIFYING:
            return
        if self.resolved_lately(rem.alert):  # seen before this remediation was (a restart)
            await self._effective(rem, self._clock.now())
            return
        if await self._resolved_elsewhere(rem):
            return
        limit = "limits.cooldown" if rem.rule.limits.retry_while_firing else "verify.resolve_within"
        why = f"ineffective: still firing {rem.verify_for:.0f}s after step {rem.step + 1} ({limit})"
        self._ineffective(rem, why)
        if rem.changed:
            await self._state.record_result(
                rule=rem.rule, target=rem.target, ok=False, now=self._clock.now()
            )
        await self._advance(rem, why)

    async def _attempt_due(self, key: str) -> None:
        rem = self._active.get(key)
        if rem is None or rem.phase is not Phase.WAITING:
            return
        await self._next_attempt(rem)

    # -- stepping up -------------------------------------------------------------------

    async def _advance(self, rem: Remediation, why: str) -> None:
        """The current step did not fix it: the next step, the same one again, or a human."""
        if not await self._refresh(rem):
            return
        if rem.step + 1 < len(rem.rule.steps):
            rem.step += 1
        elif not rem.rule.limits.retry_while_firing:
            await self.give_up(self._work(rem), rem, decision_id=rem.decision_id, why=why)
            return
        # Tried at once; a cooldown or lock in the way makes it wait (WAITING).
        await self._next_attempt(rem)

    async def _next_attempt(self, rem: Remediation) -> None:
        """Step `rem.step` is due (again): unless the alert stopped firing, decide it."""
        rem.phase = Phase.DECIDING
        if not await self._refresh(rem):
            return
        w = self._work(rem)
        if self.decider.held_back(w) is None:  # paused or blacked out: Alertmanager can wait
            stopped = await self.stopped_firing(rem)
            if stopped is not None:
                await self._recorder.record(
                    w, Outcome.SKIPPED, Reason.RESOLVED, target=rem.target,
                    detail=f"step {rem.step + 1} not tried: {stopped}",
                )  # fmt: skip
                self.finish(rem)
                return
        await self.decider.step(w, rem)

    async def stopped_firing(self, rem: Remediation) -> str | None:
        """Why the alert no longer fires, or None: no resolve seen and (where it can be
        asked) Alertmanager still lists it."""
        if rem.resolved or self.resolved_lately(rem.alert):
            return "the alert resolved"
        if await self._state.resolved_at(rem.alert.occurrence) is not None:
            return "the alert resolved (seen by another replica)"
        if self._alerts is None or rem.alert.source != "alertmanager":
            return None
        alert = rem.alert
        try:
            listed = await self._alerts.lists_alert(
                alert.name, alert.fingerprint, alert.starts_at.timestamp()
            )
        except Exception as exc:  # noqa: BLE001 - a second signal: the guards still stand
            # The resolved notification is the main signal; this check is a second one.
            # Acting goes on through the guards, the silence check among them.
            log.warning("firing_check_failed", rule=rem.rule.name, error=str(exc))
            return None
        if rem.resolved or self.resolved_lately(alert):
            return "the alert resolved"
        return None if listed else "Alertmanager no longer lists the alert as firing"

    async def _refresh(self, rem: Remediation) -> bool:
        """Take the rule as it is now (a reload may have changed it); a rule gone, with
        fewer steps, or that no longer matches the alert (its matchers or source changed)
        ends the remediation with a decision saying so."""
        rule = self._rules().get(rem.rule.name)
        alert = rem.alert
        matches = rule is not None and (
            rule.accepts_source(alert.source) and matchers.match_all(rule.matchers, alert.labels)
        )
        if rule is not None and matches and rem.step < len(rule.steps):
            rem.rule = rule
            return True
        if rule is None:
            why = "was removed by a reload"
        elif not matches:
            why = "no longer matches the alert after a reload"
        else:
            why = f"was left with {len(rule.steps)} step(s) by a reload"
        await self._recorder.record(
            self._work(rem), Outcome.SKIPPED, Reason.NOT_ALLOWED, target=rem.target,
            detail=f"rule {rem.rule.name} {why}: the remediation ends here",
        )  # fmt: skip
        log.warning("remediation_dropped", rule=rem.rule.name, reason=f"rule {why}")
        self.finish(rem)
        return False

    def _work(self, rem: Remediation) -> Work:
        return Work(
            rem.alert, rem.rule, self._clock.now(), rem.request_id, step=rem.step, token=rem.token
        )

    async def _resolved_elsewhere(self, rem: Remediation) -> bool:
        """A resolve another replica saw, whose message this one missed: handled now."""
        at = await self._state.resolved_at(rem.alert.occurrence)
        if at is None:
            return False
        await self.resolved(rem.alert, at=at)
        return True

    async def _escalate(self, rem: Remediation) -> None:
        """Send the escalation; a send that failed and may succeed later is tried again
        (ESCALATION_RETRIES, the record durable meanwhile) up to ESCALATION_ATTEMPTS."""
        attempt = rem.escalation_attempts + 1
        if attempt > 1:
            rem.rule = self._rules().get(rem.rule.name) or rem.rule  # a reload may fix it
        rule, alert, settings = rem.rule, rem.alert, self._settings()
        if attempt == 1:
            log.warning("escalation_due", rule=rule.name, target=rem.target, why=rem.why)
        if rule.escalate is None:
            await self._forget_durably(rem)
            return
        budgets, shadow = settings.budgets, rule.dry_run and not settings.dry_run
        # A send tried again is the same escalation: it counts against the cap once.
        allowed = attempt > 1 or shadow or await self._state.escalation_allowed(
            now=self._clock.now(), window=budgets.window,
            limit=budgets.max_escalations_per_window,
        )  # fmt: skip
        escalation = Escalation(
            why=rem.why, tried=tuple(_line(t) for t in rem.tried),
            decision_id=rem.decision_id, url=decision_url(settings.external_url, rem.decision_id),
            evidence=evidence_mod.summary(rem.evidence) if rem.evidence else "",
        )  # fmt: skip
        if not allowed:
            text = (
                f"{rem.why}; escalation suppressed: {budgets.max_escalations_per_window} "
                f"sent in the last {budgets.window:.0f}s (limits.max_escalations_per_window)"
            )
            result_label = "suppressed"
        else:
            text, result_label = await self._send(
                rem, escalation, dry=settings.dry_run or rule.dry_run, attempt=attempt
            )
        self._metrics.escalations.labels(rule=rule.name, result=result_label).inc()
        if rem.decision_id:
            self._recorder.audit.annotate(rem.decision_id, escalation=text)
        if result_label == "retrying":
            await self._send_later(rem, attempt, text)
            return
        # Nobody called (failed for good, or not sent) is an error; the rest is told.
        (log.error if result_label == "error" else log.warning)(
            "escalated", rule=rule.name, target=rem.target, result=result_label,
            decision_id=rem.decision_id, detail=text, fingerprint=alert.fingerprint,
            attempts=attempt,
        )  # fmt: skip
        if result_label == "ok" and rem.page is not None and not rem.resolved:
            # Open until the alert resolves (its resolve is sent then), or lapses.
            rem.phase, rem.due = Phase.PAGED, self._clock.now() + PAGED_FOR
            rem.escalation_attempts = 0
            self._arm(rem, self._page_lapsed)
            await self._save(rem)
            return
        await self._forget_durably(rem)

    async def _send_later(self, rem: Remediation, attempt: int, text: str) -> None:
        """A send failed and may succeed later: the next is at `rem.due`, durably (a
        restart meanwhile sends it then, or at once if that moment has passed)."""
        rem.escalation_attempts = attempt
        log.warning(
            "escalation_retrying", rule=rem.rule.name, target=rem.target, attempt=attempt,
            attempts=ESCALATION_ATTEMPTS, at=iso_ts(rem.due), decision_id=rem.decision_id,
            detail=text, fingerprint=rem.alert.fingerprint,
        )  # fmt: skip
        self._arm(rem, self._escalation_due)
        # No journal hands an escalation out again: with Redis away too, it goes on here.
        await self._save_or_go_on(rem, "escalation_not_saved", shared=False)

    async def _escalation_due(self, key: str) -> None:
        rem = self._active.get(key)
        if rem is not None and rem.phase is Phase.ESCALATING:
            await self._escalate(rem)

    async def _page_lapsed(self, key: str) -> None:
        rem = self._active.get(key)
        if rem is not None and rem.phase is Phase.PAGED:
            self.finish(rem)

    async def _resolve_page(self, rem: Remediation) -> None:
        """The alert resolved: close what the escalation opened (same target, same key)."""
        rule = rem.rule
        action = self._executor.action(rule.escalate.type) if rule.escalate else None
        resolve = getattr(action, "resolve", None)
        if action is None or resolve is None or rem.page is None:
            self.finish(rem)
            return
        ctx = self._executor.context(
            rule, rem.alert, decision_id=rem.decision_id, target=rem.target
        )
        try:
            result = await resolve(rem.page, ctx)
            text = f"resolved with the alert: {result.detail}"
        except Exception as exc:  # noqa: BLE001 - the page stays open for a human to close
            text = f"not resolved with the alert: {exc}"
        log.info("page_resolved", rule=rule.name, decision_id=rem.decision_id, detail=text)
        self.finish(rem)

    async def _send(
        self, rem: Remediation, escalation: Escalation, *, dry: bool, attempt: int = 1
    ) -> tuple[str, str]:
        """Run the rule's escalate; if its params cannot be rendered for this alert, run it
        with its optional params left out (the default message) rather than call nobody.

        Returns (what the decision says, the result label): `retrying` (with `rem.due`
        set) when the send failed in a way that may succeed later and `attempt` is not
        the last — a timeout or a 5xx too for an action that may then deliver twice
        (`duplicate_ok`: a message to humans)."""
        rule, settings = rem.rule, self._settings()
        assert rule.escalate is not None
        spec = rule.escalate
        prepared = prepare(spec, rule, rem.alert, settings, escalation=escalation)
        note = ""
        if not isinstance(prepared, Prepared):
            action = self._executor.action(spec.type)
            required = (
                {k for k, f in action.schema.fields.items() if f.required} if action else set()
            )
            fallback = dataclasses.replace(
                spec, params={k: v for k, v in spec.params.items() if k in required}
            )
            note = f" (its params did not render: {prepared.detail}; sent without them)"
            prepared = prepare(fallback, rule, rem.alert, settings, escalation=escalation)
        if not isinstance(prepared, Prepared):
            return f"{rem.why}; escalation not sent: {prepared.detail}", "error"
        ctx = self._executor.context(
            rule, rem.alert, decision_id=rem.decision_id, escalation=escalation,
            target=rem.target,
        )  # fmt: skip
        action = prepared.action
        result, failure = await self._executor.call(action, prepared.values, ctx, dry=dry)
        n = ESCALATION_ATTEMPTS
        if failure is not None:
            rem.escalation_error = failure.detail
            safe = action.idempotent or failure.not_sent or getattr(action, "duplicate_ok", False)
            if failure.temporary and safe and not dry and attempt < n:
                rem.due = self._clock.now() + ESCALATION_RETRIES[attempt - 1]
                how = f" (attempt {attempt} of {n}; tried again at {iso_ts(rem.due)})"
                return f"{rem.why}; escalation failed{how}: {failure.detail}{note}", "retrying"
            last = "the last" if attempt >= n else "not tried again"
            how = "" if attempt == 1 else f" (attempt {attempt} of {n}, {last})"
            return f"{rem.why}; escalation failed{how}: {failure.detail}{note}", "error"
        assert result is not None
        if not dry and hasattr(action, "resolve"):
            rem.page = dict(prepared.values)  # closed with the alert (PAGED)
        if attempt > 1:
            note += f" (attempt {attempt} of {n}; the one before failed: {rem.escalation_error})"
        return f"{rem.why}; {result.detail}{note}", "dry_run" if dry else "ok"

    # -- resolve -----------------------------------------------------------------------

    async def resolved(self, alert: Alert, *, at: float | None = None) -> None:
        """A resolved notification: whatever waits on this occurrence, by any rule, ends."""
        occ, now = alert.occurrence, self._clock.now() if at is None else at
        self._resolved[occ] = now
        self._resolved.move_to_end(occ)
        while len(self._resolved) > RESOLVED_MEMORY:
            self._resolved.popitem(last=False)
        for key in sorted(self._by_occurrence.get(occ, ())):
            rem = self._active[key]
            if rem.phase is Phase.VERIFYING:
                await self._effective(rem, now)
            elif rem.phase is Phase.WAITING:
                await self._recorder.record(
                    self._work(rem), Outcome.SKIPPED, Reason.RESOLVED, target=rem.target,
                    detail=f"resolved before step {rem.step + 1} was tried",
                )  # fmt: skip
                self.finish(rem)
            elif rem.phase is Phase.AWAITING:
                rem.phase = Phase.DECIDING  # taken: an answer arriving now finds nothing
                self._metrics.approvals.labels(rule=rem.rule.name, result="resolved").inc()
                await self._unreserve(rem)
                await self._recorder.update(
                    self._work(rem), rem.decision_id, Outcome.SKIPPED, Reason.RESOLVED,
                    detail="resolved while it awaited approval: nothing was done",
                    target=rem.target,
                )  # fmt: skip
                self.approvals.settled(rem, "The alert resolved: nothing was done.")
                self.finish(rem)
            elif rem.phase is Phase.PAGED:
                rem.phase = Phase.ESCALATING  # taken: a second resolve finds nothing to do
                resolve = functools.partial(self._resolve_page, rem)
                self._spawn(self._safely(rem, "resolving the page", resolve), "resolve-page")
            else:
                # ACTING / DECIDING: seen before anything else acts, also after a restart.
                # ESCALATING: the human is called about attempts that did not help in time.
                rem.resolved = True
                await self._save(rem)

    async def _effective(self, rem: Remediation, now: float) -> None:
        if rem.changed:
            await self._state.record_result(rule=rem.rule, target=rem.target, ok=True, now=now)
        self._verified(rem, "effective: resolved at " + iso_ts(now))
        self.finish(rem)

    def _verified(self, rem: Remediation, text: str) -> None:
        self._metrics.verified.labels(rule=rem.rule.name, result="effective").inc()
        self._annotate_verification(rem, text)
        log.info(
            "remediation_verified", rule=rem.rule.name, target=rem.target, result="effective",
            decision_id=rem.decision_id,
        )  # fmt: skip

    def _ineffective(self, rem: Remediation, why: str) -> None:
        self._metrics.verified.labels(rule=rem.rule.name, result="ineffective").inc()
        self._annotate_verification(rem, why)
        log.warning(
            "remediation_verified", rule=rem.rule.name, target=rem.target,
            result="ineffective", decision_id=rem.decision_id,
        )  # fmt: skip

    def _annotate_verification(self, rem: Remediation, text: str) -> None:
        self._recorder.audit.annotate(rem.decision_id, verification=text)
        rem.verified(text)

    # -- bookkeeping -------------------------------------------------------------------

    async def _safely(
        self, rem: Remediation, what: str, step: Callable[[], Awaitable[None]]
    ) -> None:
        """Run one transition; an unexpected error ends the remediation with an escalation
        (a human is called), never silently, and never loops on a failing escalation."""
        try:
            await step()
        except errors.Superseded as exc:
            # Another replica owns this occurrence now, or will once it adopts this one's
            # records (its lease lapsed): hands off, quietly — out of memory, the record
            # left to the adopter (dropping it here would lose what the adopter resumes).
            log.warning("remediation_superseded", rule=rem.rule.name, what=what, error=str(exc))
            self._untrack(rem)
        except Exception as exc:
            log.exception("remediation_failed", rule=rem.rule.name, what=what,
                          decision_id=rem.decision_id)  # fmt: skip
            if rem.phase is Phase.ESCALATING:
                self.finish(rem)
                return
            try:
                await self.give_up(
                    self._work(rem), rem, decision_id=rem.decision_id,
                    why=f"internal error while {what}: {type(exc).__name__}: {exc}",
                )  # fmt: skip
            except Exception:  # the state itself fails: logged, let go
                log.exception("remediation_lost", rule=rem.rule.name)
                self.finish(rem)

    def _track(self, rem: Remediation) -> None:
        key = rem.key
        self._active[key] = rem
        self._by_occurrence.setdefault(rem.alert.occurrence, set()).add(key)
        self._metrics.remediations.set(len(self._active))

    def _forget(self, rem: Remediation) -> Any:
        self._untrack(rem)
        return self._state.drop_remediation(rem.key, rem.token)

    def _untrack(self, rem: Remediation) -> None:
        """Out of this replica's memory (its record, if any, stays)."""
        key = rem.key
        if rem.timer is not None:
            rem.timer.cancel()
            rem.timer = None
        if self._active.get(key) is rem:
            del self._active[key]
            keys = self._by_occurrence.get(rem.alert.occurrence)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_occurrence[rem.alert.occurrence]
        self._metrics.remediations.set(len(self._active))

    async def _forget_durably(self, rem: Remediation) -> None:
        """Forget it, and wait until that is durable (an escalation must not repeat)."""
        done = self._forget(rem)
        if done is not None:
            await done

    async def _save(self, rem: Remediation) -> None:
        if self._active.get(rem.key) is rem:
            await self._state.save_remediation(rem.key, rem.to_json())

    def _arm(self, rem: Remediation, fire: Callable[[str], Awaitable[None]]) -> None:
        if rem.timer is not None:
            rem.timer.cancel()
        if self._closing:
            rem.timer = None  # no new timers once shutdown has begun: the record stays
            return
        key = rem.key

        def due() -> None:
            self._spawn(self._safely(rem, f"{rem.phase} came due", lambda: fire(key)),
                        "remediation")  # fmt: skip

        rem.timer = self._clock.call_at(rem.due, due)

    def snapshot(self, rule: str) -> list[dict[str, Any]]:
        return [r.view() for r in self._active.values() if r.rule.name == rule]

    def cancel_timers(self) -> None:
        self._closing = True
        for rem in self._active.values():
            if rem.timer is not None:
                rem.timer.cancel()

    # -- restart -----------------------------------------------------------------------

    async def load(self) -> int:
        """Take back the remediations an earlier run left under way, without acting yet:
        re-deliveries and resolves left in the journal are routed to them first."""
        self._loaded = self.take(await self._state.remediations())
        return len(self._loaded)

    def adopt(self, records: list[dict[str, Any]]) -> int:
        """Take over a dead replica's remediations and resume them at once."""
        taken = self.take(records)
        self.resume(taken)
        return len(taken)

    def abandon(self) -> None:
        """Forget every remediation (this replica lost its lease: another adopts them)."""
        for rem in self._active.values():
            if rem.timer is not None:
                rem.timer.cancel()
        self._active.clear()
        self._by_occurrence.clear()
        self._metrics.remediations.set(0)

    def take(self, records: list[dict[str, Any]]) -> list[Remediation]:
        """Track remediations from their records, without acting yet."""
        rules, taken = self._rules(), []
        for record in records:
            try:
                rule = rules.get(record["rule"])
                rem = Remediation.from_json(rule or _gone(record["rule"]), record)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # Left out (another version's, hand-edited); the others are still taken.
                log.error(
                    "record_unreadable", kind="remediation", key=str(record.get("key"))[:200],
                    error=repr(exc)[:200],
                )  # fmt: skip
                continue
            self._track(rem)
            taken.append(rem)
            if rem.silence is not None and self._silences is not None:
                self._silences.adopt(rem.alert, rem.silence)
        return taken

    def resume(self, rems: list[Remediation] | None = None) -> None:
        """Arm the timers of what `load` (or `take`) took back, and resume what fell due
        meanwhile."""
        now = self._clock.now()
        for rem in self._loaded if rems is None else rems:
            if self._active.get(rem.key) is not rem:
                continue  # ended meanwhile (a resolve left in the journal)
            self._spawn(self._safely(rem, "resuming", functools.partial(self._resume, rem, now)),
                        "resume")  # fmt: skip

    async def _resume(self, rem: Remediation, now: float) -> None:
        if rem.phase is Phase.PAGED:
            if rem.resolved or self.resolved_lately(rem.alert):
                await self._resolve_page(rem)
            else:
                self._arm(rem, self._page_lapsed)
            return
        if rem.phase is Phase.ESCALATING:
            if rem.escalation_attempts and rem.due > now:
                self._arm(rem, self._escalation_due)  # a send failed: tried again at due
            else:
                await self._escalate(rem)
            return
        if not await self._refresh(rem):
            return
        if rem.phase is Phase.AWAITING:
            if not rem.dry:
                await self._state.relock(rem.target, rem.lock_token)
            self._arm(rem, self._approval_due)  # one that expired meanwhile expires now
            return
        if rem.phase is Phase.DECIDING:
            await self._next_attempt(rem)  # cut off while deciding: decide again
            return
        if rem.phase is Phase.ACTING and await self._state.action_started(rem.key) is False:
            # Taken over from a dead replica before the step's action started (it waited
            # for a slot): nothing was done, so it runs now, on the reservation it had;
            # if another holder has the target meanwhile, it is decided again.
            if not await self.decider.act_again(self._work(rem), rem):
                await self.wait(rem, now, "its action never started on a replica that died")
            return
        if rem.phase is Phase.ACTING:
            # The daemon stopped while the step's action ran: whether it acted is unknown
            # (its row says so). Never run it again: wait for its resolve as if it had.
            rem.note(step=rem.step + 1, action=rem.rule.steps[rem.step].action.type,
                     target=rem.target, decision_id=rem.decision_id,
                     outcome="failed/interrupted")  # fmt: skip
            rem.changed = False
            seconds = verify_for(rem.rule, rem.step)
            if rem.resolved or (seconds is None and self.resolved_lately(rem.alert)):
                self.finish(rem)  # it resolved meanwhile: nothing to wait for
                return
            if seconds is None:
                # Not verified (`resolve_within: never`), and whether it acted is unknown:
                # nothing will tell, so a human is called to check the target.
                await self.give_up(
                    self._work(rem), rem, decision_id=rem.decision_id,
                    why=f"step {rem.step + 1} {rem.rule.steps[rem.step].action.type} "
                    f"{rem.target.split(' ', 1)[-1]}: outcome unknown (the daemon stopped "
                    "while it ran) and not verified: check the target by hand",
                )  # fmt: skip
                return
            rem.phase, rem.verify_for, rem.due = Phase.VERIFYING, seconds, rem.started + seconds
        if rem.phase is Phase.VERIFYING and (rem.resolved or self.resolved_lately(rem.alert)):
            await self._effective(rem, now)
            return
        if rem.phase is Phase.VERIFYING and rem.due <= now:
            why = "unknown: the daemon was down when it was due"
            self._annotate_verification(rem, why)
            await self._advance(rem, why)
            return
        self._arm(
            rem, self._verification_due if rem.phase is Phase.VERIFYING else self._attempt_due
        )
        await self._save(rem)


ESCALATION_RETRIES = (30.0, 60.0, 120.0, 300.0)
"""Seconds before each new send of an escalation that failed and may succeed later (a
5xx, a timeout, no connection): five sends over about 8 minutes, then it is given up
(logged as an error, the decision says it failed)."""
ESCALATION_ATTEMPTS = len(ESCALATION_RETRIES) + 1
PAGED_FOR = 7 * 86400.0
"""Seconds a page waits for its alert's resolve before the record lapses (a human closes
what stays open)."""
TRANSIENT_RECHECK = 60.0
"""Seconds after which a remediation held back by a pause, blackout or silence looks again."""


def _gone(name: str) -> Rule:
    """A stand-in for a rule no longer loaded, so its record can be ended with a decision."""
    return Rule(name=name, matchers=(), steps=(Step(ActionSpec("log", {})),))


def _line(t: dict[str, Any]) -> str:
    """One step tried, as the escalation text lists it."""
    verification = f", {t['verification']}" if t.get("verification") else ""
    target = f" {t['target'].split(' ', 1)[-1]}" if t.get("target") else ""
    return (
        f"step {t['step']} {t['action']}{target}: {t['outcome']}{verification} "
        f"(decision {t['decision_id']})"
    )
