"""kubernetes.rollout_restart, kubernetes.scale and kubernetes.delete_pod, end to end.

Alerts go through the in-process daemon (tests/harness.py) to the real kubernetes_asyncio
client, which talks HTTP to the emulator on loopback (tests/kube_emulator.py). The
emulator enforces the request shapes of the real API server and the RBAC of
deploy/kubernetes/base/rbac.yaml; every test asserts the objects it holds afterwards.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remediator import errors, settings
from remediator.actions import kubernetes as k8s
from remediator.actions import registry
from remediator.clients import kubernetes as kube_client
from remediator.matching import loader
from tests import kube_emulator as emu_mod
from tests.harness import Harness, am_alert
from tests.kube_emulator import KubeEmulator, deployment, hpa, pod, replicaset

REPO = Path(__file__).resolve().parent.parent
RBAC = REPO / "deploy" / "kubernetes" / "base" / "rbac.yaml"

RESTART = """
rules:
  - name: apidown-restart
    evidence: false  # the action's own requests only (evidence: test_evidence_wiring.py)
    matchers: ['alertname = "APIDown"']
    action:
      type: kubernetes.rollout_restart
      params:
        namespace: "{{ labels.namespace }}"
        name: "{{ labels.deployment }}"
        kind: "{{ labels.kind }}"
        if_rolling_out: %s
"""

SCALE = """
rules:
  - name: traffic-spike-scale-up
    evidence: false  # the action's own requests only (evidence: test_evidence_wiring.py)
    matchers: ['alertname = "TrafficSpike"']
    action:
      type: kubernetes.scale
      params:
        namespace: "{{ labels.namespace }}"
        name: "{{ labels.deployment }}"
        kind: "{{ labels.kind }}"
        %s
        min_replicas: 2
        max_replicas: 10
"""

DELETE = """
rules:
  - name: bad-pod-delete
    evidence: false  # the action's own requests only (evidence: test_evidence_wiring.py)
    matchers: ['alertname = "PodBroken"']
    action:
      type: kubernetes.delete_pod
      params:
        namespace: "{{ labels.namespace }}"
        %s
