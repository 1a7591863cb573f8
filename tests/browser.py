"""Debian's chromium, headless, driven by Playwright: the console as a user's browser sees it.

    async with chromium() as browser:
        page = await Page.open(browser, tmp_path)
        await page.go(h.url("/ui"))
        ...
        page.assert_quiet()   # no console error, no page error, no failed request

Playwright talks to the browser over a pipe; the browser is Debian's (`chromium`, which
`make test` installs), never one Playwright downloads. Only loopback is visited, and the
browser is told not to phone home (no component updates, no background networking).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Response, async_playwright
from playwright.async_api import Page as PwPage

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",  # the tests run as root in a container: the sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
_shots = itertools.count(1)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make system-deps` (as root) installs it")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class Page:
    """One browser context (its own cookies) and its page, recording what went wrong."""

    def __init__(self, page: PwPage, shots: Path) -> None:
        self.pw = page
        self.shots = shots
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))

    @classmethod
    async def open(cls, browser: Browser, shots: Path, **context: Any) -> Page:
        ctx = await browser.new_context(**context)
        return cls(await ctx.new_page(), shots)

    def _console(self, message: Any) -> None:
        if message.type not in ("error", "warning"):
            return
        # The page itself answered 4xx: the test asserts that status (go's `expect`);
        # chromium's note about it is not a problem of the page.
        loaded = message.location.get("url") == self.pw.url
        if loaded and message.text.startswith("Failed to load resource: the server responded"):
            return
        self.problems.append(f"console {message.type}: {message.text}")

    async def go(self, url: str, *, expect: int = 200) -> Response:
        response = await self.pw.goto(url)
        assert response is not None
        assert response.status == expect, f"{url}: {response.status}"
        return response

    async def shot(self, name: str) -> Path:
        """A full-page screenshot into the test's directory."""
        path = self.shots / f"{next(_shots):02d}-{name}.png"
        await self.pw.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000, f"{path} is empty"
        return path

    async def texts(self, selector: str) -> list[str]:
        return [t.strip() for t in await self.pw.locator(selector).all_inner_texts()]

    def assert_quiet(self) -> None:
        assert self.problems == [], self.problems

    async def close(self) -> None:
        await self.pw.context.close()
