"""Three replicas behind one address, on Redis and PostgreSQL: exactly one action per
occurrence and target, whatever is delivered twice and whichever replica dies.

The replicas are real daemon processes (`backend.kind: redis`, `audit.kind: postgres`)
behind a small round-robin proxy on loopback (each request to the next replica, as a
Kubernetes Service spreads them). The side effect is counted where it happens: the
Kubernetes emulator counts the rollout-restart PATCHes per deployment.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from remediator.engine.deciding import NEVER_STARTED
from tests import servers, slack_fake
from tests.daemon_process import DaemonProcess, eventually
from tests.harness import am_alert, payload
from tests.kube_emulator import KubeEmulator, deployment
from tests.slack_fake import SlackApi, click

RULES = """
rules:
  - name: restart
    matchers: ['alertname = "APIDown"']
    action:
      type: kubernetes.rollout_restart
      params: {namespace: prod, name: "{{ labels.deployment }}"}
    limits: {cooldown: 0s, max_attempts: 1000}
    verify: {resolve_within: never}
"""

CONFIG = """
kubernetes:
  kubeconfig: {kubeconfig}
  context: emulator
  allowed_namespaces: [prod]
limits:
  max_actions_per_window: 1000000
  max_targets_per_window: 1000000
  max_concurrent_actions: 16
backend:
  kind: redis
  redis: {{key_prefix: {prefix}, claim_idle: 5s, lock_ttl: 10s, poll_interval: 200ms}}
audit:
  kind: postgres
