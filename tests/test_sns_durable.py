"""SNS across restarts and against a lying clock: what the intake remembers survives the
process, and one message's StateChangeTime cannot poison an alarm's later episodes.

Signed with the test PKI of tests/sns_fixtures.py, posted to the in-process daemon, and
restarted on the same data dir, as an operator's `systemctl restart` would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_sns as sns_tests
from tests.harness import START, Harness
from tests.sns_fixtures import (
    ALARM_ARN,
    CertServer,
    Pki,
    alarm_message,
    notification,
    post_sns,
    sns_config,
)

RULES = """
rules:
  - name: api-errors
    source: sns
    matchers: ['alertname = "PlooralAPIHighErrorRate"']
    action:
      type: log
      params: {message: "force a new deployment", target: "plooral-prod/plooral-api"}
    limits: {cooldown: 1s}
    verify: {resolve_within: 30m}
"""
FINGERPRINT = hashlib.sha256(ALARM_ARN.encode()).hexdigest()[:16]
MINUTE = dt.timedelta(minutes=1)


pki = sns_tests.pki  # the test PKI and its certificate server, shared with test_sns.py
server = sns_tests.server


@pytest.fixture
async def h(tmp_path: Path, pki: Pki) -> AsyncIterator[Harness]:
    harness = Harness(
        tmp_path, rules=RULES, config=sns_config(pki, extra="  max_age: 1h\n"), dry_run=False
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


def signed(
    server: CertServer,
    pki: Pki,
    *,
    state: str = "ALARM",
    changed_at: dt.datetime,
    timestamp: dt.datetime | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    old = "OK" if state == "ALARM" else "ALARM"
    return notification(
        alarm_message(state=state, old_state=old, changed_at=changed_at),
        cert_url=server.cert_url,
        key=pki.signing_key,
        timestamp=timestamp or changed_at + dt.timedelta(seconds=2),
        message_id=message_id,
    )


async def restart(h: Harness) -> None:
    await h.stop()
    await h.start()


async def posted(h: Harness, body: dict[str, Any]) -> dict[str, Any]:
    resp = await post_sns(h, body)
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    await h.settle()
    return answer


async def test_an_alarm_whose_state_change_lies_after_its_signed_timestamp_is_refused(
    h: Harness, pki: Pki, server: CertServer
) -> None:
    future = signed(server, pki, changed_at=START + dt.timedelta(days=30), timestamp=START)
    resp = await post_sns(h, future)
    assert resp.status == 422
    assert "max_state_change_skew" in (await resp.json())["error"]
    assert (
        await h.metric("remediator_rejected_inputs_total", source="sns", kind="future_state_change")
        == 1
    )
    # The lie left nothing behind: the alarm's genuine episodes still act.
    await h.advance(60)
    await posted(h, signed(server, pki, changed_at=START))
    assert await h.outcomes() == [("executed", "")]


async def test_a_small_clock_difference_between_cloudwatch_and_sns_is_accepted(
    h: Harness, pki: Pki, server: CertServer
) -> None:
    ahead = signed(server, pki, changed_at=START + dt.timedelta(seconds=90), timestamp=START)
    await posted(h, ahead)
    assert await h.outcomes() == [("executed", "")]


async def test_a_message_redelivered_after_a_restart_is_a_duplicate(
    h: Harness, pki: Pki, server: CertServer
) -> None:
    # ALARM → INSUFFICIENT_DATA → ALARM is one episode: the second ALARM's occurrence is
    # the first one's, which only the remembered transition can tell after a restart.
    first = START - 10 * MINUTE
    await posted(h, signed(server, pki, changed_at=first))
    await posted(h, signed(server, pki, state="INSUFFICIENT_DATA", changed_at=first + MINUTE))
    again = signed(server, pki, changed_at=first + 2 * MINUTE)
    await posted(h, again)
    assert await h.outcomes() == [("executed", "")]

    await restart(h)
    answer = await posted(h, again)  # SNS delivers at least once, here after the restart

    assert answer == {"status": "ok", "duplicate": True}
    assert await h.outcomes() == [("executed", "")]
    assert (
        await h.metric("remediator_sns_messages_total", type="Notification", result="duplicate")
        == 1
    )


async def test_an_ok_after_a_restart_resolves_the_alarm_it_ends(
    h: Harness, pki: Pki, server: CertServer
) -> None:
    began = START - 5 * MINUTE
    await posted(h, signed(server, pki, changed_at=began))
    await restart(h)

    await posted(h, signed(server, pki, state="OK", changed_at=START))

    [d] = await h.decisions()
    assert d["starts_at"] == "2027-01-15T11:55:00.000000Z"
    assert d["verification"].startswith("effective: resolved at")


async def test_a_notification_older_than_one_seen_before_a_restart_stays_stale(
    h: Harness, pki: Pki, server: CertServer
) -> None:
    await posted(h, signed(server, pki, changed_at=START - MINUTE))
    await posted(h, signed(server, pki, state="OK", changed_at=START))
    await restart(h)

    late = await posted(h, signed(server, pki, changed_at=START - 2 * MINUTE))

    assert late == {"status": "ok", "accepted": 0, "ignored": "stale"}
    assert len(await h.decisions()) == 1


async def test_remembered_message_ids_are_bounded_and_expire(
    tmp_path: Path, pki: Pki, server: CertServer
) -> None:
    config = sns_config(pki, extra="  dedup_max_entries: 100\n  max_age: 10m\n")
    h = Harness(tmp_path, rules=RULES, config=config)
    await h.start()
    try:
        for i in range(150):
            at = START - dt.timedelta(seconds=300 - i)
            body = notification(
                alarm_message(f"Other{i}", changed_at=at),
                cert_url=server.cert_url, key=pki.signing_key, timestamp=at,
            )  # fmt: skip
            await posted(h, body)
        await restart(h)
        assert await stored_message_ids(h) == 100
        h.clock.advance(3600)  # every one of them is older than max_age now
        await restart(h)
        assert await stored_message_ids(h) == 0
    finally:
        await h.stop()


async def stored_message_ids(h: Harness) -> int:
    await h.daemon.db.submit(lambda c: None)  # the prune of the start is committed
    count: int = await h.daemon.db.read(
        lambda c: c.execute("SELECT count(*) FROM sns_messages").fetchone()[0]
    )
    return count
