"""Wire formats → Alert. Pure parsing: no I/O, no knowledge of rules."""

from __future__ import annotations

import datetime as dt

from remediator.intake import alertmanager, sns
from remediator.models.alert import Alert

REPLAY_MAX_ALERTS = 1_000_000
"""Journaled payloads were checked against the limits of their day; replay trusts them."""


def replay(source: str, payload: bytes, received_at: dt.datetime) -> list[Alert]:
    """Parse a journaled payload again (at start-up, for unfinished work)."""
    if source == alertmanager.SOURCE:
        return alertmanager.parse(payload, received_at=received_at, max_alerts=REPLAY_MAX_ALERTS)
    if source == sns.SOURCE:
        # Verified before it was journaled: no signature check, no certificate fetch.
        return sns.replay(payload, received_at)
    raise ValueError(f"no replay for source {source!r}")
