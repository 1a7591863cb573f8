"""The Alertmanager webhook under bad input, oversize input, wrong credentials and overload.

Every bad body gets a clear 4xx, is counted in
`remediator_webhook_requests_total{source,code}` and
`remediator_rejected_inputs_total{source,kind}`, leaves nothing in the journal or the audit,
and the daemon goes on accepting good payloads. No input makes it answer 500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import html
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz
from tests.browser import Page, chromium
from tests.harness import Harness, am_alert, payload, resolved

RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.deployment }}"
        target: "{{ labels.namespace }}/{{ labels.deployment }}"
"""
SOURCE = "alertmanager"


def api_down(deployment: str = "api", **fields: Any) -> dict[str, Any]:
    """A firing APIDown alert (its own fingerprint), with wire fields replaced by `fields`."""
    return {**am_alert("APIDown", namespace="prod", deployment=deployment), **fields}


def body(*alerts: dict[str, Any], **fields: Any) -> bytes:
    """A v4 body around alerts (one APIDown by default), top-level fields replaced."""
    doc = payload(api_down())
    if alerts:
        doc["alerts"] = list(alerts)
    return json.dumps({**doc, **fields}).encode()


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


async def journal_rows(h: Harness) -> int:
    """Alerts in the durable journal (the SQLite file), acknowledged and not yet finished."""
    count: int = await h.daemon.db.read(
        lambda c: c.execute("SELECT count(*) FROM journal").fetchone()[0]
    )
    return count


async def rejected_total(h: Harness) -> float:
    """All rejected inputs, whatever their kind."""
    total = 0.0
    for family in h.daemon.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "remediator_rejected_inputs_total":
                total += sample.value
    return total


async def assert_rejected_without_trace(h: Harness, *, code: int, kind: str) -> None:
    """Counted once by code and kind; nothing journaled, nothing decided."""
    await h.settle()
    assert await h.metric("remediator_webhook_requests_total", source=SOURCE, code=str(code)) == 1
    assert await h.metric("remediator_rejected_inputs_total", source=SOURCE, kind=kind) == 1
    assert await rejected_total(h) == 1
    assert await journal_rows(h) == 0
    assert await h.decisions() == []


async def assert_still_serving(h: Harness, **headers: str) -> None:
    """A good payload is still accepted and decided."""
    resp = await h.post(payload(api_down("still-here")), headers=headers)
    assert resp.status == 200, await resp.text()
    await h.settle()
    [d] = await h.decisions()
    assert (d["outcome"], d["target"]) == ("dry_run", "log prod/still-here")


@dataclasses.dataclass(frozen=True)
class Bad:
    body: bytes
    status: int
    kind: str
    says: str
    """A piece of the error message: it tells the sender what is wrong."""


def _case(id_: str, bad: Bad) -> Any:
    return pytest.param(bad, id=id_)