workers: 8
"""


class RoundRobin:
    """A loopback HTTP proxy handing each request to the next upstream that answers;
    a dead one is skipped (a Service's endpoints drop a dead pod the same way)."""

    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams
        self.bodies: list[bytes] = []
        """Every request body relayed, in order."""
        self._next = itertools.count()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{servers.LOOPBACK}:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        assert self._session is not None
        for _ in range(len(self.upstreams)):
            upstream = self.upstreams[next(self._next) % len(self.upstreams)]
            try:
                async with self._session.request(
                    request.method, upstream + request.path_qs, data=body,
                    headers={"Content-Type": request.content_type},
                ) as resp:  # fmt: skip
                    return web.Response(status=resp.status, body=await resp.read())
            except (aiohttp.ClientError, TimeoutError):
                continue
        return web.Response(status=502)

    async def __aenter__(self) -> RoundRobin:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        app = web.Application(client_max_size=4 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, servers.LOOPBACK, 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


@pytest.fixture(scope="module")
def redis_server() -> Any:
    # The documented setting: every journal write is on disk before the 2xx.
    with servers.RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as r:
        yield r


@pytest.fixture(scope="module")
def postgres_server() -> Any:
    with servers.PostgresServer() as pg:
        yield pg


_prefixes = itertools.count()


class Cluster:
    """`n` replicas on one Redis key prefix and one PostgreSQL; `config` is a template
    with `{kubeconfig}` and `{prefix}`; `start` of them are started on entering."""

    def __init__(
        self, base: Path, emu: KubeEmulator, redis: Any, pg: Any, n: int, *,
        rules: str = RULES, config: str = CONFIG, start: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        prefix = f"it{next(_prefixes)}"
        text = config.format(kubeconfig=emu.kubeconfig(base / "kubeconfig"), prefix=prefix)
        env = {"REMEDIATOR_REDIS_URL": redis.url, "REMEDIATOR_AUDIT_DSN": pg.dsn, **(env or {})}
        self.replicas = [
            DaemonProcess(base / f"r{i}", rules=rules, config=text, env=env) for i in range(n)
        ]
        self._start = n if start is None else start

    async def __aenter__(self) -> Cluster:
        try:
            await asyncio.gather(*(r.start() for r in self.replicas[: self._start]))
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(r.close() for r in self.replicas), return_exceptions=True)


def restarts(emu: KubeEmulator) -> Counter[str]:
    """Rollout-restart PATCHes that changed something, per deployment."""
    return Counter(
        s.name for s in emu.requests if s.verb == "patch" and not s.dry_run and s.status < 300
    )


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator() as e:
        yield e


_batches = itertools.count()


def alerts(n: int) -> list[dict[str, Any]]:
    """n alerts on deployments api-0… whose fingerprints no other test uses (the
    PostgreSQL audit is shared by the tests of this module)."""
    batch = next(_batches) << 32
    return [
        am_alert("APIDown", deployment=f"api-{i}", fingerprint=f"{batch + i:016x}")
        for i in range(n)
    ]


def of(rows: list[dict[str, Any]], sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fingerprints = {a["fingerprint"] for a in sent}
    return [r for r in rows if r["fingerprint"] in fingerprints]


async def post_all(
    url: str, bodies: list[dict[str, Any]], *, connections: int = 16
) -> tuple[set[str], Counter[int]]:
    """POST every body (retrying a 5xx a few times, as Alertmanager does); the
    fingerprints acknowledged with a 2xx, and the status codes seen."""
    acked: set[str] = set()
    codes: Counter[int] = Counter()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                for _ in range(20):
                    try:
                        async with session.post(url + "/webhook/alertmanager", json=body) as r:
                            codes[r.status] += 1
                            if r.status == 200:
                                acked.update(a["fingerprint"] for a in body["alerts"])
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        codes[0] += 1
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(worker() for _ in range(connections)))
    return acked, codes


async def audit_rows(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return await daemon.decisions()


@pytest.mark.timeout(150)
async def test_three_replicas_act_once_per_occurrence_though_every_alert_comes_twice(
    tmp_path: Path, emu: KubeEmulator, redis_server: Any, postgres_server: Any
) -> None:
    n = 300
    for i in range(n):
        emu.add(deployment(f"api-{i}"))
    async with Cluster(tmp_path, emu, redis_server, postgres_server, 3) as cluster:
        upstreams = [r.url for r in cluster.replicas]
        async with RoundRobin(upstreams) as proxy:
            # An HA pair: each notification sent by both Alertmanagers, in any order.
            sent = alerts(n)
            bodies = [payload(a) for a in sent] * 2
            acked, codes = await post_all(proxy.url, bodies)
            assert len(acked) == n, codes

            async def all_restarted() -> bool:
                return len(restarts(emu)) == n

            await eventually(all_restarted, timeout=60, what=f"{n} deployments restarted")
            await asyncio.sleep(1.0)  # late doubles would show now
            assert set(restarts(emu).values()) == {1}

            async def audited() -> bool:
                return len(of(await audit_rows(cluster.replicas[0]), sent)) >= n

            await eventually(audited, timeout=30, what="every decision in PostgreSQL")
            rows = of(await audit_rows(cluster.replicas[1]), sent)
            assert Counter((r["outcome"], r["fingerprint"]) for r in rows).most_common(1)[0][1] == 1
            assert {r["outcome"] for r in rows} == {"executed"}
            duplicates = sum(
                [await r.metric("remediator_duplicates_total") for r in cluster.replicas]
            )
            assert duplicates == n


@pytest.mark.timeout(150)
async def test_a_killed_replicas_alerts_are_decided_by_another_none_lost_none_twice(
    tmp_path: Path, emu: KubeEmulator, redis_server: Any, postgres_server: Any
) -> None:
    n = 300
    for i in range(n):
        emu.add(deployment(f"api-{i}"))
    async with Cluster(tmp_path, emu, redis_server, postgres_server, 3) as cluster:
        victim = cluster.replicas[0]
        async with RoundRobin([r.url for r in cluster.replicas]) as proxy:
            sent = alerts(n)
            bodies = [payload(a) for a in sent]
            burst = asyncio.create_task(post_all(proxy.url, bodies))

            async def some_done() -> bool:
                return len(restarts(emu)) >= n // 5

            await eventually(some_done, timeout=60, what="the burst under way")
            victim.kill()  # kill -9, mid-burst: what it held is pending in the stream
            await victim.wait_exit()
            acked, codes = await burst
            assert len(acked) == n, codes

            survivor = cluster.replicas[1]

            async def all_audited() -> bool:
                # The victim wrote "never started" rows for the actions it had queued: they
                # are the survivors' to run once they take its work over (after claim_idle).
                rows = of(await audit_rows(survivor), sent)
                waiting = [r for r in rows if r["detail"].endswith(NEVER_STARTED)]
                return len({r["fingerprint"] for r in rows}) == n and not waiting

            await eventually(all_audited, timeout=60, what=f"a decision for each of {n} alerts")
            await asyncio.sleep(1.5)  # past claim_idle: a late double would show now
            counts = restarts(emu)
            assert max(counts.values()) == 1
            rows = of(await audit_rows(survivor), sent)
            per_occurrence = Counter(r["fingerprint"] for r in rows)
            doubled = [fp for fp, k in per_occurrence.items() if k > 1]
            assert len(per_occurrence) == n and not doubled, json.dumps(
                [
                    {
                        k: r[k]
                        for k in (
                            "id",
                            "fingerprint",
                            "outcome",
                            "reason",
                            "detail",
                            "decided_at",
                            "request_id",
                        )
                    }
                    for r in rows
                    if r["fingerprint"] in doubled[:3]
                ]
            )
            # What the victim had started and not yet recorded when it died (running, or
            # run with its outcome still queued for the audit) says so and is never run
            # again; every alert recorded as acted on was restarted exactly once.
            unknown = [r for r in rows if (r["outcome"], r["reason"]) == ("failed", "interrupted")]
            # (Nothing is left "never started": the wait above says so.)
            assert all("outcome unknown" in r["detail"] for r in unknown), [
                (r["outcome"], r["reason"], r["detail"][:90]) for r in unknown
            ]
            acted = [r["target"].rsplit("/", 1)[-1] for r in rows if r["outcome"] == "executed"]
            assert all(counts[name] == 1 for name in acted)
            assert len(counts) >= n - len(unknown), [
                (r["outcome"], r["reason"], r["detail"][:200])
                for r in rows
                if r["outcome"] != "executed" and r not in unknown
            ]
            # Nothing the victim held is skipped: what it had reserved, written or queued
            # for a slot and not yet started is run by the replica that takes it over, on
            # the victim's reservation (its target's lock inherited, not waited for).
            assert {r["outcome"] for r in rows} <= {"executed", "failed"}, [
                (r["outcome"], r["reason"], r["detail"][:90])
                for r in rows
                if r["outcome"] not in ("executed", "failed")
            ]


APPROVAL_RULES = """
rules:
  - name: restart-approved
    matchers: ['alertname = "APIDown"']
    action:
      type: kubernetes.rollout_restart
      params: {namespace: prod, name: "{{ labels.deployment }}"}
    approval: {approvers: [bruno, U0ANA], timeout: 15m}
    limits: {cooldown: 0s, max_attempts: 1000}
    verify: {resolve_within: never}
"""
APPROVAL_CONFIG = (
    CONFIG
    + "auth: {{admin_token_env: REMEDIATOR_ADMIN_TOKEN}}\n"
    + "approvals:\n  tokens: {{bruno: REMEDIATOR_TEST_BRUNO, carla: REMEDIATOR_TEST_CARLA}}\n"
)
APPROVAL_ENV = {
    "REMEDIATOR_ADMIN_TOKEN": "admin-tok",
    "REMEDIATOR_TEST_BRUNO": "bruno-tok",
    "REMEDIATOR_TEST_CARLA": "carla-tok",
}


async def answer(
    replica: DaemonProcess, decision_id: int, token: str, *, approve: bool = True
) -> tuple[int, dict[str, Any]]:
    verb = "approve" if approve else "reject"
    async with replica.session.post(
        f"{replica.url}/api/v1/approvals/{decision_id}/{verb}",
        json={"reason": "checked the dashboards"},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        return resp.status, await resp.json()


async def pending(replica: DaemonProcess) -> list[dict[str, Any]]:
    async with replica.session.get(
        replica.url + "/api/v1/approvals", headers=replica.read_headers()
    ) as resp:
        assert resp.status == 200, await resp.text()
        approvals: list[dict[str, Any]] = (await resp.json())["approvals"]
        return approvals


async def asked(cluster: Cluster) -> tuple[DaemonProcess, DaemonProcess, int]:
    """(the replica holding the one approval asked, the other one, its decision id)."""
    held: dict[int, list[dict[str, Any]]] = {}

    async def one() -> bool:
        for i, r in enumerate(cluster.replicas):
            held[i] = await pending(r)
        return sum(len(v) for v in held.values()) == 1

    await eventually(one, timeout=30, what="the approval asked on one replica")
    holder = next(i for i, v in held.items() if v)
    owner, elsewhere = cluster.replicas[holder], cluster.replicas[1 - holder]
    assert await pending(elsewhere) == []  # the other replica does not hold it
    return owner, elsewhere, held[holder][0]["id"]


async def restarted_once(emu: KubeEmulator) -> None:
    async def restarted() -> bool:
        return restarts(emu)["api-0"] == 1

    await eventually(restarted, timeout=15, what="the approved restart")


async def approved_row(owner: DaemonProcess, elsewhere: DaemonProcess, sent: Any) -> Any:
    """The approved attempt's row, once it says `executed` (read on both replicas)."""

    async def audited() -> bool:
        rows = of(await audit_rows(elsewhere), [sent])
        return [r["outcome"] for r in rows] == ["executed"]

    await eventually(audited, timeout=30, what="the approved attempt's row")
    [row] = of(await audit_rows(owner), [sent])
    return row


@pytest.mark.timeout(90)
async def test_an_approval_answered_on_a_replica_not_holding_it_is_decided_by_its_holder(
    tmp_path: Path, emu: KubeEmulator, redis_server: Any, postgres_server: Any
) -> None:
    emu.add(deployment("api-0"))
    async with Cluster(
        tmp_path, emu, redis_server, postgres_server, 2, rules=APPROVAL_RULES,
        config=APPROVAL_CONFIG, env=APPROVAL_ENV,
    ) as cluster:  # fmt: skip
        [sent] = alerts(1)
        status, _ = await cluster.replicas[0].post(payload(sent))
        assert status == 200
        owner, elsewhere, decision_id = await asked(cluster)

        # The holder checks the approvers, as for an answer it received itself.
        status, body = await answer(elsewhere, decision_id, "carla-tok")
        assert (status, body["error"]) == (403, "carla is not an approver of rule restart-approved")
        assert restarts(emu) == Counter()

        status, body = await answer(elsewhere, decision_id, "bruno-tok")
        assert status == 200, body
        assert body["result"] == "kubernetes.rollout_restart prod/deployment/api-0 is running", body

        await restarted_once(emu)
        # Answered again, on either replica: decided already, nothing runs twice.
        status, body = await answer(elsewhere, decision_id, "bruno-tok")
        assert status == 409 and "no replica holds decision" in body["error"], body
        status, body = await answer(owner, decision_id, "admin-tok", approve=False)
        assert status == 409, body
        await asyncio.sleep(1.0)
        assert restarts(emu) == Counter({"api-0": 1})

        row = await approved_row(owner, elsewhere, sent)
        assert row["id"] == decision_id
        assert row["approval"].startswith("approved by bruno via api at ")
        assert row["approval"].endswith(": checked the dashboards")


async def press(replica: DaemonProcess, user: str, decision_id: int, *, later: float = 0) -> int:
    body, headers = click(user, approve=True, decision_id=decision_id, now=time.time() + later)
    async with replica.session.post(
        replica.url + "/slack/interactions", data=body, headers=headers
    ) as resp:
        await resp.read()
        return resp.status


@pytest.mark.timeout(90)
async def test_a_slack_click_on_a_replica_not_holding_the_approval_is_decided_by_its_holder(
    tmp_path: Path, emu: KubeEmulator, redis_server: Any, postgres_server: Any
) -> None:
    emu.add(deployment("api-0"))
    async with SlackApi() as slack:
        config = CONFIG + "auth: {{admin_token_env: REMEDIATOR_ADMIN_TOKEN}}\n" + slack.config()
        async with Cluster(
            tmp_path, emu, redis_server, postgres_server, 2, rules=APPROVAL_RULES,
            config=config, env={**APPROVAL_ENV, **slack_fake.ENV},
        ) as cluster:  # fmt: skip
            [sent] = alerts(1)
            status, _ = await cluster.replicas[0].post(payload(sent))
            assert status == 200
            owner, elsewhere, decision_id = await asked(cluster)

            # Not an approver: the holder says so to the user, and nothing runs.
            assert await press(elsewhere, "U0EVE", decision_id) == 200

            async def told(n: int) -> bool:
                return len(slack.calls("chat.postEphemeral")) >= n

            await eventually(lambda: told(1), timeout=10, what="the refusal told the user")
            [refused] = slack.calls("chat.postEphemeral")
            assert refused.args["user"] == "U0EVE"
            assert "not an approver of rule restart-approved" in refused.args["text"]

            assert await press(elsewhere, "U0ANA", decision_id, later=1) == 200

            await restarted_once(emu)

            async def updated() -> bool:
                return len(slack.calls("chat.update")) == 1

            await eventually(updated, timeout=10, what="the request's message updated")
            [update] = slack.calls("chat.update")
            assert "Approved by <@U0ANA>" in update.args["text"]
            # A second click, on either replica: no longer awaited, nothing runs twice.
            assert await press(elsewhere, "U0ANA", decision_id, later=2) == 200
            assert await press(owner, "U0ANA", decision_id, later=3) == 200
            await eventually(lambda: told(3), timeout=10, what="both late clicks answered")
            texts = [c.args["text"] for c in slack.calls("chat.postEphemeral")[1:]]
            assert texts == [f"Decision {decision_id} no longer awaits approval."] * 2, texts
            await asyncio.sleep(1.0)
            assert restarts(emu) == Counter({"api-0": 1})

            row = await approved_row(owner, elsewhere, sent)
            assert row["approval"].startswith("approved by <@U0ANA> via slack at ")
