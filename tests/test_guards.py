"""Each guard of the engine, in the order of DESIGN.md, with an injected clock.

Every test shows a guard's skip and, where the guard lifts (a window passes, a circuit
resets, a pause ends), the action coming back: remove the guard and the test fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.harness import START, Harness, am_alert, payload, resolved
from tests.servers import WebhookReceiver

MINUTE = 60.0
HOUR = 3600.0

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


def restart_rule(limits: str, *, extra: str = "") -> str:
    """RESTART with other limits (and optionally more rule keys), as a rule file."""
    return f"""
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{{{ labels.deployment }}}}"
        target: "{{{{ labels.namespace }}}}/{{{{ labels.deployment }}}}"
    limits: {limits}
{extra}"""


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


# -- cooldown across rules --------------------------------------------------------

TWO_RULES_ONE_TARGET = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params: {message: "restart", target: "{{ labels.namespace }}/{{ labels.deployment }}"}
    limits: {cooldown: 15m}
  - name: api-restart-on-errors
    matchers: ['alertname = "APIErrors"']
    action:
      type: log
      params: {message: "restart", target: "{{ labels.namespace }}/{{ labels.deployment }}"}
    limits: {cooldown: 15m}
"""


async def test_two_rules_acting_on_the_same_target_share_its_cooldown(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=TWO_RULES_ONE_TARGET) as h:
        await h.fire(fresh())
        await h.advance(MINUTE)
        await h.fire(am_alert("APIErrors", namespace="prod", deployment="api"))
        await h.fire(am_alert("APIErrors", namespace="prod", deployment="web"))
        await h.advance(15 * MINUTE)
        await h.fire(am_alert("APIErrors", namespace="prod", deployment="api"))
        rows = await h.decisions()
        assert [(d["rule"], d["target"], d["outcome"], d["reason"]) for d in rows] == [
            ("api-restart", "log prod/api", "dry_run", ""),
            ("api-restart-on-errors", "log prod/api", "skipped", "cooldown"),
            ("api-restart-on-errors", "log prod/web", "dry_run", ""),
            ("api-restart-on-errors", "log prod/api", "dry_run", ""),
        ]
        assert "limits.cooldown" in rows[1]["detail"]


# -- attempts, rule rate, global budgets ------------------------------------------


async def test_a_rule_gives_up_on_a_target_after_max_attempts_until_the_window_passes(
    tmp_path: Path,
) -> None:
    rules = restart_rule("{cooldown: 0s, max_attempts: 2, window: 1h}")
    async with Harness(tmp_path, rules=rules) as h:
        for _ in range(3):
            await h.fire(fresh())
        await h.fire(fresh("web"))  # another target has its own attempts
        await h.advance(HOUR)
        await h.fire(fresh())
        rows = await h.decisions()
        assert [(d["target"], d["outcome"], d["reason"], d["attempt"]) for d in rows] == [
            ("log prod/api", "dry_run", "", 1),
            ("log prod/api", "dry_run", "", 2),
            ("log prod/api", "skipped", "max_attempts", 0),
            ("log prod/web", "dry_run", "", 1),
            ("log prod/api", "dry_run", "", 1),
        ]
        assert "limits.max_attempts=2" in rows[2]["detail"]


async def test_a_rule_with_max_actions_is_rate_limited_across_all_its_targets(
    tmp_path: Path,
) -> None:
    rules = restart_rule("{cooldown: 0s, max_actions: 2, window: 1h}")
    async with Harness(tmp_path, rules=rules) as h:
        for deployment in ("api", "web", "db"):
            await h.fire(fresh(deployment))
        await h.advance(HOUR)
        await h.fire(fresh("db"))
        rows = await h.decisions()
        assert [(d["outcome"], d["reason"]) for d in rows] == [
            ("dry_run", ""),
            ("dry_run", ""),
            ("skipped", "rate_limited"),
            ("dry_run", ""),
        ]
        assert "limits.max_actions=2" in rows[2]["detail"]