_A = api_down()
BAD_BODIES = [
    # Not JSON at all: 400.
    _case(
        "malformed JSON", Bad(b'{"version": "4", "alerts": [', 400, "malformed", "malformed JSON")
    ),
    _case("empty body", Bad(b"", 400, "malformed", "malformed JSON")),
    _case("not UTF-8", Bad(b'{"version": "4", "receiver": "\xff\xfe"}', 400, "malformed", "UTF-8")),
    _case("100000 open brackets", Bad(b"[" * 100_000, 400, "malformed", "nested too deeply")),
    _case(
        "deep nesting inside a payload",
        Bad(b'{"version": "4", "alerts": ' + b"[" * 50_000, 400, "malformed", "nested"),
    ),
    _case(
        "a number of 5000 digits",
        Bad(b'{"version": "4", "alerts": [], "x": ' + b"7" * 5000 + b"}", 400, "malformed", "JSON"),
    ),
    # JSON, but not a v4 payload: 422.
    _case("a JSON list", Bad(b"[]", 422, "schema", "object")),
    _case("a JSON string", Bad(b'"alerts"', 422, "schema", "object")),
    _case("JSON null", Bad(b"null", 422, "schema", "object")),
    _case("version 3", Bad(body(version="3"), 422, "schema", "version")),
    _case("version as a number", Bad(body(version=4), 422, "schema", "version")),
    _case(
        "no version",
        Bad(json.dumps(without(payload(_A), "version")).encode(), 422, "schema", "version"),
    ),
    _case(
        "no alerts",
        Bad(json.dumps(without(payload(_A), "alerts")).encode(), 422, "schema", "alerts"),
    ),
    _case("alerts not a list", Bad(body(alerts={"0": _A}), 422, "schema", "alerts")),
    _case("an alert that is a string", Bad(body(alerts=["APIDown"]), 422, "schema", "alerts[0]")),
    _case("labels not an object", Bad(body(api_down(labels=["APIDown"])), 422, "schema", "labels")),
    _case(
        "a label value that is a number",
        Bad(
            body(api_down(labels={"alertname": "APIDown", "replicas": 3})),
            422,
            "schema",
            "replicas",
        ),
    ),
    _case(
        "a label name with a control character",
        Bad(
            body(api_down(labels={"alertname": "APIDown", "bad\nname": "x"})),
            422,
            "schema",
            "label name",
        ),
    ),
    _case(
        "129 labels",
        Bad(
            body(api_down(labels={"alertname": "APIDown"} | {f"l{i}": "v" for i in range(128)})),
            422,
            "schema",
            "at most",
        ),
    ),
    _case(
        "no alertname",
        Bad(body(api_down(labels={"namespace": "prod"})), 422, "schema", "alertname"),
    ),
    _case(
        "an empty alertname",
        Bad(body(api_down(labels={"alertname": ""})), 422, "schema", "alertname"),
    ),
    _case("status bogus", Bad(body(api_down(status="bogus")), 422, "schema", "status")),
    _case("no status", Bad(body(without(_A, "status")), 422, "schema", "status")),
    _case("no startsAt", Bad(body(without(_A, "startsAt")), 422, "schema", "startsAt")),
    _case(
        "startsAt not a time", Bad(body(api_down(startsAt="yesterday")), 422, "schema", "startsAt")
    ),
    _case("startsAt a number", Bad(body(api_down(startsAt=1800000000)), 422, "schema", "startsAt")),
    _case(
        "startsAt without a time zone",
        Bad(body(api_down(startsAt="2027-01-15T11:50:00")), 422, "schema", "startsAt"),
    ),
    _case(
        "startsAt before year 1 in UTC",
        Bad(body(api_down(startsAt="0001-01-01T00:00:00+01:00")), 422, "schema", "startsAt"),
    ),
    _case(
        "endsAt after year 9999 in UTC",
        Bad(body(api_down(endsAt="9999-12-31T23:59:59-01:00")), 422, "schema", "endsAt"),
    ),
    _case("endsAt not a time", Bad(body(api_down(endsAt="soon")), 422, "schema", "endsAt")),
    _case(
        "an annotation that is an object",
        Bad(body(api_down(annotations={"summary": {"x": 1}})), 422, "schema", "annotations"),
    ),
    _case(
        "a fingerprint that is a path",
        Bad(body(api_down(fingerprint="../../etc/passwd")), 422, "schema", "fingerprint"),
    ),
    _case(
        "a fingerprint that is a number",
        Bad(body(api_down(fingerprint=42)), 422, "schema", "fingerprint"),
    ),
]


@pytest.mark.parametrize("bad", BAD_BODIES)
async def test_a_bad_body_gets_a_clear_4xx_is_counted_and_leaves_no_trace(
    tmp_path: Path, bad: Bad
) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.post(bad.body)
        assert resp.status == bad.status, await resp.text()
        answer = await resp.json()
        assert answer["status"] == "error"
        assert bad.says in answer["error"], answer["error"]
        await assert_rejected_without_trace(h, code=bad.status, kind=bad.kind)
        await assert_still_serving(h)


async def test_a_body_above_max_body_bytes_is_refused_with_413(tmp_path: Path) -> None:
    big = body(api_down(annotations={"description": "x" * 4000}))
    async with Harness(tmp_path, rules=RULES, config="intake: {max_body_bytes: 2048}\n") as h:
        resp = await h.post(big)
        assert resp.status == 413
        assert "intake.max_body_bytes" in (await resp.json())["error"]
        await assert_rejected_without_trace(h, code=413, kind="too_large")
        await assert_still_serving(h)


