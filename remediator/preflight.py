"""What can be checked without the target systems: `remediator check --config`, and the
warnings the daemon logs at start.

- Allow-lists against what a rule fixes: every action (each step and the escalation) is
  rendered with the labels the rule's own equality matchers fix and its literal params,
  then validated and checked against the config's allow-lists, as at run time. A param
  that depends on a label the rule does not fix is only known at run time.
- Environment variables: every `*_env` a rule's params or the config name. Unset for a
  configured action family (a DSN, a token the family needs) is an error; otherwise a
  warning (an escalation that would fail, an auth token left open).
- Rules that act and have no `escalate`: when the fix does not take, nobody is called.
- At start: listening beyond loopback with no webhook auth, no admin token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

from remediator import errors
from remediator.actions import registry
from remediator.engine.executing import scope
from remediator.matching import templates
from remediator.matching.matchers import Op
from remediator.models.alert import Alert
from remediator.models.rule import ActionSpec, Rule
from remediator.settings import MIN_SECRET, Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    level: Literal["error", "warning"]
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        prefix = "" if self.level == "error" else "warning: "
        return f"{self.file}:{self.line}: {prefix}{self.message}"


def rules(rules: Sequence[Rule], settings: Settings, environ: Mapping[str, str]) -> list[Problem]:
    """Allow-list and environment problems of loaded rules under these settings."""
    out: list[Problem] = []
    for rule in rules:
        for where, spec in _actions(rule):
            out.extend(_action(rule, where, spec, settings, environ))
        if rule.escalate is None and not all(_tells(s.action.type) for s in rule.steps):
            out.append(
                Problem("warning", rule.file, rule.line,
                        f"rule {rule.name} has no escalate: when its fix does not take (or "
                        "is refused for good), nobody is called — only an escalation_due "
                        "log line")
            )  # fmt: skip
    return out


def config(settings: Settings, *, lines: Mapping[str, int]) -> list[Problem]:
    """Environment variables the config names and that are unset. `lines` maps dotted
    config keys to their line in the file (see matching.loader.key_line)."""
    file = str(settings.config_file or "config")
    out = []
    for ref in settings.env_refs:
        if ref.set:
            continue
        family = ref.path.split(".", 1)[0] in settings.sections
        if family:
            out.append(
                Problem("error", file, lines.get(ref.path, 0),
                        f"{ref.path}: ${ref.name} is not set (the {ref.path.split('.')[0]} "
                        "family needs it)")
            )  # fmt: skip
        elif ref.named:
            out.append(
                Problem("warning", file, lines.get(ref.path, 0),
                        f"{ref.path}: ${ref.name} is not set")
            )  # fmt: skip
    return out


def blackouts(
    settings: Settings, rules: Sequence[Rule], *, lines: Mapping[str, int] | None = None
) -> list[Problem]:
    """A blackout's `rules:` entry that names no loaded rule: a typo in a freeze holds
    back nothing, and the rule meant acts through it."""
    file = str(settings.config_file or "config")
    names = {rule.name for rule in rules}
    out = []
    for i, b in enumerate(settings.blackouts):
        for j, name in enumerate(b.rules):
            if name not in names:
                path = f"blackouts[{i}].rules[{j}]"
                out.append(
                    Problem("warning", file, (lines or {}).get(path, 0),
                            f"{path}: no rule is named {name!r}: blackout {b.name!r} "
                            "holds back nothing of it")
                )  # fmt: skip
    return out


def at_start(
    settings: Settings, loaded: Sequence[Rule], environ: Mapping[str, str]
) -> list[Problem]:
    """What the daemon warns about when it starts (never fatal)."""
    file = str(settings.config_file or "config")
    out = []
    auth = settings.auth
    if not _loopback(settings.listen_host) and (
        auth.webhook_bearer_token is None and auth.webhook_basic_user is None
    ):
        out.append(
            Problem("warning", file, 0,
                    f"listening on {settings.listen_host} with no webhook auth: anyone who "
                    "reaches the port can post alerts (set REMEDIATOR_WEBHOOK_TOKEN)")
        )  # fmt: skip
    if auth.admin_token is None:
        out.append(
            Problem("warning", file, 0,
                    "no admin token (REMEDIATOR_ADMIN_TOKEN): pause, resume and reload are "
                    "refused over HTTP (SIGHUP still reloads)")
        )  # fmt: skip
    for ref in settings.env_refs:
        if ref.weak:
            out.append(
                Problem("warning", file, 0,
                        f"{ref.path}: ${ref.name} is shorter than {MIN_SECRET} characters: "
                        "guessable, and not redacted from answers")
            )  # fmt: skip
    out.extend(p for p in rules(loaded, settings, environ) if p.level == "warning")
    out.extend(blackouts(settings, loaded))
    return out


def _tells(action_type: str) -> bool:
    """An action that only tells (a log line, a message): nothing to escalate about."""
    return action_type == "log" or action_type.startswith("notify.")


def _actions(rule: Rule) -> Iterator[tuple[str, ActionSpec]]:
    for i, step in enumerate(rule.steps):
        yield ("action" if len(rule.steps) == 1 else f"steps[{i}]"), step.action
    if rule.escalate is not None:
        yield "escalate", rule.escalate


def _action(
    rule: Rule, where: str, spec: ActionSpec, settings: Settings, environ: Mapping[str, str]
) -> Iterator[Problem]:
    action = registry.get(spec.type)
    if action is None:
        return  # the loader refuses unknown types
    line = spec.line or rule.line
    where = f"rule {rule.name} {where}"
    known, unknown = {}, False
    sc = scope(rule, _alert(rule), settings, None)
    for key, value in spec.params.items():
        try:
            known.update(templates.render_params({key: value}, sc))
        except errors.TemplateError:
            unknown = True  # depends on a label the rule does not fix: known at run time
    for key, value in known.items():
        if key.endswith("_env") and isinstance(value, str) and not environ.get(value):
            what = "the escalation" if where.endswith("escalate") else "the action"
            yield Problem(
                "warning",
                rule.file,
                line,
                f"{where}: ${value} ({key}) is not set: {what} would fail",
            )
    try:
        if unknown:  # what is known, checked field by field; the allow-lists on that part
            fields = action.schema.fields
            values = {k: fields[k].check(k, v) for k, v in known.items() if k in fields}
            values |= {k: f.default for k, f in fields.items() if k not in values and f.default}
        else:
            values = action.schema.validate(known)
        action.check_allowed(values, settings)
    except errors.ParamError as exc:
        yield Problem("error", rule.file, line, f"{where}: {spec.type}: {exc}")
    except errors.NotAllowed as exc:
        yield Problem("error", rule.file, line, f"{where}: {spec.type}: not allowed: {exc}")
    except (KeyError, TypeError, AttributeError):
        pass  # the allow-list needs a param only known at run time


def _alert(rule: Rule) -> Alert:
    """An alert carrying exactly the labels the rule's equality matchers fix."""
    labels = {m.name: m.value for m in rule.matchers if m.op is Op.EQ}
    now = dt.datetime.now(dt.UTC)
    return Alert(
        source=rule.source if rule.source != "any" else "alertmanager",
        name=labels.get("alertname", rule.name), status="firing", labels=labels,
        annotations={}, starts_at=now, ends_at=None, fingerprint="check",
        generator_url="", received_at=now,
    )  # fmt: skip


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
