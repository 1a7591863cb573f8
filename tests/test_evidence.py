"""Evidence capture: bounded in size and time, and never in the way of the fix.

The families' own captures are tested against their servers (Kubernetes emulator, moto,
PostgreSQL) next to their actions; here, what `evidence.capture` guarantees for any.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import hypothesis
from hypothesis import strategies as st

from remediator.actions import evidence, params
from remediator.actions.base import Context, Result
from tests.harness import Harness


class Seeing:
    """An action whose evidence is whatever the test hands it (or raises, or hangs)."""

    type: ClassVar[str] = "test.seeing"
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema({})

    def __init__(self, seen: Any = None, *, error: Exception | None = None, hang: bool = False):
        self.seen, self.error, self.hang = seen, error, hang

    def check_allowed(self, values: Mapping[str, Any], settings: Any) -> None:
        return None

    def target(self, values: Mapping[str, Any]) -> str:
        return ""

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return Result(detail="ran")

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return Result(detail="would run")

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Any:
        if self.hang:
            await asyncio.sleep(3600)
        if self.error is not None:
            raise self.error
        return self.seen


def size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


class Blind:
    """An action of a family that captures no evidence."""

    type: ClassVar[str] = "test.blind"


async def test_a_family_without_evidence_captures_nothing(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules="rules: []\n") as h:
        assert await evidence.capture(Blind(), {}, h.context()) == {}  # type: ignore[arg-type]


async def test_an_error_or_a_hang_becomes_a_short_note(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules="rules: []\n") as h:
        broken = Seeing(error=RuntimeError("x" * 5000))
        seen = await evidence.capture(broken, {}, h.context())
        assert list(seen) == ["note"] and len(seen["note"]) <= evidence.MAX_TEXT
        hung = await evidence.capture(Seeing(hang=True), {}, h.context(timeout=4.0))
        assert hung == {"note": "evidence not captured: no answer within 1s"}
        odd = await evidence.capture(Seeing(["not", "a", "mapping"]), {}, h.context())
        assert odd == {"note": "evidence not captured: list is not a mapping"}


async def test_large_evidence_is_cut_to_the_bound_and_says_so(tmp_path: Path) -> None:
    lines = [f"log line {i} " + "x" * 400 for i in range(200)]
    pods = [{"name": f"api-{i}", "message": "m" * 1000} for i in range(100)]
    async with Harness(tmp_path, rules="rules: []\n") as h:
        seen = await evidence.capture(
            Seeing({"pods": pods, "previous_log": {"lines": lines}}), {}, h.context()
        )
    assert size(seen) <= evidence.MAX_BYTES
    assert seen["truncated"] is True
    assert seen["pods"][0]["name"] == "api-0"  # records keep their first (the worst)
    assert seen["previous_log"]["lines"][-1].startswith("log line 199")  # logs their last


@hypothesis.given(
    st.dictionaries(
        st.text(max_size=20),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=2000),
            lambda inner: (
                st.lists(inner, max_size=60)
                | st.dictionaries(st.text(max_size=10), inner, max_size=30)
            ),
            max_leaves=60,
        ),
        max_size=20,
    )
)
@hypothesis.settings(max_examples=30, deadline=None)
def test_any_evidence_is_bounded(data: dict[str, Any]) -> None:
    out = evidence.bounded(data)
    assert size(out) <= evidence.MAX_BYTES
    if size(data) <= evidence.MAX_BYTES:
        assert out == json.loads(json.dumps(data))  # small evidence is kept whole


def test_the_summary_is_short_readable_lines() -> None:
    text = evidence.summary(
        {
            "pods": [{"name": "api-1", "phase": "Running", "restarts": 3}],
            "previous_log": {"pod": "api-1", "lines": ["boom"]},
            "note": "events of Pod api-1: forbidden",
        }
    )
    assert text.splitlines() == [
        "pods:",
        "  name=api-1, phase=Running, restarts=3",
        "previous_log: pod=api-1, lines=boom",
        "note: events of Pod api-1: forbidden",
    ]
    assert len(evidence.summary({"x": "y" * 5000})) == evidence.SUMMARY_CHARS
