"""The remediation loop: act, verify, step up or retry, and call a human when it gives up.

One remediation per rule and occurrence (fingerprint, startsAt), from its first action
until the alert resolves or a human has been called. Its record is durable (the state
backend), so a restart resumes it at the right step and never repeats one.

    first decision ──(guards pass)──► ACTING(step k) ── action done ──┐
         │                               ▲                            │
         │ refused: attempts out,        │ guards pass                ▼
         │ circuit open, budget spent    │               executed: VERIFYING(step k)
         │                               │                 │ resolved: effective ── done
         │                  WAITING(step k) ◄── cooldown,  │ resolve_within passes:
         │                    │   ▲  │          lock,      │   ineffective
         │                    │   └──┘ pause,    ◄───┐     │ failed / refused on read
         │     resolved:      │  silence, blackout   │     ▼
         │   skipped/resolved │  (re-checked)        └─ next attempt? step k+1 of the
         │      ── done       │                         ladder, or the same step again
         │                    │                         (`retry_while_firing`, within
         ▼                    │ refused for good         `max_attempts`)
     ESCALATING ◄─────────────┴───────────────────────── none left
         │ the rule's `escalate` runs once, with what was tried and the decision's link
         ▼
        done

A WAITING remediation whose wait ran out first asks Alertmanager (API v2 `/alerts`, where
`alertmanager.urls` is set) whether the alert still fires, in case its resolved
notification never came. Each attempt is its own decision (audit row, `step` column);
verification and escalation are written onto the row they concern.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from remediator import errors
from remediator.backends.state import State
from remediator.engine.clock import Clock, Timer
from remediator.engine.executing import Executor, Prepared, prepare
from remediator.engine.recording import Recorder, Work, occurrence_key
from remediator.engine.silences import Silences
from remediator.metrics import Metrics
from remediator.models.alert import Alert, iso_ts
from remediator.models.decision import Escalation, Outcome, Reason
from remediator.models.rule import Rule
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
    ESCALATING = "escalating"
    """Nothing more will be tried: the escalation is being sent."""


class AlertsApi(Protocol):
    async def lists_alert(self, alertname: str, fingerprint: str) -> bool: ...


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
    tried: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    last_skip: str = ""
    """The transient reason last recorded while waiting: a recheck adds no second row."""
    why: str = ""
    silence: dict[str, Any] | None = None
    """The silence held for it (`silence_while_remediating`), so a restart expires it."""
    token: int = 0
    """The fencing token it owns its occurrence under (a replica that adopts it gets a
    new one: the old owner's writes are refused from then on)."""
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
            "tried": self.tried,
            "last_skip": self.last_skip, "why": self.why, "silence": self.silence,
            "token": self.token,
        }  # fmt: skip

    def view(self) -> dict[str, Any]:
        """What /api/v1/rules shows of it."""
        return {
            "fingerprint": self.alert.fingerprint, "starts_at": self.alert.starts_iso,
            "step": self.step + 1, "steps": len(self.rule.steps), "phase": str(self.phase),
            "due": iso_ts(self.due) if self.phase in (Phase.VERIFYING, Phase.WAITING) else None,
            "target": self.target, "decision_id": self.decision_id, "tried": self.tried,
        }  # fmt: skip


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
        self._spawn = spawn
        self.decider: Decider
        self._active: dict[str, Remediation] = {}
        self._by_occurrence: dict[str, set[str]] = {}
        self._resolved: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Occurrences seen resolved (bounded): an action that finishes, or a decision
        made, after its alert resolved must not act or wait for a resolution."""
        self._closing = False

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
        self._track(rem)
        await self._save(rem)
        return rem

    async def run(self, rem: Remediation, w: Work, p: Prepared) -> None:
        """The action's task: run it, then verify, step up, retry or give up."""
        outcome, reason, detail, result = await self._executor.execute(
            w, p, decision_id=rem.decision_id
        )
        rule, now, n = rem.rule, self._clock.now(), w.step + 1
        rem.tried.append(
            {"step": n, "action": p.action.type, "target": p.target,
             "decision_id": rem.decision_id, "outcome": f"{outcome}/{reason}".rstrip("/"),
             "verification": ""}
        )  # fmt: skip
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
        if self.resolved_lately(rem.alert):
            # It resolved while the action ran (or waited for a slot): nothing to wait for.
            await self._state.record_result(rule=rule, target=p.target, ok=True, now=now)
            self._verified(rem, "effective: resolved while the action ran")
            self._finish(rem)
            return
        if rule.silence_while_remediating and self._silences is not None:
            text = await self._silences.hold(
                rem.alert, rule=rule.name, decision_id=rem.decision_id,
                duration=rule.silence_while_remediating,
            )  # fmt: skip
            rem.silence = self._silences.held_record(rem.alert)
            self._recorder.audit.annotate(rem.decision_id, silence=text)
        resolve_within = rule.steps[w.step].resolve_within
        if resolve_within is None:
            if rem.changed:
                await self._state.record_result(rule=rule, target=p.target, ok=True, now=now)
            self._finish(rem)  # not verified: nothing more to wait for
            return
        if rule.limits.retry_while_firing:
            # The next attempt is due once the cooldown ends: the attempt had that long.
            resolve_within = min(resolve_within, max(rule.limits.cooldown, 1.0))
        rem.phase, rem.due = Phase.VERIFYING, now + resolve_within
        rem.verify_for = resolve_within
        self._arm(rem, self._verification_due)
        await self._save(rem)

    def wait(self, rem: Remediation, due: float, why: str) -> None:
        """The next attempt is refused for now: try again at `due`."""
        rem.phase, rem.due = Phase.WAITING, due
        self._track(rem)
        self._arm(rem, self._attempt_due)
        log.info(
            "remediation_waiting", rule=rem.rule.name, fingerprint=rem.alert.fingerprint,
            step=rem.step + 1, until=iso_ts(due), why=why,
        )  # fmt: skip
        self._spawn(self._save(rem), "save-remediation")

    def retry_later(self, w: Work, decision_id: int, due: float, why: str) -> None:
        """A first decision refused by a cooldown or lock, with `retry_while_firing`."""
        rem = Remediation(
            w.rule, w.alert, w.request_id, step=w.step, decision_id=decision_id, token=w.token
        )
        self.wait(rem, due, why)

    def give_up(
        self, w: Work, rem: Remediation | None, *, decision_id: int, why: str,
        outcome: str = "", target: str = "",
    ) -> None:  # fmt: skip
        """Nothing more will be tried for this occurrence: escalate (once), in a task.

        `outcome` and `target` describe the refused attempt that ends it, if that is what
        does (its decision is `decision_id`)."""
        if rem is None:
            rem = Remediation(w.rule, w.alert, w.request_id, step=w.step, token=w.token)
        rem.decision_id = decision_id or rem.decision_id
        if outcome:
            rem.target = target or rem.target
            rem.tried.append(
                {"step": w.step + 1, "action": w.rule.steps[w.step].action.type,
                 "target": target, "decision_id": decision_id, "outcome": outcome,
                 "verification": ""}
            )  # fmt: skip
        rem.phase, rem.why = Phase.ESCALATING, why
        self._track(rem)
        self._spawn(self._escalate(rem, save=True), f"escalate:{w.rule.name}")

    def end(self, rem: Remediation) -> None:
        """The remediation stops here without escalating (e.g. now a dry run)."""
        self._finish(rem)

    # -- timers ----------------------------------------------------------------------

    def _arm(self, rem: Remediation, fire: Callable[[str], Awaitable[None]]) -> None:
        if rem.timer is not None:
            rem.timer.cancel()
        if self._closing:
            rem.timer = None  # no new timers once shutdown has begun: the record stays
            return
        key = rem.key
        rem.timer = self._clock.call_at(rem.due, lambda: self._spawn(fire(key), "remediation"))

    async def _verification_due(self, key: str) -> None:
        rem = self._active.get(key)
        if rem is None or rem.phase is not Phase.VERIFYING:
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

    async def _next_attempt(self, rem: Remediation) -> None:
        """Step `rem.step` is due (again): unless the alert stopped firing, decide it."""
        stopped = await self._stopped_firing(rem)
        if stopped is not None:
            await self._recorder.record(
                self._work(rem), Outcome.SKIPPED, Reason.RESOLVED, target=rem.target,
                detail=f"step {rem.step + 1} not tried: {stopped}",
            )  # fmt: skip
            self._finish(rem)
            return
        await self.decider.step(self._work(rem), rem)

    async def _stopped_firing(self, rem: Remediation) -> str | None:
        """Why the alert no longer fires, or None: no resolve seen and (where it can be
        asked) Alertmanager still lists it."""
        if self.resolved_lately(rem.alert):
            return "the alert resolved"
        if await self._state.resolved_at(rem.alert.occurrence) is not None:
            return "the alert resolved (seen by another replica)"
        if self._alerts is None or rem.alert.source != "alertmanager":
            return None
        try:
            listed = await self._alerts.lists_alert(rem.alert.name, rem.alert.fingerprint)
        except errors.ActionError as exc:
            # The resolved notification is the main signal; this check is a second one.
            # Acting goes on through the guards, the silence check among them.
            log.warning("firing_check_failed", rule=rem.rule.name, error=str(exc))
            return None
        return None if listed else "Alertmanager no longer lists the alert as firing"

    # -- stepping up -------------------------------------------------------------------

    async def _advance(self, rem: Remediation, why: str) -> None:
        """The current step did not fix it: the next step, the same one again, or a human."""
        rule = rem.rule
        if rem.step + 1 < len(rule.steps):
            rem.step += 1
        elif not rule.limits.retry_while_firing:
            self.give_up(self._work(rem), rem, decision_id=rem.decision_id, why=why)
            return
        # Tried at once; a cooldown or lock in the way makes it wait (WAITING).
        await self._next_attempt(rem)

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

    async def _escalate(self, rem: Remediation, *, save: bool) -> None:
        if save:
            await self._save(rem)  # an escalation cut off by a crash is sent on restart
        rule, alert, settings = rem.rule, rem.alert, self._settings()
        log.warning("escalation_due", rule=rule.name, target=rem.target, why=rem.why)
        if rule.escalate is None:
            self._finish(rem)
            return
        budgets = settings.budgets
        allowed = await self._state.escalation_allowed(
            now=self._clock.now(), window=budgets.window,
            limit=budgets.max_escalations_per_window,
        )  # fmt: skip
        escalation = Escalation(
            why=rem.why, tried=tuple(_line(t) for t in rem.tried),
            decision_id=rem.decision_id, url=decision_url(settings, rem.decision_id),
        )  # fmt: skip
        if not allowed:
            text = (
                f"{rem.why}; escalation suppressed: {budgets.max_escalations_per_window} "
                f"sent in the last {budgets.window:.0f}s (limits.max_escalations_per_window)"
            )
            result_label = "suppressed"
        else:
            prepared = prepare(rule.escalate, rule, alert, settings, escalation=escalation)
            if not isinstance(prepared, Prepared):
                text, result_label = f"{rem.why}; escalation not sent: {prepared[1]}", "error"
            else:
                dry = settings.dry_run or rule.dry_run
                ctx = self._executor.context(
                    rule, alert, decision_id=rem.decision_id, escalation=escalation
                )
                result, failure = await self._executor.call(
                    prepared.action, prepared.values, ctx, dry=dry
                )
                if failure is None:
                    assert result is not None
                    text = f"{rem.why}; {result.detail}"
                    result_label = "dry_run" if dry else "ok"
                else:
                    text, result_label = f"{rem.why}; escalation failed: {failure[1]}", "error"
        self._metrics.escalations.labels(rule=rule.name, result=result_label).inc()
        log.warning(
            "escalated", rule=rule.name, target=rem.target, result=result_label,
            decision_id=rem.decision_id, detail=text,
        )  # fmt: skip
        if rem.decision_id:
            self._recorder.audit.annotate(rem.decision_id, escalation=text)
        self._finish(rem)

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
                if rem.changed:
                    await self._state.record_result(
                        rule=rem.rule, target=rem.target, ok=True, now=now
                    )
                self._verified(
                    rem,
                    "effective: resolved at " + iso_ts(now),
                )
                self._finish(rem)
            elif rem.phase is Phase.WAITING:
                await self._recorder.record(
                    self._work(rem), Outcome.SKIPPED, Reason.RESOLVED, target=rem.target,
                    detail=f"resolved before step {rem.step + 1} was tried",
                )  # fmt: skip
                self._finish(rem)
            # ACTING: the action's task sees the resolve when it reports; ESCALATING: the
            # human is being called about attempts that did not help in time.

    def _verified(self, rem: Remediation, text: str) -> None:
        self._metrics.verified.labels(rule=rem.rule.name, result="effective").inc()
        self._recorder.audit.annotate(rem.decision_id, verification=text)
        if rem.tried:
            rem.tried[-1]["verification"] = text
        log.info(
            "remediation_verified", rule=rem.rule.name, target=rem.target, result="effective",
            decision_id=rem.decision_id,
        )  # fmt: skip

    def _ineffective(self, rem: Remediation, why: str) -> None:
        self._metrics.verified.labels(rule=rem.rule.name, result="ineffective").inc()
        self._recorder.audit.annotate(rem.decision_id, verification=why)
        if rem.tried:
            rem.tried[-1]["verification"] = why
        log.warning(
            "remediation_verified", rule=rem.rule.name, target=rem.target,
            result="ineffective", decision_id=rem.decision_id,
        )  # fmt: skip

    # -- bookkeeping -------------------------------------------------------------------

    def _track(self, rem: Remediation) -> None:
        key = rem.key
        self._active[key] = rem
        self._by_occurrence.setdefault(rem.alert.occurrence, set()).add(key)
        self._metrics.remediations.set(len(self._active))

    def _finish(self, rem: Remediation) -> None:
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
        self._state.drop_remediation(key, rem.token)
        self._metrics.remediations.set(len(self._active))

    async def _save(self, rem: Remediation) -> None:
        if self._active.get(rem.key) is rem:
            await self._state.save_remediation(rem.key, rem.to_json())

    def snapshot(self, rule: str) -> list[dict[str, Any]]:
        return [r.view() for r in self._active.values() if r.rule.name == rule]

    def cancel_timers(self) -> None:
        self._closing = True
        for rem in self._active.values():
            if rem.timer is not None:
                rem.timer.cancel()

    # -- restart -----------------------------------------------------------------------

    async def restore(self) -> int:
        """Pick up the remediations an earlier run left under way."""
        return self.adopt(await self._state.remediations())

    def abandon(self) -> None:
        """Forget every remediation (this replica lost its lease: another adopts them)."""
        for rem in self._active.values():
            if rem.timer is not None:
                rem.timer.cancel()
        self._active.clear()
        self._by_occurrence.clear()
        self._metrics.remediations.set(0)

    def adopt(self, records: list[dict[str, Any]]) -> int:
        """Resume remediations from their records (an earlier run's, or a dead replica's)."""
        rules, now, count = self._rules(), self._clock.now(), 0
        for record in records:
            rule = rules.get(record["rule"])
            if rule is None or record["step"] >= len(rule.steps):
                log.warning("remediation_dropped", rule=record["rule"], reason="rule changed")
                self._state.drop_remediation(record["key"])
                continue
            rem = Remediation(
                rule, Alert.from_json(record["alert"]), record["request_id"],
                step=record["step"], phase=Phase(record["phase"]), due=record["due"],
                target=record["target"], decision_id=record["decision_id"],
                started=record["started"], verify_for=record.get("verify_for", 0.0),
                changed=record["changed"], tried=record["tried"],
                last_skip=record["last_skip"], why=record["why"], silence=record["silence"],
                token=record.get("token", 0),
            )  # fmt: skip
            self._track(rem)
            count += 1
            if rem.silence is not None and self._silences is not None:
                self._silences.adopt(rem.alert, rem.silence)
            self._resume(rem, now)
        return count

    def _resume(self, rem: Remediation, now: float) -> None:
        if rem.phase is Phase.ESCALATING:
            self._spawn(self._escalate(rem, save=False), f"escalate:{rem.rule.name}")
            return
        if rem.phase is Phase.ACTING:
            # The daemon stopped while the step's action ran: whether it acted is unknown
            # (its row says so). Never run it again: wait for its resolve as if it had.
            rem.tried.append(
                {"step": rem.step + 1, "action": rem.rule.steps[rem.step].action.type,
                 "target": rem.target, "decision_id": rem.decision_id,
                 "outcome": "failed/interrupted", "verification": ""}
            )  # fmt: skip
            rem.changed = False
            resolve_within = rem.rule.steps[rem.step].resolve_within
            if resolve_within is None:
                self._finish(rem)  # not verified: nothing more would have happened
                return
            rem.verify_for = resolve_within
            rem.phase, rem.due = Phase.VERIFYING, rem.started + resolve_within
        if rem.phase is Phase.VERIFYING and rem.due <= now:
            why = "unknown: the daemon was down when it was due"
            self._recorder.audit.annotate(rem.decision_id, verification=why)
            if rem.tried:
                rem.tried[-1]["verification"] = why
            self._spawn(self._advance(rem, why), "remediation")
            return
        self._arm(
            rem, self._verification_due if rem.phase is Phase.VERIFYING else self._attempt_due
        )


def decision_url(settings: Settings, decision_id: int) -> str:
    """The link of a decision under `external_url` ("" without one)."""
    if not settings.external_url or not decision_id:
        return ""
    return f"{settings.external_url}/api/v1/decisions/{decision_id}"


def _line(t: dict[str, Any]) -> str:
    """One step tried, as the escalation text lists it."""
    verification = f", {t['verification']}" if t.get("verification") else ""
    target = f" {t['target'].split(' ', 1)[-1]}" if t.get("target") else ""
    return (
        f"step {t['step']} {t['action']}{target}: {t['outcome']}{verification} "
        f"(decision {t['decision_id']})"
    )
