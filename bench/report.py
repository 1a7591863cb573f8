"""Figures, their targets from DESIGN.md, the printed table and ``bench/results.json``.

A target is shown next to its figure with a verdict, for the reader; the bench never
fails because a target is missed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Sections in the order of DESIGN.md's "Performance targets" table.
SECTIONS = (
    "throughput, 1 alert/request",
    "throughput, 50 alerts/request",
    "CPU per accepted alert",
    "latency webhook → decision",
    "overload",
    "memory",
    "start-up",
    "cost vs rule count",
    "regex matching cost",
)


@dataclasses.dataclass(frozen=True)
class Target:
    """A target as DESIGN.md states it, and how to tell whether a value meets it."""

    text: str
    meets: Callable[[float], bool] | None = None


def at_least(threshold: float, text: str) -> Target:
    return Target(text, lambda value: value >= threshold)


def below(threshold: float, text: str) -> Target:
    return Target(text, lambda value: value < threshold)


def at_most(threshold: float, text: str) -> Target:
    return Target(text, lambda value: value <= threshold)


def equals(expected: float, text: str) -> Target:
    return Target(text, lambda value: value == expected)


NO_TARGET = Target("")


@dataclasses.dataclass(frozen=True)
class Figure:
    """One printed number. ``value`` is ``None`` when it could not be measured."""

    section: str
    label: str
    value: float | None
    unit: str
    target: Target = NO_TARGET
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        if self.target.meets is None:
            return ""
        return "meets" if self.target.meets(self.value) else "MISSES"

    def as_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "target": self.target.text or None,
            "verdict": self.verdict or None,
            "note": self.note or None,
        }


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("alerts/s", "alerts", "requests", "decisions", "fingerprints"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "µs":
        return f"{value:,.1f} µs"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:g} {unit}".strip()


def render_table(figures: list[Figure]) -> str:
    """The figures grouped by section, one aligned line each."""
    rows = [
        (f.label, format_value(f.value, f.unit), f.target.text, f.verdict, f.note) for f in figures
    ]
    headers = ("figure", "value", "target", "", "note")
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    # The note is free text at the end of the line: no padding needed.
    widths[-1] = 0

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line((*("-" * w for w in widths[:-1]), "----"))]
    sections = [s for s in SECTIONS if any(f.section == s for f in figures)]
    sections += sorted({f.section for f in figures} - set(sections))
    for section in sections:
        out.append(f"[{section}]")
        out.extend(line(r) for f, r in zip(figures, rows, strict=True) if f.section == section)
    return "\n".join(out)


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
