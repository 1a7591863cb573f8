"""One SQLite database owned by one writer thread: group commit without blocking the loop.

Callers on the event loop submit small jobs (functions of a connection). The writer
thread takes every job queued so far, runs them in ONE transaction (a savepoint each,
so one bad job does not undo the others), commits once, then resolves all their
futures in one loop callback. Under load that is one commit for hundreds of alerts;
when idle a job is committed at once, so latency stays at one commit.

Reads go to a second connection in a worker thread (WAL lets readers run beside the
writer), so an audit query never stalls intake.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from remediator import errors

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
_STOP = object()
MAX_BATCH = 2000
log = structlog.get_logger(__name__)


class Database:
    def __init__(self, path: Path, *, fsync: bool, schema: str) -> None:
        self.path = path
        self._fsync = fsync
        self._schema = schema
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

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

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(_STOP)
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def submit(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue a write job; the future resolves once its transaction is committed."""
        if self._thread is None or self._loop is None:
            raise errors.RemediatorError(f"database {self.path} is not open")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((job, fut))
        return fut

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
            conn.executescript(self._schema)
        except sqlite3.Error as exc:
            error = errors.RemediatorError(f"cannot open database {self.path}: {exc}")
            loop.call_soon_threadsafe(_fail_one, ready, error)
            return
        loop.call_soon_threadsafe(_resolve_one, ready, None)
        stop = False
        while not stop:
            batch = [self._jobs.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            conn.execute("BEGIN")
            for item in batch:
                if item is _STOP:
                    stop = True
                    continue
                job, fut = item
                conn.execute("SAVEPOINT job")
                try:
                    value = job(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    results.append((fut, None, exc))
                else:
                    results.append((fut, value, None))
                conn.execute("RELEASE job")
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                log.error("sqlite_commit_failed", path=str(self.path), error=str(exc))
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                results = [(f, None, exc) for f, _, _ in results]
            loop.call_soon_threadsafe(_resolve_all, results)
        conn.close()


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
