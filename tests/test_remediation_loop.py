"""The remediation loop closes: retry, step up, escalate — a human is always called.

In-process daemon (real SQLite, real HTTP surface) with an injected clock; a local HTTP
receiver stands in for Slack. The integration with a real Alertmanager is in
test_loop_alertmanager.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import START, Harness, am_alert, resolved
from tests.servers import WebhookReceiver

MINUTE = 60.0
HOOK = "REMEDIATOR_TEST_ESCALATE_URL"
CONFIG = "external_url: https://remediator.example\n"

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
    limits: {cooldown: 15m}
    escalate:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}
"""

SINGLE = """
rules:
  - name: pool-terminate
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    action:
      type: log
      params: {message: "terminate stuck queries", target: "db/{{ labels.database }}"}
    verify: {resolve_within: 5m}
    escalate:
      type: notify.webhook
      params:
        url_env: REMEDIATOR_TEST_ESCALATE_URL
        text: >-
          {{ rule.name }} gave up on {{ labels.database }}: {{ remediation.why }}
          {{ decision.url }}
"""


def pool(database: str = "crm", **labels: str) -> dict[str, Any]:
    return am_alert("DatabaseConnectionPoolExhausted", database=database, **labels)


def texts(receiver: WebhookReceiver) -> list[str]:
    return [json.loads(r.body)["text"] for r in receiver.requests]


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> Any:
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv(HOOK, f"{receiver.url}/slack")
        yield receiver


async def steps_of(h: Harness) -> list[tuple[int, str, str]]:
    return [(d["step"], d["outcome"], d["verification"].split(":")[0]) for d in await h.decisions()]


async def test_a_fix_that_does_not_take_calls_a_human_once_with_what_was_tried(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=SINGLE, config=CONFIG, dry_run=False) as h:
        alert = pool()
        await h.fire(alert)
        await h.advance(5 * MINUTE)  # still firing: ineffective, nothing more to try
        [text] = texts(slack)
        [row] = await h.decisions()
        assert text == (
            "pool-terminate gave up on crm: ineffective: still firing 300s after step 1 "
            "(verify.resolve_within) "
            f"https://remediator.example/ui/decisions/{row['id']}"
        )
        assert row["verification"].startswith("ineffective")
        assert "posted to $REMEDIATOR_TEST_ESCALATE_URL" in row["escalation"]
        await h.fire(alert)  # Alertmanager re-sends it hours later: no second page
        await h.advance(60 * MINUTE)
        assert len(slack.requests) == 1


