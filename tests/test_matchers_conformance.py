"""Alertmanager's own test tables, as data, run against our matcher module.

Each table is transcribed from prometheus/alertmanager (read at v0.34; the classic parser
is unchanged since v0.25, the version Debian ships) and names the file and the Go test it
comes from. Inputs are the exact strings the Go tests parse; expected matchers are
(name, op, value) triples, or None where Alertmanager refuses the input. Error texts are
not compared (ours say what to fix in our words); accept/refuse and the result are.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from remediator.engine import silences
from remediator.matching import matchers
from remediator.matching.matchers import Matcher, Op, Syntax

Triple = tuple[str, str, str]
Row = tuple[str, list[Triple] | None]

EQ, NE, RE, NRE = "=", "!=", "=~", "!~"

# --------------------------------------------------------------------- the classic parser

# pkg/labels/parse_test.go, TestMatchers (labels.ParseMatchers).
CLASSIC_PARSE: list[Row] = [
    (r"{}", []),
    (r",", None),
    (r"{,}", None),
    (r"{foo='}", [("foo", EQ, "'")]),
    (r"{foo=`}", [("foo", EQ, "`")]),
    (r"{foo=\"}", [("foo", EQ, '"')]),
    (r"{foo=bar}", [("foo", EQ, "bar")]),
    (r'{foo="bar"}', [("foo", EQ, "bar")]),
    (r"{foo=~bar.*}", [("foo", RE, "bar.*")]),
    (r'{foo=~"bar.*"}', [("foo", RE, "bar.*")]),
    (r"{foo!=bar}", [("foo", NE, "bar")]),
    (r'{foo!="bar"}', [("foo", NE, "bar")]),
    (r"{foo!~bar.*}", [("foo", NRE, "bar.*")]),
    (r'{foo!~"bar.*"}', [("foo", NRE, "bar.*")]),
    (r'{foo="bar", baz!="quux"}', [("foo", EQ, "bar"), ("baz", NE, "quux")]),
    (r'{foo="bar", baz!~"quux.*"}', [("foo", EQ, "bar"), ("baz", NRE, "quux.*")]),
    (
        r'{foo="bar",baz!~".*quux", derp="wat"}',
        [("foo", EQ, "bar"), ("baz", NRE, ".*quux"), ("derp", EQ, "wat")],
    ),
    (
        r'{foo="bar", baz!="quux", derp="wat"}',
        [("foo", EQ, "bar"), ("baz", NE, "quux"), ("derp", EQ, "wat")],
    ),
    (
        r'{foo="bar", baz!~".*quux.*", derp="wat"}',
        [("foo", EQ, "bar"), ("baz", NRE, ".*quux.*"), ("derp", EQ, "wat")],
    ),
    (r'{foo="bar", instance=~"some-api.*"}', [("foo", EQ, "bar"), ("instance", RE, "some-api.*")]),
    (r'{foo=""}', [("foo", EQ, "")]),
    (r'{foo="bar,quux", job="job1"}', [("foo", EQ, "bar,quux"), ("job", EQ, "job1")]),
    (r'{foo = "bar", dings != "bums", }', [("foo", EQ, "bar"), ("dings", NE, "bums")]),
    (r"foo=bar,dings!=bums", [("foo", EQ, "bar"), ("dings", NE, "bums")]),
    (
        r'{quote="She said: \"Hi, ladies! That' + "'" + r's gender-neutral…\""}',
        [("quote", EQ, 'She said: "Hi, ladies! That\'s gender-neutral…"')],
    ),
    (r'statuscode=~"5.."', [("statuscode", RE, "5..")]),
    (r"tricky=~~~", [("tricky", RE, "~~")]),
    (r"trickier==\\=\=\"", [("trickier", EQ, r'=\=\="')]),
    (
        r'contains_quote != "\"" , contains_comma !~ "foo,bar" , ',
        [("contains_quote", NE, '"'), ("contains_comma", NRE, "foo,bar")],
    ),
    (r"{foo=bar}}", [("foo", EQ, "bar}")]),
    (r"{foo=bar}},}", [("foo", EQ, "bar}}")]),
    (r"{foo=,bar=}}", [("foo", EQ, ""), ("bar", EQ, "}")]),
    (r"{foo=bar\t}", [("foo", EQ, "bar\\t")]),
    (r"{foo=bar\n}", [("foo", EQ, "bar\n")]),
    (r"{foo=bar\}", [("foo", EQ, "bar\\")]),
    (r"{foo=bar\\}", [("foo", EQ, "bar\\")]),
    (r"{foo=bar\"}", [("foo", EQ, 'bar"')]),
    (r"job=", [("job", EQ, "")]),
    (r'job="value', None),
    (r'job=value"', None),
    (r'trickier==\\=\=\""', None),
    (r'contains_unescaped_quote = foo"bar', None),
    (r'{invalid-name = "valid label"}', None),
    (r'{foo=~"invalid[regexp"}', None),
    # Double escaped strings.
    (r'"{foo=\"bar"}', None),
    (r'"foo=\"bar"', None),
    (r'"foo=\"bar\""', None),
    (r'"foo=\"bar\"', None),
    (r'"{foo=\"bar\"}"', None),
    (r'"foo="bar""', None),
    (r"{{foo=", None),
    (r"{foo=", [("foo", EQ, "")]),
    (r"{foo=}b", [("foo", EQ, "}b")]),
]

# ----------------------------------------------------------------------- the UTF-8 parser

# matcher/parse/parse_test.go, TestMatchers (parse.Matchers).
UTF8_PARSE: list[Row] = [
    ("", []),
    ("{}", []),
    ("{foo=bar}", [("foo", EQ, "bar")]),
    ("{foo=bar,}", [("foo", EQ, "bar")]),
    ("{foo!=bar}", [("foo", NE, "bar")]),
    ("{foo=~[a-z]+}", [("foo", RE, "[a-z]+")]),
    ("{foo!~[a-z]+}", [("foo", NRE, "[a-z]+")]),
    ("{foo=🙂}", [("foo", EQ, "🙂")]),
    ("{foo=🙂bar}", [("foo", EQ, "🙂bar")]),
    ("foo=bar", [("foo", EQ, "bar")]),
    ("foo=bar,", [("foo", EQ, "bar")]),
    ("foo!=bar", [("foo", NE, "bar")]),
    ("foo=~[a-z]+", [("foo", RE, "[a-z]+")]),
    ("foo!~[a-z]+", [("foo", NRE, "[a-z]+")]),
    ('{"foo"="bar"}', [("foo", EQ, "bar")]),
    ('{"foo"="bar",}', [("foo", EQ, "bar")]),
    ('{"foo"!="bar"}', [("foo", NE, "bar")]),
    ('{"foo"=~"[a-z]+"}', [("foo", RE, "[a-z]+")]),
    (r'{"foo"=~"\\d+"}', [("foo", RE, r"\d+")]),
    ('{"foo"!~"[a-z]+"}', [("foo", NRE, "[a-z]+")]),
    ('{"foo"="🙂"}', [("foo", EQ, "🙂")]),
    (r'{"foo"="\xf0\x9f\x99\x82"}', [("foo", EQ, "🙂")]),
    (r'{"foo"="\U0001f642"}', [("foo", EQ, "🙂")]),
    ('{"foo"="🙂bar"}', [("foo", EQ, "🙂bar")]),
    (r'{"foo"="bar\n"}', [("foo", EQ, "bar\n")]),
    (r'{"foo"="bar\t"}', [("foo", EQ, "bar\t")]),
    (r'{"foo"="\"bar\""}', [("foo", EQ, '"bar"')]),
    (r'{"foo"="bar\\"}', [("foo", EQ, "bar\\")]),
    ('"foo"="bar"', [("foo", EQ, "bar")]),
    ('"foo"="bar",', [("foo", EQ, "bar")]),
    ("{foo=bar,bar!=baz}", [("foo", EQ, "bar"), ("bar", NE, "baz")]),
    ('{foo="bar",bar!="baz"}', [("foo", EQ, "bar"), ("bar", NE, "baz")]),
    ("foo=bar,bar!=baz", [("foo", EQ, "bar"), ("bar", NE, "baz")]),
    ('foo="bar",bar!="baz"', [("foo", EQ, "bar"), ("bar", NE, "baz")]),
    (",", None),
    ("{,}", None),
    ("{", None),
    ("}", None),
    ("foo=bar}", None),
    ("{foo=bar", None),
    ('{foo=:"bar"}', None),
    (r'{foo="bar\w"}', None),
    (r'{"foo"=~"\d+"}', None),
    (r"{foo=bar\n}", None),
    (r'{"foo"="\xf0\x9f"}', None),
]

# matcher/parse/parse_test.go, TestMatcher (parse.Matcher: exactly one matcher).
UTF8_ONE: list[tuple[str, Triple | None]] = [
    ("{foo=bar}", ("foo", EQ, "bar")),
    ("{foo=bar,}", ("foo", EQ, "bar")),
    ("{foo!=bar}", ("foo", NE, "bar")),
    ("{foo=~[a-z]+}", ("foo", RE, "[a-z]+")),
    ("{foo!~[a-z]+}", ("foo", NRE, "[a-z]+")),
    ("{foo=🙂}", ("foo", EQ, "🙂")),
    (r'{"foo"="\xf0\x9f\x99\x82"}', ("foo", EQ, "🙂")),
    (r'{"foo"="\U0001f642"}', ("foo", EQ, "🙂")),
    ("{foo=🙂bar}", ("foo", EQ, "🙂bar")),
    ("foo=bar", ("foo", EQ, "bar")),
    ("foo=bar,", ("foo", EQ, "bar")),
    ("foo!=bar", ("foo", NE, "bar")),
    ("foo=~[a-z]+", ("foo", RE, "[a-z]+")),
    ("foo!~[a-z]+", ("foo", NRE, "[a-z]+")),
    ('{"foo"="bar"}', ("foo", EQ, "bar")),
    ('{"foo"="bar",}', ("foo", EQ, "bar")),
    ('{"foo"!="bar"}', ("foo", NE, "bar")),
    ('{"foo"=~"[a-z]+"}', ("foo", RE, "[a-z]+")),
    ('{"foo"!~"[a-z]+"}', ("foo", NRE, "[a-z]+")),
    ('{"foo"="🙂"}', ("foo", EQ, "🙂")),
    ('{"foo"="🙂bar"}', ("foo", EQ, "🙂bar")),
    (r'{"foo"="bar\n"}', ("foo", EQ, "bar\n")),
    (r'{"foo"="bar\t"}', ("foo", EQ, "bar\t")),
    (r'{"foo"="\"bar\""}', ("foo", EQ, '"bar"')),
    (r'{"foo"="bar\\"}', ("foo", EQ, "bar\\")),
    ('"foo"="bar"', ("foo", EQ, "bar")),
    ('"foo"="bar",', ("foo", EQ, "bar")),
    ("", None),  # no matchers
    ("{}", None),  # no matchers
    ("foo=bar,bar=baz", None),  # two
    (r'foo="\xf0\x9f"', None),  # invalid UTF-8
]

# matcher/compliance/compliance_test.go, TestCompliance: the UTF-8 parser on the classic
# parser's inputs, the rows Alertmanager does not skip (where both parsers agree).
COMPLIANCE: list[Row] = [
    row
    for row in CLASSIC_PARSE
    if row[0]
    in {
        r"{foo=bar}",
        r'{foo="bar"}',
        r"{foo=~bar.*}",
        r'{foo=~"bar.*"}',
        r"{foo!=bar}",
        r'{foo!="bar"}',
        r"{foo!~bar.*}",
        r'{foo!~"bar.*"}',
        r'{foo="bar", baz!="quux"}',
        r'{foo="bar", baz!~"quux.*"}',
        r'{foo="bar",baz!~".*quux", derp="wat"}',
        r'{foo="bar", baz!="quux", derp="wat"}',
        r'{foo="bar", baz!~".*quux.*", derp="wat"}',
        r'{foo="bar", instance=~"some-api.*"}',
        r'{foo=""}',
        r'{foo="bar,quux", job="job1"}',
        r'{foo = "bar", dings != "bums", }',
        r"foo=bar,dings!=bums",
        r'statuscode=~"5.."',
        r'contains_quote != "\"" , contains_comma !~ "foo,bar" , ',
        r"{,}",
        r'job="value',
        r'job=value"',
        r'trickier==\\=\=\""',
        r'contains_unescaped_quote = foo"bar',
        r'{foo=~"invalid[regexp"}',
        r'"{foo=\"bar"}',
        r'"foo=\"bar"',
        r'"foo=\"bar\""',
        r'"foo=\"bar\"',
        r'"{foo=\"bar\"}"',
        r'"foo="bar""',
        r"{{foo=",
    }
] + [
    (
        r'{quote="She said: \"Hi, ladies! That' + "'" + r's gender-neutral…\""}',
        [("quote", EQ, 'She said: "Hi, ladies! That\'s gender-neutral…"')],
    ),
    (r'{name-with-dashes = "bar"}', [("name-with-dashes", EQ, "bar")]),
]

# ------------------------------------------------------------------ the compat (fallback)

# matcher/compat/parse_test.go, TestFallbackMatchersParser. The last column: whether the
# fallback warns (the UTF-8 parser refuses the input, or reads it differently).
COMPAT_MANY: list[tuple[str, list[Triple] | None, bool]] = [
    ("{foo=bar,bar=baz}", [("foo", EQ, "bar"), ("bar", EQ, "baz")], False),
    ("{foo!bar}", None, False),
    ("{foo🙂=bar,bar=baz🙂}", [("foo🙂", EQ, "bar"), ("bar", EQ, "baz🙂")], False),
    (r"{foo=!bar,bar=$baz\n}", [("foo", EQ, "!bar"), ("bar", EQ, "$baz\n")], True),
    (r'{foo="\xf0\x9f\x99\x82"}', [("foo", EQ, r"\xf0\x9f\x99\x82")], True),
]

# matcher/compat/parse_test.go, TestFallbackMatcherParser (one matcher).
COMPAT_ONE: list[tuple[str, Triple | None, bool]] = [
    ("foo=bar", ("foo", EQ, "bar"), False),
    ("foo!bar", None, False),
    ("foo🙂=bar", ("foo🙂", EQ, "bar"), False),
    (r"foo=!bar\n", ("foo", EQ, "!bar\n"), True),
    (r'foo="\xf0\x9f\x99\x82"', ("foo", EQ, r"\xf0\x9f\x99\x82"), True),
]

# matcher/compat/parse_test.go, TestIsValidUTF8LabelName: the names a silence may carry
# (Alertmanager >= 0.27; see matchers.from_silence).
UTF8_LABEL_NAMES = [("foo", True), ("_foo1", True), ("0foo", True), ("foo🙂", True), ("", False)]

# ---------------------------------------------------------------------- matcher semantics

# pkg/labels/matcher_test.go, TestMatcher: (op, matcher value, label value, matches).
SEMANTICS: list[tuple[str, str, str, bool]] = [
    (EQ, "bar", "bar", True),
    (EQ, "bar", "foo-bar", False),
    (NE, "bar", "bar", False),
    (NE, "bar", "foo-bar", True),
    (RE, "bar", "bar", True),
    (RE, "bar", "foo-bar", False),
    (RE, ".*bar", "foo-bar", True),
    (NRE, "bar", "bar", False),
    (NRE, "bar", "foo-bar", True),
    (NRE, ".*bar", "foo-bar", False),
    (RE, r"foo.bar", "foo-bar", True),
    (RE, r"foo\.bar", "foo-bar", False),
    (RE, r"foo\.bar", "foo.bar", True),
    (EQ, "foo\nbar", "foo\nbar", True),
    (RE, "foo.bar", "foo\nbar", False),
    (RE, "(?s)foo.bar", "foo\nbar", True),
    (EQ, '~!="', '~!="', True),
]

# pkg/labels/matcher_test.go, TestMatcherString: (name, op, value, canonical form).
STRINGS: list[tuple[str, str, str, str]] = [
    ("foo", EQ, "bar", 'foo="bar"'),
    ("foo", NE, "bar", 'foo!="bar"'),
    ("foo", RE, "bar", 'foo=~"bar"'),
    ("foo", NRE, "bar", 'foo!~"bar"'),
    ("foo", EQ, r"back\slash", r'foo="back\\slash"'),
    ("foo", EQ, 'double"quote', r'foo="double\"quote"'),
    ("foo", EQ, "new\nline", r'foo="new\nline"'),
    ("foo", EQ, "tab\tstop", 'foo="tab\tstop"'),
    ("foo", EQ, "🙂", 'foo="🙂"'),
    ("foo!", NE, "bar", '"foo!"!="bar"'),
    ("foo🙂", EQ, "bar", 'foo🙂="bar"'),
    ("foo bar", EQ, "baz", '"foo bar"="baz"'),
]

# pkg/labels/matcher_test.go, TestMatcherJSONUnmarshal: API JSON → matcher.
FROM_JSON: list[tuple[dict[str, Any], Triple]] = [
    ({"name": "foo", "value": "bar", "isRegex": False}, ("foo", EQ, "bar")),
    ({"name": "foo", "value": "bar", "isRegex": False, "isEqual": True}, ("foo", EQ, "bar")),
    ({"name": "foo", "value": "bar", "isRegex": False, "isEqual": False}, ("foo", NE, "bar")),
    ({"name": "foo", "value": "bar", "isRegex": True, "isEqual": True}, ("foo", RE, "bar")),
    ({"name": "foo", "value": "bar", "isRegex": True, "isEqual": False}, ("foo", NRE, "bar")),
]

# --------------------------------------------------------------------------- silences


def api(name: str, value: str, op: str = EQ) -> dict[str, Any]:
    """A matcher as API v2 JSON (what Alertmanager's silence conversion emits)."""
    return {"name": name, "value": value, "isRegex": op in (RE, NRE), "isEqual": op in (EQ, RE)}


# silence/silence_test.go, TestQMatches: does a silence with these matchers cover
# {job=test, instance=web-1, path=/user/profile, method=GET}? Only the rows with one
# matcher set: API v2 refuses to return a silence with several (api/v2/compat.go).
QMATCHES_LABELS = {"job": "test", "instance": "web-1", "path": "/user/profile", "method": "GET"}
QMATCHES: list[tuple[list[dict[str, Any]], bool]] = [
    ([api("job", "test")], True),
    ([api("job", "test", NE)], False),
    ([api("job", "test"), api("method", "POST")], False),
    ([api("job", "test"), api("method", "POST", NE)], True),
    ([api("path", "/user/.+", RE)], True),
    ([api("path", "/user/.+", NRE)], False),
    ([api("path", "/user/.+", RE), api("path", "/nothing/.+", RE)], False),
]

HOUR = 3600.0
# silence/silence_test.go, TestSilencer, for {foo=bar}: (matchers, starts and ends
# relative to now in seconds, silenced).
SILENCER: list[tuple[list[dict[str, Any]], float, float, bool]] = [
    ([api("foo", "baz")], -HOUR, 300, False),  # not silenced by a non-matching silence
    ([api("foo", "bar")], -HOUR, 300, True),  # silenced by a matching silence
    ([api("foo", "bar")], -2 * HOUR, -HOUR, False),  # not silenced by an expired one
    ([api("foo", "bar")], HOUR, 3 * HOUR, False),  # not silenced by a future one
    ([api("foo", "bar")], -HOUR, HOUR, True),  # silenced once it became active
    ([api("foo", "b..", RE)], -HOUR, HOUR, True),  # and by an active regex one
]

# silence/silence_test.go, TestValidateUTF8Matcher: which API matchers are evaluable.
# (Not transcribed: a value of invalid UTF-8, which JSON cannot carry to us, and a matcher
# type outside the four, which the API's two booleans cannot express.)
VALIDATE_UTF8: list[tuple[dict[str, Any], bool]] = [
    (api("a", "b"), True),
    (api("a", "b", NE), True),
    (api("a", "b", RE), True),
    (api("a", "b", NRE), True),
    (api("00", "a"), True),
    (api("\U0001f642", "a"), True),
    (api("a", "((", RE), False),
    (api("a", "))", NRE), False),
    (api("a", "\U0001f642"), True),
]


# --------------------------------------------------------------------------- the tests


def triples(ms: tuple[Matcher, ...]) -> list[Triple]:
    return [(m.name, str(m.op), m.value) for m in ms]


def _run(parse: Any, text: str) -> list[Triple] | None:
    try:
        return triples(parse(text))
    except ValueError:
        return None


@pytest.mark.parametrize(("text", "expected"), CLASSIC_PARSE, ids=[r[0] for r in CLASSIC_PARSE])
def test_the_classic_syntax_reads_alertmanager_s_classic_table(
    text: str, expected: list[Triple] | None
) -> None:
    assert _run(matchers.parse_classic, text) == expected
    assert _run(lambda t: matchers.parse_matchers(t, Syntax.CLASSIC).matchers, text) == expected


@pytest.mark.parametrize(("text", "expected"), UTF8_PARSE, ids=[r[0] for r in UTF8_PARSE])
def test_the_utf8_syntax_reads_alertmanager_s_utf8_table(
    text: str, expected: list[Triple] | None
) -> None:
    assert _run(matchers.parse_utf8, text) == expected
    assert _run(lambda t: matchers.parse_matchers(t, Syntax.UTF8).matchers, text) == expected


@pytest.mark.parametrize(("text", "expected"), UTF8_ONE, ids=[r[0] for r in UTF8_ONE])
def test_one_matcher_in_the_utf8_syntax_is_exactly_one(text: str, expected: Triple | None) -> None:
    got = _run(lambda t: (matchers.parse(t, Syntax.UTF8),), text)
    assert got == (None if expected is None else [expected])


@pytest.mark.parametrize(("text", "expected"), COMPLIANCE, ids=[r[0] for r in COMPLIANCE])
def test_the_utf8_syntax_reads_classic_inputs_as_alertmanager_s_compliance_table_says(
    text: str, expected: list[Triple] | None
) -> None:
    assert _run(matchers.parse_utf8, text) == expected


@pytest.mark.parametrize(
    ("text", "expected", "warns"), COMPAT_MANY, ids=[r[0] for r in COMPAT_MANY]
)
def test_the_fallback_reads_alertmanager_s_compat_table(
    text: str, expected: list[Triple] | None, warns: bool
) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="cannot parse"):
            matchers.parse_matchers(text, Syntax.FALLBACK)
        return
    parsed = matchers.parse_matchers(text, Syntax.FALLBACK)
    assert triples(parsed.matchers) == expected
    assert (parsed.warning is not None) is warns


