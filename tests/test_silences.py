"""Silence-aware remediation against a real Alertmanager (Debian's prometheus-alertmanager).

The daemon runs in process (tests/harness.py) with its clock started at the real time, so
that Alertmanager's notion of "active silence" and the daemon's agree; the silence cache is
expired by advancing that clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
import structlog
from aiohttp import web

from remediator.engine.silences import parse_silences
from remediator.intake.alertmanager import MAX_VALUE_LEN
from remediator.models.alert import Alert
from tests import servers, sns_fixtures
from tests.harness import Harness, am_alert, payload, resolved

MINUTE = 60.0

RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.deployment }}"
        target: "{{ labels.namespace }}/{{ labels.deployment }}"
    limits: {cooldown: 0s}
"""

HELD_RULES = RULES.replace("limits: {cooldown: 0s}", "limits: {cooldown: 0s}\n    for: 1m")

SILENCING_RULES = RULES.replace(
    "limits: {cooldown: 0s}", "limits: {cooldown: 0s}\n    silence_while_remediating: 10m"
)


def config(am: servers.AlertmanagerServer, *, on_error: str = "fail_closed") -> str:
    return f"""
    alertmanager:
      urls: ["{am.url}"]
      cache_ttl: 5s
      timeout: 1s
      on_error: {on_error}
    """


@pytest.fixture
def clean(alertmanager: servers.AlertmanagerServer) -> Iterator[servers.AlertmanagerServer]:
    """The module's Alertmanager with no active silence before and after the test."""

    def expire_all() -> None:
        for s in alertmanager.list_silences():
            if s["status"]["state"] != "expired":
                alertmanager.expire_silence(s["id"])

    expire_all()
    yield alertmanager
    expire_all()


def real_now_alert(**labels: str) -> dict[str, Any]:
    """APIDown that started a few minutes ago in real time (the clock starts at time.time())."""
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return am_alert("APIDown", starts_at=started, **labels)


async def silence(am: servers.AlertmanagerServer, matchers: list[dict[str, Any]]) -> str:
    return await asyncio.to_thread(am.create_silence, matchers, comment="deploy v2.1.0")


