"""Edges of the engine an SRE would hit in production: reloads while alerts wait, alerts
that resolve while their fix runs, slow dry runs, failed writes, forged start times."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from aiohttp import web

from remediator import durations, errors
from remediator.actions import params, registry
from remediator.actions.base import Context, Result
from remediator.backends.state import Dedup, MemoryState
from remediator.matching import loader
from remediator.models.rule import ActionSpec, CircuitBreaker, Limits, Rule, Step
from remediator.settings import Budgets, Settings
from tests import servers
from tests.harness import START, Harness, am_alert, resolved

MINUTE = 60.0


class Gate:
    """`test.slow`: an action whose run and dry run wait until the test opens the gate."""

    type: ClassVar[str] = "test.slow"
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema({"name": params.Field(params.dns_label())})

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = asyncio.Event()
        self.calls: list[str] = []

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        return None

    def target(self, values: Mapping[str, Any]) -> str:
        return str(values["name"])

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._wait("run", values)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._wait("dry_run", values)

    async def _wait(self, kind: str, values: Mapping[str, Any]) -> Result:
        self.calls.append(kind)
        self.started.set()
        await self.open.wait()
        return Result(detail=f"{kind} {values['name']}")


def _gate() -> Gate:
    found = registry.get(Gate.type)
    return cast(Gate, found if found is not None else registry.register(Gate()))


GATE = _gate()


def reset_gate() -> Gate:
    GATE.open = asyncio.Event()
    GATE.started = asyncio.Event()
    GATE.calls.clear()
    return GATE


SLOW = """
rules:
  - name: slow-fix
    matchers: ['alertname = "APIDown"']
    action: {type: test.slow, params: {name: "{{ labels.deployment }}"}}
    limits: {cooldown: 0s}
    verify: {resolve_within: 5m}
    circuit_breaker: {open_after: 1, reset_after: 1h}
"""

LOG_HELD = """
rules:
  - name: {name}
    matchers: ['alertname = "APIDown"']
    for: 5m
    action: {{type: log, params: {{message: "restart", target: "{{{{ labels.deployment }}}}"}}}}
"""


async def test_an_alert_held_across_a_reload_that_renamed_its_rule_is_released_by_its_resolve(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=LOG_HELD.format(name="api-restart"), dry_run=False) as h:
        alert = am_alert("APIDown", deployment="api", starts_at=START)
        await h.fire(alert)
        (h.rules_dir / "rules.yaml").write_text(LOG_HELD.format(name="api-restart-v2"))
        ok, _ = await h.daemon.reload()
        assert ok
        await h.fire(resolved(alert))
        await h.advance(10 * MINUTE)  # past the old `for`: nothing may act now
        assert await h.outcomes() == [("skipped", "too_young")]


async def test_an_alert_that_resolves_while_its_fix_runs_counts_as_fixed(tmp_path: Path) -> None:
    gate = reset_gate()
    async with Harness(tmp_path, rules=SLOW, dry_run=False) as h:
        alert = am_alert("APIDown", deployment="api")
        resp = await h.post({"version": "4", "alerts": [alert]})
        assert resp.status == 200
        await asyncio.wait_for(gate.started.wait(), 5)
        resp = await h.post({"version": "4", "alerts": [resolved(alert)]})
        assert resp.status == 200
        await h.daemon.engine.wait_idle()  # the resolve is processed while the action runs
        gate.open.set()
        await h.settle()
        await h.advance(10 * MINUTE)  # past resolve_within: no late "ineffective"
        [d] = await h.decisions()
        assert (d["outcome"], d["verification"]) == (
            "executed",
            "effective: resolved while the action ran",
        )
        state = (await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json())[
            "rules"
        ][0]["state"]
        assert state["targets"]["test.slow api"]["circuit_open"] is False


async def test_a_slow_dry_run_does_not_hold_up_other_alerts(tmp_path: Path) -> None:
    gate = reset_gate()
    rules = (
        SLOW
        + """
  - name: db-log
    matchers: ['alertname = "DBDown"']
    action: {type: log, params: {message: "db", target: "{{ labels.db }}"}}
