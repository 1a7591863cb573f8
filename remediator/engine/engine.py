"""The engine: journaled alerts in, one recorded decision per (alert occurrence, rule) out.

Guards run in the order of DESIGN.md: paused, blackout, duplicate occurrence, silenced,
`for`, cooldown, attempts, rule rate, global budgets, circuit, target lock, dry-run.
The cheap checks and the reservation of an attempt never await I/O in between, so two
deliveries of one occurrence racing through the workers cannot both act.

Actions run in their own tasks (bounded by `limits.max_concurrent_actions`), so a slow
action never stalls intake. Their audit row is written *before* they run.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Final, Literal

import structlog

from remediator import errors
from remediator.actions import registry
from remediator.actions.base import Action, Context, Result
from remediator.backends.audit import Audit, Receipt
from remediator.backends.journal import Journal, JournalEntry
from remediator.backends.state import State
from remediator.engine import guards
from remediator.engine.clock import Clock, Timer
from remediator.engine.silences import Silences
from remediator.matching import templates
from remediator.matching.index import RuleIndex
from remediator.metrics import Metrics
from remediator.models.alert import Alert, iso, iso_ts, parse_time
from remediator.models.decision import Decision, Outcome, Reason
from remediator.models.rule import ActionSpec, Rule
from remediator.settings import Settings

log = structlog.get_logger("remediator.engine")

# A skip for one of these reasons holds only while the reason does: once the pause,
# blackout or silence is over, the next re-delivery of a still-firing alert is decided
# again instead of being dropped as a duplicate.
TRANSIENT = frozenset(
    {Reason.PAUSED, Reason.BLACKOUT, Reason.SILENCED, Reason.SILENCE_CHECK_FAILED}
)
HELD: Final = "held"
DECIDING: Final = "deciding"
DECIDED: Final = "decided"
DUPLICATE: Final = "duplicate"
PENDING: Final = "pending"
"""A dry run doing I/O in its own task: it records the decision (and releases the
journal entry) when it is done, so a slow API never holds an engine worker."""
_Verdict = Literal["decided", "held", "duplicate", "pending"]
# With `retry_while_firing`, these refusals end nothing: the occurrence is decided again
# after the cooldown.
RETRYABLE = frozenset(
    {Reason.COOLDOWN, Reason.LOCKED, Reason.BUDGET_EXHAUSTED, Reason.RATE_LIMITED,
     Reason.CIRCUIT_OPEN}
)  # fmt: skip
RESOLVED_MEMORY = 10_000
"""Occurrences remembered as resolved, for decisions and actions still under way."""


def occurrence_key(rule: str, fingerprint: str, starts_at: str) -> str:
    """The state key of one rule's decision on one occurrence (fingerprint, startsAt)."""
    return f"{rule}\x00{fingerprint}\x00{starts_at}"


def _key(rule: Rule, alert: Alert) -> str:
    return occurrence_key(rule.name, alert.fingerprint, alert.starts_iso)


def prepare(
    spec: ActionSpec, rule: Rule, alert: Alert, settings: Settings
) -> tuple[Action | None, dict[str, Any] | None, str, tuple[Reason, str] | None]:
    """Render and validate an action's params: (action, values, target, problem).

    Label values are untrusted: every rendered value goes through the action's declared
    validation and its allow-lists, so a label can never widen what the rule does.
    """
    action = registry.get(spec.type)
    if action is None:
        return None, None, "", (Reason.TEMPLATE_ERROR, f"unknown action type {spec.type!r}")
    try:
        values = action.schema.validate(templates.render_params(spec.params, alert))
        action.check_allowed(values, settings)
    except (errors.TemplateError, errors.ParamError) as exc:
        return action, None, "", (Reason.TEMPLATE_ERROR, f"{spec.type}: {exc}")
    except errors.NotAllowed as exc:
        return action, None, "", (Reason.NOT_ALLOWED, f"{spec.type}: {exc}")
    target = f"{action.type} {action.target(values) or rule.name}"
    return action, values, target, None


