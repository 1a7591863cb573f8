"""Bad days: every system the daemon talks to times out or fails, actions are slow, the
daemon is stopped mid-action, the clock jumps. Each case ends with nothing lost (every
alert has its decision) and nothing done twice — counted where it would show: the
requests the emulator, the AWS proxy or the receiving webhook actually served.

The receivers are real servers on loopback: the Kubernetes emulator, moto behind the AWS
proxy (tests/aws_emulator.py), and, for notifications, Alertmanager's silences and
PostgreSQL, small servers of this module that count what reaches them (`Hook`,
`Silences`, `BlackHole`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from remediator.actions import kubernetes as k8s
from tests import kube_emulator as emu_mod
from tests.aws_fixtures import Aws
from tests.daemon_process import DaemonProcess, eventually
from tests.harness import START, Harness, am_alert, payload
from tests.kube_emulator import KubeEmulator, deployment
from tests.test_actions_aws import config as aws_config
from tests.test_actions_aws import saturated, scale_rule

LOOPBACK = "127.0.0.1"
RBAC = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "base" / "rbac.yaml"
# One rule per hook (a label cannot choose the variable `url_env` names): HOOK_1..HOOK_5
# are five targets, so their actions run side by side.
NOTIFY = "rules:\n" + "".join(
    f"""
  - name: notify-oncall-{i}
    matchers: ['alertname = "APIDown"', 'hook = "HOOK_{i}"']
    action:
      type: notify.webhook
      params: {{url_env: HOOK_{i}, text: "APIDown: {{{{ labels.hook }}}}"}}
    limits: {{cooldown: 10m, max_attempts: 10}}
    verify: {{resolve_within: never}}
"""
    for i in range(1, 6)
)


# -- small servers that count what reaches them -----------------------------------------


class _Server:
    """An aiohttp server on a free loopback port, serving `routes` of the subclass."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Hook(_Server):
    """A webhook receiver: counts POSTs, holds them while `hold` is set, answers `status`."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.status = 200
        self.released = asyncio.Event()
        self.released.set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hook"

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.received += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await self.released.wait()
            return web.json_response({"ok": self.status == 200}, status=self.status)
        finally:
            self.concurrent -= 1

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self._handle)

    async def __aenter__(self) -> Hook:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        await self.stop()


class Silences(_Server):
    """Alertmanager's `GET /api/v2/silences`: an empty list, a 5xx, or no answer at all."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"  # ok | error | hang
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "error":
            return web.Response(status=503, text="alertmanager is restarting")
        return web.json_response([])

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v2/silences", self._handle)

    async def __aenter__(self) -> Silences:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class BlackHole:
    """A TCP server that accepts connections and never says a word (a hung PostgreSQL)."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)

    async def __aenter__(self) -> BlackHole:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def hook(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hook]:
    async with Hook() as h:
        for i in range(1, 6):
            monkeypatch.setenv(f"HOOK_{i}", h.url)
        yield h


async def until(check: Callable[[], bool], what: str) -> None:
    await eventually(_async(check), timeout=15.0, what=what, interval=0.01)


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


def apidown(hook_env: str = "HOOK_1", **kw: Any) -> dict[str, Any]:
    return am_alert("APIDown", hook=hook_env, **kw)


# -- Kubernetes -------------------------------------------------------------------------

RESTART = """
rules:
  - name: apidown-restart
    matchers: ['alertname = "APIDown"']
    action:
      type: kubernetes.rollout_restart
      params: {namespace: prod, name: api, kind: deployment}
    limits: {cooldown: 0s, max_attempts: 10}
    verify: {resolve_within: never}
