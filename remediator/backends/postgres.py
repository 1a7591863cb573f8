"""The audit trail in PostgreSQL, written through a durable spool so decisions never wait
for it.

Every write — a new row, an outcome, a verification or escalation note — is first
appended to the spool (a Redis stream shared by the replicas: `backends.redis.Spool`),
which also hands out the row ids: `record` resolves once the row is in the spool, so a
decision is as durable as the journal it came from, whether PostgreSQL is up or not.
One replica at a time (a lease) applies the spool to PostgreSQL, in order, in one
transaction per batch, and deletes what it applied. Applying is idempotent (a new row
is `INSERT … ON CONFLICT (id) DO NOTHING`, the rest are plain `UPDATE`s of the same
values), so a batch applied twice — the flusher died between the commit and the
delete — changes nothing: no row lost, none doubled. While PostgreSQL is down the
spool grows (bounded by what the replicas decide) and the decisions API answers 503.

Ids come from the spool, not from PostgreSQL: max(counter + 1, Unix ms * 1000), so a
spool whose counter was lost (a Redis without persistence) still never reuses an id.
Reads (`query`, `get`) go to PostgreSQL: a row shows there once flushed (milliseconds).
Migrations are versioned (`remediator_migrations`), applied at start (and, if it was
down, before the first flush) under an advisory lock, each at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from remediator import errors
from remediator.backends import audit
from remediator.backends import redis as redis_backend
from remediator.backends.audit import COLUMNS, INSERTED, REPLAYED, Query, Receipt
from remediator.backends.state import Mark
from remediator.clients import postgres
from remediator.models.alert import iso
from remediator.models.decision import Decision, Outcome, Reason
from remediator.settings import PostgresAudit as Config

log = structlog.get_logger(__name__)

BATCH = 500
"""Spooled writes applied per transaction."""
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE decisions (
            id BIGINT PRIMARY KEY,
            decided_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            rule TEXT NOT NULL,
            alertname TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            source TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT NOT NULL,
            target TEXT NOT NULL,
            action TEXT NOT NULL,
            params TEXT NOT NULL,
            detail TEXT NOT NULL,
            request_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            verification TEXT NOT NULL DEFAULT '',
            escalation TEXT NOT NULL DEFAULT '',
            result TEXT NOT NULL DEFAULT '{}',
            silence TEXT NOT NULL DEFAULT '',
            alert TEXT NOT NULL DEFAULT '{}',
            step INTEGER NOT NULL DEFAULT 1,
            evidence TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX decisions_rule ON decisions (rule, id DESC);
        CREATE INDEX decisions_alertname ON decisions (alertname, id DESC);
        CREATE INDEX decisions_outcome ON decisions (outcome, id DESC);
        CREATE INDEX decisions_decided_at ON decisions (decided_at);
        CREATE INDEX decisions_occurrence ON decisions (fingerprint, starts_at);
        """,
    ),
    (2, "ALTER TABLE decisions ADD COLUMN IF NOT EXISTS approval TEXT NOT NULL DEFAULT '';"),
    (3, "CREATE INDEX IF NOT EXISTS decisions_target ON decisions (target, id DESC);"),
)
"""(version, SQL) in order; a released migration is never edited, only followed."""
MIGRATION_LOCK = 727_001_013
"""The advisory lock replicas starting together take to migrate one at a time."""


def migration_script() -> str:
    """One transaction applying every migration not yet recorded (idempotent)."""
    parts = [
        "BEGIN;",
        f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK});",
        "CREATE TABLE IF NOT EXISTS remediator_migrations ("
        "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());",
    ]
    for version, sql in MIGRATIONS:
        parts.append(
            "DO $migration$ BEGIN "  # noqa: S608 - our own fixed migrations, no input
            f"IF NOT EXISTS (SELECT 1 FROM remediator_migrations WHERE version = {version}) "
            f"THEN {sql} INSERT INTO remediator_migrations (version) VALUES ({version}); "
            "END IF; END $migration$;"
        )
    parts.append("COMMIT;")
    return "\n".join(parts)