async def test_a_chunked_body_without_a_length_is_bounded_too(tmp_path: Path) -> None:
    big = body(api_down(annotations={"description": "x" * 4000}))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    async with Harness(tmp_path, rules=RULES, config="intake: {max_body_bytes: 2048}\n") as h:
        resp = await h.client.post(
            "/webhook/alertmanager", data=chunks(), headers={"Content-Type": "application/json"}
        )
        await resp.read()
        assert resp.status == 413
        await assert_rejected_without_trace(h, code=413, kind="too_large")
        await assert_still_serving(h)


async def test_more_alerts_than_max_alerts_per_request_is_refused_with_413(tmp_path: Path) -> None:
    config = "intake: {max_alerts_per_request: 3}\n"
    async with Harness(tmp_path, rules=RULES, config=config) as h:
        resp = await h.post(payload(*(api_down(f"api-{i}") for i in range(4))))
        assert resp.status == 413
        assert "at most 3" in (await resp.json())["error"]
        await assert_rejected_without_trace(h, code=413, kind="too_large")
        resp = await h.post(payload(*(api_down(f"api-{i}") for i in range(3))))
        assert resp.status == 200
        await h.settle()
        assert len(await h.decisions()) == 3


BEARER = "auth: {webhook_bearer_token_env: TOK}\n"
BASIC = "auth: {webhook_basic_user: alertmanager, webhook_basic_password_env: PW}\n"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no header"),
        pytest.param("Bearer wrong-token", id="wrong token"),
        pytest.param("Bearer ", id="empty token"),
        pytest.param("s3cret-token", id="token without scheme"),
        pytest.param(basic("alertmanager", "s3cret-token"), id="basic instead of bearer"),
    ],
)
async def test_a_webhook_without_the_bearer_token_is_refused_with_401(
    tmp_path: Path, authorization: str | None
) -> None:
    async with Harness(tmp_path, rules=RULES, config=BEARER, env={"TOK": "s3cret-token"}) as h:
        headers = {} if authorization is None else {"Authorization": authorization}
        resp = await h.post(payload(api_down()), headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        await assert_rejected_without_trace(h, code=401, kind="unauthorized")
        await assert_still_serving(h, Authorization="Bearer s3cret-token")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no header"),
        pytest.param(basic("alertmanager", "wrong"), id="wrong password"),
        pytest.param(basic("someone", "pw-1"), id="wrong user"),
        pytest.param("Basic not-base64!!", id="not base64"),
        pytest.param("Basic " + base64.b64encode(b"alertmanager").decode(), id="no colon"),
        pytest.param("Bearer pw-1", id="bearer instead of basic"),
    ],
)
async def test_a_webhook_without_the_basic_credentials_is_refused_with_401(
    tmp_path: Path, authorization: str | None
) -> None:
    async with Harness(tmp_path, rules=RULES, config=BASIC, env={"PW": "pw-1"}) as h:
        headers = {} if authorization is None else {"Authorization": authorization}
        resp = await h.post(payload(api_down()), headers=headers)
        assert resp.status == 401
        await assert_rejected_without_trace(h, code=401, kind="unauthorized")
        await assert_still_serving(h, Authorization=basic("alertmanager", "pw-1"))


