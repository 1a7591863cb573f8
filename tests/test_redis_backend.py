"""The Redis backend against a real redis-server: the same answers as the memory backend,
atomic under races between replicas, fenced when a holder lapses, nothing lost in the
stream when a replica dies.

Two `RedisState`s on one server stand for two replicas. Times are passed in (`now`), as
the engine passes its clock's; only the leases and lock TTLs are Redis's own time, kept
to a fraction of a second here. What the engine makes of a takeover is tested on one
daemon (in process, on the Redis backend) finding what a dead replica left, written into
Redis by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import structlog

from remediator import errors, intake
from remediator.backends import redis as redis_backend
from remediator.backends.postgres import PostgresAudit
from remediator.backends.state import GLOBAL, Claim, Mark, MemoryState, Pause
from remediator.clients.redis import Redis, Unsent
from remediator.engine import guards
from remediator.engine.clock import FakeClock
from remediator.engine.executing import Prepared, prepare
from remediator.engine.loop import Phase, Remediation
from remediator.engine.recording import Recorder, Work, occurrence_key
from remediator.metrics import Metrics
from remediator.models.alert import Alert
from remediator.models.decision import Outcome, Reason
from remediator.models.rule import ActionSpec, CircuitBreaker, Limits, Rule, Step
from remediator.runner import load_rules
from remediator.settings import Budgets, RedisBackend
from remediator.settings import PostgresAudit as PostgresAuditConfig
from tests import servers
from tests.harness import Harness, am_alert, payload

NOW = 1_800_000_000.0
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[servers.RedisServer]:
    with servers.RedisServer() as server:
        yield server


def config(**changes: Any) -> RedisBackend:
    base = {"url": "", "key_prefix": f"t{next(_prefixes)}", "claim_idle": 0.3, "lock_ttl": 0.3}
    return RedisBackend(**{**base, **changes})


async def claim_and_reserve(
    state: redis_backend.RedisState, key: str, target: str
) -> tuple[Claim, guards.Verdict]:
    """A replica claims an occurrence and reserves its target, as a decision does."""
    claim = await state.claim(key, skip=None, aged=False, now=NOW)
    assert claim is not None
    verdict = await state.reserve(
        rule=rule(), target=target, budgets=Budgets(), now=NOW, dry_run=False,
        occurrence=key, claim=claim.token,
    )  # fmt: skip
    assert verdict.reason is None and verdict.token
    return claim, verdict


@pytest.fixture
async def client(redis_server: servers.RedisServer) -> AsyncIterator[Redis]:
    r = Redis(redis_server.url, timeout=2.0)
    yield r
    await r.close()


async def replica(client: Redis, cfg: RedisBackend, name: str) -> redis_backend.RedisState:
    state = redis_backend.RedisState(client, cfg, replica=name)
    await state.start(NOW)
    return state


def rule(name: str = "r", **limits: Any) -> Rule:
    cb = CircuitBreaker(open_after=limits.pop("open_after", 2), reset_after=600)
    return Rule(
        name=name, matchers=(), steps=(Step(ActionSpec("log", {})),),
        limits=Limits(**{"cooldown": 0, "max_attempts": 5, "window": 300, **limits}),
        circuit_breaker=cb,
    )  # fmt: skip


STATUSES = [None, "held", "deciding", "executed/", "skipped/paused", "skipped/silenced",
            "skipped/cooldown", "failed/interrupted", "skipped/held_full"]  # fmt: skip
SKIPS = [None, Reason.PAUSED, Reason.SILENCED, Reason.BLACKOUT]


async def test_the_duplicate_guard_answers_as_the_memory_backend_for_every_status(
    client: Redis,
) -> None:
    state = await replica(client, config(), "a")
    for i, (prev, skip, aged) in enumerate(itertools.product(STATUSES, SKIPS, (False, True))):
        key = f"occ-{i}"
        if prev is not None:
            await state.set_occurrence(key, prev, NOW)
        got = await state.claim(key, skip=skip, aged=aged, now=NOW)
        expected = guards.should_decide(prev, skip, aged=aged)
        assert (got is not None) == expected, (prev, skip, aged)


async def test_limits_give_the_same_verdicts_as_the_memory_backend(client: Redis) -> None:
    """A random run of reservations, results and releases over a few targets and rules:
    every verdict (reason, detail, attempt) is the memory backend's."""
    shared = await replica(client, config(lock_ttl=60), "a")
    memory = MemoryState()
    rules = [rule("a", cooldown=30, max_attempts=3), rule("b", max_actions=4), rule("c")]
    budgets = Budgets(window=200, max_actions_per_window=12, max_targets_per_window=3)
    rng = random.Random(7)
    now = NOW
    held: list[tuple[str, int]] = []
    for _ in range(300):
        now += rng.choice([0, 1, 5, 20, 90])
        op = rng.random()
        r, target = rng.choice(rules), f"log t{rng.randrange(5)}"
        if op < 0.6:
            dry = rng.random() < 0.2
            a = await memory.reserve(rule=r, target=target, budgets=budgets, now=now, dry_run=dry)
            b = await shared.reserve(rule=r, target=target, budgets=budgets, now=now, dry_run=dry)
            assert (a.reason, a.detail, a.attempt) == (b.reason, b.detail, b.attempt)
            if a.reason is None and not dry:
                held.append((target, b.token))
        elif op < 0.8 and held:
            target, token = held.pop(rng.randrange(len(held)))
            await memory.release(target)
            await shared.release(target, token)
        else:
            ok = rng.random() < 0.4
            a_open = await memory.record_result(rule=r, target=target, ok=ok, now=now)
            b_open = await shared.record_result(rule=r, target=target, ok=ok, now=now)
            assert a_open == b_open


async def test_two_replicas_racing_for_one_occurrence_claim_it_once(client: Redis) -> None:
    cfg = config(claim_idle=30)  # both stay alive throughout
    a, b = await replica(client, cfg, "a"), await replica(client, cfg, "b")
    claims = await asyncio.gather(
        *(s.claim(f"occ-{i}", skip=None, aged=False, now=NOW) for i in range(100) for s in (a, b))
    )
    assert sum(c is not None for c in claims) == 100


