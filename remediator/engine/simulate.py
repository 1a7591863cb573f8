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
from remediator.engine.executing import Prepared, prepare
from remediator.matching.index import RuleIndex
from remediator.models.alert import Alert
from remediator.models.decision import Escalation
from remediator.models.rule import Rule
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
        paused = settings.paused
        steps.append(
            Step("paused", "skip" if paused else "pass", "config: paused" if paused else "")
        )
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
            prepared = prepare(rule.action, rule, alert, settings)
            if not isinstance(prepared, Prepared):
                steps.append(Step("params", "skip", f"{prepared[0]}: {prepared[1]}"))
            else:
                rendered, target = prepared.values, prepared.target
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
                dry = settings.dry_run or rule.dry_run
                why = "shadow mode (the rule's dry_run: true)" if rule.dry_run else target
                steps.append(Step("dry_run", "would_dry_run" if dry else "would_execute", why))
        out.append(
            {
                "rule": rule.name,
                "file": f"{rule.file}:{rule.line}",
                "action": rule.action.type,
                "steps": _ladder(rule, alert, settings),
                "target": target,
                "params": rendered,
                "guards": [dataclasses.asdict(s) for s in steps],
            }
        )
    return out


def _ladder(rule: Rule, alert: Alert, settings: Settings) -> list[dict[str, Any]]:
    """Each step as it would run if the one before did not help, and the escalation."""
    out = []
    plan = [(f"step {i + 1}", s.action, s.resolve_within) for i, s in enumerate(rule.steps)]
    if rule.escalate is not None:
        plan.append(("escalate", rule.escalate, None))
    sample = Escalation(why="<why it gave up>", tried=("<each step tried>",), decision_id=0, url="")
    for name, spec, resolve_within in plan:
        escalation = sample if name == "escalate" else None
        prepared = prepare(spec, rule, alert, settings, escalation=escalation)
        if isinstance(prepared, Prepared):
            what = {"target": prepared.target, "params": prepared.values, "problem": None}
        else:
            what = {"target": "", "params": None, "problem": f"{prepared[0]}: {prepared[1]}"}
        out.append({"step": name, "action": spec.type, "verify_seconds": resolve_within, **what})
    return out
