"""The console at /ui, in a real browser and over plain HTTP.

The browser tests drive Debian's chromium (tests/browser.py) through what an SRE does at
3 a.m.: sign in, read the decisions, filter them, open one decision's story, approve what
waits, see the pause. Screenshots go into the test's temporary directory. The HTTP tests
pin what a browser cannot show: CSRF, forged cookies, redirects, escaping, redaction.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remediator.web import auth
from tests.browser import Page, chromium
from tests.harness import Harness, am_alert
from tests.servers import WebhookReceiver

FIX_ENV = "REMEDIATOR_TEST_FIX_URL"
RULES = """
rules:
  - name: api-restart
    description: Restart the API when it stops answering
    runbook_url: https://runbooks.example/apidown
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart {{ labels.deployment }}"}}
    limits: {cooldown: 1h}
  - name: pool-terminate
    description: Kill the stuck queries
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    action:
      type: notify.webhook
      params: {url_env: REMEDIATOR_TEST_FIX_URL, text: "terminate on {{ labels.database }}"}
    approval: {approvers: [bruno], timeout: 15m}
    limits: {cooldown: 0s}
    verify: {resolve_within: never}
"""
CONFIG = """
auth: {admin_token_env: REMEDIATOR_TEST_ADMIN, read_token_env: REMEDIATOR_TEST_READ}
approvals:
  tokens: {bruno: REMEDIATOR_TEST_BRUNO, carla: REMEDIATOR_TEST_CARLA}
