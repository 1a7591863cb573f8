"""The `remediator` command as an SRE runs it: check, simulate and serve, as processes.

Every process here is started by the test and stopped by its own PID; waits on it are
bounded polls (it is a real process, so real time is the only clock it has).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests import servers

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules"
EXAMPLE = REPO / "examples" / "apidown.json"
_VENV_BIN = REPO / ".venv" / "bin" / "remediator"
COMMAND = [str(_VENV_BIN)] if _VENV_BIN.exists() else [sys.executable, "-m", "remediator"]
RUN_TIMEOUT = 30.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def example_rules() -> tuple[int, int]:
    """(rules, files) in ./rules: each action family adds its own example file."""
    files = sorted(RULES.glob("*.yaml"))
    return sum(len(yaml.safe_load(f.read_text())["rules"]) for f in files), len(files)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without remediator's own variables (no stray config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATOR_")}
    env["PYTHONPATH"] = str(REPO)
    return env | extra


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def tree(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- check


SLACK = {
    "SLACK_WEBHOOK_URL": "https://hooks.slack.example/services/T0/B0/x",
    "PAGERDUTY_ROUTING_KEY": "R0UT1NGKEY0123456789abcdef012345",
}
"""What the example rules' escalations name (unset, `check` warns)."""


def summary() -> str:
    return "ok: {} rules in {} files (matchers_syntax: fallback)".format(*example_rules())


def test_check_accepts_the_example_rules(tmp_path: Path) -> None:
    result = run("check", str(RULES), cwd=tmp_path, env=clean_env(**SLACK))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == summary()
    assert len(lines) == example_rules()[0] + 1  # one line per rule, then the summary
    assert (
        f'{RULES}/apidown.yaml:6: apidown-restart {{alertname="APIDown",namespace=~"prod|staging"}}'
        in lines
    )
    assert result.stderr == ""


def test_check_reads_rules_from_the_working_directory_by_default(tmp_path: Path) -> None:
    shutil.copytree(RULES, tmp_path / "rules")
    result = run("check", cwd=tmp_path, env=clean_env(**SLACK))
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, summary())


def test_check_prints_what_each_matcher_string_was_understood_as(tmp_path: Path) -> None:
    write(
        tmp_path / "rules" / "disk.yaml",
        r"""
        rules:
          - name: disk-full
            matchers:
              - '{severity!="info", alertname="DiskFull"}'
              - instance=~api\\.example\\.com
            action: {type: log, params: {message: hi}}
        """,
    )
    result = run("check", "rules", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        'rules/disk.yaml:2: disk-full {severity!="info",alertname="DiskFull",'
        'instance=~"api\\\\.example\\\\.com"}'
    )
    # The unquoted regex is valid only in the classic syntax: the fallback says so, at
    # its line, with the form that reads the same in both.
    [warning] = result.stderr.splitlines()
    assert warning.startswith("rules/disk.yaml:5: warning: ")
    assert 'Write it as {instance=~"api\\\\.example\\\\.com"}' in warning


def test_check_reads_matchers_with_the_configured_syntax(tmp_path: Path) -> None:
    write(
        tmp_path / "rules" / "k8s.yaml",
        """
        rules:
          - name: k8s
            matchers: ['k8s.namespace = "prod"']
            action: {type: log, params: {message: hi}}
        """,
    )
    write(tmp_path / "classic.yaml", "matchers_syntax: classic\n")
    write(tmp_path / "utf8.yaml", "matchers_syntax: utf8\n")
    classic = run("check", "rules", "--config", "classic.yaml", cwd=tmp_path)
    assert classic.returncode == 1
    assert classic.stderr.startswith("rules/k8s.yaml:3: cannot parse matcher")
    utf8 = run("check", "rules", "--config", "utf8.yaml", cwd=tmp_path)
    assert utf8.returncode == 0, utf8.stderr
    assert utf8.stdout.splitlines() == [
        'rules/k8s.yaml:2: k8s {k8s.namespace="prod"}',
        "ok: 1 rules in 1 files (matchers_syntax: utf8)",
    ]


def test_check_reports_every_broken_file_as_file_line_message_and_exits_1(
    tmp_path: Path,
) -> None:
    shutil.copytree(RULES, tmp_path / "rules")
    write(
        tmp_path / "rules" / "broken.yaml",
        """
        rules:
          - name: restart-api
            matchers: ['alertname = "APIDown"']
            for: two minutes
            action: {type: log, params: {message: hi}}
        """,
    )
    write(tmp_path / "rules" / "typo.yaml", "rules:\n  - name: x\n    matcher: []\n")
    result = run("check", "rules", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "rules/broken.yaml:4: for: expected a duration like 30s, 5m, 1h30m, got 'two minutes'"
    )
    assert lines[1].startswith("rules/typo.yaml:3: unknown key 'matcher'")
    assert lines[2] == "2 error(s)"


