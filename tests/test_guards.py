"""Each guard of the engine, in the order of DESIGN.md, with an injected clock."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Harness, am_alert

RESTART = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.deployment }}"
        target: "{{ labels.namespace }}/{{ labels.deployment }}"
    limits: {cooldown: 15m, max_attempts: 3, window: 1h}
    verify: {resolve_within: 10m}
    circuit_breaker: {open_after: 2, reset_after: 1h}
"""


def fresh(deployment: str = "api", **labels: str) -> dict[str, object]:
    """A new occurrence (its own fingerprint) of APIDown for one deployment."""
    return am_alert("APIDown", namespace="prod", deployment=deployment, **labels)


async def test_a_dry_run_records_what_would_happen_and_changes_nothing(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART) as h:
        await h.fire(fresh())
        [d] = await h.decisions()
        assert (d["outcome"], d["target"]) == ("dry_run", "log prod/api")
        assert d["detail"].startswith("would log")


async def test_a_second_alert_about_the_same_target_waits_for_the_cooldown(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART, dry_run=False) as h:
        await h.fire(fresh())
        await h.advance(60)
        await h.fire(fresh())
        await h.advance(15 * 60)
        await h.fire(fresh())
        assert await h.outcomes() == [("executed", ""), ("skipped", "cooldown"), ("executed", "")]
