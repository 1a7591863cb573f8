"""Human approval before risky remediations: Slack buttons, the API and the CLI.

A local server stands in for Slack's Web API (tests/slack_fake.py) and records what the
daemon posts; clicks are signed as Slack signs them. The side effect of an approved
action is counted at a local HTTP receiver (the action is a notify.webhook).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remediator import cli
from tests import slack_fake
from tests.harness import Harness, am_alert, resolved
from tests.servers import WebhookReceiver
from tests.slack_fake import SlackApi, click

MINUTE = 60.0
FIX_ENV = "REMEDIATOR_TEST_FIX_URL"
PAGE_ENV = "REMEDIATOR_TEST_PAGE_URL"
RULES = """
rules:
  - name: billing-terminate
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    action:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_FIX_URL, text: "terminate on {{ labels.database }}"}
    approval: {approvers: [U0ANA, S0DBA, bruno], timeout: 15m}
    limits: {cooldown: 0s}
    verify: {resolve_within: never}
    escalate: {type: notify.webhook, params: {url_env: REMEDIATOR_TEST_PAGE_URL}}
"""
ADMIN = "auth: {admin_token_env: REMEDIATOR_TEST_ADMIN}\n"
TOKENS = "  tokens: {bruno: REMEDIATOR_TEST_BRUNO, carla: REMEDIATOR_TEST_CARLA}\n"
ENV = {
    **slack_fake.ENV,
    "REMEDIATOR_TEST_ADMIN": "admin-tok",
    "REMEDIATOR_TEST_BRUNO": "bruno-tok",
    "REMEDIATOR_TEST_CARLA": "carla-tok",
}


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    async with (
        WebhookReceiver() as fix,
        WebhookReceiver() as page,
        SlackApi(groups={"S0DBA": ["U0DORA"]}) as slack,
    ):
        monkeypatch.setenv(FIX_ENV, f"{fix.url}/fix")
        monkeypatch.setenv(PAGE_ENV, f"{page.url}/page")
        yield {"fix": fix, "page": page, "slack": slack}


def harness(tmp_path: Path, world: dict[str, Any], *, dry_run: bool = False) -> Harness:
    config = ADMIN + world["slack"].config() + TOKENS
    return Harness(tmp_path, rules=RULES, config=config, env=ENV, dry_run=dry_run)


def pool() -> dict[str, Any]:
    return am_alert("DatabaseConnectionPoolExhausted", database="billing")


async def press(
    h: Harness, user: str, *, approve: bool, decision_id: int, later: float = 0.0
) -> int:
    """A click, `later` seconds from now (a double click is two requests, signed apart)."""
    body, headers = click(user, approve=approve, decision_id=decision_id, now=h.clock.now() + later)
    resp = await h.client.post("/slack/interactions", data=body, headers=headers)
    await resp.read()
    await h.settle()
    return resp.status


async def awaiting(h: Harness) -> dict[str, Any]:
    [row] = [r for r in await h.decisions() if r["outcome"] == "awaiting_approval"]
    return row


async def test_an_approved_fix_runs_exactly_once_and_the_message_says_who_approved(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    slack, fix = world["slack"], world["fix"]
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        assert fix.requests == []  # nothing runs before a human says so
        [post] = slack.calls("chat.postMessage")
        assert post.args["channel"] == "#approvals"
        blocks = json.dumps(post.args["blocks"])
        assert "remediator_approve" in blocks and "remediator_reject" in blocks
        assert "database=billing" in blocks and "notify.webhook" in blocks
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"]) == 200
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"], later=1) == 200
        assert len(fix.requests) == 1
        [done] = await h.decisions()
        assert (done["id"], done["outcome"]) == (row["id"], "executed")
        assert done["approval"].startswith("approved by <@U0ANA> via slack")
        [update] = slack.calls("chat.update")
        assert update.args["ts"] == "1001.0001" and "Approved by <@U0ANA>" in update.args["text"]
        assert "remediator_approve" not in json.dumps(update.args["blocks"])
        assert await h.metric("remediator_approvals_total", rule="billing-terminate",
                              result="approved") == 1.0  # fmt: skip


async def test_a_rejected_fix_does_nothing(tmp_path: Path, world: dict[str, Any]) -> None:
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        assert await press(h, "U0DORA", approve=False, decision_id=row["id"]) == 200  # a group
        [done] = await h.decisions()
        assert (done["outcome"], done["reason"]) == ("skipped", "approval_rejected")
        assert done["approval"].startswith("rejected by <@U0DORA> via slack")
        assert world["fix"].requests == [] and world["page"].requests == []
        assert "Rejected by <@U0DORA>" in world["slack"].calls("chat.update")[0].args["text"]


async def test_an_approval_nobody_gives_expires_and_calls_a_human(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        await h.advance(15 * MINUTE)
        [done] = await h.decisions()
        assert (done["outcome"], done["reason"]) == ("skipped", "approval_expired")
        assert world["fix"].requests == []
        assert len(world["page"].requests) == 1  # nothing will be tried: escalated
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"]) == 200
        assert world["fix"].requests == []  # too late
        [eph] = world["slack"].calls("chat.postEphemeral")
        assert "no longer awaits approval" in eph.args["text"]


async def test_a_user_who_is_not_an_approver_cannot_approve(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        assert await press(h, "U0MALLORY", approve=True, decision_id=row["id"]) == 200
        assert world["fix"].requests == []
        assert (await awaiting(h))["id"] == row["id"]  # still waiting for a real approver
        [eph] = world["slack"].calls("chat.postEphemeral")
        assert eph.args["user"] == "U0MALLORY" and "not an approver" in eph.args["text"]
        assert await h.metric("remediator_approvals_total", rule="billing-terminate",
                              result="refused") == 1.0  # fmt: skip


@pytest.mark.parametrize("forgery", ["wrong-secret", "stale", "tampered", "unsigned", "replay"])
async def test_a_forged_stale_or_replayed_click_is_a_401_and_counted(
    tmp_path: Path, world: dict[str, Any], forgery: str
) -> None:
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        now = h.clock.now()
        body, headers = click("U0ANA", approve=True, decision_id=row["id"], now=now)
        if forgery == "wrong-secret":
            body, headers = click("U0ANA", approve=True, decision_id=row["id"], now=now,
                                  secret="guessed")  # fmt: skip
        elif forgery == "stale":
            body, headers = click("U0ANA", approve=True, decision_id=row["id"], now=now - 301)
        elif forgery == "tampered":
            body = body.replace(b"U0ANA", b"U0EVE")
        elif forgery == "unsigned":
            headers = {"Content-Type": headers["Content-Type"]}
        elif forgery == "replay":
            first = await h.client.post("/slack/interactions", data=body, headers=headers)
            assert first.status == 200
            await h.settle()
        resp = await h.client.post("/slack/interactions", data=body, headers=headers)
        assert resp.status == 401
        kind = "replay" if forgery == "replay" else "bad_signature"
        assert await h.metric("remediator_rejected_inputs_total", source="slack", kind=kind) == 1
        assert len(world["fix"].requests) == (1 if forgery == "replay" else 0)


async def test_an_approval_after_the_alert_resolved_runs_nothing(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world) as h:
        alert = pool()
        await h.fire(alert)
        row = await awaiting(h)
        await h.fire(resolved(alert))
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"]) == 200
        [done] = await h.decisions()
        assert (done["outcome"], done["reason"]) == ("skipped", "resolved")
        assert world["fix"].requests == []


async def test_the_guards_run_again_when_it_is_approved(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        resp = await h.client.post("/api/v1/pause", headers={"Authorization": "Bearer admin-tok"})
        assert resp.status == 200
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"]) == 200
        [done] = await h.decisions()
        assert (done["outcome"], done["reason"]) == ("skipped", "paused")
        assert done["detail"].startswith("approved by <@U0ANA> via slack")
        assert world["fix"].requests == []


async def test_a_restart_while_awaiting_keeps_it_approvable_and_its_deadline(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    admin = {"Authorization": "Bearer admin-tok"}
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        expiring = await awaiting(h)
    h = harness(tmp_path, world)
    h.clock.advance(10 * MINUTE)
    async with h:
        listed = await (await h.client.get("/api/v1/approvals", headers=admin)).json()
        assert [a["id"] for a in listed["approvals"]] == [expiring["id"]]
        await h.fire(pool())  # the target stays reserved: another occurrence is locked out
        assert (await h.decisions())[-1]["reason"] == "locked"
        await h.advance(5 * MINUTE)  # expires on its original deadline
        assert (await h.decisions())[0]["reason"] == "approval_expired"
        await h.fire(pool())
        approved = (await h.decisions())[-1]
        assert approved["outcome"] == "awaiting_approval"
    h = harness(tmp_path, world)
    h.clock.advance(20 * MINUTE)
    async with h:
        path = f"/api/v1/approvals/{approved['id']}/approve"
        resp = await h.client.post(path, headers={"Authorization": "Bearer bruno-tok"})
        assert resp.status == 200, await resp.text()
        await h.settle()
        assert len(world["fix"].requests) == 1
        assert (await h.decisions())[-1]["outcome"] == "executed"


async def test_the_api_lets_named_approvers_decide_only_for_their_rules(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)

        async def call(method: str, path: str, token: str) -> tuple[int, Any]:
            resp = await h.client.request(
                method, path, headers={"Authorization": f"Bearer {token}"}
            )
            return resp.status, await resp.json()

        assert (await call("GET", "/api/v1/approvals", "nope"))[0] == 401
        status, listed = await call("GET", "/api/v1/approvals", "carla-tok")
        assert (status, listed) == (200, {"approvals": []})  # carla approves nothing here
        status, listed = await call("GET", "/api/v1/approvals", "bruno-tok")
        [item] = listed["approvals"]
        assert (item["id"], item["rule"], item["target"]) == (
            row["id"], "billing-terminate", "notify.webhook REMEDIATOR_TEST_FIX_URL",
        )  # fmt: skip
        path = f"/api/v1/approvals/{row['id']}"
        assert (await call("POST", f"{path}/approve", "carla-tok"))[0] == 403
        status, answer = await call("POST", f"{path}/reject", "bruno-tok")
        assert (status, answer["result"]) == (200, "rejected")
        assert (await call("POST", f"{path}/approve", "admin-tok"))[0] == 409
        [done] = await h.decisions()
        assert done["approval"].startswith("rejected by bruno via api")


async def test_a_dry_run_still_asks_and_an_approval_is_rehearsed_only(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world, dry_run=True) as h:
        await h.fire(pool())
        row = await awaiting(h)
        [post] = world["slack"].calls("chat.postMessage")
        assert "DRY RUN" in json.dumps(post.args["blocks"])
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"]) == 200
        [done] = await h.decisions()
        assert done["outcome"] == "dry_run"
        assert world["fix"].requests == []


async def test_the_cli_lists_and_approves(
    tmp_path: Path, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("REMEDIATOR_TEST_BRUNO", "bruno-tok")
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        url = str(h.client.make_url("")).rstrip("/")
        args = ["approvals", "list", "--url", url, "--token-env", "REMEDIATOR_TEST_BRUNO"]
        assert await asyncio.to_thread(cli.main, args) == 0
        assert f"{row['id']:>6}  billing-terminate  step 1" in capsys.readouterr().out
        args = ["approvals", "approve", str(row["id"]), "--url", url,
                "--token-env", "REMEDIATOR_TEST_BRUNO", "--reason", "pool at 100%"]  # fmt: skip
        assert await asyncio.to_thread(cli.main, args) == 0
        await h.settle()
        assert len(world["fix"].requests) == 1
        assert (await h.decisions())[0]["approval"].endswith("pool at 100%")
        assert await asyncio.to_thread(cli.main, args) == 1  # no longer awaiting: HTTP 409
        assert "HTTP 409" in capsys.readouterr().err


async def test_a_click_that_is_not_a_button_press_is_a_400(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world) as h:
        now = h.clock.now()
        body = b"payload=" + b"%7B%22type%22%3A%22view_submission%22%7D"  # {"type": ...}
        resp = await h.client.post(
            "/slack/interactions", data=body, headers=slack_fake.sign(body, now=now)
        )
        assert resp.status == 400
        big = b"payload=" + b"x" * (70 << 10)
        resp = await h.client.post(
            "/slack/interactions", data=big, headers=slack_fake.sign(big, now=now)
        )
        assert resp.status == 413
        assert (
            await h.metric("remediator_rejected_inputs_total", source="slack", kind="schema") == 1
        )
        assert (
            await h.metric("remediator_rejected_inputs_total", source="slack", kind="too_large")
            == 1
        )


async def test_an_approval_runs_only_what_was_approved_not_what_a_reload_made_of_it(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    # The approvers saw one action on one target; a reload meanwhile made the step send
    # elsewhere with another text. Their click must not run what they never saw.
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        changed = RULES.replace(
            '{url_env: REMEDIATOR_TEST_FIX_URL, text: "terminate on',
            '{url_env: REMEDIATOR_TEST_PAGE_URL, text: "kill everything on',
        )
        assert changed != RULES
        (h.rules_dir / "rules.yaml").write_text(changed)
        assert (await h.daemon.reload())[0]
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"]) == 200
        assert world["fix"].requests == [] and world["page"].requests == []
        [done] = await h.decisions()
        assert (done["id"], done["outcome"], done["reason"]) == (
            row["id"],
            "skipped",
            "not_allowed",
        )
        assert "REMEDIATOR_TEST_PAGE_URL" in done["detail"]


async def test_an_approval_whose_row_cannot_be_written_calls_a_human(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        # A real SQLite failure (a full disk) on the row the approved action is about to
        # run on: it cannot run, and nothing else will happen to it.
        await h.daemon.db.submit(
            lambda c: c.execute(
                "CREATE TRIGGER fail BEFORE UPDATE OF outcome ON decisions "
                "WHEN NEW.outcome = 'failed' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        )
        await press(h, "U0ANA", approve=True, decision_id=row["id"])
        await h.daemon.db.submit(lambda c: c.execute("DROP TRIGGER fail"))
        await h.advance(30 * MINUTE)  # past the approval's timeout, too
        assert world["fix"].requests == []
        assert len(world["page"].requests) == 1  # not left approved, never run, unpaged
        # And its target is not left locked: the next occurrence asks for approval again.
        await h.fire(pool())
        asking = [r["id"] for r in await h.decisions() if r["outcome"] == "awaiting_approval"]
        assert [i for i in asking if i != row["id"]] != []


async def test_an_approver_a_reload_removed_can_no_longer_decide_what_was_asked_before(
    tmp_path: Path, world: dict[str, Any]
) -> None:
    # The request was asked of [U0ANA, S0DBA, bruno]; a reload narrowed the rule to the
    # S0DBA group. Who may answer is the rule as loaded now: U0ANA (Slack) and bruno (API)
    # were removed, and must not run it through the request that was already open.
    async with harness(tmp_path, world) as h:
        await h.fire(pool())
        row = await awaiting(h)
        narrowed = RULES.replace("approvers: [U0ANA, S0DBA, bruno]", "approvers: [S0DBA]")
        assert narrowed != RULES
        (h.rules_dir / "rules.yaml").write_text(narrowed)
        assert (await h.daemon.reload())[0]
        assert await press(h, "U0ANA", approve=True, decision_id=row["id"]) == 200
        [eph] = world["slack"].calls("chat.postEphemeral")
        assert eph.args["user"] == "U0ANA" and "not an approver" in eph.args["text"]
        bruno = {"Authorization": "Bearer bruno-tok"}
        resp = await h.client.get("/api/v1/approvals", headers=bruno)
        assert (await resp.json()) == {"approvals": []}
        resp = await h.client.post(f"/api/v1/approvals/{row['id']}/approve", headers=bruno)
        assert resp.status == 403
        await h.settle()
        assert world["fix"].requests == []
        assert (await awaiting(h))["id"] == row["id"]  # still waiting for a current approver
        assert await press(h, "U0DORA", approve=True, decision_id=row["id"], later=1) == 200
        assert len(world["fix"].requests) == 1