"""
    )
    async with Harness(tmp_path, rules=rules, workers=1) as h:
        resp = await h.post({"version": "4", "alerts": [am_alert("APIDown", deployment="api")]})
        assert resp.status == 200
        await asyncio.wait_for(gate.started.wait(), 5)
        resp = await h.post({"version": "4", "alerts": [am_alert("DBDown", db="main")]})
        assert resp.status == 200
        await h.daemon.engine.wait_idle()  # the one worker is free despite the dry run
        await h.daemon.db.submit(lambda c: None)
        await asyncio.sleep(0)
        await h.daemon.db.submit(lambda c: None)
        assert [d["rule"] for d in await h.decisions()] == ["db-log"]
        assert h.daemon.journal.backlog == 1  # the waiting dry run's alert is not finished
        gate.open.set()
        await h.settle()
        assert sorted(d["rule"] for d in await h.decisions()) == ["db-log", "slow-fix"]
        assert h.daemon.journal.backlog == 0


async def test_a_failed_audit_write_releases_the_target_for_the_next_alert(tmp_path: Path) -> None:
    rules = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "{{ labels.deployment }}"}}
    limits: {cooldown: 0s}
"""
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        # A real SQLite failure on the row written before an action runs (a full disk).
        await h.daemon.db.submit(
            lambda c: c.execute(
                "CREATE TRIGGER fail BEFORE INSERT ON decisions WHEN NEW.outcome = 'failed' "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        )
        first = am_alert("APIDown", deployment="api")
        await h.fire(first)
        assert await h.decisions() == []
        # Kept for the next start, but no longer holding a backlog slot until then.
        assert h.daemon.journal.backlog == 0
        rows = await h.daemon.db.read(
            lambda c: c.execute("SELECT count(*) FROM journal").fetchone()[0]
        )
        assert rows == 1
        await h.daemon.db.submit(lambda c: c.execute("DROP TRIGGER fail"))
        await h.fire(am_alert("APIDown", deployment="api"))  # same target, new occurrence
        assert await h.outcomes() == [("executed", "")]  # not `locked` forever
        await h.fire(first)  # a re-send of the failed one is decided afresh
        assert await h.outcomes() == [("executed", ""), ("executed", "")]


async def test_budget_refusals_leave_nothing_behind_per_target(tmp_path: Path) -> None:
    rules = """
rules:
  - name: pod-log
    matchers: ['alertname = "PodDown"']
    action: {type: log, params: {message: "x", target: "{{ labels.pod }}"}}
"""
    config = "limits: {max_targets_per_window: 2}\n"
    async with Harness(tmp_path, rules=rules, config=config) as h:
        for i in range(50):
            await h.fire(am_alert("PodDown", pod=f"pod-{i}"))
        reasons = [r for _, r in await h.outcomes()]
        assert reasons.count("") == 2 and reasons.count("budget_exhausted") == 48
        body = await (await h.client.get("/api/v1/rules", headers=h.read_headers())).json()
        assert sorted(body["rules"][0]["state"]["targets"]) == ["log pod-0", "log pod-1"]


async def test_a_start_time_in_the_future_is_held_no_longer_than_for_after_arrival(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=LOG_HELD.format(name="api-restart")) as h:
        far = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
        await h.fire(am_alert("APIDown", deployment="api", starts_at=far))
        await h.advance(5 * MINUTE)
        assert await h.outcomes() == [("dry_run", "")]
        assert h.daemon.journal.backlog == 0


def test_dedup_keeps_what_is_still_re_sent_and_stays_within_its_bound() -> None:
    """A storm of distinct occurrences passes the bound: one re-sent all along is still
    a duplicate; one never seen again is forgotten; the records never pass the bound."""
    dedup = Dedup(bound=1000)
    dedup.set("re-sent", "executed/")
    dedup.set("once", "dry_run/")
    sizes = []
    for i in range(5000):
        dedup.set(f"storm-{i}", "dry_run/")
        if i % 100 == 0:
            assert dedup.get("re-sent") == "executed/"
        sizes.append(len(dedup))
    assert dedup.get("re-sent") == "executed/"
    assert dedup.get("once") is None
    assert dedup.get("storm-4999") == "dry_run/" and dedup.get("storm-4500") == "dry_run/"
    assert max(sizes) <= 1000
    dedup.pop("re-sent")
    assert dedup.get("re-sent") is None


def test_a_refused_trial_does_not_keep_a_half_open_circuit_shut() -> None:
    """The trial after reset_after was refused (a protected workload): the next may go."""
    state = MemoryState()
    rule = Rule(
        name="r",
        matchers=(),
        steps=(Step(ActionSpec("log", {})),),
        limits=Limits(cooldown=0.0),
        circuit_breaker=CircuitBreaker(open_after=1, reset_after=60.0),
    )

    async def attempt(now: float) -> str | None:
        verdict = await state.reserve(
            rule=rule, target="t", budgets=Budgets(), now=now, dry_run=False
        )
        await state.release("t")
        return verdict.reason

    async def scenario() -> list[str | None]:
        await state.record_result(rule=rule, target="t", ok=False, now=0.0)  # opens
        reasons = [await attempt(30.0), await attempt(61.0)]  # open, then the trial
        await state.end_trial(rule=rule, target="t")  # the trial was refused
        reasons.append(await attempt(62.0))  # another trial may go
        reasons.append(await attempt(63.0))  # that one has not reported: still half-open
        return reasons

    assert asyncio.run(scenario()) == ["circuit_open", None, None, "circuit_open"]


async def test_a_huge_before_cursor_is_a_400(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=SLOW) as h:
        resp = await h.client.get("/api/v1/decisions", params={"before": "9" * 30})
        assert resp.status == 400


def test_rules_in_a_configmap_mount_load_once(tmp_path: Path) -> None:
    """Kubernetes mounts a ConfigMap as ..<timestamp>/file, ..data -> it, file -> ..data/file."""
    stamp = tmp_path / "..2027_01_15_12_00_00.000000001"
    stamp.mkdir()
    (stamp / "apidown.yaml").write_text(LOG_HELD.format(name="api-restart"))
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "apidown.yaml").symlink_to("..data/apidown.yaml")
    (tmp_path / ".apidown.yaml.swp").write_text("not yaml: [")
    [rule] = loader.load_dir(tmp_path)
    assert rule.name == "api-restart"


