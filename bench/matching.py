"""Regex matching cost as the label value grows: RE2 is linear whatever the pattern.

In process, no server: `Matcher.matches` (what rules, silences and blackouts run) on one
label value, the median of a few runs. The patterns are the ones a silence author could
use to hurt a backtracking engine, the one that defeats RE2's DFA (its slowest linear
case, ~1 µs per byte per 1,000 states), and an everyday one for scale.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Sequence

from remediator.matching import matchers


def _a(n: int) -> str:
    return "a" * n


def _ab(n: int) -> str:
    rng = random.Random(n)
    return "".join(rng.choice("ab") for _ in range(n))


def _host(n: int) -> str:
    return "api-" + "7" * max(0, n - 9) + ".prod"


PATTERNS: tuple[tuple[str, Callable[[int], str]], ...] = (
    ("(a+)+b", _a),  # exponential for Python's `re` from ~25 characters on
    ("(.*a){20}c", _a),
    ("[ab]*a[ab]{1000}c", _ab),  # the DFA cannot cache it: RE2 runs its NFA
    (r"api-[0-9]+\.prod", _host),
)


@dataclasses.dataclass(frozen=True)
class Cost:
    pattern: str
    size: int
    """Bytes of the label value."""
    seconds: float
    """Median of the runs, one match each."""


def measure(sizes: Sequence[int], repeats: int) -> list[Cost]:
    """Every pattern against values of every size, after one warm-up match (RE2 builds its
    DFA states lazily: the first match of a fresh regex pays for some of them)."""
    out = []
    for pattern, make_value in PATTERNS:
        m = matchers.Matcher.make("v", matchers.Op.RE, pattern)
        m.matches({"v": make_value(sizes[0])})
        for size in sizes:
            labels = {"v": make_value(size)}
            runs = []
            for _ in range(repeats):
                began = time.perf_counter()
                m.matches(labels)
                runs.append(time.perf_counter() - began)
            out.append(Cost(pattern, size, statistics.median(runs)))
    return out
