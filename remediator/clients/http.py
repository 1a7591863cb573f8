"""Outgoing HTTP (webhooks to chat, later Alertmanager): timeouts split, errors mapped."""

from __future__ import annotations

from typing import Any

import aiohttp

from remediator import errors


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
        t = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        try:
            async with self._session.post(url, json=body, timeout=t, headers=headers) as resp:
                await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise errors.TemporaryError(f"{what}: no answer within {timeout:.0f}s") from exc
        except aiohttp.ClientError as exc:
            raise errors.TemporaryError(f"{what}: {type(exc).__name__}") from exc
        if status == 429 or status >= 500:
            raise errors.TemporaryError(f"{what}: HTTP {status}", delay=1.0)
        if status >= 400:
            raise errors.PermanentError(f"{what}: HTTP {status}")
        return status
