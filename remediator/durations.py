"""Durations as users write them in config and rules: `90s`, `2m`, `1h30m`, `7d`."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")


def parse(text: str | int | float) -> float:
    """Return seconds for a duration string (Prometheus style, units ms s m h d w).

    A bare number is seconds. Raises ValueError with a message that shows the syntax.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 1h, got {text!r}")
    if isinstance(text, int | float):
        try:
            seconds = float(text)
        except OverflowError:  # an integer with more digits than a float holds
            seconds = math.inf
        if not math.isfinite(seconds):  # that, or YAML's .nan and .inf
            raise ValueError(f"expected a finite duration like 30s, 5m, 1h, got {str(text)[:40]}")
        if seconds < 0:
            raise ValueError(f"duration must not be negative, got {text}")
        return seconds
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like 30s, 5m, 1h, got {text!r}")
    s = text.strip()
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"expected a duration like 30s, 5m, 1h30m, got {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m, got {text!r}")
    if not math.isfinite(total):  # more digits than a float holds
        raise ValueError(f"expected a finite duration like 30s, 5m, 1h, got {text[:40]!r}…")
    return total


def format(seconds: float) -> str:
    """Short human form of a duration: 900 → `15m`, 5400 → `1h30m`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"
