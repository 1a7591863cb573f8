"""Nothing done twice: an occurrence (fingerprint, startsAt) gets one decision per rule.

Alertmanager re-sends a firing alert every group_interval/repeat_interval, and an HA
pair delivers each notification twice; none of that may double an action.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from tests.harness import START, Harness, am_alert, payload, resolved

MINUTE = 60.0
HOUR = 3600.0
SOURCE = {"source": "alertmanager"}

RESTART = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.deployment }}"
        target: "{{ labels.namespace }}/{{ labels.deployment }}"
    limits: {cooldown: 15m, max_attempts: 10}
"""

RESTART_AND_ANNOUNCE = (
    RESTART
    + """
  - name: api-announce
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params: {message: "APIDown on {{ labels.deployment }}", target: "oncall-channel"}
"""
)

RETRY_WHILE_FIRING = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.deployment }}"
        target: "{{ labels.namespace }}/{{ labels.deployment }}"
    limits: {cooldown: 10m, max_attempts: 10, retry_while_firing: true}
"""


def api_down(
    deployment: str = "api",
    *,
    fingerprint: str | None = None,
    starts_at: dt.datetime | None = None,
) -> dict[str, object]:
    """APIDown in prod; a new fingerprint (occurrence) unless one is given."""
    return am_alert(
        "APIDown",
        fingerprint=fingerprint,
        starts_at=starts_at,
        namespace="prod",
        deployment=deployment,
    )


async def test_alertmanager_resends_of_one_occurrence_make_one_decision(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART) as h:
        alert = api_down()
        await h.fire(alert)
        await h.advance(5 * MINUTE)  # group_interval
        await h.fire(alert)
        await h.advance(4 * HOUR)  # repeat_interval: long past the cooldown
        await h.fire(alert)
        assert await h.outcomes() == [("dry_run", "")]
        assert await h.metric("remediator_duplicates_total", **SOURCE) == 2.0
        assert (
            await h.metric(
                "remediator_decisions_total", rule="api-restart", outcome="dry_run", reason=""
            )
            == 1.0
        )


async def test_an_ha_pair_delivering_the_same_alerts_at_once_makes_one_decision_each(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=RESTART) as h:
        body = payload(*(api_down(f"svc-{i}") for i in range(10)))
        first, second = await asyncio.gather(h.post(body), h.post(body))
        assert (first.status, second.status) == (200, 200)
        await h.settle()
        rows = await h.decisions()
        assert sorted(d["target"] for d in rows) == sorted(f"log prod/svc-{i}" for i in range(10))
        assert {d["outcome"] for d in rows} == {"dry_run"}
        assert await h.metric("remediator_duplicates_total", **SOURCE) == 10.0


async def test_a_new_starts_at_for_the_same_fingerprint_is_a_new_occurrence(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=RESTART) as h:
        first = api_down(fingerprint="a1b2c3d4e5f60718")
        await h.fire(first)
        await h.fire(resolved(first))
        await h.advance(20 * MINUTE)
        again = api_down(fingerprint="a1b2c3d4e5f60718", starts_at=START + dt.timedelta(minutes=19))
        await h.fire(again)
        await h.fire(again)
        rows = await h.decisions()
        assert [(d["fingerprint"], d["outcome"]) for d in rows] == [
            ("a1b2c3d4e5f60718", "dry_run"),
            ("a1b2c3d4e5f60718", "dry_run"),
        ]
        assert rows[0]["starts_at"] == "2027-01-15T11:50:00.000000Z"
        assert rows[1]["starts_at"] == "2027-01-15T12:19:00.000000Z"


async def test_one_alert_matching_two_rules_gets_one_decision_per_rule(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART_AND_ANNOUNCE) as h:
        alert = api_down()
        await h.fire(alert)
        await h.fire(alert)
        rows = await h.decisions()
        assert sorted((d["rule"], d["target"], d["outcome"]) for d in rows) == [
            ("api-announce", "log oncall-channel", "dry_run"),
            ("api-restart", "log prod/api", "dry_run"),
        ]
        # One re-delivered alert is one duplicate, however many rules it matches.
        assert await h.metric("remediator_duplicates_total", **SOURCE) == 1.0


async def test_after_a_restart_a_resend_is_still_a_duplicate_and_the_cooldown_holds(
    tmp_path: Path,
) -> None:
    alert = api_down()
    async with Harness(tmp_path, rules=RESTART, dry_run=False) as h:
        await h.fire(alert)
        assert await h.outcomes() == [("executed", "")]
    async with Harness(tmp_path, rules=RESTART, dry_run=False) as h:
        await h.advance(5 * MINUTE)  # the new daemon's clock starts at START again
        await h.fire(alert)
        assert await h.outcomes() == [("executed", "")]
        assert await h.metric("remediator_duplicates_total", **SOURCE) == 1.0
        await h.fire(api_down())  # a new occurrence about the same deployment
        await h.advance(10 * MINUTE)  # 15 minutes after the first attempt
        await h.fire(api_down())
        assert await h.outcomes() == [
            ("executed", ""),
            ("skipped", "cooldown"),
            ("executed", ""),
        ]


async def test_retry_while_firing_acts_again_on_the_same_occurrence_after_the_cooldown(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=RETRY_WHILE_FIRING, dry_run=False) as h:
        alert = api_down()
        await h.fire(alert)
        await h.advance(5 * MINUTE)
        await h.fire(alert)  # within the cooldown: a duplicate
        await h.advance(5 * MINUTE)  # cooldown over, no resolve: the engine acts again
        rows = await h.decisions()
        assert [(d["outcome"], d["attempt"], d["fingerprint"]) for d in rows] == [
            ("executed", 1, alert["fingerprint"]),
            ("executed", 2, alert["fingerprint"]),
        ]
        assert rows[0]["verification"].startswith("ineffective: still firing 600s")
        await h.fire(alert)  # Alertmanager's re-send changes nothing: the engine drives
        assert len(await h.decisions()) == 2
        assert await h.metric("remediator_duplicates_total", **SOURCE) == 2.0