async def test_a_get_on_the_webhook_is_405_and_changes_nothing(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.client.get("/webhook/alertmanager")
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert await journal_rows(h) == 0
        await assert_still_serving(h)


async def test_a_resolved_only_payload_is_accepted_and_decides_nothing(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.post(payload(resolved(api_down())))
        assert resp.status == 200
        assert (await resp.json())["accepted"] == 1
        await h.settle()
        assert await h.decisions() == []
        assert (
            await h.metric("remediator_alerts_received_total", source=SOURCE, status="resolved")
            == 1
        )
        assert await journal_rows(h) == 0, "a resolved alert must not stay in the journal"


async def test_an_alert_with_utf8_label_names_is_accepted_and_matched(tmp_path: Path) -> None:
    # Alertmanager >= 0.27 sends label names outside [a-zA-Z_][a-zA-Z0-9_]*.
    rules = """
rules:
  - name: otel-restart
    matchers: ['{alertname="APIDown", "k8s.namespace.name"="prod"}']
    action: {type: log, params: {message: "restart"}}
"""
    async with Harness(tmp_path, rules=rules) as h:
        await h.fire(am_alert("APIDown", **{"k8s.namespace.name": "prod", "service.name": "api"}))
        [row] = await h.decisions()
        assert (row["rule"], row["outcome"]) == ("otel-restart", "dry_run")
        assert row["alert"]["labels"]["k8s.namespace.name"] == "prod"


async def test_an_alert_without_a_fingerprint_gets_a_stable_one(tmp_path: Path) -> None:
    first = without(api_down(), "fingerprint")
    # The same label set in another key order, as a second Alertmanager of an HA pair may send.
    again = {**first, "labels": dict(reversed(list(first["labels"].items())))}
    async with Harness(tmp_path, rules=RULES) as h:
        await h.fire(first)
        await h.fire(again)
        [d] = await h.decisions()
        assert d["outcome"] == "dry_run"
        assert re.fullmatch(r"[0-9a-f]{16}", d["fingerprint"])
        assert await h.metric("remediator_duplicates_total", source=SOURCE) == 1


async def test_an_alert_with_a_lone_surrogate_is_refused_or_audited_never_lost(
    tmp_path: Path,
) -> None:
    raw = body(api_down(deployment="api")).replace(b'"api"', b'"api\\ud800"')
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.post(raw)
        assert resp.status < 500
        await h.settle()
        if resp.status == 200:
            assert len(await h.decisions()) == 1
            assert await journal_rows(h) == 0
        else:
            assert await journal_rows(h) == 0
            assert await rejected_total(h) == 1


# -- backpressure -------------------------------------------------------------------


async def stop_engine(h: Harness) -> None:
    """Stop the engine from consuming (as if it were stuck): the journal fills up."""
    task = h.daemon._engine_task
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def start_engine(h: Harness) -> None:
    h.daemon._engine_task = asyncio.create_task(
        h.daemon.engine.run(h.daemon.settings.workers), name="engine"
    )


async def test_past_the_backlog_limit_the_webhook_answers_503_and_journals_nothing_more(
    tmp_path: Path,
) -> None:
    alerts = [api_down(f"api-{i}") for i in range(13)]
    async with Harness(tmp_path, rules=RULES, config="intake: {backlog_limit: 10}\n") as h:
        await stop_engine(h)
        for a in alerts[:9]:
            assert (await h.post(payload(a))).status == 200
        # A request that would cross the bound is refused whole, not in part.
        resp = await h.post(payload(alerts[9], alerts[10]))
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert "intake.backlog_limit" in (await resp.json())["error"]
        assert (await h.post(payload(alerts[11]))).status == 200
        resp = await h.post(payload(alerts[12]))
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0

        assert await journal_rows(h) == 10
        assert await h.metric("remediator_webhook_requests_total", source=SOURCE, code="503") == 2
        assert await h.metric("remediator_webhook_requests_total", source=SOURCE, code="200") == 10
        ready = await h.client.get("/readyz")
        assert ready.status == 503
        assert "journal backlog full" in (await ready.json())["problems"]

        start_engine(h)
        await h.settle()
        decided = {d["fingerprint"] for d in await h.decisions()}
        accepted = [*alerts[:9], alerts[11]]
        assert decided == {a["fingerprint"] for a in accepted}
        assert await journal_rows(h) == 0
        assert (await h.client.get("/readyz")).status == 200
        # The sender's retry of a refused alert goes through once there is room.
        await h.fire(alerts[12])
        assert len(await h.decisions()) == 11


# -- fuzzing ------------------------------------------------------------------------

json_values = fuzz.json_values(
    samples=["firing", "resolved", "4", "APIDown", "", "2027-01-15T11:50:00Z"]
)


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    """A valid payload with a few values replaced, removed or added, sometimes cut short."""
    doc = payload(api_down(), api_down("web"))
    fuzz.mutate(draw, doc, times=draw(st.integers(1, 4)), values=json_values)
    return fuzz.garble(draw, json.dumps(doc).encode())


bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_payloads(),
)


def test_no_body_makes_the_webhook_answer_500_or_stop_serving(tmp_path: Path) -> None:
    # One daemon for the whole run, on a loop of our own: hypothesis drives a sync test.
    loop = asyncio.new_event_loop()
    h = Harness(tmp_path, rules=RULES, config="intake: {max_body_bytes: 4096}\n")
    loop.run_until_complete(h.start())
    answers: list[int] = []
    try:

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(raw=bodies)
        def post_anything(raw: bytes) -> None:
            resp = loop.run_until_complete(h.post(raw))
            answers.append(resp.status)
            assert resp.status < 500, (resp.status, raw[:200])

        post_anything()
        loop.run_until_complete(h.settle())
        assert loop.run_until_complete(h.client.get("/healthz")).status == 200
        webhook = {str(code) for code in answers}
        for code in webhook:
            counted = loop.run_until_complete(
                h.metric("remediator_webhook_requests_total", source=SOURCE, code=code)
            )
            assert counted == answers.count(int(code))
        refused = sum(1 for code in answers if 400 <= code < 500)
        assert loop.run_until_complete(rejected_total(h)) == refused
        before = len(loop.run_until_complete(h.decisions()))
        loop.run_until_complete(h.fire(api_down("after-the-fuzz")))
        after = loop.run_until_complete(h.decisions())
        assert len(after) == before + 1
        assert after[-1]["target"] == "log prod/after-the-fuzz"
    finally:
        loop.run_until_complete(h.stop())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


async def test_a_long_annotation_in_one_alert_loses_none_of_its_group(tmp_path: Path) -> None:
    # Alertmanager bounds neither annotations nor generatorURL (a long PromQL expression),
    # and never retries a 4xx: refusing the request would drop every alert of the group.
    long = "x" * 20_000
    group = body(
        api_down("api"),
        api_down("web", annotations={"description": long}, generatorURL="http://p/" + long),
    )
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.post(group)
        assert resp.status == 200, await resp.text()
        await h.settle()
        assert sorted(d["target"] for d in await h.decisions()) == ["log prod/api", "log prod/web"]
        assert await journal_rows(h) == 0


FORGED = json.dumps(payload(api_down("api")))[:-1] + ', "pad": "'
"""A webhook body a web page can make a browser post: a text/plain form sends
`name=value`, so a field named with the JSON up to an open string and valued `"}` ends
as the JSON of an alert (`..., "pad": "="}`)."""


async def test_a_web_page_cannot_make_a_browser_post_alerts_to_an_open_webhook(
    tmp_path: Path,
) -> None:
    # Listening on loopback with no webhook auth is the default, and a browser on this
    # machine reaches loopback: a page the SRE opens on any site could post alerts that
    # act (chromium's Local Network Access stops a page's fetch, not a form it submits).
    # A webhook never comes from a web page: what a browser sends for one is refused.
    async with Harness(tmp_path, rules=RULES) as h, chromium() as browser:
        hook = str(h.client.make_url("/webhook/alertmanager"))
        site = "http://attacker.example/"
        form = (
            f'<form method="POST" enctype="text/plain" action="{hook}">'
            f'<input name="{html.escape(FORGED, quote=True)}" value=\'"}}\'></form>'
            "<script>document.forms[0].submit()</script>"
        )
        page = await Page.open(browser, tmp_path)
        await page.pw.route(site, lambda route: route.fulfill(body=form, content_type="text/html"))
        async with page.pw.expect_response(hook) as answer:
            await page.pw.goto(site)
        assert (await answer.value).status == 403
        await h.settle()
        assert await journal_rows(h) == 0 and await h.decisions() == []
        assert (
            await h.metric("remediator_rejected_inputs_total", source=SOURCE, kind="cross_site")
            == 1
        )
        await assert_still_serving(h)
