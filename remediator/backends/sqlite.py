"""One SQLite database owned by one writer thread: group commit without blocking the loop.

Callers on the event loop submit small jobs (functions of a connection). Jobs submitted
in one turn of the event loop are handed to the writer thread together, at the end of
that turn (one wake-up of the thread per turn, not one per job: under load every wake-up
is a system call and a fight for the GIL with the loop). The writer thread takes every
job handed over so far, runs them in ONE transaction (a savepoint each,
so one bad job does not undo the others), commits once, then resolves all their
futures in one loop callback. Under load that is one commit for hundreds of alerts;
when idle a job is committed at once, so latency stays at one commit.

Reads go to a second connection in a worker thread (WAL lets readers run beside the
writer), so an audit query never stalls intake.

Write health is tracked for readiness: a batch in which a job failed and nothing was
written (a full disk, an unwritable file) counts as a failed write until one commits again;
`probe` writes one small row so a daemon that receives nothing still finds out when
the disk has room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog

from remediator import errors

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
_STOP = object()
MAX_BATCH = 2000
PROBE_SCHEMA = "CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL);"
log = structlog.get_logger(__name__)


class Database:
    def __init__(
        self,
        path: Path,
        *,
        fsync: bool,
        schema: str,
        migrations: Sequence[Callable[[sqlite3.Connection], None]] = (),
    ) -> None:
        """`schema` creates what is missing; `migrations` then bring older tables up to date."""
        self.path = path
        self._fsync = fsync
        self._schema = schema
        self._migrations = tuple(migrations)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._turn: list[tuple[Job, asyncio.Future[Any]]] = []
        """Jobs submitted in this turn of the loop, handed over together at its end."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._closing = False
        self.failed_writes = 0
        """Transactions failed in a row (every job in them); 0 after any commit."""
        self.last_error = ""
        self._probing: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._writer, args=(ready,), name=f"sqlite-writer:{self.path.name}", daemon=True
        )
        self._thread.start()
        await ready
        self._reader = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @property
    def alive(self) -> bool:
        """The writer thread runs: writes can be committed."""
        return self._thread is not None and self._thread.is_alive()

    def write_problem(self) -> str | None:
        """Why writes do not commit now, or None. While they fail, each call queues one
        probe write (one at a time), so the answer recovers with the disk."""
        if self.failed_writes == 0:
            return None
        if self._probing is None or self._probing.done():
            with contextlib.suppress(errors.RemediatorError):
                self._probing = self.submit(_probe)
                self._probing.add_done_callback(_consume)
        return (
            f"database {self.path}: the last {self.failed_writes} write(s) failed: "
            f"{self.last_error} (free disk space, check permissions)"
        )

    async def close(self) -> None:
        if self._thread is not None:
            self._closing = True  # nothing queued after the stop would ever be written
            self._hand_over()
            self._jobs.put(_STOP)
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue a write job; the future resolves once its transaction is committed."""
        if self._thread is None or self._loop is None or self._closing:
            raise errors.RemediatorError(f"database {self.path} is not open")
        if not self._thread.is_alive():  # it died: a queued job would wait for ever
            raise errors.RemediatorError(f"database writer for {self.path} is not running")
        fut: asyncio.Future[T] = self._loop.create_future()
        if not self._turn:
            self._loop.call_soon(self._hand_over)
        self._turn.append((job, fut))
        return fut

    def _hand_over(self) -> None:
        """The jobs of this loop turn to the writer thread, as one item."""
        if self._turn:
            jobs, self._turn = self._turn, []
            self._jobs.put(jobs)

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only job on the reader connection, off the event loop."""

        def run() -> T:
            if self._reader is None:
                raise errors.RemediatorError(f"database {self.path} is not open")
            with self._read_lock:
                return job(self._reader)

        return await asyncio.to_thread(run)

    def _writer(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None  # set by start() before the thread runs
        loop = self._loop
        try:
            conn = self._connect()
            conn.executescript(self._schema + PROBE_SCHEMA)
            for migrate in self._migrations:
                migrate(conn)
        except sqlite3.Error as exc:
            error = errors.RemediatorError(f"cannot open database {self.path}: {exc}")
            loop.call_soon_threadsafe(_fail_one, ready, error)
            return
        loop.call_soon_threadsafe(_resolve_one, ready, None)
        stop = False
        while not stop:
            items = [self._jobs.get()]
            jobs = 0 if items[0] is _STOP else len(items[0])
            while jobs < MAX_BATCH:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                jobs += 0 if item is _STOP else len(item)
            batch: list[tuple[Job, asyncio.Future[Any]]] = []
            for item in items:
                if item is _STOP:
                    stop = True
                else:
                    batch.extend(item)
            if batch:
                loop.call_soon_threadsafe(_resolve_all, self._run_batch(conn, batch))
        conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Job, asyncio.Future[Any]]]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """All jobs in one transaction; if any fails, each job again in its own.

        The fast path has no per-job savepoint; a failure is rare, and re-running the
        jobs one transaction each (after the rollback undid them all) isolates it.
        """
        changes = conn.total_changes
        try:
            conn.execute("BEGIN")
            values = [job(conn) for job, _ in batch]
            conn.execute("COMMIT")
        except Exception:  # noqa: BLE001 - any job error: isolated below, reported to each caller
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        else:
            if conn.total_changes > changes:  # a write went through, not only a no-op job
                self.failed_writes = 0
            return [(fut, value, None) for (_, fut), value in zip(batch, values, strict=True)]
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        wrote = failed = False
        for job, fut in batch:
            before = conn.total_changes
            try:
                conn.execute("BEGIN")
                value = job(conn)
                conn.execute("COMMIT")
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                log.error("sqlite_job_failed", path=str(self.path), error=str(exc))
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                results.append((fut, None, exc))
                self.last_error = str(exc)[:200]
                failed = True
            else:
                results.append((fut, value, None))
                wrote |= conn.total_changes > before
        # Written from this thread, read on the loop: an int swap, and a late read only
        # delays readiness by one probe. A batch counts as a failed write when a job
        # failed and nothing was written: jobs of one loop turn share a batch, and a
        # no-op job beside a failed write says nothing about the disk.
        if wrote:
            self.failed_writes = 0
        elif failed:
            self.failed_writes += 1
        return results