UNBOUNDED = {
    "kubernetes.rollout_undo": "namespace: prod\nname: api\nto_revision: '{{ labels.r }}'",
    "kubernetes.scale_hpa": "namespace: prod\nname: api\nmax_replicas: {step: 5}\nfloor: 2",
    "ecs.rollback": "cluster: c\nservice: s\ntask_definition: '{{ labels.td }}'",
    "lambda.rollback_alias": "function: w\nalias: LIVE\nversion: $LATEST",
    "lambda.set_event_source": "function: w\nsource: q\nenabled: '{{ labels.on }}'",
    "events.disable_rule": "rule: r",
    "appconfig.set_feature_flag": "application: abc1234\nenvironment: env5678\n"
    "profile: prf9012\nflag: f\nenabled: '{{ labels.e }}'\n"
    "deployment_strategy: AppConfig.AllAtOnce",
    "cloudfront.create_invalidation": "distribution_id: E2EXAMPLE1234\npaths: ['/*']",
    "codedeploy.stop_deployment": "application: a\ndeployment_group: g\nauto_rollback: 'yes'",
    "rds.failover_db_cluster": "cluster: '-aurora'",
    "notify.pagerduty": "routing_key_env: pd-key\nseverity: critical\nsummary: s",
    "notify.email": "to: [not-an-address]\nsubject: s\nbody: b",
}
"""A rule per new action type, each missing its bound or with one a label could move."""


def test_check_refuses_each_new_action_without_its_bounds_as_file_line_message(
    tmp_path: Path,
) -> None:
    for i, (action, params) in enumerate(UNBOUNDED.items()):
        body = "".join(f"        {line}\n" for line in params.splitlines())
        write(
            tmp_path / "rules" / f"{i:02d}.yaml",
            f"rules:\n  - name: r{i}\n    matchers: ['alertname = \"A\"']\n"
            f"    action:\n      type: {action}\n      params:\n{body}",
        )
    result = run("check", "rules", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1] == f"{len(UNBOUNDED)} error(s)"
    for i, (action, line) in enumerate(zip(UNBOUNDED, lines[:-1], strict=True)):
        assert line.startswith(f"rules/{i:02d}.yaml:"), line
        where, _, message = line.partition(": ")
        assert int(where.rsplit(":", 1)[1]) >= 6, line  # inside the params block
        assert message.startswith(f"{action}: param "), line


def test_check_of_a_missing_directory_fails(tmp_path: Path) -> None:
    result = run("check", "nowhere", cwd=tmp_path)
    assert result.returncode == 1
    assert "nowhere:0: rules directory does not exist" in result.stderr


# --------------------------------------------------------------------------- simulate


