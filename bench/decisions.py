"""Reads the daemon's audit trail (``GET /api/v1/decisions``) to trace alerts to decisions.

The API lists decisions newest first, ``limit`` per page, and pages with ``before=<id>``
(``next_before`` in each answer, ``null`` on the last page). Decision ids grow with
insertion, so a reader that remembers the newest id it has seen only reads what is new
on each poll.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import json
import time
from typing import Any

import aiohttp

from bench import procs

API_PATH = "/api/v1/decisions"
PAGE_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class Decision:
    """The part of one audit record the bench needs."""

    id: int
    fingerprint: str
    #: Seconds since the epoch (the API gives RFC 3339 UTC with microseconds).
    decided_at: float
    outcome: str
    reason: str | None


def _parse(raw: Any) -> Decision:
    if not isinstance(raw, dict):
        raise ValueError(f"a decision is not an object: {raw!r}")
    decided = datetime.datetime.fromisoformat(str(raw["decided_at"]))
    if decided.tzinfo is None:
        raise ValueError(f"decided_at has no time zone: {raw['decided_at']!r}")
    reason = raw.get("reason")
    return Decision(
        id=int(raw["id"]),
        fingerprint=str(raw["fingerprint"]),
        decided_at=decided.timestamp(),
        outcome=str(raw["outcome"]),
        reason=None if reason is None else str(reason),
    )


class DecisionReader:
    """All decisions of one daemon, read incrementally, grouped by alert fingerprint."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._url = base_url + API_PATH
        self._newest_id = 0
        self.by_fingerprint: dict[str, list[Decision]] = collections.defaultdict(list)
        self.total = 0

    async def _page(self, before: int | None) -> tuple[list[Decision], int | None]:
        params = {"limit": str(PAGE_SIZE)}
        if before is not None:
            params["before"] = str(before)
        try:
            async with self._session.get(self._url, params=params) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise procs.BenchError(f"GET {API_PATH} answered {resp.status}: {text[:300]!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise procs.BenchError(f"GET {API_PATH} failed: {exc!r}") from exc
        try:
            body = json.loads(text)
            decisions = [_parse(raw) for raw in body["decisions"]]
            next_before = body.get("next_before")
            return decisions, None if next_before is None else int(next_before)
        except (ValueError, KeyError, TypeError) as exc:
            raise procs.BenchError(
                f"GET {API_PATH} answered an unexpected shape ({exc}); wanted "
                '{"decisions": [{"id", "fingerprint", "decided_at", "outcome"}], '
                f'"next_before": int|null}}; got {text[:300]!r}'
            ) from exc

    async def poll(self) -> int:
        """Read the decisions recorded since the last poll; return how many there were."""
        before: int | None = None
        newest = self._newest_id
        new = 0
        while True:
            page, next_before = await self._page(before)
            reached_known = False
            for decision in page:
                if decision.id <= self._newest_id:
                    reached_known = True
                    break
                newest = max(newest, decision.id)
                self.by_fingerprint[decision.fingerprint].append(decision)
                new += 1
            if reached_known or not page or next_before is None:
                break
            if before is not None and next_before >= before:
                raise procs.BenchError(
                    f"GET {API_PATH}: next_before did not decrease ({before} → {next_before})"
                )
            before = next_before
        self._newest_id = newest
        self.total += new
        return new

    def missing(self, fingerprints: set[str]) -> int:
        """How many of ``fingerprints`` have no decision yet."""
        return sum(1 for fp in fingerprints if fp not in self.by_fingerprint)

    async def wait_for(
        self, fingerprints: set[str], *, timeout: float, idle: float = 5.0
    ) -> tuple[int, float]:
        """Poll until every fingerprint has a decision, or nothing new came for ``idle`` s.

        Returns how many are still missing and the seconds waited. Bounded by ``timeout``.
        """
        began = time.perf_counter()
        last_progress = began
        while True:
            if await self.poll():
                last_progress = time.perf_counter()
            missing = self.missing(fingerprints)
            now = time.perf_counter()
            if not missing or now - last_progress > idle or now - began > timeout:
                return missing, now - began
            await asyncio.sleep(0.2)