async def test_the_global_action_budget_stops_every_rule_once_spent(tmp_path: Path) -> None:
    rules = restart_rule("{cooldown: 0s, max_attempts: 10}")
    config = "limits: {window: 1h, max_actions_per_window: 2}\n"
    async with Harness(tmp_path, rules=rules, config=config) as h:
        for deployment in ("api", "web", "db"):
            await h.fire(fresh(deployment))
        await h.advance(HOUR)
        await h.fire(fresh("db"))
        rows = await h.decisions()
        assert [(d["outcome"], d["reason"]) for d in rows] == [
            ("dry_run", ""),
            ("dry_run", ""),
            ("skipped", "budget_exhausted"),
            ("dry_run", ""),
        ]
        assert "limits.max_actions_per_window=2" in rows[2]["detail"]


async def test_the_distinct_target_budget_refuses_a_new_target_but_not_a_touched_one(
    tmp_path: Path,
) -> None:
    rules = restart_rule("{cooldown: 0s, max_attempts: 10}")
    config = "limits: {window: 1h, max_targets_per_window: 2}\n"
    async with Harness(tmp_path, rules=rules, config=config) as h:
        for deployment in ("api", "web", "db", "api", "web"):
            await h.fire(fresh(deployment))
        await h.advance(HOUR)
        await h.fire(fresh("db"))
        rows = await h.decisions()
        assert [(d["target"], d["outcome"], d["reason"]) for d in rows] == [
            ("log prod/api", "dry_run", ""),
            ("log prod/web", "dry_run", ""),
            ("log prod/db", "skipped", "budget_exhausted"),
            ("log prod/api", "dry_run", ""),
            ("log prod/web", "dry_run", ""),
            ("log prod/db", "dry_run", ""),
        ]
        assert "limits.max_targets_per_window=2" in rows[2]["detail"]


# -- circuit breaker, verification, escalation -------------------------------------

FAILING_WEBHOOK = """
rules:
  - name: api-notify
    matchers: ['alertname = "APIDown"']
    action: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_HOOK}}
    limits: {cooldown: 0s, max_attempts: 10}
    circuit_breaker: {open_after: 2, reset_after: 30m}
"""


async def test_a_circuit_opens_after_consecutive_failures_and_lets_one_attempt_through_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # action_timeout 1s: a 500 is not retried within the budget, so no real sleep.
    config = "limits: {action_timeout: 1s}\n"
    async with WebhookReceiver(status=500) as receiver:
        monkeypatch.setenv("REMEDIATOR_TEST_HOOK", f"{receiver.url}/hook")
        async with Harness(tmp_path, rules=FAILING_WEBHOOK, config=config, dry_run=False) as h:
            for _ in range(3):
                await h.fire(fresh())
            assert len(receiver.requests) == 2
            await h.advance(30 * MINUTE)
            await h.fire(fresh())  # half-open: one attempt goes through, fails, re-opens
            await h.fire(fresh())
            rows = await h.decisions()
            assert [(d["outcome"], d["reason"]) for d in rows] == [
                ("failed", "action_error"),
                ("failed", "action_error"),
                ("skipped", "circuit_open"),
                ("failed", "action_error"),
                ("skipped", "circuit_open"),
            ]
            assert "HTTP 500" in rows[0]["detail"]
            assert "circuit_breaker.reset_after" in rows[2]["detail"]
            assert len(receiver.requests) == 3


