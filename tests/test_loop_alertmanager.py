"""The remediation loop with a real Alertmanager (Debian's) delivering the alerts.

Alertmanager routes to the daemon with `repeat_interval: 24h`: it never re-sends the
firing alert within a test, so every retry, every step and the escalation come from the
engine itself. The in-process daemon's clock is injected (minutes pass at once);
Alertmanager's is the wall clock, and its alerts stay active for a real hour. A local
HTTP receiver stands in for Slack. The last test kills the daemon process mid-ladder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.daemon_process import DaemonProcess, eventually
from tests.harness import Harness, payload

pytestmark = pytest.mark.timeout(90)
MINUTE = 60.0
HOOK = "REMEDIATOR_TEST_ESCALATE_URL"

RETRYING = """
rules:
  - name: pool-terminate
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    action:
      type: log
      params: {message: "terminate stuck queries", target: "db/{{ labels.database }}"}
    limits: {cooldown: 5m, max_attempts: 2, window: 1h, retry_while_firing: true}
    verify: {resolve_within: 10m}
    escalate: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}}
"""

LADDER = """
rules:
  - name: pool-ladder
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    steps:
      - action:
          type: log
          params: {message: "terminate stuck queries", target: "db/{{ labels.database }}"}
        verify: {resolve_within: 5m}
      - action:
          type: log
          params: {message: "restart the backend", target: "backend/{{ labels.database }}"}
        verify: {resolve_within: 10m}
    escalate: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}}
