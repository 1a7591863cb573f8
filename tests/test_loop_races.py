"""The remediation loop against the races and bad days a review found: a resolve arriving
while the next step is being decided or while an action waits for a slot, a reload mid
ladder, a bug in a transition, a shadow rule next to a live one, an escalation whose
text cannot be rendered, a resolve seen just before a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import START, Harness, am_alert, payload, resolved
from tests.servers import WebhookReceiver
from tests.test_engine_edges import reset_gate

MINUTE = 60.0
HOOK = "REMEDIATOR_TEST_ESCALATE_URL"
LADDER = """
rules:
  - name: pool-ladder
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    steps:
      - action:
          type: log
          params: {message: "terminate", target: "db/{{ labels.database }}"}
        verify: {resolve_within: 5m}
      - action:
          type: log
          params: {message: "restart", target: "backend/{{ labels.database }}"}
        verify: {resolve_within: 10m}
    escalate:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}
"""


def pool() -> dict[str, Any]:
    return am_alert("DatabaseConnectionPoolExhausted", database="crm")


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> Any:
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv(HOOK, f"{receiver.url}/slack")
        yield receiver


class SlowAlertmanager:
    """Alertmanager's API v2 `/alerts`, answering only when the test lets it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def lists_alert(self, alertname: str, fingerprint: str, starts_at: float) -> bool:
        self.entered.set()
        await self.release.wait()
        return True


async def executed_steps(h: Harness) -> list[int]:
    return [r["step"] for r in await h.decisions() if r["outcome"] == "executed"]


