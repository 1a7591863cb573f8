"""The daemon: wires backends, engine and web; root tasks, signals, staged shutdown.

Shutdown on SIGTERM/SIGINT, in stages: (1) intake answers 503 so senders retry
elsewhere, (2) workers stop taking new work, (3) running actions get
`shutdown_timeout` to finish — any still running are cancelled and their audit rows
keep saying `interrupted`, (4) the database is closed. Unfinished journal entries stay
for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from remediator import errors, intake, preflight, reloading
from remediator import settings as settings_mod
from remediator.backends import Backends
from remediator.backends import journal as journal_mod
from remediator.backends import sns as sns_backend
from remediator.backends import state as state_mod
from remediator.backends.state import Pause
from remediator.clients import Clients
from remediator.clients.alertmanager import AlertmanagerClient
from remediator.engine import restoring
from remediator.engine.clock import Clock, SystemClock, Timer
from remediator.engine.engine import Engine
from remediator.engine.silences import Silences
from remediator.intake import sns as intake_sns
from remediator.matching import loader
from remediator.matching.index import RuleIndex
from remediator.metrics import Metrics
from remediator.models.alert import Alert
from remediator.models.rule import Rule
from remediator.settings import Settings
from remediator.web import approvals as approvals_web
from remediator.web import server
from remediator.web.app import make_app

log = structlog.get_logger("remediator.runner")


def load_rules(settings: Settings) -> list[Rule]:
    """The rules, matchers read with `matchers_syntax`; what should be fixed is logged."""
    warnings: list[errors.RuleFileError] = []
    rules = loader.load_dir(settings.rules_dir, syntax=settings.matchers_syntax, warnings=warnings)
    for w in warnings:
        log.warning("rule_matcher_warning", file=w.file, line=w.line, warning=w.message)
    return rules


GC_GEN0_THRESHOLD = 50_000
"""Allocations between young-generation collections (CPython's default is 700)."""


RESOLVE_HEADROOM = 2
"""A notification that carries a resolve is admitted until the backlog is this many
times `intake.backlog_limit` (Alertmanager sends a group's resolved alerts with its
firing ones): the resolve releases held alerts and remediations, so it is let in while
the journal can write, and the overshoot stays bounded."""


def admission_limit(alerts: Sequence[Alert], backlog_limit: int) -> int:
    """The journal backlog up to which a request with these alerts is accepted: the
    bound for firing alerts, twice that for a notification that carries a resolve, and
    none (`journal.UNBOUNDED`) for one of resolves only — they decide at once and free
    what waits."""
    resolves = sum(1 for a in alerts if a.status == "resolved")
    if resolves == len(alerts):
        return journal_mod.UNBOUNDED
    return backlog_limit * RESOLVE_HEADROOM if resolves else backlog_limit


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        config_loader: Callable[[], Settings] | None = None,
    ) -> None:
        """`config_loader` re-reads the config file (with the same CLI overrides) on reload;
        without one, a reload re-reads the rules only."""
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.backends = Backends(settings)
        self.db = self.backends.db
        self.journal = self.backends.journal
        self.audit = self.backends.audit
        self.state = self.backends.state
        self.sns_gate = intake_sns.Gate(settings.sns)
        self.sns_memory = sns_backend.Memory(self.db, max_messages=settings.sns.dedup_max_entries)
        self.stopping = False
        self.clients: Clients | None = None
        self.engine: Engine
        self._engine_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._pause_timers: dict[str, Timer] = {}
        self._config_loader = config_loader
        self.watcher: reloading.RulesWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Load rules (fail hard on errors at start), open backends, resume the journal."""
        read = self._signature()  # before reading: an edit meanwhile is seen as a change
        rules = load_rules(self.settings)
        await self.backends.start(self.clock.now())
        self.clients = await Clients.open()
        silences = alerts = None
        if self.settings.alertmanager.enabled:
            alerts = AlertmanagerClient(self.clients.http, self.settings.alertmanager)
            silences = Silences(
                api=alerts, config=self.settings.alertmanager, clock=self.clock,
                metrics=self.metrics,
            )  # fmt: skip
        self.engine = Engine(
            settings=self.settings, index=RuleIndex(rules), journal=self.journal,
            audit=self.audit, state=self.state, metrics=self.metrics, clients=self.clients,
            clock=self.clock, silences=silences, alerts=alerts,
        )  # fmt: skip
        self.engine.answer_handed = functools.partial(approvals_web.answer_handed, self)
        self._reloaded(len(rules))
        if self.settings.paused and not self.state.paused:
            await self.state.set_pause(
                state_mod.GLOBAL,
                Pause("config", "paused: true in the config file", self.clock.now(), None),
            )
        if self.state.needs_replay:
            replayed = await restoring.replay(
                self.audit, self.state, self.engine.index.by_name, now=self.clock.now()
            )
            if replayed:
                log.info("decisions_restored", count=replayed)
        await self.sns_memory.load(self.sns_gate, now=self.clock.now())
        pending = await self.journal.pending(intake.replay)
        await self.engine.restore()
        self._engine_task = asyncio.create_task(
            self.engine.run(self.settings.workers), name="engine"
        )
        # What the journal kept is decided before the remediations go on: a resolve that
        # arrived just before a crash must end a remediation, not meet its next step.
        self.engine.submit(pending)
        await self.engine.wait_idle()
        self.engine.resume()
        self.backends.run(self.engine, intake.replay, self.clock.now)
        self._watch(read)
        self._pause_gauges()
        for key, p in self.state.pauses().items():
            log.warning(
                "paused", scope=key or "all", by=p.by, reason=p.reason,
                until=_iso(p.until), at_start=True,
            )  # fmt: skip
            self._lift_at_until(key, p)
        for problem in preflight.at_start(self.settings, rules, os.environ):
            log.warning("start_warning", where=f"{problem.file}:{problem.line}",
                        problem=problem.message)  # fmt: skip
        log.info(
            "daemon_started", rules=len(rules), resumed=len(pending), dry_run=self.settings.dry_run,
            paused=self.state.paused, data_dir=str(self.settings.data_dir),
            backend=self.settings.backend.kind, audit=self.settings.audit.kind,
        )  # fmt: skip

    async def shutdown(self) -> None:
        self.stopping = True
        log.info("shutdown_started")
        if self.watcher is not None and self._watch_task is not None:
            self.watcher.stop()
            _, stuck_look = await asyncio.wait({self._watch_task}, timeout=1.0)
            if stuck_look:  # a stat on a hung volume must not hold the shutdown
                log.warning("rules_watch_cancelled", reason="a look did not finish within 1s")
                self._watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch_task
        await self.backends.stop_tasks()  # no new work from a shared journal
        if self._engine_task is not None:
            self._engine_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine_task
        self.engine.cancel_timers()
        for timer in self._pause_timers.values():
            timer.cancel()
        stuck = await self.engine.wait_actions(self.settings.shutdown_timeout)
        for task in stuck:
            log.warning("shutdown_cancelling_action", task=task.get_name())
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=5.0)
        if self.clients is not None:
            await self.clients.close()
        await self.backends.close()
        log.info("shutdown_finished", cancelled_actions=len(stuck))

    # -- intake -----------------------------------------------------------------

    async def accept(
        self,
        alerts: Sequence[Alert],
        *,
        source: str,
        payload: bytes,
        request_id: str,
        received_at: dt.datetime,
        also: journal_mod.Also | None = None,
    ) -> list[journal_mod.JournalEntry]:
        """Journal alerts (durably, with `also` in the same transaction) and hand them to
        the engine; Backpressure past the bound."""
        limit = admission_limit(alerts, self.settings.intake.backlog_limit)
        if self.journal.backlog + len(alerts) > limit:
            raise errors.Backpressure(
                f"journal backlog at {self.journal.backlog} of "
                f"{self.settings.intake.backlog_limit} (intake.backlog_limit); retry later"
            )
        entries = await self.journal.append(
            source=source, payload=payload, alerts=alerts, request_id=request_id,
            received_at=received_at, also=also, limit=limit,
        )  # fmt: skip
        for a in alerts:
            self.metrics.child(self.metrics.alerts_received, a.source, a.status).inc()
        self.engine.submit(entries)
        return entries

    # -- control ----------------------------------------------------------------

    async def set_pause(self, key: str, pause: Pause | None, *, by: str) -> None:
        """Pause (or with None resume) all actions (key GLOBAL) or one rule; persisted."""
        await self.state.set_pause(key, pause)
        self._pause_gauges()
        if pause is None:
            log.warning("resumed", scope=key or "all", by=by)
            return
        log.warning(
            "paused", scope=key or "all", by=pause.by, reason=pause.reason,
            until=_iso(pause.until),
        )  # fmt: skip
        self._lift_at_until(key, pause)

    def _lift_at_until(self, key: str, pause: Pause) -> None:
        """A pause with `until` lifts itself then (the guard already ignores it after)."""
        old = self._pause_timers.pop(key, None)
        if old is not None:
            old.cancel()
        if pause.until is None:
            return

        def lift() -> None:
            self._pause_timers.pop(key, None)
            if self.state.pauses().get(key) == pause:
                self.engine.spawn(self._lift(key), "pause-lift")

        self._pause_timers[key] = self.clock.call_at(pause.until, lift)

    async def _lift(self, key: str) -> None:
        await self.state.set_pause(key, None)
        self._pause_gauges()
        log.warning("resumed", scope=key or "all", by="until")

    def _pause_gauges(self) -> None:
        now = self.clock.now()
        pauses = self.state.pauses()
        main = pauses.get(state_mod.GLOBAL)
        self.metrics.paused.set(1 if main is not None and main.active(now) else 0)
        for rule in self.engine.index.rules:
            p = pauses.get(rule.name)
            self.metrics.rule_paused.labels(rule=rule.name).set(
                1 if p is not None and p.active(now) else 0
            )

    async def reload(self) -> tuple[bool, str]:
        """Reload the config file and the rules (off the event loop); all or nothing.

        Any error keeps what runs now. What can change live does (budgets, blackouts,
        dry-run, auth, intake limits, the action families' allow-lists); what cannot
        (listen address, data dir, workers, concurrency, Alertmanager and SNS clients)
        keeps its running value and the answer says a restart is needed.
        """
        async with self._reload_lock:
            try:
                read = await asyncio.to_thread(self._signature)
                if self.watcher is not None:  # what this reload reads, right or wrong, is not news
                    self.watcher.loaded = read
                fresh, rules = await asyncio.to_thread(self._load_config_and_rules)
            except (errors.ConfigError, errors.RuleFileErrors) as exc:
                self.metrics.reload_ok.set(0)
                if isinstance(exc, errors.RuleFileErrors):
                    details = [str(e) for e in exc.errors]
                else:  # `file:line:` as the rule files' errors (and `remediator check`)
                    details = [loader.config_error(self.settings.config_file, exc)]
                log.error("reload_failed", errors=details)
                return False, "\n".join(details)
            except Exception as exc:  # noqa: BLE001 - whatever reading raised, the reload failed
                self.metrics.reload_ok.set(0)
                detail = f"could not read the config and rule files: {exc!r}"[:1000]
                log.error("reload_failed", errors=[detail])
                return False, detail
            fresh, pinned = settings_mod.for_reload(self.settings, fresh)
            switched = fresh.paused != self.settings.paused  # the kill switch, flipped
            self.settings = fresh
            self.engine.settings = fresh
            self.engine.index = RuleIndex(rules)
            self._reloaded(len(rules))
            message = f"{len(rules)} rules loaded"
            if switched and fresh.paused and not self.state.paused:  # as at start
                await self.set_pause(state_mod.GLOBAL, Pause(
                    "config", "paused: true in the config file", self.clock.now(), None
                ), by="config")  # fmt: skip
                message += "; paused (paused: true in the config file)"
            elif switched and not fresh.paused and self.state.paused:  # recorded: it stays
                message += "; still paused: paused: false does not lift a recorded pause, "
                message += "POST /api/v1/resume does"
            if pinned:
                message += f"; restart to apply: {', '.join(sorted(pinned))}"
                log.warning("reload_needs_restart", settings=sorted(pinned))
            log.info("rules_reloaded", rules=len(rules))
            return True, message

    def _load_config_and_rules(self) -> tuple[Settings, list[Rule]]:
        fresh = self._config_loader() if self._config_loader is not None else self.settings
        return fresh, load_rules(fresh)

    def _signature(self) -> reloading.Signature:
        return reloading.signature(self.settings.rules_dir, self.settings.config_file)

    def _watch(self, read: reloading.Signature) -> None:
        """Start the rules watcher (`rules_watch_interval`; 0: none)."""
        interval = self.settings.rules_watch_interval
        if interval <= 0:
            return
        self.watcher = reloading.RulesWatcher(
            interval=interval, clock=self.clock, look=self._signature, reload=self.reload,
            loaded=read,
        )  # fmt: skip
        self._watch_task = self.watcher.start()

    def _reloaded(self, count: int) -> None:
        self.metrics.rules_loaded.set(count)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_ts.set(time.time())

    def refresh_gauges(self) -> None:
        self.metrics.journal_backlog.set(self.journal.backlog)
        self._pause_gauges()
        self.backend_problems()  # sets remediator_backend_up{backend}
        counts = self.state.open_circuits(self.engine.index.by_name, self.clock.now())
        for name, count in counts.items():
            self.metrics.circuit_open.labels(rule=name).set(count)

    def readiness_problems(self) -> list[str]:
        """Every reason not to send this daemon work now, each naming what to fix."""
        problems = []
        if self.stopping:
            problems.append("shutting down")
        if self._engine_task is None or self._engine_task.done():
            problems.append("engine not running")
        for found in self.backend_problems().values():
            problems.extend(found)
        if self.journal.backlog >= self.settings.intake.backlog_limit:
            problems.append("journal backlog full")
        return problems

    def backend_problems(self) -> dict[str, list[str]]:
        """Per backend (the database, each configured action family), why it is unusable;
        sets `remediator_backend_up{backend}` to match."""
        database = self.backends.problems()  # the writer thread, the shared backends' tasks
        write = self.db.write_problem()
        if write is not None:
            database.append(write)
        out = {"database": database}
        for name, config in self.settings.sections.items():
            out[name] = family_problems(name, config)
        for name, found in out.items():
            self.metrics.backend_up.labels(backend=name).set(0 if found else 1)
        return out


SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def family_problems(name: str, config: Any) -> list[str]:
    """What keeps a configured action family's client from working, found without a
    request: a kubeconfig or service-account token that cannot be read, a PostgreSQL DSN
    whose environment variable is unset, a Docker socket that is not there."""
    found = []
    if name == "kubernetes":
        if config.in_cluster:
            path, key = SERVICE_ACCOUNT_TOKEN, "kubernetes.in_cluster"
        else:
            path = Path(config.kubeconfig or "~/.kube/config").expanduser()
            key = "kubernetes.kubeconfig"
        if not os.access(path, os.R_OK) or not path.is_file():
            found.append(f"{key}: cannot read {path}")
    elif name == "postgres":
        for conn in config.connections.values():
            if conn.dsn is None:
                found.append(
                    f"postgres.connections.{conn.name}: ${conn.dsn_env} is unset (restart with it)"
                )
    elif name == "docker":
        socket = Path(config.socket)
        if not socket.exists():
            found.append(f"docker.socket: {socket} does not exist")
    return found


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


async def serve(settings: Settings, *, config_loader: Callable[[], Settings] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; SIGHUP reloads config and rules. Returns the
    exit code."""
    daemon = Daemon(settings, config_loader=config_loader)
    try:
        await daemon.start()
    except (errors.RuleFileErrors, errors.RemediatorError) as exc:
        log.error("start_failed", error=str(exc))
        return 1
    # What start-up built (rules, indexes, restored state) lives as long as the process:
    # move it out of the collector's sight, and collect young objects less often — an
    # alert storm allocates fast, and each full collection would stall intake.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)
    loop = asyncio.get_running_loop()
    alarm = server.FdAlarm(daemon.metrics)
    loop.set_exception_handler(server.on_loop_exception(alarm))
    limits = server.Limits(settings.http, daemon.metrics)
    app = make_app(daemon, limits=limits)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = server.Site(
        runner, settings.listen_host, settings.listen_port, limits=limits, alarm=alarm
    )
    try:
        await site.start()
    except OSError as exc:
        log.error(
            "listen_failed", listen=f"{settings.listen_host}:{settings.listen_port}", error=str(exc)
        )
        await daemon.shutdown()
        await runner.cleanup()
        return 1
    log.info(
        "listening", listen=f"{settings.listen_host}:{settings.listen_port}",
        max_connections=limits.cap, header_timeout=settings.http.header_timeout,
    )  # fmt: skip
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(daemon.reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    await daemon.shutdown()
    await runner.shutdown()
    await runner.cleanup()
    return 0
