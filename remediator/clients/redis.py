"""Redis through redis-py's asyncio client: one connection pool, scripts, errors mapped.

The only module that imports `redis`. Every call is bounded by `backend.redis.timeout`
(socket and connect), and every failure of the server or the network becomes
`errors.BackendUnavailable` naming the server (never the URL, which may carry the
password) and what to check. Scripts are registered once (`script`) and run by SHA
(`EVALSHA`, reloaded by redis-py after a server restart flushed its script cache).
No command is retried here (a script run twice could act twice: the backend retries
only what can run twice, or what Redis refused unsent, `Unsent`); instead, the first
connection error drops every idle pooled connection, so after a Redis restart only
the calls in flight at that moment fail, not one call per stale connection later on.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from remediator import errors

Arg = str | bytes | int | float


def describe_url(url: str) -> str:
    """`host:port/db` of a Redis URL, without the password, for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"
    except ValueError:
        return "(unparsable URL)"


class Unsent(errors.BackendUnavailable):
    """The command never reached a Redis that could run it (the connection was refused,
    or the server was still loading its data): running it again cannot double it."""


class Script:
    """A Lua script registered on the server: atomic check-and-change in one call."""

    def __init__(self, client: Redis, source: str, name: str) -> None:
        self._client = client
        self._script = client.raw.register_script(source)
        self.name = name

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await self._script(keys=list(keys), args=list(args))
        except redis.exceptions.ResponseError as exc:
            raise errors.BackendUnavailable(
                f"redis script {self.name} failed on {self._client.server}: {exc}"
            ) from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            await self._client.dropped(exc)
            raise self._client.unavailable(f"script {self.name}", exc) from exc


class Redis:
    """The process's Redis client (a pool); `call` runs one command, `script` registers
    one; `pipeline` runs several in one round trip (MULTI/EXEC when `transaction`)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.server = describe_url(url)
        self.timeout = timeout
        # A blocking pool: a storm waits (up to `timeout`) for one of its connections
        # instead of failing when all are busy.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=timeout * 5,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self.raw = redis.asyncio.Redis(connection_pool=pool)

    def unavailable(self, what: str, exc: BaseException) -> errors.BackendUnavailable:
        unsent = isinstance(exc, redis.exceptions.BusyLoadingError) or (
            isinstance(exc, redis.exceptions.ConnectionError) and "connecting to" in str(exc)
        )
        kind = Unsent if unsent else errors.BackendUnavailable
        return kind(
            f"redis {what} on {self.server}: {type(exc).__name__}: {exc}; is the server up "
            "and the URL in backend.redis.url_env right?"
        )

    async def dropped(self, exc: BaseException) -> None:
        """After a connection error, close the idle pooled connections: the server may
        have restarted, and each of them would fail its next call once."""
        if isinstance(exc, redis.exceptions.ConnectionError | OSError):
            with contextlib.suppress(Exception):  # best effort: the error is raised anyway
                await self.raw.connection_pool.disconnect(inuse_connections=False)

    def script(self, source: str, name: str) -> Script:
        return Script(self, source, name)

    async def call(self, *args: Arg) -> Any:
        """One command (a blocking read must block for less than `timeout`)."""
        try:
            return await self.raw.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except (redis.exceptions.RedisError, OSError) as exc:
            await self.dropped(exc)
            raise self.unavailable(str(args[0]), exc) from exc

    async def pipeline(self, commands: Sequence[Sequence[Arg]], *, transaction: bool) -> list[Any]:
        try:
            async with self.raw.pipeline(transaction=transaction) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute())
        except (redis.exceptions.RedisError, OSError) as exc:
            await self.dropped(exc)
            raise self.unavailable("pipeline", exc) from exc

    async def subscribe(self, channel: str) -> Any:
        """A pub/sub object subscribed to `channel` (read it with `messages`)."""
        try:
            pubsub = self.raw.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(channel)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self.unavailable("SUBSCRIBE", exc) from exc
        return pubsub

    async def message(self, pubsub: Any, *, timeout: float) -> bytes | None:
        """The next message's data on a subscription, or None after `timeout` seconds."""
        try:
            msg = await pubsub.get_message(timeout=timeout)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self.unavailable("pub/sub read", exc) from exc
        if msg is None or msg.get("type") != "message":
            return None
        data: bytes = msg["data"]
        return data

    async def close(self) -> None:
        await self.raw.aclose()
