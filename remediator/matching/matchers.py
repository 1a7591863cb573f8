"""Alertmanager matchers: the one implementation for rules, silences and blackout windows.

What a matcher means follows Alertmanager's `pkg/labels`:

- `=`, `!=`, `=~`, `!~`; a label that is absent is the empty string, so `team = ""`
  matches alerts without `team` and `team != ""` requires it.
- A regex is compiled as `^(?:RE)$` and must match the whole value, with RE2 semantics
  through Google's RE2 (`google-re2`): linear time in the value's length whatever the
  pattern, `(?i)` folding Unicode, `\\pL`, `[[:^digit:]]`, `\\Q…\\E`, flags in the middle
  (`prod-(?i)eu`), `x{,3}` as literal text. What RE2 refuses is refused; so is what Go's
  `regexp` (Alertmanager's engine) refuses although C++ RE2 takes it: `\\C`, and capture
  group names that are not ASCII words.

How matcher *text* is read depends on `Syntax`, as in Alertmanager's `matcher/compat`:

- `classic`: the parser of Alertmanager <= 0.26 (`pkg/labels/parse.go`): optional braces,
  a comma list, names `[a-zA-Z_:][a-zA-Z0-9_:]*`, values quoted or not, OpenMetrics
  escapes (`\\"`, `\\\\`, `\\n`; any other backslash is kept), spaces around everything.
- `utf8`: the parser of Alertmanager >= 0.27 (`matcher/parse`): names and values are
  any UTF-8, double-quoted with Go string escapes when they hold a space or one of
  ``{}!=~,\\"'` ``, unquoted otherwise.
- `fallback` (the default, as in Alertmanager >= 0.27): the UTF-8 parser first; input it
  refuses but the classic parser accepts is read the classic way, with a warning; when
  both accept but disagree, the classic reading wins, with a warning.

One text may hold zero, one or several matchers (`{a="1", b=~"2|3"}`).
"""

from __future__ import annotations

import dataclasses
import enum
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Protocol

import re2


