"""A real Alertmanager in front of the real daemon: re-sends, resolution, webhook auth.

Alertmanager (Debian's prometheus-alertmanager) routes every alert to the daemon's
`/webhook/alertmanager` with `send_resolved: true`, `group_wait: 0s` and intervals of
about a second, so it re-sends the same firing alerts every second or two — exactly
what must never double an action. The daemon runs as a child process with dry-run off.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.daemon_process import DaemonProcess, eventually

pytestmark = pytest.mark.timeout(60)

TWO_RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.instance }}"
        target: "restart/{{ labels.instance }}"
    limits: {cooldown: 0s}
    verify: {resolve_within: 10m}
  - name: api-announce
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "announce {{ labels.instance }}"
        target: "announce/{{ labels.instance }}"
    limits: {cooldown: 0s}
    verify: {resolve_within: 10m}
"""

ONE_RULE = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params: {message: "restart {{ labels.instance }}", target: "{{ labels.instance }}"}
    limits: {cooldown: 0s}
"""

TOKEN_CONFIG = """
auth:
  webhook_bearer_token_env: REMEDIATOR_WEBHOOK_TOKEN
"""
TOKEN = "s3cret-webhook-token"


@asynccontextmanager
async def alertmanager_for(
    daemon: DaemonProcess, **options: Any
) -> AsyncIterator[servers.AlertmanagerServer]:
    """An Alertmanager whose only receiver is this daemon, re-sending every ~1 s."""
    am = servers.AlertmanagerServer(
        f"{daemon.url}/webhook/alertmanager",
        group_wait="0s",
        group_interval="1s",
        repeat_interval="1s",
        **options,
    )
    await asyncio.to_thread(am.start)
    try:
        yield am
    finally:
        await asyncio.to_thread(am.stop)


def api_down(instance: str, started: dt.datetime, ended: dt.datetime | None = None) -> Any:
    return servers.alert(
        "APIDown",
        labels={"instance": instance, "severity": "critical"},
        annotations={"summary": f"{instance} does not answer"},
        starts_at=started,
        ends_at=ended,
    )


def occurrences(rows: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter((r["rule"], r["fingerprint"], r["starts_at"]) for r in rows)


async def test_alertmanager_re_sends_act_once_and_resolution_verifies_the_fix(
    tmp_path: Path,
) -> None:
    async with DaemonProcess(tmp_path, rules=TWO_RULES) as daemon, alertmanager_for(daemon) as am:
        started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        alerts = [api_down("api-1", started), api_down("api-2", started)]
        await asyncio.to_thread(am.post_alerts, alerts)

        # One notification carries both alerts (grouped by alertname); three of them
        # mean Alertmanager re-sent the same firing alerts at least twice.
        async def re_sent_twice() -> bool:
            return await daemon.metric("remediator_alerts_received_total", status="firing") >= 6

        await eventually(re_sent_twice, timeout=20, what="three deliveries from Alertmanager")
        await eventually(daemon.settled, timeout=10, what="the deliveries decided")

        rows = await daemon.decisions()
        held = await asyncio.to_thread(am.get_alerts, filter=['alertname="APIDown"'])
        assert {r["fingerprint"] for r in rows} == {a["fingerprint"] for a in held}
        assert sorted(occurrences(rows).values()) == [1, 1, 1, 1], rows
        assert {r["rule"] for r in rows} == {"api-restart", "api-announce"}
        assert [r["outcome"] for r in rows] == ["executed"] * 4
        assert sorted(r["target"] for r in rows) == [
            "log announce/api-1", "log announce/api-2", "log restart/api-1", "log restart/api-2",
        ]  # fmt: skip
        # Every later delivery of an alert is counted once (whatever rules it matches), not
        # decided again: at least 3 deliveries x 2 alerts, minus the 2 first ones.
        assert await daemon.metric("remediator_duplicates_total", source="alertmanager") >= 4
        assert await daemon.metric("remediator_actions_total", result="ok") == 4

        # Resolve both: an endsAt of now makes Alertmanager send the resolved notification.
        now = dt.datetime.now(dt.UTC)
        await asyncio.to_thread(
            am.post_alerts, [api_down("api-1", started, now), api_down("api-2", started, now)]
        )

        async def all_effective() -> bool:
            rows = await daemon.decisions()
            return all(r["verification"].startswith("effective") for r in rows)

        await eventually(all_effective, timeout=20, what="every decision verified effective")
        assert await daemon.metric("remediator_alerts_received_total", status="resolved") >= 2
        for rule in ("api-restart", "api-announce"):
            assert (
                await daemon.metric(
                    "remediator_remediation_verified_total", rule=rule, result="effective"
                )
                == 2
            )
        assert (
            await daemon.metric("remediator_remediation_verified_total", result="ineffective") == 0
        )
        assert len(await daemon.decisions()) == 4


async def test_alertmanager_with_the_right_bearer_token_delivers(tmp_path: Path) -> None:
    async with (
        DaemonProcess(
            tmp_path, rules=ONE_RULE, config=TOKEN_CONFIG, env={"REMEDIATOR_WEBHOOK_TOKEN": TOKEN}
        ) as daemon,
        alertmanager_for(daemon, bearer_token=TOKEN) as am,
    ):
        started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        await asyncio.to_thread(am.post_alerts, [api_down("api-1", started)])

        async def decided() -> bool:
            return len(await daemon.decisions(outcome="executed")) == 1

        await eventually(decided, timeout=20, what="the alert's decision")
        [row] = await daemon.decisions()
        assert (row["rule"], row["target"]) == ("api-restart", "log api-1")
        assert await daemon.metric("remediator_webhook_requests_total", code="200") >= 1
        assert await daemon.metric("remediator_webhook_requests_total", code="401") == 0
        # The daemon does require the token: without it the same webhook is refused.
        status, _ = await daemon.post({"version": "4", "alerts": []})
        assert status == 401


async def test_alertmanager_with_a_wrong_bearer_token_gets_401_and_nothing_is_decided(
    tmp_path: Path,
) -> None:
    async with (
        DaemonProcess(
            tmp_path, rules=ONE_RULE, config=TOKEN_CONFIG, env={"REMEDIATOR_WEBHOOK_TOKEN": TOKEN}
        ) as daemon,
        alertmanager_for(daemon, bearer_token="not-the-token") as am,
    ):
        started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        await asyncio.to_thread(am.post_alerts, [api_down("api-1", started)])

        async def refused_twice() -> bool:
            return await daemon.metric("remediator_webhook_requests_total", code="401") >= 2

        await eventually(refused_twice, timeout=20, what="two refused deliveries")
        assert await daemon.decisions() == []
        assert await daemon.metric("remediator_alerts_received_total") == 0
        assert await daemon.metric("remediator_webhook_requests_total", code="200") == 0
        assert await daemon.metric("remediator_rejected_inputs_total", kind="unauthorized") >= 2
