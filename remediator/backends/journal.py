"""The journal of acknowledged alerts: a 2xx is only sent once alerts are in it.

One row per accepted request holds the source's own payload (for Alertmanager, the
body as received) — no re-encoding on the hot path, one insert per request however
many alerts it carries. The row is removed once every alert in it has been decided,
so on restart whatever is left is exactly the unfinished work, replayed through the
source adapter. `backlog` counts alerts not yet finished; intake answers 503 once it
reaches the bound, so memory and recovery time stay bounded.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from remediator.backends.sqlite import Batcher, Database
from remediator.models.alert import Alert, iso, parse_time

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""

Also = Callable[[sqlite3.Connection], None]
"""A write that must commit in the same transaction as a journal row, or not at all."""
Replay = Callable[[str, bytes, dt.datetime], list[Alert]]
"""(source, payload, received_at) → the alerts of a journaled request, parsed again."""


UNBOUNDED = 2**53
"""An `append` limit that never refuses (a request of resolves only)."""


class JournalEntry:
    """One alert of one journaled request: the unit the engine decides and finishes."""

    __slots__ = ("alert", "kept", "request_id", "row")

    def __init__(self, row: int | str, alert: Alert, request_id: str) -> None:
        """`row`: the journal's id of the request (a SQLite rowid, a stream entry id)."""
        self.row = row
        self.alert = alert
        self.request_id = request_id
        self.kept = False
        """Left for the next start (`Journal.keep`): no longer in the backlog."""

    def __repr__(self) -> str:
        return f"JournalEntry(row={self.row}, fingerprint={self.alert.fingerprint!r})"


class Journal(Protocol):
    @property
    def backlog(self) -> int:
        """Alerts journaled and not yet finished."""

    async def append(
        self, *, source: str, payload: bytes, alerts: Sequence[Alert], request_id: str,
        received_at: dt.datetime, also: Also | None = None, limit: int | None = None,
    ) -> list[JournalEntry]:  # fmt: skip
        """Durably store one request's alerts; returns the entries this replica decides
        now (the embedded journal: one per alert; a shared journal hands them out to the
        replicas through `run` instead, and returns none). `also` is a write committed with
        them (in the same transaction, for the embedded journal): what the intake must
        remember with the alerts. `limit`: the backlog past which a shared journal refuses
        them atomically (`errors.Backpressure`; None: `intake.backlog_limit`; the caller
        checked it for this replica)."""

    async def run(self, submit: Callable[[list[JournalEntry]], None], replay: Replay) -> None:
        """Hand entries to the engine until cancelled (a shared journal: read, claim from
        dead replicas, renew what this one holds); the embedded journal has nothing to do."""

    def finish(self, entry: JournalEntry) -> None:
        """The entry's alert is decided; its request leaves the journal with its last alert."""

    def keep(self, entry: JournalEntry) -> None:
        """The entry's alert could not be decided for good (its audit row failed): it stops
        counting in the backlog, and its request stays journaled for the next start."""

    async def pending(self, replay: Replay) -> list[JournalEntry]:
        """Unfinished entries left by an earlier run, oldest first."""


class SqliteJournal:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._backlog = 0
        self._open: dict[int | str, int] = {}
        """Row id → alerts of that request not yet finished."""
        self._kept_rows: set[int | str] = set()
        """Requests with an alert kept for the next start: never removed in this run."""
        self._removals: Batcher[int | str] = Batcher(db, _delete)

    @property
    def backlog(self) -> int:
        return self._backlog

    async def run(self, submit: Callable[[list[JournalEntry]], None], replay: Replay) -> None:
        return None  # append returns the entries, pending() the ones of an earlier run

    async def append(
        self,
        *,
        source: str,
        payload: bytes,
        alerts: Sequence[Alert],
        request_id: str,
        received_at: dt.datetime,
        also: Also | None = None,
        limit: int | None = None,
    ) -> list[JournalEntry]:
        if not alerts:
            return []
        values = (request_id, source, iso(received_at), payload)
        # Counted before the commit so concurrent requests see each other's load.
        self._backlog += len(alerts)
        try:
            row = await self._db.submit(lambda conn: _insert(conn, values, also))
        except BaseException:
            self._backlog -= len(alerts)
            raise
        self._open[row] = len(alerts)
        return [JournalEntry(row, a, request_id) for a in alerts]

    def finish(self, entry: JournalEntry) -> None:
        if entry.kept:
            return  # already out of the backlog; its row stays
        self._done(entry)

    def keep(self, entry: JournalEntry) -> None:
        if entry.kept:
            return
        entry.kept = True
        self._kept_rows.add(entry.row)
        self._done(entry)

    def _done(self, entry: JournalEntry) -> None:
        self._backlog -= 1
        left = self._open.get(entry.row, 1) - 1
        if left > 0:
            self._open[entry.row] = left
            return
        self._open.pop(entry.row, None)
        if entry.row in self._kept_rows:
            # Decided again on the next start; what was decided is a duplicate then.
            self._kept_rows.discard(entry.row)
            return
        self._removals.add(entry.row)  # a failed batch is logged by the Batcher

    async def pending(self, replay: Replay) -> list[JournalEntry]:
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT id, request_id, source, received_at, payload FROM journal ORDER BY id"
            ).fetchall()
        )
        out: list[JournalEntry] = []
        for row, request_id, source, received_at, payload in rows:
            try:
                alerts = replay(source, bytes(payload), parse_time(received_at))
            except Exception as exc:  # noqa: BLE001 - an unreadable row must not stop the start
                log.error("journal_entry_unreadable", row=row, source=source, error=str(exc))
                self._removals.add(row)
                continue
            if not alerts:
                self._removals.add(row)
                continue
            self._open[row] = len(alerts)
            self._backlog += len(alerts)
            out.extend(JournalEntry(row, a, request_id) for a in alerts)
        return out


def _insert(
    conn: sqlite3.Connection, values: tuple[str, str, str, bytes], also: Also | None
) -> int:
    cur = conn.execute(
        "INSERT INTO journal (request_id, source, received_at, payload) VALUES (?, ?, ?, ?)",
        values,
    )
    if also is not None:
        also(conn)
    return cur.lastrowid or 0


def _delete(conn: sqlite3.Connection, rows: list[int | str]) -> list[None]:
    conn.executemany("DELETE FROM journal WHERE id = ?", [(r,) for r in rows])
    return []