async def test_silences_skip_exactly_the_alerts_their_matchers_cover(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    await silence(
        clean, [{"name": "namespace", "value": "prod"}, {"name": "deployment", "value": "api"}]
    )
    await silence(clean, [{"name": "deployment", "value": "batch-.*", "isRegex": True}])
    await silence(
        clean,
        [
            {"name": "deployment", "value": "web"},
            {"name": "namespace", "value": "prod", "isEqual": False},
        ],
    )
    cases = {
        ("prod", "api"): "silenced",  # equality
        ("staging", "api"): "",  # the equality silence needs namespace=prod
        ("prod", "batch-7"): "silenced",  # regex
        ("prod", "batchx"): "",  # anchored: "batch-.*" does not match "batchx"
        ("staging", "web"): "silenced",  # negative matcher: namespace != prod
        ("prod", "web"): "",
    }
    async with Harness(tmp_path, rules=RULES, config=config(clean), now=time.time()) as h:
        sent = {}
        for namespace, deployment in cases:
            alert = real_now_alert(namespace=namespace, deployment=deployment)
            sent[alert["fingerprint"]] = (namespace, deployment)
            await h.fire(alert)
        rows = await h.decisions()
    got = {sent[d["fingerprint"]]: d for d in rows}
    assert {k: got[k]["reason"] for k in cases} == cases
    assert all(got[k]["outcome"] == ("skipped" if v else "dry_run") for k, v in cases.items())
    assert "deploy v2.1.0" in got[("prod", "api")]["detail"]


async def test_a_silence_created_after_the_webhook_still_prevents_the_action(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    async with Harness(
        tmp_path, rules=HELD_RULES, config=config(clean), now=time.time(), dry_run=False
    ) as h:
        alert = am_alert(
            "APIDown", namespace="prod", deployment="api", starts_at=dt.datetime.now(dt.UTC)
        )
        await h.fire(alert)  # held for `for: 1m`: checked and cached "not silenced" now
        assert await h.decisions() == []
        await silence(clean, [{"name": "deployment", "value": "api"}])
        await h.advance(MINUTE + 5)  # due by then, and the cache is older than cache_ttl
        [d] = await h.decisions()
        assert (d["outcome"], d["reason"]) == ("skipped", "silenced")
        assert (
            await h.metric(
                "remediator_actions_total", rule="api-restart", action="log", result="ok"
            )
            == 0
        )


async def test_when_alertmanager_is_down_fail_closed_keeps_hands_off(tmp_path: Path) -> None:
    am = servers.AlertmanagerServer(
        f"http://127.0.0.1:{servers.free_port()}/unused", log_level="warn"
    )
    await asyncio.to_thread(am.start)
    try:
        async with Harness(
            tmp_path, rules=RULES, config=config(am), now=time.time(), dry_run=False
        ) as h:
            await h.fire(real_now_alert(namespace="prod", deployment="api"))
            await asyncio.to_thread(am.stop)
            await h.advance(MINUTE)
            await h.fire(real_now_alert(namespace="prod", deployment="web"))
            first, second = await h.decisions()
            assert (first["outcome"], first["reason"]) == ("executed", "")
            assert (second["outcome"], second["reason"]) == ("skipped", "silence_check_failed")
            assert "fail_closed" in second["detail"]
            assert await h.metric("remediator_silence_checks_total", result="error") == 1
    finally:
        await asyncio.to_thread(am.stop)


async def test_when_alertmanager_is_down_fail_open_acts(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{servers.free_port()}"
    cfg = f"""
    alertmanager:
      urls: ["{unreachable}"]
      timeout: 1s
      on_error: fail_open
    """
    async with Harness(tmp_path, rules=RULES, config=cfg, now=time.time(), dry_run=False) as h:
        await h.fire(real_now_alert(namespace="prod", deployment="api"))
        [d] = await h.decisions()
        assert (d["outcome"], d["reason"]) == ("executed", "")
        assert await h.metric("remediator_silence_checks_total", result="error") == 1


async def test_an_ha_pair_is_asked_in_turn_when_the_first_is_down(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    await silence(clean, [{"name": "deployment", "value": "api"}])
    cfg = f"""
    alertmanager:
      urls: ["http://127.0.0.1:{servers.free_port()}", "{clean.url}"]
      timeout: 1s
    """
    async with Harness(tmp_path, rules=RULES, config=cfg, now=time.time()) as h:
        await h.fire(real_now_alert(namespace="prod", deployment="api"))
        [d] = await h.decisions()
        assert (d["outcome"], d["reason"]) == ("skipped", "silenced")


class LoopbackApp:
    """An aiohttp app of the test's own on a free loopback port (`url`), for `async with`."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.url = ""

    def routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = web.Application()
        self.routes(app.router)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = servers.free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class CountingProxy(LoopbackApp):
    """A reverse proxy in front of the real Alertmanager that counts the requests it passes."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.requests: list[str] = []

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/{tail:.*}", self._forward)

    async def _forward(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=await request.read()
            ) as resp,
        ):
            return web.Response(
                body=await resp.read(), status=resp.status, content_type=resp.content_type
            )


async def test_a_storm_refreshes_the_silence_list_with_one_request(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    async with CountingProxy(clean.url) as proxy:
        cfg = f"""
        alertmanager: {{urls: ["{proxy.url}"], cache_ttl: 5s}}
        limits: {{max_targets_per_window: 1000, max_actions_per_window: 1000}}
        """
        async with Harness(tmp_path, rules=RULES, config=cfg, now=time.time()) as h:
            storm = [real_now_alert(namespace="prod", deployment=f"d{i}") for i in range(200)]
            resp = await h.post({"version": "4", "alerts": storm})
            assert resp.status == 200
            await h.settle()
            assert [d["outcome"] for d in await h.decisions()] == ["dry_run"] * 200
            assert await h.metric("remediator_silence_checks_total", result="not_silenced") == 200
            assert proxy.requests == ["GET /api/v2/silences"]
            await h.advance(5)  # past cache_ttl: the next alert asks again
            await h.fire(real_now_alert(namespace="prod", deployment="late"))
            assert proxy.requests == ["GET /api/v2/silences"] * 2


async def test_silence_while_remediating_holds_a_silence_until_the_alert_resolves(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    async with Harness(
        tmp_path, rules=SILENCING_RULES, config=config(clean), now=time.time(), dry_run=False
    ) as h:
        alert = real_now_alert(namespace="prod", deployment="api", pod="api-7f9c")
        await h.fire(alert)
        [d] = await h.decisions()
        assert d["outcome"] == "executed"
        [ours] = [
            s
            for s in await asyncio.to_thread(clean.list_silences)
            if s["createdBy"] == "remediator" and s["status"]["state"] == "active"
        ]
        assert sorted(
            (m["name"], m["value"], m["isRegex"], m["isEqual"]) for m in ours["matchers"]
        ) == sorted((k, v, False, True) for k, v in alert["labels"].items())
        assert "api-restart" in ours["comment"] and f"decision {d['id']}" in ours["comment"]
        ends = dt.datetime.fromisoformat(ours["endsAt"].replace("Z", "+00:00"))
        assert dt.timedelta(minutes=9) < ends - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=10)
        assert ours["id"] in d["silence"]

        await h.fire(resolved(alert))
        [after] = [s for s in await asyncio.to_thread(clean.list_silences) if s["id"] == ours["id"]]
        assert after["status"]["state"] == "expired"
        [d] = await h.decisions()
        assert "expired when the alert resolved" in d["silence"]
        assert await h.metric("remediator_silences_total", operation="expire", result="ok") == 1


async def test_a_dry_run_creates_no_silence(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    async with Harness(tmp_path, rules=SILENCING_RULES, config=config(clean), now=time.time()) as h:
        await h.fire(real_now_alert(namespace="prod", deployment="api"))
        [d] = await h.decisions()
        assert d["outcome"] == "dry_run"
    assert [
        s
        for s in await asyncio.to_thread(clean.list_silences)
        if s["createdBy"] == "remediator" and s["status"]["state"] != "expired"
    ] == []


def sns_alert(**labels: str) -> Alert:
    now = dt.datetime.now(dt.UTC)
    return Alert(
        source="sns",
        name=labels["alertname"],
        status="firing",
        labels=labels,
        annotations={},
        starts_at=now,
        ends_at=None,
        fingerprint="0123456789abcdef",
        generator_url="",
        received_at=now,
    )


# (silence matchers, alert labels): asked of Alertmanager itself and of our checker.
SEMANTICS: list[tuple[list[dict[str, Any]], dict[str, str]]] = [
    ([{"name": "team", "value": "", "isEqual": True}], {"team": ""}),
    ([{"name": "env", "value": "prod|staging", "isRegex": True}], {"env": "staging"}),
    ([{"name": "env", "value": "prod|staging", "isRegex": True}], {"env": "preprod"}),
    ([{"name": "env", "value": "prod", "isRegex": True, "isEqual": False}], {"env": "dev"}),
    ([{"name": "env", "value": "prod", "isRegex": True, "isEqual": False}], {"env": "prod"}),
    ([{"name": "env", "value": "prod", "isEqual": False}], {"other": "x"}),
    (
        [{"name": "host", "value": "api\\.example\\.com", "isRegex": True}],
        {"host": "apixexample.com"},
    ),
    ([{"name": "sev", "value": "(?i)critical", "isRegex": True}], {"sev": "CRITICAL"}),
    ([{"name": "queue", "value": ".+", "isRegex": True}], {"queue": "jobs"}),
    ([{"name": "queue", "value": ".+", "isRegex": True}], {"other": "x"}),
    # case folding beyond ASCII, Unicode classes and values (RE2 = Go's regexp here)
    ([{"name": "city", "value": "(?i)ÉCOLE", "isRegex": True}], {"city": "école"}),
    (
        [{"name": "city", "value": "(?i)ÉCOLE", "isRegex": True, "isEqual": False}],
        {"city": "École"},
    ),
    ([{"name": "unit", "value": "(?i)k", "isRegex": True}], {"unit": "\u212a"}),
    (
        [{"name": "sev", "value": "(?i)critical", "isRegex": True, "isEqual": False}],
        {"sev": "Crit"},
    ),
    ([{"name": "name", "value": "\\p{Greek}+", "isRegex": True}], {"name": "αβγ"}),
    ([{"name": "name", "value": "\\p{Greek}+", "isRegex": True}], {"name": "abc"}),
    ([{"name": "region", "value": "prod-(?i)eu", "isRegex": True}], {"region": "PROD-EU"}),
    ([{"name": "owner", "value": "zoë"}], {"owner": "zoë"}),
    ([{"name": "owner", "value": "zoë"}], {"owner": "zoe"}),
    ([{"name": "owner", "value": "zoë", "isEqual": False}], {"owner": "zoe"}),
    ([{"name": "x", "value": "x{,3}", "isRegex": True}], {"x": "x{,3}"}),
]


async def test_our_silence_check_agrees_with_alertmanager_on_every_case(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    """Alertmanager says (silencedBy) whether each alert is silenced; our check must agree."""
    ids = []
    for i, (ms, labels) in enumerate(SEMANTICS):
        ids.append(await silence(clean, [{"name": "case", "value": str(i)}, *ms]))
        case = {"alertname": "SemanticsCase", "case": str(i), **labels}
        await asyncio.to_thread(clean.post_alerts, [servers.alert("SemanticsCase", labels=case)])
    async with Harness(tmp_path, rules=RULES, config=config(clean), now=time.time()) as h:
        checker = h.daemon.engine.silences
        assert checker is not None
        ours = [
            await checker.check(sns_alert(alertname="SemanticsCase", case=str(i), **labels))
            is not None
            for i, (_, labels) in enumerate(SEMANTICS)
        ]
    theirs = []
    for i, sid in enumerate(ids):
        for _ in range(100):  # Alertmanager marks alerts on its next pass: poll, bounded
            [found] = await asyncio.to_thread(clean.get_alerts, filter=[f'case="{i}"'])
            if found["status"]["state"] != "unprocessed":
                break
            await asyncio.sleep(0.05)
        theirs.append(sid in found["status"]["silencedBy"])
    assert ours == theirs
    assert set(ours) == {True, False}  # the table has both answers


def test_parse_silences_skips_expired_ones_and_keeps_unreadable_ones_saying_why() -> None:
    now = dt.datetime.now(dt.UTC).isoformat()
    raw: list[Any] = [
        {"id": "a", "status": {"state": "expired"}, "matchers": [], "startsAt": now, "endsAt": now},
        {
            "id": "b",
            "status": {"state": "active"},
            "matchers": [{"name": "x"}],
            "startsAt": now,
            "endsAt": now,
        },
        {"id": "c", "status": {"state": "active"}, "matchers": [], "startsAt": now, "endsAt": now},
        {"id": "d", "matchers": [{"name": "x", "value": "y"}], "endsAt": "soon"},
        "not a silence",
    ]
    got = {s.id: s.unreadable for s in parse_silences(raw)}
    assert got.keys() == {"b", "c", "d", "#4"}
    assert "matcher 0: silence matcher needs string name and value" in got["b"]
    assert "no matchers" in got["c"]
    assert "startsAt unreadable" in got["d"] and "endsAt unreadable" in got["d"]
    assert "not a JSON object" in got["#4"]


class SilenceList(LoopbackApp):
    """An Alertmanager stand-in serving a fixed `GET /api/v2/silences` answer: what the
    real one never stores (a regex RE2 refuses, garbage) is exactly what must fail closed."""

    def __init__(self, silences: list[Any]) -> None:
        super().__init__()
        self.silences = silences

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v2/silences", self._list)

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response(self.silences)


def api_silence(sid: str, matchers: Any, *, ends_in: float = 3600, **extra: Any) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "id": sid,
        "matchers": matchers,
        "startsAt": (now - dt.timedelta(hours=1)).isoformat(),
        "endsAt": (now + dt.timedelta(seconds=ends_in)).isoformat(),
        "createdBy": "sre",
        "comment": "maintenance",
        "status": {"state": "active" if ends_in > 0 else "expired"},
        **extra,
    }


async def test_an_unreadable_silence_holds_off_the_alerts_it_could_cover_and_no_other(
    tmp_path: Path,
) -> None:
    # RE2 refuses the look-ahead: the silence cannot be evaluated. It could cover an alert
    # whose deployment is api (the matcher that can be read); a web alert it cannot.
    bad = api_silence(
        "s-lookahead",
        [
            {"name": "deployment", "value": "api", "isRegex": False, "isEqual": True},
            {"name": "namespace", "value": "prod(?!-canary)", "isRegex": True, "isEqual": True},
        ],
    )
    async with SilenceList([bad]) as am:
        cfg = f"alertmanager: {{urls: [{am.url}]}}\n"
        with structlog.testing.capture_logs() as logs:
            async with Harness(
                tmp_path, rules=RULES, config=cfg, now=time.time(), dry_run=False
            ) as h:
                await h.fire(real_now_alert(namespace="prod", deployment="api"))
                await h.fire(real_now_alert(namespace="prod", deployment="web"))
                api, web_ = await h.decisions()
                assert (api["outcome"], api["reason"]) == ("skipped", "silence_check_failed")
                assert "silence s-lookahead cannot be evaluated" in api["detail"]
                assert "invalid regex" in api["detail"]
                assert (web_["outcome"], web_["reason"]) == ("executed", "")
                assert await h.metric("remediator_silence_checks_total", result="unreadable") == 1
                assert await h.metric("remediator_silences_unreadable") == 1
                assert (
                    await h.metric(
                        "remediator_actions_total", rule="api-restart", action="log", result="ok"
                    )
                    == 1  # the web alert only
                )
    [logged] = [e for e in logs if e["event"] == "silence_unreadable"]
    assert logged["silence"] == "s-lookahead" and "invalid regex" in logged["error"]


async def test_a_silence_none_of_whose_matchers_can_be_read_holds_off_every_alert(
    tmp_path: Path,
) -> None:
    garbage = api_silence("s-garbage", "deployment=api")  # a string, not a list
    gone = api_silence("s-expired", "deployment=api", ends_in=-60)  # expired: ignored
    async with SilenceList([gone, garbage]) as am:
        cfg = f"alertmanager: {{urls: [{am.url}]}}\n"
        async with Harness(tmp_path, rules=RULES, config=cfg, now=time.time(), dry_run=False) as h:
            await h.fire(real_now_alert(namespace="staging", deployment="batch"))
            [d] = await h.decisions()
            assert (d["outcome"], d["reason"]) == ("skipped", "silence_check_failed")
            assert "silence s-garbage" in d["detail"] and "no matchers list" in d["detail"]
            assert await h.metric("remediator_silences_unreadable") == 1


async def test_a_silence_on_a_utf8_label_name_is_evaluated_not_dropped(tmp_path: Path) -> None:
    # Alertmanager >= 0.27 stores `k8s.namespace="prod"`; Debian's 0.25 cannot, hence the
    # stand-in. The silence must silence exactly what it names (asked of the daemon's own
    # check, as SNS alarms are, since the webhook refuses such label names for now).
    utf8 = api_silence(
        "s-utf8", [{"name": "k8s.namespace", "value": "prod", "isRegex": False, "isEqual": True}]
    )
    async with SilenceList([utf8]) as am:
        cfg = f"alertmanager: {{urls: [{am.url}]}}\n"
        async with Harness(tmp_path, rules=RULES, config=cfg, now=time.time()) as h:
            checker = h.daemon.engine.silences
            assert checker is not None
            prod = await checker.check(sns_alert(alertname="X", **{"k8s.namespace": "prod"}))
            dev = await checker.check(sns_alert(alertname="X", **{"k8s.namespace": "dev"}))
            assert prod is not None and prod[0] == "silenced" and "s-utf8" in prod[1]
            assert dev is None
            assert await h.metric("remediator_silences_unreadable") == 0


async def test_a_silence_alertmanager_stores_but_cannot_compile_fails_closed(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    # Alertmanager validates `\Q…` (no `\E`) as written and accepts it; anchored as it
    # matches, the pattern is broken, so Alertmanager silences nothing with it. We cannot
    # evaluate it either, and keep hands off what it could cover.
    sid = await silence(
        clean,
        [
            {"name": "deployment", "value": "api"},
            {"name": "pod", "value": "\\Qapi-", "isRegex": True},
        ],
    )
    async with Harness(tmp_path, rules=RULES, config=config(clean), now=time.time()) as h:
        await h.fire(real_now_alert(namespace="prod", deployment="api", pod="api-1"))
        await h.fire(real_now_alert(namespace="prod", deployment="web", pod="web-1"))
        api, web_ = await h.decisions()
    assert (api["reason"], web_["reason"]) == ("silence_check_failed", "")
    assert f"silence {sid} cannot be evaluated" in api["detail"]


async def test_a_pathological_silence_regex_stalls_neither_probes_nor_intake(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    """Silences anyone with Alertmanager access can create: `(a+)+b` takes Python's `re`
    exponential time; `[ab]*a[ab]{1000}c` defeats RE2's DFA (linear, but a fifth of a
    second on a 16 KiB value, the longest intake takes). The check runs them off the event
    loop (the suite fails any test whose loop is blocked over a second), so probes and
    intake answer meanwhile, and the alert is still decided."""
    await silence(clean, [{"name": "payload", "value": "(a+)+b", "isRegex": True}])
    for last in "ab":
        for end in "cdef":
            pattern = f"[ab]*{last}[ab]{{1000}}{end}"
            await silence(clean, [{"name": "payload", "value": pattern, "isRegex": True}])
    rng = random.Random(10)
    heavy = "".join(rng.choice("ab") for _ in range(MAX_VALUE_LEN))
    async with Harness(tmp_path, rules=RULES, config=config(clean), now=time.time()) as h:
        alert = real_now_alert(namespace="prod", deployment="api", payload=heavy)
        assert (await h.post(payload(alert))).status == 200
        assert (await h.client.get("/healthz")).status == 200
        assert (
            await h.post(payload(real_now_alert(namespace="prod", deployment="web")))
        ).status == 200
        await h.settle()
        assert sorted(await h.outcomes()) == [("dry_run", ""), ("dry_run", "")]
        assert await h.metric("remediator_silence_checks_total", result="not_silenced") == 2


async def test_a_silenced_alert_re_sent_adds_no_row_until_the_silence_ends(
    tmp_path: Path, clean: servers.AlertmanagerServer
) -> None:
    sid = await silence(clean, [{"name": "deployment", "value": "api"}])
    async with Harness(tmp_path, rules=RULES, config=config(clean), now=time.time()) as h:
        alert = real_now_alert(namespace="prod", deployment="api")
        await h.fire(alert)
        await h.fire(alert)  # Alertmanager's re-send while the silence holds
        assert await h.outcomes() == [("skipped", "silenced")]
        assert await h.metric("remediator_duplicates_total", source="alertmanager") == 1
        await asyncio.to_thread(clean.expire_silence, sid)
        await h.advance(5)  # past cache_ttl
        await h.fire(alert)  # the next re-send after the silence ended is decided again
        assert await h.outcomes() == [("skipped", "silenced"), ("dry_run", "")]


SNS_RULES = """
rules:
  - name: plooral-redeploy
    source: sns
    matchers: ['alertname = "PlooralAPIHighErrorRate"']
    action: {type: log, params: {message: "redeploy", target: "{{ labels.ServiceName }}"}}
"""


async def test_a_cloudwatch_alarm_via_sns_is_held_off_by_an_alertmanager_silence(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, clean: servers.AlertmanagerServer
) -> None:
    """SNS alarms never pass through Alertmanager, yet its silences hold for them too."""
    pki = sns_fixtures.make_pki(tmp_path_factory.mktemp("pki"))
    await silence(clean, [{"name": "alertname", "value": "PlooralAPIHighErrorRate"}])
    now = dt.datetime.now(dt.UTC)
    both = sns_fixtures.sns_config(pki) + textwrap.dedent(config(clean))
    async with (
        sns_fixtures.CertServer(pki) as certs,
        Harness(tmp_path, rules=SNS_RULES, config=both, now=now.timestamp()) as h,
    ):
        body = sns_fixtures.notification(
            sns_fixtures.alarm_message(changed_at=now - dt.timedelta(minutes=1)),
            cert_url=certs.cert_url,
            key=pki.signing_key,
            timestamp=now,
        )
        assert (await sns_fixtures.post_sns(h, body)).status == 200
        await h.settle()
        [d] = await h.decisions()
        assert (d["source"], d["outcome"], d["reason"]) == ("sns", "skipped", "silenced")
