"""Restricted templates for action params: `{{ labels.x }}` and friends, nothing else.

No expressions, filters or code: a template is text with placeholders naming one
value. A placeholder whose key the alert lacks is a TemplateError, never an empty
string — an empty namespace must not quietly become "all namespaces".

What a placeholder may name:
- `labels.NAME`, `annotations.NAME`, `alert.FIELD` — the alert (untrusted input);
- `rule.FIELD` — the rule (`name`, `description`, `runbook_url`);
- in `escalate` only: `decision.id`, `decision.url` (the decision that gave up, and its
  link under `external_url`), `remediation.why` and `remediation.tried` (each step tried,
  its outcome and verification, one per line), `remediation.evidence` (what the last
  step's family saw before it acted, a few lines).

Values inserted into a chat message are escaped by the param's declared escaper (Slack's
`&`, `<`, `>`), so a label can neither mention `@channel` nor inject a link; the rule's
own literal text is left as written.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from remediator import errors, models
from remediator.models.alert import Alert, iso

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_REF = re.compile(
    r"^\s*(labels|annotations|alert|rule|decision|remediation)\.([a-zA-Z_][a-zA-Z0-9_]*)\s*$"
)
ALERT_FIELDS = ("name", "fingerprint", "source", "status", "starts_at", "generator_url")
RULE_FIELDS = ("name", "description", "runbook_url")
ESCALATION_FIELDS = {"decision": ("id", "url"), "remediation": ("why", "tried", "evidence")}
"""Known only once a remediation gave up: usable in `escalate` params alone."""
_FIELDS = {"alert": ALERT_FIELDS, "rule": RULE_FIELDS, **ESCALATION_FIELDS}
Escape = Callable[[str], str]


@models.value
class Scope:
    """What a template is rendered against: the alert, and the values beside it."""

    alert: Alert
    values: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    """`rule`, and for an escalation `decision` and `remediation`: field → text."""


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal parts and references, alternating."""

    source: str
    parts: tuple[str | tuple[str, str], ...]

    @property
    def is_literal(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def render_literal(self) -> str:
        """The text of a template without placeholders."""
        return "".join(p for p in self.parts if isinstance(p, str))

    def render(self, scope: Scope, escape: Escape | None = None) -> str:
        """The text, each placeholder's value passed through `escape` when given."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = _lookup(scope, *part)
            out.append(escape(value) if escape is not None else value)
        return "".join(out)

    @property
    def escalation_only(self) -> bool:
        """It names a value that exists only in an escalation (`decision`, `remediation`)."""
        return any(isinstance(p, tuple) and p[0] in ESCALATION_FIELDS for p in self.parts)


def parse(text: str) -> Template:
    """Parse a template; ValueError names the bad placeholder and what is allowed."""
    parts: list[str | tuple[str, str]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        ref = _REF.match(m.group(1))
        if ref is None:
            raise ValueError(
                f"template placeholder {m.group(0)!r} is not allowed: use "
                "{{ labels.NAME }}, {{ annotations.NAME }}, {{ alert.FIELD }} "
                f"(FIELD one of {', '.join(ALERT_FIELDS)}) or {{{{ rule.name }}}}"
            )
        scope, key = ref.group(1), ref.group(2)
        fields = _FIELDS.get(scope)
        if fields is not None and key not in fields:
            raise ValueError(
                f"unknown {scope} field {key!r} in {m.group(0)!r}; one of {', '.join(fields)}"
            )
        parts.append((scope, key))
        pos = m.end()
    rest = text[pos:]
    if "{{" in rest or "}}" in rest:
        raise ValueError(f"unbalanced template braces in {text!r}")
    if rest:
        parts.append(rest)
    return Template(text, tuple(parts))


def render_params(
    params: Mapping[str, Any], scope: Scope, escapes: Mapping[str, Escape] | None = None
) -> dict[str, Any]:
    """Render every string (recursively) of a params mapping against one scope.

    `escapes` names the params whose inserted values are escaped (chat texts). A
    TemplateError names the param whose template failed.
    """
    out = {}
    for k, v in params.items():
        try:
            out[k] = _render_value(v, scope, (escapes or {}).get(k))
        except errors.TemplateError as exc:
            raise errors.TemplateError(f"param {k!r}: {exc}") from exc
    return out


def _render_value(value: Any, scope: Scope, escape: Escape | None) -> Any:
    if isinstance(value, Template):
        return value.render(scope, escape)
    if isinstance(value, Mapping):
        return {k: _render_value(v, scope, escape) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_value(v, scope, escape) for v in value]
    return value


def compile_params(params: Mapping[str, Any], *, escalation: bool = False) -> dict[str, Any]:
    """Parse every string in a params mapping into a Template (done once, at load).

    Outside an escalation (`escalation=False`) a placeholder naming `decision` or
    `remediation` is a ValueError: those exist only once a remediation gave up.
    """
    compiled = {k: _compile_value(v) for k, v in params.items()}
    if not escalation:
        for text in _templates(compiled):
            if text.escalation_only:
                raise ValueError(
                    f"template {text.source!r}: decision.* and remediation.* exist only in "
                    "`escalate` params (once a remediation gave up)"
                )
    return compiled


def _templates(value: Any) -> list[Template]:
    if isinstance(value, Template):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _templates(v)]
    if isinstance(value, list):
        return [t for v in value for t in _templates(v)]
    return []


def _compile_value(value: Any) -> Any:
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, Mapping):
        return {k: _compile_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compile_value(v) for v in value]
    return value


def _lookup(scope: Scope, name: str, key: str) -> str:
    alert = scope.alert
    if name == "alert":
        if key == "starts_at":
            return iso(alert.starts_at)
        value = getattr(alert, key)
        return str(value)
    if name in ("labels", "annotations"):
        source = alert.labels if name == "labels" else alert.annotations
        if key not in source:
            raise errors.TemplateError(f"alert has no {name[:-1]} {key!r} ({{{{ {name}.{key} }}}})")
        return source[key]
    found = scope.values.get(name, {}).get(key)
    if found is None:
        raise errors.TemplateError(f"{{{{ {name}.{key} }}}} is not known here")
    return found


def slack_escape(text: str) -> str:
    """Slack's mrkdwn escaping: `&`, `<`, `>` (no mention, link or channel can be formed)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
