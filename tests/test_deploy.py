"""deploy/ is a bundle a platform team applies as it is: every Kustomize overlay renders
and validates against the Kubernetes schemas, its pieces fit the daemon's own config, the
alert rules and the Alertmanager example pass promtool and amtool, the CloudFormation
template passes cfn-lint and grants what iam-policy.json grants, and the dashboard and
the alerts only query metrics the daemon really exposes."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from remediator import settings
from remediator.metrics import Metrics
from tests import kube_emulator as emu_mod
from tests.harness import Harness, am_alert, resolved

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
BASE = KUBE / "base"
OVERLAYS = sorted(p.parent.name for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.33.0"
"""The schemas every object is validated against (kubernetes-validate ships them)."""
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
"""Prometheus Operator CRDs: kubernetes-validate has no schema for them; checked below."""
SECRET_KEYS = {"webhook-token", "admin-token", "read-token"}
BACKEND_ENV = {
    "REMEDIATOR_REDIS_URL": "redis://redis:6379/0",
    "REMEDIATOR_AUDIT_DSN": "postgresql://x@pg/db",
}
"""What the `remediator-backends` Secret of overlays/ha holds (the config needs them)."""


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert shutil.which(cmd[0]), f"{cmd[0]} is missing: `make system-deps` installs it"
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def kustomize_major() -> int:
    out = run("kubectl", "version", "--client", "-o", "json")
    version = json.loads(out.stdout).get("kustomizeVersion", "v0")
    major = re.match(r"v?([0-9]+)", version)
    return int(major.group(1)) if major else 0


def kustomize(directory: Path) -> list[dict[str, Any]]:
    assert kustomize_major() >= 5, (
        "the bundle needs kustomize v5 (kubectl 1.27 or newer): its NamespaceTransformer "
        "options (unsetOnly, setRoleBindingSubjects) are not in older ones"
    )
    out = run("kubectl", "kustomize", str(directory))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def _rendered(overlay: str) -> str:
    return json.dumps(kustomize(KUBE / "overlays" / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for an overlay (once per session)."""
    docs: list[dict[str, Any]] = json.loads(_rendered(overlay))
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str = "remediator") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [c] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def daemon_config(docs: list[dict[str, Any]], tmp_path: Path, **env: str) -> settings.Settings:
    cm = one(docs, "ConfigMap", "remediator-config")
    (tmp_path / "config.yaml").write_text(cm["data"]["config.yaml"])
    return settings.load(tmp_path / "config.yaml", environ={**BACKEND_ENV, **env})


# --------------------------------------------------------------------------- kustomize


def test_there_is_a_single_replica_overlay() -> None:
    assert "single" in OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    assert kinds >= OPERATOR_KINDS
    for doc in docs:
        if doc["kind"] in OPERATOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_the_validation_refuses_a_misspelt_field() -> None:
    deployment = copy.deepcopy(one(rendered("single"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContexts"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_daemon_lives_in_one_namespace_and_acts_only_where_it_is_bound(
    overlay: str, tmp_path: Path
) -> None:
    docs = rendered(overlay)
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    own = {
        d["metadata"].get("namespace")
        for d in docs
        if d["kind"] not in ("ClusterRole", "RoleBinding", "Namespace")
    }
    assert len(own) == 1 and None not in own, f"the daemon's objects are spread over {own}"
    [namespace] = own
    cfg = daemon_config(docs, tmp_path).section("kubernetes")
    assert {b["metadata"]["namespace"] for b in bindings} == cfg.allowed_namespaces
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "remediator-actions",
        }
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "remediator", "namespace": namespace}
        ]
    assert "ClusterRoleBinding" not in {d["kind"] for d in docs}  # never bound cluster-wide
    granted, _ = emu_mod.load_rbac(BASE / "rbac.yaml")
    rendered_role = one(docs, "ClusterRole", "remediator-actions")
    assert {
        (g, r, v)
        for rule in rendered_role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    } == granted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_moving_the_daemon_to_another_namespace_is_one_edit(overlay: str, tmp_path: Path) -> None:
    copied = tmp_path / "kubernetes"
    shutil.copytree(KUBE, copied)
    edit = copied / "overlays" / overlay / "set-namespace.yaml"
    text = edit.read_text()
    assert text.count("namespace: remediator") == 1
    edit.write_text(text.replace("namespace: remediator", "namespace: ops"))
    docs = kustomize(copied / "overlays" / overlay)
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] == "RoleBinding":
            assert ns in ("prod", "staging")
            assert d["subjects"][0]["namespace"] == "ops"
        elif d["kind"] != "ClusterRole":
            assert ns == "ops", f"{d['kind']}/{d['metadata']['name']} in {ns}"


