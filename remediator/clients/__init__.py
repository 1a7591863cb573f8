"""The only place I/O libraries meet remediator: shared clients, errors mapped onto errors.py.

`Clients` holds the process's clients. The HTTP client always exists; a family's client
(Kubernetes API, AWS session, Postgres pools, Docker socket) is opened on first use by
`get`, once even under concurrency, and closed at shutdown in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import aiohttp
import structlog

from remediator.clients import http

T = TypeVar("T")
log = structlog.get_logger(__name__)


class Clients:
    """Process-wide clients, opened once and closed at shutdown."""

    def __init__(self, http_client: http.HttpClient) -> None:
        self.http = http_client
        self._opened: dict[str, tuple[Any, Callable[[Any], Awaitable[None]]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    async def open(cls) -> Clients:
        return cls(http.HttpClient(aiohttp.ClientSession()))

    async def get(
        self,
        key: str,
        opener: Callable[[], Awaitable[T]],
        closer: Callable[[T], Awaitable[None]],
    ) -> T:
        """The client named `key`, opened by `opener` on first use; `closer` at shutdown."""
        found = self._opened.get(key)
        if found is not None:
            return cast(T, found[0])  # stored by the opener of this key, of its type
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self._opened.get(key)
            if found is None:
                client = await opener()
                self._opened[key] = (client, closer)
                return client
        return cast(T, found[0])

    async def close(self) -> None:
        for key, (client, closer) in reversed(list(self._opened.items())):
            try:
                await closer(client)
            except Exception as exc:  # noqa: BLE001 - close the others all the same
                log.warning("client_close_failed", client=key, error=str(exc))
        self._opened.clear()
        await self.http.close()
