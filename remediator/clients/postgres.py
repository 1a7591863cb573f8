"""PostgreSQL through asyncpg: one small pool per named connection, errors mapped.

The only module that imports asyncpg. A `Pool` connects lazily (no connection is opened
until the first query), bounds every step (connect, wait for a free connection, the
statement on both the server and the client side) and turns asyncpg's exceptions into
errors.py's tree at this boundary:

    connect phase (nothing was sent)      → TemporaryError: refused, timeout, too many
                                            clients, server starting or shutting down
                                          → PermanentError: bad password, no pg_hba entry,
                                            unknown database, bad DSN
    statement phase (it may have run)     → PermanentError "outcome unknown" when the
                                            statement has side effects (`may_retry`
                                            False), else TemporaryError

Messages name the connection (`postgres.connections.NAME`), the server as
`user@host:port/database` — never the DSN, which carries the password — and what to fix.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from typing import Any

import asyncpg

from remediator import errors

APPLICATION_NAME = "remediator"
"""Sent as `application_name`: shows up in pg_stat_activity and keeps our own sessions
out of what the terminate action selects."""


def describe_dsn(dsn: str) -> str:
    """`user@host:port/database` of a DSN, without the password, for messages."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        user = urllib.parse.unquote(parts.username or "")
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "(unparsable DSN)"
    database = urllib.parse.unquote(parts.path.lstrip("/")) or user or "postgres"
    return f"{user + '@' if user else ''}{host}:{port}/{database}"


