"""The audit trail: one row per decision, updated as its story goes on.

An action's row is written *before* the action runs, as `failed/interrupted`, and
updated with the real outcome after: if the process dies mid-action the row already
says so, and the occurrence is never acted on a second time after the restart.
Verification and escalation are written onto the same row, so one row tells
"executed → ineffective → escalated".
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import msgspec
import structlog

from remediator import errors
from remediator.backends.sqlite import Batcher, Database
from remediator.backends.state import Mark
from remediator.models.alert import iso
from remediator.models.decision import Decision, Outcome, Reason

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
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
    evidence TEXT NOT NULL DEFAULT '{}',
    approval TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS decisions_rule ON decisions (rule, id);
CREATE INDEX IF NOT EXISTS decisions_alertname ON decisions (alertname, id);
CREATE INDEX IF NOT EXISTS decisions_started ON decisions (starts_at, id);
CREATE INDEX IF NOT EXISTS decisions_decided_at ON decisions (decided_at);
CREATE INDEX IF NOT EXISTS decisions_target ON decisions (target, id);
"""

COLUMNS = (
    "id", "decided_at", "received_at", "rule", "alertname", "fingerprint", "starts_at",
    "source", "outcome", "reason", "target", "action", "params", "detail", "request_id",
    "attempt", "verification", "escalation", "result", "silence", "alert", "step", "evidence",
    "approval",
)  # fmt: skip
ADDED_COLUMNS = {
    "step": "INTEGER NOT NULL DEFAULT 1",
    "evidence": "TEXT NOT NULL DEFAULT '{}'",
    "approval": "TEXT NOT NULL DEFAULT ''",
}
"""Columns added after the first release: an older database gains them on start."""
DROPPED_INDEXES = ("decisions_occurrence",)
"""Indexes of older versions: `decisions_occurrence` on (fingerprint, starts_at) put each
new row at a random place (fingerprints are hashes), a page of its own to write in
nearly every commit: about a third of the writer's SQLite time per decision at five
alerts a commit. `decisions_started` (starts_at, id) serves the one query by occurrence
(the console's story of a decision: fingerprint and starts_at equal) with rows appended
in order; that query reads the decisions sharing the exact starts_at (about 11 ms for
30,000 of them). The first start after the upgrade builds `decisions_started` over the
rows there are (about 20 ms for 30,000)."""


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older version up to this schema (idempotent)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
    for column, decl in ADDED_COLUMNS.items():
        if column not in have:
            conn.execute(f"ALTER TABLE decisions ADD COLUMN {column} {decl}")
    for index in DROPPED_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    rule: str | None = None
    alertname: str | None = None
    outcome: str | None = None
    target: str | None = None
    fingerprint: str | None = None
    starts_at: str | None = None
    """With fingerprint: the decisions of one occurrence (its story)."""
    since: dt.datetime | None = None
    before: int | None = None
    """Only rows with an id below this (pagination cursor, newest first)."""
    limit: int = 100


class Receipt(NamedTuple):
    """A queued audit row: `batch` resolves (with the ids of its rows) once it is durable."""

    batch: asyncio.Future[list[int]]
    position: int

    async def id(self) -> int:
        return (await self.batch)[self.position]


