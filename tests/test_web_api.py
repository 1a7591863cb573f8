"""The HTTP surface an SRE and Prometheus use: probes, metrics, reload, pause, the audit API.

Decisions are stamped with the daemon's (fake) clock, which starts in 2027. Where the API
compares with wall time (`since=15m`, the cooldown left in /api/v1/rules) a test starts
the fake clock at the real time, so both clocks agree as they do in production.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from remediator import __version__
from remediator.backends.audit import Query
from remediator.engine.clock import FakeClock
from tests.harness import START, Harness, am_alert, payload, resolved

RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.deployment }}"
        target: "{{ labels.namespace }}/{{ labels.deployment }}"
    limits: {cooldown: 15m, max_attempts: 3, window: 1h}
    verify: {resolve_within: 10m}
  - name: disk-clean
    matchers: ['alertname = "DiskFull"']
    action:
      type: log
      params:
        message: "clean {{ labels.instance }}"
        target: "{{ labels.instance }}"
"""
QUEUE_RULE = """
rules:
  - name: queue-drain
    matchers: ['alertname = "SQSBacklog"']
    action:
      type: log
      params: {message: "drain {{ labels.queue }}", target: "{{ labels.queue }}"}
"""
BROKEN_RULE = """\
rules:
  - name: broken-rule
    matchers: ['alertname = "Broken"']
    action:
      type: no.such.action
"""
ADMIN = {"REMEDIATOR_ADMIN_TOKEN": "adm-token"}
AS_ADMIN = {"Authorization": "Bearer adm-token"}


def api_down(deployment: str = "api", **kw: Any) -> dict[str, Any]:
    return am_alert("APIDown", namespace="prod", deployment=deployment, **kw)


def disk_full(instance: str = "db-1", **kw: Any) -> dict[str, Any]:
    return am_alert("DiskFull", instance=instance, **kw)


def on_wall_clock(h: Harness, *, offset: float = 0.0) -> Harness:
    """Start the harness's fake clock at the real time (plus offset), before h.start()."""
    h.clock = FakeClock(time.time() + offset)
    return h