async def test_two_replicas_racing_for_one_target_reserve_it_once(client: Redis) -> None:
    cfg = config(lock_ttl=60)
    a, b = await replica(client, cfg, "a"), await replica(client, cfg, "b")
    r = rule(cooldown=600)
    verdicts = await asyncio.gather(
        *(s.reserve(rule=r, target="log api", budgets=Budgets(), now=NOW, dry_run=False)
          for _ in range(20) for s in (a, b))
    )  # fmt: skip
    assert [v.reason for v in verdicts].count(None) == 1


async def test_a_lapsed_lock_has_a_new_holder_and_the_old_token_is_refused(client: Redis) -> None:
    cfg = config(lock_ttl=0.2)
    a, b = await replica(client, cfg, "a"), await replica(client, cfg, "b")
    r = rule()
    first = await a.reserve(rule=r, target="log api", budgets=Budgets(), now=NOW, dry_run=False)
    locked = await b.reserve(rule=r, target="log api", budgets=Budgets(), now=NOW, dry_run=False)
    assert first.reason is None and locked.reason is Reason.LOCKED
    await asyncio.sleep(0.3)  # a stalls; nobody renews its lock
    second = await b.reserve(rule=r, target="log api", budgets=Budgets(), now=NOW, dry_run=False)
    assert second.reason is None and second.token > first.token
    assert not await a.holds_lock("log api", first.token)
    assert await b.holds_lock("log api", second.token)
    await a.release("log api", first.token)  # the old holder's release leaves b's lock
    assert await b.holds_lock("log api", second.token)


class Adopting:
    """The engine's hooks as a shared state calls them, keeping the held alerts adopted."""

    def __init__(self) -> None:
        self.held: list[dict[str, Any]] = []

    async def adopt(self, held: list[dict[str, Any]], rems: list[dict[str, Any]]) -> None:
        self.held += held

    def abandon(self) -> None: ...

    async def resolved_elsewhere(self, alert: Any) -> None: ...


async def test_a_dead_replicas_work_is_adopted_once_and_its_old_token_is_refused(
    client: Redis,
) -> None:
    cfg = config(claim_idle=0.2)
    a = await replica(client, cfg, "a")
    claim = await a.claim("rule\x00fp\x00t0", skip=None, aged=False, now=NOW)
    assert claim is not None
    await a.set_occurrence("rule\x00fp\x00t0", "held", NOW, token=claim.token)
    await a.save_held("rule\x00fp\x00t0", {"key": "rule\x00fp\x00t0", "token": claim.token})  # type: ignore[misc]
    await asyncio.sleep(0.3)  # a's lease lapses
    b, c = await replica(client, cfg, "b"), await replica(client, cfg, "c")

    hb, hc = Adopting(), Adopting()
    await asyncio.gather(b._beat(hb, NOW), c._beat(hc, NOW))
    adopted = hb.held + hc.held
    assert len(adopted) == 1 and adopted[0]["token"] != claim.token
    # The stalled replica wakes: its held alert comes of age under its old token.
    assert (
        await a.claim("rule\x00fp\x00t0", skip=None, aged=True, now=NOW, token=claim.token) is None
    )
    with pytest.raises(errors.Superseded):
        await a.set_occurrence("rule\x00fp\x00t0", "executed/", NOW, token=claim.token)
    owner = b if hb.held else c
    got = await owner.claim(
        "rule\x00fp\x00t0", skip=None, aged=True, now=NOW, token=adopted[0]["token"]
    )
    assert got is not None


async def test_a_replica_that_stalled_past_its_lease_abandons_its_work(client: Redis) -> None:
    cfg = config(claim_idle=0.2)
    a = await replica(client, cfg, "a")
    abandoned = []

    class Hooks:
        async def adopt(self, held: Any, rems: Any) -> None: ...

        def abandon(self) -> None:
            abandoned.append(True)

        async def resolved_elsewhere(self, alert: Any) -> None: ...

    await asyncio.sleep(0.3)
    await a._beat(Hooks(), NOW)
    assert abandoned and a.replica != "a"
    with pytest.raises(errors.Superseded):
        await redis_backend.RedisState(client, cfg, replica="a").save_remediation("k", {"token": 1})


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait([task], timeout=2)
    if not task.done():
        task.print_stack()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def received() -> dt.datetime:
    return dt.datetime.fromtimestamp(NOW, dt.UTC)


async def test_a_dead_readers_journal_entries_are_claimed_by_another_and_none_twice(
    client: Redis,
) -> None:
    cfg = config(claim_idle=0.3)
    sa, sb = await replica(client, cfg, "a"), await replica(client, cfg, "b")
    ja = redis_backend.RedisJournal(client, cfg, limit=1000, state=sa)
    jb = redis_backend.RedisJournal(client, cfg, limit=1000, state=sb)
    await ja.start()
    for i in range(30):
        body = payload(am_alert("X", fingerprint=f"{i:016x}"))
        raw = json.dumps(body).encode()
        alerts = intake.replay("alertmanager", raw, received())
        await ja.append(
            source="alertmanager", payload=raw, alerts=alerts, request_id=f"r{i}",
            received_at=received(),
        )  # fmt: skip
    got_a: list[Any] = []
    reader = asyncio.create_task(ja.run(got_a.extend, intake.replay))
    while len(got_a) < 30:
        await asyncio.sleep(0.01)
    await stop(reader)  # a dies holding 30 entries, 10 of them finished
    for entry in got_a[:10]:
        ja.finish(entry)
    await asyncio.sleep(0.05)
    got_b: list[Any] = []
    claimer = asyncio.create_task(jb.run(got_b.extend, intake.replay))
    try:
        async with asyncio.timeout(5):
            while len(got_b) < 20:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # and nothing more comes
    finally:
        await stop(claimer)
    fingerprints = sorted(e.alert.fingerprint for e in got_b)
    assert fingerprints == sorted(e.alert.fingerprint for e in got_a[10:])
    for entry in got_b:
        jb.finish(entry)
    await asyncio.sleep(0.05)
    assert int(await client.call("XLEN", sa.key("journal"))) == 0
    assert int(await client.call("GET", sa.key("journal", "alerts"))) == 0


