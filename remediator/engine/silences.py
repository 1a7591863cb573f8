"""Is this alert silenced? Asked of Alertmanager, evaluated with our own matchers.

Alertmanager does not deliver silenced alerts, but a silence can be created between
delivery and action, a group can mix silenced and unsilenced alerts, and SNS alarms
never pass through Alertmanager at all: so the engine asks before acting.

The silence list is fetched at most once per `cache_ttl` (by the engine clock), and a
storm of alerts waiting for a refresh shares one request. Matching reuses
`matching.matchers` — Alertmanager's semantics, RE2 regexes, one implementation.

A silence that cannot be evaluated (a field missing or of the wrong type, a regex RE2
refuses, no matchers) is never dropped: it *could cover* an alert when everything of it
that can be read holds for the alert — its time window, where readable, includes now and
every readable matcher matches (so a silence none of whose matchers can be read could
cover every alert). Such an alert is skipped with `silence_check_failed` naming the
silence, whatever `on_error` says: that setting is about Alertmanager being unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
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

INLINE_WORK = 250_000
"""Matching work (regex program size x label bytes, summed) evaluated on the event loop;
above it the check runs in a worker thread (RE2 releases the GIL while it matches), so a
huge label value against many or large silence regexes never stalls intake and probes."""


class SilenceApi(Protocol):
    async def list_silences(self) -> list[Any]: ...

    async def create_silence(
        self, *, matchers: list[dict[str, Any]], starts_at: dt.datetime, ends_at: dt.datetime,
        comment: str, created_by: str,
    ) -> str: ...  # fmt: skip

    async def expire_silence(self, silence_id: str) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float | None
    ends_at: float | None
    """None when unreadable: the window is then taken to include now."""
    created_by: str
    comment: str
    unreadable: str = ""
    """Why part of it cannot be evaluated; empty when all of it can."""

    def covers(self, labels: Mapping[str, str], now: float) -> bool | None:
        """True: it silences these labels now; False: it does not; None: it could, but
        part of it cannot be evaluated (see the module docstring)."""
        if self.starts_at is not None and now < self.starts_at:
            return False
        if self.ends_at is not None and now >= self.ends_at:
            return False
        if not matchers.match_all(self.matchers, labels):
            return False
        return None if self.unreadable else True

    def work(self, labels: Mapping[str, str]) -> int:
        """Roughly what evaluating it costs: program size x bytes of each label tested."""
        return sum(m.cost * (len(labels.get(m.name, "")) + 1) for m in self.matchers)


def parse_silence(item: Any, index: int) -> Silence | None:
    """One silence of API v2 JSON; None only when Alertmanager says it has expired.

    Whatever cannot be read is named in `unreadable`, never dropped.
    """
    if not isinstance(item, Mapping):
        return Silence(f"#{index}", (), None, None, "", "", f"not a JSON object: {item!r:.80}")
    status = item.get("status")
    if isinstance(status, Mapping) and status.get("state") == "expired":
        return None
    problems: list[str] = []
    raw_id = item.get("id")
    if not isinstance(raw_id, str) or not raw_id:
        problems.append("no id")
    sid = raw_id if isinstance(raw_id, str) and raw_id else f"#{index}"
    times: list[float | None] = []
    for key in ("startsAt", "endsAt"):
        try:
            times.append(parse_time(str(item[key])).timestamp())
        except (KeyError, ValueError, OverflowError) as exc:
            problems.append(f"{key} unreadable ({exc})")
            times.append(None)
    ms: list[Matcher] = []
    raw_matchers = item.get("matchers")
    if not isinstance(raw_matchers, list) or not raw_matchers:
        problems.append("no matchers list (Alertmanager requires at least one matcher)")
    else:
        for i, m in enumerate(raw_matchers):
            try:
                if not isinstance(m, Mapping):
                    raise ValueError(f"not a JSON object: {m!r:.80}")
                ms.append(matchers.from_silence(m))
            except ValueError as exc:
                problems.append(f"matcher {i}: {exc}")
    return Silence(
        id=sid,
        matchers=tuple(ms),
        starts_at=times[0],
        ends_at=times[1],
        created_by=str(item.get("createdBy", "")),
        comment=str(item.get("comment", "")),
        unreadable="; ".join(problems),
    )


def parse_silences(raw: Sequence[Any]) -> list[Silence]:
    """Active and pending silences from API v2 JSON, the unreadable ones included."""
    return [s for i, item in enumerate(raw) if (s := parse_silence(item, i)) is not None]


def _key(item: Any) -> str:
    """What identifies a silence's content across fetches (its state changes over time)."""
    if isinstance(item, Mapping):
        item = {k: v for k, v in item.items() if k != "status"}
    return json.dumps(item, sort_keys=True, default=repr)


