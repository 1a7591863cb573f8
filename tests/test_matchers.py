"""Matchers mean what Alertmanager's `pkg/labels` means: same syntax, same verdicts.

A rule's matchers decide which alerts get remediated, and silences (read from
Alertmanager) decide which do not: if our reading of `namespace =~ "prod"` differed from
Alertmanager's, a rule would act on alerts its author never meant. The tables below are
checked against our implementation and, at the end, against the real Alertmanager.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest

from remediator.matching import matchers
from remediator.matching.matchers import Matcher, Op, Syntax
from tests import servers

# (matcher text, labels, expected). A missing label reads as "".
CASES: list[Any] = [
    # equality and inequality
    ('alertname = "APIDown"', {"alertname": "APIDown"}, True),
    ('alertname = "APIDown"', {"alertname": "APIDownAgain"}, False),
    ('alertname = "APIDown"', {"alertname": "apidown"}, False),
    ('alertname != "APIDown"', {"alertname": "APIDown"}, False),
    ('alertname != "APIDown"', {"alertname": "DBDown"}, True),
    ('team != "sre"', {}, True),
    # an absent label is the empty string
    ('team = ""', {}, True),
    ('team = ""', {"team": "sre"}, False),
    ('team != ""', {}, False),
    ('team != ""', {"team": "sre"}, True),
    ('team = "sre"', {}, False),
    ('team =~ ".*"', {}, True),
    ('team =~ ".+"', {}, False),
    ('team =~ ".+"', {"team": "sre"}, True),
    ('team !~ ".+"', {}, True),
    ('team !~ ".*"', {}, False),
    ('team =~ "sre|"', {}, True),
    # regexes are anchored at both ends
    ('namespace =~ "prod"', {"namespace": "prod"}, True),
    ('namespace =~ "prod"', {"namespace": "production"}, False),
    ('namespace =~ "prod"', {"namespace": "preprod"}, False),
    ('namespace =~ "prod|staging"', {"namespace": "prod"}, True),
    ('namespace =~ "prod|staging"', {"namespace": "staging"}, True),
    ('namespace =~ "prod|staging"', {"namespace": "preprod"}, False),
    ('namespace =~ "prod|staging"', {"namespace": "staging-2"}, False),
    # RE2's POSIX classes and ASCII-only shorthand classes
    ('instance =~ "[[:digit:]]+"', {"instance": "123"}, True),
    ('instance =~ "[[:digit:]]+"', {"instance": "d]"}, False),
    ('instance =~ "[[:alpha:]_-]+"', {"instance": "api_x-y"}, True),
    ('instance =~ "\\d+"', {"instance": "\u0661\u0660\u0660"}, False),
    ('instance =~ "\\w+"', {"instance": "caf\u00e9"}, False),
    ('namespace =~ "prod.*"', {"namespace": "production"}, True),
    ('namespace !~ "prod|staging"', {"namespace": "preprod"}, True),
    ('namespace !~ "prod|staging"', {"namespace": "staging"}, False),
    ('instance =~ "db-[0-9]+"', {"instance": "db-12"}, True),
    ('instance =~ "db-[0-9]+"', {"instance": "db-12a"}, False),
    ('instance =~ "[a-z]{2,3}"', {"instance": "abcd"}, False),
    pytest.param(
        'severity =~ "(?i)critical"',
        {"severity": "CRITICAL"},
        True,
        id="case-insensitive-flag",
    ),
    ('severity =~ "(?i:critical)"', {"severity": "Critical"}, True),
    # quoted values: \" and \\ and \n are escapes
    (r'summary = "say \"hi\""', {"summary": 'say "hi"'}, True),
    (r'path = "C:\\temp"', {"path": "C:\\temp"}, True),
    (r'path = "C:\\temp"', {"path": "C:\\\\temp"}, False),
    (r'text = "two\nlines"', {"text": "two\nlines"}, True),
    ('team = "a = b, c"', {"team": "a = b, c"}, True),
    ('team = "=~"', {"team": "=~"}, True),
    ('label = "ünïcödé"', {"label": "ünïcödé"}, True),
    # unquoted values
    ("namespace=prod", {"namespace": "prod"}, True),
    ("namespace!=prod", {"namespace": "prod"}, False),
    ("namespace=~prod|staging", {"namespace": "staging"}, True),
    ("namespace!~prod|staging", {"namespace": "dev"}, True),
    ("team=", {}, True),
    ("team!=", {"team": "x"}, True),
    # whitespace around everything
    ('  alertname   =~   "API.*"  ', {"alertname": "APIDown"}, True),
    ('\talertname\t!=\t"APIDown"\t', {"alertname": "APIDown"}, False),
    ('alertname="APIDown"', {"alertname": "APIDown"}, True),
    # regex escapes keep their backslash, as in Alertmanager (a spurious escape is literal)
    pytest.param(
        r'instance =~ "api\.example\.com"',
        {"instance": "apixexample.com"},
        False,
        id="escaped-dot-is-a-literal-dot",
    ),
    (r'instance =~ "api\.example\.com"', {"instance": "api.example.com"}, True),
    pytest.param(r'instance =~ "host\d+"', {"instance": "host12"}, True, id="digit-class"),
    # a value with a newline: Go's `.` does not cross it and `$` is the end of the text
    pytest.param('env =~ "prod"', {"env": "prod\n"}, False, id="no-trailing-newline"),
    pytest.param('x =~ ".*"', {"x": "a\nb"}, False, id="dot-no-newline"),
    # an unquoted value is unescaped too: `\\.` is `\.`, an escaped dot
    (r"instance=~api\\.example\\.com", {"instance": "api.example.com"}, True),
    (r"instance=~api\\.example\\.com", {"instance": "apixexample.com"}, False),
    # RE2 syntax that Python's `re` refused or read differently
    (r'name =~ "\pL+"', {"name": "ünïcödé"}, True),
    (r'name =~ "\pL+"', {"name": "a1"}, False),
    (r'name =~ "\p{Greek}+"', {"name": "αβγ"}, True),
    (r'name =~ "\p{Greek}+"', {"name": "abc"}, False),
    ('id =~ "[[:^digit:]]+"', {"id": "abc"}, True),
    ('id =~ "[[:^digit:]]+"', {"id": "a1"}, False),
    (r'host =~ "\Qa.b\E"', {"host": "a.b"}, True),
    (r'host =~ "\Qa.b\E"', {"host": "axb"}, False),
    ('region =~ "prod-(?i)eu"', {"region": "prod-EU"}, True),
    ('region =~ "prod-(?i)eu"', {"region": "PROD-eu"}, False),
    ('x =~ "x{,3}"', {"x": "x{,3}"}, True),
    ('x =~ "x{,3}"', {"x": "xx"}, False),
    # (?i) folds Unicode, not only ASCII
    pytest.param('city =~ "(?i)ÉCOLE"', {"city": "école"}, True, id="case-folding-unicode"),
    pytest.param('unit =~ "(?i)k"', {"unit": "\u212a"}, True, id="case-folding-kelvin-sign"),
    pytest.param('city !~ "(?i)ÉCOLE"', {"city": "École"}, False, id="negative-case-folding"),
]


def _is_param(case: Any) -> bool:
    """Whether a table row is a pytest.param (a NamedTuple, so not told apart by type)."""
    return hasattr(case, "marks")


def _case_id(case: Any) -> str:
    if _is_param(case):
        return str(case.id)
    text, labels, _ = case
    return f"{text.strip()}|{sorted(labels.items())}"


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    CASES,
    ids=[_case_id(c) for c in CASES],
)
def test_a_matcher_accepts_exactly_the_label_sets_alertmanager_accepts(
    text: str, labels: dict[str, str], expected: bool
) -> None:
    assert matchers.parse(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alertname", "cannot parse matcher"),
        ('alertname ~= "APIDown"', "cannot parse matcher"),
        ('alertname == "APIDown"', "cannot parse matcher"),
        ('= "APIDown"', "cannot parse matcher"),
        ('team = "unterminated', "cannot parse matcher"),
        ('team = "sre" extra', "cannot parse matcher"),
        ('team = "sre"x', "cannot parse matcher"),
        ('team = s"re', "cannot parse matcher"),
        ('team = "a"b"', "cannot parse matcher"),
        ('team =~ "(unclosed"', "invalid regex"),
        ('team =~ "[z-a]"', "invalid regex"),
        ('team !~ "*"', "invalid regex"),
    ],
)
def test_a_malformed_matcher_is_refused_with_a_message_that_shows_it(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        matchers.parse(text)
    # The message quotes what was written (or the regex), so the author finds it.
    shown = text if message == "cannot parse matcher" else text.split('"')[1]
    assert repr(shown)[1:-1] in str(caught.value)


def test_a_syntax_error_says_which_forms_are_expected() -> None:
    with pytest.raises(ValueError, match=r"= != =~ !~"):
        matchers.parse("alertname ~ APIDown")


def test_an_empty_text_is_no_matcher_and_so_not_one() -> None:
    assert matchers.parse_matchers("").matchers == ()
    with pytest.raises(ValueError, match="expected one matcher in '', found 0"):
        matchers.parse("")


@pytest.mark.parametrize("text", ['1team = "sre"', 'team-name = "sre"', 'k8s.namespace = "prod"'])
def test_a_utf8_label_name_is_refused_by_the_classic_syntax_only(text: str) -> None:
    with pytest.raises(ValueError, match="cannot parse matcher"):
        matchers.parse(text, Syntax.CLASSIC)
    for syntax in (Syntax.UTF8, Syntax.FALLBACK):
        parsed = matchers.parse_matchers(text, syntax)
        assert [m.name for m in parsed.matchers] == [text.split(" ", maxsplit=1)[0]]
        assert parsed.warning is None


@pytest.mark.parametrize(
    "regex",
    [
        r"(a)\1", r"(?P<x>a)(?P=x)", "foo(?=bar)", "foo(?!bar)", "(?<=foo)bar", "(?<!foo)bar",
        r"a\Z", "a++", "(?>a)", "a**", r"\C", r"(?P<é>a)", r"[[:alpha:]]\C",
    ],
)  # fmt: skip
def test_regexes_alertmanager_cannot_run_are_refused(regex: str) -> None:
    # Back-references, look-arounds, \Z, possessive and atomic groups are not RE2; \C
    # and odd group names are RE2 but not Go. Accepting them would make a rule mean
    # something Alertmanager cannot mean.
    for op in (Op.RE, Op.NRE):
        with pytest.raises(ValueError, match="invalid regex"):
            Matcher.make("instance", op, regex)


def test_a_look_around_written_in_a_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid regex"):
        matchers.parse('instance !~ "foo(?!bar)"')


def test_a_comma_list_in_one_string_is_several_matchers() -> None:
    # Read as one matcher, `severity!=info,alertname=DiskFull` would match nearly everything.
    for text in ("severity!=info,alertname=DiskFull", '{severity!="info", alertname="DiskFull"}'):
        parsed = matchers.parse_matchers(text)
        assert [str(m) for m in parsed.matchers] == ['severity!="info"', 'alertname="DiskFull"']
        assert not matchers.match_all(parsed.matchers, {"alertname": "APIDown"})
        assert matchers.match_all(parsed.matchers, {"alertname": "DiskFull"})
    with pytest.raises(ValueError, match="found 2"):
        matchers.parse("severity!=info,alertname=DiskFull")


def test_an_unquoted_regex_is_unescaped_and_the_fallback_says_how_to_write_it() -> None:
    parsed = matchers.parse_matchers(r"instance=~api\\.example\\.com")
    [m] = parsed.matchers
    assert m.value == r"api\.example\.com"
    assert parsed.warning is not None
    assert r'{instance=~"api\\.example\\.com"}' in parsed.warning
    # The suggested form reads the same in every syntax, without a warning.
    for syntax in Syntax:
        again = matchers.parse_matchers(r'{instance=~"api\\.example\\.com"}', syntax)
        assert again.matchers == (m,)
        assert again.warning is None


def test_matching_cost_grows_with_the_value_not_exponentially() -> None:
    # Python's `re` needs about 2^n steps for this; RE2 is linear. With `re`, 100 a's
    # would not finish in a lifetime; here it is immediate (the suite's timeout guards).
    m = matchers.parse('x =~ "(a+)+b"')
    assert not m.matches({"x": "a" * 100_000 + "c"})
    assert matchers.parse('x =~ "(a|aa)*"').matches({"x": "a" * 100_000})


def test_a_regex_on_an_equality_matcher_is_just_text() -> None:
    m = matchers.parse('instance = "(a)\\\\1"')
    assert m.matches({"instance": "(a)\\1"})
    assert not m.matches({"instance": "aa"})


@pytest.mark.parametrize(
    ("is_regex", "is_equal", "op", "matching", "not_matching"),
    [
        (False, True, Op.EQ, "prod", "prod-2"),
        (False, False, Op.NE, "dev", "prod"),
        (True, True, Op.RE, "prod-2", "preprod"),
        (True, False, Op.NRE, "preprod", "prod-2"),
    ],
)
def test_a_silence_matcher_from_the_api_keeps_its_operator(
    is_regex: bool, is_equal: bool, op: Op, matching: str, not_matching: str
) -> None:
    value = "prod-[0-9]+" if is_regex else "prod"
    m = matchers.from_silence(
        {"name": "namespace", "value": value, "isRegex": is_regex, "isEqual": is_equal}
    )
    assert (m.name, m.op, m.value) == ("namespace", op, value)
    if is_regex and is_equal:
        matching, not_matching = "prod-2", "prod-2x"
    if is_regex and not is_equal:
        matching, not_matching = "prod-2x", "prod-2"
    assert m.matches({"namespace": matching})
    assert not m.matches({"namespace": not_matching})


def test_a_silence_matcher_with_a_utf8_label_name_is_evaluated() -> None:
    # Alertmanager >= 0.27 stores such silences; refusing them would drop the silence.
    m = matchers.from_silence({"name": "k8s.namespace", "value": "prod"})
    assert m.matches({"k8s.namespace": "prod"})
    assert not m.matches({"k8s.namespace": "dev"})


def test_a_silence_matcher_without_is_equal_is_positive_as_in_older_alertmanagers() -> None:
    m = matchers.from_silence({"name": "job", "value": "api.*", "isRegex": True})
    assert m.op is Op.RE
    assert m.matches({"job": "api-server"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "job", "isRegex": False}, "string name and value"),
        ({"name": 3, "value": "x"}, "string name and value"),
        ({"name": "job", "value": "(", "isRegex": True}, "invalid regex"),
        ({"name": "", "value": "x"}, "invalid label name"),
        ({"name": "job", "value": "x", "isRegex": "yes"}, "true or false"),
    ],
)
def test_a_broken_silence_matcher_is_a_value_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        matchers.from_silence(data)


@pytest.mark.parametrize(
    "value", ["plain", 'with "quotes"', "back\\slash", "two\nlines", "", "ünï"]
)
def test_a_matcher_prints_as_text_that_parses_back_to_itself(value: str) -> None:
    # /api/v1/rules shows matchers this way; copying one into a rule must mean the same.
    for op in Op:
        m = Matcher.make("label", op, value if op in (Op.EQ, Op.NE) else "x|y")
        assert matchers.parse(str(m)) == m


def test_all_matchers_must_match() -> None:
    ms = [matchers.parse('alertname = "APIDown"'), matchers.parse('namespace =~ "prod|staging"')]
    assert matchers.match_all(ms, {"alertname": "APIDown", "namespace": "prod"})
    assert not matchers.match_all(ms, {"alertname": "APIDown", "namespace": "dev"})
    assert matchers.match_all([], {"anything": "goes"})


# --------------------------------------------------------------------------- real Alertmanager

SILENCE_POLL_SECONDS = 10.0


def _api_matcher(m: Matcher) -> dict[str, Any]:
    """Our Matcher as Alertmanager 0.25's API v2 silence matcher JSON."""
    return {
        "name": m.name,
        "value": m.value,
        "isRegex": m.op in (Op.RE, Op.NRE),
        "isEqual": m.op in (Op.EQ, Op.RE),
    }


