"""Three replicas on Redis and PostgreSQL when what they stand on fails: an Alertmanager
HA pair sending everything twice, Redis crashing, PostgreSQL stopping, a replica frozen
past its lock.

The servers are real and started here (two clustered Alertmanagers, `redis-server`
with the documented `appendfsync always`, PostgreSQL 15), the replicas are daemon
processes behind the round-robin proxy of `test_replicas`, and every action is counted
where it happens: the Kubernetes emulator's rollout-restart PATCHes per deployment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remediator.engine.deciding import NEVER_STARTED
from tests import servers
from tests.daemon_process import eventually
from tests.harness import payload
from tests.kube_emulator import KubeEmulator, deployment
from tests.test_replicas import CONFIG, RULES, Cluster, RoundRobin, alerts, of, post_all, restarts

# The documented setting: every journal write is on disk before the 2xx.
REDIS_ARGS = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[servers.RedisServer]:
    with servers.RedisServer(extra_args=REDIS_ARGS) as r:
        yield r


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[servers.PostgresServer]:
    with servers.PostgresServer() as pg:
        yield pg


@pytest.fixture
def own_redis() -> Iterator[servers.RedisServer]:
    """A Redis of the test's own, to crash."""
    with servers.RedisServer(extra_args=REDIS_ARGS) as r:
        yield r


@pytest.fixture
def own_postgres() -> Iterator[servers.PostgresServer]:
    """A PostgreSQL of the test's own, to stop (initdb outside the test's event loop)."""
    with servers.PostgresServer() as pg:
        yield pg


@pytest.fixture(autouse=True)
async def _no_debug_loop() -> None:
    """The code under test runs in child processes; this loop only serves the emulator,
    the proxy and the load, which asyncio's debug mode (on for every test, conftest.py)
    makes several times slower — and on a loaded machine its blocked-loop guard then
    counts this process waiting for a core as a blocking call."""
    asyncio.get_running_loop().set_debug(False)


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator() as e:
        yield e