def test_simulate_shows_the_rule_each_guard_and_the_rendered_action_without_side_effects(
    tmp_path: Path,
) -> None:
    result = run("simulate", str(EXAMPLE), "--rules", str(RULES), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "alert APIDown (firing) fingerprint=a1b2c3d4e5f60718" in out
    assert (
        f"rule apidown-restart ({RULES / 'apidown.yaml'}:6) action=kubernetes.rollout_restart"
        in out
    )
    assert "      step 2    kubernetes.scale prod/deployment/api, verified 600s" in out
    lines = out.split("    if it does not help:")[0].splitlines()
    guards = [
        (parts[0], parts[1])
        for line in lines
        if line.startswith("    ") and not (parts := line.split())[1].startswith("{")
    ]
    assert guards == [
        ("paused", "pass"),
        ("blackout", "pass"),
        ("duplicate", "not_checked"),
        ("silenced", "not_checked"),
        ("for", "pass"),
        ("params", "pass"),
        ("limits", "pass"),
        ("dry_run", "would_dry_run"),
    ]
    [rendered] = [line.split(None, 1)[1] for line in lines if line.startswith("    params     {")]
    assert json.loads(rendered) == {
        "namespace": "prod",
        "name": "api",
        "kind": "deployment",
        "if_rolling_out": "skip",
    }
    # No side effects: nothing written where it ran (no ./data, no database).
    assert tree(tmp_path) == set()


def test_simulate_names_the_target_once(tmp_path: Path) -> None:
    result = run("simulate", str(EXAMPLE), "--rules", str(RULES), cwd=tmp_path)
    [dry_run_line] = [x for x in result.stdout.splitlines() if x.strip().startswith("dry_run")]
    assert dry_run_line.split(None, 2)[2] == "kubernetes.rollout_restart prod/deployment/api"


def test_simulate_json_is_machine_readable(tmp_path: Path) -> None:
    result = run("simulate", str(EXAMPLE), "--rules", str(RULES), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)
    assert (item["alert"], item["status"], item["fingerprint"]) == (
        "APIDown",
        "firing",
        "a1b2c3d4e5f60718",
    )
    assert item["labels"]["namespace"] == "prod"
    [rule] = item["rules"]
    assert (rule["rule"], rule["action"], rule["target"]) == (
        "apidown-restart",
        "kubernetes.rollout_restart",
        "kubernetes.rollout_restart prod/deployment/api",
    )
    assert (rule["params"]["namespace"], rule["params"]["name"]) == ("prod", "api")
    assert [(g["guard"], g["verdict"]) for g in rule["guards"]] == [
        ("paused", "pass"),
        ("blackout", "pass"),
        ("duplicate", "not_checked"),
        ("silenced", "not_checked"),
        ("for", "pass"),
        ("params", "pass"),
        ("limits", "pass"),
        ("dry_run", "would_dry_run"),
    ]
    assert tree(tmp_path) == set()


def test_simulate_shows_a_blackout_as_the_reason_to_skip(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config" / "remediator.yaml",
        """
        blackouts:
          - name: always-frozen
            start: 2000-01-01T00:00:00Z
            end: 2100-01-01T00:00:00Z
        """,
    )
    before = tree(tmp_path)
    result = run(
        "simulate", str(EXAMPLE), "--rules", str(RULES), "--config", str(config), "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)
    [rule] = item["rules"]
    blackout = next(g for g in rule["guards"] if g["guard"] == "blackout")
    assert blackout["verdict"] == "skip"
    assert "always-frozen" in blackout["detail"]
    assert tree(tmp_path) == before


def test_simulate_says_when_no_rule_matches(tmp_path: Path) -> None:
    body = json.loads(EXAMPLE.read_text())
    body["alerts"][0]["labels"]["namespace"] = "dev"
    alert = write(tmp_path / "dev.json", json.dumps(body))
    result = run("simulate", str(alert), "--rules", str(RULES), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no rule matches" in result.stdout


def test_simulate_of_a_bad_payload_or_broken_rules_exits_1(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", '{"version": "4", "alerts": [')
    result = run("simulate", str(bad), "--rules", str(RULES), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("remediator simulate: ")
    write(tmp_path / "rules" / "x.yaml", "rules:\n  - name: X\n")
    result = run("simulate", str(EXAMPLE), "--rules", "rules", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("rules/x.yaml:2: rule name must match")


# --------------------------------------------------------------------------- serve


def test_serve_with_a_bad_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = write(tmp_path / "remediator.yaml", "limits:\n  max_concurrent_actions: 0\n")
    result = run("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "limits.max_concurrent_actions: must be in 1..1024, got 0" in result.stderr
    assert tree(tmp_path) == {"remediator.yaml"}


def test_serve_reads_the_config_file_named_by_remediator_config(tmp_path: Path) -> None:
    config = write(tmp_path / "remediator.yaml", "workers: many\n")
    result = run("serve", cwd=tmp_path, env=clean_env(REMEDIATOR_CONFIG=str(config)))
    assert result.returncode == 2
    assert "workers: must be an integer, got 'many'" in result.stderr


def test_serve_with_a_bad_listen_flag_exits_2(tmp_path: Path) -> None:
    result = run("serve", "--listen", "localhost", cwd=tmp_path)
    assert result.returncode == 2
    assert "--listen: expected HOST:PORT, got 'localhost'" in result.stderr


def test_serve_with_broken_rules_exits_1_and_says_which_file(tmp_path: Path) -> None:
    write(tmp_path / "rules" / "x.yaml", "rules:\n  - name: Bad_Name\n")
    result = run(
        "serve", "--listen", f"127.0.0.1:{servers.free_port()}", "--data-dir", "data",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    [event] = [json.loads(line) for line in result.stderr.splitlines()]
    assert event["event"] == "start_failed"
    assert event["error"].startswith("rules/x.yaml:2: rule name must match")


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=5) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, raw = int(error.code), error.read()
    return status, json.loads(raw) if raw.strip() else None


def eventually(probe: Callable[[], T | None], *, what: str, timeout: float = 10.0) -> T:
    """Poll `probe` until it returns something other than None (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`remediator serve` on a free port in tmp_path; yields (process, base URL, stderr file)."""
    port = servers.free_port()
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--listen", f"127.0.0.1:{port}", *args],
            cwd=tmp_path,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        servers.wait_http(
            f"{url}/healthz", timeout=START_TIMEOUT, ok=lambda s: s == 200, process=process, log=log
        )
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def log_events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_serve_decides_an_alert_in_dry_run_reloads_on_sighup_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    shutil.copytree(RULES, tmp_path / "rules")
    # Flags win over the file: the file asks for real actions and another port.
    config = write(tmp_path / "remediator.yaml", "dry_run: false\nlisten: 127.0.0.1:1\n")
    with serving(
        tmp_path, "--config", str(config), "--rules", "rules", "--data-dir", "state", "--dry-run"
    ) as (process, url, log):
        assert http("GET", f"{url}/healthz") == (200, {"status": "ok"})
        status, answer = http("POST", f"{url}/webhook/alertmanager", EXAMPLE.read_bytes())
        assert (status, answer["accepted"]) == (200, 1)

        def decided() -> list[dict[str, Any]] | None:
            rows = http("GET", f"{url}/api/v1/decisions")[1]["decisions"]
            return rows or None

        [row] = eventually(decided, what="the decision in /api/v1/decisions")
        assert (row["rule"], row["outcome"], row["fingerprint"]) == (
            "apidown-restart",
            "dry_run",
            "a1b2c3d4e5f60718",
        )
        assert row["target"] == "kubernetes.rollout_restart prod/deployment/api"
        # No `kubernetes:` config (as on `make run`): a dry run that says it was not checked.
        assert "not checked against a cluster" in row["detail"]

        def logged() -> dict[str, Any] | None:
            found = [e for e in log_events(log) if e.get("event") == "decision_recorded"]
            return found[0] if found else None

        event = eventually(logged, what="decision_recorded on stderr")
        assert (event["rule"], event["outcome"], event["fingerprint"]) == (
            "apidown-restart",
            "dry_run",
            "a1b2c3d4e5f60718",
        )
        assert event["request_id"] == answer["request_id"]
        assert (tmp_path / "state" / "remediator.db").exists()

        # SIGHUP: a rule file added while running is loaded.
        write(
            tmp_path / "rules" / "disk.yaml",
            """
            rules:
              - name: disk-full-cleanup
                matchers: ['alertname = "DiskFull"']
                action: {type: log, params: {message: "clean {{ labels.instance }}"}}
            """,
        )
        process.send_signal(signal.SIGHUP)

        def reloaded() -> list[str] | None:
            names = [r["name"] for r in http("GET", f"{url}/api/v1/rules")[1]["rules"]]
            return names if "disk-full-cleanup" in names else None

        new_rules = eventually(reloaded, what="the new rule in /api/v1/rules")
        assert len(new_rules) == example_rules()[0] + 1
        assert http("GET", f"{url}/api/v1/rules")[1]["dry_run"] is True

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0
    events = [e["event"] for e in log_events(log)]
    assert "rules_reloaded" in events
    assert events[-1] == "shutdown_finished"


def test_serve_keeps_its_rules_when_a_sighup_reload_finds_a_broken_file(tmp_path: Path) -> None:
    shutil.copytree(RULES, tmp_path / "rules")
    with serving(tmp_path, "--rules", "rules", "--data-dir", "state") as (process, url, log):
        write(tmp_path / "rules" / "broken.yaml", "rules:\n  - name: Broken\n")
        process.send_signal(signal.SIGHUP)

        def failed() -> dict[str, Any] | None:
            found = [e for e in log_events(log) if e.get("event") == "reload_failed"]
            return found[0] if found else None

        event = eventually(failed, what="reload_failed on stderr")
        assert event["errors"][0].startswith("rules/broken.yaml:2: rule name must match")
        names = [r["name"] for r in http("GET", f"{url}/api/v1/rules")[1]["rules"]]
        assert len(names) == example_rules()[0]
        assert http("GET", f"{url}/readyz")[0] == 200
        with _OPENER.open(f"{url}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "remediator_config_last_reload_successful 0.0" in metrics

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0


def test_check_on_a_directory_without_rule_files_fails(tmp_path: Path) -> None:
    result = run("check", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "no rule files" in result.stderr
