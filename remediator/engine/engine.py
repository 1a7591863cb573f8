"""The engine: journaled alerts in, one recorded decision per (alert occurrence, rule) out.

This module is the intake side: a bounded set of workers takes journal entries (and
held alerts that came of age), routes each to the rules that match it, and lets go of
the entry once every decision about it is durable. The concepts live beside it:

    deciding.py    the guards, in the order of DESIGN.md, for one rule and one alert
    holding.py     alerts held for a rule's `for`, compact and bounded
    executing.py   running an action: timeout, retries, slots, the pre-written row
    loop.py        the remediation loop: verify, step up, retry, escalate (its state machine)
    recording.py   a decision's audit row, metric and log event
    silences.py    Alertmanager's silences, asked before acting

Actions run in their own tasks (bounded by `limits.max_concurrent_actions`), so a slow
action never stalls intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

import structlog

from remediator import errors
from remediator.backends.audit import Audit
from remediator.backends.journal import Journal, JournalEntry
from remediator.backends.state import State
from remediator.engine import deciding
from remediator.engine.approvals import Approvals
from remediator.engine.clock import Clock
from remediator.engine.deciding import Decider
from remediator.engine.executing import Executor
from remediator.engine.holding import Held, HeldAlerts
from remediator.engine.loop import AlertsApi, Loop
from remediator.engine.recording import Recorder, Work
from remediator.engine.silences import Silences
from remediator.matching.index import RuleIndex
from remediator.metrics import Metrics
from remediator.models.alert import Alert
from remediator.models.decision import Outcome, Reason
from remediator.models.rule import Rule
from remediator.settings import Settings

log = structlog.get_logger("remediator.engine")


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
        alerts: AlertsApi | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.journal = journal
        self.audit = audit
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.silences = silences
        # Bounded by construction: intake refuses (503) once the journal backlog, which
        # counts every entry queued here, reaches `intake.backlog_limit`; held alerts
        # coming of age are bounded by `intake.max_held`.
        self._queue: asyncio.Queue[JournalEntry | Held] = asyncio.Queue()
        self._refs: dict[Hashable, int] = {}
        """Decisions still under way (dry runs in their own task) per journal entry or
        held alert: it is let go once they are all recorded."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[asyncio.Future[Any], list[Hashable]] = {}
        """Owners let go of once a write (a batch of rows) is done, by write."""
        self.recorder = Recorder(audit=audit, state=state, metrics=metrics, clock=clock)
        self.executor = Executor(
            settings=lambda: self.settings, clients=clients, state=state,
            recorder=self.recorder, metrics=metrics, clock=clock,
            slots=settings.budgets.max_concurrent_actions,
        )  # fmt: skip
        self.held = HeldAlerts(
            state=state, clock=clock, due=self._queue.put_nowait,
            limit=lambda: self.settings.intake.max_held,
        )  # fmt: skip
        self.approvals = Approvals(
            settings=lambda: self.settings, metrics=metrics, spawn=self.spawn
        )
        self.loop = Loop(
            settings=lambda: self.settings, rules=lambda: self.index.by_name, state=state,
            recorder=self.recorder, executor=self.executor, metrics=metrics, clock=clock,
            silences=silences, alerts=alerts, approvals=self.approvals, spawn=self.spawn,
        )  # fmt: skip
        self.decider = Decider(
            settings=lambda: self.settings, state=state, silences=silences,
            recorder=self.recorder, executor=self.executor, loop=self.loop, held=self.held,
            metrics=metrics, clock=clock, spawn=self.spawn, release=self._release_ref,
        )  # fmt: skip
        self.loop.decider = self.decider
        self.answer_handed: Callable[[dict[str, Any]], Awaitable[tuple[int, str]]] | None = None
        """How an answer handed over by another replica is checked and decided (the
        approvals web module's, set by the daemon: the same checks as one received here)."""

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
                if isinstance(item, Held):
                    await self._aged(item)
                else:
                    await self._process(item)
            except Exception:
                # A bug or a failed write: the entry stays in the journal (decided again
                # on the next start), and what this process held for it is let go.
                self.recorder.writes_of(item)
                self._refs.pop(item, None)
                if isinstance(item, JournalEntry):
                    self.journal.keep(item)  # out of the backlog; its row stays for a restart
                log.exception(
                    "engine_error", item=repr(item), alertname=item.alert.name,
                    request_id=item.request_id,
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

    async def restore(self) -> None:
        """On start, before the journal's leftovers are decided: hold again what was held,
        and take back the remediations under way (re-deliveries and resolves left in the
        journal find them). `resume` then lets them go on."""
        held = await self.held.restore(self.index.by_name)
        self.metrics.held.set(len(self.held))
        remediations = await self.loop.load()
        if held or remediations:
            log.info("work_restored", held=held, remediations=remediations)

    def resume(self) -> None:
        """Arm the restored remediations' timers; resume those that fell due meanwhile."""
        self.loop.resume()

    # -- routing ------------------------------------------------------------------

    async def _process(self, entry: JournalEntry) -> None:
        alert = entry.alert
        if alert.status == "resolved":
            await self._resolved(alert)
            self._finish(entry)
            return
        outstanding = 0
        duplicate = False
        for rule in self.index.match(alert):
            w = Work(alert, rule, self.clock.now(), entry.request_id, owner=entry)
            verdict = await self.decider.decide(w, aged=False)
            outstanding += verdict == deciding.PENDING
            duplicate |= verdict == deciding.DUPLICATE
        if duplicate:  # counted once per re-delivered alert, however many rules it matches
            self.metrics.duplicates.labels(source=alert.source).inc()
        if outstanding:
            self._refs[entry] = outstanding
        else:
            self._finish(entry)

    async def _aged(self, held: Held) -> None:
        """A held alert reached its rule's `for`: decide it now, by the rule as it is now."""
        if self.held.take(held.key, only=held) is None:
            return  # resolved (or replaced by a re-delivery) meanwhile
        self.metrics.held.set(len(self.held))
        rule = self.index.by_name.get(held.rule.name)
        if rule is None or rule not in self.index.match(held.alert):
            # A reload removed the rule, or it no longer matches: nothing of it to decide.
            log.warning(
                "held_alert_dropped", rule=held.rule.name, fingerprint=held.alert.fingerprint,
                reason="the rule is gone or no longer matches",
            )  # fmt: skip
            self._finish(held)
            return
        w = Work(held.alert, rule, self.clock.now(), held.request_id, owner=held)
        verdict = await self.decider.decide(w, aged=True, held_token=held.token)
        if verdict == deciding.PENDING:
            self._refs[held] = 1
        else:
            self._finish(held)

    async def _resolved(self, alert: Alert) -> None:
        """A resolved notification: release what waits on this occurrence, by any rule —
        here, and (through the state backend) on the other replicas."""
        await self.resolved_elsewhere(alert)
        await self.state.announce_resolved(alert, self.clock.now())

    async def resolved_elsewhere(self, alert: Alert) -> None:
        """Release what this replica holds of a resolved occurrence."""
        await self.loop.resolved(alert)
        now = self.clock.now()
        for key in list(self.held.of_occurrence(alert.occurrence)):
            held = self.held.take(key)
            if held is None:
                continue
            w = Work(held.alert, held.rule, now, held.request_id, owner=held, token=held.token)
            await self.recorder.record(
                w, Outcome.SKIPPED, Reason.TOO_YOUNG,
                detail=f"resolved after {now - alert.starts_at.timestamp():.0f}s, "
                f"before for={held.rule.for_:.0f}s",
            )  # fmt: skip
            self._finish(held)
        self.metrics.held.set(len(self.held))
        if self.silences is not None:
            released = await self.silences.release(alert)
            if released is not None:
                self.audit.annotate(released[0], silence=released[1])

    # -- letting go -----------------------------------------------------------------

    def _release_ref(self, owner: Hashable) -> None:
        left = self._refs.get(owner, 1) - 1
        if left <= 0:
            self._refs.pop(owner, None)
            self._finish(owner)
        else:
            self._refs[owner] = left

    def _finish(self, owner: Hashable) -> None:
        """Let go of a journal entry (or a held alert's record) once every write made for
        it is durable. If one failed, it stays: decided again on the next start, not lost."""
        writes = self.recorder.writes_of(owner)
        if len(writes) == 1:  # the common case: one row, in its loop turn's batch
            write = writes[0]
            if write.done():
                self._finish_saved(owner, writes)
            else:
                self._after(write, owner)
            return
        writes = list(set(writes))
        pending = [f for f in writes if not f.done()]
        if not pending:
            self._finish_saved(owner, writes)
            return
        left = len(pending)

        def one_done(_: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self._finish_saved(owner, writes)

        for f in pending:
            f.add_done_callback(one_done)

    def _after(self, write: asyncio.Future[Any], owner: Hashable) -> None:
        """Let go of `owner` once `write` is done: the owners waiting for one batch (the
        alerts of a request, whose rows share it) share one callback."""
        owners = self._waiting.get(write)
        if owners is None:
            self._waiting[write] = [owner]
            write.add_done_callback(self._written)
        else:
            owners.append(owner)

    def _written(self, write: asyncio.Future[Any]) -> None:
        writes = (write,)
        for owner in self._waiting.pop(write, ()):
            self._finish_saved(owner, writes)

    def _finish_saved(self, owner: Hashable, writes: Iterable[asyncio.Future[Any]]) -> None:
        if any(f.cancelled() or f.exception() is not None for f in writes):
            log.error("journal_entry_kept", entry=repr(owner), reason="audit write failed")
            if isinstance(owner, JournalEntry):
                self.journal.keep(owner)
            return
        if isinstance(owner, Held):
            self.held.forget(owner.key)
        elif isinstance(owner, JournalEntry):
            self.journal.finish(owner)

    # -- tasks ----------------------------------------------------------------------

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, errors.Superseded):
            log.warning("work_superseded", task=task.get_name(), error=str(exc))
        else:
            log.error("task_failed", task=task.get_name(), error=repr(exc))

    # -- several replicas (the state backend's hooks) -------------------------------

    async def adopt(self, held: list[dict[str, Any]], remediations: list[dict[str, Any]]) -> None:
        """A dead replica's held alerts and remediations are this replica's now."""
        count = self.held.adopt(self.index.by_name, held)
        self.metrics.held.set(len(self.held))
        resumed = self.loop.adopt(remediations)
        log.info("work_adopted", held=count, remediations=resumed)

    def holds_approval(self, decision_id: int) -> bool:
        return self.loop.approval(decision_id) is not None

    async def approval_handed(self, answer: dict[str, Any]) -> tuple[int, str]:
        """An answer another replica received for an approval held here."""
        if self.answer_handed is None:
            return 409, "this replica takes no answers handed over (not serving approvals)"
        return await self.answer_handed(answer)

    def abandon(self) -> None:
        """This replica's lease lapsed: another replica adopts what it held."""
        self.held.abandon()
        self.metrics.held.set(0)
        self.loop.abandon()

    def cancel_timers(self) -> None:
        self.held.cancel_timers()
        self.loop.cancel_timers()

    def rule(self, name: str) -> Rule | None:
        return self.index.by_name.get(name)