def per_occurrence(rows: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((r["fingerprint"], r["starts_at"]) for r in rows)


# --------------------------------------------------------------------------- Alertmanager

# The restart's own GET and PATCH only (no evidence read): the tests count PATCHes.
AM_RULES = RULES + "    evidence: false\n"


@pytest.mark.timeout(180)
async def test_two_clustered_alertmanagers_sending_everything_make_one_action_per_alert(
    tmp_path: Path,
    emu: KubeEmulator,
    redis_server: servers.RedisServer,
    postgres_server: servers.PostgresServer,
) -> None:
    n, shards = 2000, 20
    for i in range(n):
        emu.add(deployment(f"api-{i}"))
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    # As Prometheus does: every alert to both Alertmanagers, with the same startsAt.
    sent = [
        servers.alert(
            "APIDown",
            labels={"deployment": f"api-{i}", "shard": str(i % shards), "batch": tmp_path.name},
            starts_at=started,
        )
        for i in range(n)
    ]
    cluster = Cluster(tmp_path, emu, redis_server, postgres_server, 3, rules=AM_RULES)
    async with cluster, RoundRobin([r.url for r in cluster.replicas]) as proxy:
        ports = [servers.free_port(), servers.free_port()]
        pair = [
            servers.AlertmanagerServer(
                f"{proxy.url}/webhook/alertmanager",
                group_by=["shard"],
                group_wait="1s",
                group_interval="1s",
                repeat_interval="1h",
                log_level="warn",
                cluster_port=ports[i],
                peers=[f"{servers.LOOPBACK}:{ports[1 - i]}"],
                # Shorter than a delivery: the second mostly sends before the first's
                # notification log reaches it, so both deliver (nearly) every group.
                peer_timeout="1ms",
            )
            for i in range(2)
        ]
        try:
            await asyncio.gather(*(asyncio.to_thread(am.start) for am in pair))

            async def clustered() -> bool:
                states = [await asyncio.to_thread(am.api, "GET", "status") for am in pair]
                return all(len(s["cluster"]["peers"]) == 2 for s in states)

            await eventually(clustered, timeout=20, what="the two Alertmanagers clustered")
            for chunk in range(0, n, 500):
                await asyncio.gather(
                    *(asyncio.to_thread(am.post_alerts, sent[chunk : chunk + 500]) for am in pair)
                )

            def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
                # PostgreSQL is shared by the module: this test's alerts carry its batch.
                return [r for r in rows if r["alert"]["labels"].get("batch") == tmp_path.name]

            await assert_once(cluster, emu, mine, n)
            delivered: dict[str, Counter[str]] = {}
            for body in proxy.bodies:
                notification = json.loads(body)
                seen = delivered.setdefault(notification["externalURL"], Counter())
                seen.update(a["labels"]["deployment"] for a in notification["alerts"])
            # Both Alertmanagers delivered, and many alerts came from both: the pair's own
            # gossip spares a group its second delivery once the first's notification
            # log reaches the peer (as in production), which on a loaded machine can be
            # most groups; a tenth arriving twice (200) is what this test needs.
            assert sorted(delivered) == sorted(am.url for am in pair)
            first, second = delivered.values()
            twice = len(set(first) & set(second))
            assert twice >= n // 10, {url: len(seen) for url, seen in delivered.items()}
        finally:
            await asyncio.gather(*(asyncio.to_thread(am.stop) for am in pair))
        duplicates = sum([await r.metric("remediator_duplicates_total") for r in cluster.replicas])
        assert duplicates >= twice


# --------------------------------------------------------------------------- Redis crash

FAULT_CONFIG = CONFIG.replace(
    "audit:\n  kind: postgres\n",
    "audit:\n  kind: postgres\n  postgres: {{retry_interval: 200ms, timeout: 1s}}\n",
)
"""The replicas' config with a short PostgreSQL retry (the test waits seconds, not the
default 2 s per attempt); the code path is the same."""


async def assert_once(
    cluster: Cluster,
    emu: KubeEmulator,
    select: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    n: int,
    *,
    redone: bool = False,
) -> None:
    """Once every replica is idle: each of the `n` alerts (their audit rows: `select`)
    decided, each deployment restarted
    at most once, one audit row per alert, and every row that is not `executed` an
    action whose outcome was lost with the fault (`failed/interrupted`: never run
    again). With `redone` (Redis itself failed, and with it the audit spool), a decision
    cut off by the crash may be decided again: its first row stays `failed/interrupted`
    or `skipped/locked` beside the one that acted — still one action, never two."""
    reader = cluster.replicas[-1]
    cut = {("failed", "interrupted"), ("skipped", "locked")} if redone else set()

    def final(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [r for r in rows if (r["outcome"], r["reason"]) not in cut]
        decided = {(r["fingerprint"], r["starts_at"]) for r in out}
        # an occurrence only ever cut off keeps its (one) interrupted row
        extra = [
            r for r in rows
            if (r["fingerprint"], r["starts_at"]) not in decided
            and (r["outcome"], r["reason"]) == ("failed", "interrupted")
        ]  # fmt: skip
        return out + extra

    async def settled() -> bool:
        rows = final(select(await reader.decisions()))
        idle = [await r.settled() for r in cluster.replicas if r.running]
        return all(idle) and len(per_occurrence(rows)) == n

    try:
        await eventually(settled, timeout=90, what=f"a decision for each of {n} alerts")
    except AssertionError:
        rows = select(await reader.decisions())
        seen = Counter((r["outcome"], r["reason"]) for r in rows)
        idle = [await r.settled() for r in cluster.replicas if r.running]
        raise AssertionError(
            f"{len(per_occurrence(final(rows)))} of {n} decided; rows {dict(seen)}; "
            f"replicas settled {idle}; restarts {len(restarts(emu))}"
        ) from None
    await asyncio.sleep(1.0)  # a late double, or a late audit write, would show now
    counts = restarts(emu)
    assert max(counts.values()) == 1, counts.most_common(3)
    rows = final(select(await reader.decisions()))
    doubled = [(r["outcome"], r["reason"]) for r in rows if per_occurrence(rows)[
        (r["fingerprint"], r["starts_at"])] > 1]  # fmt: skip
    assert not doubled and len(rows) == n, doubled[:6]
    executed = {r["target"].rpartition("/")[2] for r in rows if r["outcome"] == "executed"}
    assert executed <= set(counts), "an executed row without its restart"
    unknown = [r for r in rows if r["outcome"] != "executed"]
    lost = [r for r in unknown if (r["outcome"], r["reason"]) != ("failed", "interrupted")]
    assert not lost, [(r["outcome"], r["reason"], r["detail"][:160]) for r in lost[:3]]
    assert len(counts) >= n - len(unknown)
    # An action that had not started when the fault hit is run once it passes, never
    # left "never started" with nobody acting or called.
    waiting = [r["fingerprint"] for r in rows if r["detail"].endswith(NEVER_STARTED)]
    assert not waiting, waiting[:5]


async def burst_with(
    cluster: Cluster, emu: KubeEmulator, n: int, fault: Any
) -> tuple[list[dict[str, Any]], set[str]]:
    """POST n alerts through the proxy (retrying 5xx as Alertmanager does) and run
    `fault` once a fifth of them acted; the alerts sent and the fingerprints acked."""
    async with RoundRobin([r.url for r in cluster.replicas]) as proxy:
        sent = alerts(n)
        burst = asyncio.create_task(post_all(proxy.url, [payload(a) for a in sent]))

        async def some_done() -> bool:
            return len(restarts(emu)) >= n // 5

        await eventually(some_done, timeout=60, what="the burst under way")
        await fault()
        acked, _ = await burst
    return sent, acked


@pytest.mark.timeout(180)
async def test_redis_crashing_mid_burst_loses_no_acknowledged_alert_and_doubles_none(
    tmp_path: Path,
    emu: KubeEmulator,
    postgres_server: servers.PostgresServer,
    own_redis: servers.RedisServer,
) -> None:
    """kill -9 of Redis (appendfsync always) mid-burst, started again on its files."""
    n = 300
    for i in range(n):
        emu.add(deployment(f"api-{i}"))
    redis = own_redis
    async with Cluster(tmp_path, emu, redis, postgres_server, 3, config=FAULT_CONFIG) as cluster:

        async def crash() -> None:
            await asyncio.to_thread(redis.halt, kill=True)
            await asyncio.sleep(0.5)  # webhooks answer 503 meanwhile; senders retry
            await asyncio.to_thread(redis.resume)

        sent, acked = await burst_with(cluster, emu, n, crash)
        assert len(acked) == n
        await assert_once(cluster, emu, lambda rows: of(rows, sent), n, redone=True)


# --------------------------------------------------------------------------- PostgreSQL


OUTAGE = 30.0
"""Seconds PostgreSQL is stopped, as #13 asks."""


@pytest.mark.timeout(120)
async def test_postgres_stopped_mid_burst_then_started_leaves_the_audit_whole_without_doubles(
    tmp_path: Path,
    emu: KubeEmulator,
    redis_server: servers.RedisServer,
    own_postgres: servers.PostgresServer,
) -> None:
    """PostgreSQL stopped for 30 s mid-burst (with `retry_interval: 200ms` the flusher
    fails about 150 times). Decisions go on meanwhile, the decisions API answers 503,
    and afterwards every decision is in PostgreSQL exactly once."""
    n = 300
    for i in range(n):
        emu.add(deployment(f"api-{i}"))
    pg = own_postgres
    async with Cluster(tmp_path, emu, redis_server, pg, 3, config=FAULT_CONFIG) as cluster:
        reader = cluster.replicas[2]
        during: list[int] = []

        async def outage() -> None:
            await asyncio.to_thread(pg.halt)
            before = len(restarts(emu))
            await asyncio.sleep(OUTAGE)
            during.append(len(restarts(emu)) - before)
            during.append(await reader.status("GET", "/api/v1/decisions"))
            await asyncio.to_thread(pg.resume)

        sent, acked = await burst_with(cluster, emu, n, outage)
        assert len(acked) == n
        assert during[0] > 0, "no action while PostgreSQL was down"
        assert during[1] == 503

        await assert_once(cluster, emu, lambda rows: of(rows, sent), n)
        ids = await asyncio.to_thread(pg.psql, "SELECT count(*), count(DISTINCT id) FROM decisions")
        total, distinct = ids.strip().split("|")
        assert total == distinct


# --------------------------------------------------------------------------- SIGSTOP

STALL_CONFIG = CONFIG.replace(
    "claim_idle: 5s, lock_ttl: 10s", "claim_idle: 2s, lock_ttl: 2s"
).replace("workers: 8", "workers: 2")
"""Short leases: a replica frozen for seconds has lost its lock and its claims."""


@pytest.mark.timeout(90)
async def test_a_replica_frozen_past_its_lock_does_not_act_after_the_new_holder(
    tmp_path: Path,
    emu: KubeEmulator,
    redis_server: servers.RedisServer,
    postgres_server: servers.PostgresServer,
) -> None:
    """Replica A reads the deployment (its restart under way, the lock checked) and is
    frozen with SIGSTOP before it PATCHes; its lock lapses. Another alert on the same
    deployment comes to replica B, which takes the lock and restarts it. When A wakes up
    its restart must not follow B's: one PATCH, and one executed row."""
    emu.add(deployment("api-0"))
    first, second = alerts(2)
    second["labels"]["deployment"] = "api-0"  # another occurrence, the same target
    async with Cluster(
        tmp_path, emu, redis_server, postgres_server, 2, rules=AM_RULES, config=STALL_CONFIG,
        start=1,
    ) as cluster:  # fmt: skip
        a, b = cluster.replicas
        emu.stall(2.0, verb="get")  # A's read of the deployment is answered late
        status, _ = await a.post(payload(first))
        assert status == 200

        async def reading() -> bool:
            return any(s.verb == "get" and s.name == "api-0" for s in emu.requests)

        await eventually(reading, timeout=20, what="A reading the deployment")
        os.kill(a.pid, signal.SIGSTOP)
        try:
            await b.start()
            await asyncio.sleep(2.5)  # past lock_ttl: A's lock has lapsed

            async def restarted() -> bool:
                status, _ = await b.post(payload(second))
                assert status == 200
                return len(restarts(emu)) == 1

            await eventually(restarted, timeout=30, what="B restarting the deployment")
        finally:
            os.kill(a.pid, signal.SIGCONT)

        async def both_done() -> bool:
            return all([await r.settled() for r in cluster.replicas])

        await eventually(both_done, timeout=20, what="A and B done")
        await asyncio.sleep(1.0)
        assert restarts(emu) == {"api-0": 1}, [
            (s.verb, s.name, s.status) for s in emu.requests if s.name == "api-0"
        ]
        rows = of(await b.decisions(), [first, second])
        assert [r["outcome"] for r in rows].count("executed") == 1, rows