class Batcher(Generic[T]):
    """Rows queued during one turn of the event loop, written by one job.

    Under load hundreds of decisions or journal removals share one job and one commit
    instead of one each; when idle, a row is flushed on the next loop turn.
    """

    def __init__(
        self, db: Database, write: Callable[[sqlite3.Connection, list[T]], list[Any]]
    ) -> None:
        self._db = db
        self._write = write
        self._items: list[T] = []
        self._batch: asyncio.Future[list[Any]] | None = None

    def add(self, item: T) -> tuple[asyncio.Future[list[Any]], int]:
        """Queue one row; returns the future of its batch's results and its index there."""
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            loop.call_soon(self._flush)
        self._items.append(item)
        return self._batch, len(self._items) - 1

    def _flush(self) -> None:
        items, batch = self._items, self._batch
        self._items, self._batch = [], None
        assert batch is not None  # set by the add() that scheduled this flush
        write = self._write
        try:
            done = self._db.submit(lambda conn: write(conn, items))
        except Exception as exc:  # noqa: BLE001 - the database is closed: tell every waiter
            batch.set_exception(exc)
            return
        done.add_done_callback(lambda f: _chain(f, batch))
        batch.add_done_callback(self._log_failure)

    def _log_failure(self, batch: asyncio.Future[list[Any]]) -> None:
        if not batch.cancelled() and batch.exception() is not None:
            log.error("sqlite_batch_failed", path=str(self._db.path), error=str(batch.exception()))


def _probe(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, julianday('now'))")


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a failed probe is the expected case; retrieve it, log nothing


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _resolve_one(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail_one(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
