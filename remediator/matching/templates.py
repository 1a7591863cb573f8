"""Restricted templates for action params: `{{ labels.x }}` and friends, nothing else.

No expressions, filters or code: a template is text with placeholders naming one
value of the alert. A placeholder whose key the alert lacks is a TemplateError, never
an empty string — an empty namespace must not quietly become "all namespaces".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from remediator import errors
from remediator.models.alert import Alert, iso

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_REF = re.compile(r"^\s*(labels|annotations|alert)\.([a-zA-Z_][a-zA-Z0-9_]*)\s*$")
ALERT_FIELDS = ("name", "fingerprint", "source", "status", "starts_at", "generator_url")


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

    def render(self, alert: Alert) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            scope, key = part
            out.append(_lookup(alert, scope, key))
        return "".join(out)


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
                "{{ labels.NAME }}, {{ annotations.NAME }} or {{ alert.FIELD }} "
                f"(FIELD one of {', '.join(ALERT_FIELDS)})"
            )
        scope, key = ref.group(1), ref.group(2)
        if scope == "alert" and key not in ALERT_FIELDS:
            raise ValueError(
                f"unknown alert field {key!r} in {m.group(0)!r}; one of {', '.join(ALERT_FIELDS)}"
            )
        parts.append((scope, key))
        pos = m.end()
    rest = text[pos:]
    if "{{" in rest or "}}" in rest:
        raise ValueError(f"unbalanced template braces in {text!r}")
    if rest:
        parts.append(rest)
    return Template(text, tuple(parts))


def render_params(params: Mapping[str, Any], alert: Alert) -> dict[str, Any]:
    """Render every string (recursively) of a params mapping against one alert.

    A TemplateError names the param whose template failed.
    """
    out = {}
    for k, v in params.items():
        try:
            out[k] = _render_value(v, alert)
        except errors.TemplateError as exc:
            raise errors.TemplateError(f"param {k!r}: {exc}") from exc
    return out


def _render_value(value: Any, alert: Alert) -> Any:
    if isinstance(value, Template):
        return value.render(alert)
    if isinstance(value, Mapping):
        return {k: _render_value(v, alert) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_value(v, alert) for v in value]
    return value


def compile_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parse every string in a params mapping into a Template (done once, at load)."""
    return {k: _compile_value(v) for k, v in params.items()}


def _compile_value(value: Any) -> Any:
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, Mapping):
        return {k: _compile_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compile_value(v) for v in value]
    return value


def _lookup(alert: Alert, scope: str, key: str) -> str:
    if scope == "alert":
        if key == "starts_at":
            return iso(alert.starts_at)
        value = getattr(alert, key)
        return str(value)
    source = alert.labels if scope == "labels" else alert.annotations
    if key not in source:
        raise errors.TemplateError(f"alert has no {scope[:-1]} {key!r} ({{{{ {scope}.{key} }}}})")
    return source[key]
