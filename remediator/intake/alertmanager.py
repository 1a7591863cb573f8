"""Alertmanager webhook payload (version 4) → Alerts.

Every way a body can be wrong ends in errors.IntakeError with the status to answer:
400 for what is not JSON, 422 for JSON that is not a v4 payload.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from remediator import errors
from remediator.intake import payload
from remediator.models.alert import Alert, fingerprint_of, parse_time

SOURCE = "alertmanager"
MAX_LABELS = 128
MAX_VALUE_LEN = 16384
_LABEL_NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,256}")
"""Any UTF-8 name, as Alertmanager >= 0.27 accepts them (`k8s.namespace`): a name refused
here would be an alert lost. Control characters are refused; templates can name only
`[a-zA-Z_][a-zA-Z0-9_]*` labels, matchers (and silences) any."""
_GO_ZERO_YEAR = 1  # Alertmanager sends 0001-01-01T00:00:00Z for "no end"


def parse(body: bytes, *, received_at: dt.datetime, max_alerts: int) -> list[Alert]:
    """Parse and validate a webhook body; raises errors.IntakeError."""
    data = payload.load_bytes(body)
    if not isinstance(data, dict):
        raise _schema("body must be a JSON object")
    version = data.get("version")
    if version != "4":
        raise _schema(f'unsupported payload version {version!r}; expected "4"')
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise _schema("`alerts` must be a list")
    if len(alerts) > max_alerts:
        raise errors.PayloadTooLarge(f"{len(alerts)} alerts in one request; at most {max_alerts}")
    return [_alert(i, a, received_at, _TIMES) for i, a in enumerate(alerts)]


_FINGERPRINT = re.compile(r"[0-9a-zA-Z]{1,64}")


def _alert(i: int, a: Any, received_at: dt.datetime, times: dict[str, dt.datetime]) -> Alert:
    """One alert; `times` keeps the times already read (see `_TIMES`)."""
    where = f"alerts[{i}]"
    if not isinstance(a, dict):
        raise _schema(f"{where} must be an object")
    status = a.get("status")
    if status not in ("firing", "resolved"):
        raise _schema(f"{where}.status must be firing or resolved, got {_show(status)}")
    labels = _str_map(a.get("labels"), f"{where}.labels", names=True)
    annotations = _str_map(a.get("annotations", {}), f"{where}.annotations", names=False)
    name = labels.get("alertname")
    if not name:
        raise _schema(f"{where}.labels.alertname is required")
    starts_at = _time(a.get("startsAt"), times, where, "startsAt")
    ends_raw = a.get("endsAt")
    ends_at = _time(ends_raw, times, where, "endsAt") if ends_raw not in (None, "") else None
    if ends_at is not None and ends_at.year == _GO_ZERO_YEAR:
        ends_at = None
    fingerprint = a.get("fingerprint")
    if fingerprint is None or fingerprint == "":
        fingerprint = fingerprint_of(labels)
    elif not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise _schema(f"{where}.fingerprint must be 1-64 alphanumerics, got {_show(fingerprint)}")
    generator_url = a.get("generatorURL", "")
    if not isinstance(generator_url, str):
        raise _schema(f"{where}.generatorURL must be a string")
    generator_url = generator_url[:MAX_VALUE_LEN]  # a long PromQL expression: cut, not refused
    return Alert(
        source=SOURCE,
        name=name,
        status=status,
        labels=labels,
        annotations=annotations,
        starts_at=starts_at,
        ends_at=ends_at,
        fingerprint=fingerprint,
        generator_url=generator_url,
        received_at=received_at,
    )


def _str_map(value: Any, where: str, *, names: bool) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _schema(f"{where} must be an object of strings")
    if len(value) > MAX_LABELS:
        raise _schema(f"{where} has {len(value)} entries; at most {MAX_LABELS}")
    cut: dict[str, str] | None = None
    for k, v in value.items():
        if not isinstance(v, str):
            raise _schema(f"{where}.{k} must be a string, got {_show(v)}")
        if len(v) > MAX_VALUE_LEN:
            if names:
                raise _schema(f"{where}.{k} is longer than {MAX_VALUE_LEN} characters")
            # An annotation is text for humans, and Alertmanager does not bound it: cut
            # it, rather than refuse (a 4xx is never retried) the whole group's request.
            cut = cut or dict(value)
            cut[k] = v[:MAX_VALUE_LEN]
        if names and not _LABEL_NAME.fullmatch(k):
            raise _schema(f"{where} has an invalid label name {_show(k)}")
    return value if cut is None else cut


_TIMES_CACHED = 1024
_TIMES: dict[str, dt.datetime] = {}
"""Time texts read lately and their value, across requests: the alerts of one group
share them, Alertmanager sends the same startsAt again on every repeat, and endsAt is
most often Go's zero time. Only texts that parsed are kept (a bad one raises anew)."""


def _time(value: Any, times: dict[str, dt.datetime], where: str, field: str) -> dt.datetime:
    if isinstance(value, str):
        known = times.get(value)
        if known is not None:
            return known
    where = f"{where}.{field}"
    if not isinstance(value, str):
        raise _schema(f"{where} must be an RFC 3339 time string, got {_show(value)}")
    try:
        t = parse_time(value)
        if len(times) >= _TIMES_CACHED:
            times.clear()
        times[value] = t
    except ValueError as exc:
        raise _schema(f"{where}: {_show(value)} is not an RFC 3339 time") from exc
    return t


def _schema(message: str) -> errors.IntakeError:
    return errors.IntakeError(message, status=422)


def _show(v: Any) -> str:
    r = repr(v) if not isinstance(v, Mapping) else "an object"
    return r if len(r) <= 60 else r[:57] + "..."