@dataclasses.dataclass(slots=True)
class _Held:
    entry: JournalEntry
    rule: Rule
    timer: Timer


@dataclasses.dataclass(slots=True)
class _Verifying:
    rule: Rule
    alert: Alert
    target: str
    decision_id: int
    timer: Timer


@dataclasses.dataclass(frozen=True, slots=True)
class _Recheck:
    entry: JournalEntry
    rule: Rule


class Engine:
    def __init__(
        self,
        *,
        settings: Settings,
        index: RuleIndex,
        journal: Journal,
        audit: Audit,
        state: State,
        metrics: Metrics,
        clients: Any,
        clock: Clock,
        silences: Silences | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.journal = journal
        self.audit = audit
        self.state = state
        self.metrics = metrics
        self.clients = clients
        self.clock = clock
        self.silences = silences
        # Bounded by construction: intake refuses (503) once the journal backlog, which
        # counts everything queued here, reaches `intake.backlog_limit`.
        self._queue: asyncio.Queue[JournalEntry | _Recheck] = asyncio.Queue()
        self._held: dict[str, _Held] = {}
        self._verifying: dict[str, _Verifying] = {}
        self._waiting: dict[str, set[str]] = {}
        """Occurrence → keys in _held and _verifying: a resolved notification finds them
        whatever the rules are now (a reload may have renamed or narrowed a rule)."""
        self._resolved_recently: collections.OrderedDict[str, float] = collections.OrderedDict()
        """Occurrences seen resolved (bounded): an action that finishes, or a decision
        made, after its alert resolved must not act or wait for a resolution."""
        self._closing = False
        self._refs: dict[JournalEntry, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.budgets.max_concurrent_actions)
        self._decision_counters: dict[tuple[str, Outcome, Reason], Any] = {}
        self._unsaved: dict[JournalEntry, list[Receipt]] = {}
        """Audit writes per journal entry not yet known durable; the entry waits for them."""

    # -- intake side -------------------------------------------------------------

    def submit(self, entries: list[JournalEntry]) -> None:
        for e in entries:
            self._queue.put_nowait(e)

    async def run(self, workers: int) -> None:
        """Decide queued work until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for i in range(workers):
                tg.create_task(self._worker(), name=f"engine-worker-{i}")

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, _Recheck):
                    await self._recheck(item)
                else:
                    await self._process(item)
            except Exception:
                # A bug or a failed write: the entry stays in the journal (decided again
                # on the next start), and what this process held for it is let go.
                entry = item.entry if isinstance(item, _Recheck) else item
                self._unsaved.pop(entry, None)
                self._refs.pop(entry, None)
                self.journal.keep(entry)
                log.exception(
                    "engine_error", entry=repr(entry), alertname=entry.alert.name,
                    request_id=entry.request_id,
                )  # fmt: skip
            finally:
                self._queue.task_done()

    async def wait_idle(self) -> None:
        """Until every queued alert has been decided (held ones stay held). For tests."""
        await self._queue.join()

    async def wait_actions(self, timeout: float | None = None) -> set[asyncio.Task[None]]:
        """Wait for running actions and escalations; return those still running."""
        if not self._tasks:
            return set()
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return pending

    # -- deciding ---------------------------------------------------------------

    async def _process(self, entry: JournalEntry) -> None:
        alert = entry.alert
        rules = self.index.match(alert)
        if alert.status == "resolved":
            await self._resolved(alert)
            if self.silences is not None:
                released = await self.silences.release(alert)
                if released is not None:
                    self.audit.annotate(released[0], silence=released[1])
            self._finish(entry)
            return
        outstanding = 0
        duplicate = False
        for rule in rules:
            verdict = await self._decide(entry, rule, recheck=False)
            outstanding += verdict in (HELD, PENDING)
            duplicate |= verdict == DUPLICATE
        if duplicate:  # counted once per re-delivered alert, however many rules it matches
            self.metrics.duplicates.labels(source=alert.source).inc()
        if outstanding:
            self._refs[entry] = outstanding
        else:
            self._finish(entry)

    async def _recheck(self, item: _Recheck) -> None:
        key = _key(item.rule, item.entry.alert)
        if self._held.pop(key, None) is None:
            return  # resolved meanwhile: its too_young decision is already recorded
        self._untrack(item.entry.alert, key)
        if await self._decide(item.entry, item.rule, recheck=True) in (DECIDED, DUPLICATE):
            self._release_ref(item.entry)

    def _track(self, alert: Alert, key: str) -> None:
        self._waiting.setdefault(alert.occurrence, set()).add(key)

    def _untrack(self, alert: Alert, key: str) -> None:
        occ = alert.occurrence
        keys = self._waiting.get(occ)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._waiting[occ]

    def _release_ref(self, entry: JournalEntry) -> None:
        left = self._refs.get(entry, 1) - 1
        if left <= 0:
            self._refs.pop(entry, None)
            self._finish(entry)
        else:
            self._refs[entry] = left

    def _finish(self, entry: JournalEntry) -> None:
        """Drop a journal entry once every audit row written for it is durable.

        If a row could not be written the entry stays, so its alert is decided again on
        the next start rather than lost.
        """
        batches = {id(r.batch): r.batch for r in self._unsaved.pop(entry, ())}
        pending = [b for b in batches.values() if not b.done()]
        if not pending:
            self._finish_saved(entry, batches.values())
            return
        left = len(pending)

        def one_done(_: asyncio.Future[list[int]]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._finish_saved(entry, batches.values())

        for b in pending:
            b.add_done_callback(one_done)

    def _finish_saved(
        self, entry: JournalEntry, batches: Iterable[asyncio.Future[list[int]]]
    ) -> None:
        if any(b.cancelled() or b.exception() is not None for b in batches):
            log.error("journal_entry_kept", entry=repr(entry), reason="audit write failed")
            self.journal.keep(entry)
            return
        self.journal.finish(entry)

    async def _decide(self, entry: JournalEntry, rule: Rule, *, recheck: bool) -> _Verdict:
        """Decide one rule for one firing alert: decided, held for `for`, pending (a dry
        run in its own task), or a duplicate. On an unexpected error the occurrence is
        forgotten, so a later delivery is decided afresh."""
        try:
            return await self._decide_guarded(entry, rule, recheck=recheck)
        except Exception:
            await self.state.forget_occurrence(_key(rule, entry.alert))
            raise

    async def _decide_guarded(self, entry: JournalEntry, rule: Rule, *, recheck: bool) -> _Verdict:
        alert = entry.alert
        now = self.clock.now()
        key = _key(rule, alert)
        skip = self._transient_reason(rule, alert, now)
        if skip is None and self.silences is not None:
            # Asked before the duplicate check (from a cache, mostly): the only await on
            # I/O must not sit between reading the occurrence and claiming it, and a
            # re-delivery of a still-silenced alert must stay a duplicate, not a new row.
            skip = await self.silences.check(alert)
        prev = await self.state.occurrence(key)
        if not self._should_decide(
            prev.status if prev else None,
            rule,
            skip,
            now,
            prev_at=prev.at if prev else 0.0,
            recheck=recheck,
        ):
            return DUPLICATE
        await self.state.set_occurrence(key, DECIDING, now)
        base = _Base(entry, rule, now)
        if skip is not None:
            await self._record(base, Outcome.SKIPPED, skip[0], detail=skip[1])
            return DECIDED
        if alert.occurrence in self._resolved_recently:
            await self._record(
                base, Outcome.SKIPPED, Reason.TOO_YOUNG,
                detail="resolved before it was decided: nothing to remediate",
            )  # fmt: skip
            return DECIDED
        # A startsAt ahead of our clock (a skewed or forged sender) counts from arrival:
        # never hold an alert longer than `for` after we received it.
        started = min(alert.starts_at.timestamp(), alert.received_at.timestamp())
        if now - started < rule.for_:
            await self.state.set_occurrence(key, HELD, now)
            due = started + rule.for_
            timer = self.clock.call_at(due, lambda: self._queue.put_nowait(_Recheck(entry, rule)))
            self._held[key] = _Held(entry, rule, timer)
            self._track(alert, key)
            log.info(
                "alert_held", rule=rule.name, fingerprint=alert.fingerprint,
                request_id=entry.request_id, decided_at=iso_ts(due),
            )  # fmt: skip
            return HELD
        action, values, target, problem = prepare(rule.action, rule, alert, self.settings)
        if problem is not None:
            await self._record(
                base, Outcome.SKIPPED, problem[0], detail=problem[1], action=rule.action.type
            )
            return DECIDED
        assert action is not None and values is not None  # set when no problem
        verdict = await self.state.reserve(
            rule=rule, target=target, budgets=self.settings.budgets, now=now,
            dry_run=self.settings.dry_run,
        )  # fmt: skip
        if verdict.reason is not None:
            gives_up = verdict.reason is Reason.MAX_ATTEMPTS
            decision_id = await self._record(
                base, Outcome.SKIPPED, verdict.reason, detail=verdict.detail,
                target=target, action=action.type, params=values, durable=gives_up,
            )  # fmt: skip
            if gives_up:
                self._spawn(
                    self._escalate(rule, alert, target, decision_id, verdict.detail), "escalate"
                )
            return DECIDED
        if self.settings.dry_run:
            if not action.local:
                self._spawn(
                    self._dry_run(base, action, values=values, target=target,
                                  attempt=verdict.attempt),
                    f"dry-run:{target}",
                )  # fmt: skip
                return PENDING
            await self._dry_run(base, action, values=values, target=target, attempt=verdict.attempt)
            return DECIDED
        try:
            # Written before the action runs: if the process dies now, the row already
            # says so and the occurrence is never acted on again after a restart.
            decision_id = await self._record(
                base, Outcome.FAILED, Reason.INTERRUPTED,
                detail="never started: the daemon stopped while the action waited for a slot",
                target=target, action=action.type, params=values, attempt=verdict.attempt,
                durable=True, final=False,
            )  # fmt: skip
        except BaseException:
            await self.state.release(target)  # reserved above; nothing will run
            raise
        self.metrics.inflight_actions.inc()
        self._spawn(
            self._execute(base, action, values=values, target=target, decision_id=decision_id),
            f"action:{target}",
        )
        return DECIDED

    async def _dry_run(
        self, base: _Base, action: Action, *, values: dict[str, Any], target: str, attempt: int
    ) -> None:
        """Dry-run the action and record the decision; as a task, release its entry."""
        rule, alert = base.rule, base.entry.alert
        try:
            if action.local:
                result, failure = await self._call(
                    action, values, self._context(rule, alert), dry=True
                )
            else:
                async with self._slots:
                    result, failure = await self._call(
                        action, values, self._context(rule, alert), dry=True
                    )
            if failure is None:
                assert result is not None
                await self._record(
                    base, Outcome.DRY_RUN, Reason.NONE, detail=result.detail, target=target,
                    action=action.type, params=values, attempt=attempt, result=result.data,
                )  # fmt: skip
            elif failure[0] is Reason.NOT_ALLOWED:
                await self._record(
                    base, Outcome.SKIPPED, failure[0], detail=failure[1], target=target,
                    action=action.type, params=values, attempt=attempt,
                )  # fmt: skip
            else:
                await self._record(
                    base, Outcome.DRY_RUN, failure[0], detail=f"dry run failed: {failure[1]}",
                    target=target, action=action.type, params=values, attempt=attempt,
                )  # fmt: skip
        finally:
            if not action.local:
                self._release_ref(base.entry)

    def _should_decide(
        self,
        prev: str | None,
        rule: Rule,
        skip: tuple[Reason, str] | None,
        now: float,
        *,
        prev_at: float,
        recheck: bool,
    ) -> bool:
        if prev is None:
            return True
        if prev == HELD:
            return recheck
        if prev == DECIDING:
            return False
        outcome, _, reason = prev.partition("/")
        if outcome == Outcome.SKIPPED and reason in TRANSIENT:
            return skip is None or skip[0] != reason
        if rule.limits.retry_while_firing and (outcome != Outcome.SKIPPED or reason in RETRYABLE):
            return now - prev_at >= rule.limits.cooldown
        return False

    def _transient_reason(self, rule: Rule, alert: Alert, now: float) -> tuple[Reason, str] | None:
        if self.state.paused:
            return Reason.PAUSED, "all actions are paused (POST /api/v1/resume to resume)"
        if not self.settings.blackouts:
            return None
        name = guards.blackout(
            self.settings.blackouts, rule, alert, dt.datetime.fromtimestamp(now, dt.UTC)
        )
        if name is not None:
            return Reason.BLACKOUT, f"blackout window {name!r} is active"
        return None

    def _context(self, rule: Rule, alert: Alert) -> Context:
        return Context(
            alert=alert,
            rule=rule.name,
            settings=self.settings,
            clients=self.clients,
            timeout=self.settings.budgets.action_timeout,
        )

    async def _call(
        self, action: Action, values: Mapping[str, Any], ctx: Context, *, dry: bool
    ) -> tuple[Result | None, tuple[Reason, str] | None]:
        """Run (or dry-run) an action within its timeout, retrying only if idempotent."""
        fn = action.dry_run if dry else action.run
        if action.local:
            try:
                return await fn(values, ctx), None
            except errors.NotAllowed as exc:
                return None, (Reason.NOT_ALLOWED, str(exc))
            except errors.RemediatorError as exc:
                return None, (Reason.ACTION_ERROR, str(exc))
        deadline = time.monotonic() + ctx.timeout
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await fn(values, ctx), None
            except TimeoutError:
                return None, (
                    Reason.TIMEOUT,
                    f"no result within {ctx.timeout:.0f}s (limits.action_timeout)",
                )
            except errors.TemporaryError as exc:
                retry_safe = action.idempotent or isinstance(exc, errors.NotSent)
                if not retry_safe or time.monotonic() + exc.delay >= deadline:
                    return None, (Reason.ACTION_ERROR, str(exc))
                ctx.log.info("action_retry", action=action.type, error=str(exc), delay=exc.delay)
                await asyncio.sleep(exc.delay)
            except errors.NotAllowed as exc:
                # Only known once the target is read (a protected label, an HPA owning
                # the replicas): a refusal, not a failure of the fix.
                return None, (Reason.NOT_ALLOWED, str(exc))
            except errors.RemediatorError as exc:
                return None, (Reason.ACTION_ERROR, str(exc))
            except Exception as exc:
                ctx.log.exception("action_crashed", action=action.type)
                return None, (Reason.ACTION_ERROR, f"{type(exc).__name__}: {exc}")

    async def _execute(
        self,
        base: _Base,
        action: Action,
        *,
        values: dict[str, Any],
        target: str,
        decision_id: int,
    ) -> None:
        rule, alert = base.rule, base.entry.alert
        started = time.monotonic()
        try:
            async with self._slots:
                started_at = iso(dt.datetime.fromtimestamp(self.clock.now(), dt.UTC))
                await self.audit.update(
                    decision_id,
                    outcome=Outcome.FAILED,
                    reason=Reason.INTERRUPTED,
                    detail=f"outcome unknown: started at {started_at}, the daemon stopped "
                    "before it finished; check the target by hand",
                )
                log.info(
                    "action_started",
                    rule=rule.name,
                    target=target,
                    fingerprint=alert.fingerprint,
                    request_id=base.entry.request_id,
                    decision_id=decision_id,
                )
                result, failure = await self._call(
                    action, values, self._context(rule, alert), dry=False
                )
        finally:
            self.metrics.inflight_actions.dec()
            await self.state.release(target)
        self.metrics.action_duration.labels(action=action.type).observe(time.monotonic() - started)
        now = self.clock.now()
        data: Mapping[str, Any] = {}
        if failure is None:
            assert result is not None
            outcome, reason, detail, data = (
                Outcome.EXECUTED,
                Reason.NONE,
                result.detail,
                result.data,
            )
        elif failure[0] is Reason.NOT_ALLOWED:
            outcome, reason, detail = Outcome.SKIPPED, failure[0], failure[1]
        else:
            outcome, reason, detail = Outcome.FAILED, failure[0], failure[1]
        await self.audit.update(
            decision_id, outcome=outcome, reason=reason, detail=detail, result=data
        )
        key = _key(rule, alert)
        await self.state.set_occurrence(key, f"{outcome}/{reason}", now)
        self._count(rule, outcome, reason)
        self.metrics.actions.labels(
            rule=rule.name, action=action.type, result=_action_result(outcome)
        ).inc()
        self._log(base, outcome, reason, target=target, detail=detail, decision_id=decision_id)
        if outcome is Outcome.SKIPPED:
            # Refused after reading the target: nothing was done, nothing to verify, and
            # a half-open circuit's trial did not happen.
            await self.state.end_trial(rule=rule, target=target)
            return
        if failure is not None:
            if await self.state.record_result(rule=rule, target=target, ok=False, now=now):
                await self._escalate(rule, alert, target, decision_id, f"circuit opened: {detail}")
            return
        if alert.occurrence in self._resolved_recently:
            # It resolved while the action ran (or waited for a slot): nothing left to
            # wait for, and no silence to hold over a resolved alert.
            await self.state.record_result(rule=rule, target=target, ok=True, now=now)
            self._verified(rule, target, decision_id, "effective: resolved while the action ran")
            return
        if rule.silence_while_remediating and self.silences is not None:
            text = await self.silences.hold(
                alert, rule=rule.name, decision_id=decision_id,
                duration=rule.silence_while_remediating,
            )  # fmt: skip
            self.audit.annotate(decision_id, silence=text)
        if rule.resolve_within is None or (result is not None and not result.changed):
            await self.state.record_result(rule=rule, target=target, ok=True, now=now)
            return
        if self._closing:
            return  # no new timers once shutdown has begun
        if key in self._verifying:
            # A retry while firing: the previous attempt did not resolve it in time.
            await self._ineffective(key)
        timer = self.clock.call_at(
            now + rule.resolve_within, lambda: self._spawn(self._ineffective(key), "verify")
        )
        self._verifying[key] = _Verifying(rule, alert, target, decision_id, timer)
        self._track(alert, key)

    # -- restart ------------------------------------------------------------------

    async def restore(self, row: Mapping[str, Any], *, at: float) -> None:
        """Replay one audit row on start (oldest first): circuit breakers get their
        failures back, and an executed attempt still waiting to be verified waits again."""
        rule = self.index.by_name.get(row["rule"])
        if rule is None or not row["target"]:
            return  # the rule is gone: nothing of it to rebuild
        target, outcome, reason = row["target"], row["outcome"], row["reason"]
        verification: str = row["verification"]
        if outcome == Outcome.FAILED and reason in (Reason.ACTION_ERROR, Reason.TIMEOUT):
            await self.state.record_result(rule=rule, target=target, ok=False, now=at)
        if outcome != Outcome.EXECUTED:
            return
        if verification.startswith("ineffective"):
            await self.state.record_result(rule=rule, target=target, ok=False, now=at)
        elif verification.startswith("effective") or rule.resolve_within is None:
            await self.state.record_result(rule=rule, target=target, ok=True, now=at)
        elif not verification:
            alert = _restored_alert(row)
            due = at + rule.resolve_within
            if due <= self.clock.now():
                # Due while the daemon was down: whether it resolved then is unknown.
                self.audit.annotate(
                    row["id"], verification="unknown: the daemon was down when it was due"
                )
                return
            key = _key(rule, alert)
            timer = self.clock.call_at(due, lambda: self._spawn(self._ineffective(key), "verify"))
            self._verifying[key] = _Verifying(rule, alert, target, row["id"], timer)
            self._track(alert, key)

    # -- verification and escalation --------------------------------------------

    async def _resolved(self, alert: Alert) -> None:
        """A resolved notification: release what waits on this occurrence, by any rule."""
        occ = alert.occurrence
        now = self.clock.now()
        self._resolved_recently[occ] = now
        self._resolved_recently.move_to_end(occ)
        while len(self._resolved_recently) > RESOLVED_MEMORY:
            self._resolved_recently.popitem(last=False)
        for key in sorted(self._waiting.pop(occ, ())):
            held = self._held.pop(key, None)
            if held is not None:
                held.timer.cancel()
                await self._record(
                    _Base(held.entry, held.rule, now), Outcome.SKIPPED, Reason.TOO_YOUNG,
                    detail=f"resolved after {now - alert.starts_at.timestamp():.0f}s, "
                    f"before for={held.rule.for_:.0f}s",
                )  # fmt: skip
                self._release_ref(held.entry)
            pending = self._verifying.pop(key, None)
            if pending is not None:
                pending.timer.cancel()
                await self.state.record_result(
                    rule=pending.rule, target=pending.target, ok=True, now=now
                )
                self._verified(
                    pending.rule, pending.target, pending.decision_id,
                    "effective: resolved at " + iso(dt.datetime.fromtimestamp(now, dt.UTC)),
                )  # fmt: skip

    def _verified(self, rule: Rule, target: str, decision_id: int, text: str) -> None:
        self.metrics.verified.labels(rule=rule.name, result="effective").inc()
        self.audit.annotate(decision_id, verification=text)
        log.info(
            "remediation_verified", rule=rule.name, target=target, result="effective",
            decision_id=decision_id,
        )  # fmt: skip

    async def _ineffective(self, key: str) -> None:
        pending = self._verifying.pop(key, None)
        if pending is None:
            return
        pending.timer.cancel()
        self._untrack(pending.alert, key)
        rule, now = pending.rule, self.clock.now()
        self.metrics.verified.labels(rule=rule.name, result="ineffective").inc()
        why = (
            f"ineffective: still firing {rule.resolve_within:.0f}s after the action "
            "(verify.resolve_within)"
        )
        self.audit.annotate(pending.decision_id, verification=why)
        log.warning(
            "remediation_verified",
            rule=rule.name,
            target=pending.target,
            result="ineffective",
            decision_id=pending.decision_id,
        )
        if await self.state.record_result(rule=rule, target=pending.target, ok=False, now=now):
            await self._escalate(
                rule, pending.alert, pending.target, pending.decision_id, f"circuit opened: {why}"
            )

    async def _escalate(
        self, rule: Rule, alert: Alert, target: str, decision_id: int | None, why: str
    ) -> None:
        log.warning("escalation_due", rule=rule.name, target=target, why=why)
        if rule.escalate is None:
            return
        if not await self.state.should_escalate(rule=rule, target=target, now=self.clock.now()):
            return
        action, values, _, problem = prepare(rule.escalate, rule, alert, self.settings)
        if problem is not None:
            text = f"escalation not sent: {problem[1]}"
            result_label = "error"
        else:
            assert action is not None and values is not None
            result, failure = await self._call(
                action, values, self._context(rule, alert), dry=self.settings.dry_run
            )
            if failure is None:
                assert result is not None
                text, result_label = (
                    f"{why}; {result.detail}",
                    "dry_run" if self.settings.dry_run else "ok",
                )
            else:
                text, result_label = f"{why}; escalation failed: {failure[1]}", "error"
        self.metrics.escalations.labels(rule=rule.name, result=result_label).inc()
        log.warning("escalated", rule=rule.name, target=target, result=result_label, detail=text)
        if decision_id is not None:
            self.audit.annotate(decision_id, escalation=text)

    # -- recording --------------------------------------------------------------

    async def _record(
        self,
        base: _Base,
        outcome: Outcome,
        reason: Reason,
        *,
        detail: str,
        target: str = "",
        action: str = "",
        params: Mapping[str, Any] | None = None,
        attempt: int = 0,
        result: Mapping[str, Any] | None = None,
        durable: bool = False,
        final: bool = True,
    ) -> int:
        """Record a decision: audit row, occurrence status, metric, log event.

        Skips and dry runs are not awaited here: the journal entry is dropped only once
        they are durable (`_finish`). An action's row is awaited (`durable`) before it runs.
        """
        alert = base.entry.alert
        decision = Decision(
            rule=base.rule.name, alertname=alert.name, fingerprint=alert.fingerprint,
            starts_at=alert.starts_iso, source=alert.source, outcome=outcome, reason=reason,
            decided_at=iso_ts(self.clock.now()),
            received_at=alert.received_at, target=target, action=action,
            params=params or {}, detail=detail, request_id=base.entry.request_id, attempt=attempt,
            result=result or {}, labels=alert.labels, annotations=alert.annotations,
        )  # fmt: skip
        key = _key(base.rule, alert)
        await self.state.set_occurrence(key, f"{outcome}/{reason}", base.now)
        decision_id = 0
        receipt = self.audit.record(decision)
        if durable:
            decision_id = await receipt.id()
        else:
            self._unsaved.setdefault(base.entry, []).append(receipt)
        if final:
            self._count(base.rule, outcome, reason)
            self._log(base, outcome, reason, target=target, detail=detail, decision_id=decision_id)
        return decision_id

    def _count(self, rule: Rule, outcome: Outcome, reason: Reason) -> None:
        key = (rule.name, outcome, reason)
        counter = self._decision_counters.get(key)
        if counter is None:  # labels() costs a lock and a tuple build: once per label set
            counter = self.metrics.decisions.labels(
                rule=rule.name, outcome=str(outcome), reason=str(reason)
            )
            self._decision_counters[key] = counter
        counter.inc()

    def _log(
        self,
        base: _Base,
        outcome: Outcome,
        reason: Reason,
        *,
        target: str,
        detail: str,
        decision_id: int,
    ) -> None:
        alert = base.entry.alert
        log.info(
            "decision_recorded",
            rule=base.rule.name,
            outcome=str(outcome),
            reason=str(reason),
            target=target,
            fingerprint=alert.fingerprint,
            alertname=alert.name,
            request_id=base.entry.request_id,
            detail=detail[:500],
            decision_id=decision_id or None,
        )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()))

    def cancel_timers(self) -> None:
        self._closing = True
        for h in self._held.values():
            h.timer.cancel()
        for v in self._verifying.values():
            v.timer.cancel()


@dataclasses.dataclass(frozen=True, slots=True)
class _Base:
    entry: JournalEntry
    rule: Rule
    now: float


def _action_result(outcome: Outcome) -> str:
    """`actions_total{result}`: ok, error, or refused (not_allowed found while running)."""
    return {Outcome.EXECUTED: "ok", Outcome.SKIPPED: "refused"}.get(outcome, "error")


def _restored_alert(row: Mapping[str, Any]) -> Alert:
    """The alert of an audit row, as far as the audit keeps it (for verification and
    escalation after a restart)."""
    kept = json.loads(row["alert"] or "{}")
    starts = parse_time(row["starts_at"])
    return Alert(
        source=row["source"],
        name=row["alertname"],
        status="firing",
        labels=kept.get("labels") or {"alertname": row["alertname"]},
        annotations=kept.get("annotations") or {},
        starts_at=starts,
        ends_at=None,
        fingerprint=row["fingerprint"],
        generator_url="",
        received_at=parse_time(row["received_at"]),
        starts_iso=row["starts_at"],
    )