def test_the_ha_overlay_runs_three_replicas_on_redis_and_postgresql(tmp_path: Path) -> None:
    docs = rendered("ha")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": {"app.kubernetes.io/name": "remediator"}},
    }
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(docs)["env"]}
    assert env["REMEDIATOR_REDIS_URL"] == {"name": "remediator-backends", "key": "redis-url"}
    assert env["REMEDIATOR_AUDIT_DSN"] == {"name": "remediator-backends", "key": "audit-dsn"}
    (tmp_path / "ha").mkdir()
    ha = daemon_config(docs, tmp_path / "ha")
    assert (ha.backend.kind, ha.audit.kind) == ("redis", "postgres")
    assert ha.backend.redis.url == BACKEND_ENV["REMEDIATOR_REDIS_URL"]
    # Apart from the backends, the same config as the single replica's.
    (tmp_path / "single").mkdir()
    single = daemon_config(rendered("single"), tmp_path / "single")
    same = {"backend": single.backend, "audit": single.audit, "env_refs": (), "config_file": None,
            "secrets": frozenset()}  # fmt: skip
    assert dataclasses.replace(ha, **same) == dataclasses.replace(single, **same)


def test_the_base_lists_every_manifest_it_holds() -> None:
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(listed) == sorted(present)


# --------------------------------------------------------------------------- the pod


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_webhook_admin_and_read_tokens_are_required_from_the_secret(
    overlay: str, tmp_path: Path
) -> None:
    env = {e["name"]: e for e in container(rendered(overlay))["env"]}
    required = {
        name: e["valueFrom"]["secretKeyRef"]
        for name, e in env.items()
        if "secretKeyRef" in e.get("valueFrom", {})
        and not e["valueFrom"]["secretKeyRef"].get("optional")
    }
    assert {ref["key"] for ref in required.values()} >= SECRET_KEYS
    assert {ref["name"] for ref in required.values() if ref["key"] in SECRET_KEYS} == {"remediator"}
    assert "REMEDIATOR_READ_TOKEN" in required
    # The variables are the ones the daemon reads with the shipped config: with them set,
    # the webhook and the admin endpoints require their tokens.
    cfg = daemon_config(rendered(overlay), tmp_path, **dict.fromkeys(required, "t0ken"))
    assert cfg.auth.webhook_bearer_token == "t0ken"
    assert cfg.auth.admin_token == "t0ken"
    assert cfg.auth.read_token == "t0ken"