async def test_the_journal_refuses_past_the_backlog_bound_of_all_replicas(client: Redis) -> None:
    cfg = config()
    state = await replica(client, cfg, "a")
    journal = redis_backend.RedisJournal(client, cfg, limit=3, state=state)
    await journal.start()
    raw = b"{}"
    alerts = intake.replay("alertmanager", json_body(am_alert("X"), am_alert("Y")), received())
    await journal.append(source="alertmanager", payload=raw, alerts=alerts, request_id="1",
                         received_at=received())  # fmt: skip
    with pytest.raises(errors.Backpressure):
        await journal.append(source="alertmanager", payload=raw, alerts=alerts, request_id="2",
                             received_at=received())  # fmt: skip


def json_body(*alerts: dict[str, Any]) -> bytes:
    return json.dumps(payload(*alerts)).encode()


async def test_an_audit_push_whose_answer_was_lost_is_sent_again_and_written_once(
    client: Redis,
) -> None:
    """Redis ran the push, and the answer never came back (a read timeout on a loaded
    box): the retry must return the same ids and append nothing, or the audit shows one
    decision twice."""
    cfg = config()
    spool = redis_backend.Spool(client, cfg, state=await replica(client, cfg, "a"))
    real = spool._push
    answers: list[Any] = []

    async def answer_lost_once(keys: list[str], args: list[Any]) -> Any:
        answer = await real(keys, args)  # run by the real Redis...
        answers.append(answer)
        if len(answers) == 1:  # ...and its answer lost on the way back
            raise errors.BackendUnavailable("Timeout reading from redis")
        return answer

    spool._push = answer_lost_once  # type: ignore[assignment] # the lost answer, nothing else
    ids = await spool.push([("insert", 0, "[1]", None), ("insert", 0, "[2]", None)], now=NOW)
    assert len(answers) == 2 and answers[0] == answers[1]
    assert len(set(ids)) == 2
    assert await spool.length() == 2
    (more,) = await spool.push([("insert", 0, "[3]", None)], now=NOW)  # its own ids
    assert more > max(ids)
    assert await spool.length() == 3


async def test_an_audit_row_and_its_occurrences_status_are_written_together_or_not_at_all(
    client: Redis,
) -> None:
    """The status that makes a re-delivery a duplicate is set by the script that spools
    the row, fenced by the claim: a decided occurrence always has its row, and a claim
    taken over writes neither."""
    cfg = config()
    a = await replica(client, cfg, "a")
    spool = redis_backend.Spool(client, cfg, state=a)
    claim = await a.claim("occ", skip=None, aged=False, now=NOW)
    assert claim is not None
    stale = Mark("occ", "skipped/cooldown", claim.token + 1000)
    assert await spool.push([("insert", 0, "[1]", stale)], now=NOW) == [0]
    assert await spool.length() == 0
    assert await a.occurrence("occ") == "deciding"
    (row,) = await spool.push([("insert", 0, "[1]", Mark("occ", "executed/", claim.token))])
    assert row and await spool.length() == 1
    assert await a.occurrence("occ") == "executed/"


async def test_a_dead_replicas_reservation_and_row_go_to_the_replica_taking_its_claim_over(
    client: Redis,
) -> None:
    """A replica reserved a target for an occurrence and wrote the action's row (or the
    approval request's), then died before its action started (or before it kept the
    request's record: nobody was asked): the replica that takes the claim over inherits
    that lock (no `locked` refusal until it lapses) and that row (no second one). Once the
    action has started, the occurrence is never taken over."""
    cfg = config(lock_ttl=60)
    a, b, c = [await replica(client, cfg, name) for name in "abc"]
    spool = redis_backend.Spool(client, cfg, state=a)
    for key, status, started in (
        ("occ-1", "failed/interrupted", False),
        ("occ-2", "failed/interrupted", True),
        ("occ-3", "awaiting_approval/", False),
    ):
        target = f"log {key}"
        claim, verdict = await claim_and_reserve(a, key, target)
        mark = Mark(key, status, claim.token, "=")
        (row,) = await spool.push([("insert", 0, "[1]", mark)], now=NOW)
        if started:
            await spool.push([("update", row, "[]", Mark(key, "", claim.token, "started"))])
        await client.call("DEL", a.key("live", "a"))  # a dies (its lease lapses)
        taken = await b.claim(key, skip=None, aged=False, now=NOW + 1)
        if started:
            assert taken is None  # its side effect may have happened: never again
            continue
        assert taken is not None and (taken.lock, taken.row) == (verdict.token, row)
        token = await b.take_lock(target, taken.lock, occurrence=key, claim=taken.token)
        assert token and await b.holds_lock(target, token)
        assert await c.take_lock(target, taken.lock) == 0  # b's now, not anyone's
        refused = await c.reserve(
            rule=rule(), target=target, budgets=Budgets(), now=NOW + 1, dry_run=False
        )
        assert refused.reason is Reason.LOCKED


async def recorder_of(
    client: Redis, cfg: RedisBackend, state: redis_backend.RedisState
) -> tuple[Recorder, redis_backend.Spool]:
    spool = redis_backend.Spool(client, cfg, state=state)
    audit = PostgresAudit(spool, PostgresAuditConfig())
    return Recorder(audit=audit, state=state, metrics=Metrics(), clock=FakeClock(NOW)), spool


async def test_a_stale_replicas_update_of_a_row_taken_over_is_refused_and_writes_nothing(
    client: Redis,
) -> None:
    """A's action waited for a slot; A stalled past its lease, B took the occurrence over
    and ran the action on the same row. A wakes, its action gets its slot and is refused
    (a pause A still believes in): its `skipped` must not overwrite B's row or status."""
    cfg = config(lock_ttl=60)
    a, b = await replica(client, cfg, "a"), await replica(client, cfg, "b")
    alert = intake.replay("alertmanager", json_body(am_alert("X")), received())[0]
    w = Work(alert, rule(), NOW, "req")
    recorder_a, spool = await recorder_of(client, cfg, a)
    claim = await a.claim(w.key, skip=None, aged=False, now=NOW)
    assert claim is not None
    w_a = w.with_token(claim.token)
    (row,) = await spool.push(
        [("insert", 0, "[1]", Mark(w.key, "failed/interrupted", claim.token, "="))]
    )
    await client.call("DEL", a.key("live", "a"))  # a stalls past its lease
    taken = await b.claim(w.key, skip=None, aged=False, now=NOW + 1)
    assert taken is not None and taken.row == row
    await spool.push([("update", row, "[]", Mark(w.key, "", taken.token, "started"))])
    await spool.push([("update", row, "[]", Mark(w.key, "executed/", taken.token, "-"))])
    before = await spool.length()
    with pytest.raises(errors.Superseded):
        await recorder_a.update(w_a, row, Outcome.SKIPPED, Reason.PAUSED, detail="paused")
    assert await spool.length() == before  # row R keeps B's outcome
    assert await a.occurrence(w.key) == "executed/"