"""


@pytest.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    rules, namespaces = emu_mod.load_rbac(RBAC)
    async with KubeEmulator(rbac=rules, rbac_namespaces=namespaces) as server:
        server.add(deployment("api"))
        yield server


def kube_config(kube: KubeEmulator, tmp_path: Path, *, timeout: str = "5s") -> str:
    path = kube.kubeconfig(tmp_path / "kubeconfig")
    return textwrap.dedent(
        f"""
        kubernetes:
          kubeconfig: {path}
          context: emulator
          allowed_namespaces: [prod]
          request_timeout: {timeout}
        limits: {{action_timeout: 5s}}
        """
    )


def restarts(kube: KubeEmulator) -> set[str]:
    """The distinct restartedAt stamps the emulator stored: one per rollout."""
    stamps = set()
    for r in kube.writes():
        if r.verb == "patch" and r.status == 200 and not r.dry_run and isinstance(r.body, dict):
            annotations = r.body["spec"]["template"]["metadata"]["annotations"]
            stamps.add(annotations[k8s.RESTARTED_AT])
    return stamps


@pytest.mark.parametrize("fault", ["answer_lost_503", "answer_late", "throttled_then_500"])
async def test_a_failing_kubernetes_api_never_restarts_a_deployment_twice(
    kube: KubeEmulator, tmp_path: Path, fault: str
) -> None:
    if fault == "answer_lost_503":
        kube.fail(503, verb="patch", after=True)  # applied, the answer lost on the way
    elif fault == "answer_late":
        kube.stall(2.0, verb="patch")  # applied, answered after the client gave up
    else:
        kube.fail(429, verb="get", times=2)
        kube.fail(500, verb="patch")
    config = kube_config(kube, tmp_path, timeout="0.5s")
    async with Harness(tmp_path, rules=RESTART, config=config, dry_run=False) as h:
        alert = am_alert("APIDown")
        await h.fire(alert)
        await h.fire(alert)  # Alertmanager's re-send of the same occurrence
        rows = await h.decisions()
    assert len(rows) == 1, rows  # nothing lost, one decision
    assert rows[0]["outcome"] in ("executed", "failed"), rows[0]
    assert len(restarts(kube)) <= 1, "a second rollout is a second restart"
    if rows[0]["outcome"] == "executed":
        assert len(restarts(kube)) == 1


# -- AWS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "unavailable", "after": True},  # applied, the 503 is what comes back
        {"kind": "throttle"},
    ],
)
async def test_a_failing_aws_api_never_scales_twice(
    tmp_path: Path, aws: Aws, fault: dict[str, Any]
) -> None:
    await aws.service("plooral-api", desired=2)
    aws.proxy.fail(2, service="ecs", operation="UpdateService", **fault)
    rules = scale_rule(step=2, lo=1, hi=10)
    async with Harness(tmp_path, rules=rules, config=aws_config(aws.endpoint), dry_run=False) as h:
        alert = saturated()
        await h.fire(alert)
        await h.fire(alert)  # a re-delivery
        rows = await h.decisions()
    assert len(rows) == 1
    assert rows[0]["outcome"] == "executed", rows[0]["detail"]
    assert (await aws.described("plooral-api"))["desiredCount"] == 4, "+2 once, not twice"


# -- PostgreSQL ---------------------------------------------------------------------------

TERMINATE = """
rules:
  - name: db-pool
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    action:
      type: postgres.terminate_queries
      params: {connection: main, database: crm, min_duration: 30s, max_queries: 5}
    verify: {resolve_within: never}
