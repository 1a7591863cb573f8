"""`remediator simulate`: every guard's verdict for a sample alert, with no side effects.

It uses the engine's own pieces (matching index, blackout check, param preparation,
a fresh in-memory reservation) so what it shows is what the engine would do on a
fresh start; live state (cooldowns, circuits, duplicates, silences) is not consulted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from remediator.backends.state import MemoryState
from remediator.engine import guards
from remediator.engine.engine import prepare
from remediator.matching.index import RuleIndex
from remediator.models.alert import Alert
from remediator.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    guard: str
    verdict: str
    """`pass`, `skip`, `hold`, `would_execute`, `would_dry_run` or `not_checked`."""
    detail: str = ""


async def simulate(
    alert: Alert, index: RuleIndex, settings: Settings, *, now: float
) -> list[dict[str, Any]]:
    """For each matching rule: the guards in engine order and the rendered action."""
    out = []
    now_dt = dt.datetime.fromtimestamp(now, dt.UTC)
    for rule in index.match(alert):
        steps: list[Step] = []
        rendered: dict[str, Any] | None = None
        target = ""
        steps.append(Step("paused", "skip" if settings.paused else "pass"))
        b = guards.blackout(settings.blackouts, rule, alert, now_dt)
        steps.append(Step("blackout", "skip" if b else "pass", f"window {b!r}" if b else ""))
        steps.append(Step("duplicate", "not_checked", "needs the live daemon's state"))
        steps.append(Step("silenced", "not_checked", "needs Alertmanager"))
        if alert.status != "firing":
            steps.append(Step("status", "skip", "resolved alerts only verify earlier attempts"))
        else:
            age = now - alert.starts_at.timestamp()
            steps.append(
                Step(
                    "for",
                    "hold" if age < rule.for_ else "pass",
                    f"firing {age:.0f}s, for={rule.for_:.0f}s",
                )
            )
            _, values, target, problem = prepare(rule.action, rule, alert, settings)
            if problem is not None:
                steps.append(Step("params", "skip", f"{problem[0]}: {problem[1]}"))
            else:
                rendered = values
                steps.append(Step("params", "pass", target))
                verdict = await MemoryState().reserve(
                    rule=rule, target=target, budgets=settings.budgets, now=now, dry_run=True
                )
                steps.append(
                    Step(
                        "limits",
                        "pass" if verdict.reason is None else "skip",
                        verdict.detail or "cooldown, attempts, budgets, circuit (fresh state)",
                    )
                )
                verdict_text = "would_dry_run" if settings.dry_run else "would_execute"
                steps.append(Step("dry_run", verdict_text, target))
        out.append(
            {
                "rule": rule.name,
                "file": f"{rule.file}:{rule.line}",
                "action": rule.action.type,
                "target": target,
                "params": rendered,
                "guards": [dataclasses.asdict(s) for s in steps],
            }
        )
    return out
