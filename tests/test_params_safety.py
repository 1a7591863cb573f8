"""Label values are untrusted: they never steer an action outside what the rule allows.

A test-only action type, `test.restart`, is registered here the way a family module
registers its types (a plugin: declared params, an allow-list, a target key). It keeps
every call it gets, so a test can show that a hostile label value never reached it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from remediator import errors
from remediator.actions import params, registry
from remediator.actions.base import Context, Result
from remediator.matching import loader
from remediator.settings import Settings
from tests.harness import Harness, am_alert


class RecordingRestart:
    """`test.restart`: a rollout restart that only records that it was called."""

    type: ClassVar[str] = "test.restart"
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = True
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "namespace": params.Field(params.dns_label(), doc="namespace of the deployment"),
            "name": params.Field(params.dns_label(), doc="name of the deployment"),
        }
    )
    allowed_namespaces: ClassVar[frozenset[str]] = frozenset({"prod", "staging"})

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        if values["namespace"] not in self.allowed_namespaces:
            raise errors.NotAllowed(
                "namespace", f"{values['namespace']!r} is not one of prod, staging"
            )

    def target(self, values: Mapping[str, Any]) -> str:
        return f"{values['namespace']}/deploy/{values['name']}"

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        self.calls.append(("run", dict(values)))
        return Result(detail=f"restarted {self.target(values)}")

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        self.calls.append(("dry_run", dict(values)))
        return Result(detail=f"would restart {self.target(values)}")


def _register() -> RecordingRestart:
    # Registered once per process: a second import (or a re-run in one interpreter)
    # finds the first instance instead of failing on a duplicate type.
    existing = registry.get(RecordingRestart.type)
    if existing is None:
        existing = registry.register(RecordingRestart())
    return cast(RecordingRestart, existing)


RESTART_ACTION = _register()


@pytest.fixture(autouse=True)
def _no_calls_yet() -> Iterator[None]:
    RESTART_ACTION.calls.clear()
    yield
    RESTART_ACTION.calls.clear()


RESTART = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: test.restart
      params:
        namespace: "{{ labels.namespace }}"
        name: "{{ labels.deployment }}"
    limits: {cooldown: 0s, max_attempts: 100}
"""

LOG_TARGET = """
rules:
  - name: api-log
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart"
        target: "{{ labels.deployment }}"
    limits: {cooldown: 0s, max_attempts: 100}
"""


async def test_a_valid_allowed_label_reaches_the_action(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART, dry_run=False) as h:
        await h.fire(am_alert("APIDown", namespace="prod", deployment="api"))
        [d] = await h.decisions()
        assert (d["outcome"], d["target"]) == ("executed", "test.restart prod/deploy/api")
        assert RESTART_ACTION.calls == [("run", {"namespace": "prod", "name": "api"})]


@pytest.mark.parametrize(
    ("namespace", "deployment", "reason", "param"),
    [
        ("prod/../kube-system", "api", "template_error", "namespace"),
        ("kube-system", "api", "not_allowed", "namespace"),
        ("default", "api", "not_allowed", "namespace"),
        ("prod\n", "api", "template_error", "namespace"),
        ("prod", "api\nkube-system", "template_error", "name"),
        ("prod", "a" * 300, "template_error", "name"),
        ("", "api", "template_error", "namespace"),
        ("prod", "", "template_error", "name"),
        (" prod", "api", "template_error", "namespace"),
        ("prod\x00", "api", "template_error", "namespace"),
        ("Prod", "api", "template_error", "namespace"),
        ("pr\u043ed", "api", "template_error", "namespace"),  # Cyrillic o
        ("\uff50\uff52\uff4f\uff44", "api", "template_error", "namespace"),  # fullwidth prod
        ("prod", "api\u2010v2", "template_error", "name"),  # Unicode hyphen
        ("prod", "api.kube-system", "template_error", "name"),
        ("prod", "*", "template_error", "name"),
    ],
    ids=[
        "path-traversal",
        "valid-but-not-allowed",
        "default-namespace",
        "trailing-newline",
        "newline-in-name",
        "300-characters",
        "empty-namespace",
        "empty-name",
        "leading-space",
        "nul-byte",
        "upper-case",
        "cyrillic-look-alike",
        "fullwidth-look-alike",
        "unicode-hyphen",
        "dotted-name",
        "wildcard",
    ],
)
async def test_a_label_value_outside_what_the_rule_allows_never_reaches_the_action(
    tmp_path: Path, namespace: str, deployment: str, reason: str, param: str
) -> None:
    async with Harness(tmp_path, rules=RESTART, dry_run=False) as h:
        await h.fire(am_alert("APIDown", namespace=namespace, deployment=deployment))
        [d] = await h.decisions()
        assert (d["outcome"], d["reason"]) == ("skipped", reason)
        assert f"param {param!r}" in d["detail"]
        assert d["detail"].startswith("test.restart: ")
        assert (d["target"], d["params"]) == ("", {})  # nothing half-rendered is kept
        assert RESTART_ACTION.calls == []
        assert (
            await h.metric(
                "remediator_decisions_total", rule="api-restart", outcome="skipped", reason=reason
            )
            == 1.0
        )