_ROW = "(" + ", ".join(f"${i}" for i in range(1, len(INSERTED) + 2)) + ")"
_INSERT = (
    f"INSERT INTO decisions (id, {', '.join(INSERTED)}) VALUES {_ROW} "  # noqa: S608 - fixed
    "ON CONFLICT (id) DO NOTHING"
)
_UPDATE = "UPDATE decisions SET outcome = $2, reason = $3, detail = $4, result = $5 WHERE id = $1"
_ANNOTATE = (
    "UPDATE decisions SET verification = COALESCE($2, verification), "
    "escalation = COALESCE($3, escalation), silence = COALESCE($4, silence), "
    "approval = COALESCE($5, approval), evidence = COALESCE($6, evidence) WHERE id = $1"
)


Op = tuple[str, int, str, Mark | None]
"""A spooled write: kind (`insert`, `update`, `annotate`), row id, body JSON, and what it
sets on its occurrence with it (atomically, fenced by the mark's token)."""


class Spool(Protocol):
    """A durable, ordered queue of audit writes shared by the replicas."""

    async def push(self, ops: list[Op]) -> list[int]:
        """Append writes in order; kind `insert` gets a new id (its given id is ignored).
        Returns one id per write, in order: the row's, or 0 where the mark's token was
        refused (that write is not appended). Durable once it returns; a push retried
        after an answer was lost is appended once."""

    async def take(self, count: int, *, block: float) -> list[tuple[str, str, int, str]]:
        """The oldest writes, (entry, kind, id, body), waiting up to `block` seconds."""

    async def remove(self, entries: list[str]) -> None: ...

    async def lease(self) -> bool:
        """Take or keep the lease of the one replica that applies the spool."""

    async def length(self) -> int: ...


