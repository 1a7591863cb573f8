"""Is this alert silenced? Asked of Alertmanager, evaluated with our own matchers.

Alertmanager does not deliver silenced alerts, but a silence can be created between
delivery and action, a group can mix silenced and unsilenced alerts, and SNS alarms
never pass through Alertmanager at all: so the engine asks before acting.

The silence list is fetched at most once per `cache_ttl` (by the engine clock), and a
storm of alerts waiting for a refresh shares one request. Matching reuses
`matching.matchers` — Alertmanager's semantics, one implementation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from remediator import errors
from remediator.engine.clock import Clock
from remediator.matching import matchers
from remediator.matching.matchers import Matcher
from remediator.metrics import Metrics
from remediator.models.alert import Alert, iso, parse_time
from remediator.models.decision import Reason
from remediator.settings import AlertmanagerApi

log = structlog.get_logger(__name__)


class SilenceApi(Protocol):
    async def list_silences(self) -> list[dict[str, Any]]: ...

    async def create_silence(
        self, *, matchers: list[dict[str, Any]], starts_at: dt.datetime, ends_at: dt.datetime,
        comment: str, created_by: str,
    ) -> str: ...  # fmt: skip

    async def expire_silence(self, silence_id: str) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str

    def covers(self, labels: Mapping[str, str], now: float) -> bool:
        return self.starts_at <= now < self.ends_at and matchers.match_all(self.matchers, labels)


def parse_silences(raw: Sequence[Mapping[str, Any]]) -> list[Silence]:
    """Active and pending silences from API v2 JSON; unreadable ones are logged and skipped."""
    out = []
    for item in raw:
        status = item.get("status")
        state = status.get("state") if isinstance(status, Mapping) else None
        if state == "expired":
            continue
        try:
            ms = tuple(matchers.from_silence(m) for m in item.get("matchers", []))
            out.append(
                Silence(
                    id=str(item["id"]),
                    matchers=ms,
                    starts_at=parse_time(str(item["startsAt"])).timestamp(),
                    ends_at=parse_time(str(item["endsAt"])).timestamp(),
                    created_by=str(item.get("createdBy", "")),
                    comment=str(item.get("comment", "")),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("silence_unreadable", silence=str(item.get("id")), error=str(exc))
    return out


class Silences:
    """The engine's `silenced?` guard, and the silences it holds while remediating."""

    def __init__(
        self, *, api: SilenceApi, config: AlertmanagerApi, clock: Clock, metrics: Metrics
    ) -> None:
        self._api = api
        self._config = config
        self._clock = clock
        self._metrics = metrics
        self._silences: list[Silence] = []
        self._fetched_at: float | None = None
        self._refresh: asyncio.Future[list[Silence]] | None = None
        self._error: errors.ActionError | None = None
        self._held: dict[str, _Held] = {}
        """Occurrence (fingerprint + startsAt) → the silence we created for it."""

    async def check(self, alert: Alert) -> tuple[Reason, str] | None:
        """(reason, detail) to skip the alert, or None to go on."""
        now = self._clock.now()
        try:
            silences = await self._current(now)
        except errors.ActionError as exc:
            self._metrics.silence_checks.labels(result="error").inc()
            if self._config.on_error == "fail_open":
                log.warning("silence_check_failed", policy="fail_open", error=str(exc))
                return None
            return (
                Reason.SILENCE_CHECK_FAILED,
                f"cannot ask Alertmanager about silences ({exc}); alertmanager.on_error="
                "fail_closed keeps hands off",
            )
        own = {h.silence_id for h in self._held.values()}
        for s in silences:
            if s.id in own:
                continue  # ours, made while remediating: it must not stop the next step
            if s.covers(alert.labels, now):
                self._metrics.silence_checks.labels(result="silenced").inc()
                return Reason.SILENCED, f"silence {s.id} by {s.created_by}: {s.comment[:200]}"
        self._metrics.silence_checks.labels(result="not_silenced").inc()
        return None

    def invalidate(self) -> None:
        """Forget the cached list (after we created or expired a silence ourselves)."""
        self._fetched_at = None

    async def _current(self, now: float) -> list[Silence]:
        if self._fetched_at is not None and now - self._fetched_at < self._config.cache_ttl:
            if self._error is not None:
                # A failure is remembered as long as a success would be: with Alertmanager
                # down, a storm must not wait out one timeout per alert.
                raise self._error
            return self._silences
        if self._refresh is None:
            # One request however many alerts wait: they all await the same future.
            self._refresh = asyncio.ensure_future(self._fetch(now))
        refresh = self._refresh
        try:
            return await asyncio.shield(refresh)
        finally:
            if refresh.done() and self._refresh is refresh:
                self._refresh = None

    async def _fetch(self, now: float) -> list[Silence]:
        # Stamped when the answer came, not when it was asked: with slow or unreachable
        # Alertmanagers the fetch itself can take most of cache_ttl.
        try:
            silences = parse_silences(await self._api.list_silences())
        except errors.ActionError as exc:
            self._error, self._fetched_at = exc, self._clock.now()
            raise
        self._silences, self._fetched_at, self._error = silences, self._clock.now(), None
        return silences

    async def hold(self, alert: Alert, *, rule: str, decision_id: int, duration: float) -> str:
        """Silence this alert's labels for `duration` while its remediation takes effect.

        Returns a line for the audit. Never raises: a failed silence is reported, not fatal.
        """
        now = self._clock.now()
        for occ in [o for o, h in self._held.items() if h.ends_at <= now]:
            del self._held[occ]  # ended on its own: alerts that never resolve leave nothing
        held = self._held.get(alert.occurrence)
        if held is not None:
            # Never extend: the silence made for the first attempt keeps its end.
            return f"silence {held.silence_id} already held for this occurrence"
        starts = dt.datetime.fromtimestamp(now, dt.UTC)
        ends = dt.datetime.fromtimestamp(now + duration, dt.UTC)
        silence_matchers = [
            {"name": k, "value": v, "isRegex": False, "isEqual": True}
            for k, v in sorted(alert.labels.items())
        ]
        try:
            silence_id = await self._api.create_silence(
                matchers=silence_matchers,
                starts_at=starts,
                ends_at=ends,
                created_by="remediator",
                comment=f"remediator rule {rule} acted on this alert (audit decision "
                f"{decision_id}); silenced while the fix takes effect",
            )
        except errors.ActionError as exc:
            self._metrics.silences_managed.labels(operation="create", result="error").inc()
            log.warning(
                "silence_create_failed", rule=rule, fingerprint=alert.fingerprint, error=str(exc)
            )
            return f"silence not created: {exc}"
        self._metrics.silences_managed.labels(operation="create", result="ok").inc()
        text = f"silence {silence_id} until {iso(ends)}"
        self._held[alert.occurrence] = _Held(silence_id, decision_id, text, now + duration)
        self.invalidate()
        log.info("silence_created", rule=rule, fingerprint=alert.fingerprint, silence_id=silence_id)
        return text

    def held_record(self, alert: Alert) -> dict[str, Any] | None:
        """The silence held for this occurrence, as a remediation's record keeps it."""
        held = self._held.get(alert.occurrence)
        return None if held is None else dataclasses.asdict(held)

    def adopt(self, alert: Alert, record: dict[str, Any]) -> None:
        """Take back, after a restart, a silence held for an occurrence still remediated."""
        self._held[alert.occurrence] = _Held(
            str(record["silence_id"]),
            int(record["decision_id"]),
            str(record["text"]),
            float(record["ends_at"]),
        )

    async def release(self, alert: Alert) -> tuple[int, str] | None:
        """Expire the silence held for this resolved occurrence, if any.

        Returns (decision id, full audit text) for the row that created it, or None.
        """
        held = self._held.pop(alert.occurrence, None)
        if held is None:
            return None
        silence_id, decision_id, created = held.silence_id, held.decision_id, held.text
        if self._clock.now() >= held.ends_at:
            return decision_id, f"{created}; ended before the alert resolved"
        try:
            await self._api.expire_silence(silence_id)
        except errors.ActionError as exc:
            self._metrics.silences_managed.labels(operation="expire", result="error").inc()
            log.warning("silence_expire_failed", silence_id=silence_id, error=str(exc))
            return decision_id, f"{created}; not expired on resolve: {exc}"
        self._metrics.silences_managed.labels(operation="expire", result="ok").inc()
        self.invalidate()
        log.info("silence_expired", fingerprint=alert.fingerprint, silence_id=silence_id)
        return decision_id, f"{created}; expired when the alert resolved"


@dataclasses.dataclass(frozen=True, slots=True)
class _Held:
    silence_id: str
    decision_id: int
    text: str
    ends_at: float
