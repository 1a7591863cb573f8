"""Restoring on start: what the audit tells, replayed into the limit state.

The audit of the last days rebuilds occurrence dedup (a re-sent alert stays a
duplicate), cooldowns, attempt counts and budgets (an action taken before the restart
still counts), and circuit breakers (failed and ineffective attempts). What the audit
cannot tell — alerts held for `for`, remediations under way, pauses — the state backend
kept itself (engine/holding.py, engine/loop.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from remediator.backends.audit import Audit
from remediator.backends.state import MAX_OCCURRENCES, State
from remediator.engine.recording import occurrence_key
from remediator.models.alert import parse_time
from remediator.models.decision import Outcome, Reason
from remediator.models.rule import Rule

HORIZON = dt.timedelta(days=30)
"""How far back decisions are replayed on start."""


async def replay(audit: Audit, state: State, rules: Mapping[str, Rule], *, now: float) -> int:
    """Replay recent decisions, oldest first; returns how many."""
    since = dt.datetime.fromtimestamp(now, dt.UTC) - HORIZON
    rows = await audit.recent_occurrences(since, limit=MAX_OCCURRENCES)
    for row in rows:
        await _one(row, state, rules)
    return len(rows)


async def _one(row: Mapping[str, Any], state: State, rules: Mapping[str, Rule]) -> None:
    outcome, reason, target = row["outcome"], row["reason"], row["target"]
    at = parse_time(row["decided_at"]).timestamp()
    key = occurrence_key(row["rule"], row["fingerprint"], row["starts_at"])
    await state.set_occurrence(key, f"{outcome}/{reason}", at)
    acted = outcome in (Outcome.EXECUTED, Outcome.DRY_RUN) or (
        outcome == Outcome.FAILED and reason != Reason.TEMPLATE_ERROR
    )
    if acted and target:
        state.restore_attempt(rule=row["rule"], target=target, at=at)
    rule = rules.get(row["rule"])
    if rule is None or not target:
        return  # the rule is gone: no circuit of it to rebuild
    verification: str = row["verification"]
    failed = outcome == Outcome.FAILED and reason in (Reason.ACTION_ERROR, Reason.TIMEOUT)
    ineffective = outcome == Outcome.EXECUTED and verification.startswith("ineffective")
    if failed or ineffective:
        await state.record_result(rule=rule, target=target, ok=False, now=at)
    elif outcome == Outcome.EXECUTED and (
        verification.startswith("effective") or _unverified(rule, row.get("step") or 1)
    ):
        await state.record_result(rule=rule, target=target, ok=True, now=at)


def _unverified(rule: Rule, step: int) -> bool:
    """The step of that row has `verify.resolve_within: never`."""
    return 0 < step <= len(rule.steps) and rule.steps[step - 1].resolve_within is None