class PostgresAudit:
    def __init__(self, spool: Spool, config: Config) -> None:
        self._spool = spool
        self._config = config
        self._pool: postgres.Pool | None = None
        self._migrated = False
        self._pending: list[Op] = []
        self._batch: asyncio.Future[list[int]] | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.spooled = 0
        """Writes in the spool, as last seen by the flusher."""

    async def start(self) -> None:
        assert self._config.dsn is not None  # settings refuse postgres without a DSN
        self._pool = await postgres.open_pool(
            name="audit", dsn=self._config.dsn, pool_max=4,
            connect_timeout=self._config.timeout, statement_timeout=self._config.timeout,
        )  # fmt: skip
        try:
            await self._migrate()
        except errors.ActionError as exc:
            log.warning("audit_postgres_unavailable", error=str(exc), at_start=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2.0)
        if self._pool is not None:
            await self._pool.close()

    async def _migrate(self) -> None:
        assert self._pool is not None
        await self._pool.script(migration_script(), what="audit migrations")
        self._migrated = True
        log.info("audit_migrated", version=MIGRATIONS[-1][0])

    # -- writes (through the spool) -------------------------------------------------

    marks_occurrences = True
    """The spool is in the state's Redis: a row and its occurrence's status in one script."""

    def record(self, decision: Decision, mark: Mark | None = None) -> Receipt:
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = loop.create_future()
            loop.call_soon(self._push_batch)
        self._pending.append(("insert", 0, json.dumps(audit.row_of(decision)), mark))
        return Receipt(self._batch, len(self._pending) - 1)

    def _push_batch(self) -> None:
        ops, batch = self._pending, self._batch
        self._pending, self._batch = [], None
        assert batch is not None  # set by the record() that scheduled this

        async def push() -> None:
            try:
                batch.set_result(await self._spool.push(ops))
            except Exception as exc:  # noqa: BLE001 - every waiter learns why
                batch.set_exception(exc)

        self._track(asyncio.ensure_future(push()))
        batch.add_done_callback(_log_failure)

    async def update(
        self,
        id_: int,
        *,
        outcome: Outcome,
        reason: Reason,
        detail: str,
        result: Mapping[str, Any] | None = None,
        mark: Mark | None = None,
    ) -> None:
        body = [str(outcome), str(reason), detail, json.dumps(dict(result or {}), default=str)]
        (done,) = await self._spool.push([("update", id_, json.dumps(body), mark)])
        if not done:
            raise errors.Superseded(
                f"decision {id_}: its occurrence was taken over by another replica"
            )

    def annotate(
        self,
        id_: int,
        *,
        verification: str | None = None,
        escalation: str | None = None,
        silence: str | None = None,
        approval: str | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        shown = None if evidence is None else json.dumps(dict(evidence), default=str)
        notes = [verification, escalation, silence, approval, shown]
        if all(n is None for n in notes):
            return
        body = json.dumps(notes)
        self._track(asyncio.ensure_future(self._spool.push([("annotate", id_, body, None)])))

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)
        fut.add_done_callback(_log_failure)

    # -- applying the spool -------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: while this replica holds the flusher lease, apply the spool."""
        while True:
            redis_backend.checkpoint()
            try:
                if not await self._spool.lease():
                    await asyncio.sleep(self._config.retry_interval)
                    continue
                if not self._migrated:
                    await self._migrate()
                entries = await self._spool.take(BATCH, block=0.5)
                if entries:
                    await self._apply(entries)
                    await self._spool.remove([e[0] for e in entries])
                    self.spooled = await self._spool.length()
            except (errors.ActionError, errors.BackendUnavailable) as exc:
                self.spooled = await _length_or(self._spool, self.spooled)
                log.warning("audit_flush_failed", error=str(exc), spooled=self.spooled)
                await asyncio.sleep(self._config.retry_interval)

    async def _apply(self, entries: list[tuple[str, str, int, str]]) -> None:
        assert self._pool is not None
        inserts, updates, notes = [], [], []
        for _, kind, id_, body in entries:
            values = json.loads(body)
            if kind == "insert":
                inserts.append((id_, *values))
            elif kind == "update":
                updates.append((id_, *values))
            else:
                notes.append((id_, *values, *[None] * (5 - len(values))))  # older: fewer
        # Every insert first: a later update of a row in the same batch then finds it.
        await self._pool.transaction(
            [(_INSERT, inserts), (_UPDATE, updates), (_ANNOTATE, notes)],
            what=f"audit flush of {len(entries)} writes",
        )

    # -- reads --------------------------------------------------------------------------

    async def _fetch(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        assert self._pool is not None
        try:
            return await self._pool.fetch(sql, args, what="audit read", may_retry=True)
        except errors.ActionError as exc:
            raise errors.BackendUnavailable(
                f"{exc}; decisions are still made and spooled ({self.spooled} waiting)"
            ) from exc

    async def query(self, q: Query) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in audit.filters(q):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if q.since is not None:
            args.append(iso(q.since))
            where.append(f"decided_at >= ${len(args)}")
        if q.before is not None:
            args.append(q.before)
            where.append(f"id < ${len(args)}")
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions"  # noqa: S608 - fixed names
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(q.limit)
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"
        rows = await self._fetch(sql, args)
        return [audit.decoded(tuple(r[c] for c in COLUMNS)) for r in rows]

    async def histogram(self, since: dt.datetime) -> list[tuple[str, str, int]]:
        rows = await self._fetch(audit.HISTOGRAM.format("$1"), [iso(since)])
        return [(str(r["hour"]), str(r["outcome"]), int(r["count"])) for r in rows]

    async def get(self, id_: int) -> dict[str, Any] | None:
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE id = $1"  # noqa: S608 - fixed
        rows = await self._fetch(sql, [id_])
        return audit.decoded(tuple(rows[0][c] for c in COLUMNS)) if rows else None

    async def recent_occurrences(self, since: dt.datetime, *, limit: int) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {', '.join(REPLAYED)} FROM decisions "  # noqa: S608 - fixed names
            "WHERE decided_at >= $1 ORDER BY id DESC LIMIT $2"
        )
        rows = await self._fetch(sql, [iso(since), limit])
        rows.reverse()
        return rows


async def _length_or(spool: Spool, default: int) -> int:
    try:
        return await spool.length()
    except errors.BackendUnavailable:
        return default


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("audit_spool_failed", error=str(fut.exception()))
