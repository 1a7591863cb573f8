"""The only place I/O libraries meet remediator: shared clients, errors mapped onto errors.py."""

from __future__ import annotations

import dataclasses

import aiohttp

from remediator.clients import http


@dataclasses.dataclass(slots=True)
class Clients:
    """Process-wide clients, opened once at start and closed at shutdown."""

    http: http.HttpClient

    @classmethod
    async def open(cls) -> Clients:
        return cls(http=http.HttpClient(aiohttp.ClientSession()))

    async def close(self) -> None:
        await self.http.close()
