"""Alerts held for a rule's `for` never hold intake: compact, bounded, durable."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

from tests.harness import START, Harness, am_alert, payload, resolved

MINUTE = 60.0
HELD_HOUR = """
rules:
  - name: slow-burn
    matchers: ['alertname = "DiskFilling"']
    for: 1h
    action:
      type: log
      params: {message: "clean {{ labels.instance }}", target: "{{ labels.instance }}"}
    limits: {cooldown: 0s, max_attempts: 100000}
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "api"}}
"""


def young(i: int) -> dict[str, object]:
    return am_alert("DiskFilling", instance=f"host-{i}", starts_at=START - dt.timedelta(minutes=1))


async def test_a_storm_held_by_for_leaves_room_for_other_alerts_and_resolves(
    tmp_path: Path,
) -> None:
    config = "intake: {backlog_limit: 100}\n"
    async with Harness(tmp_path, rules=HELD_HOUR, config=config) as h:
        storm = [young(i) for i in range(300)]
        for i in range(0, 300, 50):
            resp = await h.post(payload(*storm[i : i + 50]))
            assert resp.status == 200, await resp.text()
            await h.settle()
        assert h.daemon.journal.backlog == 0  # held alerts are not journal backlog
        assert len(h.daemon.engine.held) == 300
        assert (await h.client.get("/readyz")).status == 200
        await h.fire(am_alert("APIDown"), resolved(storm[7]))
        assert await h.outcomes() == [("dry_run", ""), ("skipped", "too_young")]
        assert await h.metric("remediator_held_alerts") == 299.0
        await h.advance(60 * MINUTE)  # the rest come of age, without a re-send
        assert len(await h.decisions()) == 2 + 299
        assert len(h.daemon.engine.held) == 0


async def test_resolves_are_accepted_while_a_concurrent_storm_fills_the_backlog(
    tmp_path: Path,
) -> None:
    """The storm arrives faster than it is decided (the database writer stalls, as on a
    slow disk): firing alerts past the bound get 503, a resolve is still taken."""
    config = "intake: {backlog_limit: 100}\n"
    async with Harness(tmp_path, rules=HELD_HOUR, config=config) as h:
        first, second = young(0), young(1)
        await h.fire(first, second)  # held, waiting for their `for`
        stall = asyncio.ensure_future(h.daemon.db.submit(lambda c: time.sleep(1.0)))
        storm = asyncio.ensure_future(h.post(payload(*[young(i) for i in range(2, 102)])))
        while h.daemon.journal.backlog < 100:
            await asyncio.sleep(0.005)
        more = await h.post(payload(am_alert("APIDown")))  # firing: past the bound
        only_resolve = asyncio.ensure_future(h.post(payload(resolved(first))))
        mixed = asyncio.ensure_future(h.post(payload(resolved(second), young(500))))
        statuses = [r.status for r in await asyncio.gather(storm, only_resolve, mixed)]
        await stall
        assert more.status == 503
        assert statuses == [200, 200, 200]
        await h.settle()
        assert await h.outcomes() == [("skipped", "too_young"), ("skipped", "too_young")]
        assert len(h.daemon.engine.held) == 101  # the storm and the mixed one's young alert


async def test_past_max_held_a_young_alert_is_refused_visibly_and_decided_when_resent(
    tmp_path: Path,
) -> None:
    config = "intake: {max_held: 2}\n"
    async with Harness(tmp_path, rules=HELD_HOUR, config=config) as h:
        alerts = [young(i) for i in range(3)]
        await h.fire(*alerts)
        [row] = await h.decisions()
        assert (row["outcome"], row["reason"]) == ("skipped", "held_full")
        assert "intake.max_held" in row["detail"]
        await h.fire(resolved(alerts[0]))  # a slot frees up
        await h.fire(alerts[2])  # Alertmanager re-sends the refused one: held now
        assert len(h.daemon.engine.held) == 2
        await h.advance(60 * MINUTE)
        assert [(d["outcome"], d["reason"]) for d in await h.decisions()] == [
            ("skipped", "held_full"),
            ("skipped", "too_young"),
            ("dry_run", ""),
            ("dry_run", ""),
        ]


async def test_held_alerts_outlive_a_restart_without_their_requests(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=HELD_HOUR) as h:
        await h.fire(young(1), young(2))
        rows = await h.daemon.db.read(
            lambda c: c.execute("SELECT COUNT(*) FROM journal").fetchall()
        )
        assert rows == [(0,)]  # the request left the journal: the held alerts are kept alone
    async with Harness(tmp_path, rules=HELD_HOUR, now=START.timestamp() + 30 * MINUTE) as h:
        await h.settle()
        assert len(h.daemon.engine.held) == 2
        await h.advance(28 * MINUTE)
        assert await h.decisions() == []
        await h.advance(MINUTE)  # an hour after they started firing
        assert [d["target"] for d in await h.decisions()] == ["log host-1", "log host-2"]
    async with Harness(tmp_path, rules=HELD_HOUR, now=START.timestamp() + 2 * 3600) as h:
        await h.settle()
        assert len(h.daemon.engine.held) == 0  # decided ones are not held again
        assert len(await h.decisions()) == 2