async def test_a_row_taken_over_is_the_row_of_whatever_the_new_owner_decides(
    client: Redis,
) -> None:
    """A replica wrote an action's row ("never started") and died; the replica taking the
    claim over decides otherwise (the alert resolved meanwhile): its decision is written
    on that row, not beside it — the audit does not keep saying "never started"."""
    cfg = config()
    a, b = await replica(client, cfg, "a"), await replica(client, cfg, "b")
    alert = intake.replay("alertmanager", json_body(am_alert("X")), received())[0]
    w = Work(alert, rule(), NOW, "req")
    recorder_a, spool = await recorder_of(client, cfg, a)
    recorder_b, _ = await recorder_of(client, cfg, b)
    claim = await a.claim(w.key, skip=None, aged=False, now=NOW)
    assert claim is not None
    row = await recorder_a.record(
        w.with_token(claim.token), Outcome.FAILED, Reason.INTERRUPTED, detail="never started",
        durable=True, final=False, act="=",
    )  # fmt: skip
    await client.call("DEL", a.key("live", "a"))  # a dies
    taken = await b.claim(w.key, skip=None, aged=False, now=NOW + 1)
    assert taken is not None and taken.row == row
    before = await spool.length()
    decided = await recorder_b.record(
        w.with_token(taken.token, taken.row), Outcome.SKIPPED, Reason.TOO_YOUNG,
        detail="resolved before it was decided", durable=True,
    )  # fmt: skip
    assert decided == row
    entries = await spool.take(100, block=0.01)
    assert len(entries) == before + 1 and entries[-1][1:3] == ("update", row)
    assert await b.occurrence(w.key) == "skipped/too_young"


async def test_a_reservation_used_up_is_not_inherited_by_a_replica_taking_the_claim_over(
    client: Redis,
) -> None:
    """A reservation is inherited only while its attempt has not happened: once the
    remediation that used it ended (its record dropped), or its action ended, a replica
    taking the occurrence over reserves afresh (cooldown, attempts and budgets checked)."""
    cfg = config(lock_ttl=0.1)
    b = await replica(client, cfg, "b")
    for n, how in enumerate(("record dropped", "action ended")):
        a = await replica(client, cfg, f"a{n}")
        spool = redis_backend.Spool(client, cfg, state=a)
        key, target = f"occ-{n}", f"log occ-{n}"
        claim, _ = await claim_and_reserve(a, key, target)
        if how == "record dropped":
            await a.save_remediation(key, {"token": claim.token})
            await a.set_occurrence(key, guards.DECIDING, NOW, token=claim.token)
            await a.drop_remediation(key, claim.token)
        else:
            mark = Mark(key, "failed/interrupted", claim.token, "=")
            (row,) = await spool.push([("insert", 0, "[1]", mark)], now=NOW)
            await spool.push([("update", row, "[]", Mark(key, guards.DECIDING, claim.token, "-"))])
        await asyncio.sleep(0.15)  # the lock lapses
        await client.call("DEL", a.key("live", a.replica))  # a dies
        taken = await b.claim(key, skip=None, aged=False, now=NOW + 1)
        assert taken is not None
        assert taken.lock == 0, how


async def test_a_claim_taken_over_says_which_target_its_inherited_reservation_is_on(
    client: Redis,
) -> None:
    """The replica taking a claim over inherits the lock only for the target it was
    reserved on (the rule may name another now): the claim says which, from the
    reservation and from a lock taken over before."""
    cfg = config(lock_ttl=60)
    a, b, c = [await replica(client, cfg, name) for name in "abc"]
    claim = await a.claim("occ", skip=None, aged=False, now=NOW)
    assert claim is not None
    verdict = await a.reserve(
        rule=rule(), target="log x", budgets=Budgets(), now=NOW, dry_run=False,
        occurrence="occ", claim=claim.token,
    )  # fmt: skip
    assert verdict.token
    await client.call("DEL", a.key("live", "a"))  # a dies
    taken = await b.claim("occ", skip=None, aged=False, now=NOW + 1)
    assert taken is not None and (taken.lock, taken.target) == (verdict.token, "log x")
    token = await b.take_lock("log x", taken.lock, occurrence="occ", claim=taken.token)
    assert token
    await client.call("DEL", b.key("live", "b"))  # b dies too
    again = await c.claim("occ", skip=None, aged=False, now=NOW + 2)
    assert again is not None and (again.lock, again.target) == (token, "log x")


async def test_a_claim_given_up_is_not_forgotten_under_a_remediation_that_owns_it(
    client: Redis,
) -> None:
    """An audit push given up (Redis did not answer) forgets its claim later, if the
    occurrence is still `deciding`; a remediation's step rows are pushed under its token
    too, and `deciding` lasts through its next attempt: the occurrence a remediation owns
    is never forgotten from under it."""
    cfg = config()
    a = await replica(client, cfg, "a")
    claim = await a.claim("occ", skip=None, aged=False, now=NOW)
    assert claim is not None
    await a.save_remediation("occ", {"token": claim.token})
    await a.set_occurrence("occ", guards.DECIDING, NOW, token=claim.token)
    a.forget_later("occ", claim.token)
    assert await a.forget_pending()
    assert await a.occurrence("occ") == guards.DECIDING
    assert await client.call("HGET", a.key("occ", "occ"), "rem") == b"1"