"""


def pool_alert(*, ended: bool = False) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return servers.alert(
        "DatabaseConnectionPoolExhausted",
        labels={"database": "crm", "severity": "critical"},
        annotations={"summary": "pool at 100%"},
        starts_at=now - dt.timedelta(minutes=1),
        ends_at=now if ended else now + dt.timedelta(hours=1),
    )


@asynccontextmanager
async def alertmanager(webhook_url: str, *, send_resolved: bool = True) -> AsyncIterator[Any]:
    am = servers.AlertmanagerServer(
        webhook_url, group_wait="0s", group_interval="1s", repeat_interval="24h",
        log_level="warn",
    )  # fmt: skip
    am.config["receivers"][0]["webhook_configs"][0]["send_resolved"] = send_resolved
    await asyncio.to_thread(am.start)
    try:
        yield am
    finally:
        await asyncio.to_thread(am.stop)


@asynccontextmanager
async def daemon_behind(
    tmp_path: Path, rules: str, *, send_resolved: bool = True
) -> AsyncIterator[tuple[Harness, Any]]:
    """The in-process daemon, and a real Alertmanager that delivers to it and is asked."""
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}/webhook/alertmanager"
    async with alertmanager(url, send_resolved=send_resolved) as am:
        config = f"alertmanager: {{urls: ['{am.url}'], cache_ttl: 1s, timeout: 2s}}\n"
        async with Harness(
            tmp_path, rules=rules, config=config, now=time.time(), port=port, dry_run=False
        ) as h:
            yield h, am


async def until(h: Harness, what: str, check: Callable[[list[dict[str, Any]]], bool]) -> None:
    async def done() -> bool:
        await h.settle()
        return check(await h.decisions())

    await eventually(done, timeout=20, what=what)


def rows_are(*expected: tuple[str, str]) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: [(r["outcome"], r["reason"]) for r in rows] == list(expected)


async def firing_deliveries(h: Harness) -> float:
    return await h.metric(
        "remediator_alerts_received_total", source="alertmanager", status="firing"
    )


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[servers.WebhookReceiver]:
    async with servers.WebhookReceiver() as receiver:
        monkeypatch.setenv(HOOK, f"{receiver.url}/slack")
        yield receiver


async def test_an_alert_that_keeps_firing_is_retried_by_the_engine_then_escalated_once(
    tmp_path: Path, slack: servers.WebhookReceiver
) -> None:
    async with daemon_behind(tmp_path, RETRYING) as (h, am):
        await asyncio.to_thread(am.post_alerts, [pool_alert()])
        await until(h, "the first attempt", rows_are(("executed", "")))
        await h.advance(5 * MINUTE)  # cooldown over, no resolve, Alertmanager lists it
        assert await h.outcomes() == [("executed", ""), ("executed", "")]
        await h.advance(5 * MINUTE)  # the second attempt did not help: attempts are out
        rows = await h.decisions()
        assert [(r["outcome"], r["reason"], r["attempt"]) for r in rows] == [
            ("executed", "", 1),
            ("executed", "", 2),
            ("skipped", "max_attempts", 0),
        ]
        assert [r["verification"].split(":")[0] for r in rows[:2]] == ["ineffective"] * 2
        await h.advance(60 * MINUTE)
        assert len(slack.requests) == 1
        text = json.loads(slack.requests[0].body)["text"]
        assert "gave up on DatabaseConnectionPoolExhausted" in text
        assert text.count("log db/crm: executed, ineffective") == 2
        assert await firing_deliveries(h) == 1.0  # Alertmanager never re-sent it


async def test_a_retry_is_dropped_once_alertmanager_no_longer_lists_the_alert(
    tmp_path: Path, slack: servers.WebhookReceiver
) -> None:
    # send_resolved off: the resolved notification never comes, only the API tells.
    async with daemon_behind(tmp_path, RETRYING, send_resolved=False) as (h, am):
        await asyncio.to_thread(am.post_alerts, [pool_alert()])
        await until(h, "the first attempt", rows_are(("executed", "")))
        await asyncio.to_thread(am.post_alerts, [pool_alert(ended=True)])
        await h.advance(5 * MINUTE)
        rows = await h.decisions()
        assert [(r["outcome"], r["reason"]) for r in rows] == [
            ("executed", ""),
            ("skipped", "resolved"),
        ]
        assert "Alertmanager no longer lists the alert" in rows[1]["detail"]
        await h.advance(60 * MINUTE)
        assert slack.requests == []


async def test_a_two_step_ladder_resolved_after_step_two_calls_nobody(
    tmp_path: Path, slack: servers.WebhookReceiver
) -> None:
    async with daemon_behind(tmp_path, LADDER) as (h, am):
        await asyncio.to_thread(am.post_alerts, [pool_alert()])
        await until(h, "step 1", rows_are(("executed", "")))
        await h.advance(5 * MINUTE)
        assert [r["step"] for r in await h.decisions()] == [1, 2]
        await asyncio.to_thread(am.post_alerts, [pool_alert(ended=True)])
        await until(
            h,
            "Alertmanager's resolved notification verifying step 2",
            lambda rows: rows[-1]["verification"].startswith("effective"),
        )
        await h.advance(60 * MINUTE)
        rows = await h.decisions()
        assert [(r["step"], r["verification"].split(":")[0]) for r in rows] == [
            (1, "ineffective"),
            (2, "effective"),
        ]
        assert slack.requests == []


async def test_a_ladder_that_never_helps_runs_every_step_once_then_escalates_once(
    tmp_path: Path, slack: servers.WebhookReceiver
) -> None:
    async with daemon_behind(tmp_path, LADDER) as (h, am):
        await asyncio.to_thread(am.post_alerts, [pool_alert()])
        await until(h, "step 1", rows_are(("executed", "")))
        await h.advance(5 * MINUTE)
        await h.advance(10 * MINUTE)
        await h.advance(60 * MINUTE)
        rows = await h.decisions()
        assert [(r["step"], r["outcome"]) for r in rows] == [(1, "executed"), (2, "executed")]
        assert len(slack.requests) == 1
        assert "posted to $REMEDIATOR_TEST_ESCALATE_URL" in rows[1]["escalation"]
        assert await firing_deliveries(h) == 1.0


FAST_LADDER = LADDER.replace("resolve_within: 5m", "resolve_within: 3s").replace(
    "resolve_within: 10m", "resolve_within: 3s"
)


async def test_kill_9_mid_ladder_repeats_no_step_and_escalates_once(
    tmp_path: Path, slack: servers.WebhookReceiver
) -> None:
    env = {HOOK: f"{slack.url}/slack"}
    daemon = DaemonProcess(tmp_path, rules=FAST_LADDER, env=env)
    async with daemon, alertmanager(f"{daemon.url}/webhook/alertmanager") as am:
        await asyncio.to_thread(am.post_alerts, [pool_alert()])

        async def step_two_verifying() -> bool:
            # Its row says executed: the action is done and its verification pending (a
            # kill while the action runs would leave it failed/interrupted, rightly).
            rows = await daemon.decisions()
            return [(r["step"], r["outcome"]) for r in rows] == [(1, "executed"), (2, "executed")]

        await eventually(step_two_verifying, timeout=30, what="step 2 executed")
        daemon.kill()  # mid-ladder: step 2's verification is pending
        await daemon.wait_exit()
        assert slack.requests == []
        await daemon.start()
        await slack.wait_for(lambda r: True, timeout=30)
        await asyncio.sleep(4)  # as long again as a verification: nothing more comes
        rows = await daemon.decisions()
        assert [(r["step"], r["outcome"]) for r in rows] == [(1, "executed"), (2, "executed")]
        assert len(slack.requests) == 1
        daemon.kill()
        await daemon.wait_exit()
        await daemon.start()  # a second restart: the escalation is not sent again
        await asyncio.sleep(4)
        assert len(slack.requests) == 1
        assert len(await daemon.decisions()) == 2


async def test_a_silence_a_person_took_over_from_the_daemon_holds_off_the_next_step(
    tmp_path: Path, slack: servers.WebhookReceiver
) -> None:
    # Alertmanager edits a silence in place (same id) when only its end, author or comment
    # change: the daemon's own silence, extended by a person who says hands off, is theirs.
    rules = LADDER.replace("    escalate:", "    silence_while_remediating: 10m\n    escalate:")
    async with daemon_behind(tmp_path, rules) as (h, am):
        await asyncio.to_thread(am.post_alerts, [pool_alert()])
        await until(h, "step 1", rows_are(("executed", "")))
        [ours] = [
            s
            for s in await asyncio.to_thread(am.list_silences, state="active")
            if s["createdBy"] == "remediator"
        ]
        edited = {k: ours[k] for k in ("id", "matchers", "startsAt")} | {
            "endsAt": servers.rfc3339(dt.datetime.now(dt.UTC) + dt.timedelta(hours=4)),
            "createdBy": "alice",
            "comment": "handling this by hand: hands off",
        }
        answer = await asyncio.to_thread(am.api, "POST", "silences", edited)
        assert answer["silenceID"] == ours["id"]  # the same silence, now alice's
        await h.advance(5 * MINUTE)  # step 1 ineffective: step 2 is due
        rows = await h.decisions()
        assert [(r["step"], r["outcome"], r["reason"]) for r in rows] == [
            (1, "executed", ""),
            (2, "skipped", "silenced"),
        ]
        assert ours["id"] in rows[1]["detail"] and "alice" in rows[1]["detail"]

        # The resolve, as Alertmanager would send it were the alert not silenced.
        ended = servers.rfc3339(dt.datetime.now(dt.UTC))
        gone = {
            "status": "resolved", "labels": pool_alert()["labels"], "annotations": {},
            "startsAt": rows[0]["starts_at"], "endsAt": ended,
            "fingerprint": rows[0]["fingerprint"],
        }  # fmt: skip
        resp = await h.post(payload(gone))
        assert resp.status == 200
        await h.settle()
        row = (await h.decisions())[0]
        assert "left in place on resolve: changed in Alertmanager by alice" in row["silence"]
        [kept] = [s for s in await asyncio.to_thread(am.list_silences) if s["id"] == ours["id"]]
        assert kept["status"]["state"] == "active"  # alice's four hours stand