@pytest.mark.parametrize(("text", "expected", "warns"), COMPAT_ONE, ids=[r[0] for r in COMPAT_ONE])
def test_the_fallback_reads_alertmanager_s_compat_table_for_one_matcher(
    text: str, expected: Triple | None, warns: bool
) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="cannot parse"):
            matchers.parse(text, Syntax.FALLBACK)
        return
    parsed = matchers.parse_matchers(text, Syntax.FALLBACK)
    assert triples(parsed.matchers) == [expected]
    assert (parsed.warning is not None) is warns
    assert matchers.parse(text) == parsed.matchers[0]  # fallback is the default


@pytest.mark.parametrize(("name", "valid"), UTF8_LABEL_NAMES)
def test_a_silence_label_name_is_valid_as_in_alertmanager_s_utf8_mode(
    name: str, valid: bool
) -> None:
    assert matchers.valid_label_name(name) is valid


@pytest.mark.parametrize(("op", "value", "label", "expected"), SEMANTICS)
def test_a_matcher_matches_as_in_alertmanager_s_matcher_table(
    op: str, value: str, label: str, expected: bool
) -> None:
    # Alertmanager's table uses the empty label name; any name works the same.
    assert Matcher.make("", Op(op), value).matches({"": label}) is expected


@pytest.mark.parametrize(("name", "op", "value", "want"), STRINGS)
def test_a_matcher_prints_as_alertmanager_prints_it(
    name: str, op: str, value: str, want: str
) -> None:
    m = Matcher.make(name, Op(op), value)
    assert str(m) == want
    # And the canonical form reads back to the same matcher (UTF-8 syntax: any name).
    assert matchers.parse(want, Syntax.UTF8) == m