async def test_a_fenced_write_on_an_occurrence_gone_is_refused_not_written_ownerless(
    client: Redis,
) -> None:
    """A write under a claim's token finds the occurrence gone (it expired, or was
    forgotten and re-claimed nowhere yet): refused, not recreated without an owner."""
    cfg = config()
    a = await replica(client, cfg, "a")
    spool = redis_backend.Spool(client, cfg, state=a)
    claim = await a.claim("occ", skip=None, aged=False, now=NOW)
    assert claim is not None
    await client.call("DEL", a.key("occ", "occ"))
    assert await spool.push([("insert", 0, "[1]", Mark("occ", "executed/", claim.token))]) == [0]
    assert await spool.length() == 0
    with pytest.raises(errors.Superseded):
        await a.set_occurrence("occ", "executed/", NOW, token=claim.token)
    assert await client.call("EXISTS", a.key("occ", "occ")) == 0
    await a.set_occurrence("occ", "held", NOW)  # unfenced (the embedded way): written
    assert await a.occurrence("occ") == "held"


async def test_a_remediation_record_refused_for_a_stale_token_is_not_kept(client: Redis) -> None:
    """A replica whose claim on an occurrence was taken over saves its remediation
    record: refused, and nothing of it is left in its hash for a replica adopting it."""
    cfg = config()
    a = await replica(client, cfg, "a")
    claim = await a.claim("occ", skip=None, aged=False, now=NOW)
    assert claim is not None
    await client.call("HSET", a.key("occ", "occ"), "token", claim.token + 1000)  # taken over
    with pytest.raises(errors.Superseded):
        await a.save_remediation("occ", {"token": claim.token})
    assert await client.call("HEXISTS", a.key("rem", "a"), "occ") == 0


ADOPTED_RULE = """
rules:
  - name: adopted
    matchers: ['alertname = "X"']
    action: {type: log, params: {message: "restart"}}
    limits: {cooldown: 1h, max_attempts: 5}
    verify: {resolve_within: never}
"""


def adopting_harness(
    redis_server: servers.RedisServer, tmp_path: Path, rules: str = ADOPTED_RULE
) -> tuple[Harness, str]:
    """A daemon on the Redis backend (acting for real), and its keys' prefix."""
    prefix = f"t{next(_prefixes)}"
    h = Harness(
        tmp_path, rules=rules,
        config="dry_run: false\n"
        f"backend: {{kind: redis, redis: {{key_prefix: {prefix}, claim_idle: 300ms, "
        "lock_ttl: 30s, poll_interval: 100ms}}\n",
        env={"REMEDIATOR_REDIS_URL": redis_server.url},
    )  # fmt: skip
    return h, f"{{{prefix}}}:"


async def test_an_adopted_action_that_never_started_is_not_run_once_the_alert_resolved(
    redis_server: servers.RedisServer, tmp_path: Path
) -> None:
    """A dead replica's remediation had reserved its target and written the action's row,
    and waited for a slot; meanwhile another replica saw the alert resolve. The replica
    adopting it must not run that action (`act_again` asks whether the alert still fires,
    as any next attempt does): the step is recorded `skipped/resolved`, nothing runs."""
    h, p = adopting_harness(redis_server, tmp_path)
    rule_, _, alert, prepared, _ = an_alert_for(h)
    now = h.clock.now()
    rem = Remediation(
        rule_, alert, "req", phase=Phase.ACTING, target=prepared.target, decision_id=4242,
        started=now, token=5, lock_token=7,
    )  # fmt: skip
    r = Redis(redis_server.url, timeout=2.0)
    try:  # what the dead replica left: its record, its claim, its lock; a resolve seen
        await r.call("ZADD", p + "replicas", 0, "dead")
        await r.call("HSET", p + "rem:dead", rem.key, "5|" + json.dumps(rem.to_json()))
        await r.call(
            "HSET", p + "occ:" + rem.key, "status", "failed/interrupted", "at", now,
            "owner", "dead", "token", 5, "rem", "1", "act", 4242, "res", 7,
            "rtarget", prepared.target,
        )  # fmt: skip
        await r.call("SET", p + "lock:" + prepared.target, 7, "PX", 30000)
        await r.call("SET", p + "resolved:" + alert.occurrence, now)
    finally:
        await r.close()
    async with h:
        for _ in range(100):  # adopted within claim_idle/3 of the start
            await asyncio.sleep(0.1)
            await h.advance(1)  # fires what the adoption armed
            if await h.outcomes() or await h.metric(
                "remediator_actions_total", rule="adopted", action="log", result="ok"
            ):
                break
        ran = await h.metric("remediator_actions_total", rule="adopted", action="log", result="ok")
        assert ran == 0
        assert await h.outcomes() == [("skipped", "resolved")]


