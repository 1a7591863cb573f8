"""The journal of acknowledged alerts: a 2xx is only sent once alerts are in it.

An entry is removed once every rule has decided its alert, so on restart whatever is
left is exactly the unfinished work. `backlog` counts entries not yet finished; intake
answers 503 once it reaches the bound, so memory and recovery time stay bounded.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from remediator.backends.sqlite import Database
from remediator.models.alert import Alert

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    alert TEXT NOT NULL
);
"""


class Entry(Protocol):
    id: int
    alert: Alert
    request_id: str


class JournalEntry:
    __slots__ = ("alert", "id", "request_id")

    def __init__(self, id_: int, alert: Alert, request_id: str) -> None:
        self.id = id_
        self.alert = alert
        self.request_id = request_id


class Journal(Protocol):
    @property
    def backlog(self) -> int: ...

    async def append(self, alerts: Sequence[Alert], request_id: str) -> list[JournalEntry]: ...

    def finish(self, entry_id: int) -> None: ...

    async def pending(self) -> list[JournalEntry]: ...


class SqliteJournal:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._backlog = 0

    @property
    def backlog(self) -> int:
        return self._backlog

    async def load_backlog(self) -> None:
        self._backlog = await self._db.read(
            lambda c: c.execute("SELECT count(*) FROM journal").fetchone()[0]
        )

    async def append(self, alerts: Sequence[Alert], request_id: str) -> list[JournalEntry]:
        rows = [json.dumps(a.to_json(), separators=(",", ":")) for a in alerts]

        def job(conn: sqlite3.Connection) -> list[int]:
            ids = []
            for row in rows:
                cur = conn.execute(
                    "INSERT INTO journal (request_id, alert) VALUES (?, ?)", (request_id, row)
                )
                ids.append(cur.lastrowid or 0)
            return ids

        # Counted before the commit so concurrent requests see each other's load.
        self._backlog += len(alerts)
        try:
            ids = await self._db.submit(job)
        except BaseException:
            self._backlog -= len(alerts)
            raise
        return [JournalEntry(i, a, request_id) for i, a in zip(ids, alerts, strict=True)]

    def finish(self, entry_id: int) -> None:
        """Drop a finished entry. Queued after its decisions, so it commits with or after them."""
        self._backlog -= 1
        fut = self._db.submit(lambda c: c.execute("DELETE FROM journal WHERE id = ?", (entry_id,)))
        fut.add_done_callback(_log_failure)

    async def pending(self) -> list[JournalEntry]:
        rows = await self._db.read(
            lambda c: c.execute("SELECT id, request_id, alert FROM journal ORDER BY id").fetchall()
        )
        out = []
        for id_, request_id, blob in rows:
            try:
                out.append(JournalEntry(id_, Alert.from_json(json.loads(blob)), request_id))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("journal_entry_unreadable", id=id_, error=str(exc))
        return out


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("journal_finish_failed", error=str(fut.exception()))