async def test_a_hostile_label_is_refused_in_dry_run_too(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART) as h:
        await h.fire(am_alert("APIDown", namespace="kube-system", deployment="api"))
        await h.fire(am_alert("APIDown", namespace="prod", deployment="api;rm"))
        assert await h.outcomes() == [("skipped", "not_allowed"), ("skipped", "template_error")]
        assert RESTART_ACTION.calls == []


async def test_a_missing_label_is_a_template_error_never_an_empty_string(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART, dry_run=False) as h:
        await h.fire(am_alert("APIDown", deployment="api"))  # no namespace label
        [d] = await h.decisions()
        assert (d["outcome"], d["reason"]) == ("skipped", "template_error")
        assert "label 'namespace'" in d["detail"]
        assert RESTART_ACTION.calls == []


async def test_a_missing_label_template_error_names_the_param_it_was_for(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RESTART, dry_run=False) as h:
        await h.fire(am_alert("APIDown", namespace="prod"))  # no deployment label
        [d] = await h.decisions()
        assert d["reason"] == "template_error"
        assert "label 'deployment'" in d["detail"]
        assert "param 'name'" in d["detail"]


@pytest.mark.parametrize(
    "deployment",
    [
        "api\nkube-system",
        "api\r\nx",
        "api\tx",
        pytest.param(
            "api\u2028x",
        ),
        pytest.param(
            "api\x85x",
        ),
    ],
    ids=["newline", "crlf", "tab", "line-separator", "next-line-c1"],
)
async def test_a_log_target_with_a_line_break_is_a_template_error(
    tmp_path: Path, deployment: str
) -> None:
    async with Harness(tmp_path, rules=LOG_TARGET, dry_run=False) as h:
        await h.fire(am_alert("APIDown", deployment=deployment))
        [d] = await h.decisions()
        assert (d["outcome"], d["reason"]) == ("skipped", "template_error")
        assert "param 'target'" in d["detail"]
        assert (
            await h.metric("remediator_actions_total", rule="api-log", action="log", result="ok")
            == 0.0
        )


async def test_templates_render_only_alert_values_and_a_label_is_never_rendered_again(
    tmp_path: Path,
) -> None:
    rules = """
    rules:
      - name: api-log
        matchers: ['alertname = "APIDown"']
        action:
          type: log
          params:
            message: "{{ alert.name }}/{{ alert.fingerprint }}: {{ labels.deployment }} ({{ annotations.summary }})"
    """  # noqa: E501 - one template line reads better than a folded one
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        alert = am_alert(
            "APIDown",
            fingerprint="00000000000000aa",
            annotations={"summary": "{{ labels.secret }}", "note": "x"},
            deployment="{{ annotations.note }}",
            secret="hunter2",
        )
        await h.fire(alert)
        [d] = await h.decisions()
        assert d["outcome"] == "executed"
        assert d["detail"] == (
            "APIDown/00000000000000aa: {{ annotations.note }} ({{ labels.secret }})"
        )


TEMPLATE_RULE = """\
rules:
  - name: bad-template
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart"
        target: "PLACEHOLDER"
"""
TARGET_LINE = 8


@pytest.mark.parametrize(
    "placeholder",
    [
        "{{ labels.x | upper }}",
        "{{ 1+1 }}",
        "{{ labels['x'] }}",
        "{{ alert.__class__ }}",
        "{{ alert.name.__class__ }}",
        "{{ env.HOME }}",
        "{{ settings.auth }}",
        "{{ lookup('file', '/etc/passwd') }}",
        "{{ labels.x }} }}",
    ],
)
def test_a_rule_with_an_expression_or_filter_in_a_template_fails_to_load_at_its_line(
    tmp_path: Path, placeholder: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(TEMPLATE_RULE.replace("PLACEHOLDER", placeholder.replace('"', '\\"')))
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    assert (problem.file, problem.line) == (str(path), TARGET_LINE)
    assert str(caught.value).startswith(f"{path}:{TARGET_LINE}: ")


def test_the_same_rule_with_a_plain_label_reference_loads(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent(TEMPLATE_RULE.replace("PLACEHOLDER", "{{ labels.x }}"))
    )
    [rule] = loader.load_dir(tmp_path)
    assert rule.name == "bad-template"