async def test_attempts_that_do_not_resolve_the_alert_are_ineffective_and_open_the_circuit(
    tmp_path: Path,
) -> None:
    rules = restart_rule(
        "{cooldown: 0s, max_attempts: 10}",
        extra="    verify: {resolve_within: 10m}\n"
        "    circuit_breaker: {open_after: 2, reset_after: 1h}\n",
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(fresh())
        await h.advance(10 * MINUTE - 1)
        assert [d["verification"] for d in await h.decisions()] == [""]
        await h.advance(1)
        await h.fire(fresh())
        await h.advance(10 * MINUTE)
        await h.fire(fresh())
        rows = await h.decisions()
        assert [(d["outcome"], d["reason"]) for d in rows] == [
            ("executed", ""),
            ("executed", ""),
            ("skipped", "circuit_open"),
        ]
        assert rows[0]["verification"].startswith("ineffective")
        assert rows[1]["verification"].startswith("ineffective")
        assert "verify.resolve_within" in rows[0]["verification"]
        assert (
            await h.metric(
                "remediator_remediation_verified_total", rule="api-restart", result="ineffective"
            )
            == 2.0
        )


async def test_an_attempt_resolved_in_time_is_effective_and_resets_the_failure_count(
    tmp_path: Path,
) -> None:
    rules = restart_rule(
        "{cooldown: 0s, max_attempts: 10}",
        extra="    verify: {resolve_within: 10m}\n"
        "    circuit_breaker: {open_after: 2, reset_after: 1h}\n",
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(fresh())
        await h.advance(10 * MINUTE)  # ineffective: 1 consecutive failure
        second = fresh()
        await h.fire(second)
        await h.advance(5 * MINUTE)
        await h.fire(resolved(second))  # effective: the count starts again
        await h.advance(10 * MINUTE)  # past its deadline: stays effective
        await h.fire(fresh())
        await h.advance(10 * MINUTE)  # ineffective: 1 again, so the circuit stays closed
        await h.fire(fresh())
        rows = await h.decisions()
        assert [(d["outcome"], d["verification"].split(":")[0]) for d in rows] == [
            ("executed", "ineffective"),
            ("executed", "effective"),
            ("executed", "ineffective"),
            ("executed", ""),
        ]
        assert (
            await h.metric(
                "remediator_remediation_verified_total", rule="api-restart", result="effective"
            )
            == 1.0
        )


async def test_a_rule_with_resolve_within_never_is_not_verified(tmp_path: Path) -> None:
    rules = restart_rule(
        "{cooldown: 0s, max_attempts: 10}",
        extra="    verify: {resolve_within: never}\n"
        "    circuit_breaker: {open_after: 1, reset_after: 1h}\n",
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(fresh())
        await h.advance(24 * HOUR)
        await h.fire(fresh())
        rows = await h.decisions()
        assert [(d["outcome"], d["verification"]) for d in rows] == [
            ("executed", ""),
            ("executed", ""),
        ]


async def test_a_half_open_circuit_lets_only_one_attempt_through_until_its_result_is_known(
    tmp_path: Path,
) -> None:
    rules = restart_rule(
        "{cooldown: 0s, max_attempts: 10}",
        extra="    verify: {resolve_within: 10m}\n"
        "    circuit_breaker: {open_after: 1, reset_after: 30m}\n",
    )
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        await h.fire(fresh())
        await h.advance(10 * MINUTE)  # ineffective: the circuit opens
        await h.advance(30 * MINUTE)  # half-open
        await h.fire(fresh())  # the one trial attempt; its verification is pending
        await h.advance(MINUTE)
        await h.fire(fresh())
        assert await h.outcomes() == [
            ("executed", ""),
            ("executed", ""),
            ("skipped", "circuit_open"),
        ]


ESCALATING = """
rules:
  - name: api-notify
    matchers: ['alertname = "APIDown"']
    action: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_UNSET_HOOK}}
    limits: {cooldown: 0s, max_attempts: 10, window: 1h}
    circuit_breaker: {open_after: 2, reset_after: 10m}
    escalate:
      type: notify.webhook
      params:
        url_env: REMEDIATOR_TEST_ESCALATE_URL
        text: "remediator gave up on {{ labels.namespace }}/{{ labels.deployment }}"
"""


def texts(receiver: WebhookReceiver) -> list[str]:
    return [r.json()["text"] for r in receiver.requests]


async def test_every_occurrence_that_gets_no_further_attempt_is_escalated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REMEDIATOR_TEST_UNSET_HOOK", raising=False)  # the action fails
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv("REMEDIATOR_TEST_ESCALATE_URL", f"{receiver.url}/escalate")
        async with Harness(tmp_path, rules=ESCALATING, dry_run=False) as h:
            first = fresh()
            await h.fire(first)  # fails: nothing more will be tried for it
            assert texts(receiver) == ["remediator gave up on prod/api"]
            await h.fire(first)  # a re-send of the same occurrence: never a second page
            assert len(receiver.requests) == 1
            await h.fire(fresh())  # fails again: the circuit opens
            await h.fire(fresh())  # refused by the open circuit: a human must know too
            assert len(receiver.requests) == 3
            await h.advance(10 * MINUTE)
            await h.fire(fresh())  # the half-open trial fails: escalated
            assert len(receiver.requests) == 4
            rows = await h.decisions()
            assert [(d["outcome"], d["reason"]) for d in rows] == [
                ("failed", "action_error"),
                ("failed", "action_error"),
                ("skipped", "circuit_open"),
                ("failed", "action_error"),
            ]
            assert "REMEDIATOR_TEST_UNSET_HOOK is unset" in rows[0]["detail"]
            for row in rows:
                assert "posted to $REMEDIATOR_TEST_ESCALATE_URL (HTTP 200)" in row["escalation"]
            assert rows[0]["escalation"].startswith("step 1 failed")
            assert "circuit_breaker.reset_after" in rows[2]["escalation"]
            assert receiver.url not in "".join(d["escalation"] for d in rows)  # a secret
            assert (
                await h.metric("remediator_escalations_total", rule="api-notify", result="ok")
                == 4.0
            )


ATTEMPTS_RUN_OUT = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params: {message: "restart", target: "{{ labels.namespace }}/{{ labels.deployment }}"}
    limits: {cooldown: 0s, max_attempts: 2, window: 1h}
    verify: {resolve_within: never}
    escalate:
      type: notify.webhook
      params:
        url_env: REMEDIATOR_TEST_ESCALATE_URL
        text: "attempts ran out on {{ labels.namespace }}/{{ labels.deployment }}"
"""


async def test_an_occurrence_refused_because_attempts_ran_out_is_escalated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv("REMEDIATOR_TEST_ESCALATE_URL", f"{receiver.url}/escalate")
        async with Harness(tmp_path, rules=ATTEMPTS_RUN_OUT, dry_run=False) as h:
            await h.fire(fresh())
            await h.fire(fresh())
            assert receiver.requests == []
            await h.fire(fresh())
            assert await h.outcomes() == [
                ("executed", ""),
                ("executed", ""),
                ("skipped", "max_attempts"),
            ]
            assert texts(receiver) == ["attempts ran out on prod/api"]
            rows = await h.decisions()
            assert "posted to $REMEDIATOR_TEST_ESCALATE_URL" in rows[2]["escalation"]
            assert (
                await h.metric("remediator_escalations_total", rule="api-restart", result="ok")
                == 1.0
            )


async def test_a_storm_of_escalations_is_cut_at_the_global_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = "limits: {max_escalations_per_window: 2, window: 1h}\n"
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv("REMEDIATOR_TEST_ESCALATE_URL", f"{receiver.url}/escalate")
        async with Harness(tmp_path, rules=ATTEMPTS_RUN_OUT, config=config, dry_run=False) as h:
            for _ in range(5):
                await h.fire(fresh())
            assert len(receiver.requests) == 2
            rows = await h.decisions()
            assert "limits.max_escalations_per_window" in rows[4]["escalation"]
            suppressed = await h.metric(
                "remediator_escalations_total", rule="api-restart", result="suppressed"
            )
            assert suppressed == 1.0
            await h.advance(HOUR)
            for _ in range(3):  # a window later: two attempts, then a human is called again
                await h.fire(fresh())
            assert len(receiver.requests) == 3


# -- pause, blackout, `for`, dry-run, lock ----------------------------------------

ADMIN = "auth: {admin_token_env: REMEDIATOR_TEST_ADMIN_TOKEN}\n"
ADMIN_ENV = {"REMEDIATOR_TEST_ADMIN_TOKEN": "tok"}


async def admin_post(h: Harness, path: str, token: str = "tok") -> tuple[int, Any]:
    resp = await h.client.post(path, headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.json()


async def test_pause_skips_every_decision_and_after_resume_a_redelivery_is_decided(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=RESTART, config=ADMIN, env=ADMIN_ENV) as h:
        assert (await admin_post(h, "/api/v1/pause", token="wrong"))[0] == 401
        status, answer = await admin_post(h, "/api/v1/pause")
        assert (status, answer["paused"]) == (200, True)
        alert = fresh()
        await h.fire(alert)
        await h.fire(alert)  # still paused: the pause decision stands, no second row
        assert await h.outcomes() == [("skipped", "paused")]
        assert await admin_post(h, "/api/v1/resume") == (200, {"status": "ok", "paused": False})
        await h.fire(alert)  # Alertmanager's next re-send of the still-firing alert
        rows = await h.decisions()
        assert [(d["outcome"], d["reason"]) for d in rows] == [
            ("skipped", "paused"),
            ("dry_run", ""),
        ]
        assert rows[0]["fingerprint"] == rows[1]["fingerprint"]


@pytest.mark.parametrize(
    "blackout",
    [
        # START is Friday 2027-01-15 12:00 UTC
        "{name: freeze, start: 2027-01-15T11:00:00Z, end: 2027-01-15T13:00:00Z}",
        "{name: freeze, days: [fri], from: '11:00', to: '13:00'}",
    ],
    ids=["absolute", "weekly"],
)
async def test_a_blackout_window_skips_until_it_ends(tmp_path: Path, blackout: str) -> None:
    config = f"blackouts:\n  - {blackout}\n"
    async with Harness(tmp_path, rules=RESTART, config=config) as h:
        alert = fresh()
        await h.fire(alert)
        await h.advance(59 * MINUTE)
        await h.fire(alert)
        await h.advance(MINUTE)  # 13:00: the window is over
        await h.fire(alert)
        rows = await h.decisions()
        assert [(d["outcome"], d["reason"]) for d in rows] == [
            ("skipped", "blackout"),
            ("dry_run", ""),
        ]
        assert "'freeze'" in rows[0]["detail"]


SCOPED = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params: {message: "restart", target: "{{ labels.namespace }}/{{ labels.deployment }}"}
  - name: db-restart
    matchers: ['alertname = "DBDown"']
    action:
      type: log
      params: {message: "restart", target: "{{ labels.namespace }}/{{ labels.deployment }}"}
"""

SCOPED_BLACKOUTS = """
blackouts:
  - name: batch-friday
    days: [fri]
    matchers: ['namespace = "batch"']
  - name: db-freeze
    start: 2027-01-15T00:00:00Z
    end: 2027-01-16T00:00:00Z
    rules: [db-restart]
"""


async def test_a_blackout_scoped_by_matchers_or_rules_leaves_the_others_alone(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=SCOPED, config=SCOPED_BLACKOUTS) as h:
        await h.fire(am_alert("APIDown", namespace="prod", deployment="api"))
        await h.fire(am_alert("APIDown", namespace="batch", deployment="etl"))
        await h.fire(am_alert("DBDown", namespace="prod", deployment="db"))
        rows = await h.decisions()
        assert [(d["rule"], d["outcome"], d["reason"]) for d in rows] == [
            ("api-restart", "dry_run", ""),
            ("api-restart", "skipped", "blackout"),
            ("db-restart", "skipped", "blackout"),
        ]
        assert "'batch-friday'" in rows[1]["detail"]
        assert "'db-freeze'" in rows[2]["detail"]


FOR_5M = restart_rule("{cooldown: 15m}", extra="    for: 5m\n")


def young(**labels: str) -> dict[str, object]:
    """APIDown that started one minute before START: four minutes short of `for: 5m`."""
    return am_alert(
        "APIDown",
        starts_at=START - dt.timedelta(minutes=1),
        namespace="prod",
        deployment="api",
        **labels,
    )


async def test_an_alert_younger_than_for_is_held_and_decided_at_that_age_without_a_resend(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=FOR_5M) as h:
        alert = young()
        await h.fire(alert)
        assert await h.decisions() == []
        await h.advance(2 * MINUTE)
        await h.fire(alert)  # a re-send while held adds nothing
        await h.advance(2 * MINUTE - 1)
        assert await h.decisions() == []
        await h.advance(1)
        [d] = await h.decisions()
        assert (d["outcome"], d["decided_at"]) == ("dry_run", "2027-01-15T12:04:00.000000Z")
        await h.advance(HOUR)
        assert len(await h.decisions()) == 1


async def test_an_alert_that_resolves_before_its_for_is_skipped_as_too_young(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=FOR_5M) as h:
        alert = young()
        await h.fire(alert)
        await h.advance(2 * MINUTE)
        await h.fire(resolved(alert))
        await h.advance(HOUR)
        rows = await h.decisions()
        assert [(d["outcome"], d["reason"]) for d in rows] == [("skipped", "too_young")]
        assert "for=300s" in rows[0]["detail"]


NOTIFY = """
rules:
  - name: api-notify
    matchers: ['alertname = "APIDown"']
    action:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_HOOK, text: "APIDown on {{ labels.deployment }}"}
"""


async def test_dry_run_is_the_default_and_only_dry_run_false_calls_the_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv("REMEDIATOR_TEST_HOOK", f"{receiver.url}/hook")
        (tmp_path / "default").mkdir()
        async with Harness(tmp_path / "default", rules=NOTIFY) as h:
            await h.fire(fresh())
            [d] = await h.decisions()
            assert (d["outcome"], d["detail"]) == (
                "dry_run",
                "would post to $REMEDIATOR_TEST_HOOK: APIDown on api",
            )
        assert receiver.requests == []
        (tmp_path / "live").mkdir()
        async with Harness(tmp_path / "live", rules=NOTIFY, dry_run=False) as h:
            await h.fire(fresh())
            [d] = await h.decisions()
            assert d["outcome"] == "executed"
        assert texts(receiver) == ["APIDown on api"]


@dataclasses.dataclass
class BlockingReceiver(WebhookReceiver):
    """Records each request at once, then answers only once `release` is set."""

    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, init=False)

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        await self.release.wait()
        return response


LOCKING = """
rules:
  - name: api-down-notify
    matchers: ['alertname = "APIDown"']
    action: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_HOOK}}
    limits: {cooldown: 0s}
  - name: api-errors-notify
    matchers: ['alertname = "APIErrors"']
    action: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_HOOK}}
    limits: {cooldown: 0s}
"""


async def test_while_an_action_runs_on_a_target_another_rule_for_it_is_locked_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with BlockingReceiver() as receiver:
        monkeypatch.setenv("REMEDIATOR_TEST_HOOK", f"{receiver.url}/hook")
        async with Harness(tmp_path, rules=LOCKING, dry_run=False) as h:
            try:
                resp = await h.post(payload(am_alert("APIDown", deployment="api")))
                assert resp.status == 200
                await receiver.wait_for(lambda r: True)  # the action is now running
                resp = await h.post(payload(am_alert("APIErrors", deployment="api")))
                assert resp.status == 200
                await h.daemon.engine.wait_idle()
                await h.daemon.db.submit(lambda c: None)  # the skip row is committed
                rows = await h.decisions()
                assert [(d["rule"], d["reason"]) for d in rows][1:] == [
                    ("api-errors-notify", "locked")
                ]
                assert "still running" in rows[1]["detail"]
            finally:
                receiver.release.set()
            await h.settle()
            await h.fire(am_alert("APIErrors", deployment="api"))  # the lock is gone
            assert await h.outcomes() == [
                ("executed", ""),
                ("skipped", "locked"),
                ("executed", ""),
            ]