async def test_a_resolve_while_the_next_step_is_decided_stops_it_and_keeps_the_verdicts(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        am = SlowAlertmanager()
        h.daemon.engine.loop._alerts = am  # the external API, answering late
        alert = pool()
        await h.fire(alert)
        h.clock.advance(5 * MINUTE)  # step 1 ineffective: step 2 is being decided
        await am.entered.wait()
        await h.post(payload(resolved(alert)))
        await h.daemon.engine.wait_idle()
        am.release.set()
        await h.settle()
        assert await executed_steps(h) == [1]
        rows = await h.decisions()
        assert rows[0]["verification"].startswith("ineffective")  # not rewritten as effective
        assert [(r["step"], r["outcome"], r["reason"]) for r in rows[1:]] == [
            (2, "skipped", "resolved")
        ]
        assert slack.requests == []


SLOW_FIRST = """
rules:
  - name: slow-fix
    matchers: ['alertname = "APIDown"']
    action: {type: test.slow, params: {name: "{{ labels.deployment }}"}}
    limits: {cooldown: 0s}
    verify: {resolve_within: 5m}
"""


async def test_an_action_waiting_for_a_slot_does_not_run_once_its_alert_resolved(
    tmp_path: Path,
) -> None:
    gate = reset_gate()
    config = "limits: {max_concurrent_actions: 1}\n"
    async with Harness(tmp_path, rules=SLOW_FIRST, config=config, dry_run=False) as h:
        await h.post(payload(am_alert("APIDown", deployment="api")))
        await gate.started.wait()  # holds the only slot
        waiting = am_alert("APIDown", deployment="web")
        await h.post(payload(waiting))
        await h.daemon.engine.wait_idle()
        await h.post(payload(resolved(waiting)))
        await h.daemon.engine.wait_idle()
        gate.open.set()
        await h.settle()
        assert gate.calls == ["run"]  # only the first one ran
        rows = {r["target"]: r for r in await h.decisions()}
        assert (rows["test.slow web"]["outcome"], rows["test.slow web"]["reason"]) == (
            "skipped", "resolved",
        )  # fmt: skip
        assert "waited for a slot" in rows["test.slow web"]["detail"]


async def test_a_pause_posted_while_actions_wait_for_slots_holds_them_back(
    tmp_path: Path,
) -> None:
    gate = reset_gate()
    config = "limits: {max_concurrent_actions: 1}\nauth: {admin_token_env: T}\n"
    async with Harness(tmp_path, rules=SLOW_FIRST, config=config, env={"T": "t"},
                       dry_run=False) as h:  # fmt: skip
        await h.post(payload(am_alert("APIDown", deployment="api")))
        await gate.started.wait()
        await h.post(payload(am_alert("APIDown", deployment="web")))
        await h.daemon.engine.wait_idle()
        resp = await h.client.post("/api/v1/pause", headers={"Authorization": "Bearer t"})
        assert resp.status == 200
        gate.open.set()
        await h.settle()
        assert gate.calls == ["run"]
        web = [r for r in await h.decisions() if r["target"] == "test.slow web"]
        assert [(r["outcome"], r["reason"]) for r in web] == [("skipped", "paused")]
        await h.client.post("/api/v1/resume", headers={"Authorization": "Bearer t"})
        await h.advance(MINUTE)  # looked at again once the pause is over: it runs now
        assert gate.calls == ["run", "run"]


async def test_a_reload_mid_ladder_takes_effect_at_the_next_step(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        await h.fire(pool())
        (h.rules_dir / "rules.yaml").write_text(
            LADDER.replace("  - name: pool-ladder\n", "  - name: pool-ladder\n    dry_run: true\n")
        )
        ok, _ = await h.daemon.reload()
        assert ok
        await h.advance(5 * MINUTE)
        rows = await h.decisions()
        assert [(r["step"], r["outcome"], r["reason"]) for r in rows] == [
            (1, "executed", ""),
            (2, "dry_run", "shadow"),  # now in shadow mode: nothing more for real
        ]


async def test_a_rule_removed_mid_ladder_ends_its_remediation_with_a_decision(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        await h.fire(pool())
        (h.rules_dir / "rules.yaml").write_text(LADDER.replace("pool-ladder", "pool-ladder-v2"))
        assert (await h.daemon.reload())[0]
        await h.advance(5 * MINUTE)
        rows = await h.decisions()
        assert [(r["rule"], r["outcome"], r["reason"]) for r in rows] == [
            ("pool-ladder", "executed", ""),
            ("pool-ladder", "skipped", "not_allowed"),
        ]
        assert "removed by a reload" in rows[1]["detail"]
        assert await h.metric("remediator_remediations_active") == 0.0


async def test_a_rule_narrowed_mid_ladder_no_longer_steps_up_on_an_alert_it_left_out(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    # The SRE keeps the rule off the crm database (say its second step is unsafe there):
    # the remediation under way on crm must not take that step after the reload, as an
    # alert held for `for` would not be decided by a rule that no longer matches it.
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        await h.fire(pool())
        narrowed = LADDER.replace(
            "matchers: ['alertname = \"DatabaseConnectionPoolExhausted\"']",
            "matchers: ['alertname = \"DatabaseConnectionPoolExhausted\"', 'database != \"crm\"']",
        )
        assert narrowed != LADDER
        (h.rules_dir / "rules.yaml").write_text(narrowed)
        assert (await h.daemon.reload())[0]
        await h.advance(5 * MINUTE)
        rows = await h.decisions()
        assert [(r["step"], r["outcome"], r["reason"]) for r in rows] == [
            (1, "executed", ""),
            (1, "skipped", "not_allowed"),
        ]
        assert "no longer matches the alert" in rows[1]["detail"]
        assert await h.metric("remediator_remediations_active") == 0.0


async def test_a_bug_in_a_transition_still_calls_a_human(
    tmp_path: Path, slack: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        await h.fire(pool())

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise KeyError("a bug")

        # Fault injection: the next step's decision crashes.
        monkeypatch.setattr(h.daemon.engine.decider, "step", broken)
        await h.advance(5 * MINUTE)
        assert len(slack.requests) == 1
        text = json.loads(slack.requests[0].body)["text"]
        assert "internal error while verifying came due: KeyError" in text
        assert await h.metric("remediator_remediations_active") == 0.0


SHADOW_AND_LIVE = """
rules:
  - name: trial-restart
    dry_run: true
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "api"}}
    limits: {cooldown: 15m}
  - name: live-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "api"}}
    limits: {cooldown: 15m}
"""


async def test_a_shadow_rule_never_holds_back_a_live_rule_on_the_same_target(
    tmp_path: Path,
) -> None:
    config = "limits: {max_actions_per_window: 2}\n"
    async with Harness(tmp_path, rules=SHADOW_AND_LIVE, config=config, dry_run=False) as h:
        await h.fire(am_alert("APIDown", deployment="api"))
        await h.fire(am_alert("APIDown", deployment="api2"))
        rows = await h.decisions()
        assert [(r["rule"], r["outcome"], r["reason"]) for r in rows] == [
            ("trial-restart", "dry_run", "shadow"),
            ("live-restart", "executed", ""),  # the shadow took no cooldown, no budget
            ("trial-restart", "skipped", "cooldown"),  # its own cooldown
            ("live-restart", "skipped", "cooldown"),
        ]


async def test_an_escalation_text_that_cannot_be_rendered_still_calls_a_human(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    rules = LADDER.replace(
        "params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}",
        'params: {url_env: REMEDIATOR_TEST_ESCALATE_URL, text: "page {{ labels.team }}"}',
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(pool())  # no `team` label
        await h.advance(5 * MINUTE)
        await h.advance(10 * MINUTE)
        [request] = slack.requests
        assert "rule pool-ladder gave up" in json.loads(request.body)["text"]
        rows = await h.decisions()
        assert "params did not render" in rows[-1]["escalation"]


async def test_a_resolve_journaled_just_before_a_crash_ends_the_remediation(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    alert = pool()
    async with Harness(tmp_path, rules=LADDER, dry_run=False) as h:
        await h.fire(alert)
        # The resolve is journaled (its 2xx sent) but the daemon dies before deciding it:
        # its journal row is all that is left of it.
        await h.daemon.db.submit(
            lambda c: c.execute(
                "INSERT INTO journal (request_id, source, received_at, payload) "
                "VALUES ('lost', 'alertmanager', '2027-01-15T12:00:00.000000Z', ?)",
                (json.dumps(payload(resolved(alert))).encode(),),
            )
        )
    async with Harness(tmp_path, rules=LADDER, dry_run=False, now=START.timestamp() + 600) as h:
        await h.settle()
        await h.advance(60 * MINUTE)
        rows = await h.decisions()
        assert [(r["step"], r["verification"].split(":")[0]) for r in rows] == [(1, "effective")]
        assert slack.requests == []
