"""Rule files → validated Rules, with every error as `file:line: message`.

All files of a directory are checked and all errors reported together, so
`remediator check` shows everything to fix in one pass. Loading is all-or-nothing:
a reload with any error keeps the rules already loaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from remediator import durations, errors
from remediator.actions import registry
from remediator.matching import matchers, templates
from remediator.matching.matchers import Matcher
from remediator.models.rule import ActionSpec, Approval, CircuitBreaker, Limits, Rule, Step

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_RULE_KEYS = {
    "name", "description", "runbook_url", "source", "matchers", "for", "action", "steps",
    "limits", "verify", "circuit_breaker", "escalate", "silence_while_remediating", "dry_run",
    "approval", "evidence",
}  # fmt: skip
_APPROVER = re.compile(r"[UWS][A-Z0-9]{2,20}|[a-z0-9][a-z0-9_.-]{0,62}")
"""A Slack user (U…/W…) or user-group (S…) id, or an API approver's name."""
MAX_STEPS = 10
"""Steps in one ladder: a longer one is a runbook, not a remediation."""
MAX_FILE_BYTES = 4 << 20


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]


class _Seq(list[Any]):
    """A YAML list that remembers the line of each item (1-based)."""

    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    m = _Map()
    m.line = node.start_mark.line + 1
    m.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping key {key!r} is not a string", key_node.start_mark
            )
        if key in m:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        m[key] = loader.construct_object(value_node, deep=True)
        m.key_lines[key] = key_node.start_mark.line + 1
    return m


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    seq = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    seq.item_lines = [child.start_mark.line + 1 for child in node.value]
    return seq


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def parse_with_lines(text: str) -> Any:
    """YAML whose mappings and lists remember their lines (`key_line` reads them)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def key_line(doc: Any, path: str) -> int:
    """The line of a dotted key (`postgres.connections.main.dsn_env`, `blackouts[1].name`)
    in a document from `parse_with_lines`; the deepest line found, 0 for none."""
    line, node = 0, doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("[") and isinstance(node, _Seq):
            i = int(part[1:-1])
            if i >= len(node):
                break
            line, node = node.item_lines[i], node[i]
        elif isinstance(node, _Map) and part in node:
            line, node = node.key_lines[part], node[part]
        else:
            break
    return line


def config_error(path: Path | None, exc: errors.ConfigError) -> str:
    """A config error as `file:line: key: message` (the line of the key, where the file
    has it; 0 where it does not)."""
    if path is None:
        return f"config: {exc}"
    if exc.path == str(path):  # the file as a whole (unreadable, not YAML): no key to find
        return f"{path}:0: {exc.message}"
    try:
        line = key_line(parse_with_lines(path.read_text(encoding="utf-8")), exc.path)
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        line = 0
    return f"{path}:{line}: {exc}"


def rule_files(directory: Path) -> list[Path]:
    """The rule files of a directory, sorted, so load order (and index order) is stable.

    Hidden paths are skipped: a Kubernetes ConfigMap mount holds every file twice (the
    visible link and `..<timestamp>/file` behind `..data`), and editors leave `.swp`
    files. A file reached twice through links counts once.
    """
    candidates: list[Path] = []
    # Hidden folders are not entered, and one that vanishes mid-walk is passed over
    # (os.walk ignores what it cannot list): kubelet deletes the old `..<timestamp>`
    # folder right after swapping `..data`, and a walk into it raised FileNotFoundError.
    for root, folders, names in os.walk(directory):
        folders[:] = [f for f in folders if not f.startswith(".")]
        candidates += [Path(root, n) for n in names if not n.startswith(".")]
    found: dict[Path, Path] = {}
    for p in sorted(candidates):
        if p.suffix in (".yaml", ".yml") and p.is_file():
            found.setdefault(p.resolve(), p)
    return sorted(found.values())


def load_dir(
    directory: Path,
    *,
    syntax: matchers.Syntax = matchers.Syntax.FALLBACK,
    warnings: list[errors.RuleFileError] | None = None,
) -> list[Rule]:
    """Load and validate every rule file under a directory; raises RuleFileErrors.

    `syntax` is how matcher strings are read (config `matchers_syntax`); `warnings`, when
    given, collects what the user should fix although it loads (see `_matchers`).
    """
    if not directory.is_dir():
        raise errors.RuleFileErrors(
            [errors.RuleFileError(str(directory), 0, "rules directory does not exist")]
        )
    problems: list[errors.RuleFileError] = []
    rules: list[Rule] = []
    for path in rule_files(directory):
        file_rules, file_problems = load_file(path, syntax=syntax, warnings=warnings)
        rules.extend(file_rules)
        problems.extend(file_problems)
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.name in seen:
            first = seen[rule.name]
            problems.append(
                errors.RuleFileError(
                    rule.file,
                    rule.line,
                    f"duplicate rule name {rule.name!r} (first at {first.file}:{first.line})",
                )
            )
        seen[rule.name] = rule
    if problems:
        raise errors.RuleFileErrors(problems)
    return rules


def load_file(
    path: Path,
    *,
    syntax: matchers.Syntax = matchers.Syntax.FALLBACK,
    warnings: list[errors.RuleFileError] | None = None,
) -> tuple[list[Rule], list[errors.RuleFileError]]:
    """Rules of one file and the errors found in it (a bad rule does not hide others)."""
    reading = _Reading(syntax, [] if warnings is None else warnings)
    name = str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return [], [errors.RuleFileError(name, 0, f"larger than {MAX_FILE_BYTES} bytes")]
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [], [errors.RuleFileError(name, 0, "not UTF-8 text")]
    except OSError as exc:
        return [], [errors.RuleFileError(name, 0, f"cannot read: {exc.strerror}")]
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        return [], [errors.RuleFileError(name, line, f"invalid YAML: {exc.problem}")]
    except yaml.YAMLError as exc:
        return [], [errors.RuleFileError(name, 0, f"invalid YAML: {exc}")]
    except RecursionError:  # PyYAML recurses once per level of nesting
        return [], [errors.RuleFileError(name, 0, "invalid YAML: nested too deeply")]
    if doc is None:
        return [], []
    if not isinstance(doc, _Map) or "rules" not in doc:
        return [], [errors.RuleFileError(name, 1, "expected a mapping with a `rules:` list")]
    extra = sorted(set(doc) - {"rules"})
    if extra:
        return [], [
            errors.RuleFileError(name, doc.key_lines[extra[0]], f"unknown key {extra[0]!r}")
        ]
    items = doc["rules"]
    if not isinstance(items, list):
        return [], [errors.RuleFileError(name, doc.key_lines["rules"], "`rules` must be a list")]
    rules, problems = [], []
    for item in items:
        try:
            rules.append(_rule(name, item, doc.key_lines["rules"], reading))
        except errors.RuleFileError as exc:
            problems.append(exc)
    return rules, problems


def _rule(file: str, item: Any, list_line: int, reading: _Reading) -> Rule:
    if not isinstance(item, _Map):
        raise errors.RuleFileError(file, list_line, "each rule must be a mapping")
    at = _At(file, item)
    unknown = sorted(set(item) - _RULE_KEYS)
    if unknown:
        raise at.error(
            unknown[0], f"unknown key {unknown[0]!r}; known: {', '.join(sorted(_RULE_KEYS))}"
        )
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise at.error("name", f"rule name must match [a-z0-9-]+ (at most 63), got {name!r}")
    source = item.get("source", "any")
    if source not in ("alertmanager", "sns", "any"):
        raise at.error("source", f"source must be alertmanager, sns or any, got {source!r}")
    ms = _matchers(at, item.get("matchers"), reading)
    limits_map = _sub(
        at,
        item,
        "limits",
        {"cooldown", "max_attempts", "window", "max_actions", "retry_while_firing"},
    )
    lat = _At(file, limits_map)
    limits = Limits(
        cooldown=_duration(lat, "cooldown", 900.0),
        max_attempts=_int(lat, "max_attempts", 3, lo=1, hi=1_000_000) or 3,
        window=_duration(lat, "window", 3600.0),
        max_actions=_int(lat, "max_actions", None, lo=1, hi=1_000_000),
        retry_while_firing=_bool(lat, "retry_while_firing", False),
    )
    if limits.window <= 0:
        raise lat.error("window", "window must be longer than 0s")
    resolve_within = _resolve_within(at, item, 900.0)
    steps = _steps(at, item, resolve_within)
    for i, step in enumerate(steps[:-1]):
        if step.resolve_within is None:
            raise at.error(
                "steps", f"steps[{i}] has verify.resolve_within: never, so the steps after it "
                "would never run: give it a time",
            )  # fmt: skip
    if limits.retry_while_firing and steps[-1].resolve_within is None:
        raise lat.error(
            "retry_while_firing", "retry_while_firing needs a verification "
            "(verify.resolve_within is never): nothing would say the attempt did not help",
        )  # fmt: skip
    if len(steps) > 1 and limits.retry_while_firing:
        raise lat.error(
            "retry_while_firing",
            "a ladder (`steps:`) steps up instead of retrying: list a step twice to repeat it, "
            "or drop limits.retry_while_firing",
        )
    escalate = _action(at, "escalate", item.get("escalate"), required=False)
    cb_map = _sub(at, item, "circuit_breaker", {"open_after", "reset_after"})
    cat = _At(file, cb_map)
    cb = CircuitBreaker(
        open_after=_int(cat, "open_after", 3, lo=1, hi=1000) or 3,
        reset_after=_duration(cat, "reset_after", 3600.0),
    )
    swr = item.get("silence_while_remediating")
    return Rule(
        name=name,
        matchers=tuple(ms),
        steps=steps,
        description=_str(at, "description"),
        runbook_url=_str(at, "runbook_url"),
        source=source,
        for_=_duration(at, "for", 0.0),
        limits=limits,
        circuit_breaker=cb,
        escalate=escalate,
        silence_while_remediating=None
        if swr is None
        else _duration(at, "silence_while_remediating", 0.0),
        approval=_approval(at, item),
        evidence=_bool(at, "evidence", True),
        dry_run=_bool(at, "dry_run", False),
        file=file,
        line=item.line,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Reading:
    """How matcher strings are read, and where warnings about them go."""

    syntax: matchers.Syntax
    warnings: list[errors.RuleFileError]


def _matchers(at: _At, raw: Any, reading: _Reading) -> tuple[Matcher, ...]:
    """Every matcher of every string of `matchers:` (one string may hold several, as in
    Alertmanager: `{severity!="info", alertname="DiskFull"}`), all of which must match."""
    if not isinstance(raw, list) or not raw:
        raise at.error("matchers", "matchers must be a non-empty list")
    out: list[Matcher] = []
    for i, text in enumerate(raw):
        line = raw.item_lines[i] if isinstance(raw, _Seq) else at.line("matchers")
        if not isinstance(text, str):
            raise errors.RuleFileError(
                at.file, line, f"matcher must be a string like 'alertname = \"X\"', got {text!r}"
            )
        try:
            parsed = matchers.parse_matchers(text, reading.syntax)
        except ValueError as exc:
            raise errors.RuleFileError(at.file, line, str(exc)) from exc
        if parsed.warning is not None:
            reading.warnings.append(errors.RuleFileError(at.file, line, parsed.warning))
        out.extend(parsed.matchers)
    if not out:
        raise at.error(
            "matchers", "matchers hold no matcher (only empty strings or `{}`): the rule "
            "would match every alert; name at least one label",
        )  # fmt: skip
    return tuple(out)


def _approval(at: _At, item: _Map) -> Approval | None:
    if item.get("approval") is None:
        return None
    m = _sub(at, item, "approval", {"approvers", "timeout", "channel"})
    aat = _At(at.file, m)
    raw = m.get("approvers")
    if not isinstance(raw, list) or not raw:
        raise aat.error("approvers", "approval.approvers must be a non-empty list of Slack "
                        "user or user-group ids (U…, S…) or API approver names")  # fmt: skip
    for i, a in enumerate(raw):
        if not isinstance(a, str) or not _APPROVER.fullmatch(a):
            line = raw.item_lines[i] if isinstance(raw, _Seq) else aat.line("approvers")
            raise errors.RuleFileError(
                at.file, line, f"approver {a!r} is not a Slack id (U…, W…, S…) or a name"
            )
    timeout = _duration(aat, "timeout", 900.0)
    if not 0 < timeout <= 86400:
        raise aat.error("timeout", "approval.timeout must be longer than 0s and at most 24h")
    channel = _str(aat, "channel")
    return Approval(approvers=tuple(raw), timeout=timeout, channel=channel)


def _resolve_within(at: _At, item: _Map, default: float | None) -> float | None:
    """`verify.resolve_within` of a rule or a step: seconds, or None for `never`."""
    verify_map = _sub(at, item, "verify", {"resolve_within"})
    if verify_map.get("resolve_within") is None:
        return default
    if verify_map.get("resolve_within") == "never":
        return None
    vat = _At(at.file, verify_map)
    seconds = _duration(vat, "resolve_within", 900.0)
    if seconds <= 0:
        raise vat.error(
            "resolve_within", "resolve_within must be longer than 0s (or `never`): "
            "0s would count every attempt as ineffective",
        )  # fmt: skip
    return seconds


def _steps(at: _At, item: _Map, resolve_within: float | None) -> tuple[Step, ...]:
    """`action:` (a ladder of one) or `steps:` — exactly one of them."""
    if "action" in item and "steps" in item:
        raise at.error("steps", "a rule has either `action` or `steps`, not both")
    if "steps" not in item:
        action = _action(at, "action", item.get("action"), required=True)
        assert action is not None  # required=True never returns None
        return (Step(action, resolve_within),)
    raw = item["steps"]
    if not isinstance(raw, list) or not raw:
        raise at.error("steps", "`steps` must be a non-empty list of {action, verify}")
    if len(raw) > MAX_STEPS:
        raise at.error("steps", f"at most {MAX_STEPS} steps, got {len(raw)}")
    out = []
    for i, step in enumerate(raw):
        line = raw.item_lines[i] if isinstance(raw, _Seq) else at.line("steps")
        if not isinstance(step, _Map):
            raise errors.RuleFileError(at.file, line, f"steps[{i}] must be a mapping")
        sat = _At(at.file, step)
        unknown = sorted(set(step) - {"action", "verify"})
        if unknown:
            raise sat.error(
                unknown[0], f"unknown key steps[{i}].{unknown[0]}; known: action, verify"
            )
        action = _action(sat, "action", step.get("action"), required=True)
        assert action is not None  # required=True never returns None
        out.append(Step(action, _resolve_within(sat, step, resolve_within)))
    return tuple(out)


class _At:
    """Errors located at a key of a mapping (its value's line), else at the mapping."""

    def __init__(self, file: str, mapping: _Map) -> None:
        self.file = file
        self.mapping = mapping

    def line(self, key: str) -> int:
        return self.mapping.key_lines.get(key, self.mapping.line)

    def error(self, key: str, message: str) -> errors.RuleFileError:
        return errors.RuleFileError(self.file, self.line(key), message)


def _sub(at: _At, item: _Map, key: str, allowed: set[str]) -> _Map:
    value = item.get(key)
    if value is None:
        m = _Map()
        m.line = at.line(key)
        m.key_lines = {}
        return m
    if not isinstance(value, _Map):
        raise at.error(key, f"`{key}` must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _At(at.file, value).error(
            unknown[0], f"unknown key {key}.{unknown[0]}; known: {', '.join(sorted(allowed))}"
        )
    return value


def _action(at: _At, key: str, value: Any, *, required: bool) -> ActionSpec | None:
    if value is None:
        if required:
            raise at.error(key, f"`{key}` is required")
        return None
    if not isinstance(value, _Map):
        raise at.error(key, f"`{key}` must be a mapping with `type` and `params`")
    aat = _At(at.file, value)
    unknown = sorted(set(value) - {"type", "params"})
    if unknown:
        raise aat.error(unknown[0], f"unknown key {key}.{unknown[0]}; known: params, type")
    type_ = value.get("type")
    action = registry.get(type_) if isinstance(type_, str) else None
    if action is None:
        raise aat.error(
            "type", f"unknown action type {type_!r}; known: {', '.join(registry.names())}"
        )
    raw = value.get("params") or {}
    if not isinstance(raw, dict):
        raise aat.error("params", f"`{key}.params` must be a mapping")
    pat = _At(at.file, raw) if isinstance(raw, _Map) else aat
    try:
        compiled = templates.compile_params(raw, escalation=key == "escalate")
    except ValueError as exc:
        bad = _first_bad_template(raw, escalation=key == "escalate")
        raise pat.error(bad or "params", str(exc)) from exc
    try:
        action.schema.check_static(compiled)
    except errors.ParamError as exc:
        raise pat.error(exc.field, f"{type_}: {exc}") from exc
    assert isinstance(type_, str)  # registry.get found an action for it above
    return ActionSpec(type=type_, params=compiled, line=value.line)


def _first_bad_template(raw: dict[str, Any], *, escalation: bool) -> str | None:
    for k, v in raw.items():
        for text in _strings(v):
            try:
                if templates.parse(text).escalation_only and not escalation:
                    return k
            except ValueError:
                return k
    return None


def _strings(v: Any) -> Iterator[str]:
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)


def _duration(at: _At, key: str, default: float) -> float:
    v = at.mapping.get(key)
    if v is None:
        return default
    try:
        return durations.parse(v)
    except ValueError as exc:
        raise at.error(key, f"{key}: {exc}") from exc


def _int(at: _At, key: str, default: int | None, *, lo: int, hi: int) -> int | None:
    v = at.mapping.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise at.error(key, f"{key} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _bool(at: _At, key: str, default: bool) -> bool:
    v = at.mapping.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise at.error(key, f"{key} must be true or false, got {v!r}")
    return v


def _str(at: _At, key: str) -> str:
    v = at.mapping.get(key, "")
    if not isinstance(v, str):
        raise at.error(key, f"{key} must be a string")
    return v