def _plain(cases: list[Any]) -> list[tuple[str, dict[str, str]]]:
    """(text, labels) of every table row, pytest.param or plain tuple."""
    out = []
    for c in cases:
        values = c.values if _is_param(c) else c
        out.append((values[0], values[1]))
    return out


def _silenced_by_alertmanager(
    am: servers.AlertmanagerServer, prefix: str, cases: list[tuple[str, dict[str, str]]]
) -> dict[int, bool]:
    """For each case: one alert (its labels + case=prefix-i) and one silence
    (case=prefix-i plus the parsed matcher); which alerts does Alertmanager mute?"""
    for i, (text, _) in enumerate(cases):
        am.create_silence(
            [{"name": "case", "value": f"{prefix}-{i}"}, _api_matcher(matchers.parse(text))]
        )
    # A control case that surely matches, to know when silences have been applied.
    am.create_silence({"case": f"{prefix}-control"})
    am.post_alerts(
        [{"labels": {**labels, "case": f"{prefix}-{i}"}} for i, (_, labels) in enumerate(cases)]
        + [{"labels": {"case": f"{prefix}-control"}}]
    )
    deadline = time.monotonic() + SILENCE_POLL_SECONDS
    while True:
        seen = {
            a["labels"]["case"]: bool(a["status"]["silencedBy"])
            for a in am.get_alerts(filter=[f'case=~"{prefix}-.*"'])
        }
        if seen.get(f"{prefix}-control") and len(seen) == len(cases) + 1:
            return {i: seen[f"{prefix}-{i}"] for i in range(len(cases))}
        assert time.monotonic() < deadline, f"silences not applied in time: {seen}"
        time.sleep(0.1)


