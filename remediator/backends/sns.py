"""What the SNS intake remembers, made durable: MessageIds accepted and each alarm's
last transition, in the journal's database.

SNS delivers at least once, and may re-deliver after the daemon restarted; CloudWatch's
OK does not say when its ALARM began. Both memories (intake/sns.py `MessageIds` and
`AlarmTracker`) therefore outlive the process: they are loaded on start, and written in
the same transaction as the journal row of the alert they produced (`job`), so "the
alert is journaled" and "its MessageId is a duplicate from now on" commit together.
A message that journals nothing (an INSUFFICIENT_DATA, a stale or non-alarm
notification, a subscription) is saved on its own before it is answered (`save`).

Bounded: MessageIds are kept until they would be refused as too old anyway
(`sns.max_age`) and at most `sns.dedup_max_entries`; alarms at most
`intake.sns.MAX_TRACKED_ALARMS`, least recently changed dropped first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import structlog

from remediator.backends.sqlite import Batcher, Database
from remediator.intake import sns
from remediator.models.alert import iso, parse_time

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sns_messages (
    message_id TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sns_messages_expires ON sns_messages (expires);
CREATE TABLE IF NOT EXISTS sns_alarms (
    fingerprint TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    firing_since TEXT,
    updated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sns_alarms_updated ON sns_alarms (updated);
"""

PRUNE_EVERY = 1000
"""Writes between two prunes of what is past its bound (cheap: both are indexed)."""

Job = Callable[[sqlite3.Connection], None]


class Memory:
    """The durable side of an `intake.sns.Gate`."""

    def __init__(self, db: Database, *, max_messages: int) -> None:
        self._db = db
        self._max_messages = max_messages
        self._writes = 0
        self._updated = 0
        """A counter ordering alarm rows by their last change (clock-jump proof)."""
        self._batch: Batcher[Job] = Batcher(db, _run_jobs)

    async def load(self, gate: sns.Gate, *, now: float) -> None:
        """Seed the gate with what earlier runs accepted; prune what is past its bound."""
        max_messages, max_alarms = self._max_messages, gate.alarms.max_entries

        def read(conn: sqlite3.Connection) -> tuple[list[tuple[str, float]], list[tuple[str, ...]]]:
            messages = conn.execute(
                "SELECT message_id, expires FROM sns_messages WHERE expires > ? "
                "ORDER BY expires DESC LIMIT ?",
                (now, max_messages),
            ).fetchall()
            alarms = conn.execute(
                "SELECT fingerprint, state, changed_at, firing_since, updated FROM sns_alarms "
                "ORDER BY updated DESC LIMIT ?",
                (max_alarms,),
            ).fetchall()
            return messages, alarms

        messages, alarms = await self._db.read(read)
        for message_id, expires in reversed(messages):
            gate.seen.remember(message_id, expires)
        for fingerprint, state, changed_at, firing_since, updated in reversed(alarms):
            gate.alarms.restore(
                fingerprint,
                sns.AlarmState(
                    state=state,
                    changed_at=parse_time(changed_at),
                    firing_since=parse_time(firing_since) if firing_since else None,
                ),
            )
            self._updated = max(self._updated, int(updated))
        await self._db.submit(self._prune_job(now=now, max_alarms=max_alarms))
        if messages or alarms:
            log.info("sns_memory_restored", message_ids=len(messages), alarms=len(alarms))

    def job(self, gate: sns.Gate, *, message_id: str, alarm: str | None, now: float) -> Job:
        """The write of one accepted message (and the alarm state it left), to run in the
        transaction of its journal row, or alone through `save`."""
        expires = gate.seen.expires(message_id)
        state = gate.alarms.get(alarm) if alarm is not None else None
        self._updated += 1
        updated = self._updated
        self._writes += 1
        prune = (
            self._prune_job(now=now, max_alarms=gate.alarms.max_entries)
            if self._writes % PRUNE_EVERY == 0
            else None
        )

        def write(conn: sqlite3.Connection) -> None:
            if expires is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO sns_messages (message_id, expires) VALUES (?, ?)",
                    (message_id, expires),
                )
            if alarm is not None and state is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO sns_alarms (fingerprint, state, changed_at, "
                    "firing_since, updated) VALUES (?, ?, ?, ?, ?)",
                    (
                        alarm,
                        state.state,
                        iso(state.changed_at),
                        iso(state.firing_since) if state.firing_since else None,
                        updated,
                    ),
                )
            if prune is not None:
                prune(conn)

        return write

    async def save(self, job: Job) -> None:
        """Commit a job on its own (batched with whatever else this loop turn writes)."""
        batch, _ = self._batch.add(job)
        await batch

    def _prune_job(self, *, now: float, max_alarms: int) -> Job:
        max_messages = self._max_messages

        def prune(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sns_messages WHERE expires <= ?", (now,))
            conn.execute(
                "DELETE FROM sns_messages WHERE message_id NOT IN "
                "(SELECT message_id FROM sns_messages ORDER BY expires DESC LIMIT ?)",
                (max_messages,),
            )
            conn.execute(
                "DELETE FROM sns_alarms WHERE fingerprint NOT IN "
                "(SELECT fingerprint FROM sns_alarms ORDER BY updated DESC LIMIT ?)",
                (max_alarms,),
            )

        return prune


def _run_jobs(conn: sqlite3.Connection, jobs: list[Job]) -> list[None]:
    for job in jobs:
        job(conn)
    return []
