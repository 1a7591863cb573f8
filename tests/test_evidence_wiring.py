"""What the engine does with what actions capture and open: evidence in the decision and
the escalation text, and a PagerDuty page resolved when its alert resolves.

Real servers on loopback: the Kubernetes emulator (with the manifest's RBAC enforced)
and a local PagerDuty Events API v2 that checks every body (tests/test_actions_notify.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import START, Harness, am_alert, resolved
from tests.kube_emulator import KubeEmulator
from tests.servers import WebhookReceiver
from tests.test_actions_kubernetes import config
from tests.test_actions_kubernetes_rollback import crashing
from tests.test_actions_notify import ROUTING_KEY, PagerDuty

MINUTE = 60.0
RESTART = """
rules:
  - name: apidown-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: kubernetes.rollout_restart
      params: {namespace: "{{ labels.namespace }}", name: "{{ labels.deployment }}"}
    verify: {resolve_within: 5m}
    escalate: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}}
"""


@pytest.fixture
async def emu() -> Any:
    from tests import kube_emulator as emu_mod  # noqa: PLC0415 - as test_actions_kubernetes
    from tests.test_actions_kubernetes import RBAC  # noqa: PLC0415

    rules, namespaces = emu_mod.load_rbac(RBAC)
    async with KubeEmulator(rbac=rules, rbac_namespaces=namespaces) as server:
        yield server


def broken_api(emu: KubeEmulator) -> None:
    crashing(emu)  # a pod crash-looping, its events and its previous container's log


async def test_what_the_family_saw_is_in_the_decision_and_the_escalation(
    emu: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken_api(emu)
    async with WebhookReceiver() as slack:
        monkeypatch.setenv("REMEDIATOR_TEST_ESCALATE_URL", f"{slack.url}/slack")
        cfg = config(emu, tmp_path)
        async with Harness(tmp_path, rules=RESTART, config=cfg, dry_run=False) as h:
            await h.fire(am_alert("APIDown", namespace="prod", deployment="api"))
            await h.advance(5 * MINUTE)  # still down: ineffective, a human is called
            [row] = await h.decisions()
            [text] = [json.loads(r.body)["text"] for r in slack.requests]
    assert row["outcome"] == "executed"
    seen = json.dumps(row["evidence"])
    assert "CrashLoopBackOff" in seen and "FATAL: out of memory" in seen
    assert "What remediator saw before acting:" in text
    assert "CrashLoopBackOff" in text and "FATAL: out of memory" in text
    assert {r.status for r in emu.requests} == {200}  # the evidence reads are granted too


async def test_a_rule_can_turn_evidence_off(emu: KubeEmulator, tmp_path: Path) -> None:
    broken_api(emu)
    rules = RESTART.replace(
        "  - name: apidown-restart\n", "  - name: apidown-restart\n    evidence: false\n"
    )
    async with Harness(tmp_path, rules=rules, config=config(emu, tmp_path), dry_run=False) as h:
        await h.fire(am_alert("APIDown", namespace="prod", deployment="api"))
        [row] = await h.decisions()
    assert row["outcome"] == "executed" and row["evidence"] == {}
    assert not any(r.resource in ("events", "pods") for r in emu.requests)


@pytest.fixture
async def pd() -> Any:
    async with PagerDuty() as server:
        yield server


PAGED = """
rules:
  - name: worker-redeploy
    matchers: ['alertname = "PlooralWorkerFailure"']
    action: {type: log, params: {message: "redeploy", target: "worker"}}
    verify: {resolve_within: 5m}
    escalate:
      type: notify.pagerduty
      params:
        routing_key_env: REMEDIATOR_TEST_PD_KEY
        severity: critical
        summary: "{{ alert.name }} did not recover"
"""


async def test_a_page_closes_when_its_alert_resolves_also_after_a_restart(
    tmp_path: Path,
    pd: PagerDuty,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMEDIATOR_TEST_PD_KEY", ROUTING_KEY)
    cfg = f'notify: {{pagerduty: {{events_url: "{pd.url}"}}}}\n'
    alert = am_alert("PlooralWorkerFailure", instance="worker-1")
    async with Harness(tmp_path, rules=PAGED, config=cfg, dry_run=False) as h:
        await h.fire(alert)
        await h.advance(5 * MINUTE)  # ineffective: paged
        assert [e["event_action"] for e in pd.events] == ["trigger"]
        [rule] = (await (await h.client.get("/api/v1/rules")).json())["rules"]
        assert [r["phase"] for r in rule["remediations"]] == ["paged"]
    async with Harness(tmp_path, rules=PAGED, config=cfg, dry_run=False,
                       now=START.timestamp() + 3600) as h:  # fmt: skip
        await h.fire(resolved(alert))
        await h.settle()
        assert [e["event_action"] for e in pd.events] == ["trigger", "resolve"]
        assert pd.events[0]["dedup_key"] == pd.events[1]["dedup_key"]
        assert pd.open == {}
        assert await h.metric("remediator_remediations_active") == 0.0