class Pool:
    """A small asyncpg pool for one configured connection.

    `name` is the connection's name in config; `where` the config key messages cite.
    """

    def __init__(
        self,
        pool: Any,
        *,
        name: str,
        server: str,
        connect_timeout: float,
        statement_timeout: float,
    ) -> None:
        self._pool = pool
        self.name = name
        self.server = server
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout

    @property
    def _where(self) -> str:
        return f"postgres connection {self.name!r} ({self.server})"

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._pool.close()
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._pool.terminate()

    async def fetch(
        self, sql: str, args: Sequence[Any], *, what: str, may_retry: bool
    ) -> list[dict[str, Any]]:
        """Run one statement and return its rows as dicts.

        `what` names the operation in errors (`terminate queries in conectcrm`);
        `may_retry` says whether running it again after a failure mid-statement is
        harmless (a read) or not (it may already have terminated sessions).
        """
        try:
            conn = await self._pool.acquire(timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise errors.TemporaryError(
                f"{what}: could not connect to {self._where} within "
                f"{self.connect_timeout:g}s (postgres.connections.{self.name}.connect_timeout); "
                "is the server up and reachable?"
            ) from exc
        except Exception as exc:
            raise self._connect_error(what, exc) from exc
        try:
            # The server-side statement_timeout (set on connect) fires first and says so;
            # this client-side bound only catches a server that stopped answering.
            records = await conn.fetch(sql, *args, timeout=self.statement_timeout + 2.0)
        except Exception as exc:
            raise self._statement_error(what, exc, may_retry=may_retry) from exc
        finally:
            await self._release(conn)
        return [dict(r) for r in records]

    async def transaction(
        self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]], *, what: str
    ) -> None:
        """Run statements (each with many argument rows) in ONE transaction: all or none.

        Only for writes that may run twice (idempotent ones): a failure after the commit
        was sent cannot tell whether it happened."""
        try:
            conn = await self._pool.acquire(timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise errors.TemporaryError(
                f"{what}: could not connect to {self._where} within {self.connect_timeout:g}s"
            ) from exc
        except Exception as exc:
            raise self._connect_error(what, exc) from exc
        try:
            async with conn.transaction():
                for sql, rows in steps:
                    if rows:
                        await conn.executemany(sql, rows, timeout=self.statement_timeout + 2.0)
        except Exception as exc:
            raise self._statement_error(what, exc, may_retry=True) from exc
        finally:
            await self._release(conn)

    async def script(self, sql: str, *, what: str) -> None:
        """Run a script of several statements (simple query protocol, no arguments)."""
        try:
            conn = await self._pool.acquire(timeout=self.connect_timeout)
        except Exception as exc:
            raise self._connect_error(what, exc) from exc
        try:
            await conn.execute(sql, timeout=self.statement_timeout + 2.0)
        except Exception as exc:
            raise self._statement_error(what, exc, may_retry=True) from exc
        finally:
            await self._release(conn)

    async def _release(self, conn: Any) -> None:
        try:
            await self._pool.release(conn, timeout=self.connect_timeout)
        except Exception:  # noqa: BLE001 - a broken connection is dropped by the pool
            conn.terminate()

    def _connect_error(self, what: str, exc: BaseException) -> errors.ActionError:
        prefix = f"{what}: cannot connect to {self._where}"
        key = f"postgres.connections.{self.name}"
        if isinstance(exc, asyncpg.InvalidPasswordError):
            return errors.PermanentError(
                f"{prefix}: password authentication failed; check the password in the DSN "
                f"that {key}.dsn_env names"
            )
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            return errors.PermanentError(
                f"{prefix}: the server refused the login ({exc}); check the role in "
                f"{key}.dsn_env and the server's pg_hba.conf"
            )
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return errors.PermanentError(f"{prefix}: {exc}; fix the database in {key}.dsn_env")
        if isinstance(exc, asyncpg.TooManyConnectionsError):
            return errors.TemporaryError(
                f"{prefix}: the server has no connection slot left ({exc})", delay=2.0
            )
        if isinstance(exc, asyncpg.CannotConnectNowError):
            return errors.TemporaryError(f"{prefix}: {exc}", delay=2.0)
        if isinstance(exc, ConnectionRefusedError):
            return errors.TemporaryError(f"{prefix}: connection refused; is the server running?")
        if isinstance(exc, OSError):
            return errors.TemporaryError(f"{prefix}: {exc.strerror or exc}")
        if isinstance(exc, asyncpg.PostgresError):
            return errors.PermanentError(f"{prefix}: {exc.sqlstate} {exc}")
        if isinstance(exc, ValueError | asyncpg.InterfaceError):
            # asyncpg's messages about a malformed DSN may quote it: never show them.
            return errors.PermanentError(
                f"{prefix}: {type(exc).__name__}; check the DSN that {key}.dsn_env names"
            )
        return errors.TemporaryError(f"{prefix}: {type(exc).__name__}: {exc}")

    def _statement_error(
        self, what: str, exc: BaseException, *, may_retry: bool
    ) -> errors.ActionError:
        prefix = f"{what} on {self._where}"
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            return errors.PermanentError(f"{prefix}: permission denied ({exc})")
        if isinstance(exc, asyncpg.PostgresError) and not isinstance(
            exc,
            asyncpg.QueryCanceledError | asyncpg.AdminShutdownError | asyncpg.CannotConnectNowError,
        ):
            return errors.PermanentError(f"{prefix}: {exc.sqlstate} {exc}")
        if isinstance(exc, asyncpg.QueryCanceledError | TimeoutError):
            why = (
                f"no result within {self.statement_timeout:g}s "
                f"(postgres.connections.{self.name}.statement_timeout)"
            )
        else:
            why = f"the connection was lost ({type(exc).__name__}: {exc})"
        if may_retry:
            return errors.TemporaryError(f"{prefix}: {why}")
        return errors.PermanentError(
            f"{prefix}: {why}; outcome unknown: some sessions may have been terminated, "
            "check pg_stat_activity"
        )


async def open_pool(
    *,
    name: str,
    dsn: str,
    pool_max: int,
    connect_timeout: float,
    statement_timeout: float,
    idle_lifetime: float = 60.0,
) -> Pool:
    """A pool that opens no connection yet: the first query connects, so a server that
    is down fails that action (clearly), not the daemon's start-up."""
    pool = asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=pool_max,
        max_inactive_connection_lifetime=idle_lifetime,
        timeout=connect_timeout,
        command_timeout=statement_timeout,
        server_settings={
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(max(1, round(statement_timeout * 1000))),
        },
    )
    try:
        await pool  # with min_size 0 this connects nothing
    except Exception as exc:  # a bad DSN shows up here in some asyncpg versions
        raise errors.PermanentError(
            f"postgres connection {name!r}: cannot set up a pool ({type(exc).__name__}); "
            f"check the DSN that postgres.connections.{name}.dsn_env names"
        ) from exc
    return Pool(
        pool,
        name=name,
        server=describe_dsn(dsn),
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
    )


async def close_pool(pool: Pool) -> None:
    await pool.close()