def _disagreements(
    cases: list[tuple[str, dict[str, str]]],
    alertmanager_says: Mapping[int, bool],
    syntax: Syntax = Syntax.FALLBACK,
) -> list[str]:
    return [
        f"{text!r} on {labels!r}: ours {ours}, alertmanager {alertmanager_says[i]}"
        for i, (text, labels) in enumerate(cases)
        if (ours := matchers.parse(text, syntax).matches(labels)) != alertmanager_says[i]
    ]


def test_alertmanager_silences_exactly_the_alerts_our_matchers_match(
    alertmanager: servers.AlertmanagerServer,
) -> None:
    cases = _plain(CASES)
    verdicts = _silenced_by_alertmanager(alertmanager, "agree", cases)
    assert _disagreements(cases, verdicts) == []
    # Not vacuous: the table has both verdicts.
    assert set(verdicts.values()) == {True, False}


def test_alertmanager_and_our_regexes_agree_on_label_values_with_newlines(
    alertmanager: servers.AlertmanagerServer,
) -> None:
    cases = [('env =~ "prod"', {"env": "prod\n"}), ('x =~ ".*"', {"x": "a\nb"})]
    verdicts = _silenced_by_alertmanager(alertmanager, "newline", cases)
    assert _disagreements(cases, verdicts) == []


