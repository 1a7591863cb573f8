"""deploy/ files pass the tools that will load them, and stay in step with the code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from remediator import settings
from remediator.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert shutil.which(cmd[0]), f"{cmd[0]} is missing: `make system-deps` installs it"
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_the_alertmanager_example_is_a_valid_alertmanager_config() -> None:
    result = run("amtool", "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_remediators_own_alert_rules_load_in_prometheus_and_pass_their_unit_tests() -> None:
    prometheus = DEPLOY / "prometheus"
    checked = run("promtool", "check", "rules", "remediator-rules.yml", cwd=prometheus)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run("promtool", "test", "rules", "remediator-rules.test.yml", cwd=prometheus)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alert_rules_only_use_metrics_the_daemon_exports() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "remediator-rules.yml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bremediator_[a-z_]+", rule["expr"])
    }
    exported = set(
        re.findall(r"^# TYPE (remediator_\w+)", generate_latest(Metrics().registry).decode(), re.M)
    )
    # Counters are exposed as NAME_total; their TYPE line names NAME.
    exported |= {f"{n}_total" for n in exported}
    assert used, "the rules should watch remediator's own metrics"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_the_ha_overlay_runs_three_replicas_on_redis_and_postgresql(tmp_path: Path) -> None:
    overlay = Path(__file__).resolve().parents[1] / "deploy/kubernetes/overlays/ha"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert "../.." in kustomization["resources"]
    deployment = yaml.safe_load((overlay / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 3
    pdb = yaml.safe_load((overlay / "pdb.yaml").read_text())
    assert pdb["spec"]["minAvailable"] == 2
    config = yaml.safe_load((overlay / "config.yaml").read_text())["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(config)
    env = {
        "REMEDIATOR_REDIS_URL": "redis://redis:6379/0",
        "REMEDIATOR_AUDIT_DSN": "postgresql://x@pg/db",
    }
    s = settings.load(tmp_path / "config.yaml", environ=env)
    assert (s.backend.kind, s.audit.kind) == ("redis", "postgres")
    assert s.backend.redis.url == env["REMEDIATOR_REDIS_URL"]
