"""Evidence: what an action family sees before it acts, bounded, never in the way.

An SRE reading an escalation starts with "look at the logs"; the decision should show
what remediator saw when it acted: pod phases and restarts, the last events, the last
lines a crashed container printed, an ECS service's events, a summary of the database's
sessions. A family provides it with an optional method on its actions:

    async def evidence(self, values, ctx) -> Mapping[str, Any]

`capture` is the one way to call it: it bounds the time (a share of the action's
timeout, at most `MAX_SECONDS`) and the size (`MAX_BYTES` of JSON: long texts and lists
are cut, then whole parts dropped, and the result says so), and it never raises —
an error, a timeout or a bug becomes a short `note`, because evidence must never keep
a fix from running. `summary` renders it as a few lines for an escalation message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from remediator.actions.base import Action, Context

MAX_BYTES = 8192
"""Largest evidence kept per decision, as compact JSON: enough for ten pods, ten events
and twenty log lines; small enough for an audit row, a Slack message and a page."""
MAX_TEXT = 300
"""Characters kept of any one text (a log line, an event message) before cutting more."""
MAX_ITEMS = 20
"""Items kept of any one list before cutting more."""
MAX_SECONDS = 10.0
"""Longest a capture may take, whatever the action's timeout: it runs before the fix."""
SUMMARY_CHARS = 1500
"""Characters of evidence in an escalation text."""


async def capture(action: Action, values: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """The action's evidence, bounded; `{}` when its family captures none. Never raises."""
    fn = getattr(action, "evidence", None)
    if fn is None:
        return {}
    seconds = min(MAX_SECONDS, max(1.0, ctx.timeout / 4))
    try:
        async with asyncio.timeout(seconds):
            raw = await fn(values, ctx)
    except TimeoutError:
        return {"note": f"evidence not captured: no answer within {seconds:g}s"}
    except Exception as exc:  # noqa: BLE001 - evidence must never fail the action
        ctx.log.warning("evidence_failed", action=action.type, error=str(exc)[:MAX_TEXT])
        return {"note": note(exc)}
    if not isinstance(raw, Mapping):
        return {"note": f"evidence not captured: {type(raw).__name__} is not a mapping"}
    return bounded(raw)


def note(exc: BaseException, what: str = "evidence not captured") -> str:
    """A short note for a failed capture (or part of one)."""
    text = str(exc) or type(exc).__name__
    return f"{what}: {text}"[:MAX_TEXT]


def bounded(data: Mapping[str, Any], limit: int = MAX_BYTES) -> dict[str, Any]:
    """`data` (JSON-able) cut until its compact JSON fits in `limit` bytes.

    Texts and lists are cut first (to MAX_TEXT characters and MAX_ITEMS items, then
    fewer: lists of texts keep their last items, lists of records their first), then
    whole top-level parts are dropped, largest first; `truncated` says so.
    """
    out: dict[str, Any] = _jsonable(data)
    if _size(out) <= limit:
        return out
    for text, items in ((MAX_TEXT, MAX_ITEMS), (160, 10), (80, 5), (40, 3)):
        cut: dict[str, Any] = _cut(out, text, items)
        if _size(cut) + 20 <= limit:
            cut["truncated"] = True
            return cut
    cut = _cut(out, 40, 3)
    sizes = {k: _size(v) for k, v in cut.items()}
    dropped: list[str] = []
    for key in sorted(sizes, key=lambda k: -sizes[k]):
        marks = {"truncated": True, "dropped": sorted(dropped)[:10]} if dropped else {}
        if _size({**cut, "truncated": True, **marks}) <= limit:
            break
        dropped.append(key[:40])
        del cut[key]
    cut["truncated"] = True
    if dropped:
        cut["dropped"] = sorted(dropped)[:10]
    return cut


def summary(evidence: Mapping[str, Any], limit: int = SUMMARY_CHARS) -> str:
    """A few readable lines (`key: value`, lists one item a line) for an escalation."""
    lines: list[str] = []
    for key, value in evidence.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  {_line(v)}" for v in value)
        else:
            lines.append(f"{key}: {_line(value)}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_line(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_line(v) for v in value)
    return str(value)


def _jsonable(value: Any) -> Any:
    # A round trip through JSON: what the audit stores, with anything odd as its text.
    return json.loads(json.dumps(value, default=str))


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _cut(value: Any, text: int, items: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= text else value[: text - 1] + "…"
    if isinstance(value, list):
        # Log lines: the last ones matter (what it printed before it died); records
        # (pods, events): families put the worst or newest first.
        texts = all(isinstance(v, str) for v in value)
        kept = value[-items:] if texts else value[:items]
        return [_cut(v, text, items) for v in kept]
    if isinstance(value, dict):
        return {k: _cut(v, text, items) for k, v in value.items()}
    return value