# Alertmanager parses matcher text itself in the `filter` of GET /api/v2/alerts; a filter
# (unlike a silence) requires `=`/`=~` labels to be present, so these cases all carry them.
PARSE_CASES: list[Any] = [
    (r'summary = "say \"hi\""', {"summary": 'say "hi"'}),
    (r'summary = "say \"hi\""', {"summary": "say hi"}),
    (r'path = "C:\\temp"', {"path": "C:\\temp"}),
    (r'text = "two\nlines"', {"text": "two\nlines"}),
    ("namespace=~prod|staging", {"namespace": "staging"}),
    ("namespace=~prod|staging", {"namespace": "preprod"}),
    ('  alertname   =~   "API.*"  ', {"alertname": "APIDown"}),
    ('namespace !~ "prod|staging"', {"namespace": "staging"}),
    ('label = "ünïcödé"', {"label": "ünïcödé"}),
    (r'instance =~ "api\.example\.com"', {"instance": "api.example.com"}),
    pytest.param(r'instance =~ "api\.example\.com"', {"instance": "apixexample.com"}),
    pytest.param(r'instance =~ "host\d+"', {"instance": "host12"}),
    pytest.param(r'instance = "a\tb"', {"instance": "a\\tb"}),
    (r"instance=~api\\.example\\.com", {"instance": "api.example.com"}),
    (r"instance=~api\\.example\\.com", {"instance": "api\\.example\\.com"}),
    (r"trickier==\\=\=\"", {"trickier": '=\\=\\="'}),
]


def _filtered_by_alertmanager(
    am: servers.AlertmanagerServer, prefix: str, cases: list[tuple[str, dict[str, str]]]
) -> dict[int, bool]:
    am.post_alerts(
        [{"labels": {**labels, "case": f"{prefix}-{i}"}} for i, (_, labels) in enumerate(cases)]
    )
    return {
        i: bool(am.get_alerts(filter=[f'case="{prefix}-{i}"', text]))
        for i, (text, _) in enumerate(cases)
    }


def test_alertmanager_reads_matcher_text_as_we_do(
    alertmanager: servers.AlertmanagerServer,
) -> None:
    # Alertmanager 0.25 (Debian's) reads a filter with its classic parser.
    cases = _plain(PARSE_CASES)
    verdicts = _filtered_by_alertmanager(alertmanager, "parse", cases)
    assert _disagreements(cases, verdicts, Syntax.CLASSIC) == []
    assert set(verdicts.values()) == {True, False}
