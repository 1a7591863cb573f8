"""Running an action: within its timeout, retried only where that is safe, in a slot.

An action's audit row is written before it runs (`failed/interrupted`, "never started")
and said again once it holds a slot ("outcome unknown ... check the target by hand"),
then replaced by its real outcome: after a crash the row tells which of the two it was,
and the occurrence is never acted on a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import structlog

from remediator import errors, models
from remediator.actions import evidence as evidence_mod
from remediator.actions import registry
from remediator.actions.base import Action, Context, Result
from remediator.backends.state import Mark, State
from remediator.engine.clock import Clock
from remediator.engine.recording import Recorder, Work
from remediator.matching import templates
from remediator.metrics import Metrics
from remediator.models.alert import Alert, iso
from remediator.models.decision import Escalation, Outcome, Reason
from remediator.models.rule import ActionSpec, Rule
from remediator.settings import Settings

log = structlog.get_logger("remediator.engine")


class Failure(NamedTuple):
    """Why an action did not run, or failed: a reason, what to tell, and the evidence it
    gathered before failing (`errors.ActionError.data`, the failed row's `result`)."""

    reason: Reason
    detail: str
    data: Mapping[str, Any] = types.MappingProxyType({})
    temporary: bool = False
    """It may succeed later (errors.TemporaryError, or no result within the timeout)."""
    not_sent: bool = False
    """Nothing reached the receiver (errors.NotSent): trying again cannot do it twice."""


def _failure(exc: errors.RemediatorError, reason: Reason = Reason.ACTION_ERROR) -> Failure:
    data = exc.data if isinstance(exc, errors.ActionError) else {}
    return Failure(
        reason, str(exc), data, temporary=isinstance(exc, errors.TemporaryError),
        not_sent=isinstance(exc, errors.NotSent),
    )  # fmt: skip


@models.value
class Prepared:
    """An action with its params rendered and validated, and the target they name."""

    action: Action
    values: dict[str, Any]
    target: str
    token: int = 0
    """The fencing token of the target lock reserved for it (0: none taken)."""

    def with_token(self, token: int) -> Prepared:
        """The same prepared action under the target lock's `token`."""
        if token == self.token:
            return self
        return Prepared(self.action, self.values, self.target, token)


def prepare(
    spec: ActionSpec,
    rule: Rule,
    alert: Alert,
    settings: Settings,
    *,
    escalation: Escalation | None = None,
) -> Prepared | Failure:
    """Render and validate an action's params: the prepared action, or why not.

    Label values are untrusted: every rendered value goes through the action's declared
    validation and its allow-lists, so a label can never widen what the rule does.
    """
    action = registry.get(spec.type)
    if action is None:
        return Failure(Reason.TEMPLATE_ERROR, f"unknown action type {spec.type!r}")
    try:
        rendered = templates.render_params(
            spec.params, scope(rule, alert, settings, escalation), action.schema.escapes
        )
        values = action.schema.validate(rendered)
        action.check_allowed(values, settings)
    except (errors.TemplateError, errors.ParamError) as exc:
        return Failure(Reason.TEMPLATE_ERROR, f"{spec.type}: {exc}")
    except errors.NotAllowed as exc:
        return Failure(Reason.NOT_ALLOWED, f"{spec.type}: {exc}")
    return Prepared(action, values, f"{action.type} {action.target(values) or rule.name}")


def scope(
    rule: Rule, alert: Alert, settings: Settings, escalation: Escalation | None
) -> templates.Scope:
    values: dict[str, Mapping[str, str]] = {
        "rule": {
            "name": rule.name,
            "description": rule.description,
            "runbook_url": rule.runbook_url,
        }
    }
    if escalation is not None:
        values["decision"] = {"id": str(escalation.decision_id), "url": escalation.url}
        values["remediation"] = {
            "why": escalation.why, "tried": escalation.tried_text,
            "evidence": escalation.evidence or "none captured",
        }  # fmt: skip
    return templates.Scope(alert, values)


class Executor:
    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        clients: Any,
        state: State,
        recorder: Recorder,
        metrics: Metrics,
        clock: Clock,
        slots: int,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._state = state
        self._recorder = recorder
        self._metrics = metrics
        self._clock = clock
        self._slots = asyncio.Semaphore(slots)

    async def _not_started(
        self, w: Work, p: Prepared, decision_id: int, refused: tuple[Reason, str]
    ) -> tuple[Outcome, Reason, str, Result | None, dict[str, Any]]:
        reason, detail = refused
        await self._recorder.update(
            w, decision_id, Outcome.SKIPPED, reason, detail=detail, target=p.target
        )
        return Outcome.SKIPPED, reason, detail, None, {}

    def context(
        self, rule: Rule, alert: Alert, *, decision_id: int = 0,
        escalation: Escalation | None = None, target: str = "",
    ) -> Context:  # fmt: skip
        settings = self._settings()
        return Context(
            alert=alert, rule=rule.name, settings=settings, clients=self._clients,
            timeout=settings.budgets.action_timeout, decision_id=decision_id,
            escalation=escalation, target=target, now=self._clock.now,
        )  # fmt: skip

    async def evidence(self, rule: Rule, p: Prepared, ctx: Context) -> dict[str, Any]:
        """What the action's family sees before it acts, bounded (never raises), unless
        the rule turned evidence off."""
        if not rule.evidence:
            return {}
        return await evidence_mod.capture(p.action, p.values, ctx)

    async def call(
        self, action: Action, values: Mapping[str, Any], ctx: Context, *, dry: bool
    ) -> tuple[Result | None, Failure | None]:
        """Run (or dry-run) an action within its timeout, retrying only if idempotent."""
        fn = action.dry_run if dry else action.run
        if action.local:
            try:
                return await fn(values, ctx), None
            except errors.NotAllowed as exc:
                return None, _failure(exc, Reason.NOT_ALLOWED)
            except errors.RemediatorError as exc:
                return None, _failure(exc)
        deadline = time.monotonic() + ctx.timeout
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await fn(values, ctx), None
            except TimeoutError:
                return None, Failure(
                    Reason.TIMEOUT,
                    f"no result within {ctx.timeout:.0f}s (limits.action_timeout)",
                    temporary=True,
                )
            except errors.TemporaryError as exc:
                retry_safe = action.idempotent or isinstance(exc, errors.NotSent)
                if not retry_safe or time.monotonic() + exc.delay >= deadline:
                    return None, _failure(exc)
                ctx.log.info("action_retry", action=action.type, error=str(exc), delay=exc.delay)
                await asyncio.sleep(exc.delay)
            except errors.Superseded as exc:
                return None, _failure(exc, Reason.LOCKED)  # fenced: not done, not failed
            except errors.NotAllowed as exc:
                # Only known once the target is read (a protected label, an HPA owning
                # the replicas): a refusal, not a failure of the fix.
                return None, _failure(exc, Reason.NOT_ALLOWED)
            except errors.RemediatorError as exc:
                return None, _failure(exc)
            except Exception as exc:
                ctx.log.exception("action_crashed", action=action.type)
                return None, Failure(Reason.ACTION_ERROR, f"{type(exc).__name__}: {exc}")

    async def dry_run(self, w: Work, p: Prepared, *, attempt: int, shadow: bool) -> None:
        """Dry-run the action (in a slot unless it is local) and record the decision."""
        ctx = self.context(w.rule, w.alert, target=p.target)
        seen: dict[str, Any] = {}
        if p.action.local:
            result, failure = await self.call(p.action, p.values, ctx, dry=True)
        else:
            async with self._slots:
                seen = await self.evidence(w.rule, p, ctx)
                result, failure = await self.call(p.action, p.values, ctx, dry=True)
        common: dict[str, Any] = {
            "target": p.target, "action": p.action.type, "params": p.values, "attempt": attempt,
            "evidence": seen,
        }  # fmt: skip
        if failure is None:
            assert result is not None
            reason = Reason.SHADOW if shadow else Reason.NONE
            detail = f"shadow: {result.detail}" if shadow else result.detail
            await self._recorder.record(
                w, Outcome.DRY_RUN, reason, detail=detail, result=result.data, **common
            )
        elif failure[0] is Reason.NOT_ALLOWED:
            await self._recorder.record(w, Outcome.SKIPPED, failure[0], detail=failure[1], **common)
        else:
            await self._recorder.record(
                w, Outcome.DRY_RUN, failure[0], detail=f"dry run failed: {failure[1]}", **common
            )

    def action(self, type_: str) -> Action | None:
        return registry.get(type_)

    async def execute(
        self,
        w: Work,
        p: Prepared,
        *,
        decision_id: int,
        still_wanted: Callable[[], tuple[Reason, str] | None] = lambda: None,
    ) -> tuple[Outcome, Reason, str, Result | None, dict[str, Any]]:
        """Run the action for real (its row already says `interrupted`); record the outcome.

        `still_wanted` is asked once the action has its slot: a reason there (the alert
        resolved, a pause) records `skipped` with it, and nothing runs. Then the family's
        evidence is captured onto the row, and the action runs. Returns (outcome, reason,
        detail, result, evidence). Releases the target lock.
        """
        seen: dict[str, Any] = {}
        rule, alert = w.rule, w.alert
        started = time.monotonic()
        refused: tuple[Reason, str] | None = None
        try:
            async with self._slots:
                refused = still_wanted()
                if refused is not None:
                    await self._state.end_trial(rule=rule, target=p.target)
                    return await self._not_started(w, p, decision_id, refused)
                started_at = iso(dt.datetime.fromtimestamp(self._clock.now(), dt.UTC))
                # Marked on the occurrence too (where the audit can, in one step): a
                # replica taking this over knows the side effect may have happened.
                await self._recorder.audit.update(
                    decision_id,
                    outcome=Outcome.FAILED,
                    reason=Reason.INTERRUPTED,
                    detail=f"outcome unknown: started at {started_at}, the daemon stopped "
                    "before it finished; check the target by hand",
                    mark=Mark(w.key, "", w.token, "started"),
                )
                log.info(
                    "action_started", rule=rule.name, target=p.target, step=w.step + 1,
                    fingerprint=alert.fingerprint, request_id=w.request_id,
                    decision_id=decision_id,
                )  # fmt: skip
                ctx = dataclasses.replace(
                    self.context(rule, alert, decision_id=decision_id, target=p.target),
                    holds_lock=functools.partial(self._state.holds_lock, p.target, p.token),
                )
                seen = await self.evidence(rule, p, ctx)
                if seen:
                    self._recorder.audit.annotate(decision_id, evidence=seen)
                if await self._state.holds_lock(p.target, p.token):
                    result, failure = await self.call(p.action, p.values, ctx, dry=False)
                else:
                    # The lock lapsed while this replica stalled (waiting for a slot, or
                    # stopped): a new holder may be acting on the target right now.
                    result, failure = (
                        None,
                        Failure(
                            Reason.LOCKED,
                            f"not run: the lock on {p.target} lapsed before the action started "
                            "(or Redis could not say) and another replica may hold it "
                            "(backend.redis.lock_ttl)",
                        ),
                    )
        finally:
            self._metrics.inflight_actions.dec()
            await self._state.release(p.target, p.token)
        self._metrics.action_duration.labels(action=p.action.type).observe(
            time.monotonic() - started
        )
        data: Mapping[str, Any] = {}
        if failure is None:
            assert result is not None
            outcome, reason, detail, data = (
                Outcome.EXECUTED,
                Reason.NONE,
                result.detail,
                result.data,
            )
        elif failure.reason in (Reason.NOT_ALLOWED, Reason.LOCKED):
            outcome, reason, detail = Outcome.SKIPPED, failure.reason, failure.detail
        else:
            outcome, reason, detail = Outcome.FAILED, failure.reason, failure.detail
            data = failure.data  # what it had done and read back before it failed
        status = f"{outcome}/{reason}"
        if not self._recorder.audit.marks_occurrences:
            # Fenced before the audit write: a replica whose claim was taken over stops here.
            await self._state.set_occurrence(w.key, status, self._clock.now(), token=w.token)
        await self._recorder.audit.update(
            decision_id, outcome=outcome, reason=reason, detail=detail, result=data,
            mark=Mark(w.key, status, w.token, "-"),
        )  # fmt: skip
        self._recorder.count(rule, outcome, reason)
        self._metrics.actions.labels(
            rule=rule.name, action=p.action.type, result=_action_result(outcome)
        ).inc()
        self._recorder.log(
            w, outcome, reason, target=p.target, detail=detail, decision_id=decision_id
        )
        return outcome, reason, detail, result, seen


def _action_result(outcome: Outcome) -> str:
    """`actions_total{result}`: ok, error, or refused (not_allowed found while running)."""
    return {Outcome.EXECUTED: "ok", Outcome.SKIPPED: "refused"}.get(outcome, "error")