async def test_a_ladder_whose_second_step_helps_stops_there_without_a_page(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        alert = pool()
        await h.fire(alert)
        await h.advance(5 * MINUTE)  # step 1 ineffective: step 2 at once
        await h.advance(3 * MINUTE)
        await h.fire(resolved(alert))
        await h.advance(60 * MINUTE)
        assert await steps_of(h) == [(1, "executed", "ineffective"), (2, "executed", "effective")]
        rows = await h.decisions()
        assert [r["target"] for r in rows] == ["log db/crm", "log backend/crm"]
        assert slack.requests == []
        assert await h.metric("remediator_remediations_active") == 0.0


async def test_a_ladder_that_never_helps_tries_every_step_once_then_pages_once(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        alert = pool()
        await h.fire(alert)
        await h.advance(5 * MINUTE)
        await h.advance(10 * MINUTE)
        await h.fire(alert)
        await h.advance(60 * MINUTE)
        assert await steps_of(h) == [
            (1, "executed", "ineffective"),
            (2, "executed", "ineffective"),
        ]
        [text] = texts(slack)
        rows = await h.decisions()
        assert "rule pool-ladder gave up on DatabaseConnectionPoolExhausted" in text
        assert "- step 1 log db/crm: executed, ineffective" in text
        assert f"(decision {rows[0]['id']})" in text
        assert "- step 2 log backend/crm: executed, ineffective" in text
        assert f"Decision {rows[1]['id']}" in text
        assert rows[1]["escalation"] and not rows[0]["escalation"]


async def test_a_restart_mid_ladder_repeats_no_step_and_pages_once(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    alert = pool()
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        await h.fire(alert)
        await h.advance(5 * MINUTE)  # step 2 runs, its verification is pending
        assert [s for s, _, _ in await steps_of(h)] == [1, 2]
    async with Harness(tmp_path, rules=LADDER, dry_run=False, now=START.timestamp() + 400) as h:
        await h.fire(alert)  # a re-send after the restart: the remediation owns it
        await h.settle()
        [api] = (await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json())[
            "rules"
        ]
        [under_way] = api["remediations"]
        assert (under_way["step"], under_way["phase"]) == (2, "verifying")
        await h.advance(10 * MINUTE)
        assert await steps_of(h) == [
            (1, "executed", "ineffective"),
            (2, "executed", "ineffective"),
        ]
        assert len(slack.requests) == 1
    async with Harness(tmp_path, rules=LADDER, dry_run=False, now=START.timestamp() + 9999) as h:
        await h.fire(alert)
        await h.advance(60 * MINUTE)
        assert len(await h.decisions()) == 2
        assert len(slack.requests) == 1  # never twice, also across restarts


# -- an escalation whose send fails ------------------------------------------------------


async def escalation_of(h: Harness) -> str:
    [row] = await h.decisions()
    return str(row["escalation"])


async def test_an_escalation_whose_send_fails_is_sent_again_until_it_gets_through(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    slack.fail_first = 2  # Slack answers 503 for a while
    async with Harness(tmp_path, rules=SINGLE, config=CONFIG, dry_run=False) as h:
        await h.fire(pool())
        await h.advance(5 * MINUTE)  # ineffective: the escalation's first send fails
        assert len(slack.requests) == 1
        said = await escalation_of(h)
        assert "; escalation failed (attempt 1 of 5; tried again at 2027-01-15T12:05:30" in said
        assert "HTTP 503" in said
        assert await h.metric("remediator_escalations_total", rule="pool-terminate",
                              result="retrying") == 1  # fmt: skip
        assert await h.metric("remediator_remediations_active") == 1  # still escalating
        await h.advance(29)
        assert len(slack.requests) == 1, "tried again before its time"
        await h.advance(1)  # 30 s on: fails again
        assert len(slack.requests) == 2
        assert "(attempt 2 of 5; tried again at 2027-01-15T12:06:30" in await escalation_of(h)
        await h.advance(MINUTE)  # a minute on: it gets through
        assert len(slack.requests) == 3
        assert len(set(texts(slack))) == 1, "the same message each time"
        said = await escalation_of(h)
        assert "posted to $REMEDIATOR_TEST_ESCALATE_URL (HTTP 200)" in said
        assert "(attempt 3 of 5; the one before failed: notify.webhook" in said
        assert "escalation failed" not in said  # counted as sent after a restart
        assert await h.metric("remediator_escalations_total", rule="pool-terminate",
                              result="retrying") == 2  # fmt: skip
        assert await h.metric("remediator_escalations_total", rule="pool-terminate",
                              result="ok") == 1  # fmt: skip
        assert await h.metric("remediator_remediations_active") == 0
        await h.advance(60 * MINUTE)
        assert len(slack.requests) == 3


async def test_an_escalation_that_never_gets_through_stops_after_five_sends(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    slack.fail_first = 1000
    async with Harness(tmp_path, rules=SINGLE, config=CONFIG, dry_run=False) as h:
        await h.fire(pool())
        await h.advance(5 * MINUTE)
        for wait in (30, 60, 120, 300):
            await h.advance(wait)
        assert len(slack.requests) == 5
        said = await escalation_of(h)
        assert "; escalation failed (attempt 5 of 5, the last): notify.webhook" in said
        assert await h.metric("remediator_escalations_total", rule="pool-terminate",
                              result="retrying") == 4  # fmt: skip
        assert await h.metric("remediator_escalations_total", rule="pool-terminate",
                              result="error") == 1  # fmt: skip
        assert await h.metric("remediator_remediations_active") == 0
        await h.advance(24 * 60 * MINUTE)
        assert len(slack.requests) == 5, "never retried forever"


async def test_an_escalation_refused_for_good_is_not_sent_again(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    slack.status = 404  # a deleted Slack webhook: trying again cannot help
    async with Harness(tmp_path, rules=SINGLE, config=CONFIG, dry_run=False) as h:
        await h.fire(pool())
        await h.advance(5 * MINUTE)
        await h.advance(60 * MINUTE)
        assert len(slack.requests) == 1
        assert "; escalation failed: notify.webhook" in await escalation_of(h)
        assert await h.metric("remediator_escalations_total", rule="pool-terminate",
                              result="error") == 1  # fmt: skip
        assert await h.metric("remediator_remediations_active") == 0


@pytest.mark.parametrize("down_for", [10.0, 10 * MINUTE])
async def test_an_escalation_to_be_sent_again_outlives_a_restart(
    tmp_path: Path, slack: WebhookReceiver, down_for: float
) -> None:
    slack.fail_first = 1
    alert = pool()
    h = Harness(tmp_path, rules=SINGLE, config=CONFIG, dry_run=False)
    async with h:
        await h.fire(alert)
        await h.advance(5 * MINUTE)  # the first send fails; the next is due in 30 s
        assert len(slack.requests) == 1
    h.clock.advance(down_for)  # the daemon is down: its next send falls due, or not yet
    async with h:
        await h.fire(alert)  # Alertmanager re-sends: the escalation still owns it
        await h.advance(30)
        assert len(slack.requests) == 2
        assert "(attempt 2 of 5; the one before failed" in await escalation_of(h)
        await h.advance(60 * MINUTE)
        assert [d["outcome"] for d in await h.decisions()] == ["executed"]
    async with h:
        await h.advance(60 * MINUTE)
    assert len(slack.requests) == 2, "sent once it got through, also across restarts"


async def test_a_resolve_while_the_next_step_waits_for_its_cooldown_ends_the_ladder(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    rules = LADDER.replace(
        'target: "backend/{{ labels.database }}"', 'target: "db/{{ labels.database }}"'
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        alert = pool()
        await h.fire(alert)
        await h.advance(5 * MINUTE)  # step 2 acts on the same target: waits for the cooldown
        assert await steps_of(h) == [(1, "executed", "ineffective")]
        await h.fire(resolved(alert))
        await h.advance(60 * MINUTE)
        assert await h.outcomes() == [("executed", ""), ("skipped", "resolved")]
        assert (await h.decisions())[1]["step"] == 2
        assert slack.requests == []


async def test_the_next_step_runs_once_the_cooldown_of_its_target_ends(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    rules = LADDER.replace(
        'target: "backend/{{ labels.database }}"', 'target: "db/{{ labels.database }}"'
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(pool())
        await h.advance(5 * MINUTE)
        await h.advance(10 * MINUTE - 1)
        assert len(await h.decisions()) == 1
        await h.advance(1)  # 15 minutes after step 1: its target's cooldown is over
        assert await steps_of(h) == [(1, "executed", "ineffective"), (2, "executed", "")]


async def test_a_step_refused_by_an_open_circuit_ends_the_ladder_with_a_page(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    rules = LADDER.replace(
        "limits: {cooldown: 15m}", "limits: {cooldown: 0s}\n    circuit_breaker: {open_after: 1}"
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(pool())
        await h.advance(5 * MINUTE)
        await h.advance(10 * MINUTE)  # both targets' circuits are open now
        await h.fire(pool())  # a new occurrence: refused by the circuit, a human is called
        assert await h.outcomes() == [
            ("executed", ""),
            ("executed", ""),
            ("skipped", "circuit_open"),
        ]
        assert len(slack.requests) == 2


async def test_a_shadow_rule_records_what_it_would_do_while_another_acts(
    tmp_path: Path,
) -> None:
    rules = """
rules:
  - name: trusted
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "a"}}
  - name: trial
    dry_run: true
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "scale", target: "b"}}
"""
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(am_alert("APIDown"))
        rows = await h.decisions()
        assert [(d["rule"], d["outcome"], d["reason"]) for d in rows] == [
            ("trusted", "executed", ""),
            ("trial", "dry_run", "shadow"),
        ]
        assert rows[1]["detail"] == "shadow: would log: scale"
        shadow = await h.metric(
            "remediator_decisions_total", rule="trial", outcome="dry_run", reason="shadow"
        )
        assert shadow == 1.0
        [_, trial] = (await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json())[
            "rules"
        ]
        assert trial["dry_run"] is True


async def test_label_values_in_a_slack_text_cannot_mention_or_link(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    rules = SINGLE.split("        text: >-", maxsplit=1)[0] + (
        '        text: "<https://runbooks.example|runbook> {{ labels.database }}'
        ' {{ annotations.summary }}"\n'
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(pool(annotations={"summary": "<!channel> & <https://evil.example|click>"}))
        await h.advance(5 * MINUTE)
        [text] = texts(slack)
        assert text == (
            "<https://runbooks.example|runbook> crm "
            "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;"
        )


async def test_the_default_escalation_text_escapes_what_the_alert_carries(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        await h.fire(pool(annotations={"summary": "<!here> pool full"}))
        await h.advance(5 * MINUTE)
        await h.advance(10 * MINUTE)
        [text] = texts(slack)
        assert "&lt;!here&gt; pool full" in text
        assert "<!here>" not in text


ADMIN = "auth: {admin_token_env: REMEDIATOR_TEST_ADMIN_TOKEN}\n"
ADMIN_ENV = {"REMEDIATOR_TEST_ADMIN_TOKEN": "tok"}
LOG = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "{{ labels.deployment }}"}}
    limits: {cooldown: 0s}
  - name: db-terminate
    matchers: ['alertname = "DBDown"']
    action: {type: log, params: {message: "terminate", target: "db"}}
    limits: {cooldown: 0s}
"""


async def admin(h: Harness, path: str, body: Any = None) -> tuple[int, Any]:
    resp = await h.client.post(
        path, headers={"Authorization": "Bearer tok"}, data=json.dumps(body) if body else b""
    )
    return resp.status, await resp.json()


async def test_a_pause_with_until_outlives_a_restart_and_lifts_by_itself(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=LOG, config=ADMIN, env=ADMIN_ENV) as h:
        status, answer = await admin(
            h, "/api/v1/pause", {"reason": "db maintenance", "until": "30m", "by": "ana"}
        )
        assert (status, answer["pause"]["by"], answer["pause"]["reason"]) == (
            200, "ana", "db maintenance",
        )  # fmt: skip
    async with Harness(tmp_path, rules=LOG, config=ADMIN, env=ADMIN_ENV) as h:
        await h.fire(am_alert("APIDown", deployment="api"))
        [row] = await h.decisions()
        assert (row["outcome"], row["reason"]) == ("skipped", "paused")
        assert "paused by ana until 2027-01-15T12:30:00" in row["detail"]
        assert "db maintenance" in row["detail"]
        answer = await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json()
        assert answer["paused"] is True and answer["pause"]["by"] == "ana"
        assert await h.metric("remediator_paused") == 1.0
        await h.advance(30 * MINUTE)
        await h.fire(am_alert("APIDown", deployment="api"))
        assert (await h.outcomes())[-1] == ("dry_run", "")
        assert (await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json())[
            "paused"
        ] is False
        assert await h.metric("remediator_paused") == 0.0


async def test_one_rule_can_be_paused_while_the_others_act(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=LOG, config=ADMIN, env=ADMIN_ENV) as h:
        assert (await admin(h, "/api/v1/rules/nope/pause"))[0] == 404
        status, _ = await admin(h, "/api/v1/rules/api-restart/pause", {"reason": "flapping"})
        assert status == 200
        await h.fire(am_alert("APIDown", deployment="api"), am_alert("DBDown"))
        assert await h.outcomes() == [("skipped", "paused"), ("dry_run", "")]
        assert "rule api-restart is paused" in (await h.decisions())[0]["detail"]
        assert await h.metric("remediator_rule_paused", rule="api-restart") == 1.0
        [api, db] = (await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json())[
            "rules"
        ]
        assert api["paused"]["reason"] == "flapping" and db["paused"] is None
    async with Harness(tmp_path, rules=LOG, config=ADMIN, env=ADMIN_ENV) as h:
        await h.fire(am_alert("APIDown", deployment="web"))
        assert (await h.outcomes())[-1] == ("skipped", "paused")  # persisted
        assert (await admin(h, "/api/v1/rules/api-restart/resume"))[0] == 200
        await h.fire(am_alert("APIDown", deployment="web2"))
        assert (await h.outcomes())[-1] == ("dry_run", "")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"until": "yesterday"}, "until"),
        ({"until": "2020-01-01T00:00:00Z"}, "past"),
        ({"reason": "x" * 600}, "reason"),
        ({"reason": 5}, "reason"),
        ([1, 2], "object"),
    ],
)
async def test_a_malformed_pause_request_is_a_400(tmp_path: Path, body: Any, error: str) -> None:
    async with Harness(tmp_path, rules=LOG, config=ADMIN, env=ADMIN_ENV) as h:
        status, answer = await admin(h, "/api/v1/pause", body)
        assert status == 400 and error in answer["error"]
        assert not h.daemon.state.paused


async def test_a_decision_has_its_own_link(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=LOG) as h:
        await h.fire(am_alert("APIDown", deployment="api"))
        [row] = await h.decisions()
        resp = await h.client.get(f"/api/v1/decisions/{row['id']}")
        assert resp.status == 200 and (await resp.json())["rule"] == "api-restart"
        assert (await h.client.get("/api/v1/decisions/999")).status == 404
        assert (await h.client.get("/api/v1/decisions/x")).status == 400