@pytest.mark.parametrize(("data", "expected"), FROM_JSON)
def test_a_silence_matcher_is_read_as_alertmanager_reads_api_json(
    data: dict[str, Any], expected: Triple
) -> None:
    assert triples((matchers.from_silence(data),)) == [expected]


def _silence(ms: list[dict[str, Any]], *, starts: float, ends: float, now: float) -> Any:
    def rfc3339(offset: float) -> str:
        return dt.datetime.fromtimestamp(now + offset, dt.UTC).isoformat()

    return {
        "id": "s1",
        "matchers": ms,
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
        "createdBy": "tests",
        "comment": "",
        "status": {"state": "active"},
    }


@pytest.mark.parametrize(("ms", "expected"), QMATCHES)
def test_a_silence_covers_what_alertmanager_s_query_table_says(
    ms: list[dict[str, Any]], expected: bool
) -> None:
    now = 1_800_000_000.0
    [s] = silences.parse_silences([_silence(ms, starts=-60, ends=60, now=now)])
    assert s.unreadable == ""
    assert s.covers(QMATCHES_LABELS, now) is expected


@pytest.mark.parametrize(("ms", "starts", "ends", "expected"), SILENCER)
def test_a_silence_holds_in_its_window_as_in_alertmanager_s_silencer_test(
    ms: list[dict[str, Any]], starts: float, ends: float, expected: bool
) -> None:
    now = 1_800_000_000.0
    [s] = silences.parse_silences([_silence(ms, starts=starts, ends=ends, now=now)])
    assert s.covers({"foo": "bar"}, now) is expected


@pytest.mark.parametrize(("data", "evaluable"), VALIDATE_UTF8)
def test_a_silence_matcher_is_evaluable_where_alertmanager_s_utf8_validation_accepts_it(
    data: dict[str, Any], evaluable: bool
) -> None:
    if evaluable:
        matchers.from_silence(data)
    else:
        with pytest.raises(ValueError, match="invalid regex"):
            matchers.from_silence(data)


def test_every_table_has_both_verdicts() -> None:
    """A table of only successes (or only refusals) could not catch half the mistakes."""
    for table in (CLASSIC_PARSE, UTF8_PARSE, COMPLIANCE):
        assert {r[1] is None for r in table} == {True, False}
    assert {r[3] for r in SEMANTICS} == {True, False}
    assert {r[1] for r in QMATCHES} == {True, False}
    assert {r[1] for r in VALIDATE_UTF8} == {True, False}
