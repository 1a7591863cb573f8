"""Rule files: the examples load, every mistake is `file:line: message` at the right line,
and the alertname index finds exactly the rules that match.

In the YAML below, `# <- here` marks the line an error must point at.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from remediator import errors
from remediator.matching import loader
from remediator.matching.index import RuleIndex
from remediator.matching.matchers import Syntax
from remediator.models.alert import Alert
from remediator.models.rule import Rule

REPO_RULES = Path(__file__).resolve().parent.parent / "rules"
MARK = "# <- here"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def marked_line(path: Path) -> int:
    """The 1-based line of `path` that carries the `# <- here` marker."""
    [line] = [i for i, text in enumerate(path.read_text().splitlines(), start=1) if MARK in text]
    return line


def load_errors(directory: Path) -> list[errors.RuleFileError]:
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(directory)
    return caught.value.errors


def only_error(tmp_path: Path, text: str) -> tuple[Path, errors.RuleFileError]:
    path = write(tmp_path, "rules.yaml", text)
    [error] = load_errors(tmp_path)
    assert error.file == str(path)
    assert str(error).startswith(f"{path}:{error.line}: ")
    return path, error


def test_the_example_rules_load() -> None:
    rules = loader.load_dir(REPO_RULES)
    by_name = {r.name: r for r in rules}
    assert set(by_name) == {
        "apidown-restart",
        "apidown-compose-restart",
        "redisdown-compose-restart",
        "traffic-spike-scale-up",
        "db-pool-exhausted-terminate",
        "sqs-backlog-scale-consumers",
        "sqs-backlog-scale-ecs-consumers",
        "plooral-api-redeploy",
        "plooral-worker-throttled",
        "plooral-dlq-redrive",
        # the seed runbooks' rollbacks, switches and pages (#14)
        "agente-high-error-rate-undo",
        "agente-response-time-hpa",
        "plooral-api-rollback",
        "plooral-worker-errors-rollback",
        "plooral-worker-cascade-pause",
        "plooral-frontend-invalidate",
        "plooral-aurora-failover",
        "plooral-p0-notify-managers",
        "ons-lambda-errors-rollback",
        "ons-feature-flag-off",
        "ons-stop-deployments",
        "ons-stop-processing",
    }
    apidown = by_name["apidown-restart"]
    assert [str(m) for m in apidown.matchers] == [
        'alertname="APIDown"',
        'namespace=~"prod|staging"',
    ]
    assert (apidown.source, apidown.for_, apidown.action.type) == (
        "alertmanager",
        120.0,
        "kubernetes.rollout_restart",
    )
    assert (apidown.limits.cooldown, apidown.limits.max_attempts) == (900.0, 3)
    assert apidown.steps[0].resolve_within == 600.0
    assert apidown.escalate is not None and apidown.escalate.type == "notify.webhook"
    assert apidown.file == str(REPO_RULES / "apidown.yaml")
    assert apidown.line == 6
    assert [s.action.type for s in apidown.steps] == [
        "kubernetes.rollout_restart",
        "kubernetes.scale",
    ]
    pool = by_name["db-pool-exhausted-terminate"]
    assert [(s.action.type, s.resolve_within) for s in pool.steps] == [
        ("postgres.terminate_queries", 300.0),
        ("docker.restart", 600.0),
    ]
    scale = by_name["traffic-spike-scale-up"]
    assert scale.action.type == "kubernetes.scale"
    assert scale.file == str(REPO_RULES / "traffic-spike-scale.yaml")


def test_a_rule_that_sets_nothing_gets_the_documented_defaults(tmp_path: Path) -> None:
    write(
        tmp_path,
        "minimal.yaml",
        """
        rules:
          - name: minimal
            matchers: ['alertname = "A"']
            action: {type: log, params: {message: hi}}
        """,
    )
    [rule] = loader.load_dir(tmp_path)
    assert (rule.source, rule.for_, rule.escalate) == ("any", 0.0, None)
    assert (rule.limits.cooldown, rule.limits.max_attempts, rule.limits.window) == (
        900.0,
        3,
        3600.0,
    )
    assert (rule.limits.max_actions, rule.limits.retry_while_firing) == (None, False)
    assert rule.steps[0].resolve_within == 900.0
    assert (rule.circuit_breaker.open_after, rule.circuit_breaker.reset_after) == (3, 3600.0)


def test_a_ladder_verifies_each_step_and_a_step_without_verify_takes_the_rules(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        "ladder.yaml",
        """
        rules:
          - name: ladder
            matchers: ['alertname = "A"']
            steps:
              - action: {type: log, params: {message: one}}
                verify: {resolve_within: 2m}
              - action: {type: log, params: {message: two}}
              - action: {type: log, params: {message: three}}
                verify: {resolve_within: never}
            verify: {resolve_within: 7m}
            dry_run: true
        """,
    )
    [rule] = loader.load_dir(tmp_path)
    assert [s.resolve_within for s in rule.steps] == [120.0, 420.0, None]
    assert rule.dry_run is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                steps:   # <- here
                  - action: {type: log, params: {message: hi}}
            """,
            "either `action` or `steps`",
            id="both",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                steps:
                  - action: {type: log, params: {message: hi}}
                  - action: {type: log, params: {message: again}}
                limits:
                  retry_while_firing: true   # <- here
            """,
            "list a step twice",
            id="ladder-and-retry",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                steps:
                  - action: {type: log, params: {message: hi}}
                  - verify: {resolve_within: 5m}   # <- here
            """,
            "`action` is required",
            id="step-without-action",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                steps:
                  - action: {type: log, params: {message: hi}}
                    when: later   # <- here
            """,
            "unknown key steps[0].when",
            id="unknown-step-key",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action:
                  type: log
                  params:
                    message: "see {{ decision.url }}"   # <- here
            """,
            "only in `escalate` params",
            id="escalation-template-in-an-action",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                dry_run: sometimes   # <- here
            """,
            "true or false",
            id="dry-run-not-a-flag",
        ),
    ],
)
def test_a_ladder_mistake_is_reported_at_its_line(tmp_path: Path, text: str, message: str) -> None:
    path, error = only_error(tmp_path, text)
    assert message in error.message
    assert error.line == marked_line(path)


def test_a_ladder_longer_than_ten_steps_is_refused(tmp_path: Path) -> None:
    steps = "".join("      - action: {type: log, params: {message: hi}}\n" for _ in range(11))
    text = f"rules:\n  - name: x\n    matchers: ['alertname = \"A\"']\n    steps:\n{steps}"
    _, error = only_error(tmp_path, text)
    assert "at most 10 steps" in error.message


def test_verify_never_turns_verification_off(tmp_path: Path) -> None:
    write(
        tmp_path,
        "never.yaml",
        """
        rules:
          - name: never
            matchers: ['alertname = "A"']
            action: {type: log, params: {message: hi}}
            verify: {resolve_within: never}
        """,
    )
    [rule] = loader.load_dir(tmp_path)
    assert rule.steps[0].resolve_within is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"'
                action: type: log   # <- here
            """,
            "invalid YAML",
            id="invalid-yaml",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
            owner: sre   # <- here
            """,
            "unknown key 'owner'",
            id="unknown-top-level-key",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                priority: high   # <- here
            """,
            "unknown key 'priority'",
            id="unknown-rule-key",
        ),
        pytest.param(
            """
            rules:
              - name: API_Restart   # <- here
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
            """,
            "rule name must match [a-z0-9-]+",
            id="bad-name",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"', 'namespace ~ "prod"']   # <- here
                action: {type: log, params: {message: hi}}
            """,
            "cannot parse matcher 'namespace ~ \"prod\"'",
            id="bad-matcher",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"', 'namespace =~ "(prod"']   # <- here
                action: {type: log, params: {message: hi}}
            """,
            "invalid regex '(prod'",
            id="bad-regex",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action:
                  type: kubernetes.reboot_everything   # <- here
            """,
            "unknown action type 'kubernetes.reboot_everything'; "
            "known: appconfig.set_feature_flag, ",
            id="unknown-action-type",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action:
                  type: log
                  params:
                    message: hi
                    colour: red   # <- here
            """,
            "log: param 'colour': unknown parameter; known: message, target",
            id="unknown-param",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action:
                  type: log
                  params: {target: api}   # <- here
            """,
            "log: param 'message': is required",
            id="missing-required-param",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action:
                  type: log
                  params:
                    message: hi
                    target: "prod\\ndeploy"   # <- here
            """,
            "log: param 'target': contains control characters",
            id="log-target-with-a-newline",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                escalate:
                  type: notify.webhook
                  params:
                    url_env: slack_url   # <- here
            """,
            "notify.webhook: param 'url_env': 'slack_url' is not an environment variable name",
            id="url-env-lowercase",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action:
                  type: log
                  params:
                    target: "{{ labels.namespace }}"
                    message: "restart {{ labels.deployment | upper }}"   # <- here
            """,
            "template placeholder '{{ labels.deployment | upper }}' is not allowed",
            id="bad-template-placeholder",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action:
                  type: log
                  params:
                    message: "{{ alert.owner }}"   # <- here
            """,
            "unknown alert field 'owner'",
            id="unknown-alert-field",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                for: 5 minutes   # <- here
                action: {type: log, params: {message: hi}}
            """,
            "for: expected a duration like 30s, 5m, 1h30m, got '5 minutes'",
            id="bad-duration",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                limits: {cooldown: .nan}   # <- here
                action: {type: log, params: {message: hi}}
            """,
            "cooldown: expected a finite duration like 30s, 5m, 1h, got nan",
            id="nan-duration",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                verify: {resolve_within: 1"""
            + "0" * 400
            + """s}   # <- here
                action: {type: log, params: {message: hi}}
            """,
            "resolve_within: expected a finite duration",
            id="infinite-duration",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                limits: {window: 1"""
            + "0" * 400
            + """}   # <- here
                action: {type: log, params: {message: hi}}
            """,
            "window: expected a finite duration",
            id="huge-integer-duration",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                limits:
                  cooldown: 5m
                  max_attempts: 0   # <- here
            """,
            "max_attempts must be an integer in 1..1000000, got 0",
            id="max-attempts-zero",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                limits: 3   # <- here
            """,
            "`limits` must be a mapping",
            id="limits-not-a-mapping",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                limits:
                  cooldown: 5m
                  burst: 2   # <- here
            """,
            "unknown key limits.burst",
            id="unknown-limits-key",
        ),
        pytest.param(
            """
            rules:
              - name: x
                source: cloudwatch   # <- here
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
            """,
            "source must be alertmanager, sns or any",
            id="bad-source",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: []   # <- here
                action: {type: log, params: {message: hi}}
            """,
            "matchers must be a non-empty list",
            id="no-matchers",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                verify: {resolve_within: soon}   # <- here
            """,
            "resolve_within: expected a duration",
            id="bad-verify-duration",
        ),
        pytest.param(
            """
            rules:   # <- here
              name: x
            """,
            "`rules` must be a list",
            id="rules-not-a-list",
        ),
    ],
)
def test_a_mistake_is_reported_at_its_line_with_what_to_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    path, error = only_error(tmp_path, text)
    assert message in error.message
    assert error.line == marked_line(path)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
            owner:   # <- here
              team: sre
            """,
            id="top-level",
        ),
        pytest.param(
            """
            rules:
              - name: x
                matchers: ['alertname = "A"']
                action: {type: log, params: {message: hi}}
                labels:   # <- here
                  team: sre
            """,
            id="rule",
        ),
    ],
)
def test_an_unknown_key_with_a_block_value_is_reported_at_the_key(
    tmp_path: Path, text: str
) -> None:
    path, error = only_error(tmp_path, text)
    assert "unknown key" in error.message
    assert error.line == marked_line(path)


def test_a_bad_matcher_in_a_block_list_is_reported_at_its_own_line(tmp_path: Path) -> None:
    path, error = only_error(
        tmp_path,
        """
        rules:
          - name: apidown-restart
            matchers:
              - alertname = "APIDown"
              - namespace =~ "(prod|staging"   # <- here
            action: {type: log, params: {message: hi}}
        """,
    )
    assert "invalid regex" in error.message
    assert error.line == marked_line(path)


def test_one_matcher_string_may_hold_several_matchers_all_of_which_must_match(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        "rules.yaml",
        """
        rules:
          - name: disk-full
            matchers:
              - severity!=info,alertname=DiskFull
              - '{team="sre", env=~"prod|staging"}'
            action: {type: log, params: {message: hi}}
        """,
    )
    [rule] = loader.load_dir(tmp_path)
    assert [str(m) for m in rule.matchers] == [
        'severity!="info"', 'alertname="DiskFull"', 'team="sre"', 'env=~"prod|staging"',
    ]  # fmt: skip
    assert rule.alertname == "DiskFull"  # indexed by its alertname matcher
    index = RuleIndex([rule])
    labels = {"severity": "page", "team": "sre", "env": "prod"}
    assert index.match(alert("DiskFull", **labels)) == [rule]
    assert index.match(alert("DiskFull", **{**labels, "severity": "info"})) == []
    assert index.match(alert("APIDown", **labels)) == []


def test_a_rule_whose_matcher_strings_hold_no_matcher_is_refused(tmp_path: Path) -> None:
    # Alertmanager reads `{}` and "" as no matcher; a rule with none would match everything.
    path, error = only_error(
        tmp_path,
        """
        rules:
          - name: everything
            matchers: ['{}', '']   # <- here
            action: {type: log, params: {message: hi}}
        """,
    )
    assert "hold no matcher" in error.message
    assert error.line == marked_line(path)


def test_the_fallback_warns_at_the_line_of_the_string_it_read_the_classic_way(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "rules.yaml",
        """
        rules:
          - name: api
            matchers:
              - alertname = "APIDown"
              - instance=~api\\\\.example\\\\.com   # <- here
            action: {type: log, params: {message: hi}}
        """,
    )
    warnings: list[errors.RuleFileError] = []
    [rule] = loader.load_dir(tmp_path, warnings=warnings)
    assert rule.matchers[1].matches({"instance": "api.example.com"})
    [warning] = warnings
    assert (warning.file, warning.line) == (str(path), marked_line(path))
    assert "read with the classic syntax" in warning.message
    # With the classic syntax there is nothing to warn about; with UTF-8 it is an error.
    assert loader.load_dir(tmp_path, syntax=Syntax.CLASSIC, warnings=(quiet := [])) and not quiet
    with pytest.raises(errors.RuleFileErrors, match="cannot parse matchers"):
        loader.load_dir(tmp_path, syntax=Syntax.UTF8)


def test_a_missing_required_param_in_a_block_points_into_the_params(tmp_path: Path) -> None:
    path, error = only_error(
        tmp_path,
        """
        rules:
          - name: x
            matchers: ['alertname = "A"']
            action:
              type: notify.webhook
              params:   # <- here
                text: the API is down
        """,
    )
    assert error.message == "notify.webhook: param 'url_env': is required"
    # The `params:` key or its first entry: either shows the block to complete.
    assert error.line in (marked_line(path), marked_line(path) + 1)


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("kubernetes.rollout_undo", "namespace: prod\nname: api\n"
         "to_revision: '{{ labels.rev }}'   # <- here",
         "param 'to_revision': must be written in the rule, not a template"),
        ("kubernetes.scale_hpa", "namespace: prod\nname: api\nmin_replicas: {step: 2}\n"
         "floor: 2\nceiling: '{{ labels.max }}'   # <- here",
         "param 'ceiling': must be written in the rule, not a template"),
        ("kubernetes.scale_hpa", "namespace: prod\nname: api\n"
         "min_replicas: 4   # <- here\nfloor: 2\nceiling: 10",
         "param 'min_replicas': expected {step: +N} (or -N), or {to: N}"),
        ("ecs.rollback", "cluster: c\nservice: s\n"
         "task_definition: '{{ labels.td }}'   # <- here",
         "param 'task_definition': must be written in the rule, not a template"),
        ("lambda.rollback_alias", "function: w\nalias: LIVE\nversion: $LATEST   # <- here",
         "param 'version': $LATEST is not a version"),
        ("lambda.set_event_source", "function: w\nsource: q\n"
         "enabled: '{{ labels.on }}'   # <- here",
         "param 'enabled': must be written in the rule, not a template"),
        ("events.disable_rule", "rule: r\nenabled: 'false'   # <- here",
         "param 'enabled': write true or false in the rule (not text)"),
        ("appconfig.set_feature_flag", "application: abc1234\nenvironment: env5678\n"
         "profile: prf9012\nflag: f\nenabled: false\n"
         "deployment_strategy: '{{ labels.s }}'   # <- here",
         "param 'deployment_strategy': must be written in the rule, not a template"),
        ("cloudfront.create_invalidation", "distribution_id: E2EXAMPLE1234\n"
         "paths: [/a, /b, /c]   # <- here\nmax_paths: 2",
         "param 'paths': 3 paths, more than max_paths 2"),
        ("cloudfront.create_invalidation", "distribution_id: E2EXAMPLE1234\n"
         "paths: [/a]\nmax_paths: '{{ labels.n }}'   # <- here",
         "param 'max_paths': must be written in the rule, not a template"),
        ("codedeploy.stop_deployment", "application: a\ndeployment_group: g\n"
         "auto_rollback: '{{ labels.r }}'   # <- here",
         "param 'auto_rollback': must be written in the rule, not a template"),
        ("rds.failover_db_cluster", "cluster: aurora--x   # <- here",
         "param 'cluster': 'aurora--x' is not a DB cluster identifier"),
        ("notify.pagerduty", "routing_key_env: PD_KEY\nseverity: urgent   # <- here\n"
         "summary: s",
         "param 'severity': 'urgent' is not one of critical, error, warning, info"),
        ("notify.email", "to: [a@plooral.com]\nsubject: s\nbody: b\n"
         "bcc: [b@plooral.com]   # <- here",
         "param 'bcc': unknown parameter"),
    ],
)  # fmt: skip
def test_each_new_action_refuses_a_bound_a_label_could_move_at_its_line(
    tmp_path: Path, action: str, params: str, message: str
) -> None:
    body = "".join(f"        {line}\n" for line in params.splitlines())
    path, error = only_error(
        tmp_path,
        "rules:\n  - name: x\n    matchers: ['alertname = \"A\"']\n"
        f"    action:\n      type: {action}\n      params:\n{body}",
    )
    assert error.message.startswith(f"{action}: ") and message in error.message, error.message
    assert error.line == marked_line(path)


@pytest.mark.parametrize(
    ("action", "params", "missing"),
    [
        ("kubernetes.scale_hpa", "namespace: prod\nname: api\nmin_replicas: {step: 1}\n"
         "ceiling: 9", "floor"),
        ("cloudfront.create_invalidation", "distribution_id: E2EXAMPLE1234\npaths: [/a]",
         "max_paths"),
        ("events.disable_rule", "rule: r", "enabled"),
        ("appconfig.set_feature_flag", "application: abc1234\nenvironment: env5678\n"
         "profile: prf9012\nflag: f\nenabled: false", "deployment_strategy"),
        ("lambda.set_event_source", "function: w\nsource: q", "enabled"),
        ("notify.pagerduty", "routing_key_env: PD_KEY\nseverity: critical", "summary"),
        ("notify.email", "to: [a@plooral.com]\nsubject: s", "body"),
    ],
)  # fmt: skip
def test_each_new_action_without_a_required_param_names_it(
    tmp_path: Path, action: str, params: str, missing: str
) -> None:
    body = "".join(f"        {line}\n" for line in params.splitlines())
    path, error = only_error(
        tmp_path,
        "rules:\n  - name: x\n    matchers: ['alertname = \"A\"']\n"
        f"    action:\n      type: {action}\n      params:   # <- here\n{body}",
    )
    assert error.message == f"{action}: param {missing!r}: is required"
    assert error.line in (marked_line(path), marked_line(path) + 1)


def test_a_duplicate_name_points_at_the_second_and_names_the_first(tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "a-api.yaml",
        """
        rules:
          - name: api-restart
            matchers: ['alertname = "APIDown"']
            action: {type: log, params: {message: restart}}
        """,
    )
    second = write(
        tmp_path,
        "b-more/api.yaml",
        """
        # a copy someone forgot about
        rules:
          - name: other
            matchers: ['alertname = "Other"']
            action: {type: log, params: {message: other}}
          - name: api-restart   # <- here
            matchers: ['alertname = "APIDown"']
            action: {type: log, params: {message: restart again}}
        """,
    )
    [error] = load_errors(tmp_path)
    assert (error.file, error.line) == (str(second), marked_line(second))
    assert "duplicate rule name 'api-restart'" in error.message
    assert f"{first}:2" in error.message


def test_every_error_of_every_file_is_reported_in_one_pass(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        """
        rules:
          - name: one
            matchers: ['alertname = "A"']
            for: 1 hour   # <- here
            action: {type: log, params: {message: hi}}
          - name: fine
            matchers: ['alertname = "A"']
            action: {type: log, params: {message: hi}}
          - name: three
            matchers: ['alertname = "A"']
            action: {type: log, params: {message: hi, size: 3}}   # <- here
        """,
    )
    b = write(tmp_path, "b.yaml", "rules:\n  - name: x\n    bogus: 1   # <- here\n")
    c = write(tmp_path, "c.yaml", "rules: [\n")
    found = [(e.file, e.line) for e in load_errors(tmp_path)]
    lines_a = [i for i, t in enumerate(a.read_text().splitlines(), 1) if MARK in t]
    assert found[:2] == [(str(a), lines_a[0]), (str(a), lines_a[1])]
    assert found[2] == (str(b), marked_line(b))
    assert found[3][0] == str(c)
    assert len(found) == 4


def test_an_empty_file_or_one_with_only_comments_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "comments.yml", "# rules to come\n")
    write(tmp_path, "none.yaml", "rules: []\n")
    write(
        tmp_path,
        "real.yaml",
        """
        rules:
          - name: x
            matchers: ['alertname = "A"']
            action: {type: log, params: {message: hi}}
        """,
    )
    assert [r.name for r in loader.load_dir(tmp_path)] == ["x"]


def test_files_that_are_not_yaml_rule_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "README.md", "rules: [ this is not yaml")
    write(tmp_path, "old.yaml.bak", "rules: [")
    assert loader.load_dir(tmp_path) == []


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"rules:\n  - name: caf\xe9\n")
    [error] = load_errors(tmp_path)
    assert error.file == str(path)
    assert "not UTF-8" in error.message


def test_a_missing_rules_directory_is_an_error(tmp_path: Path) -> None:
    [error] = load_errors(tmp_path / "nope")
    assert "does not exist" in error.message


def test_a_file_without_a_rules_list_says_what_is_expected(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, "- name: x\n")
    assert error.line == 1
    assert "expected a mapping with a `rules:` list" in error.message


def test_a_rule_file_cannot_build_objects_through_yaml_tags(tmp_path: Path) -> None:
    _, error = only_error(tmp_path, "rules: !!python/object/apply:os.system ['touch /tmp/pwned']\n")
    assert "invalid YAML" in error.message


# --------------------------------------------------------------------------- index


def rules_from(tmp_path: Path, text: str) -> list[Rule]:
    write(tmp_path, "rules.yaml", text)
    return loader.load_dir(tmp_path)


def alert(name: str, *, source: str = "alertmanager", **labels: str) -> Alert:
    now = dt.datetime(2027, 1, 15, 12, tzinfo=dt.UTC)
    return Alert(
        source=source,
        name=name,
        status="firing",
        labels={"alertname": name, **labels},
        annotations={},
        starts_at=now,
        ends_at=None,
        fingerprint="0123456789abcdef",
        generator_url="",
        received_at=now,
    )


def rule_yaml(name: str, *matchers: str, source: str = "any") -> str:
    quoted = ", ".join(repr(m) for m in matchers)
    return (
        f"  - name: {name}\n    source: {source}\n    matchers: [{quoted}]\n"
        f"    action: {{type: log, params: {{message: hi}}}}\n"
    )


INDEX_RULES = "rules:\n" + "".join(
    [
        rule_yaml("api-restart", 'alertname = "APIDown"', 'namespace =~ "prod|staging"'),
        rule_yaml("api-page", 'alertname = "APIDown"', 'severity = "critical"'),
        rule_yaml("any-down", 'alertname =~ ".*Down"'),
        rule_yaml("not-api", 'alertname != "APIDown"', 'team = "sre"'),
        rule_yaml("db-restart", 'alertname = "DBDown"'),
        rule_yaml("sns-only", 'alertname = "APIDown"', source="sns"),
        rule_yaml("am-only", 'alertname = "APIDown"', source="alertmanager"),
    ]
)


def names(rules: list[Rule]) -> list[str]:
    return [r.name for r in rules]


@pytest.mark.parametrize(
    ("the_alert", "expected"),
    [
        (alert("APIDown", namespace="prod"), {"api-restart", "any-down", "am-only"}),
        (
            alert("APIDown", namespace="dev", severity="critical"),
            {"api-page", "any-down", "am-only"},
        ),
        (alert("APIDown", source="sns", namespace="prod"), {"api-restart", "any-down", "sns-only"}),
        (alert("DBDown", team="sre"), {"any-down", "not-api", "db-restart"}),
        (alert("DiskFull", team="sre"), {"not-api"}),
        (alert("DiskFull"), set()),
    ],
    ids=["by-alertname", "other-labels", "sns-source", "regex-and-negative", "unindexed", "none"],
)
def test_the_index_finds_exactly_the_rules_whose_matchers_and_source_accept_the_alert(
    tmp_path: Path, the_alert: Alert, expected: set[str]
) -> None:
    rules = rules_from(tmp_path, INDEX_RULES)
    found = names(RuleIndex(rules).match(the_alert))
    assert set(found) == expected
    assert len(found) == len(set(found))
    # Same answer as checking every rule one by one.
    brute = {
        r.name
        for r in rules
        if r.accepts_source(the_alert.source)
        and all(m.matches(the_alert.labels) for m in r.matchers)
    }
    assert brute == expected


def test_a_thousand_unrelated_rules_do_not_change_which_rules_match(tmp_path: Path) -> None:
    small = RuleIndex(rules_from(tmp_path / "small", INDEX_RULES))
    noise = "".join(
        rule_yaml(f"noise-{i}", f'alertname = "Noise{i}"', 'namespace =~ "prod|staging"')
        for i in range(1000)
    )
    big = RuleIndex(rules_from(tmp_path / "big", INDEX_RULES + noise))
    assert len(big) == len(small) + 1000
    for a in [
        alert("APIDown", namespace="prod"),
        alert("DBDown", team="sre"),
        alert("DiskFull", team="sre"),
        alert("APIDown", source="sns", namespace="prod"),
    ]:
        assert names(big.match(a)) == names(small.match(a))
    assert names(big.match(alert("Noise517", namespace="prod"))) == ["noise-517"]
    assert big.by_name["noise-999"].alertname == "Noise999"


def test_the_index_returns_matching_rules_in_load_order(tmp_path: Path) -> None:
    rules = rules_from(
        tmp_path,
        "rules:\n"
        + rule_yaml("first-any-down", 'alertname =~ ".*Down"')
        + rule_yaml("second-api", 'alertname = "APIDown"'),
    )
    assert names(RuleIndex(rules).match(alert("APIDown"))) == ["first-any-down", "second-api"]