async def test_an_adopted_action_whose_outcome_is_unknown_and_not_verified_calls_a_human(
    redis_server: servers.RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead replica's action had started when it died (whether it acted is unknown) and
    its rule verifies nothing (`resolve_within: never`): nothing will ever tell whether
    it worked, so the replica adopting it never runs it again and calls a human."""
    async with servers.WebhookReceiver() as receiver:
        monkeypatch.setenv("REMEDIATOR_TEST_ESCALATE_URL", f"{receiver.url}/escalate")
        rules = ADOPTED_RULE + (
            "    escalate:\n"
            "      {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}}\n"
        )
        h, p = adopting_harness(redis_server, tmp_path, rules)
        rule_, _, alert, prepared, _ = an_alert_for(h)
        now = h.clock.now()
        rem = Remediation(
            rule_, alert, "req", phase=Phase.ACTING, target=prepared.target,
            decision_id=4242, started=now, token=5, lock_token=7,
        )  # fmt: skip
        r = Redis(redis_server.url, timeout=2.0)
        try:  # what the dead replica left: its record, its claim, its action started
            await r.call("ZADD", p + "replicas", 0, "dead")
            await r.call("HSET", p + "rem:dead", rem.key, "5|" + json.dumps(rem.to_json()))
            await r.call(
                "HSET", p + "occ:" + rem.key, "status", "failed/interrupted", "at", now,
                "owner", "dead", "token", 5, "rem", "1", "act", "started",
            )  # fmt: skip
        finally:
            await r.close()
        async with h:
            for _ in range(100):  # adopted within claim_idle/3 of the start
                await asyncio.sleep(0.1)
                await h.advance(1)
                if receiver.requests:
                    break
            await asyncio.sleep(0.3)  # a second page, or the action run, would show now
            assert len(receiver.requests) == 1
            assert "outcome unknown" in receiver.requests[0].json()["text"]
            ran = await h.metric(
                "remediator_actions_total", rule="adopted", action="log", result="ok"
            )
            assert ran == 0


async def test_a_claim_whose_answer_was_lost_is_not_taken_for_another_replicas(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis ran the claim (the occurrence `deciding`, owned by this replica) and its
    answer never came back. Sent again, the claim answers the same; given up on, it is
    let go of before the alert is handed out again. Before, the retry found the
    occurrence `deciding` by a live replica and skipped it as a duplicate: an
    acknowledged alert never decided."""
    monkeypatch.setattr(redis_backend, "RESTART_GRACE", 0.3)
    a = await replica(client, config(), "a")
    real, answers = a._claim, []

    async def answers_lost(n: int) -> Any:
        async def claim(keys: list[str], args: list[Any]) -> Any:
            answer = await real(keys, args)  # run by the real Redis...
            answers.append(answer)
            if len(answers) <= n:  # ...and its answer lost on the way back
                raise errors.BackendUnavailable("Timeout reading from redis")
            return answer

        return claim

    a._claim = await answers_lost(1)  # type: ignore[assignment] # the lost answer only
    claim = await a.claim("occ", skip=None, aged=False, now=NOW)
    assert claim is not None and len(answers) == 2
    assert claim.token == int(answers[0][2])  # the same claim, not a second one
    assert await a.claim("occ", skip=None, aged=False, now=NOW) is None  # decided by it

    monkeypatch.setattr(redis_backend, "RESTART_GRACE", 0.0)  # one try each
    answers.clear()
    a._claim = await answers_lost(1000)  # type: ignore[assignment] # two deliveries at once
    for _ in range(2):  # the first claims, the second finds it claimed: both unheard
        with pytest.raises(errors.BackendUnavailable):
            await a.claim("occ3", skip=None, aged=False, now=NOW)
    a._claim = real  # type: ignore[method-assign]
    assert await a.forget_pending()
    assert await a.claim("occ3", skip=None, aged=False, now=NOW) is not None
    monkeypatch.setattr(redis_backend, "RESTART_GRACE", 0.3)

    answers.clear()
    a._claim = await answers_lost(1000)  # type: ignore[assignment] # Redis never answers
    with pytest.raises(errors.BackendUnavailable):
        await a.claim("occ2", skip=None, aged=False, now=NOW)
    assert answers and await a.occurrence("occ2") == guards.DECIDING  # it did run
    a._claim = real  # type: ignore[method-assign]
    assert await a.forget_pending()  # before the journal hands the alert out again
    assert await a.claim("occ2", skip=None, aged=False, now=NOW) is not None


def state_of(h: Harness) -> redis_backend.RedisState:
    """The running daemon's Redis state (whose script calls a test may wrap with a fault)."""
    state = h.daemon.state
    assert isinstance(state, redis_backend.RedisState)
    return state


class ForRule(NamedTuple):
    """An alert for the harness's one rule: as sent, as received, its prepared action
    and its occurrence key."""

    rule: Rule
    sent: dict[str, Any]
    alert: Alert
    prepared: Prepared
    key: str


def an_alert_for(h: Harness) -> ForRule:
    (rule_,) = load_rules(h.settings)
    sent = am_alert("X")
    alert = intake.replay("alertmanager", json_body(sent), received())[0]
    prepared = prepare(rule_.steps[0].action, rule_, alert, h.settings)
    assert isinstance(prepared, Prepared)
    key = occurrence_key(rule_.name, alert.fingerprint, alert.starts_iso)
    return ForRule(rule_, sent, alert, prepared, key)


async def decided(h: Harness, sent: dict[str, Any]) -> tuple[list[tuple[str, str]], float]:
    """Fire `sent` and wait until a row says more than "never started" (the action runs
    after its row is written): the outcomes, and how many `log` actions ran. Up to 20 s:
    on a loaded box a lost answer can take several decisions (each a journal retry) to
    be through."""
    await h.fire(sent)
    for _ in range(400):
        await asyncio.sleep(0.05)
        if set(await h.outcomes()) - {("failed", "interrupted")}:
            break
    ran = await h.metric("remediator_actions_total", rule="adopted", action="log", result="ok")
    return await h.outcomes(), ran


async def test_a_reservation_whose_answer_was_lost_is_inherited_by_the_decisions_retry(
    redis_server: servers.RedisServer, tmp_path: Path
) -> None:
    """Redis ran the reservation (the target locked, its cooldown and counts taken), and
    the answer never came back: the decision fails and its alert is decided again. That
    retry must act on the reservation already made, not be refused by it (`locked`, or
    an hour's `cooldown` with nothing done)."""
    h, _ = adopting_harness(redis_server, tmp_path)
    async with h:
        state = state_of(h)
        real, lost = state._reserve, []

        async def answer_lost_once(keys: list[str], args: list[Any]) -> Any:
            answer = await real(keys, args)  # run by the real Redis...
            if not lost:  # ...and its answer lost on the way back
                lost.append(answer)
                raise errors.BackendUnavailable("Timeout reading from redis")
            return answer

        state._reserve = answer_lost_once  # type: ignore[assignment] # the lost answer only
        outcomes, ran = await decided(h, am_alert("X"))
        assert lost
        assert outcomes == [("executed", "")] and ran == 1


@pytest.mark.parametrize("lost", ["refused", "answer lost"])
async def test_an_action_whose_record_could_not_be_kept_is_decided_again_not_skipped(
    redis_server: servers.RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    lost: str,
) -> None:  # fmt: skip
    """The action's row is written, and its remediation record fails (Redis refuses it,
    or keeps it without our hearing back, past `RESTART_GRACE`): the decision fails,
    nothing runs, and the alert is decided again. That retry must act — not take the
    record for a duplicate (never acted on, nobody called), nor be refused by its own
    reservation (an hour's cooldown)."""
    monkeypatch.setattr(redis_backend, "RESTART_GRACE", 0.2)
    h, _ = adopting_harness(redis_server, tmp_path)
    async with h:
        state = state_of(h)
        real, failed = state._save, []

        async def failing_at_first(keys: list[str], args: list[Any]) -> Any:
            if len(failed) < 3:
                failed.append(args[0])
                if lost == "refused":
                    raise Unsent("Error 111 connecting to redis")
                await real(keys, args)  # kept, and its answer lost on the way back
                raise errors.BackendUnavailable("Timeout reading from redis")
            return await real(keys, args)

        state._save = failing_at_first  # type: ignore[assignment] # Redis away, then back
        outcomes, ran = await decided(h, am_alert("X"))
        assert failed
        assert ("executed", "") in outcomes and ("skipped", "cooldown") not in outcomes
        assert ran == 1


async def test_a_first_attempt_put_off_whose_record_could_not_be_kept_is_put_off_again(
    redis_server: servers.RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target is locked (another attempt runs): the alert's attempt is put off until
    the lock lapses, and that waiting remediation's record fails. Decided again, it is
    put off again and its record kept — not taken for a duplicate of the one that was
    never kept (whose timer would find its claim forgotten: the alert lost)."""
    monkeypatch.setattr(redis_backend, "RESTART_GRACE", 0.2)
    h, p = adopting_harness(redis_server, tmp_path)
    _, sent, _, prepared, key = an_alert_for(h)
    async with h:
        state = state_of(h)
        await state._r.call("SET", p + "lock:" + prepared.target, 99, "PX", 30_000)
        real, failed = state._save, []

        async def refused_at_first(keys: list[str], args: list[Any]) -> Any:
            if len(failed) < 3:
                failed.append(args[0])
                raise Unsent("Error 111 connecting to redis")
            return await real(keys, args)

        state._save = refused_at_first  # type: ignore[assignment] # Redis away, then back
        await h.fire(sent)
        record = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            record = await state._r.call("HGET", p + "rem:" + state.replica, key)
            if record:
                break
        assert failed and record
        assert json.loads(bytes(record).decode().split("|", 1)[1])["phase"] == "waiting"


async def test_a_first_decision_superseded_while_keeping_its_record_leaves_nothing_behind(
    redis_server: servers.RedisServer, tmp_path: Path
) -> None:
    """Another replica took the occurrence over between the action's row and its
    remediation record (the save is refused for the claim's token): this replica hands
    off. The remediation it began must not stay in its memory (shown in the console,
    answering every re-delivery as a duplicate, and failing the alert's resolve)."""
    h, _ = adopting_harness(redis_server, tmp_path)
    async with h:
        state = state_of(h)
        real, calls = state._save, []

        async def refused_for_the_token_once(keys: list[str], args: list[Any]) -> Any:
            calls.append(args[0])
            return -1 if len(calls) == 1 else await real(keys, args)

        state._save = refused_for_the_token_once  # type: ignore[assignment] # taken over
        await h.fire(am_alert("X"))
        for _ in range(40):
            await asyncio.sleep(0.05)
            if calls:
                break
        await h.settle()
        assert calls
        assert not h.daemon.engine.loop.snapshot("adopted")


async def test_the_calls_around_a_running_action_wait_out_a_redis_restart_or_do_not_act(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between an action's start and its outcome the replica checks its lock (right before
    the side effect), counts the result for the circuit and lets the lock go. Redis
    restarting just then (AOF `always`, as documented): the lock check and the count
    wait it out; a release that fails does not raise over what the action did (the
    lock lapses by itself); a lock check Redis cannot answer at all says "not held", so
    nothing is done on a target another replica may hold."""
    monkeypatch.setattr(redis_backend, "RESTART_GRACE", 3.0)
    with servers.RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as (
        server
    ):
        r = Redis(server.url, timeout=2.0)
        try:
            state = await replica(r, config(lock_ttl=30), "a")
            _, verdict = await claim_and_reserve(state, "occ", "log x")

            async def restart() -> None:
                await asyncio.to_thread(server.halt, kill=True)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(server.resume)

            crash = asyncio.create_task(restart())
            await asyncio.sleep(0.1)  # Redis is gone now
            assert await state.holds_lock("log x", verdict.token)  # waited for it
            await crash
            await state.record_result(rule=rule(), target="log x", ok=False, now=NOW)
            circuit = state.key("circ", "r\x00log x")
            assert await r.call("HGET", circuit, "failures") == b"1"
            crash = asyncio.create_task(restart())
            await asyncio.sleep(0.1)
            await state.record_result(rule=rule(), target="log x", ok=True, now=NOW)
            await crash
            assert not await r.call("EXISTS", circuit)  # waited for it: the success counted
            await asyncio.to_thread(server.halt, kill=True)
            await state.release("log x", verdict.token)  # does not raise
            assert not await state.holds_lock("log x", verdict.token)  # cannot say: not held
            await asyncio.to_thread(server.resume)
            assert await state.holds_lock("log x", verdict.token)  # never let go of: lapses
        finally:
            await r.close()


async def test_a_claim_taken_over_inherits_no_lock_for_another_target_than_it_reserved(
    redis_server: servers.RedisServer, tmp_path: Path
) -> None:
    """A dead replica claimed an occurrence and reserved a target the rule no longer
    names (a reload since): the replica taking the claim over reserves the rule's target
    through the limits (here its cooldown refuses) instead of inheriting that lock."""
    h, p = adopting_harness(redis_server, tmp_path)
    _, sent, _, prepared, key = an_alert_for(h)
    now = h.clock.now()
    r = Redis(redis_server.url, timeout=2.0)
    try:  # the dead replica's claim and reservation (its lock lapsed); a cooldown running
        await r.call("ZADD", p + "replicas", 0, "dead")
        await r.call(
            "HSET", p + "occ:" + key, "status", "deciding", "at", now, "owner", "dead",
            "token", 5, "res", 7, "rtarget", "log elsewhere",
        )  # fmt: skip
        await r.call("SET", p + "last:" + prepared.target, now - 10, "PX", 3_600_000)
    finally:
        await r.close()
    async with h:
        resp = await h.post(payload(sent))
        assert resp.status < 300
        for _ in range(100):
            await asyncio.sleep(0.1)
            await h.settle()
            if await h.outcomes():
                break
        ran = await h.metric("remediator_actions_total", rule="adopted", action="log", result="ok")
        assert ran == 0
        assert await h.outcomes() == [("skipped", "cooldown")]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "appendonly no"),
        (["--appendonly", "yes", "--appendfsync", "everysec"], "appendfsync everysec"),
        (["--appendonly", "yes", "--appendfsync", "always"], None),
    ],
)
async def test_a_redis_whose_persistence_is_less_than_documented_is_named_at_start(
    tmp_path: Path, args: list[str], said: str | None
) -> None:
    """An operator who left Redis at its defaults is told at start what a 2xx then
    survives; the documented setting starts without the warning."""
    with servers.RedisServer(extra_args=args) as server:
        h = Harness(
            tmp_path, rules=ADOPTED_RULE,
            config=f"backend: {{kind: redis, redis: {{key_prefix: t{next(_prefixes)}}}}}\n",
            env={"REMEDIATOR_REDIS_URL": server.url},
        )  # fmt: skip
        with structlog.testing.capture_logs() as logs:
            await h.start()
        await h.stop()
    warned = [e for e in logs if e["event"] == "redis_persistence_weak"]
    if said is None:
        assert warned == []
    else:
        [event] = warned
        assert event["problem"].startswith(said)
        assert "appendfsync always" in event["hint"]


async def test_a_pause_it_cannot_read_pauses_and_the_pauses_set_after_it_are_still_seen(
    client: Redis,
) -> None:
    # A pause entry this replica cannot read (hand-written in an emergency, or by another
    # version) must neither vanish nor stop the poll that brings the other pauses: a kill
    # switch set later from another replica still has to reach this one.
    cfg = config(poll_interval=0.05, claim_idle=3.0)
    a = await replica(client, cfg, "a")
    b = await replica(client, cfg, "b")

    class Hooks:
        async def adopt(self, held: Any, rems: Any) -> None: ...

        def abandon(self) -> None: ...

        async def resolved_elsewhere(self, alert: Any) -> None: ...

    task = asyncio.create_task(a.run(Hooks(), lambda: NOW))
    try:
        await client.call("HSET", a.key("pauses"), "other", '{"by": "ops"}')
        await asyncio.sleep(0.3)
        assert not task.done(), "the shared-state poll stopped"
        unreadable = a.pause_of("other", NOW)
        assert unreadable is not None and "cannot be read" in unreadable.reason
        assert a.pause_of("r", NOW) is None  # it pauses its own key, not everything
        await b.set_pause(GLOBAL, Pause("ops", "incident", NOW, None))
        await asyncio.sleep(0.3)
        assert a.pause_of("r", NOW) is not None
        c = await replica(client, cfg, "c")  # a replica (re)starting while paused
        assert c.pause_of("r", NOW) is not None and c.pause_of("other", NOW) is not None
    finally:
        await stop(task)


async def test_a_record_it_cannot_read_is_left_out_and_the_poll_goes_on(client: Redis) -> None:
    # A dead replica left a held alert it can resume and one it cannot read (another
    # version's, hand-edited). The survivor adopts the first, and its shared-state poll —
    # the pauses, the kill switch, come with it — outlives the second.
    cfg = config(claim_idle=0.2, poll_interval=0.05)
    a = await replica(client, cfg, "a")
    claim = await a.claim("rule\x00fp\x00t0", skip=None, aged=False, now=NOW)
    assert claim is not None
    await a.save_held("rule\x00fp\x00t0", {"key": "rule\x00fp\x00t0", "token": claim.token})  # type: ignore[misc]
    await client.call("HSET", a.key("held", "a"), "rule\x00fp\x00t1", "7|{not json")
    await asyncio.sleep(0.3)  # a's lease lapses
    b = await replica(client, cfg, "b")

    hooks = Adopting()
    task = asyncio.create_task(b.run(hooks, lambda: NOW))
    try:
        for _ in range(60):
            if hooks.held:
                break
            await asyncio.sleep(0.05)
        assert [r["key"] for r in hooks.held] == ["rule\x00fp\x00t0"]
        await a.set_pause(GLOBAL, Pause("ops", "incident", NOW, None))
        await asyncio.sleep(0.3)
        assert not task.done(), "the shared-state poll stopped"
        assert b.pause_of("r", NOW) is not None
    finally:
        await stop(task)


async def test_a_handed_answer_whose_holder_never_says_what_came_of_it_is_a_504(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replica b holds the approval: it says so on the reply key, then (stalled, or dead
    # mid-decision) never writes what came of it. The answer's caller on a is told who
    # took it and where to look, not left to guess (504), and not told nobody holds it.
    monkeypatch.setattr(redis_backend, "HAND_RESULT_WAIT", 0.3)
    cfg = config()
    a, b = await replica(client, cfg, "a"), await replica(client, cfg, "b")
    pubsub = await client.subscribe(b.key("answers"))

    async def holder_that_stalls() -> None:
        while True:
            data = await client.message(pubsub, timeout=1.0)
            if data is not None:
                reply = json.loads(data)["reply"]
                await client.call("SET", b.key("answer", reply), json.dumps({"replica": "b"}))
                return

    stalled = asyncio.create_task(holder_that_stalls())
    try:
        answer = {"id": 7, "approve": True, "via": "api", "reason": "", "name": "bruno",
                  "admin": False}  # fmt: skip
        status, what = await a.hand_approval(answer) or (0, "")
        assert status == 504, what
        assert "replica b holds decision 7" in what and "audit row" in what
    finally:
        stalled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stalled
        await pubsub.aclose()


async def test_a_message_it_cannot_read_on_the_resolve_channel_does_not_end_the_following(
    client: Redis,
) -> None:
    # Garbage published on the resolves channel (another version, a hand-typed PUBLISH)
    # used to end the subscription: every resolve after it went unseen on this replica.
    cfg = config(poll_interval=0.05)
    a, b = await replica(client, cfg, "a"), await replica(client, cfg, "b")

    class Resolving(Adopting):
        def __init__(self) -> None:
            super().__init__()
            self.resolved: list[Alert] = []

        async def resolved_elsewhere(self, alert: Alert) -> None:
            self.resolved.append(alert)

    hooks = Resolving()
    task = asyncio.create_task(b.run(hooks, lambda: NOW))
    try:
        for _ in range(100):  # b subscribed
            if (await client.call("PUBSUB", "NUMSUB", b.key("resolves")))[1]:
                break
            await asyncio.sleep(0.02)
        await client.call("PUBLISH", b.key("resolves"), "{not json")
        (alert,) = intake.replay("alertmanager", json_body(am_alert("X")), received())
        await a.announce_resolved(alert, NOW)
        for _ in range(100):
            if hooks.resolved:
                break
            await asyncio.sleep(0.02)
        assert [r.fingerprint for r in hooks.resolved] == [alert.fingerprint]
    finally:
        await stop(task)