async def test_a_reload_applies_new_config_live_and_names_what_needs_a_restart(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=LOG_HELD.format(name="api-restart")) as h:
        h.config_path.write_text(
            "workers: 8\n"
            "limits: {max_concurrent_actions: 9}\n"
            "blackouts: [{name: freeze, start: 2027-01-01T00:00:00Z,"
            " end: 2027-02-01T00:00:00Z}]\n"
        )
        ok, message = await h.daemon.reload()
        assert ok
        assert "restart to apply: limits.max_concurrent_actions, workers" in message
        assert h.daemon.settings.workers == 4  # kept at its running value
        await h.fire(am_alert("APIDown", deployment="api", starts_at=START - dt.timedelta(hours=1)))
        assert await h.outcomes() == [("skipped", "blackout")]  # the new window is live

        h.config_path.write_text("limits: {window: soon}\n")
        ok, message = await h.daemon.reload()
        assert not ok and "limits.window" in message
        assert h.daemon.settings.blackouts  # the running config is kept
        assert await h.metric("remediator_config_last_reload_successful") == 0


class Receiver:
    """A chat webhook answering a given sequence of statuses, then 200."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.bodies: list[Any] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = servers.free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


NOTIFY = """
rules:
  - name: announce
    matchers: ['alertname = "APIDown"']
    action: {type: notify.webhook, params: {url_env: TEST_HOOK, text: "APIDown"}}
"""


async def test_a_chat_message_that_may_have_been_posted_is_not_sent_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Receiver(500) as hook:
        monkeypatch.setenv("TEST_HOOK", hook.url)
        async with Harness(tmp_path, rules=NOTIFY, dry_run=False) as h:
            await h.fire(am_alert("APIDown", deployment="api"))
            assert await h.outcomes() == [("failed", "action_error")]
        assert len(hook.bodies) == 1  # a 500 may come after the post: no second one


async def test_a_chat_message_refused_unprocessed_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Receiver(429) as hook:
        monkeypatch.setenv("TEST_HOOK", hook.url)
        async with Harness(tmp_path, rules=NOTIFY, dry_run=False) as h:
            await h.fire(am_alert("APIDown", deployment="api"))
            assert await h.outcomes() == [("executed", "")]
        assert len(hook.bodies) == 2  # 429, then delivered once


@pytest.mark.parametrize("digits", ["\u0661\u0660\u0660", "\uff11\uff10"])
def test_numbers_in_other_scripts_digits_are_not_numbers(digits: str) -> None:
    """int() reads Arabic-Indic or full-width digits; a label must not pass a bound that way."""
    with pytest.raises(errors.ParamError):
        params.integer(lo=0, hi=1000)("to", digits)
    with pytest.raises(ValueError):
        durations.parse(digits + "s")


VERIFIED = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "{{ labels.deployment }}"}}
    limits: {cooldown: 0s}
    verify: {resolve_within: 10m}
  - name: announce
    matchers: ['alertname = "DBDown"']
    action: {type: notify.webhook, params: {url_env: UNSET_HOOK_FOR_TESTS}}
    limits: {cooldown: 0s}
    circuit_breaker: {open_after: 2, reset_after: 1h}
"""


async def test_a_restart_keeps_open_circuits_and_pending_verifications(tmp_path: Path) -> None:
    waiting = am_alert("APIDown", deployment="api")
    async with Harness(tmp_path, rules=VERIFIED, dry_run=False) as h:
        await h.fire(waiting)
        await h.fire(am_alert("DBDown", db="main"))
        await h.fire(am_alert("DBDown", db="main"))
        assert [o for o, _ in await h.outcomes()] == ["executed", "failed", "failed"]
    async with Harness(tmp_path, rules=VERIFIED, dry_run=False) as h:
        await h.fire(am_alert("DBDown", db="main"))
        assert (await h.outcomes())[-1] == ("skipped", "circuit_open")  # still open
        await h.fire(resolved(waiting))  # the attempt before the restart is verified
        [first] = await h.decisions(rule="api-restart")
        assert first["verification"].startswith("effective")
        assert first["alert"]["labels"] == waiting["labels"]  # the audit says what it was about


async def test_a_verification_due_while_the_daemon_was_down_is_marked_unknown(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=VERIFIED, dry_run=False) as h:
        await h.fire(am_alert("APIDown", deployment="api"))
    async with Harness(tmp_path, rules=VERIFIED, dry_run=False, now=START.timestamp() + 3600) as h:
        await h.settle()
        [row] = await h.decisions(rule="api-restart")
        assert row["verification"] == "unknown: the daemon was down when it was due"
