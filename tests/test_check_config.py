"""`remediator check --config`: everything checkable without the target systems.

Run in-process (`cli.main`) for speed; test_cli.py runs the command as a process.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from remediator import cli

KUBE_CONFIG = """
dry_run: false
kubernetes:
  allowed_namespaces: [prod, staging]
  in_cluster: true
postgres:
  connections:
    main:
      dsn_env: REMEDIATOR_TEST_PG_DSN
      allowed_databases: [conectcrm]
"""

RULES = """
rules:
  - name: restart-system
    matchers: ['alertname = "APIDown"']
    action:
      type: kubernetes.rollout_restart
      params: {namespace: kube-system, name: coredns}
  - name: restart-by-matcher
    matchers: ['alertname = "APIDown"', 'namespace = "default"']
    action:
      type: kubernetes.rollout_restart
      params: {namespace: "{{ labels.namespace }}", name: "{{ labels.deployment }}"}
  - name: restart-by-label
    matchers: ['alertname = "APIDown"', 'namespace =~ "prod|staging"']
    action:
      type: kubernetes.rollout_restart
      params: {namespace: "{{ labels.namespace }}", name: "{{ labels.deployment }}"}
    escalate:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_UNSET_SLACK}
"""

LOG_ONLY = """
rules:
  - {name: r, matchers: ['alertname = "X"'], action: {type: log, params: {message: m}}}
"""


def check(tmp_path: Path, rules: str, config: str | None) -> list[str]:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "rules.yaml").write_text(textwrap.dedent(rules).lstrip())
    args = ["check", str(tmp_path / "rules")]
    if config is not None:
        (tmp_path / "config.yaml").write_text(textwrap.dedent(config).lstrip())
        args += ["--config", str(tmp_path / "config.yaml")]
    return [str(cli.main(args))]


def test_check_config_refuses_literal_and_matcher_fixed_params_outside_the_allow_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMEDIATOR_TEST_PG_DSN", "postgresql://u:p@127.0.0.1:5432/postgres")
    monkeypatch.delenv("REMEDIATOR_TEST_UNSET_SLACK", raising=False)
    assert check(tmp_path, RULES, KUBE_CONFIG) == ["1"]
    # (the rules without an escalate are warned of too: the test below)
    err = [e for e in capsys.readouterr().err.splitlines() if "has no escalate" not in e]
    rules_file = tmp_path / "rules" / "rules.yaml"
    assert err[0].startswith(f"{rules_file}:5: rule restart-system action: ")
    assert "not allowed" in err[0] and "kube-system" in err[0]
    assert err[1].startswith(f"{rules_file}:10: rule restart-by-matcher action: ")
    assert "'default'" in err[1]
    assert err[2] == (
        f"{rules_file}:18: warning: rule restart-by-label escalate: "
        "$REMEDIATOR_TEST_UNSET_SLACK (url_env) is not set: the escalation would fail"
    )
    assert err[3] == "2 error(s)"


def test_check_config_says_which_variable_an_enabled_family_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REMEDIATOR_TEST_PG_DSN", raising=False)
    assert check(tmp_path, LOG_ONLY, KUBE_CONFIG) == ["1"]
    [problem, total] = capsys.readouterr().err.splitlines()
    assert problem == (
        f"{tmp_path / 'config.yaml'}:8: postgres.connections.main.dsn_env: "
        "$REMEDIATOR_TEST_PG_DSN is not set (the postgres family needs it)"
    )
    assert total == "1 error(s)"


def test_check_config_names_the_line_of_a_bad_config_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = "limits:\n  window: 1h\n  max_actions_per_window: lots\n"
    assert check(tmp_path, LOG_ONLY, config) == ["1"]
    assert capsys.readouterr().err.strip() == (
        f"{tmp_path / 'config.yaml'}:3: limits.max_actions_per_window: must be an integer, "
        "got 'lots'"
    )


def test_check_passes_with_warnings_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REMEDIATOR_TEST_UNSET_SLACK", raising=False)
    rules = "rules:\n  - name: restart-by-label" + RULES.split("  - name: restart-by-label")[1]
    assert check(tmp_path, rules, None) == ["0"]
    out = capsys.readouterr()
    assert (
        out.out.splitlines()[-1]
        == "ok: 1 rules in 1 files (matchers_syntax: fallback), 1 warning(s)"
    )
    assert "REMEDIATOR_TEST_UNSET_SLACK" in out.err


def test_check_warns_of_a_rule_that_acts_and_calls_nobody_when_it_gives_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = """
    rules:
      - {name: tells, matchers: ['alertname = "X"'], action: {type: log, params: {message: m}}}
      - name: acts
        matchers: ['alertname = "APIDown"']
        action:
          type: kubernetes.rollout_restart
          params: {namespace: default, name: api}
    """
    assert check(tmp_path, rules, None) == ["0"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{tmp_path / 'rules' / 'rules.yaml'}:3: warning: rule acts has no escalate: when its "
        "fix does not take (or is refused for good), nobody is called — only an "
        "escalation_due log line"
    ]


def test_check_config_warns_of_a_blackout_naming_no_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A typo in a freeze's `rules:` holds back nothing: the rule acts through the freeze.
    config = """
    blackouts:
      - name: db-freeze
        days: [sat, sun]
        rules:
          - r
          - db-failvoer
    """
    assert check(tmp_path, LOG_ONLY, config) == ["0"]
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path / 'config.yaml'}:6: warning: blackouts[0].rules[1]: no rule is named "
        "'db-failvoer': blackout 'db-freeze' holds back nothing of it"
    ]