"""
ADMIN, READ, BRUNO, CARLA = "adm1n-token-xyz", "r3ad-token-xyz", "bruno-token-xyz", "carla-tok-xyz"
ENV = {
    "REMEDIATOR_TEST_ADMIN": ADMIN,
    "REMEDIATOR_TEST_READ": READ,
    "REMEDIATOR_TEST_BRUNO": BRUNO,
    "REMEDIATOR_TEST_CARLA": CARLA,
}
PAGES = ["/ui", "/ui/decisions/1", "/ui/rules", "/ui/rules/api-restart", "/ui/approvals"]


@pytest.fixture
async def fix(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[WebhookReceiver]:
    """Where the approved action lands: counting its calls counts what was done."""
    async with WebhookReceiver() as receiver:
        monkeypatch.setenv(FIX_ENV, f"{receiver.url}/fix")
        yield receiver


def console(tmp_path: Path, **overrides: Any) -> Harness:
    return Harness(
        tmp_path, **{"rules": RULES, "config": CONFIG, "env": ENV, "dry_run": False, **overrides}
    )


def url(h: Harness, path: str) -> str:
    return str(h.client.make_url(path))


async def night(h: Harness) -> None:
    """What happened tonight: the API restarted once then held by its cooldown, and the
    database pool waiting for a human."""
    await h.fire(am_alert("APIDown", deployment="api", namespace="prod"))
    await h.fire(am_alert("APIDown", deployment="api", namespace="prod"))
    await h.fire(am_alert("DatabaseConnectionPoolExhausted", database="billing"))


async def sign_in(page: Page, h: Harness, token: str, *, then: str = "/ui") -> None:
    await page.go(url(h, f"/ui/login?next={urllib.parse.quote(then)}"))
    await page.pw.fill("input[name=token]", token)
    async with page.pw.expect_navigation():
        await page.pw.click("button:text('Sign in')")
    assert urllib.parse.urlsplit(page.pw.url).path == then


async def test_an_sre_signs_in_reads_filters_and_opens_a_story(tmp_path: Path, fix: Any) -> None:
    async with console(tmp_path / "d") as h, chromium() as browser:
        await night(h)
        audit = await h.decisions()
        assert [(d["rule"], d["outcome"], d["reason"]) for d in audit] == [
            ("api-restart", "executed", ""),
            ("api-restart", "skipped", "cooldown"),
            ("pool-terminate", "awaiting_approval", ""),
        ]
        page = await Page.open(browser, tmp_path)

        # Without a token every page is the sign-in page, answered 401.
        for path in PAGES:
            await page.go(url(h, path), expect=401)
            assert await page.pw.locator("input[name=token]").count() == 1
            assert "restart api" not in await page.pw.content()
        await page.shot("signed-out")
        await page.go(url(h, "/ui/login"))
        await page.pw.fill("input[name=token]", "not-a-token")
        async with page.pw.expect_navigation():
            await page.pw.click("button:text('Sign in')")
        assert "not one of this daemon's" in await page.pw.inner_text("main")

        await sign_in(page, h, READ)
        ids = [int(t) for t in await page.texts("table.decisions tbody tr td:first-child")]
        assert ids == [d["id"] for d in reversed(audit)]
        assert "read" in await page.pw.inner_text(".who")
        await page.shot("decisions")

        # Filter: the select and the button a user clicks, the URL they can share.
        await page.pw.select_option("select[name=outcome]", "skipped")
        async with page.pw.expect_navigation():
            await page.pw.click("form.filters button")
        assert "outcome=skipped" in page.pw.url
        rows = await page.texts("table.decisions tbody tr")
        assert len(rows) == 1 and "cooldown" in rows[0]
        await page.pw.select_option("select[name=outcome]", "")
        await page.pw.select_option("select[name=rule]", "pool-terminate")
        async with page.pw.expect_navigation():
            await page.pw.click("form.filters button")
        ids = [int(t) for t in await page.texts("table.decisions tbody tr td:first-child")]
        assert ids == [audit[2]["id"]]
        await page.go(url(h, "/ui?outcome=nonsense"), expect=400)
        assert "outcome must be one of" in await page.pw.inner_text(".problem")

        # One decision's story, reached by clicking its id.
        await page.go(url(h, "/ui?rule=api-restart&outcome=skipped"))
        async with page.pw.expect_navigation():
            await page.pw.click("table.decisions tbody tr td:first-child a")
        story = await page.pw.inner_text("main")
        assert f"Decision {audit[1]['id']}" in story
        guards = await page.texts("ol.guards li")
        assert [g.split()[0] for g in guards[:6]] == [
            "paused", "blackout", "silenced", "for", "params", "limits",
        ]  # fmt: skip
        assert "refused" in guards[5] and "cooldown" in guards[5].lower()
        assert all("passed" in g for g in guards[:5])
        assert "not reached" in guards[-1]
        assert "deployment" in story and "prod" in story  # the alert's labels
        assert await page.pw.get_attribute("a:text('runbook')", "href") == (
            "https://runbooks.example/apidown"
        )
        # The occurrence's decisions are listed with it (here only this one: the first
        # restart was another occurrence of the same alert name).
        others = [int(t) for t in await page.texts("table.decisions tbody tr td:first-child")]
        assert others == [audit[1]["id"]]
        await page.shot("story")
        async with page.pw.expect_navigation():
            await page.pw.click(f"a:text('rules.yaml:{_rule_line(h, 'api-restart')}')")
        assert "name: api-restart" in await page.pw.inner_text("pre.source .here")

        # A reader sees what waits for approval, and no button to decide it.
        await page.go(url(h, "/ui/approvals"))
        assert "pool-terminate" in await page.pw.inner_text("main")
        assert await page.pw.locator("button.approve").count() == 0
        page.assert_quiet()
        await page.close()


async def test_an_approver_approves_through_the_page_and_it_runs_once(
    tmp_path: Path, fix: WebhookReceiver
) -> None:
    async with console(tmp_path / "d") as h, chromium() as browser:
        await h.fire(am_alert("DatabaseConnectionPoolExhausted", database="billing"))
        (waiting,) = await h.decisions()
        page = await Page.open(browser, tmp_path)

        await sign_in(page, h, CARLA, then="/ui/approvals")  # not this rule's approver
        assert await page.pw.locator("button.approve").count() == 0
        async with page.pw.expect_navigation():
            await page.pw.click("button:text('Sign out')")
        await sign_in(page, h, BRUNO, then="/ui/approvals")
        card = await page.pw.inner_text("section.awaiting")
        assert "billing" in card and "notify.webhook" in card
        await page.shot("approval")
        await page.pw.fill("section.awaiting input[name=reason]", "checked the locks")
        async with page.pw.expect_navigation():
            await page.pw.click("button.approve")
        assert urllib.parse.urlsplit(page.pw.url).path == f"/ui/decisions/{waiting['id']}"
        assert "Approved" in await page.pw.inner_text(".notice")
        await h.settle()
        assert len(fix.requests) == 1
        assert fix.requests[0].body and b"terminate on billing" in fix.requests[0].body

        await page.go(url(h, f"/ui/decisions/{waiting['id']}"))
        story = await page.pw.inner_text("main")
        assert "approved by bruno via console" in story
        assert "checked the locks" in story
        await page.go(url(h, "/ui/approvals"))
        assert "Nothing awaits approval" in await page.pw.inner_text("main")
        await page.shot("approved")
        page.assert_quiet()
        await page.close()
        assert len(fix.requests) == 1


async def test_the_pause_banner_shows_on_every_page_until_resumed(tmp_path: Path) -> None:
    async with console(tmp_path / "d") as h, chromium() as browser:
        await h.fire(am_alert("APIDown", deployment="api"))
        page = await Page.open(browser, tmp_path)
        await sign_in(page, h, ADMIN, then="/ui/rules")
        assert await page.pw.locator("#pause-banner").count() == 0
        await page.pw.click("summary:text('Pause every rule')")
        await page.pw.fill("input[name=reason]", "deploy of the API in progress")
        await page.pw.fill("input[name=until]", "30m")
        async with page.pw.expect_navigation():
            await page.pw.click("text=Pause every rule >> nth=-1")
        assert h.daemon.state.paused
        for path in [
            "/ui",
            "/ui/rules",
            "/ui/approvals",
            "/ui/rules/api-restart",
            "/ui/decisions/1",
        ]:
            await page.go(url(h, path))
            banner = await page.pw.inner_text("#pause-banner")
            assert "deploy of the API in progress" in banner
            assert "admin via console" in banner and "until 2027-01-15 12:30:00" in banner
        await page.shot("paused")
        async with page.pw.expect_navigation():
            await page.pw.click("#pause-banner button")
        assert not h.daemon.state.paused
        assert await page.pw.locator("#pause-banner").count() == 0

        # One rule paused: named in a banner on every page, resumed from its page.
        await page.go(url(h, "/ui/rules/api-restart"))
        await page.pw.click("summary:text('Pause this rule')")
        await page.pw.fill("input[name=reason]", "flapping")
        async with page.pw.expect_navigation():
            await page.pw.click("button:text('Pause this rule')")
        await page.go(url(h, "/ui"))
        assert "api-restart" in await page.pw.inner_text(".paused-rules")
        await page.go(url(h, "/ui/rules/api-restart"))
        async with page.pw.expect_navigation():
            await page.pw.click("button:text('Resume this rule')")
        assert await page.pw.locator(".paused-rules").count() == 0
        page.assert_quiet()
        await page.close()


async def test_the_console_reads_in_dark_mode_and_on_a_phone(tmp_path: Path) -> None:
    async with console(tmp_path / "d") as h, chromium() as browser:
        await night(h)
        dark = await Page.open(
            browser, tmp_path, color_scheme="dark",
            extra_http_headers={"Authorization": f"Bearer {READ}"},
        )  # fmt: skip
        await dark.go(url(h, "/ui/decisions/1"))
        background = await dark.pw.evaluate("getComputedStyle(document.body).backgroundColor")
        assert _luminance(background) < 0.2, background
        text = await dark.pw.evaluate("getComputedStyle(document.body).color")
        assert _luminance(text) > 0.7, text
        await dark.shot("dark")
        dark.assert_quiet()
        await dark.close()

        phone = await Page.open(
            browser, tmp_path, viewport={"width": 390, "height": 844}, is_mobile=True,
            has_touch=True, extra_http_headers={"Authorization": f"Bearer {READ}"},
        )  # fmt: skip
        for path in PAGES:
            await phone.go(url(h, path))
            width = await phone.pw.evaluate("document.documentElement.scrollWidth")
            wide = await phone.pw.evaluate(WIDE)
            assert width <= 390, f"{path} is {width}px wide on a 390px phone: {wide}"
        await phone.shot("phone")
        phone.assert_quiet()
        await phone.close()


WIDE = """[...document.querySelectorAll('body *')]
  .filter(e => !(e.parentElement && e.parentElement.closest('.scroll'))
    && e.getBoundingClientRect().right > 391)
  .slice(0, 5)
  .map(e => `${e.tagName}.${e.className}: ${(e.innerText || '').slice(0, 60)}`)"""
"""What sticks out of a 390 px phone screen outside a scrolling box (what to fix); the
browser widens its own viewport to fit such content, so the width is a constant."""


def _rule_line(h: Harness, name: str) -> int:
    return h.daemon.engine.index.by_name[name].line


def _luminance(css: str) -> float:
    r, g, b = (int(x) / 255 for x in re.findall(r"\d+", css)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


# -- over plain HTTP --------------------------------------------------------------------


async def _signed_in(h: Harness, token: str) -> tuple[str, str]:
    """(session cookie, csrf) after signing in with a token, as a browser would."""
    resp = await h.client.post(
        "/ui/login", data={"token": token, "next": "/ui/rules"}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "/ui/rules"
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/ui" in set_cookie
    cookie = resp.cookies[auth.SESSION_COOKIE].value
    page = await h.client.get("/ui/rules", headers={"Cookie": f"{auth.SESSION_COOKIE}={cookie}"})
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', await page.text())
    assert found is not None
    return cookie, found.group(1)


async def test_a_form_posted_without_its_csrf_token_changes_nothing(tmp_path: Path) -> None:
    async with console(tmp_path) as h:
        cookie, csrf = await _signed_in(h, ADMIN)
        h.client.session.cookie_jar.clear()
        headers = {"Cookie": f"{auth.SESSION_COOKIE}={cookie}"}
        for form in ({"reason": "x"}, {"reason": "x", "csrf": "0" * 64}):
            resp = await h.client.post("/ui/pause", data=form, headers=headers)
            assert resp.status == 403, await resp.text()
            assert not h.daemon.state.paused
        assert await h.metric("remediator_rejected_inputs_total", source="ui", kind="csrf") == 2
        resp = await h.client.post(
            "/ui/pause", data={"reason": "x", "csrf": csrf}, headers=headers, allow_redirects=False
        )
        assert resp.status == 303
        assert h.daemon.state.paused


async def test_a_forged_expired_or_outdated_session_is_the_sign_in_page(tmp_path: Path) -> None:
    async with console(tmp_path) as h:
        cookie, _ = await _signed_in(h, READ)
        h.client.session.cookie_jar.clear()
        role, name, expiry, mac = cookie.split(".")
        now = h.daemon.clock.now()
        forged = [
            auth.session_cookie(auth.ADMIN, "admin", READ, now=now),  # signed by the reader
            f"admin.{b'admin'.hex()}.{expiry}.{mac}",  # the reader's MAC, another body
            f"{role}.{name}.{int(expiry) + 10**6}.{mac}",  # made to last longer
            f"{role}.{name}.{expiry}.{'0' * 64}",
            "garbage", "a.b.c.d", "....", f"{role}.{name}.\u00b2.{mac}",
            f"{role}.{name}.{'9' * 5000}.x",
        ]  # fmt: skip
        for value in forged:
            resp = await h.client.get("/ui", headers={"Cookie": f"{auth.SESSION_COOKIE}={value}"})
            assert resp.status == 401, value
        ok = await h.client.get("/ui", headers={"Cookie": f"{auth.SESSION_COOKIE}={cookie}"})
        assert ok.status == 200
        await h.advance(auth.SESSION_SECONDS + 1)
        late = await h.client.get("/ui", headers={"Cookie": f"{auth.SESSION_COOKIE}={cookie}"})
        assert late.status == 401


async def test_only_the_admin_pauses_and_only_a_rules_approver_decides(tmp_path: Path) -> None:
    async with console(tmp_path) as h:
        await h.fire(am_alert("DatabaseConnectionPoolExhausted", database="billing"))
        (waiting,) = await h.decisions()
        for token in (READ, BRUNO):
            resp = await h.client.post(
                "/ui/pause", data={"reason": "x"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert resp.status == 403
        assert not h.daemon.state.paused
        decide = f"/ui/approvals/{waiting['id']}"
        for token in (READ, CARLA):
            resp = await h.client.post(
                decide, data={"decision": "approve"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert resp.status == 403, await resp.text()
        assert h.daemon.engine.loop.approval(waiting["id"]) is not None
        resp = await h.client.post(
            decide, data={"decision": "reject"}, headers={"Authorization": f"Bearer {BRUNO}"},
            allow_redirects=False,
        )  # fmt: skip
        assert resp.status == 303
        await h.settle()
        assert h.daemon.engine.loop.approval(waiting["id"]) is None
        again = await h.client.post(
            decide, data={"decision": "approve"}, headers={"Authorization": f"Bearer {BRUNO}"}
        )
        assert again.status == 409


@pytest.mark.parametrize(
    "next_", ["//evil.example/ui", "https://evil.example/ui", "/\\evil.example", "/api/v1/pause"]
)
async def test_signing_in_never_sends_the_browser_elsewhere(tmp_path: Path, next_: str) -> None:
    async with console(tmp_path) as h:
        resp = await h.client.post(
            "/ui/login", data={"token": READ, "next": next_}, allow_redirects=False
        )
        assert resp.status == 303
        assert resp.headers["Location"] == "/ui"


async def test_label_values_are_text_and_secrets_are_redacted_on_every_page(
    tmp_path: Path,
) -> None:
    async with console(tmp_path) as h:
        await h.fire(
            am_alert(
                "APIDown", deployment=f"<script>alert(1)</script>{ADMIN}",
                annotations={"summary": '<img src=x onerror="alert(2)">'},
            )
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {READ}"}
        for path in ["/ui", "/ui/decisions/1", "/ui/rules", "/ui/rules/api-restart"]:
            resp = await h.client.get(path, headers=headers)
            text = await resp.text()
            assert resp.status == 200
            assert "<script>" not in text and "<img" not in text
            assert ADMIN not in text and READ not in text
            assert "script-src" not in resp.headers["Content-Security-Policy"]
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        story = await (await h.client.get("/ui/decisions/1", headers=headers)).text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;[redacted]" in story


async def _raw_post(h: Harness, path: str, parts: list[bytes], **headers: str) -> bytes:
    """POST a form over a raw socket in `parts`, a pause between them; the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    size = sum(len(p) for p in parts)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n{head}"
        "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n".encode()
    )
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.3)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_a_form_that_arrives_in_pieces_is_read_whole_and_one_that_never_does_is_refused(
    tmp_path: Path,
) -> None:
    async with console(tmp_path, config=CONFIG + "http: {body_timeout: 0.5s}\n") as h:
        form = b"reason=deploy%20of%20the%20billing%20API%20in%20progress&until=30m"
        answer = await _raw_post(
            h, "/ui/pause", [form[:20], form[20:]], Authorization=f"Bearer {ADMIN}"
        )
        assert answer.startswith(b"HTTP/1.1 303"), answer[:200]
        pause = h.daemon.state.pauses()[""]
        assert pause.reason == "deploy of the billing API in progress"
        assert pause.until == h.daemon.clock.now() + 1800
        # A sign-in whose body never comes is answered once http.body_timeout is over.
        reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port)
        writer.write(b"POST /ui/login HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\ntoken=")
        answer = await asyncio.wait_for(reader.read(12), 10)
        writer.close()
        assert answer == b"HTTP/1.1 400"


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
)
async def test_a_form_posted_from_another_site_changes_nothing_whatever_it_carries(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    """A proxy that injects the Bearer header injects it into another site's POST too."""
    async with console(tmp_path) as h:
        cookie, csrf = await _signed_in(h, ADMIN)
        h.client.session.cookie_jar.clear()
        for credentials, form in [
            ({"Authorization": f"Bearer {ADMIN}"}, {"reason": "x"}),
            ({"Cookie": f"{auth.SESSION_COOKIE}={cookie}"}, {"reason": "x", "csrf": csrf}),
        ]:
            resp = await h.client.post("/ui/pause", data=form, headers={**credentials, **headers})
            assert resp.status == 403, await resp.text()
        assert not h.daemon.state.paused
        login = await h.client.post(
            "/ui/login", data={"token": READ}, headers=headers, allow_redirects=False
        )
        assert login.status == 403 and "Set-Cookie" not in login.headers
        assert await h.metric("remediator_rejected_inputs_total", source="ui", kind="csrf") == 3
        # The console's own page posts same-origin, and that works.
        origin = str(h.client.make_url("/")).rstrip("/")
        ok = await h.client.post(
            "/ui/pause", data={"reason": "x"}, allow_redirects=False,
            headers={"Authorization": f"Bearer {ADMIN}", "Origin": origin,
                     "Sec-Fetch-Site": "same-origin"},
        )  # fmt: skip
        assert ok.status == 303 and h.daemon.state.paused


async def test_odd_ids_filters_and_pauses_are_a_4xx_never_a_500(tmp_path: Path) -> None:
    async with console(tmp_path) as h:
        await h.fire(am_alert("APIDown", deployment="api"))
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        huge = "9" * 5000
        for method, path, status in [
            ("GET", f"/ui/decisions/{huge}", 400),
            ("GET", f"/api/v1/decisions/{huge}", 400),
            ("POST", f"/api/v1/approvals/{huge}/approve", 400),
            ("GET", "/ui?outcome=executed&outcome=skipped", 400),
            ("GET", "/api/v1/decisions?rule=a&rule=b", 400),
        ]:
            resp = await h.client.request(method, path, headers=bearer)
            assert resp.status == status, (path, await resp.text())
        resp = await h.client.post(
            f"/ui/approvals/{huge}", data={"decision": "approve"}, headers=bearer
        )
        assert resp.status == 400
        listed = await (await h.client.get("/ui?outcome=nonsense", headers=bearer)).text()
        assert 'table class="decisions"' not in listed  # no unfiltered rows
        for until in ("99999999999d", "9999-12-31T00:00:00Z"):
            resp = await h.client.post(
                "/ui/pause", data={"reason": "x", "until": until}, headers=bearer
            )
            assert resp.status == 400, await resp.text()
            resp = await h.client.post("/api/v1/pause", json={"until": until}, headers=bearer)
            assert resp.status == 400
        assert not h.daemon.state.paused
        assert "more than a year away" in await resp.text()


async def test_a_fix_approved_then_refused_on_the_second_look_says_so(tmp_path: Path) -> None:
    async with console(tmp_path) as h:
        await h.fire(am_alert("DatabaseConnectionPoolExhausted", database="billing"))
        (waiting,) = await h.decisions()
        admin = {"Authorization": f"Bearer {ADMIN}"}
        resp = await h.client.post("/api/v1/pause", json={"reason": "freeze"}, headers=admin)
        assert resp.status == 200
        resp = await h.client.post(
            f"/ui/approvals/{waiting['id']}", data={"decision": "approve"}, allow_redirects=False,
            headers={"Authorization": f"Bearer {BRUNO}"},
        )  # fmt: skip
        assert resp.status == 303
        await h.settle()
        (row,) = await h.decisions()
        assert (row["outcome"], row["reason"]) == ("skipped", "paused")
        page = await (await h.client.get(f"/ui/decisions/{row['id']}", headers=admin)).text()
        guards = re.findall(r"<ol class=\"guards\">(.*?)</ol>", page, flags=re.S)[0]
        guards = re.findall(r"<li[^>]*>(.*?)</li>", guards, flags=re.S)
        text = [re.sub(r"<[^>]+>|\s+", " ", g).strip() for g in guards]
        assert any(t.startswith("approval") and "approved" in t and "bruno" in t for t in text), (
            text
        )
        assert any(t.startswith("paused (again)") and "refused" in t for t in text), text
        assert text[-1].startswith("act") and "not reached" in text[-1]


async def test_without_tokens_loopback_reads_the_console_and_cannot_act(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        await h.fire(am_alert("APIDown", deployment="api"))
        for path in PAGES:
            resp = await h.client.get(path)
            assert resp.status == 200, path
        resp = await h.client.post("/ui/pause", data={"reason": "x"})
        assert resp.status == 403
        assert not h.daemon.state.paused
        login = await h.client.get("/ui/login")
        assert "No token is configured" in await login.text()
