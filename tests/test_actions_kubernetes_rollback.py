"""kubernetes.rollout_undo and kubernetes.scale_hpa end to end, and the evidence the
Kubernetes family captures before acting.

As in test_actions_kubernetes.py: alerts go through the in-process daemon to the real
kubernetes_asyncio client, which talks HTTP to the emulator (tests/kube_emulator.py)
enforcing the real API server's request shapes (JSON patch and strategic-merge media
types, resourceVersion preconditions, dryRun=All) and the RBAC of
deploy/kubernetes/base/rbac.yaml. The emulator's `roll()` plays the workload controllers'
part: a ReplicaSet or ControllerRevision per template, renumbered on reuse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remediator import errors
from remediator.actions import evidence, registry
from remediator.actions import kubernetes as k8s
from remediator.matching import loader
from tests import kube_emulator as emu_mod
from tests.harness import Harness, am_alert
from tests.kube_emulator import KubeEmulator, event, hpa, pod
from tests.test_actions_kubernetes import RBAC, ROLLBACK_HPA_EVIDENCE_PERMISSIONS, config

UNDO = """
rules:
  - name: high-error-rate-undo
    evidence: false  # the action's own requests only (evidence: test_evidence_wiring.py)
    matchers: ['alertname = "HighErrorRate"']
    action:
      type: kubernetes.rollout_undo
      params:
        namespace: "{{ labels.namespace }}"
        name: "{{ labels.workload }}"
        kind: "{{ labels.kind }}"
        %s
"""

HPA = """
rules:
  - name: traffic-spike-hpa
    evidence: false  # the action's own requests only (evidence: test_evidence_wiring.py)
    matchers: ['alertname = "TrafficSpike"']
    action:
      type: kubernetes.scale_hpa
      params:
        namespace: "{{ labels.namespace }}"
        name: "{{ labels.hpa }}"
        %s
        floor: 2
        ceiling: 20