class Op(enum.StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


class Syntax(enum.StrEnum):
    """How matcher text is parsed (config key `matchers_syntax`)."""

    CLASSIC = "classic"
    UTF8 = "utf8"
    FALLBACK = "fallback"


class _Compiled(Protocol):
    """The part of a compiled `re2` pattern we use (the package ships no types)."""

    @property
    def programsize(self) -> int: ...

    def fullmatch(self, text: bytes) -> object | None: ...


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # errors are ours to report, not RE2's to print on stderr
    # Nothing reads groups, and without them RE2 never needs its slower submatch engines.
    options.never_capture = True
    return options


_OPTIONS = _options()


@dataclasses.dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: Op
    value: str
    _regex: _Compiled | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op in (Op.RE, Op.NRE):
            if self._regex is None:
                object.__setattr__(self, "_regex", compile_regex(self.value))
        else:
            _utf8(self.value, what="label value")

    @classmethod
    def make(cls, name: str, op: Op, value: str) -> Matcher:
        """Build a matcher, compiling its regex; ValueError names what is wrong.

        The name is not checked here (each syntax has its own rule, see the parsers and
        `from_silence`), as Alertmanager's `labels.NewMatcher` does not check it either.
        """
        return cls(name, op, value)

    @property
    def cost(self) -> int:
        """Work per byte of label value: RE2's program size for a regex, 1 otherwise."""
        return self._regex.programsize if self._regex is not None else 1

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op is Op.EQ:
            return v == self.value
        if self.op is Op.NE:
            return v != self.value
        assert self._regex is not None  # __post_init__ compiles every regex op
        found = self._regex.fullmatch(_text(v)) is not None
        return found is (self.op is Op.RE)

    def __str__(self) -> str:
        """Alertmanager's canonical form: `name="value"`, or both Go-quoted when the name
        holds a character only the UTF-8 syntax can carry quoted (a space, `{}!=~,` …)."""
        if any(_reserved(c) for c in self.name):
            return f"{_go_quote(self.name)}{self.op}{_go_quote(self.value)}"
        escaped = self.value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def compile_regex(value: str, *, anchored: bool = True) -> _Compiled:
    """`value` anchored as Alertmanager anchors it (or as it is), compiled by RE2;
    ValueError if refused."""
    pattern = _utf8(f"^(?:{value})$" if anchored else value, what="regex")
    try:
        compiled: _Compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise ValueError(f"invalid regex {value!r}: {_re2_message(exc)}") from exc
    problem = _go_refuses(value)
    if problem:
        raise ValueError(f"invalid regex {value!r}: {problem} (Alertmanager's Go regexp)")
    return compiled


def match_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


def format_all(matchers: Iterable[Matcher]) -> str:
    """A matcher list as Alertmanager prints one: `{a="1",b=~"2|3"}`."""
    return "{" + ",".join(str(m) for m in matchers) + "}"


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """The matchers of one text, and why the fallback read it the classic way (if so)."""

    matchers: tuple[Matcher, ...]
    warning: str | None = None


def parse_matchers(text: str, syntax: Syntax = Syntax.FALLBACK) -> Parsed:
    """The matchers of one `matchers:` entry, as Alertmanager reads one of its config's."""
    if syntax is Syntax.CLASSIC:
        return Parsed(parse_classic(text))
    if syntax is Syntax.UTF8:
        return Parsed(parse_utf8(text))
    try:
        utf8 = parse_utf8(text)
    except ValueError as exc:
        utf8_error: ValueError | None = exc
        utf8 = ()
    else:
        utf8_error = None
    try:
        classic = parse_classic(text)
    except ValueError as exc:
        if utf8_error is not None:
            raise ValueError(f"{exc}; the UTF-8 syntax refuses it too: {utf8_error}") from exc
        return Parsed(utf8)
    if utf8_error is not None:
        return Parsed(
            classic,
            f"{text!r} is read with the classic syntax as {format_all(classic)}: the UTF-8 "
            f"syntax refuses it ({utf8_error}). Write it as {format_all(classic)}, which "
            "both read the same way",
        )
    if utf8 != classic:
        return Parsed(
            classic,
            f"{text!r} means {format_all(classic)} in the classic syntax but "
            f"{format_all(utf8)} in the UTF-8 syntax; the classic reading is used, as "
            f"Alertmanager does. Write it as {format_all(classic)} to mean that in both",
        )
    return Parsed(utf8)


def parse(text: str, syntax: Syntax = Syntax.FALLBACK) -> Matcher:
    """Exactly one matcher (a blackout's or a test's); ValueError for none or several."""
    found = parse_matchers(text, syntax).matchers
    if len(found) != 1:
        raise ValueError(f"expected one matcher in {text!r}, found {len(found)}")
    return found[0]


def valid_label_name(name: str) -> bool:
    """A silence's label name, as Alertmanager >= 0.27 accepts one: any non-empty UTF-8."""
    try:
        return bool(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False


def from_silence(data: Mapping[str, object]) -> Matcher:
    """A matcher from Alertmanager API v2 JSON: {name, value, isRegex, isEqual}.

    `isEqual` defaults to true and `isRegex` to false, as Alertmanager's API does. Any
    non-empty name is taken: Alertmanager >= 0.27 stores UTF-8 names (`k8s.namespace`), and
    a silence Alertmanager holds must be evaluated, not refused for its name.
    """
    name, value = data.get("name"), data.get("value")
    if not isinstance(name, str) or not isinstance(value, str):
        raise ValueError(f"silence matcher needs string name and value, got {data!r}")
    if not valid_label_name(name):
        raise ValueError(f"invalid label name {name!r} in silence matcher")
    # A JSON null is an absent field, as for Alertmanager's optional booleans.
    is_regex = False if data.get("isRegex") is None else data["isRegex"]
    is_equal = True if data.get("isEqual") is None else data["isEqual"]
    if not isinstance(is_regex, bool) or not isinstance(is_equal, bool):
        raise ValueError(f"silence matcher isRegex/isEqual must be true or false, got {data!r}")
    op = {(False, True): Op.EQ, (False, False): Op.NE, (True, True): Op.RE}.get(
        (is_regex, is_equal), Op.NRE
    )
    if is_regex:
        # Alertmanager validates a silence's regex as written, then matches it anchored:
        # both must compile (`a)|(b` passes only the second, `a\\Qb` only the first).
        compile_regex(value, anchored=False)
    return Matcher.make(name, op, value)


# --------------------------------------------------------------------------- classic syntax

_OPS_CLASSIC = (Op.RE, Op.EQ, Op.NE, Op.NRE)  # `=~` tried before `=`, as Alertmanager does
_RE_SPACE = "\t\n\f\r "  # Go regexp's \s, which the classic parser's pattern uses
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
# Go's unicode.IsSpace, which TrimSpace (and the UTF-8 lexer) use.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def parse_classic(text: str) -> tuple[Matcher, ...]:
    """Alertmanager <= 0.26's reading of a matchers text (`labels.ParseMatchers`).

    One leading `{` and one trailing `}` are dropped; commas outside double quotes split
    the rest (a `\\"` does not open or close a quote); the last piece is trimmed and
    dropped when empty (so a trailing comma is fine), an empty piece elsewhere is an error.
    """
    body = text.removeprefix("{").removesuffix("}")
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for c in body:
        if c == ",":
            if not quoted:
                pieces.append("".join(current))
                current = []
                continue
        elif c == '"':
            if escaped:
                escaped = False
            else:
                quoted = not quoted
        elif c == "\\":
            escaped = not escaped
        else:
            escaped = False
        current.append(c)
    last = "".join(current).strip("".join(_GO_SPACE))
    if last:
        pieces.append(last)
    return tuple(_classic_one(piece) for piece in pieces)


def _classic_one(text: str) -> Matcher:
    bad = ValueError(
        f"cannot parse matcher {text!r}: expected a label name ([a-zA-Z_:][a-zA-Z0-9_:]*), "
        'one of = != =~ !~, then a value, like `name = "value"`'
    )
    i, n = 0, len(text)
    while i < n and text[i] in _RE_SPACE:
        i += 1
    start = i
    if i >= n or text[i] not in _NAME_START:
        raise bad
    while i < n and text[i] in _NAME_CHARS:
        i += 1
    name = text[start:i]
    while i < n and text[i] in _RE_SPACE:
        i += 1
    op = next((o for o in _OPS_CLASSIC if text.startswith(o.value, i)), None)
    if op is None:
        raise bad
    i += len(op.value)
    raw = text[i:].lstrip(_RE_SPACE).rstrip(_RE_SPACE)
    return Matcher.make(name, op, _classic_value(raw))


def _classic_value(raw: str) -> str:
    """Undo `\\"`, `\\\\` and `\\n` in a value, quoted or not; any other backslash stays,
    so a regex like `api\\.example\\.com` keeps its escaped dots. A double quote may only
    open and close the value."""
    _utf8(raw, what="matcher value")
    quoted = raw.startswith('"')
    body = raw[1:] if quoted else raw
    unquoted_error = ValueError(
        f'matcher value {raw!r} contains an unescaped double quote: write \\" for a quote '
        "inside the value"
    )
    out: list[str] = []
    escaped = closed = False
    last = len(body) - 1
    for i, c in enumerate(body):
        if escaped:
            escaped = False
            out.append({"n": "\n", '"': '"', "\\": "\\"}.get(c, "\\" + c))
        elif c == "\\" and i < last:
            escaped = True
        elif c == '"':
            if not quoted or i < last:
                raise unquoted_error
            closed = True
        else:
            out.append(c)
    if quoted and not closed:
        raise unquoted_error
    return "".join(out)


# --------------------------------------------------------------------------- UTF-8 syntax

_RESERVED = frozenset("{}!=~,\\\"'`")


def _reserved(c: str) -> bool:
    return c in _RESERVED or c in _GO_SPACE


@dataclasses.dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    """`{`, `}`, `,`, an operator, `quoted`, `unquoted`, `end`, or `error`."""
    text: str
    start: int
    end: int
    """Columns (characters), as Alertmanager's error messages count them."""


def _lex(text: str) -> list[_Token]:
    """Tokens of the UTF-8 syntax; the last is `end`, or `error` where the input went
    wrong (reported only if the parser gets that far, as Alertmanager's lexer does)."""
    out: list[_Token] = []
    i, n = 0, len(text)

    def fail(start: int, end: int, message: str) -> list[_Token]:
        out.append(_Token("error", message, start, end))
        return out

    while i < n:
        c = text[i]
        if c in "{},":
            out.append(_Token(c, c, i, i + 1))
            i += 1
        elif c in "=!":
            two = text[i : i + 2]
            if two in ("=~", "!=", "!~"):
                out.append(_Token(two, two, i, i + 2))
                i += 2
            elif c == "=":
                out.append(_Token("=", "=", i, i + 1))
                i += 1
            else:
                shown = two if len(two) == 2 else "end of input"
                return fail(i, i + len(two), f"{shown}: expected one of '=~'")
        elif c == '"':
            j, escaped = i + 1, False
            while j < n and (escaped or text[j] != '"'):
                escaped = not escaped and text[j] == "\\"
                j += 1
            if j >= n:
                return fail(i, n, f'{text[i:]}: missing end "')
            out.append(_Token("quoted", text[i : j + 1], i, j + 1))
            i = j + 1
        elif c in _GO_SPACE:
            i += 1
        elif c in _RESERVED:
            return fail(i, i + 1, f"{c}: invalid input")
        else:
            j = i
            while j < n and not _reserved(text[j]):
                j += 1
            out.append(_Token("unquoted", text[i:j], i, j))
            i = j
    out.append(_Token("end", "", n, n))
    return out


_OPS_UTF8 = {"=": Op.EQ, "!=": Op.NE, "=~": Op.RE, "!~": Op.NRE}


def parse_utf8(text: str) -> tuple[Matcher, ...]:
    """Alertmanager >= 0.27's reading of a matchers text (`matcher/parse.Matchers`):
    `{` … `}` optional but paired, matchers separated by commas (one trailing comma
    allowed), names and values unquoted or double-quoted with Go escapes."""
    tokens = _lex(text)
    pos = 0

    def error(message: str, token: _Token) -> ValueError:
        return ValueError(f"cannot parse matchers {text!r}: {token.start}:{token.end}: {message}")

    def peek(*kinds: str, expected: str) -> _Token:
        token = tokens[pos]
        if token.kind == "error":
            raise error(token.text, token)
        if token.kind not in kinds:
            shown = "end of input" if token.kind == "end" else f"unexpected {token.text}"
            raise error(f"{shown}: expected {expected}", token)
        return token

    out: list[Matcher] = []
    braced = tokens[0].kind == "{"
    if braced:
        pos += 1
    while True:
        token = peek("}", "quoted", "unquoted", "end", expected="a label name")
        if token.kind in ("}", "end"):
            break
        name = _go_unquote(token)
        if name is None:
            raise error(f"{token.text}: invalid input", token)
        pos += 1
        op = peek(*_OPS_UTF8, expected="an operator such as '=', '!=', '=~' or '!~'")
        pos += 1
        value_token = peek("quoted", "unquoted", expected="a label value")
        value = _go_unquote(value_token)
        if value is None:
            raise error(f"{value_token.text}: invalid input", value_token)
        pos += 1
        try:
            out.append(Matcher.make(name, _OPS_UTF8[op.kind], value))
        except ValueError as exc:
            raise ValueError(f"cannot parse matchers {text!r}: {exc}") from exc
        token = peek(",", "}", "end", expected="a comma or close brace")
        if token.kind != ",":
            break
        pos += 1
    token = tokens[pos]
    if token.kind == "error":
        raise error(token.text, token)
    if braced and token.kind != "}":
        raise error("end of input: expected close brace", token)
    if not braced and token.kind == "}":
        raise error("}: expected opening brace", token)
    if token.kind == "}":
        pos += 1
    token = tokens[pos]
    if token.kind != "end":
        raise error(f"{token.text}: expected end of input", token)
    return tuple(out)


_SIMPLE_ESCAPES = {
    "a": 0x07, "b": 0x08, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B,
    "\\": 0x5C, '"': 0x22,
}  # fmt: skip
_HEX = frozenset("0123456789abcdefABCDEF")
_OCTAL = frozenset("01234567")


def _go_unquote(token: _Token) -> str | None:
    """An unquoted token as is; a quoted one with Go's string escapes undone (`\\n`,
    `\\t`, `\\xHH`, `\\u…`, octal …), None unless that leaves valid UTF-8 (as Go's
    strconv.Unquote and the UTF-8 check after it)."""
    if token.kind != "quoted":
        return token.text
    body = token.text[1:-1]
    if "\n" in body:
        return None
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        e = body[i + 1 : i + 2]
        if e and e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e and e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not set(digits) <= _HEX:
                return None
            value = int(digits, 16)
            if e == "x":
                out.append(value)
            elif value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                return None
            else:
                out += chr(value).encode("utf-8")
            i += 2 + width
        elif e and e in _OCTAL:
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not set(digits) <= _OCTAL or int(digits, 8) > 255:
                return None
            out.append(int(digits, 8))
            i += 4
        else:
            return None
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --------------------------------------------------------------------------- helpers


def _utf8(text: str, *, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {text!r} is not valid UTF-8 (a lone surrogate)") from exc


def _text(value: str) -> bytes:
    """A label value for RE2; intake refuses lone surrogates, so `replace` is only a net."""
    return value.encode("utf-8", "replace")


def _re2_message(exc: re2.error) -> str:
    message = exc.args[0] if exc.args else exc
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


def _go_refuses(pattern: str) -> str | None:
    """What Go's regexp refuses in a pattern C++ RE2 has accepted: `\\C`, and capture
    names that are not `[A-Za-z0-9_]+` (Go allows a name twice). Escapes, `\\Q…\\E` and
    bracket expressions are skipped so their text is not mistaken for syntax."""
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            e = pattern[i + 1 : i + 2]
            if e == "C":
                return "\\C (any byte) is not supported"
            if e == "Q":
                end = pattern.find("\\E", i + 2)
                i = n if end < 0 else end + 2
                continue
            i += 2
        elif c == "[":
            i = _class_end(pattern, i)
        elif pattern.startswith(("(?P<", "(?<"), i):
            start = pattern.index("<", i) + 1
            end = pattern.index(">", start)
            name = pattern[start:end]
            if not name.isascii() or not name.replace("_", "a").isalnum():
                return f"invalid capture group name {name!r}"
            i = end + 1
        else:
            i += 1
    return None


def _class_end(pattern: str, i: int) -> int:
    """Index just past the bracket expression opening at `i` (RE2 accepted the pattern,
    so it is closed): a `]` first (after an optional `^`) is literal, `[:name:]` nests."""
    i += 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
        elif pattern.startswith("[:", i) and (end := pattern.find(":]", i + 2)) >= 0:
            i = end + 2
        elif pattern[i] == "]":
            return i + 1
        else:
            i += 1
    return i


def _go_quote(s: str) -> str:
    """Go's strconv.Quote: printable characters as they are, the rest escaped."""
    out = ['"']
    for c in s:
        cp = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif c == " " or (cp >= 0x20 and unicodedata.category(c)[0] in "LMNPS"):
            out.append(c)
        elif c in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                        "\t": "\\t", "\v": "\\v"}[c])  # fmt: skip
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\x{cp:02x}")
        elif cp < 0x10000:
            out.append(f"\\u{0xFFFD if 0xD800 <= cp <= 0xDFFF else cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)
