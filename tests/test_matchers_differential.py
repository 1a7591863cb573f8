"""Our matchers against the real Alertmanager from Debian, on generated inputs.

Debian bookworm ships Alertmanager and amtool 0.25.0 (built with Go 1.19): the classic
parser only (the UTF-8 parser arrived in 0.27), so its verdicts are compared with our
`matchers_syntax: classic`.

- Matcher strings: `amtool check-config` on a route using each string must accept
  exactly the strings our rule loader accepts (many files per amtool run, one run per
  batch; hypothesis bounds the batches), and `amtool config routes show` must print the
  accepted ones as the matchers we read, in Alertmanager's canonical form.
- Silence matchers: Alertmanager's API v2 must accept exactly the silence matchers we can
  evaluate, and for the accepted ones `silencedBy` on an alert must agree with the
  daemon's silence check.

Known differences, kept out of the generators and documented in docs/matchers.md: Go 1.19
refuses `(?<name>…)` groups that RE2 and Go >= 1.22 accept; RE2's 8 MiB memory budget
refuses a few huge patterns Go compiles (`\\pL{1000}`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from remediator.matching import loader, matchers
from remediator.matching.matchers import Syntax
from remediator.models.alert import Alert
from tests import servers
from tests.harness import Harness

# Regex pieces: valid and invalid ones, RE2 syntax Python's `re` lacked, what Go refuses.
REGEX_TOKENS = [
    "a", "b", "é", "🙂", ".", "*", "+", "?", "|", "(", ")", "[", "]", "{", "}", "^", "$",
    "-", ",", " ", "\\", "\\d", "\\pL", "\\p{Greek}", "\\Q", "\\E", "\\C", "\\z", "\\Z",
    "\\.", "\\n", "\\\\", "(?i)", "(?s)", "(?:", "(?P<x>", "(?=", "[[:alpha:]]",
    "[[:^digit:]]", "{2}", "{,3}", "{2,1}", "{1001}", "++", "(?>",
]  # fmt: skip
regexes = st.lists(st.sampled_from(REGEX_TOKENS), max_size=6).map("".join)
# For silences, `\\Q` only with its `\\E`: Alertmanager validates a silence's regex
# unanchored, so `a\\Q…` without `\\E` is stored although it cannot be compiled anchored;
# Alertmanager 0.25 then fails every silence query (nothing in the batch would be
# silenced) and we fail closed on it (tests/test_silences.py has that case).
silence_regexes = st.lists(
    st.sampled_from([t for t in REGEX_TOKENS if t not in ("\\Q", "\\E")] + ["\\Qa.(\\E"]),
    max_size=6,
).map("".join)

# Matcher strings: the parser's edges (quotes, escapes, commas, braces, spaces Go's \s and
# TrimSpace disagree on, names only the UTF-8 syntax takes) around generated values.
NAMES = ["a", "alertname", "_x", "a:b", "a1", "1a", "a-b", "k8s.ns", "é", ""]
OPS = ["=", "!=", "=~", "!~", "==", "~", "=!", "!"]
SPACES = ["", "", " ", "  ", "\t", "\n", "\r", "\f", "\v", "\xa0", "\x85"]
VALUE_TOKENS = [*REGEX_TOKENS, '"', '\\"', "'", "`", "=", "!", "~", "λ"]
values = st.lists(st.sampled_from(VALUE_TOKENS), max_size=6).map("".join)
spaces = st.sampled_from(SPACES)


def _matcher_text(parts: tuple[str, ...], value: str, quoted: bool) -> str:
    s1, name, s2, op, s3, s4 = parts
    return f"{s1}{name}{s2}{op}{s3}" + (f'"{value}"' if quoted else value) + s4


one_matcher = st.builds(
    _matcher_text,
    st.tuples(spaces, st.sampled_from(NAMES), spaces, st.sampled_from(OPS), spaces, spaces),
    values,
    st.booleans(),
)
matcher_strings = st.one_of(
    st.builds(
        lambda ms, sep, braces, trailing: (
            ("{" if braces else "")
            + sep.join(ms)
            + ("," if trailing else "")
            + ("}" if braces else "")
        ),
        st.lists(one_matcher, max_size=3),
        st.sampled_from([",", ", ", " , "]),
        st.booleans(),
        st.booleans(),
    ),
    st.text(alphabet='ab=!~"\\,{} \t\n.*(|)[]é🙂\xa0', max_size=16),
)

BATCH = 80
BATCHES = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each step runs amtool or HTTP
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Hypothesis settings for tests whose every example is a batch against a real program."""


def _yaml(data: Any) -> str:
    """JSON (which is YAML) with the characters YAML reads as line breaks escaped."""
    text = json.dumps(data, ensure_ascii=False)
    for c in "\x85\u2028\u2029\ufeff":
        text = text.replace(c, f"\\u{ord(c):04x}")
    return text