def test_the_secret_example_holds_the_keys_the_pod_reads_and_no_real_value() -> None:
    secret = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "remediator"
    assert set(secret["stringData"]) == SECRET_KEYS
    assert all(v.startswith("REPLACE") for v in secret["stringData"].values())
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_unprivileged_on_a_read_only_root_with_its_files_where_the_config_says(
    overlay: str, tmp_path: Path
) -> None:
    docs = rendered(overlay)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["serviceAccountName"] == "remediator"
    cfg = daemon_config(docs, tmp_path)
    assert deployment["metadata"]["labels"][cfg.section("kubernetes").protected_key] == "true"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert all("subPath" not in m for m in mounts.values())  # kubelet never updates those
    [config_arg] = [a for a in c["args"] if a.startswith("--config=")]
    config_file = Path(config_arg.removeprefix("--config="))
    assert str(config_file.parent) in mounts and config_file.name == "config.yaml"
    assert mounts[str(cfg.rules_dir)]["readOnly"] is True
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    assert writable == {str(cfg.data_dir), "/tmp"}
    data = {v["name"]: v for v in pod["volumes"]}[mounts[str(cfg.data_dir)]["name"]]
    if cfg.backend.kind == "embedded":  # the journal and the audit live there
        assert "persistentVolumeClaim" in data
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two writers
    assert cfg.rules_watch_interval > 0  # a changed rules ConfigMap is picked up
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert cfg.listen_port == port and cfg.listen_host == "0.0.0.0"


def dockerfile_user() -> int:
    text = (DEPLOY / "Dockerfile").read_text()
    [user] = re.findall(r"^USER ([0-9]+)(?::[0-9]+)?$", text, re.M)
    assert f"--uid {user}" in text
    return int(user)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_admits_only_the_monitoring_namespaces_and_lets_out_what_it_needs(
    overlay: str, tmp_path: Path
) -> None:
    docs = rendered(overlay)
    policy = one(docs, "NetworkPolicy")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "an empty `from` would admit everyone"
        assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"]), rule
        assert [p["port"] for p in rule["ports"]] == ["http"]
    egress = {
        (p["port"], p.get("protocol", "TCP")) for r in policy["spec"]["egress"] for p in r["ports"]
    }
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")} <= egress
    cfg = daemon_config(docs, tmp_path)
    for url in cfg.alertmanager.urls:  # the silence checks can get out
        assert (int(url.rsplit(":", 1)[1]), "TCP") in egress
    if cfg.backend.kind == "redis":
        assert (6379, "TCP") in egress
    if cfg.audit.kind == "postgres":
        assert (5432, "TCP") in egress


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_disruption_budget_and_the_service_monitor_select_the_daemon(overlay: str) -> None:
    docs = rendered(overlay)
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    # Structural check of the CRD (no schema shipped offline): only fields we know.
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert service["metadata"]["name"] == "remediator"  # the job label RemediatorDown reads


# --------------------------------------------------------------------------- alerts


def test_the_alertmanager_example_is_a_valid_alertmanager_config() -> None:
    result = run("amtool", "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["remediator-rules", "seed-alerts"])
def test_the_alert_rules_load_in_prometheus_and_pass_their_unit_tests(name: str) -> None:
    prometheus = DEPLOY / "prometheus"
    checked = run("promtool", "check", "rules", f"{name}.yml", cwd=prometheus)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run("promtool", "test", "rules", f"{name}.test.yml", cwd=prometheus)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def rule_groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def test_the_prometheus_rule_carries_the_seed_alerts_and_remediators_own() -> None:
    spec = one(rendered("single"), "PrometheusRule")["spec"]
    assert set(spec) == {"groups"}
    prometheus = DEPLOY / "prometheus"
    assert spec["groups"] == rule_groups(prometheus / "seed-alerts.yml") + rule_groups(
        prometheus / "remediator-rules.yml"
    ), "keep deploy/kubernetes/base/prometheusrule.yaml equal to deploy/prometheus/*.yml"
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    assert {"APIDown", "DatabaseConnectionPoolExhausted", "SQSBacklog"} <= alerts
    assert {
        "RemediatorDown", "RemediatorCircuitOpen", "RemediatorRulesReloadFailed",
        "RemediatorEscalationFailed",
    } <= alerts  # fmt: skip


def test_the_prometheus_rules_load_in_prometheus_and_pass_the_unit_tests(tmp_path: Path) -> None:
    spec = one(rendered("single"), "PrometheusRule")["spec"]
    (tmp_path / "prometheusrule.yml").write_text(yaml.safe_dump(spec))
    checked = run("promtool", "check", "rules", "prometheusrule.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 12 rules found" in checked.stdout
    for name in ("seed-alerts.test.yml", "remediator-rules.test.yml"):
        tests = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
        tests["rule_files"] = ["prometheusrule.yml"]
        (tmp_path / name).write_text(yaml.safe_dump(tests))
        tested = run("promtool", "test", "rules", name, cwd=tmp_path)
        assert tested.returncode == 0, tested.stdout + tested.stderr


# --------------------------------------------------------------------------- metrics


def queried_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bremediator_[a-z_]+\b", text))


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DEPLOY / "grafana" / "remediator.json").read_text())
    return board


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_exprs() -> list[str]:
    spec = one(rendered("single"), "PrometheusRule")["spec"]
    groups = spec["groups"] + rule_groups(DEPLOY / "prometheus" / "remediator-rules.yml")
    return [r["expr"] for g in groups for r in g["rules"]]