class Audit(Protocol):
    marks_occurrences: bool
    """Whether a write's `mark` sets its occurrence's status with the row, atomically
    (the PostgreSQL audit's spool, beside the Redis state); else the caller sets it."""

    def record(self, decision: Decision, mark: Mark | None = None) -> Receipt:
        """Queue a decision row now; its receipt resolves once the row is durable (with
        id 0 if `mark`'s token was refused: no row, `errors.Superseded` for the caller).

        Rows written in one loop turn share one batch (one future, one commit)."""

    async def update(
        self, id_: int, *, outcome: Outcome, reason: Reason, detail: str,
        result: Mapping[str, Any] | None = None, mark: Mark | None = None,
    ) -> None:  # fmt: skip
        """Set a row's outcome; `result` is what the action reports (e.g. what it changed).
        Raises `errors.Superseded` if `mark`'s token was refused (nothing written)."""

    def annotate(
        self, id_: int, *, verification: str | None = None, escalation: str | None = None,
        silence: str | None = None, approval: str | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Add verification, escalation, silence or approval text, or the evidence the
        action captured, to a row (not awaited)."""

    async def query(self, q: Query) -> list[dict[str, Any]]: ...

    async def get(self, id_: int) -> dict[str, Any] | None:
        """One decision by id (columns as in `query`), or None."""

    async def histogram(self, since: dt.datetime) -> list[tuple[str, str, int]]:
        """(hour as `YYYY-MM-DDTHH`, outcome, count) of the decisions since a time."""

    async def recent_occurrences(self, since: dt.datetime, *, limit: int) -> list[dict[str, Any]]:
        """At most `limit` decisions since a time, oldest first (columns as in the API, the
        alert decoded): rebuilds dedup, cooldowns, circuits and verifications on start."""


log = structlog.get_logger(__name__)

_Row = tuple[Any, ...]
INSERTED = (*COLUMNS[1:16], "result", "alert", "step", "evidence")
_INSERT = (
    f"INSERT INTO decisions ({', '.join(INSERTED)}) "  # noqa: S608 - fixed names
    f"VALUES ({', '.join('?' * len(INSERTED))})"
)


def row_of(d: Decision) -> _Row:
    """A decision's values in the order of `INSERTED`."""
    return (
        d.decided_at, iso(d.received_at), d.rule, d.alertname, d.fingerprint,
        d.starts_at, d.source, str(d.outcome), str(d.reason), d.target, d.action,
        _dumps(d.params) if d.params else "{}", d.detail, d.request_id, d.attempt,
        json.dumps(dict(d.result), default=str) if d.result else "{}",
        _dumps({"labels": d.labels, "annotations": d.annotations}), d.step,
        json.dumps(dict(d.evidence), default=str) if d.evidence else "{}",
    )  # fmt: skip


def filters(q: Query) -> tuple[tuple[str, str | None], ...]:
    """The equality filters of a query, by column (every backend reads them the same)."""
    return (
        ("rule", q.rule), ("alertname", q.alertname), ("outcome", q.outcome),
        ("target", q.target), ("fingerprint", q.fingerprint), ("starts_at", q.starts_at),
    )  # fmt: skip


HISTOGRAM = (
    "SELECT substr(decided_at, 1, 13) AS hour, outcome, COUNT(*) FROM decisions "
    "WHERE decided_at >= {} GROUP BY hour, outcome ORDER BY hour"
)
"""Decisions per hour and outcome since a time (the placeholder is the backend's)."""

_ENCODER = msgspec.json.Encoder(enc_hook=str)


def _dumps(value: Mapping[str, Any]) -> str:
    """JSON text of the labels and params columns, written for every decision: msgspec's
    (several times cheaper per call than the standard library's); anything it refuses
    as before. Labels are strings; params are validated values (strings, numbers,
    booleans, lists of them: no NaN or datetime, which the two would write differently)."""
    try:
        return _ENCODER.encode(value).decode()
    except (TypeError, ValueError):  # msgspec.EncodeError is a ValueError
        return json.dumps(dict(value), default=str)


def decoded(row: _Row) -> dict[str, Any]:
    """A row of `COLUMNS` as the API shows it (JSON columns decoded)."""
    item = dict(zip(COLUMNS, row, strict=True))
    for column in ("params", "result", "alert", "evidence"):
        item[column] = json.loads(item[column])
    return item


REPLAYED = (
    "id", "rule", "fingerprint", "starts_at", "outcome", "reason", "target",
    "decided_at", "received_at", "verification", "alert", "source", "alertname",
    "step", "escalation", "action", "params", "detail", "attempt",
)  # fmt: skip
"""The columns `recent_occurrences` returns."""


_CONSECUTIVE_BELOW = 1 << 62
"""While the largest id is below this, SQLite gives each new row the largest id + 1."""


def _insert(conn: sqlite3.Connection, rows: list[_Row]) -> list[int]:
    """Insert a batch of rows; their ids, in order.

    One executemany instead of one execute per row (the per-row Python work ran with
    the GIL held, beside the event loop). The ids follow: with one writer, SQLite gives
    each row the largest id + 1 (https://sqlite.org/autoinc.html) until ids near 2**63,
    where it picks at random — there, one execute per row as before.
    """
    if len(rows) > 1:
        (largest,) = conn.execute("SELECT max(id) FROM decisions").fetchone()
        largest = largest or 0
        if largest < _CONSECUTIVE_BELOW:
            conn.executemany(_INSERT, rows)
            return list(range(largest + 1, largest + 1 + len(rows)))
    return [conn.execute(_INSERT, row).lastrowid or 0 for row in rows]


class SqliteAudit:
    marks_occurrences = False
    """Another store than the state's: the caller sets the occurrence's status."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._rows: Batcher[_Row] = Batcher(db, _insert)

    def record(self, decision: Decision, mark: Mark | None = None) -> Receipt:
        return Receipt(*self._rows.add(row_of(decision)))

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
        data = json.dumps(dict(result or {}), default=str)
        await self._db.submit(
            lambda c: c.execute(
                "UPDATE decisions SET outcome = ?, reason = ?, detail = ?, result = ? WHERE id = ?",
                (str(outcome), str(reason), detail, data, id_),
            )
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
        sets, args = [], []
        if evidence is not None:
            sets.append("evidence = ?")
            args.append(json.dumps(dict(evidence), default=str))
        if approval is not None:
            sets.append("approval = ?")
            args.append(approval)
        if silence is not None:
            sets.append("silence = ?")
            args.append(silence)
        if verification is not None:
            sets.append("verification = ?")
            args.append(verification)
        if escalation is not None:
            sets.append("escalation = ?")
            args.append(escalation)
        if not sets:
            return
        sql = f"UPDATE decisions SET {', '.join(sets)} WHERE id = ?"  # noqa: S608 - fixed names
        try:
            done = self._db.submit(lambda c: c.execute(sql, (*args, id_)))
        except errors.RemediatorError as exc:
            log.error("audit_annotate_failed", decision_id=id_, error=str(exc))
            return
        done.add_done_callback(lambda f: _log_annotate_failure(f, id_))

    async def query(self, q: Query) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[str | int] = []
        for column, value in filters(q):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if q.since is not None:
            where.append("decided_at >= ?")
            args.append(iso(q.since))
        if q.before is not None:
            where.append("id < ?")
            args.append(q.before)
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions"  # noqa: S608 - fixed names
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(q.limit)
        rows = await self._db.read(lambda c: c.execute(sql, args).fetchall())
        return [decoded(row) for row in rows]

    async def histogram(self, since: dt.datetime) -> list[tuple[str, str, int]]:
        sql = HISTOGRAM.format("?")
        rows = await self._db.read(lambda c: c.execute(sql, (iso(since),)).fetchall())
        return [(str(h), str(o), int(n)) for h, o, n in rows]

    async def get(self, id_: int) -> dict[str, Any] | None:
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE id = ?"  # noqa: S608 - fixed names
        rows = await self._db.read(lambda c: c.execute(sql, (id_,)).fetchall())
        return decoded(rows[0]) if rows else None

    async def recent_occurrences(self, since: dt.datetime, *, limit: int) -> list[dict[str, Any]]:
        keys = REPLAYED
        sql = (
            f"SELECT {', '.join(keys)} FROM decisions "  # noqa: S608 - fixed names
            "WHERE decided_at >= ? ORDER BY id DESC LIMIT ?"
        )
        rows = await self._db.read(lambda c: c.execute(sql, (iso(since), limit)).fetchall())
        rows.reverse()
        return [dict(zip(keys, row, strict=True)) for row in rows]


def _log_annotate_failure(fut: asyncio.Future[Any], decision_id: int) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("audit_annotate_failed", decision_id=decision_id, error=str(fut.exception()))
