"""A remediation whose record cannot be written (a full disk) still calls a human when it
gives up, and an occurrence whose first decision waits still gets its attempt."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.harness import START, Harness, am_alert
from tests.servers import WebhookReceiver

MINUTE = 60.0
HOOK = "REMEDIATOR_TEST_ESCALATE_URL"
SINGLE = """
rules:
  - name: pool-terminate
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    action:
      type: log
      params: {message: "terminate stuck queries", target: "db/{{ labels.database }}"}
    verify: {resolve_within: 5m}
    escalate:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}
"""
# A real SQLite failure (as a full disk gives) on the record of a remediation giving up.
FAIL_ESCALATING = (
    "CREATE TRIGGER fail BEFORE INSERT ON remediations "
    "WHEN json_extract(NEW.data, '$.phase') = 'escalating' "
    "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
)


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> Any:
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv(HOOK, f"{receiver.url}/slack")
        yield receiver


async def test_a_failed_write_of_the_escalating_record_still_calls_a_human(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    async with Harness(tmp_path, rules=SINGLE, dry_run=False) as h:
        await h.daemon.db.submit(lambda c: c.execute(FAIL_ESCALATING))
        await h.fire(am_alert("DatabaseConnectionPoolExhausted", database="crm"))
        await h.advance(5 * MINUTE)  # still firing: ineffective, nothing more to try
        await h.settle()
        assert len(slack.requests) == 1, "nobody was called"
        assert "gave up" in json.loads(slack.requests[0].body)["text"]


async def test_an_escalation_to_send_again_whose_record_fails_is_still_sent_again(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    slack.fail_first = 1
    async with Harness(tmp_path, rules=SINGLE, dry_run=False) as h:
        await h.daemon.db.submit(lambda c: c.execute(FAIL_ESCALATING))
        await h.fire(am_alert("DatabaseConnectionPoolExhausted", database="crm"))
        await h.advance(5 * MINUTE)  # gives up; the send fails and its record too
        assert len(slack.requests) == 1
        await h.advance(30)  # the next send, armed in memory
        assert len(slack.requests) == 2, "not sent again"
        [row] = await h.decisions()
        assert "posted to $REMEDIATOR_TEST_ESCALATE_URL" in row["escalation"]


BUDGET = """
rules:
  - name: pod-restart
    matchers: ['alertname = "PodDown"']
    action: {type: log, params: {message: "restart", target: "{{ labels.pod }}"}}
    verify: {resolve_within: 5m}
    escalate:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_ESCALATE_URL}
"""


async def test_a_first_decision_refused_for_good_pages_even_if_its_record_fails(
    tmp_path: Path, slack: WebhookReceiver
) -> None:
    config = "limits: {max_targets_per_window: 1}\n"
    h = Harness(tmp_path, rules=BUDGET, config=config, dry_run=False)
    async with h:
        await h.fire(am_alert("PodDown", pod="pod-0"))
        await h.daemon.db.submit(lambda c: c.execute(FAIL_ESCALATING))
        await h.fire(am_alert("PodDown", pod="pod-1"))  # budget spent: a human, at once
        await h.settle()
    with sqlite3.connect(tmp_path / "data" / "remediator.db") as c:
        c.execute("DROP TRIGGER fail")  # the disk has room again
    async with h:  # and the daemon restarted
        await h.settle()
    pages = [json.loads(r.body)["text"] for r in slack.requests]
    assert [p for p in pages if "pod-1" in p or "budget" in p], pages


COOLDOWN = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart", target: "{{ labels.deployment }}"}}
    verify: {resolve_within: never}
    limits: {cooldown: 10m}
"""
FAIL_WAITING = FAIL_ESCALATING.replace("'escalating'", "'waiting'")


async def test_an_occurrence_refused_by_a_cooldown_gets_its_attempt_if_its_record_fails(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, rules=COOLDOWN, dry_run=False)
    async with h:
        await h.fire(am_alert("APIDown", deployment="api"))
        await h.daemon.db.submit(lambda c: c.execute(FAIL_WAITING))
        # Another occurrence on the same target: refused by the cooldown, for now.
        await h.fire(am_alert("APIDown", deployment="api", starts_at=START + dt.timedelta(1)))
        assert await h.outcomes() == [("executed", ""), ("skipped", "cooldown")]
        await h.daemon.db.submit(lambda c: c.execute("DROP TRIGGER fail"))
        await h.advance(11 * MINUTE)  # the cooldown is over: its own attempt
        assert await h.outcomes() == [("executed", ""), ("skipped", "cooldown"), ("executed", "")]