EXPOSED_NAMES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


async def scraped_metric_names(tmp_path: Path) -> tuple[set[str], set[str]]:
    """(every series name /metrics declares, the names with samples) from a real daemon
    that decided, acted on and verified an alert."""
    rules = """
    rules:
      - name: api-log
        matchers: ['alertname = "APIDown"']
        action: {type: log, params: {message: api down}}
        verify: {resolve_within: 10m}
    """
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        alert = am_alert("APIDown", namespace="prod")
        await h.fire(alert)
        await h.fire(resolved(alert))
        await h.fire(alert)  # a re-delivery: a duplicate
        resp = await h.client.get("/metrics")
        assert resp.status == 200
        text = await resp.text()
    declared, sampled = set(), set()
    for family in text_string_to_metric_families(text):
        declared |= {family.name + suffix for suffix in EXPOSED_NAMES.get(family.type, ("",))}
        sampled |= {s.name for s in family.samples}
    return declared, sampled


async def test_the_dashboard_and_the_alerts_query_only_metrics_the_daemon_exposes(
    tmp_path: Path,
) -> None:
    declared, sampled = await scraped_metric_names(tmp_path)
    # The scrape saw the traffic: the histogram and the counters of this run have samples.
    assert {
        "remediator_decisions_total",
        "remediator_actions_total",
        "remediator_action_duration_seconds_bucket",
        "remediator_remediation_verified_total",
        "remediator_duplicates_total",
    } <= sampled
    for where, exprs in (("dashboard", dashboard_exprs()), ("alert rules", alert_exprs())):
        used = set().union(*map(queried_metrics, exprs))
        assert used, f"the {where} should query remediator's metrics"
        assert used <= declared, (
            f"the {where} query what the daemon does not expose: {sorted(used - declared)}"
        )


def test_the_dashboard_shows_every_part_of_the_daemon() -> None:
    used = set().union(*map(queried_metrics, dashboard_exprs()))
    for wanted in (
        "remediator_webhook_requests_total", "remediator_alerts_received_total",
        "remediator_decisions_total", "remediator_actions_total",
        "remediator_action_duration_seconds_bucket", "remediator_remediation_verified_total",
        "remediator_circuit_open", "remediator_escalations_total", "remediator_approvals_total",
        "remediator_journal_backlog", "remediator_held_alerts", "remediator_remediations_active",
        "remediator_paused", "remediator_rule_paused",
    ):  # fmt: skip
        assert wanted in used, f"no panel shows {wanted}"


def test_every_metric_the_daemon_defines_is_known_to_the_check() -> None:
    # The check above expands names by type; a new metric type would slip through it.
    families = Metrics().registry.collect()
    assert {f.type for f in families} <= set(EXPOSED_NAMES)


