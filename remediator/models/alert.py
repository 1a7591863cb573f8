"""The normalized Alert every source adapter produces; nothing downstream knows wire formats."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from remediator import models

Status = Literal["firing", "resolved"]
UTC = dt.UTC


@models.value
class Alert:
    """One alert as remediator sees it, whatever sent it.

    `labels` and `annotations` are plain dicts by convention never mutated after
    construction (frozen dataclasses cannot freeze a dict without copying on every read).
    """

    source: str
    """`alertmanager` or `sns`: which adapter produced it."""
    name: str
    """The alertname label (Alertmanager) or AlarmName (CloudWatch)."""
    status: Status
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    fingerprint: str
    """Stable identity of the alert's label set, as its source computes it."""
    generator_url: str
    received_at: dt.datetime
    starts_iso: str = dataclasses.field(default="", compare=False)
    """`starts_at` in our one text form, computed once: it keys every occurrence."""

    def __post_init__(self) -> None:
        if not self.starts_iso:
            object.__setattr__(self, "starts_iso", iso(self.starts_at))

    @property
    def occurrence(self) -> str:
        """One firing episode of one alert, (fingerprint, startsAt), as a key."""
        return f"{self.fingerprint}\x00{self.starts_iso}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, for what outlives a request: held alerts, remediations under way."""
        return {
            "source": self.source,
            "name": self.name,
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at": self.starts_iso,
            "ends_at": iso(self.ends_at) if self.ends_at else None,
            "fingerprint": self.fingerprint,
            "generator_url": self.generator_url,
            "received_at": iso(self.received_at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        """Inverse of to_json; trusts its input, which we wrote."""
        ends_at = data.get("ends_at")
        return cls(
            source=data["source"],
            name=data["name"],
            status=data["status"],
            labels=dict(data["labels"]),
            annotations=dict(data["annotations"]),
            starts_at=parse_time(data["starts_at"]),
            starts_iso=data["starts_at"],
            ends_at=parse_time(ends_at) if ends_at else None,
            fingerprint=data["fingerprint"],
            generator_url=data["generator_url"],
            received_at=parse_time(data["received_at"]),
        )


def fingerprint_of(labels: Mapping[str, str]) -> str:
    """A stable fingerprint for a label set, for sources that do not send one."""
    blob = json.dumps(sorted(labels.items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def iso(t: dt.datetime) -> str:
    """RFC 3339 in UTC with microseconds and a Z, the one time format we write."""
    s = _iso_texts.get(t)
    if s is not None:  # the alerts of one request share received_at, often startsAt
        return s
    if t.utcoffset() != _ZERO:
        t = t.astimezone(UTC)
    # isoformat is several times faster than strftime; this runs per alert and rule.
    s = t.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    if len(_iso_texts) >= _ISO_CACHED:
        _iso_texts.clear()
    _iso_texts[t] = s
    return s


def iso_ts(ts: float) -> str:
    """`iso` of a Unix time, with the second's text cached: decisions come in bursts."""
    global _last_second  # noqa: PLW0603 - a one-entry cache
    second = int(ts)
    cached, prefix = _last_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, prefix)
    return f"{prefix}.{int((ts - second) * 1_000_000):06d}Z"


_ZERO = dt.timedelta(0)
_ISO_CACHED = 256
_iso_texts: dict[dt.datetime, str] = {}
"""The text of the times written lately, by time: aware datetimes compare as instants
(equal instants, equal text), and a naive one never equals an aware one."""
_last_second: tuple[int, str] = (-1, "")


def parse_time(text: str) -> dt.datetime:
    """Parse RFC 3339 (Go's and ours), always returning an aware UTC datetime.

    Go writes up to nine fractional digits; Python reads six, so the rest is cut.
    Raises ValueError for anything else.
    """
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dot = s.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(s) and s[end] in "0123456789":
            end += 1
        frac = s[dot + 1 : end][:6]
        s = s[: dot + 1] + frac.ljust(6, "0") + s[end:] if frac else s[:dot] + s[end:]
    t = dt.datetime.fromisoformat(s)
    if t.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    try:
        return t.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"time {text!r} is outside the representable range") from exc