"""


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    rules, namespaces = emu_mod.load_rbac(RBAC)
    async with KubeEmulator(rbac=rules, rbac_namespaces=namespaces) as server:
        yield server


def undo_rule(extra: str = "") -> str:
    return UNDO % extra


def hpa_rule(change: str) -> str:
    return HPA % change.replace("\n", "\n        ")


def errors_alert(name: str = "api", kind: str = "deployment", ns: str = "prod") -> Any:
    return am_alert("HighErrorRate", namespace=ns, workload=name, kind=kind)


def image(obj: dict[str, Any] | None) -> str:
    assert obj is not None
    return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])


async def one(h: Harness) -> dict[str, Any]:
    [row] = await h.decisions()
    return row


# --------------------------------------------------------------------------- undo


async def test_a_deployment_with_two_revisions_is_rolled_back_to_the_first(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2"])
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert (row["outcome"], row["reason"]) == ("executed", ""), row["detail"]
    assert row["target"] == "kubernetes.rollout_undo prod/deployment/api"
    assert (
        row["detail"]
        == "rolled back deployment prod/api from revision 2 (app:2) to revision 1 (app:1)"
    )
    assert image(emu.get("deployments", "prod", "api")) == "app:1"
    [patch] = emu.writes()
    # What kubectl sends a Deployment: a JSON patch of the template and the annotations,
    # here with the resourceVersion it read as a precondition.
    assert patch.content_type == "application/json-patch+json"
    assert [op["path"] for op in patch.body] == [
        "/metadata/resourceVersion",
        "/spec/template",
        "/metadata/annotations",
    ]
    template = patch.body[1]["value"]
    assert emu_mod.HASH not in template["metadata"]["labels"]  # never the RS's hash label
    assert row["result"] | {"revisions": ""} == {
        "from_revision": 2, "to_revision": 1, "from_images": "app:2", "to_images": "app:1",
        "revisions": "", "dry_run": False,
    }  # fmt: skip


async def test_with_three_revisions_undo_goes_one_back_and_never_flips_back_to_the_bad_one(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2", "app:3"])
    cfg = config(emu, tmp_path)
    rules = undo_rule() + "    limits: {cooldown: 1m}\n"
    async with Harness(tmp_path, rules=rules, config=cfg, dry_run=False) as h:
        await h.fire(errors_alert())
        assert image(emu.get("deployments", "prod", "api")) == "app:2"
        # The Deployment controller reuses revision 2's ReplicaSet as revision 4.
        emu.roll("deployments", "prod", "api")
        await h.advance(120)
        await h.fire(errors_alert())  # a new occurrence: app:2 is bad as well
        rows = await h.decisions()
    assert [r["outcome"] for r in rows] == ["executed", "executed"], [r["detail"] for r in rows]
    # `kubectl rollout undo` would now go to revision 3 (app:3): the one rolled back from.
    assert rows[1]["detail"] == (
        "rolled back deployment prod/api from revision 4 (app:2) to revision 1 (app:1)"
    )
    obj = emu.get("deployments", "prod", "api")
    assert image(obj) == "app:1"
    assert obj is not None
    marks = obj["metadata"]["annotations"][k8s.ROLLED_BACK_FROM].split(",")
    assert len(marks) == 2 and all(m.startswith("api-") for m in marks)


async def test_to_revision_rolls_back_to_that_revision(emu: KubeEmulator, tmp_path: Path) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2", "app:3"])
    async with Harness(
        tmp_path, rules=undo_rule("to_revision: 1"), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert row["detail"].endswith("from revision 3 (app:3) to revision 1 (app:1)")
    assert image(emu.get("deployments", "prod", "api")) == "app:1"


async def test_undo_never_rolls_back_to_the_template_already_running(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2"])
    async with Harness(
        tmp_path, rules=undo_rule("to_revision: 2"), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert row["outcome"] == "executed"
    assert row["detail"] == (
        "deployment prod/api already runs the template of revision 2 (app:2): no change"
    )
    assert emu.writes() == []


@pytest.mark.parametrize(
    ("images", "extra", "message"),
    [
        (["app:1"], "", "has no earlier revision to roll back to (revisions: 1)"),
        (["app:1", "app:2"], "to_revision: 7", "has no revision 7 (revisions: 1, 2)"),
    ],
)
async def test_nothing_to_roll_back_to_fails_and_says_so(
    emu: KubeEmulator, tmp_path: Path, images: list[str], extra: str, message: str
) -> None:
    emu.deploy("deployment", "api", images)
    async with Harness(
        tmp_path, rules=undo_rule(extra), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert message in row["detail"]
    assert emu.writes() == []


@pytest.mark.parametrize(
    ("where", "key", "value", "who"),
    [
        (
            "annotations",
            "argocd.argoproj.io/tracking-id",
            "shop:apps/Deployment:prod/api",
            "Argo CD",
        ),
        ("labels", "kustomize.toolkit.fluxcd.io/name", "apps", "Flux"),
        ("labels", "helm.toolkit.fluxcd.io/name", "api", "Flux"),
    ],
)
async def test_a_workload_a_gitops_controller_manages_is_not_rolled_back(
    emu: KubeEmulator, tmp_path: Path, where: str, key: str, value: str, who: str
) -> None:
    obj = emu.deploy("deployment", "api", ["app:1", "app:2"])
    obj["metadata"].setdefault(where, {})[key] = value
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert f"is managed by {who} ({where[:-1]} {key})" in row["detail"]
    assert "self-heal would re-apply what Git holds" in row["detail"]
    assert "kubernetes.rollback_gitops_managed" in row["detail"]
    assert emu.writes() == []
    assert image(emu.get("deployments", "prod", "api")) == "app:2"


async def test_the_config_can_allow_rolling_back_what_a_gitops_controller_manages(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    obj = emu.deploy("deployment", "api", ["app:1", "app:2"])
    obj["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"] = (
        "shop:apps/Deployment:prod/api"
    )
    cfg = config(emu, tmp_path).replace(
        "request_timeout: 5s", "request_timeout: 5s\n  rollback_gitops_managed: true"
    )
    async with Harness(tmp_path, rules=undo_rule(), config=cfg, dry_run=False) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert row["outcome"] == "executed", row["detail"]
    assert image(emu.get("deployments", "prod", "api")) == "app:1"


async def test_flux_told_not_to_reconcile_does_not_block_a_rollback(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    obj = emu.deploy("deployment", "api", ["app:1", "app:2"])
    obj["metadata"]["labels"]["kustomize.toolkit.fluxcd.io/name"] = "apps"
    obj["metadata"]["annotations"]["kustomize.toolkit.fluxcd.io/reconcile"] = "disabled"
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert row["outcome"] == "executed", row["detail"]


async def test_a_protected_or_paused_deployment_is_not_rolled_back(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2"])["metadata"]["labels"][
        "remediator.io/protected"
    ] = "true"
    emu.deploy("deployment", "web", ["web:1", "web:2"])["spec"]["paused"] = True
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert("api"))
        await h.fire(errors_alert("web"))
        api, web = await h.decisions()
    assert (api["outcome"], api["reason"]) == ("skipped", "not_allowed")
    assert "is protected (label remediator.io/protected=true)" in api["detail"]
    assert (web["outcome"], web["reason"]) == ("failed", "action_error")
    assert "is paused: a rollback would not roll out" in web["detail"]
    assert emu.writes() == []


async def test_a_dry_run_sends_the_rollback_with_dry_run_all_and_changes_nothing(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2"])
    async with Harness(tmp_path, rules=undo_rule(), config=config(emu, tmp_path)) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert row["outcome"] == "dry_run"
    assert row["detail"].startswith("would roll back (server-side dry run accepted) deployment")
    [patch] = emu.writes()
    assert patch.dry_run and patch.status == 200
    assert image(emu.get("deployments", "prod", "api")) == "app:2"


async def test_a_conflicting_change_is_read_again_and_the_rollback_decided_again(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2"])
    emu.fail(409, verb="patch", resource="deployments")
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert row["outcome"] == "executed", row["detail"]
    assert [w.status for w in emu.writes()] == [409, 200]
    assert image(emu.get("deployments", "prod", "api")) == "app:1"


async def test_a_rollback_whose_answer_was_lost_is_confirmed_not_repeated(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    emu.deploy("deployment", "api", ["app:1", "app:2", "app:3"])
    # Applied, then the answer lost: the client sends the same patch again, whose
    # resourceVersion precondition no longer holds (409); read again, it is done.
    emu.fail(503, verb="patch", resource="deployments", after=True)
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert())
        row = await one(h)
    assert row["outcome"] == "executed", row["detail"]
    assert row["result"]["confirmed_after_conflict"] is True
    assert image(emu.get("deployments", "prod", "api")) == "app:2"  # not two steps back
    assert [w.status for w in emu.writes()] == [503, 409]


@pytest.mark.parametrize("kind", ["statefulset", "daemonset"])
async def test_a_statefulset_or_daemonset_goes_back_through_its_controller_revisions(
    emu: KubeEmulator, tmp_path: Path, kind: str
) -> None:
    emu.deploy(kind, "db", ["db:1", "db:2", "db:3"])
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(errors_alert("db", kind))
        row = await one(h)
    assert row["outcome"] == "executed", row["detail"]
    assert (
        row["detail"] == f"rolled back {kind} prod/db from revision 3 (db:3) to revision 2 (db:2)"
    )
    assert image(emu.get(f"{kind}s", "prod", "db")) == "db:2"
    [patch] = emu.writes()
    # What kubectl sends: the ControllerRevision's data as a strategic-merge patch.
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body["spec"]["template"]["$patch"] == "replace"
    assert patch.body["metadata"]["resourceVersion"]
    assert [r.resource for r in emu.requests if r.verb == "list"] == ["controllerrevisions"]


def test_an_undo_rule_cannot_let_a_label_choose_the_revision(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        undo_rule('to_revision: "{{ labels.revision }}"').replace("\n        \n", "\n")
    )
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    text = (tmp_path / "r.yaml").read_text().splitlines()
    assert "to_revision" in text[problem.line - 1]  # the line of the bad param
    assert "param 'to_revision': must be written in the rule, not a template" in problem.message


# --------------------------------------------------------------------------- HPA


def add_hpa(emu: KubeEmulator, *, lo: int = 2, hi: int = 10) -> dict[str, Any]:
    target = emu.add(emu_mod.deployment("api"))
    return emu.add(hpa("api", target, lo=lo, hi=hi))


def spike() -> Any:
    return am_alert("TrafficSpike", namespace="prod", hpa="api")


def bounds(emu: KubeEmulator) -> tuple[int, int]:
    obj = emu.get("horizontalpodautoscalers", "prod", "api")
    assert obj is not None
    return obj["spec"]["minReplicas"], obj["spec"]["maxReplicas"]


@pytest.mark.parametrize(
    ("change", "before", "after", "detail"),
    [
        ("min_replicas: {step: 2}", (2, 10), (4, 10), "minReplicas 2 → 4, maxReplicas 10 → 10"),
        ("max_replicas: {step: 5}\nmin_replicas: {to: 6}", (2, 10), (6, 15),
         "minReplicas 2 → 6, maxReplicas 10 → 15"),
        ("max_replicas: {step: 50}", (2, 10), (2, 20), "maxReplicas 10 → 20 (bounds 2..20"),
        ("min_replicas: {step: 8}", (2, 6), (6, 6), "min_replicas held at maxReplicas 6"),
        ("max_replicas: {step: -4}", (5, 8), (5, 5), "max_replicas held at minReplicas 5"),
    ],
)  # fmt: skip
async def test_an_hpa_bound_moves_by_its_step_within_floor_and_ceiling(
    emu: KubeEmulator,
    tmp_path: Path,
    change: str,
    before: tuple[int, int],
    after: tuple[int, int],
    detail: str,
) -> None:
    add_hpa(emu, lo=before[0], hi=before[1])
    async with Harness(
        tmp_path, rules=hpa_rule(change), config=config(emu, tmp_path), dry_run=False
    ) as h:
        await h.fire(spike())
        row = await one(h)
    assert row["outcome"] == "executed", row["detail"]
    assert row["target"] == "kubernetes.scale_hpa prod/hpa/api"
    assert bounds(emu) == after
    assert detail in row["detail"]
    [patch] = emu.writes()
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["metadata"]["resourceVersion"]  # a precondition: 409 if it moved


async def test_an_hpa_already_at_the_ceiling_is_a_recorded_no_op(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    add_hpa(emu, lo=2, hi=30)  # raised by hand past the rule's ceiling
    async with Harness(
        tmp_path,
        rules=hpa_rule("max_replicas: {step: 5}"),
        config=config(emu, tmp_path),
        dry_run=False,
    ) as h:
        await h.fire(spike())
        row = await one(h)
    assert row["outcome"] == "executed"
    assert row["detail"] == (
        "HorizontalPodAutoscaler prod/api has minReplicas 2, maxReplicas 30; max_replicas: "
        "30 is already at or above the upper bound 20: no change"
    )
    assert emu.writes() == [] and bounds(emu) == (2, 30)  # never lowered to the ceiling


async def test_an_hpa_dry_run_is_sent_with_dry_run_all_and_changes_nothing(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    add_hpa(emu)
    async with Harness(
        tmp_path, rules=hpa_rule("min_replicas: {step: 2}"), config=config(emu, tmp_path)
    ) as h:
        await h.fire(spike())
        row = await one(h)
    assert row["outcome"] == "dry_run"
    assert row["detail"].startswith("would change (server-side dry run accepted)")
    [patch] = emu.writes()
    assert patch.dry_run and bounds(emu) == (2, 10)


async def test_the_hpa_of_a_protected_workload_is_not_changed(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    target = emu.add(emu_mod.deployment("api", labels={"remediator.io/protected": "true"}))
    emu.add(hpa("api", target))
    async with Harness(
        tmp_path,
        rules=hpa_rule("min_replicas: {step: 2}"),
        config=config(emu, tmp_path),
        dry_run=False,
    ) as h:
        await h.fire(spike())
        row = await one(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "its target deployment prod/api is protected" in row["detail"]
    assert emu.writes() == []


async def test_a_step_is_not_applied_twice_when_its_answer_was_lost(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    add_hpa(emu)
    emu.fail(503, verb="patch", resource="horizontalpodautoscalers", after=True)
    async with Harness(
        tmp_path,
        rules=hpa_rule("min_replicas: {step: 2}"),
        config=config(emu, tmp_path),
        dry_run=False,
    ) as h:
        await h.fire(spike())
        row = await one(h)
    assert row["outcome"] == "executed", row["detail"]
    assert row["result"]["confirmed_after_conflict"] is True
    assert bounds(emu) == (4, 10)  # +2 once, not +4
    assert [w.status for w in emu.writes()] == [503, 409]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("min_replicas: {step: 1}\nceiling: 20", "param 'floor': is required"),
        ("min_replicas: {step: 1}\nfloor: 2", "param 'ceiling': is required"),
        ("floor: 2\nceiling: 20", "give min_replicas, max_replicas or both"),
        ("min_replicas: 3\nfloor: 2\nceiling: 20", "expected {step: +N} (or -N), or {to: N}"),
        ("min_replicas: {step: '{{ labels.n }}'}\nfloor: 2\nceiling: 20",
         "param 'min_replicas': must be written in the rule"),
        ("min_replicas: {to: 50}\nfloor: 2\nceiling: 20",
         "to 50 is outside floor..ceiling (2..20)"),
        ("max_replicas: {step: 1}\nfloor: 9\nceiling: 3", "param 'floor': 9 is above ceiling 3"),
        ("max_replicas: {step: 1}\nfloor: 2\nceiling: '20'", "is a bound: write it in the rule"),
    ],
)  # fmt: skip
def test_an_hpa_rule_without_its_bounds_fails_to_load(
    tmp_path: Path, params: str, message: str
) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - name: r\n    matchers: ['alertname = \"A\"']\n"
        "    action:\n      type: kubernetes.scale_hpa\n      params:\n"
        "        namespace: prod\n        name: api\n"
        + "".join(f"        {line}\n" for line in params.splitlines())
    )
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    assert message in problem.message
    assert str(problem).startswith(f"{tmp_path / 'r.yaml'}:")


# --------------------------------------------------------------------------- evidence


def crashing(emu: KubeEmulator) -> dict[str, Any]:
    """Deployment api: one pod crash-looping (3 restarts, OOMKilled), one healthy."""
    dep = emu.add(emu_mod.deployment("api", replicas=2))
    rs = emu.add(emu_mod.replicaset(dep))
    bad = pod("api-bad", rs, ready=False)
    bad["status"]["containerStatuses"] = [
        {
            "name": "app",
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        }
    ]
    bad = emu.add(bad)
    emu.add(pod("api-good", rs))
    emu.add(
        event(
            bad, "BackOff", "Back-off restarting failed container app", last="2027-01-15T11:59:00Z"
        )
    )
    emu.add(
        event(
            dep,
            "ScalingReplicaSet",
            "Scaled up replica set api-5d8f7b9c4 to 2",
            type_="Normal",
            last="2027-01-15T11:50:00Z",
        )
    )
    emu.logs[("prod", "api-bad", "app", True)] = (
        "".join(f"line {i}\n" for i in range(1, 40)) + "FATAL: out of memory\n"
    )
    return dep


async def test_kubernetes_evidence_shows_pods_restarts_events_and_the_previous_log(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    crashing(emu)
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        action = registry.get("kubernetes.rollout_restart")
        assert action is not None
        values = action.schema.validate({"namespace": "prod", "name": "api"})
        seen = await evidence.capture(action, values, h.context())
    assert seen["workload"] == {
        "kind": "deployment", "name": "prod/api", "replicas": 2, "ready": 2, "updated": 2,
        "available": 2,
    }  # fmt: skip
    assert seen["pods_total"] == 2
    assert seen["pods"][0] == {
        "name": "api-bad", "phase": "Running", "ready": False, "restarts": 3,
        "reason": "CrashLoopBackOff",
    }  # fmt: skip
    assert [(e["reason"], e["object"]) for e in seen["events"]] == [
        ("BackOff", "Pod/api-bad"),
        ("ScalingReplicaSet", "Deployment/api"),
    ]
    log = seen["previous_log"]
    assert (log["pod"], log["container"]) == ("api-bad", "app")
    assert len(log["lines"]) == k8s.LOG_LINES and log["lines"][-1] == "FATAL: out of memory"
    [logged] = [r for r in emu.requests if r.resource == "pods/log"]
    assert (logged.query["previous"].lower(), logged.query["tailLines"]) == ("true", "20")
    assert logged.query["container"] == "app"
    assert "notes" not in seen
    assert "FATAL: out of memory" in evidence.summary(seen)


async def test_a_part_of_the_evidence_that_cannot_be_read_becomes_a_note(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    crashing(emu)
    emu.fail(403, verb="get", resource="pods/log")
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        action = registry.get("kubernetes.delete_pod")
        assert action is not None
        values = action.schema.validate({"namespace": "prod", "selector": {"app": "api"}})
        seen = await evidence.capture(action, values, h.context())
    assert seen["pods_total"] == 2 and "previous_log" not in seen
    [note] = seen["notes"]
    assert note.startswith(
        "previous log of api-bad: kubernetes: get pods/log prod/api-bad: forbidden"
    )


async def test_evidence_of_a_missing_workload_is_a_note_never_an_error(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        action = registry.get("kubernetes.rollout_undo")
        assert action is not None
        values = action.schema.validate({"namespace": "prod", "name": "gone"})
        seen = await evidence.capture(action, values, h.context())
    assert list(seen) == ["note"]
    assert seen["note"].startswith(
        "evidence not captured: kubernetes: get deployments.apps prod/gone: not found"
    )


async def test_hpa_evidence_shows_its_bounds_and_its_targets_pods(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    dep = crashing(emu)
    emu.add(hpa("api", dep, lo=2, hi=10))
    async with Harness(
        tmp_path, rules=undo_rule(), config=config(emu, tmp_path), dry_run=False
    ) as h:
        action = registry.get("kubernetes.scale_hpa")
        assert action is not None
        values = action.schema.validate(
            {
                "namespace": "prod",
                "name": "api",
                "min_replicas": {"step": 1},
                "floor": 1,
                "ceiling": 5,
            }
        )
        seen = await evidence.capture(action, values, h.context())
    assert seen["hpa"]["min_replicas"] == 2 and seen["hpa"]["max_replicas"] == 10
    assert seen["pods_total"] == 2


# --------------------------------------------------------------------------- RBAC


async def test_every_request_of_undo_hpa_and_evidence_is_granted(
    emu: KubeEmulator, tmp_path: Path
) -> None:
    dep = crashing(emu)
    emu.add(hpa("api", dep))
    emu.deploy("statefulset", "db", ["db:1", "db:2"])
    emu.deploy("deployment", "web", ["web:1", "web:2"])
    rules = undo_rule() + hpa_rule("min_replicas: {step: 1}").replace("rules:\n", "", 1)
    async with Harness(tmp_path, rules=rules, config=config(emu, tmp_path), dry_run=False) as h:
        await h.fire(errors_alert("web"), errors_alert("db", "statefulset"), spike())
        rows = await h.decisions()
        action = registry.get("kubernetes.rollout_restart")
        assert action is not None
        values = action.schema.validate({"namespace": "prod", "name": "api"})
        await evidence.capture(action, values, h.context())
    assert [r["outcome"] for r in rows] == ["executed"] * 3, [r["detail"] for r in rows]
    assert {r.status for r in emu.requests} == {200}  # nothing refused by the RBAC
    assert {r.permission for r in emu.requests} >= ROLLBACK_HPA_EVIDENCE_PERMISSIONS


def test_undo_and_hpa_are_registered_and_not_retried_by_the_engine() -> None:
    for name in ("kubernetes.rollout_undo", "kubernetes.scale_hpa"):
        action = registry.get(name)
        assert action is not None and action.idempotent is False and action.local is False