"""


async def test_a_postgresql_that_never_answers_fails_the_decision_once(tmp_path: Path) -> None:
    async with BlackHole() as pg:
        config = textwrap.dedent(
            """
            limits: {action_timeout: 3s}
            postgres:
              connections:
                main: {dsn_env: CRM_DSN, allowed_databases: [crm], connect_timeout: 0.5s}
            """
        )
        env = {"CRM_DSN": f"postgresql://remediator:pw@{LOOPBACK}:{pg.port}/postgres"}
        async with Harness(tmp_path, rules=TERMINATE, config=config, env=env, dry_run=False) as h:
            alert = am_alert("DatabaseConnectionPoolExhausted", database="crm")
            await h.fire(alert)
            tried = pg.connections
            await h.fire(alert)  # the re-send does not try again
            rows = await h.decisions()
    assert [(r["outcome"], r["reason"]) for r in rows] == [("failed", rows[0]["reason"])]
    assert rows[0]["reason"] in ("timeout", "action_error"), rows[0]
    assert 1 <= tried <= 5, "bounded retries within the action timeout"
    assert pg.connections == tried
    assert "pw@" not in rows[0]["detail"]


# -- Alertmanager's silences --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "hang"])
async def test_when_alertmanager_fails_nothing_acts_and_the_re_send_acts_once(
    tmp_path: Path, hook: Hook, mode: str
) -> None:
    async with Silences() as am:
        config = f"alertmanager: {{urls: ['{am.url}'], timeout: 0.5s, cache_ttl: 0s}}\n"
        async with Harness(tmp_path, rules=NOTIFY, config=config, dry_run=False) as h:
            alert = apidown()
            am.mode = mode
            await h.fire(alert)
            assert hook.received == 0, "a silence that cannot be checked is not ignored"
            am.mode = "ok"
            await h.fire(alert)  # Alertmanager re-sends while it still fires
            await h.fire(alert)
            outcomes = await h.outcomes()
    assert outcomes == [("skipped", "silence_check_failed"), ("executed", "")]
    assert hook.received == 1


# -- slow actions -------------------------------------------------------------------------


async def test_slow_actions_fill_the_slots_and_intake_goes_on(tmp_path: Path, hook: Hook) -> None:
    rules = NOTIFY + textwrap.indent(
        textwrap.dedent(
            """
            - name: just-log
              matchers: ['alertname = "DiskFull"']
              action: {type: log, params: {message: disk}}
            """
        ),
        "  ",
    )
    config = "limits: {max_concurrent_actions: 2}\n"
    async with Harness(tmp_path, rules=rules, config=config, dry_run=False) as h:
        hook.hold()
        for i in range(1, 6):
            assert (await h.post(payload(apidown(f"HOOK_{i}")))).status == 200
        await until(lambda: hook.received == 2, "two actions running")
        # The slots are full; intake and other decisions go on meanwhile.
        for i in range(20):
            assert (await h.post(payload(am_alert("DiskFull", instance=f"n{i}")))).status == 200
        await until(h.daemon.engine._queue.empty, "the unrelated alerts decided")
        assert hook.received == 2 and hook.max_concurrent == 2
        hook.release()
        await h.settle()
        rows = await h.decisions()
    assert hook.received == 5 and hook.max_concurrent == 2
    assert (
        sorted(r["outcome"] for r in rows if r["rule"].startswith("notify-oncall"))
        == ["executed"] * 5
    )
    assert len([r for r in rows if r["rule"] == "just-log"]) == 20


# -- SIGTERM mid-action -------------------------------------------------------------------


async def test_sigterm_mid_action_loses_nothing_and_a_restart_does_not_act_again(
    tmp_path: Path,
) -> None:
    async with Hook() as hook:
        hook.hold()
        env = {f"HOOK_{i}": hook.url for i in range(1, 3)}
        config = "shutdown_timeout: 1s\nlimits: {max_concurrent_actions: 1}\n"
        daemon = DaemonProcess(tmp_path, rules=NOTIFY, config=config, env=env)
        try:
            await daemon.start()
            first, second = apidown("HOOK_1"), apidown("HOOK_2")
            assert (await daemon.post(payload(first)))[0] == 200
            await until(lambda: hook.received == 1, "the first action running")
            assert (await daemon.post(payload(second)))[0] == 200  # waits for the slot
            daemon.terminate()
            assert await daemon.wait_exit() == 0
            hook.release()

            await daemon.start()
            for alert in (first, second):  # Alertmanager re-sends both after the restart
                assert (await daemon.post(payload(alert)))[0] == 200
            await eventually(daemon.settled, timeout=15, what="the journal drained")
            rows = await daemon.decisions()
        finally:
            await daemon.close()
    by_hook = {r["alert"]["labels"]["hook"]: r for r in rows}
    assert sorted(by_hook) == ["HOOK_1", "HOOK_2"], rows  # one decision each: nothing lost
    assert len(rows) == 2, "the re-sends after the restart are duplicates"
    assert (by_hook["HOOK_1"]["outcome"], by_hook["HOOK_1"]["reason"]) == (
        "failed",
        "interrupted",
    )
    assert "check the target by hand" in by_hook["HOOK_1"]["detail"]
    # The second waited for the slot the first held: it never started, and says so.
    assert (by_hook["HOOK_2"]["outcome"], by_hook["HOOK_2"]["reason"]) == ("failed", "interrupted")
    assert by_hook["HOOK_2"]["detail"].startswith("never started")
    assert hook.received == 1, "nothing ran again after the restart"


# -- clock jumps --------------------------------------------------------------------------


async def test_a_clock_jumping_back_does_not_let_an_action_run_twice(
    tmp_path: Path, hook: Hook
) -> None:
    async with Harness(tmp_path, rules=NOTIFY, dry_run=False) as h:
        alert = apidown()
        await h.fire(alert)
        h.clock.advance(-2 * 3600)  # NTP steps the clock back two hours
        await h.fire(alert)  # a re-send of the same occurrence
        again = apidown(starts_at=START - dt.timedelta(minutes=5))
        await h.fire(again)  # a new occurrence, same target: still in its cooldown
        assert hook.received == 1
        assert [o for o, _ in await h.outcomes()] == ["executed", "skipped"]
        await h.advance(3 * 3600)  # the clock is right again, past the cooldown
        await h.fire(apidown(starts_at=START + dt.timedelta(hours=1)))
    assert hook.received == 2


async def test_a_clock_jumping_forward_decides_held_alerts_once(tmp_path: Path, hook: Hook) -> None:
    rules = NOTIFY.replace("    limits:", "    for: 5m\n    limits:")
    async with Harness(tmp_path, rules=rules, dry_run=False) as h:
        now = dt.datetime.fromtimestamp(h.clock.now(), dt.UTC)
        alert = apidown(starts_at=now)
        await h.fire(alert)  # held for 5m
        assert hook.received == 0
        await h.advance(86400)  # a day at once: the hold's timer fires late, once
        await h.fire(alert)  # the re-send after the jump
        await h.advance(60)
        outcomes = await h.outcomes()
    assert hook.received == 1
    assert [o for o, _ in outcomes] == ["executed"]
