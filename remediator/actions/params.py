"""Declared action params: each action lists its fields; values are checked twice.

At load time every literal value is checked (a typo fails `remediator check`); at run
time every rendered value is checked again, because label values are untrusted input
and must never steer an action outside what the rule and config allow.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from remediator import durations, errors

Validator = Callable[[str, Any], Any]
"""(field, value) → cleaned value; raises errors.ParamError."""

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# C0 and C1 controls (but tab and newline), and the Unicode line/paragraph separators and
# bidirectional overrides that can fake a line break or reorder text in logs and chat.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    check: Validator
    required: bool = True
    default: Any = None
    doc: str = ""
    escape: Callable[[str], str] | None = None
    """Applied to each value a template inserts (not to the rule's literal text): chat
    messages escape label values so they cannot mention, link or format."""
    chosen: str = "a bound"
    """For a param in the schema's `literal` set: what a label would choose if it could
    be rendered, as the load-time error says it (`a label must never choose <chosen>`)."""


class _Templated:
    def __repr__(self) -> str:
        return "TEMPLATED"


TEMPLATED: Any = _Templated()
"""What `Schema.across` sees at load time for a param set by a template (unknown yet)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    fields: Mapping[str, Field]
    literal: frozenset[str] = frozenset()
    """Params that must be written in the rule, never rendered from a template: bounds
    (a label must never choose how far an action may go) and the names of environment
    variables read (a label must never choose which of the daemon's secrets is sent).
    A template there is a rule-load error (`file:line`); each field's `chosen` says why."""
    across: Callable[[Mapping[str, Any]], None] | None = None
    """A check across params (exactly one of `step`/`to`, min <= max), raising
    ParamError. It gets the params given in the rule, validated; at load time those set
    by a template are `TEMPLATED`. It runs at load time and again after rendering."""

    escapes: Mapping[str, Callable[[str], str]] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    """Params whose inserted values are escaped, and how (made once: asked per render)."""

    def __post_init__(self) -> None:
        escapes = {name: f.escape for name, f in self.fields.items() if f.escape is not None}
        object.__setattr__(self, "escapes", escapes)

    def check_static(self, params: Mapping[str, Any]) -> None:
        """Load-time check: keys known, required present, literal values valid."""
        from remediator.matching.templates import Template  # noqa: PLC0415 - avoids a cycle

        unknown = sorted(set(params) - set(self.fields))
        if unknown:
            raise errors.ParamError(
                unknown[0], f"unknown parameter; known: {', '.join(sorted(self.fields))}"
            )
        known: dict[str, Any] = {}
        for name, f in self.fields.items():
            if name not in params:
                if f.required:
                    raise errors.ParamError(name, "is required")
                continue
            value = params[name]
            if isinstance(value, Template):
                if not value.is_literal:
                    if name in self.literal:
                        raise errors.ParamError(
                            name,
                            "must be written in the rule, not a template: "
                            f"a label must never choose {f.chosen}",
                        )
                    known[name] = TEMPLATED
                    continue
                value = value.render_literal()
            known[name] = f.check(name, value)
        if self.across is not None:
            self.across(known)

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run-time check of rendered params; returns cleaned values with defaults."""
        out: dict[str, Any] = {}
        for name, f in self.fields.items():
            if name in params:
                out[name] = f.check(name, params[name])
            elif f.required:
                raise errors.ParamError(name, "is required")
            elif f.default is not None:
                out[name] = f.default
        if self.across is not None:
            self.across({name: out[name] for name in params if name in out})
        return out


def text(*, max_len: int = 2000, multiline: bool = True) -> Validator:
    """Free text: bounded length, no control characters (newlines only if multiline)."""

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str):
            raise errors.ParamError(field, f"expected text, got {type(value).__name__}")
        if len(value) > max_len:
            raise errors.ParamError(field, f"longer than {max_len} characters")
        if _CONTROL.search(value) or (not multiline and ("\n" in value or "\t" in value)):
            raise errors.ParamError(field, "contains control characters")
        return value

    return check


def dns_label() -> Validator:
    """A Kubernetes DNS-1123 label: namespaces, most object names (≤ 63, [a-z0-9-])."""

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not _DNS1123_LABEL.fullmatch(value):
            raise errors.ParamError(
                field, f"{_show(value)} is not a DNS-1123 label ([a-z0-9-], at most 63)"
            )
        return value

    return check


def dns_subdomain() -> Validator:
    """A Kubernetes DNS-1123 subdomain (≤ 253, labels joined by dots)."""

    def check(field: str, value: Any) -> str:
        if (
            not isinstance(value, str)
            or len(value) > 253
            or not _DNS1123_SUBDOMAIN.fullmatch(value)
        ):
            raise errors.ParamError(field, f"{_show(value)} is not a DNS-1123 subdomain")
        return value

    return check


def matching(pattern: re.Pattern[str], *, is_not: str) -> Validator:
    """Text that fully matches `pattern`; otherwise `<value> is not <is_not>`."""

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise errors.ParamError(field, f"{_show(value)} is not {is_not}")
        return value

    return check


def env_name() -> Validator:
    """The name of an environment variable (secrets come from the environment). A param
    holding one belongs in the schema's `literal` set, with `chosen=ENV_CHOSEN`: rendered
    from a label, it could send any variable of the daemon (a secret) where it posts."""

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
            raise errors.ParamError(field, f"{_show(value)} is not an environment variable name")
        return value

    return check


ENV_CHOSEN = "which environment variable is read (it could send any secret of the daemon)"
"""`Field.chosen` of a param naming an environment variable."""


def integer(*, lo: int, hi: int) -> Validator:
    """An integer in [lo, hi]; rendered text like "3" is accepted, "3.5" is not."""

    def check(field: str, value: Any) -> int:
        if isinstance(value, bool):
            raise errors.ParamError(field, "expected an integer, got a boolean")
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,12}", value.strip()):
            value = int(value)
        if not isinstance(value, int):
            raise errors.ParamError(field, f"expected an integer, got {_show(value)}")
        if not lo <= value <= hi:
            raise errors.ParamError(field, f"{value} is outside {lo}..{hi}")
        return value

    return check


def duration(*, lo: float = 0.0, hi: float = 86400.0) -> Validator:
    def check(field: str, value: Any) -> float:
        try:
            seconds = durations.parse(value)
        except ValueError as exc:
            raise errors.ParamError(field, str(exc)) from exc
        if not lo <= seconds <= hi:
            raise errors.ParamError(field, f"{value} is outside {lo}s..{hi}s")
        return seconds

    return check


def choice(*options: str) -> Validator:
    def check(field: str, value: Any) -> str:
        if value not in options:
            raise errors.ParamError(field, f"{_show(value)} is not one of {', '.join(options)}")
        return str(value)

    return check


def _show(value: Any) -> str:
    """A value for an error message: quoted, and cut so a 10 kB label stays readable."""
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def bound(*, lo: int, hi: int) -> Validator:
    """A limit of a capacity change (`max_replicas: 10`), written in the rule as a number.

    Templates render to text, so text is refused: a label can never move a bound.
    """

    def check(field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.ParamError(
                field, f"is a bound: write it in the rule as a number, got {_show(value)}"
            )
        if not lo <= value <= hi:
            raise errors.ParamError(field, f"{value} is outside {lo}..{hi}")
        return value

    return check


def flag() -> Validator:
    """`true` or `false` written in the rule; text (so any template) is refused."""

    def check(field: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise errors.ParamError(
                field, f"write true or false in the rule (not text), got {_show(value)}"
            )
        return value

    return check


def plan(current: int, values: Mapping[str, Any], lo: int, hi: int) -> tuple[int, str]:
    """The new value for a change (`values` holds `step` or `to`) within [lo, hi];
    (current, why) when nothing changes.

    A change never goes the other way from what was asked: a step up from above the
    upper bound (a person scaled further by hand) leaves the value alone. A step never
    moves further than its size: a step down from above the upper bound moves down by
    the step, not in one jump to the bound (20 tasks, bounds 1..6, step -1: 19, not 6 —
    the rule allows one task less, not fourteen), as `kubernetes.scale` does.
    """
    if "to" in values:
        want = values["to"]
        new = min(max(want, lo), hi)
    else:
        want = current + values["step"]
        new = max(current, min(want, hi)) if want > current else min(current, max(want, lo))
    if want == current:
        return current, f"it is already {current}"
    if (want - current) * (new - current) <= 0:
        if want > current:
            return current, f"{current} is already at or above the upper bound {hi}"
        return current, f"{current} is already at or below the lower bound {lo}"
    return new, ""