"""


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    rules, namespaces = emu_mod.load_rbac(RBAC)
    async with KubeEmulator(rbac=rules, rbac_namespaces=namespaces) as server:
        yield server


def config(emu: KubeEmulator, tmp_path: Path, extra: str = "") -> str:
    path = emu.kubeconfig(tmp_path / "kubeconfig")
    return (
        textwrap.dedent(
            f"""
        kubernetes:
          kubeconfig: {path}
          context: emulator
          allowed_namespaces: [prod, staging]
          request_timeout: 5s
        """
        )
        + extra
    )


def combine(*rule_files: str) -> str:
    """Several one-rule files as one."""
    return "rules:\n" + "".join(r.split("rules:\n", 1)[1] for r in rule_files)


def restart_rule(if_rolling_out: str = "skip") -> str:
    return RESTART % if_rolling_out


def scale_rule(change: str) -> str:
    return SCALE % change


def delete_rule(params: str) -> str:
    return DELETE % params.replace("\n", "\n        ")


def apidown(namespace: str = "prod", name: str = "api", kind: str = "deployment") -> Any:
    return am_alert("APIDown", namespace=namespace, deployment=name, kind=kind)


async def one_decision(h: Harness) -> dict[str, Any]:
    [row] = await h.decisions()
    return row


def stored(emu: KubeEmulator, plural: str, name: str) -> dict[str, Any]:
    obj = emu.get(plural, "prod", name)
    assert obj is not None, f"{plural} prod/{name} is gone"
    return obj


def replicas(emu: KubeEmulator, plural: str, name: str) -> int:
    return int(stored(emu, plural, name)["spec"]["replicas"])


def restarted_at(obj: dict[str, Any] | None) -> str | None:
    assert obj is not None
    annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get(k8s.RESTARTED_AT)


# --------------------------------------------------------------------------- restart


async def test_an_api_down_alert_restarts_its_deployment_the_way_kubectl_does(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api"))
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("executed", "")
    assert row["target"] == "kubernetes.rollout_restart prod/deployment/api"
    stamp = restarted_at(emu.get("deployments", "prod", "api"))
    assert stamp is not None and stamp.endswith("Z")
    assert dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= before
    assert stored(emu, "deployments", "api")["metadata"]["generation"] == 2
    [patch] = emu.writes()
    assert (patch.method, patch.content_type) == ("PATCH", "application/strategic-merge-patch+json")
    assert patch.body == {
        "spec": {"template": {"metadata": {"annotations": {k8s.RESTARTED_AT: stamp}}}}
    }
    assert not patch.dry_run
    assert row["result"]["restartedAt"] == stamp
    assert stamp in row["detail"]


@pytest.mark.parametrize("kind", ["statefulset", "daemonset"])
async def test_a_statefulset_or_daemonset_is_restarted_the_same_way(
    emu: KubeEmulator, tmp_path: Path, kind: str
) -> None:
    make = {"statefulset": emu_mod.statefulset, "daemonset": emu_mod.daemonset}[kind]
    emu.add(make("db"))
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown(name="db", kind=kind))
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert restarted_at(emu.get(f"{kind}s", "prod", "db")) is not None


async def test_a_deployment_already_rolling_out_is_left_alone_and_the_reason_recorded(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    obj = emu.add(deployment("api"))
    obj["status"]["updatedReplicas"] = 1  # 1 of 3 pods on the new template so far
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert row["detail"].endswith("no change")
    assert "rollout is already in progress (1 of 3 replicas updated)" in row["detail"]
    assert row["result"]["rollout_in_progress"] == "1 of 3 replicas updated"
    assert emu.writes() == []
    assert restarted_at(emu.get("deployments", "prod", "api")) is None


async def test_a_rule_may_restart_even_during_a_rollout(emu: KubeEmulator, tmp_path: Path) -> None:
    obj = emu.add(deployment("api"))
    obj["metadata"]["generation"] = 5  # the controller has not caught up yet
    async with Harness(
        tmp_path, rules=restart_rule("restart"), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert restarted_at(emu.get("deployments", "prod", "api")) is not None


def test_pods_on_the_current_template_that_are_not_ready_are_no_rollout() -> None:
    # APIDown: every pod is on the latest template and none is ready. That is the case
    # a restart is for, not a rollout to wait for.
    obj = deployment("api")
    obj["metadata"]["generation"] = 1
    obj["status"] = {
        "observedGeneration": 1, "replicas": 3, "updatedReplicas": 3,
        "readyReplicas": 0, "availableReplicas": 0,
    }  # fmt: skip
    assert k8s._rollout_in_progress("deployment", obj) is None
    obj["status"]["replicas"] = 4
    assert k8s._rollout_in_progress("deployment", obj) == "1 old replicas pending termination"
    obj["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    ]
    assert k8s._rollout_in_progress("deployment", obj) is None  # failed: not progressing


@pytest.mark.parametrize("where", ["labels", "annotations"])
async def test_a_protected_deployment_is_never_restarted(
    emu: KubeEmulator, tmp_path: Path, where: str
) -> None:
    obj = deployment("api")
    obj["metadata"][where]["remediator.io/protected"] = "true"
    emu.add(obj)
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    # Found only by reading the object, i.e. while the action runs: still a refusal.
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert f"is protected ({where[:-1]} remediator.io/protected=true)" in row["detail"]
    assert emu.writes() == []
    assert restarted_at(emu.get("deployments", "prod", "api")) is None


async def test_a_workload_protected_in_config_is_refused_before_any_request(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api"))
    cfg = config(emu, tmp_path, "  protected_workloads: [prod/deployment/api]\n")
    async with Harness(tmp_path, rules=restart_rule(), config=cfg, dry_run=False) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "protected_workloads" in row["detail"]
    assert emu.requests == []


async def test_a_deployment_outside_the_allowed_namespaces_is_never_restarted(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api", "kube-system"))
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown(namespace="kube-system"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'kube-system' is not in kubernetes.allowed_namespaces (prod, staging)" in row["detail"]
    assert emu.requests == []


@pytest.mark.parametrize("name", ["api;rm -rf", "API", "a" * 300, "../api"])
async def test_a_label_that_is_not_a_kubernetes_name_is_refused_before_any_request(
    emu: KubeEmulator, tmp_path: Path, name: str
) -> None:
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown(name=name))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "template_error")
    assert emu.requests == []


async def test_a_missing_deployment_fails_and_says_it_is_not_found(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown(name="gone"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "get deployments.apps prod/gone: not found (HTTP 404)" in row["detail"]


async def test_a_forbidden_request_names_the_verb_and_the_resource(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api"))
    emu.fail(403, verb="patch")
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "forbidden (HTTP 403)" in row["detail"]
    assert "may not patch deployments in API group 'apps' in namespace prod" in row["detail"]
    assert restarted_at(emu.get("deployments", "prod", "api")) is None


async def test_a_conflict_is_retried_once_then_fails(emu: KubeEmulator, tmp_path: Path) -> None:
    emu.add(deployment("api"))
    emu.add(deployment("web"))
    emu.fail(409, verb="patch", name="api")
    emu.fail(409, verb="patch", name="web", times=2)
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown(name="api"), apidown(name="web"))
        rows = {r["target"].rsplit("/", 1)[1]: r for r in await h.decisions()}
    assert rows["api"]["outcome"] == "executed"
    assert restarted_at(emu.get("deployments", "prod", "api")) is not None
    assert rows["web"]["outcome"] == "failed"
    assert "conflict (HTTP 409)" in rows["web"]["detail"]
    assert restarted_at(emu.get("deployments", "prod", "web")) is None
    assert len([r for r in emu.writes() if r.name == "web"]) == 2


async def test_throttling_and_server_errors_are_retried_with_backoff(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api"))
    emu.fail(429, verb="get", times=2)
    emu.fail(503, verb="patch", times=1)
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert [(r.verb, r.status) for r in emu.requests] == [
        ("get", 429), ("get", 429), ("get", 200), ("patch", 503), ("patch", 200),
    ]  # fmt: skip
    assert restarted_at(emu.get("deployments", "prod", "api")) is not None


async def test_an_api_server_that_keeps_failing_is_given_up_on_within_the_action_timeout(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api"))
    emu.fail(503, times=1000)
    cfg = config(emu, tmp_path) + "limits:\n  action_timeout: 1s\n"
    async with Harness(tmp_path, rules=restart_rule(), config=cfg, dry_run=False) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "HTTP 503" in row["detail"] and "gave up retrying" in row["detail"]
    assert 2 <= len(emu.requests) <= 5  # 0.2 s, 0.4 s, ... within 0.9 s: bounded


# --------------------------------------------------------------------------- dry run


async def test_a_dry_run_sends_only_dry_run_writes_and_changes_nothing(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    dep = emu.add(deployment("api"))
    rs = emu.add(replicaset(dep))
    for i in range(3):
        emu.add(pod(f"api-{i}", rs, ready=i != 0))
    before = copy.deepcopy(emu.objects)
    rules = combine(
        restart_rule(), scale_rule("replicas: +2"), delete_rule("selector: {app: api}\nmax_pods: 2")
    )
    async with Harness(tmp_path, rules=rules, config=config(emu, tmp_path), dry_run=True) as h:
        await h.fire(
            apidown(),
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment"),
            am_alert("PodBroken", namespace="prod"),
        )
        rows = {r["rule"]: r for r in await h.decisions()}
    assert {r["outcome"] for r in rows.values()} == {"dry_run"}, rows
    assert rows["apidown-restart"]["detail"].startswith("would restart (server-side dry run")
    assert "from 3 to 5 replicas" in rows["traffic-spike-scale-up"]["detail"]
    assert rows["bad-pod-delete"]["result"]["deleted"] == ["api-0", "api-1"]
    writes = emu.writes()
    assert {w.verb for w in writes} == {"patch", "update", "delete"}
    assert all(w.dry_run for w in writes)
    assert emu.objects == before


async def test_a_dry_run_proves_the_permissions_suffice(emu: KubeEmulator, tmp_path: Path) -> None:
    emu.add(deployment("api"))
    emu.fail(403, verb="patch")
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=True
    ) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("dry_run", "action_error")
    assert "dry run failed" in row["detail"] and "forbidden (HTTP 403)" in row["detail"]


async def test_without_a_kubernetes_section_a_dry_run_says_nothing_was_checked(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=restart_rule(), dry_run=True) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert row["outcome"] == "dry_run"
    assert row["detail"] == (
        "would restart deployment prod/api (not checked against a cluster: no `kubernetes:` config)"
    )


async def test_without_a_kubernetes_section_nothing_is_restarted_for_real(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=restart_rule(), dry_run=False) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")


# --------------------------------------------------------------------------- scale


async def test_a_traffic_spike_adds_replicas_through_the_scale_subresource(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api", replicas=3))
    async with Harness(
        tmp_path, rules=scale_rule('replicas: "+2"'), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment")
        )
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert replicas(emu, "deployments", "api") == 5
    [put] = emu.writes()
    assert (put.method, put.path, put.content_type) == (
        "PUT", "/apis/apps/v1/namespaces/prod/deployments/api/scale", "application/json",
    )  # fmt: skip
    assert put.body["apiVersion"] == "autoscaling/v1" and put.body["kind"] == "Scale"
    assert put.body["spec"] == {"replicas": 5}
    assert put.body["metadata"]["name"] == "api" and put.body["metadata"]["resourceVersion"]
    assert (row["result"]["from"], row["result"]["to"]) == (3, 5)
    assert row["detail"] == "scaled deployment prod/api from 3 to 5 replicas (+2, bounds 2..10)"


@pytest.mark.parametrize(
    ("current", "change", "expected", "detail"),
    [
        (9, "replicas: +5", 10, "from 9 to 10 replicas (+5, bounds 2..10, clamped from 14 to 10)"),
        (3, "replicas: -5", 2, "from 3 to 2 replicas (-5, bounds 2..10, clamped from -2 to 2)"),
        (3, "to: 50", 10, "from 3 to 10 replicas (to 50, bounds 2..10, clamped from 50 to 10)"),
        (5, "to: 4", 4, "from 5 to 4 replicas (to 4, bounds 2..10)"),
    ],
)
async def test_a_step_past_a_bound_is_clamped_to_it(
    emu: KubeEmulator, tmp_path: Path, current: int, change: str, expected: int, detail: str
) -> None:
    emu.add(deployment("api", replicas=current))
    async with Harness(
        tmp_path, rules=scale_rule(change), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment")
        )
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"].endswith(detail)
    assert replicas(emu, "deployments", "api") == expected


@pytest.mark.parametrize(
    ("current", "change", "why"),
    [
        (10, "replicas: +2", "at or above max_replicas 10"),
        (12, "replicas: +2", "at or above max_replicas 10"),  # never lowered by a step up
        (2, "replicas: -1", "at or below min_replicas 2"),
        (4, "to: 4", "already at 4"),
    ],
)
async def test_a_deployment_already_at_its_bound_is_a_recorded_no_op(
    emu: KubeEmulator, tmp_path: Path, current: int, change: str, why: str
) -> None:
    emu.add(deployment("api", replicas=current))
    async with Harness(
        tmp_path, rules=scale_rule(change), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment")
        )
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert row["detail"] == f"deployment prod/api has {current} replicas, {why}: no change"
    assert emu.writes() == []
    assert replicas(emu, "deployments", "api") == current


@pytest.mark.parametrize(
    ("current", "change", "why"),
    [
        # A person scaled it to 20 beyond max_replicas 10: `to: 100` asks for more, and
        # clamping to 10 would cut half its capacity during a traffic spike.
        (20, "to: 100", "already at or beyond the bound: to 100 asks for more, and 20 is at "
         "or above max_replicas 10"),
        # `to: 0` below min_replicas 2 must not add a replica.
        (1, "to: 0", "already at or beyond the bound: to 0 asks for fewer, and 1 is at or "
         "below min_replicas 2"),
        (10, "to: 50", "already at or beyond the bound: to 50 asks for more, and 10 is at or "
         "above max_replicas 10"),
    ],
)  # fmt: skip
async def test_a_scale_to_a_count_never_moves_replicas_the_other_way(
    emu: KubeEmulator, tmp_path: Path, current: int, change: str, why: str
) -> None:
    emu.add(deployment("api", replicas=current))
    async with Harness(
        tmp_path, rules=scale_rule(change), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment")
        )
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"] == f"deployment prod/api has {current} replicas, {why}: no change"
    assert row["result"]["already"] == why and "clamped" not in row["result"]
    assert emu.writes() == []
    assert replicas(emu, "deployments", "api") == current


@pytest.mark.parametrize(
    ("change", "current", "expected"),
    [
        ({"to": 100}, 20, 20),  # asked up, clamping would go down: no change
        ({"to": 0}, 1, 1),  # asked down, clamping would go up: no change
        ({"to": 20}, 20, 20),  # asked nothing: no change, even beyond the bound
        ({"to": 100}, 5, 10),  # up, clamped to the bound
        ({"to": 0}, 5, 2),  # down, clamped to the bound
        ({"to": 7}, 5, 7),
        ({"to": 7}, 20, 7),
        ({"replicas": 5}, 20, 20),
        ({"replicas": -5}, 1, 1),
    ],
)
def test_the_replica_count_never_moves_against_the_request(
    change: dict[str, int], current: int, expected: int
) -> None:
    values = {"min_replicas": 2, "max_replicas": 10, **change}
    got, note = k8s.Scale.desired(values, current)
    assert got == expected
    want = change.get("to", current + change.get("replicas", 0))
    assert (got - current) * (want - current) >= 0  # never the other way
    if got == current and want != current and "to" in change:
        assert note.startswith("already at or beyond the bound")


@pytest.mark.parametrize("value", ["+\u0661\u0660\u0660", "\u0662", "-\u0967"])
def test_a_step_in_other_scripts_digits_is_not_a_step(value: str) -> None:
    # int() reads Arabic-Indic or Devanagari digits (int("+\u0661\u0660\u0660") is 100);
    # a step is written in [0-9], so no label can pass a count a reader would not see.
    check = k8s.Scale.schema.fields["replicas"].check
    with pytest.raises(errors.ParamError, match="expected a step like"):
        check("replicas", value)
    assert check("replicas", "+100") == 100


async def test_a_deployment_an_hpa_manages_is_not_scaled_by_hand(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    dep = emu.add(deployment("api", replicas=3))
    emu.add(hpa("api-hpa", dep))
    async with Harness(
        tmp_path, rules=scale_rule("replicas: +2"), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment")
        )
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "managed by HorizontalPodAutoscaler prod/api-hpa" in row["detail"]
    assert emu.writes() == []
    assert replicas(emu, "deployments", "api") == 3


async def test_a_scale_conflict_rereads_and_steps_from_the_new_count(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api", replicas=3))
    emu.fail(409, verb="update", resource="deployments/scale")
    async with Harness(
        tmp_path, rules=scale_rule("replicas: +1"), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment")
        )
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    reads = [r for r in emu.requests if r.resource == "deployments/scale" and r.verb == "get"]
    assert len(reads) == 2
    assert replicas(emu, "deployments", "api") == 4


async def test_a_scale_whose_answer_was_lost_is_not_stepped_twice(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api", replicas=3))
    # The PUT takes effect but its answer is a 503; the retried PUT then carries a stale
    # resourceVersion (409), and the re-read finds the count already asked for.
    emu.fail(503, verb="update", resource="deployments/scale", after=True)
    async with Harness(
        tmp_path, rules=scale_rule("replicas: +2"), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="api", kind="deployment")
        )
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert [r.status for r in emu.writes()] == [503, 409]
    assert replicas(emu, "deployments", "api") == 5
    assert row["result"]["confirmed_after_conflict"] is True


async def test_a_stale_resource_version_is_refused_by_the_emulator_like_the_api_server(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    # The emulator's own check that makes the test above meaningful.
    emu.add(deployment("api", replicas=3))
    client = await kube_client.open_client(
        in_cluster=False,
        kubeconfig=str(emu.kubeconfig(tmp_path / "kubeconfig")),
        context="emulator",
        request_timeout=5,
    )
    try:
        deadline = time.monotonic() + 5
        with pytest.raises(kube_client.Conflict):
            await client.replace_scale(
                "deployment", "prod", "api", 9, resource_version="1", dry_run=False,
                deadline=deadline,
            )  # fmt: skip
    finally:
        await client.close()
    assert replicas(emu, "deployments", "api") == 3


async def test_a_statefulset_is_scaled_through_its_scale_subresource(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(emu_mod.statefulset("db", replicas=2))
    async with Harness(
        tmp_path, rules=scale_rule("to: 3"), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(
            am_alert("TrafficSpike", namespace="prod", deployment="db", kind="statefulset")
        )
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert replicas(emu, "statefulsets", "db") == 3


# --------------------------------------------------------------------------- delete pods


def pods_of(emu: KubeEmulator, name: str, ready: list[bool]) -> None:
    dep = emu.add(deployment(name, replicas=len(ready)))
    rs = emu.add(replicaset(dep))
    for i, r in enumerate(ready):
        emu.add(pod(f"{name}-{i}", rs, ready=r))


async def test_one_bad_pod_is_deleted_and_its_healthy_siblings_stay(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    pods_of(emu, "api", [True, False, True])
    emu.add(pod("other-0", emu.add(replicaset(emu.add(deployment("other"))))))
    async with Harness(
        tmp_path, rules=delete_rule("selector: {app: api}"), config=config(emu, tmp_path),
        dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod"))
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert emu.names("pods", "prod") == ["api-0", "api-2", "other-0"]
    assert row["result"]["deleted"] == ["api-1"]
    [listing] = [r for r in emu.requests if r.verb == "list" and r.query.get("labelSelector")][:1]
    assert listing.query["labelSelector"] == "app=api"
    [delete] = emu.writes()
    assert delete.body["preconditions"]["uid"]  # never a replacement with the same name


async def test_max_pods_holds_even_when_the_selector_matches_more(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    pods_of(emu, "api", [True] * 6)
    async with Harness(
        tmp_path, rules=delete_rule("selector: {app: api}\nmax_pods: 2"),
        config=config(emu, tmp_path), dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod"))
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert len(emu.names("pods", "prod")) == 4
    assert len([w for w in emu.writes() if w.verb == "delete"]) == 2
    assert [k["why"] for k in row["result"]["kept"]] == ["max_pods 2 reached"] * 4


async def test_the_last_ready_pod_of_a_deployment_is_never_deleted(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    pods_of(emu, "api", [True, False])
    async with Harness(
        tmp_path, rules=delete_rule("selector: {app: api}\nmax_pods: 5"),
        config=config(emu, tmp_path), dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod"))
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert emu.names("pods", "prod") == ["api-0"]  # the not-ready one went, the ready one stays
    assert row["result"]["kept"] == [
        {"pod": "api-0", "why": "last ready pod of deployment prod/api"}
    ]


async def test_a_rule_may_explicitly_allow_deleting_the_last_ready_pod(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    pods_of(emu, "api", [True])
    async with Harness(
        tmp_path, rules=delete_rule("pod: '{{ labels.pod }}'\nallow_last_ready: true"),
        config=config(emu, tmp_path), dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod", pod="api-0"))
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert emu.names("pods", "prod") == []
    [listing] = [r for r in emu.requests if r.query.get("fieldSelector")]
    assert listing.query["fieldSelector"] == "metadata.name=api-0"


async def test_nothing_deleted_is_a_recorded_no_op(emu: KubeEmulator, tmp_path: Path) -> None:
    pods_of(emu, "api", [True])
    async with Harness(
        tmp_path, rules=delete_rule("selector: {app: api}"), config=config(emu, tmp_path),
        dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod"))
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert row["detail"] == (
        "no pod deleted (api-0: last ready pod of deployment prod/api): no change"
    )
    assert emu.names("pods", "prod") == ["api-0"]


async def test_pods_of_a_protected_deployment_and_bare_pods_are_never_deleted(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    dep = emu.add(deployment("api", labels={"remediator.io/protected": "true"}))
    rs = emu.add(replicaset(dep))
    for i in range(3):
        emu.add(pod(f"api-{i}", rs, ready=False))
    emu.add(pod("bare", None, labels={"app": "api"}, ready=False))
    async with Harness(
        tmp_path, rules=delete_rule("selector: {app: api}\nmax_pods: 5"),
        config=config(emu, tmp_path), dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod"))
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert emu.writes() == []
    assert emu.names("pods", "prod") == ["api-0", "api-1", "api-2", "bare"]
    whys = {k["pod"]: k["why"] for k in row["result"]["kept"]}
    assert whys["bare"].startswith("owned by nothing")
    assert "deployment prod/api is protected (label remediator.io/protected=true)" in whys["api-0"]


@pytest.mark.parametrize("value", ["api,tier!=db", "api tier", "", "a" * 64, "x=y"])
async def test_a_label_value_cannot_widen_the_pod_selector(
    emu: KubeEmulator, tmp_path: Path, value: str
) -> None:
    pods_of(emu, "api", [True, True])
    async with Harness(
        tmp_path, rules=delete_rule("selector: {app: '{{ labels.app }}'}"),
        config=config(emu, tmp_path), dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod", app=value))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "template_error")
    assert emu.requests == []


async def test_a_pod_replaced_since_it_was_listed_is_left_alone(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    pods_of(emu, "api", [False, True])
    emu.fail(409, verb="delete")  # the UID precondition no longer holds
    async with Harness(
        tmp_path, rules=delete_rule("selector: {app: api}"), config=config(emu, tmp_path),
        dry_run=False,
    ) as h:  # fmt: skip
        await h.fire(am_alert("PodBroken", namespace="prod"))
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert emu.names("pods", "prod") == ["api-0", "api-1"]
    assert {"pod": "api-0", "why": "already gone"} in row["result"]["kept"]


# --------------------------------------------------------------------------- the emulator

DEPLOY = "/apis/apps/v1/namespaces/prod/deployments/api"
BAD_SCALE = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"}}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        ("PATCH", DEPLOY, {"Content-Type": "application/json"}, {"spec": {}}, 415),
        ("PATCH", DEPLOY, {"Content-Type": "application/apply-patch+yaml"}, {}, 415),
        ("PATCH", DEPLOY, {"Content-Type": "application/json-patch+json"}, {"op": "add"}, 422),
        ("PATCH", DEPLOY, {"Content-Type": "application/json-patch+json"},
         [{"op": "replace", "path": "/spec/nothing", "value": 1}], 422),
        ("PATCH", DEPLOY, {"Content-Type": "application/merge-patch+json"},
         {"metadata": {"resourceVersion": "1"}}, 409),
        ("GET", "/api/v1/namespaces/prod/pods?fieldSelector=involvedObject.name%3Dapi", {},
         None, 400),
        ("PUT", DEPLOY + "/scale", {}, BAD_SCALE, 400),
        (
            "PUT", DEPLOY + "/scale", {"Content-Type": "text/plain"},
            {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "api"},
             "spec": {"replicas": 2}},
            415,
        ),
        (
            "PUT", DEPLOY + "/scale", {},
            {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"},
             "spec": {"replicas": 2}},
            400,
        ),
        (
            "PUT", DEPLOY + "/scale", {},
            {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "api"},
             "spec": {"replicas": -1}},
            422,
        ),
        ("GET", "/api/v1/namespaces/prod/pods?labelSelector=app%3D%3D%3D", {}, None, 400),
        ("GET", "/api/v1/namespaces/prod/pods?fieldSelector=spec.nodeName%3Dx", {}, None, 400),
        ("PATCH", DEPLOY + "?dryRun=Yes", {}, {}, 400),
        ("DELETE", DEPLOY, {}, None, 403),  # not in the RBAC manifest
        ("GET", "/apis/apps/v1/namespaces/kube-system/deployments/api", {}, None, 403),
        ("GET", DEPLOY, {"Authorization": "Bearer wrong"}, None, 401),
    ],
)  # fmt: skip
async def test_the_emulator_refuses_what_the_api_server_refuses(
    emu: KubeEmulator, method: str, path: str, headers: dict[str, str], body: Any, status: int
) -> None:
    emu.add(deployment("api"))
    before = copy.deepcopy(emu.objects)
    sent = {"Authorization": f"Bearer {emu.token}"}
    if method in ("PATCH", "PUT"):
        sent["Content-Type"] = {
            "PATCH": "application/strategic-merge-patch+json",
            "PUT": "application/json",
        }[method]
    async with aiohttp.ClientSession() as session, session.request(
        method, emu.url + path, headers={**sent, **headers},
        data=None if body is None else json.dumps(body),
    ) as resp:  # fmt: skip
        answer = await resp.json()
    assert (resp.status, answer["kind"], answer["code"]) == (status, "Status", status)
    assert emu.objects == before


# --------------------------------------------------------------------------- rule checks


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("replicas: +2\nmin_replicas: 1", "param 'max_replicas': is required"),
        ("replicas: +2\nmax_replicas: 5", "param 'min_replicas': is required"),
        ("replicas: +2\nmin_replicas: 6\nmax_replicas: 5", "6 is above max_replicas 5"),
        (
            "replicas: +2\nmin_replicas: 1\nmax_replicas: '{{ labels.max }}'",
            "must be written in the rule, not a template",
        ),
        ("replicas: +2\nto: 3\nmin_replicas: 1\nmax_replicas: 5", "give either `replicas`"),
        ("min_replicas: 1\nmax_replicas: 5", "give either `replicas`"),
        ("replicas: 0\nmin_replicas: 1\nmax_replicas: 5", "must be non-zero"),
        ("replicas: lots\nmin_replicas: 1\nmax_replicas: 5", "expected a step like +2"),
    ],
)
def test_a_scale_rule_without_sound_bounds_fails_the_check(
    tmp_path: Path, params: str, message: str
) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - name: s\n    matchers: ['alertname = \"A\"']\n    action:\n"
        "      type: kubernetes.scale\n      params:\n        namespace: prod\n"
        "        name: api\n" + textwrap.indent(params, "        ") + "\n"
    )
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("max_pods: 2", "give either `selector` (labels) or `pod`"),
        ("selector: {}", "expected a non-empty mapping"),
        ("selector: {app: api}\nmax_pods: 500", "500 is outside 1..100"),
        ("selector: {app: api}\nmax_pods: '{{ labels.n }}'", "must be written in the rule"),
        ("selector: {'bad key!': x}", "is not a label key"),
        ("selector: {app: 'a b'}", "is not a label value"),
    ],
)
def test_a_delete_pod_rule_that_could_select_too_much_fails_the_check(
    tmp_path: Path, params: str, message: str
) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - name: d\n    matchers: ['alertname = \"A\"']\n    action:\n"
        "      type: kubernetes.delete_pod\n      params:\n        namespace: prod\n"
        + textwrap.indent(params, "        ")
        + "\n"
    )
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("kubernetes: {kubeconfig: /x}", "kubernetes.allowed_namespaces: required"),
        ("kubernetes: {allowed_namespaces: [Prod]}", "allowed_namespaces[0]: not a namespace"),
        (
            "kubernetes: {allowed_namespaces: [prod], in_cluster: true, kubeconfig: /x}",
            "kubernetes.in_cluster: in_cluster excludes kubeconfig",
        ),
        ("kubernetes: {allowed_namespaces: [prod], request_timeout: 0s}", "request_timeout"),
        (
            "kubernetes: {allowed_namespaces: [prod], protected_workloads: [prod/api]}",
            "protected_workloads[0]: expected namespace/kind/name",
        ),
        ("kubernetes: {allowed_namespaces: [prod], colour: blue}", "kubernetes.colour: unknown"),
    ],
)
def test_a_bad_kubernetes_section_names_the_key(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(section + "\n")
    with pytest.raises(errors.ConfigError) as caught:
        settings.load(path, environ={})
    assert message in str(caught.value)


def test_kubeconfig_defaults_to_the_kubeconfig_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("kubernetes: {allowed_namespaces: [prod]}\n")
    cfg = settings.load(path, environ={"KUBECONFIG": "/etc/kube/config"}).section("kubernetes")
    assert cfg.kubeconfig == "/etc/kube/config" and cfg.allowed_namespaces == {"prod"}


async def test_an_unknown_kubeconfig_context_fails_and_says_what_to_fix(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api"))
    cfg = config(emu, tmp_path).replace("context: emulator", "context: nope")
    async with Harness(tmp_path, rules=restart_rule(), config=cfg, dry_run=False) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert row["outcome"] == "failed"
    assert "cannot load kubeconfig" in row["detail"] and "nope" in row["detail"]
    assert emu.requests == []


async def test_in_cluster_outside_a_cluster_fails_and_says_what_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = "kubernetes:\n  in_cluster: true\n  allowed_namespaces: [prod]\n"
    async with Harness(tmp_path, rules=restart_rule(), config=cfg, dry_run=False) as h:
        await h.fire(apidown())
        row = await one_decision(h)
    assert row["outcome"] == "failed"
    assert "cannot load the in-cluster service account" in row["detail"]


async def test_one_client_serves_every_action_and_is_closed_at_shutdown(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api"))
    emu.add(deployment("web"))
    async with Harness(
        tmp_path, rules=restart_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(apidown(name="api"))
        await h.fire(apidown(name="web"))
        clients = h.daemon.clients
        assert clients is not None
        client = clients._opened["kubernetes"][0]
        assert isinstance(client, kube_client.KubeClient)
        assert [r["outcome"] for r in await h.decisions()] == ["executed", "executed"]
    assert client._api.rest_client.pool_manager.closed


async def test_the_example_rules_restart_and_scale_with_the_example_alerts(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.add(deployment("api", replicas=3))
    rules = combine(
        (REPO / "rules" / "apidown.yaml").read_text(),
        (REPO / "rules" / "traffic-spike-scale.yaml").read_text(),
    )
    alerts = [
        json.loads((REPO / "examples" / name).read_text())["alerts"][0]
        for name in ("apidown.json", "traffic-spike.json")
    ]
    async with Harness(tmp_path, rules=rules, config=config(emu, tmp_path), dry_run=False) as h:
        await h.fire(*alerts)
        rows = {r["rule"]: r for r in await h.decisions()}
    assert rows["apidown-restart"]["outcome"] == "executed"
    assert rows["traffic-spike-scale-up"]["outcome"] == "executed"
    api = emu.get("deployments", "prod", "api")
    assert restarted_at(api) is not None
    assert api is not None and api["spec"]["replicas"] == 5


# --------------------------------------------------------------------------- RBAC


def test_the_rbac_manifest_grants_exactly_what_the_code_can_request() -> None:
    granted, namespaces = emu_mod.load_rbac(RBAC)
    assert granted == set(kube_client.PERMISSIONS)
    # The allowed_namespaces of deploy/kubernetes (tests/test_deploy_bundle.py holds the
    # rendered bundle's RoleBindings, config and service account together).
    assert namespaces == {"prod", "staging"}


async def test_every_request_the_actions_send_is_granted_and_every_grant_is_used(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    pods_of(emu, "api", [False, True])
    emu.add(emu_mod.statefulset("db"))
    emu.add(emu_mod.daemonset("agent"))
    rules = combine(restart_rule(), scale_rule("replicas: +1"), delete_rule("selector: {app: api}"))
    async with Harness(tmp_path, rules=rules, config=config(emu, tmp_path), dry_run=False) as h:
        for name, kind in (("api", "deployment"), ("db", "statefulset"), ("agent", "daemonset")):
            await h.fire(apidown(name=name, kind=kind))
        for name, kind in (("api", "deployment"), ("db", "statefulset")):
            await h.fire(am_alert("TrafficSpike", namespace="prod", deployment=name, kind=kind))
        await h.fire(am_alert("PodBroken", namespace="prod"))
        rows = await h.decisions()
    assert [r["outcome"] for r in rows] == ["executed"] * 6, [r["detail"] for r in rows]
    assert {r.status for r in emu.requests} == {200}  # no 403 from the manifest's RBAC
    # test_actions_kubernetes_rollback.py uses the rest.
    used = set(kube_client.PERMISSIONS) - ROLLBACK_HPA_EVIDENCE_PERMISSIONS
    assert {r.permission for r in emu.requests} == used


ROLLBACK_HPA_EVIDENCE_PERMISSIONS = {
    ("apps", "replicasets", "list"), ("apps", "controllerrevisions", "list"),
    ("autoscaling", "horizontalpodautoscalers", "get"),
    ("autoscaling", "horizontalpodautoscalers", "patch"),
    ("", "events", "list"), ("", "pods/log", "get"),
}  # fmt: skip
"""What rollout_undo, scale_hpa and the evidence need beyond the three actions above."""


def test_the_three_actions_are_registered_and_not_retried_by_the_engine() -> None:
    for name in ("kubernetes.rollout_restart", "kubernetes.scale", "kubernetes.delete_pod"):
        action = registry.get(name)
        assert action is not None and action.idempotent is False and action.local is False
