"""Alertmanager matchers: the one implementation used by rules and (later) silences.

Semantics follow Alertmanager's `pkg/labels`:
- `=`, `!=`, `=~`, `!~`; a label that is absent is the empty string, so
  `team = ""` matches alerts without `team` and `team != ""` requires it.
- Regexes are anchored as Alertmanager anchors them: `^(?:RE)$`, matched against the
  whole value. Python's `re` stands in for Go's RE2; the two agree on the syntax rule
  authors use (alternation, classes, repetition). Back-references and look-arounds,
  which RE2 rejects, are rejected here too so a rule means the same in both.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping


class Op(enum.StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Operators longest first so `=~` is not read as `=` followed by `~`.
_SYNTAX = re.compile(
    r"""^\s*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*
        (?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s"]*))\s*$""",
    re.VERBOSE,
)
# Constructs RE2 rejects; accepting them would make a rule mean something other than
# what Alertmanager would do with the same matcher in a silence.
_LEADING_FLAGS = re.compile(r"\(\?([imsU]+)\)")
_NOT_RE2 = re.compile(r"\\[1-9]|\(\?[=!<]|\(\?P=")


@dataclasses.dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: Op
    value: str
    _regex: re.Pattern[str] | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def make(cls, name: str, op: Op, value: str) -> Matcher:
        """Build a matcher, compiling its regex; ValueError names what is wrong."""
        if not _LABEL_NAME.fullmatch(name):
            raise ValueError(f"invalid label name {name!r}")
        regex = None
        if op in (Op.RE, Op.NRE):
            if _NOT_RE2.search(value):
                raise ValueError(
                    f"regex {value!r} uses back-references or look-arounds, "
                    "which Alertmanager's RE2 does not support"
                )
            # Go accepts leading flags like (?i) anywhere a group starts; Python wants them
            # at the very start, so they are lifted out of the anchoring group.
            flags = _LEADING_FLAGS.match(value)
            lead, body = (f"(?{flags.group(1)})", value[flags.end() :]) if flags else ("", value)
            if "U" in lead:
                raise ValueError(f"regex {value!r}: the U (ungreedy) flag is not supported")
            if "\\Q" in body or "\\C" in body:
                raise ValueError(f"regex {value!r}: \\Q...\\E and \\C are not supported")
            body = _posix_classes(body).replace("\\z", "\\Z")
            try:
                # fullmatch, without DOTALL: `.` does not cross a newline and `$` does not
                # accept a trailing one; ASCII: `\d`, `\w`, `\s` are ASCII as in RE2.
                regex = re.compile(f"{lead}(?:{body})", re.ASCII)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return cls(name, op, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op is Op.EQ:
            return v == self.value
        if self.op is Op.NE:
            return v != self.value
        assert self._regex is not None  # make() compiles every regex op
        found = self._regex.fullmatch(v) is not None
        return found if self.op is Op.RE else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'


def parse(text: str) -> Matcher:
    """Parse one matcher in Alertmanager syntax: `name op "value"` or `name op value`."""
    m = _SYNTAX.match(text)
    if m is None:
        raise ValueError(
            f'cannot parse matcher {text!r}: expected `name = "value"` with one of = != =~ !~'
        )
    quoted = m.group("quoted")
    value = _unescape(quoted) if quoted is not None else (m.group("bare") or "")
    return Matcher.make(m.group("name"), Op(m.group("op")), value)


def from_silence(data: Mapping[str, object]) -> Matcher:
    """A matcher from Alertmanager API v2 JSON: {name, value, isRegex, isEqual}."""
    name, value = data.get("name"), data.get("value")
    if not isinstance(name, str) or not isinstance(value, str):
        raise ValueError(f"silence matcher needs string name and value, got {data!r}")
    is_regex = bool(data.get("isRegex", False))
    is_equal = bool(data.get("isEqual", True))
    op = {(False, True): Op.EQ, (False, False): Op.NE, (True, True): Op.RE}.get(
        (is_regex, is_equal), Op.NRE
    )
    return Matcher.make(name, op, value)


def match_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}

# RE2's POSIX classes, valid inside a bracket expression ([[:digit:]x]); Python's `re`
# would read `[[:digit:]]` as a set followed by `]`.
_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}  # fmt: skip
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]+):\]")


def _posix_classes(regex: str) -> str:
    """Translate [:name:] inside brackets as RE2 reads it; negated ones are refused."""

    def one(m: re.Match[str]) -> str:
        negated, name = m.group(1), m.group(2)
        if name not in _POSIX:
            raise ValueError(f"unknown POSIX class [:{name}:] in regex {regex!r}")
        if negated:
            raise ValueError(f"negated POSIX class [:^{name}:] in {regex!r}: write it as [^...]")
        return _POSIX[name]

    return _POSIX_CLASS.sub(one, regex)


def _unescape(s: str) -> str:
    """Undo `\\"`, `\\\\` and `\\n` as Alertmanager does; any other backslash stays, so
    a regex like `api\\.example\\.com` keeps its escaped dots."""
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in _ESCAPES:
            out.append(_ESCAPES[s[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
