"""Outgoing HTTP (chat webhooks, Alertmanager's API): timeouts split, errors mapped."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from remediator import errors

MAX_RESPONSE_BYTES = 8 << 20
"""Largest JSON answer read (a silence list of a busy Alertmanager stays far below)."""


class HttpClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def close(self) -> None:
        await self._session.close()

    async def post_json(
        self,
        url: str,
        body: Any,
        *,
        timeout: float,
        what: str,
        headers: dict[str, str] | None = None,
    ) -> int:
        """POST JSON; 2xx returns the status, 4xx is permanent, 429/5xx and I/O temporary.

        `what` names the call in errors (never the URL: webhook URLs carry secrets).
        """
        status, _ = await self.request(
            "POST", url, body=body, timeout=timeout, what=what, headers=headers
        )
        return status

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        what: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send a request (JSON body if given); return (status, parsed JSON or None).

        Raises errors.TemporaryError for I/O failures, timeouts, 429 and 5xx, and
        errors.PermanentError for other 4xx, each naming `what` and the status.
        """
        t = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        try:
            async with self._session.request(
                method, url, json=body, timeout=t, headers=headers
            ) as resp:
                raw = await _read_bounded(resp, MAX_RESPONSE_BYTES)
                status = resp.status
        except TimeoutError as exc:
            raise errors.TemporaryError(f"{what}: no answer within {timeout:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise errors.NotSent(f"{what}: cannot connect ({type(exc).__name__})") from exc
        except aiohttp.ClientError as exc:
            # Only the type: the message of some aiohttp errors holds the URL, which for a
            # chat webhook is a secret.
            raise errors.TemporaryError(f"{what}: {type(exc).__name__}") from exc
        if status == 429:
            raise errors.NotSent(f"{what}: HTTP 429 (rate limited)", delay=1.0)
        if status >= 500:
            raise errors.TemporaryError(f"{what}: HTTP {status}", delay=1.0)
        if raw is None:
            raise errors.PermanentError(f"{what}: answer larger than {MAX_RESPONSE_BYTES} bytes")
        if status >= 400:
            raise errors.PermanentError(f"{what}: HTTP {status}: {raw[:200]!r}")
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, None


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes (read in chunks: a single
    `content.read(n)` returns whatever has arrived so far, not the whole body)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 << 10):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