def _amtool_verdicts(directory: Path, strings: list[str]) -> dict[str, bool]:
    """amtool check-config on one config per string (a route matching on it)."""
    files = []
    for i, s in enumerate(strings):
        path = directory / f"am{i}.yml"
        path.write_text(
            _yaml(
                {
                    "route": {"receiver": "r", "routes": [{"receiver": "r", "matchers": [s]}]},
                    "receivers": [{"name": "r"}],
                }
            ),
            encoding="utf-8",
        )
        files.append(path.name)
    result = subprocess.run(
        [servers.AMTOOL_BIN, "check-config", *files],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = dict(re.findall(r"Checking '(am\d+\.yml)'\s+(SUCCESS|FAILED)", result.stdout))
    assert len(found) == len(strings), result.stdout[-2000:] + result.stderr[-2000:]
    return {s: found[f"am{i}.yml"] == "SUCCESS" for i, s in enumerate(strings)}


def _amtool_readings(directory: Path, strings: list[str]) -> list[str]:
    """What Alertmanager read each string as: one route per string, and the routing tree
    `amtool config routes show` prints (each route's matchers sorted, canonical form)."""
    path = directory / "routes.yml"
    routes = [{"receiver": "r", "matchers": [s]} for s in strings]
    path.write_text(
        _yaml({"route": {"receiver": "r", "routes": routes}, "receivers": [{"name": "r"}]}),
        encoding="utf-8",
    )
    result = subprocess.run(
        [servers.AMTOOL_BIN, "config", "routes", "show", f"--config.file={path}"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    # Routing tree:, ., the root route, then one line per route. Values print with \n
    # escaped, so split on \n only: a \r, \v or \x85 in a value is no line break (hence
    # bytes, not universal-newline text).
    out = result.stdout.decode("utf-8")
    lines = [line for line in out.split("\n") if line.strip()][3:]
    assert len(lines) == len(strings), out
    prefix = re.compile(r"^\s*[├└]── ")
    readings = [prefix.sub("", line).removesuffix("  receiver: r") for line in lines]
    return ["{}" if r == "default-route" else r for r in readings]


def _our_reading(text: str) -> str:
    """Our classic reading, sorted as Alertmanager sorts a config's matchers."""
    order = list(matchers.Op)
    ms = matchers.parse_matchers(text, Syntax.CLASSIC).matchers
    return matchers.format_all(sorted(ms, key=lambda m: (m.name, m.value, order.index(m.op))))


def _our_verdicts(directory: Path, strings: list[str]) -> dict[str, str | None]:
    """Our rule loader (what `remediator check` runs) on one rule per string: None when
    it loads, else the error. An `alertname` matcher keeps the rule from being empty."""
    out: dict[str, str | None] = {}
    for i, s in enumerate(strings):
        path = directory / f"rule{i}.yaml"
        rule = {
            "name": "r",
            "matchers": ['alertname="X"', s],
            "action": {"type": "log", "params": {"message": "m"}},
        }
        path.write_text(_yaml({"rules": [rule]}), encoding="utf-8")
        _, problems = loader.load_file(path, syntax=Syntax.CLASSIC)
        out[s] = "; ".join(p.message for p in problems) or None
    return out


def test_amtool_and_our_loader_accept_and_refuse_the_same_matcher_strings(
    tmp_path: Path,
) -> None:
    seen: list[bool] = []

    @settings(BATCHES, max_examples=4)
    @given(batch=st.lists(matcher_strings, min_size=BATCH, max_size=BATCH, unique=True))
    def agree(batch: list[str]) -> None:
        theirs = _amtool_verdicts(tmp_path, batch)
        ours = _our_verdicts(tmp_path, batch)
        seen.extend(theirs.values())
        disagreements = {
            s: f"amtool {'accepts' if theirs[s] else 'refuses'}, ours: {ours[s] or 'accepts'}"
            for s in batch
            if theirs[s] != (ours[s] is None)
        }
        assert disagreements == {}
        accepted = [s for s in batch if theirs[s]]
        readings = dict(zip(accepted, _amtool_readings(tmp_path, accepted), strict=True))
        assert {s: (r, _our_reading(s)) for s, r in readings.items() if r != _our_reading(s)} == {}

    agree()
    assert set(seen) == {True, False}  # both verdicts were exercised


# Hand-picked strings where a naive parser goes wrong; always checked.
EDGES = [
    "severity!=info,alertname=DiskFull",
    "{severity!=info, alertname=DiskFull}",
    r"instance=~api\\.example\\.com",
    'a="b",,c="d"',
    ",a=b",
    "a=b,",
    "{}",
    "",
    "{",
    "}",
    "a=b\xa0",
    "a=b\xa0,c=d",
    "a=b\v,c=d\v",
    "a=b\x85 ,c=d",
    "a:b=c",
    "a=~(?i)straße",
    r'a=~"\pL+"',
    r'a=~"x{,3}"',
    r'a=~"a\Z"',
    r'a=~"a++"',
    r'a=~"\C"',
    r'a=~"(?P<x>a)(?P<x>b)"',
    r'a=~"(?P<é>a)"',
    'a="\\"',
    'a=b"',
    'a= "b" ',
    "a\t=\n~b",
    "a=~~~",
]


def test_amtool_and_our_loader_agree_on_the_edges(tmp_path: Path) -> None:
    theirs = _amtool_verdicts(tmp_path, EDGES)
    ours = _our_verdicts(tmp_path, EDGES)
    assert {s: ours[s] for s in EDGES if theirs[s] != (ours[s] is None)} == {}
    assert set(theirs.values()) == {True, False}
    accepted = [s for s in EDGES if theirs[s]]
    readings = dict(zip(accepted, _amtool_readings(tmp_path, accepted), strict=True))
    assert {s: (r, _our_reading(s)) for s, r in readings.items() if r != _our_reading(s)} == {}


# --------------------------------------------------------------------------- silences

LABEL_CHARS = "abAB.éÉ🙂 -\n"
label_values = st.text(alphabet=LABEL_CHARS, max_size=6)
silence_cases = st.tuples(
    st.sampled_from(["=", "!=", "=~", "!~"]),
    st.one_of(silence_regexes, label_values),
    label_values,
)
POLL_SECONDS = 10.0


def _post_silence(am: servers.AlertmanagerServer, matchers_json: list[dict[str, Any]]) -> bool:
    """Whether Alertmanager accepts the silence (400 is its refusal of a matcher)."""
    try:
        am.create_silence(matchers_json)
    except servers.ServerError as exc:
        assert "HTTP 400" in str(exc), exc
        return False
    return True


def _alertmanager_silenced(am: servers.AlertmanagerServer, prefix: str, n: int) -> dict[str, bool]:
    """silencedBy for alerts case=prefix-0..n-1 once Alertmanager has processed them all."""
    deadline = time.monotonic() + POLL_SECONDS
    while True:
        found = am.get_alerts(filter=[f'case=~"{prefix}-.*"'])
        states = {a["labels"]["case"]: a["status"] for a in found}
        if len(states) == n and all(s["state"] != "unprocessed" for s in states.values()):
            return {case: bool(s["silencedBy"]) for case, s in states.items()}
        assert time.monotonic() < deadline, f"Alertmanager did not process the alerts: {states}"
        time.sleep(0.1)


def test_alertmanager_and_the_daemon_agree_on_generated_silences(
    tmp_path: Path, alertmanager: servers.AlertmanagerServer
) -> None:
    loop = asyncio.new_event_loop()
    config = f"alertmanager: {{urls: [{alertmanager.url}], cache_ttl: 0s}}\n"
    h = Harness(tmp_path, rules="rules: []\n", config=config, now=time.time())
    loop.run_until_complete(h.start())
    batches = iter(range(1_000_000))
    verdicts: list[bool] = []
    try:

        @settings(BATCHES, max_examples=3)
        @given(cases=st.lists(silence_cases, min_size=40, max_size=40))
        def agree(cases: list[tuple[str, str, str]]) -> None:
            prefix = f"gen{next(batches)}"
            accepted: dict[str, tuple[str, str, str]] = {}
            refusals: list[str] = []
            for i, (op, value, label) in enumerate(cases):
                case = f"{prefix}-{i}"
                m = {"name": "v", "value": value, "isRegex": "~" in op, "isEqual": "!" not in op}
                try:
                    matchers.from_silence(m)
                    ours_ok = True
                except ValueError:
                    ours_ok = False
                theirs_ok = _post_silence(alertmanager, [{"name": "case", "value": case}, m])
                if ours_ok != theirs_ok:
                    refusals.append(f"{op} {value!r}: ours {ours_ok}, alertmanager {theirs_ok}")
                if theirs_ok:
                    accepted[case] = (op, value, label)
            assert refusals == []
            alertmanager.post_alerts(
                [
                    servers.alert("Gen", labels={"case": case, "v": label})
                    for case, (_, _, label) in accepted.items()
                ]
            )
            theirs = _alertmanager_silenced(alertmanager, prefix, len(accepted))
            ours = loop.run_until_complete(_daemon_silenced(h, accepted))
            verdicts.extend(theirs.values())
            assert {c: (ours[c], accepted[c]) for c in accepted if ours[c] != theirs[c]} == {}

        agree()
    finally:
        loop.run_until_complete(h.stop())
        loop.close()
    assert set(verdicts) == {True, False}


async def _daemon_silenced(h: Harness, cases: dict[str, tuple[str, str, str]]) -> dict[str, bool]:
    """The daemon's own silence guard (the one the engine asks before acting)."""
    checker = h.daemon.engine.silences
    assert checker is not None
    # The fake clock to the real time: Alertmanager's silences started at its real now.
    h.clock.advance(max(0.0, time.time() - h.clock.now()))
    out = {}
    for case, (_, _, label) in cases.items():
        verdict = await checker.check(_alert({"alertname": "Gen", "case": case, "v": label}))
        assert verdict is None or verdict[0] == "silenced", verdict
        out[case] = verdict is not None
    return out


def _alert(labels: dict[str, str]) -> Alert:
    now = dt.datetime.now(dt.UTC)
    return Alert(
        source="alertmanager", name=labels["alertname"], status="firing", labels=labels,
        annotations={}, starts_at=now, ends_at=None, fingerprint="0" * 16,
        generator_url="", received_at=now,
    )  # fmt: skip