def test_every_dashboard_query_is_promql_and_every_panel_is_placed(tmp_path: Path) -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert (
            set(p["gridPos"]) == {"h", "w", "x", "y"}
            and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        )
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
    variables = {"$__rate_interval": "5m", "$job": ".*", "$rule": ".*"}

    def concrete(expr: str) -> str:
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        return expr

    # promtool parses each query as the expression of a recording rule.
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:query_{i}", "expr": concrete(e)}
            for i, e in enumerate(dashboard_exprs())
            if not e.startswith("label_values")
        ],
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [group]}))
    checked = run("promtool", "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --------------------------------------------------------------------------- AWS


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, ...) as their long forms."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)
TEMPLATE = DEPLOY / "aws" / "remediator.yaml"


def cloudformation() -> dict[str, Any]:
    template: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return template


def test_the_cloudformation_template_passes_cfn_lint() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"  # the dev dependency's script
    linted = run(str(cfn_lint), str(TEMPLATE))
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_alarm_notifies_the_topic_whose_https_subscription_is_the_sns_webhook() -> None:
    resources = cloudformation()["Resources"]
    alarm = resources["BacklogAlarm"]["Properties"]
    topic = {"Ref": "AlarmTopic"}
    assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]  # OK resolves
    subscription = resources["WebhookSubscription"]["Properties"]
    assert subscription["TopicArn"] == topic and subscription["Protocol"] == "https"
    assert subscription["RawMessageDelivery"] is False  # the signed envelope is needed
    pattern = cloudformation()["Parameters"]["WebhookUrl"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://remediator.example.com/webhook/sns")
    assert not re.fullmatch(pattern, "http://remediator.example.com/webhook/sns")
    assert not re.fullmatch(pattern, "https://remediator.example.com/webhook/alertmanager")


def test_the_daemons_role_holds_the_policy_of_iam_policy_json_and_nothing_else() -> None:
    template = cloudformation()
    role = template["Resources"]["DaemonRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [{"Ref": "ActionsPolicyArn"}]
    assert "Policies" not in role  # no second list of grants to keep in step
    assert "iam-policy.json" in template["Parameters"]["ActionsPolicyArn"]["Description"]
    pattern = template["Parameters"]["ActionsPolicyArn"]["AllowedPattern"]
    assert re.fullmatch(pattern, "arn:aws:iam::123456789012:policy/remediator-actions")
    assert not re.fullmatch(pattern, "arn:aws:iam::aws:policy/AdministratorAccess")


def substitute(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], value["Fn::Sub"])
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    return value


def test_the_role_trusts_only_remediators_service_account() -> None:
    template = cloudformation()
    trust = template["Resources"]["DaemonRole"]["Properties"]["AssumeRolePolicyDocument"]
    pod_identity, irsa = trust["Fn::If"][1], trust["Fn::If"][2]
    [statement] = pod_identity["Statement"]
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    association = template["Resources"]["PodIdentity"]["Properties"]
    assert association["ServiceAccount"] == {"Ref": "ServiceAccountName"}
    assert association["Namespace"] == {"Ref": "ServiceAccountNamespace"}
    names = {
        "AWS::Partition": "aws",
        "AWS::AccountId": "123456789012",
        "OidcProvider": "oidc.eks.eu-west-1.amazonaws.com/id/X",
        "ServiceAccountNamespace": "remediator",
        "ServiceAccountName": "remediator",
    }
    [statement] = json.loads(substitute(irsa, names))["Statement"]
    assert statement["Condition"]["StringEquals"] == {
        "oidc.eks.eu-west-1.amazonaws.com/id/X:sub": "system:serviceaccount:remediator:remediator",
        "oidc.eks.eu-west-1.amazonaws.com/id/X:aud": "sts.amazonaws.com",
    }


def test_the_template_names_no_real_account_or_secret() -> None:
    text = TEMPLATE.read_text()
    assert not re.search(r"\b[0-9]{12}\b", text)  # accounts come from AWS::AccountId
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)  # no access key either