def ago(h: Harness, minutes: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(h.clock.now(), dt.UTC) - dt.timedelta(minutes=minutes)


async def decisions_page(h: Harness, **query: str) -> tuple[int, dict[str, Any]]:
    resp = await h.client.get("/api/v1/decisions", params=query, headers=h.read_headers())
    return resp.status, await resp.json()


async def rule_view(h: Harness, name: str) -> dict[str, Any]:
    resp = await h.client.get("/api/v1/rules", headers=h.read_headers())
    assert resp.status == 200
    [rule] = [r for r in (await resp.json())["rules"] if r["name"] == name]
    return rule


# -- probes -------------------------------------------------------------------------


async def test_healthz_answers_while_the_process_serves(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.client.get("/healthz")
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_readyz_counts_the_rules_and_turns_503_when_shutting_down(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.client.get("/readyz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ready", "rules": 2}

        h.daemon.stopping = True
        try:
            resp = await h.client.get("/readyz")
            assert resp.status == 503
            assert "shutting down" in (await resp.json())["problems"]
            # Liveness holds, and the webhook asks the sender to retry elsewhere.
            assert (await h.client.get("/healthz")).status == 200
            hook = await h.post(payload(api_down()))
            assert hook.status == 503
            assert int(hook.headers["Retry-After"]) > 0
        finally:
            h.daemon.stopping = False
        assert await h.decisions() == []


# -- metrics ------------------------------------------------------------------------

# DESIGN.md "Observability": each metric and the label names it carries.
DESIGNED_METRICS = {
    "remediator_webhook_requests_total": {"source", "code"},
    "remediator_alerts_received_total": {"source", "status"},
    "remediator_duplicates_total": {"source"},
    "remediator_decisions_total": {"rule", "outcome", "reason"},
    "remediator_actions_total": {"rule", "action", "result"},
    "remediator_action_duration_seconds_bucket": {"action", "le"},
    "remediator_action_duration_seconds_count": {"action"},
    "remediator_action_duration_seconds_sum": {"action"},
    "remediator_journal_backlog": set(),
    "remediator_inflight_actions": set(),
    "remediator_circuit_open": {"rule"},
    "remediator_remediation_verified_total": {"rule", "result"},
    "remediator_rules_loaded": set(),
    "remediator_config_last_reload_successful": set(),
    "remediator_config_last_reload_success_timestamp_seconds": set(),
    "remediator_build_info": {"version"},
}


async def scrape(h: Harness) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics as Prometheus reads it: sample name → [(labels, value)]."""
    resp = await h.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    [v] = [v for got, v in samples[name] if got == labels]
    return v


async def test_metrics_expose_every_designed_metric_and_no_fingerprint(tmp_path: Path) -> None:
    first = api_down()
    async with Harness(tmp_path, rules=RULES, dry_run=False) as h:
        await h.fire(first)
        await h.fire(first)  # Alertmanager's re-send: a duplicate
        await h.advance(60)
        await h.fire(resolved(first))  # resolved within verify.resolve_within: effective
        other = disk_full()
        await h.fire(other)
        assert (await h.post(b"{not json")).status == 400
        fingerprints = {first["fingerprint"], other["fingerprint"]}

        m = await scrape(h)
        for name, label_names in DESIGNED_METRICS.items():
            assert name in m, f"{name} is not exposed"
            for labels, _ in m[name]:
                assert set(labels) == label_names, (name, labels)

        assert value(m, "remediator_webhook_requests_total", source="alertmanager", code="200") == 4
        assert value(m, "remediator_webhook_requests_total", source="alertmanager", code="400") == 1
        assert (
            value(m, "remediator_alerts_received_total", source="alertmanager", status="firing")
            == 3
        )
        assert (
            value(m, "remediator_alerts_received_total", source="alertmanager", status="resolved")
            == 1
        )
        assert value(m, "remediator_duplicates_total", source="alertmanager") == 1
        executed = {"outcome": "executed", "reason": ""}
        assert value(m, "remediator_decisions_total", rule="api-restart", **executed) == 1
        assert value(m, "remediator_decisions_total", rule="disk-clean", **executed) == 1
        assert (
            value(m, "remediator_actions_total", rule="api-restart", action="log", result="ok") == 1
        )
        assert value(m, "remediator_action_duration_seconds_count", action="log") == 2
        assert value(m, "remediator_journal_backlog") == 0
        assert value(m, "remediator_inflight_actions") == 0
        assert value(m, "remediator_circuit_open", rule="api-restart") == 0
        assert value(m, "remediator_circuit_open", rule="disk-clean") == 0
        verified = value(
            m, "remediator_remediation_verified_total", rule="api-restart", result="effective"
        )
        assert verified == 1
        assert value(m, "remediator_rules_loaded") == 2
        assert value(m, "remediator_config_last_reload_successful") == 1
        reloaded_at = value(m, "remediator_config_last_reload_success_timestamp_seconds")
        assert abs(reloaded_at - time.time()) < 600
        assert value(m, "remediator_build_info", version=__version__) == 1

        for name, samples in m.items():
            for labels, _ in samples:
                assert "fingerprint" not in labels, name
                for v in labels.values():
                    assert not any(f in v for f in fingerprints), (name, labels)


# -- reload -------------------------------------------------------------------------


async def reload(h: Harness, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    resp = await h.client.post("/-/reload", headers=headers or {})
    return resp.status, await resp.json()


async def rule_names(h: Harness) -> set[str]:
    resp = await h.client.get("/api/v1/rules", headers=h.read_headers())
    return {r["name"] for r in (await resp.json())["rules"]}


async def test_a_good_rule_file_is_picked_up_by_a_reload(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES, env=ADMIN) as h:
        (h.rules_dir / "queue.yaml").write_text(textwrap.dedent(QUEUE_RULE))
        status, answer = await reload(h, AS_ADMIN)
        assert (status, answer) == (200, {"status": "ok", "message": "3 rules loaded"})
        assert await rule_names(h) == {"queue-drain", "api-restart", "disk-clean"}
        assert await h.metric("remediator_rules_loaded") == 3
        await h.fire(am_alert("SQSBacklog", queue="orders"))
        [d] = await h.decisions()
        assert (d["rule"], d["target"]) == ("queue-drain", "log orders")


async def test_a_reload_with_a_bad_file_keeps_the_old_rules_acting(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES, env=ADMIN) as h:
        reloaded_at = await h.metric("remediator_config_last_reload_success_timestamp_seconds")
        (h.rules_dir / "zz-broken.yaml").write_text(BROKEN_RULE)
        status, answer = await reload(h, AS_ADMIN)
        assert status == 422
        assert answer["status"] == "error"
        assert re.search(r"zz-broken\.yaml:5: unknown action type", answer["message"]), answer
        assert await h.metric("remediator_config_last_reload_successful") == 0
        assert await rule_names(h) == {"api-restart", "disk-clean"}
        await h.fire(api_down())
        await h.fire(am_alert("Broken"))
        assert [(d["rule"], d["outcome"]) for d in await h.decisions()] == [
            ("api-restart", "dry_run")
        ]

        fixed = BROKEN_RULE.replace(
            "type: no.such.action", 'type: log\n      params: {message: "broken"}'
        )
        (h.rules_dir / "zz-broken.yaml").write_text(fixed)
        status, answer = await reload(h, AS_ADMIN)
        assert status == 200, answer
        assert await h.metric("remediator_config_last_reload_successful") == 1
        assert await h.metric("remediator_rules_loaded") == 3
        assert (
            await h.metric("remediator_config_last_reload_success_timestamp_seconds") >= reloaded_at
        )
        await h.fire(am_alert("Broken"))
        assert (await h.decisions())[-1]["rule"] == "broken-rule"


async def test_a_reload_with_a_bad_config_file_names_its_file_and_line(tmp_path: Path) -> None:
    # The rule files' errors are `file:line:`; the config file's must be too, in the
    # answer and in the `reload_failed` log, or the SRE is left to guess which file.
    async with Harness(tmp_path, rules=RULES, env=ADMIN) as h:
        h.config_path.write_text("dry_run: true\nlimits:\n  window: 0s\n")
        with structlog.testing.capture_logs() as logs:
            status, answer = await reload(h, AS_ADMIN)
        assert status == 422
        where = f"{h.config_path}:3: limits.window: must be longer than 0s"
        assert answer["message"] == where
        [failed] = [e for e in logs if e["event"] == "reload_failed"]
        assert failed["errors"] == [where]
        assert await h.metric("remediator_config_last_reload_successful") == 0
        assert await rule_names(h) == {"api-restart", "disk-clean"}


async def test_paused_true_written_to_the_config_file_pauses_at_the_reload(
    tmp_path: Path,
) -> None:
    # The kill switch flipped in the (watched) config file: the reload must apply it, as
    # a start does, not answer "rules loaded" and go on acting.
    async with Harness(tmp_path, rules=RULES, env=ADMIN) as h:
        h.config_path.write_text("paused: true\n")
        status, answer = await reload(h, AS_ADMIN)
        assert status == 200, answer
        assert h.daemon.state.paused
        assert await h.metric("remediator_paused") == 1
        await h.fire(api_down())
        assert await h.outcomes() == [("skipped", "paused")]
        # Resumed by hand, it stays resumed through a reload that leaves the file alone.
        assert (await h.client.post("/api/v1/resume", headers=AS_ADMIN)).status == 200
        status, _ = await reload(h, AS_ADMIN)
        assert status == 200
        assert not h.daemon.state.paused


# -- admin token --------------------------------------------------------------------

ADMIN_ENDPOINTS = ["/-/reload", "/api/v1/pause", "/api/v1/resume"]


@pytest.mark.parametrize("path", ADMIN_ENDPOINTS)
async def test_without_an_admin_token_configured_the_admin_api_is_403(
    tmp_path: Path, path: str
) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.client.post(path, headers={"Authorization": "Bearer anything"})
        assert resp.status == 403
        assert "REMEDIATOR_ADMIN_TOKEN" in (await resp.json())["error"]
        assert not h.daemon.state.paused


@pytest.mark.parametrize("path", ADMIN_ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no header"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong token"),
        pytest.param({"Authorization": "adm-token"}, id="no scheme"),
    ],
)
async def test_a_wrong_admin_token_is_401(
    tmp_path: Path, path: str, headers: dict[str, str]
) -> None:
    async with Harness(tmp_path, rules=RULES, env=ADMIN) as h:
        (h.rules_dir / "zz-broken.yaml").write_text(BROKEN_RULE)
        resp = await h.client.post(path, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert not h.daemon.state.paused
        # Nothing was reloaded: a refused reload leaves the reload status alone.
        assert await h.metric("remediator_config_last_reload_successful") == 1


async def test_pause_stops_all_actions_and_resume_lets_them_run_again(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES, env=ADMIN) as h:
        resp = await h.client.post("/api/v1/pause", headers=AS_ADMIN)
        assert resp.status == 200
        assert (await resp.json())["paused"] is True
        assert (await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json())[
            "paused"
        ] is True
        assert await h.metric("remediator_paused") == 1
        alert = api_down()
        await h.fire(alert)
        assert await h.outcomes() == [("skipped", "paused")]

        resp = await h.client.post("/api/v1/resume", headers=AS_ADMIN)
        assert resp.status == 200
        assert (await resp.json())["paused"] is False
        assert await h.metric("remediator_paused") == 0
        await h.fire(alert)  # the next re-delivery of the still-firing alert is decided again
        assert await h.outcomes() == [("skipped", "paused"), ("dry_run", "")]


# -- the audit API ------------------------------------------------------------------


async def test_decisions_filter_by_rule_alertname_and_outcome(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        await h.fire(api_down())
        await h.fire(api_down())  # same target within the cooldown
        await h.fire(disk_full())

        async def pick(**query: str) -> list[tuple[str, str, str]]:
            status, page = await decisions_page(h, **query)
            assert status == 200, page
            return [(d["rule"], d["alertname"], d["outcome"]) for d in page["decisions"]]

        newest_first = [
            ("disk-clean", "DiskFull", "dry_run"),
            ("api-restart", "APIDown", "skipped"),
            ("api-restart", "APIDown", "dry_run"),
        ]
        assert await pick() == newest_first
        assert await pick(rule="api-restart") == newest_first[1:]
        assert await pick(alertname="DiskFull") == newest_first[:1]
        assert await pick(outcome="skipped") == newest_first[1:2]
        assert await pick(outcome="dry_run", rule="api-restart") == newest_first[2:]
        assert await pick(rule="no-such-rule") == []


async def test_a_database_with_the_old_occurrence_index_is_migrated_and_keeps_each_story(
    tmp_path: Path,
) -> None:
    """Before round 4 of #17 the occurrence index was (fingerprint, starts_at), a random
    place per new row; a database written then loses it on start, gains
    `decisions_started`, and the console's occurrence query still finds only that
    occurrence's decisions, old rows and new."""
    started = START - dt.timedelta(minutes=10)
    first, other = api_down(starts_at=started), disk_full(starts_at=started)
    async with Harness(tmp_path, rules=RULES) as h:
        await h.fire(first, other)
    db = tmp_path / "data" / "remediator.db"
    with sqlite3.connect(db) as conn:  # the schema as that version left it
        conn.execute("DROP INDEX decisions_started")
        conn.execute("CREATE INDEX decisions_occurrence ON decisions (fingerprint, starts_at)")
    for _ in range(2):  # the migration is idempotent: a second start changes nothing
        async with Harness(tmp_path, rules=RULES) as h:
            # The same alert's next occurrence: its own story, not the first one's.
            await h.fire({**first, "startsAt": (started + dt.timedelta(minutes=1)).isoformat()})
            indexes = await h.daemon.db.read(
                lambda c: [r[1] for r in c.execute("PRAGMA index_list(decisions)")]
            )
            assert "decisions_occurrence" not in indexes and "decisions_started" in indexes
            rows = await h.decisions()
            old = rows[0]  # the first occurrence's decision, written before the migration
            assert old["fingerprint"] == first["fingerprint"]
            story = await h.daemon.audit.query(
                Query(fingerprint=old["fingerprint"], starts_at=old["starts_at"])
            )
            same = [
                d["id"] for d in reversed(rows)
                if (d["fingerprint"], d["starts_at"]) == (old["fingerprint"], old["starts_at"])
            ]  # fmt: skip
            assert [d["id"] for d in story] == same and same[-1] == old["id"]
            assert len(rows) > len(same)  # the other occurrences are there, not in this story
            key = (old["fingerprint"], old["starts_at"])
            plan = await h.daemon.db.read(
                lambda c, key=key: c.execute(
                    "EXPLAIN QUERY PLAN SELECT id FROM decisions "
                    "WHERE fingerprint = ? AND starts_at = ? ORDER BY id DESC LIMIT 100",
                    key,
                ).fetchall()
            )
            assert "decisions_started" in str(plan), plan


async def test_decisions_since_an_rfc3339_time_or_unix_seconds(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        await h.fire(api_down())
        await h.fire(disk_full())
        await h.advance(3600)
        await h.fire(disk_full("db-2"))
        half_hour = START + dt.timedelta(minutes=30)
        forms = [
            half_hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
            half_hour.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(),
            str(int(half_hour.timestamp())),
        ]
        for since in forms:
            status, page = await decisions_page(h, since=since)
            assert status == 200, (since, page)
            assert [d["target"] for d in page["decisions"]] == ["log db-2"], since
        status, page = await decisions_page(h, since=START.isoformat())
        assert len(page["decisions"]) == 3


async def test_decisions_since_a_duration_counts_back_from_now(tmp_path: Path) -> None:
    h = on_wall_clock(Harness(tmp_path, rules=RULES), offset=-2 * 3600)
    async with h:
        await h.fire(disk_full(starts_at=ago(h, 10)))
        await h.advance(2 * 3600 - 5 * 60)  # the fake clock is now 5 minutes behind the wall
        await h.fire(disk_full("db-2", starts_at=ago(h, 10)))
        status, page = await decisions_page(h, since="15m")
        assert status == 200, page
        assert [d["target"] for d in page["decisions"]] == ["log db-2"]
        status, page = await decisions_page(h, since="3h")
        assert [d["target"] for d in page["decisions"]] == ["log db-2", "log db-1"]


async def test_decisions_since_a_duration_counts_back_on_the_daemon_clock(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        await h.fire(disk_full())
        await h.advance(3600)
        await h.fire(disk_full("db-2"))
        status, page = await decisions_page(h, since="15m")
        assert status == 200, page
        assert [d["target"] for d in page["decisions"]] == ["log db-2"]


async def test_paging_with_limit_and_before_walks_every_decision_once_newest_first(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        for i in range(4):
            await h.fire(api_down(f"api-{i % 2}"))
            await h.fire(disk_full(f"db-{i}"))
        everything = [d["id"] for d in reversed(await h.decisions())]
        assert len(everything) == 8

        seen: list[int] = []
        pages = 0
        query = {"limit": "3"}
        while True:
            status, page = await decisions_page(h, **query)
            assert status == 200, page
            assert len(page["decisions"]) <= 3
            seen.extend(d["id"] for d in page["decisions"])
            pages += 1
            if page["next_before"] is None:
                break
            query = {"limit": "3", "before": str(page["next_before"])}
        assert seen == everything
        assert pages == 3

        # The cursor composes with a filter.
        status, page = await decisions_page(h, rule="disk-clean", limit="2")
        older = await decisions_page(
            h, rule="disk-clean", limit="2", before=str(page["next_before"])
        )
        ids = [d["id"] for d in page["decisions"] + older[1]["decisions"]]
        disk = [d["id"] for d in reversed(await h.decisions(rule="disk-clean"))]
        assert ids == disk


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "-5"},
        {"limit": "ten"},
        {"before": "last"},
        {"since": "yesterday"},
        {"since": "15 minutes"},
        {"outcome": "bogus"},
    ],
    ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()),
)
async def test_a_bad_decisions_query_is_400(tmp_path: Path, query: dict[str, str]) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        status, answer = await decisions_page(h, **query)
        assert status == 400
        assert answer["error"]


async def test_the_rules_api_shows_limits_and_the_cooldown_left_after_a_dry_run(
    tmp_path: Path,
) -> None:
    h = on_wall_clock(Harness(tmp_path, rules=RULES))
    async with h:
        before = await rule_view(h, "api-restart")
        assert before["state"] == {"targets": {}}
        assert before["limits"] == {
            "cooldown_seconds": 900.0,
            "max_attempts": 3,
            "window_seconds": 3600.0,
            "max_actions": None,
            "retry_while_firing": False,
        }
        assert before["steps"] == [{"action": "log", "resolve_within_seconds": 600.0}]
        assert before["matchers"] == ['alertname="APIDown"']
        assert before["action"] == "log"
        assert re.search(r"rules\.yaml:\d+$", before["file"])

        await h.fire(api_down(starts_at=ago(h, 10)))
        resp = await h.client.get("/api/v1/rules", headers=h.read_headers())
        answer = await resp.json()
        assert answer["dry_run"] is True
        [api] = [r for r in answer["rules"] if r["name"] == "api-restart"]
        state = api["state"]["targets"]["log prod/api"]
        assert 0 < state["cooldown_remaining_seconds"] <= 900
        assert state["attempts_in_window"] == 1
        assert state["circuit_open"] is False
        assert state["locked"] is False
        [disk] = [r for r in answer["rules"] if r["name"] == "disk-clean"]
        assert disk["state"] == {"targets": {}}


async def test_the_cooldown_left_counts_down_with_the_daemon_clock(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        await h.fire(api_down())
        await h.advance(5 * 60)
        state = (await rule_view(h, "api-restart"))["state"]["targets"]["log prod/api"]
        assert state["cooldown_remaining_seconds"] == pytest.approx(600, abs=1)


# -- request ids and the decision log -----------------------------------------------


async def test_the_senders_request_id_is_carried_into_the_audit_row(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.post(payload(api_down()), headers={"X-Request-Id": "am-7f3a-0001"})
        assert resp.status == 200
        assert (await resp.json())["request_id"] == "am-7f3a-0001"
        # An id that is not a plain token is replaced, not stored as given.
        resp = await h.post(payload(disk_full()), headers={"X-Request-Id": "a b\tc"})
        generated = (await resp.json())["request_id"]
        assert generated and generated != "a b\tc"
        await h.settle()
        rows = await h.decisions()
        assert [d["request_id"] for d in rows] == ["am-7f3a-0001", generated]


async def test_each_decision_is_one_structured_log_event(tmp_path: Path) -> None:
    alert = api_down()
    async with Harness(tmp_path, rules=RULES) as h:
        with structlog.testing.capture_logs() as logs:
            resp = await h.post(payload(alert), headers={"X-Request-Id": "am-42"})
            assert resp.status == 200
            await h.settle()
        [event] = [e for e in logs if e["event"] == "decision_recorded"]
        assert event["log_level"] == "info"
        assert {k: event[k] for k in ("rule", "outcome", "reason", "target", "fingerprint")} == {
            "rule": "api-restart",
            "outcome": "dry_run",
            "reason": "",
            "target": "log prod/api",
            "fingerprint": alert["fingerprint"],
        }
        assert event["request_id"] == "am-42"
