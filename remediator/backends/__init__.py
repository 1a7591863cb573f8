"""Journal, state and audit behind small interfaces; a backend is chosen in config.

`open_backends` builds the three from `backend.kind` and `audit.kind`; the engine only
ever sees the interfaces (`journal.Journal`, `state.State`, `audit.Audit`):

    backend.kind  embedded: SqliteJournal + EmbeddedState (SQLite beside the journal,
                  limits in memory), one replica
                  redis:    RedisJournal (a stream, consumer group) + RedisState (Lua)
    audit.kind    sqlite:   SqliteAudit in the same SQLite file
                  postgres: PostgresAudit, written through a spool in Redis (so it needs
                  backend.kind redis)

The SQLite database is always opened (the sqlite audit and the embedded journal live
there); with `backend.kind: redis` and `audit.kind: postgres` it stays empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from remediator import errors
from remediator.backends import audit as audit_mod
from remediator.backends import journal as journal_mod
from remediator.backends import sns as sns_mod
from remediator.backends import state as state_mod
from remediator.backends.sqlite import Database
from remediator.settings import Settings

log = structlog.get_logger(__name__)


class Backends:
    """The journal, state and audit the config chose, with what they run beside the engine."""

    def __init__(self, settings: Settings) -> None:
        self.db = Database(
            settings.data_dir / "remediator.db",
            fsync=settings.journal_fsync,
            schema=journal_mod.SCHEMA + audit_mod.SCHEMA + state_mod.SCHEMA + sns_mod.SCHEMA,
            migrations=[audit_mod.migrate],
        )
        self.redis: Any = None
        self.journal: journal_mod.Journal
        self.state: state_mod.State
        self.audit: audit_mod.Audit
        self._tasks: list[asyncio.Task[None]] = []
        self._settings = settings
        if settings.backend.kind == "redis":
            from remediator.backends import redis as redis_backend  # noqa: PLC0415 - only when chosen
            from remediator.clients.redis import Redis  # noqa: PLC0415 - only when chosen

            cfg = settings.backend.redis
            assert cfg.url is not None  # settings refuse redis without a URL
            self.redis = Redis(cfg.url, timeout=cfg.timeout)
            self._lease_client = Redis(cfg.url, timeout=cfg.timeout)
            self.state = redis_backend.RedisState(
                self.redis, cfg, replica=redis_backend.new_replica_id(), lease=self._lease_client
            )
            self.journal = redis_backend.RedisJournal(
                self.redis, cfg, limit=settings.intake.backlog_limit, state=self.state,
                local=self.db,
            )  # fmt: skip
        else:
            self.journal = journal_mod.SqliteJournal(self.db)
            self.state = state_mod.EmbeddedState(self.db)
        if settings.audit.kind == "postgres":
            from remediator.backends import postgres as postgres_backend  # noqa: PLC0415
            from remediator.backends import redis as redis_backend  # noqa: PLC0415

            if self.redis is None:
                raise errors.ConfigError(
                    "audit.kind",
                    "postgres needs backend.kind: redis (its rows wait in Redis while "
                    "PostgreSQL is down)",
                )
            spool = redis_backend.Spool(self.redis, settings.backend.redis, state=self.state)  # type: ignore[arg-type]  # RedisState when redis
            self.audit = postgres_backend.PostgresAudit(spool, settings.audit.postgres)
        else:
            self.audit = audit_mod.SqliteAudit(self.db)

    @property
    def shared(self) -> bool:
        return self.redis is not None

    async def start(self, now: float) -> None:
        """Open everything; the shared state takes this replica's lease."""
        await self.db.start()
        if isinstance(self.state, state_mod.EmbeddedState):
            await self.state.load()
        else:
            from remediator.backends import redis as redis_backend  # noqa: PLC0415 - only when chosen

            weak = await redis_backend.persistence(self.redis)
            if weak is not None:
                log.warning(
                    "redis_persistence_weak", problem=weak,
                    hint="run Redis with appendonly yes and appendfsync always "
                    "(README, 'What a 2xx guarantees')",
                )  # fmt: skip
            await self.state.start(now)  # type: ignore[attr-defined]  # RedisState
            await self.journal.start()  # type: ignore[attr-defined]  # RedisJournal
        start = getattr(self.audit, "start", None)
        if start is not None:
            await start()

    def run(self, engine: Any, replay: Callable[..., Any], clock: Callable[[], float]) -> None:
        """Start what runs beside the engine: the journal's reader, the shared state's
        lease and polls, the audit's flusher (each only where the backend has one)."""
        if self.shared:
            self._tasks.append(
                asyncio.create_task(self.journal.run(engine.submit, replay), name="journal")
            )
            self._tasks.append(
                asyncio.create_task(self.state.run(engine, clock), name="shared-state")  # type: ignore[attr-defined]  # RedisState
            )
        run_audit = getattr(self.audit, "run", None)
        if run_audit is not None:
            self._tasks.append(asyncio.create_task(run_audit(), name="audit-flusher"))

    async def stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def close(self) -> None:
        await self.stop_tasks()
        close_audit = getattr(self.audit, "close", None)
        if close_audit is not None:
            await close_audit()
        close_state = getattr(self.state, "close", None)
        if close_state is not None:
            await close_state()
        if self.redis is not None:
            await self.redis.close()
            await self._lease_client.close()
        await self.db.close()

    def problems(self) -> list[str]:
        out = []
        if not self.db.alive:
            out.append(f"database writer for {self.db.path} is not running")
        for task in self._tasks:
            if task.done():
                out.append(f"{task.get_name()} task stopped")
        return out