def _evaluate(
    silences: Iterable[Silence], labels: Mapping[str, str], now: float
) -> tuple[Silence | None, Silence | None]:
    """The first silence that covers the labels, else the first one that could."""
    could = None
    for s in silences:
        covered = s.covers(labels, now)
        if covered:
            return s, None
        if covered is None and could is None:
            could = s
    return None, could


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
        self._parsed: dict[str, Silence | None] = {}
        """Content key → parsed silence, from the last fetch: unchanged silences are not
        compiled again (a large regex costs RE2 tens of milliseconds to compile)."""
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
        own = {h.silence_id: h for h in self._held.values()}
        # Ours, made while remediating, must not stop the next step — while it is as we
        # made it: Alertmanager edits a silence in place (same id) when only its end,
        # author or comment change, and one a person extended or signed is theirs now.
        theirs = [s for s in silences if not _as_made(s, own.get(s.id))]
        labels = alert.labels
        if sum(s.work(labels) for s in theirs) > INLINE_WORK:
            covering, could = await asyncio.to_thread(_evaluate, theirs, labels, now)
        else:
            covering, could = _evaluate(theirs, labels, now)
        if covering is not None:
            self._metrics.silence_checks.labels(result="silenced").inc()
            return (
                Reason.SILENCED,
                f"silence {covering.id} by {covering.created_by}: {covering.comment[:200]}",
            )
        if could is not None:
            self._metrics.silence_checks.labels(result="unreadable").inc()
            return (
                Reason.SILENCE_CHECK_FAILED,
                f"silence {could.id} cannot be evaluated ({could.unreadable[:300]}) and could "
                "cover this alert: hands off until it is fixed or expired in Alertmanager",
            )
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
            raw = await self._api.list_silences()
        except errors.ActionError as exc:
            self._error, self._fetched_at = exc, self._clock.now()
            raise
        self._silences, self._fetched_at, self._error = self._parse(raw), self._clock.now(), None
        return self._silences

    def _parse(self, raw: Sequence[Any]) -> list[Silence]:
        parsed: dict[str, Silence | None] = {}
        out: list[Silence] = []
        for i, item in enumerate(raw):
            key = _key(item)
            if key in self._parsed:
                silence = self._parsed[key]
            else:
                silence = parse_silence(item, i)
                if silence is not None and silence.unreadable:
                    # Once per silence and content, not per fetch: the decisions name it.
                    log.warning("silence_unreadable", silence=silence.id, error=silence.unreadable)
            parsed[key] = silence
            if silence is not None:
                out.append(silence)
        self._parsed = parsed
        self._metrics.silences_unreadable.set(sum(1 for s in out if s.unreadable))
        return out

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
                created_by=CREATED_BY,
                comment=f"{COMMENT}{rule} acted on this alert (audit decision "
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
        self.invalidate()
        with contextlib.suppress(errors.ActionError):  # unknown: expired as made
            current = await self._current(self._clock.now())
            taken = next((s for s in current if s.id == silence_id), None)
            if taken is not None and not _as_made(taken, held):
                # A person extended or signed it: theirs now, left as they set it.
                return decision_id, (
                    f"{created}; left in place on resolve: changed in Alertmanager "
                    f"by {taken.created_by or 'someone'}"
                )
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


CREATED_BY = "remediator"
COMMENT = "remediator rule "
"""How the silences made while remediating start their comment."""


def _as_made(silence: Silence, held: _Held | None) -> bool:
    """`silence` is the one held, unchanged since we made it (author, comment, end)."""
    return (
        held is not None
        and not silence.unreadable
        and silence.created_by == CREATED_BY
        and silence.comment.startswith(COMMENT)
        and silence.ends_at is not None
        and abs(silence.ends_at - held.ends_at) < 1.0
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Held:
    silence_id: str
    decision_id: int
    text: str
    ends_at: float
