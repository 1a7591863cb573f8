"""Who may read what the daemon knows: the audit and the rules.

With no token configured only loopback clients read; once a read or admin token is
configured every read needs one. "Loopback" is the TCP peer the daemon sees, never a
header: the non-loopback client here is a real host — a network namespace of the
test's own, joined to this one by a veth pair — whose address the daemon sees as the
peer (needs root and iproute2; skipped elsewhere).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from remediator.web import api
from remediator.web.app import make_app
from tests.harness import Harness, am_alert

RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart {{ labels.deployment }}"}}
"""
READS = ["/api/v1/decisions", "/api/v1/rules", "/ui", "/ui/rules", "/ui/rules/api-restart",
         "/ui/approvals"]  # fmt: skip
"""Every read of the API and the console (which answers a refusal with a page)."""


def source(path: str) -> str:
    """The `source` label its refusals are counted under."""
    return "ui" if path.startswith("/ui") else "api"


_nets = itertools.count(1)


async def get(h: Harness, path: str, **headers: str) -> int:
    resp = await h.client.get(path, headers=headers)
    await resp.read()
    return resp.status


@pytest.mark.parametrize("path", READS)
async def test_without_tokens_a_loopback_client_reads_whatever_it_claims_to_forward(
    tmp_path: Path, path: str
) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        assert await get(h, path) == 200
        assert await get(h, path, **{"X-Forwarded-For": "203.0.113.9"}) == 200


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize(
    "env", [{"REMEDIATOR_READ_TOKEN": "r3ad-token"}, {"REMEDIATOR_ADMIN_TOKEN": "adm1n-token"}]
)
async def test_once_a_token_is_configured_every_read_needs_one(
    tmp_path: Path, path: str, env: dict[str, str]
) -> None:
    token = next(iter(env.values()))
    async with Harness(tmp_path, rules=RULES, env=env) as h:
        assert await get(h, path) == 401
        assert await get(h, path, Authorization="Bearer not-it") == 401
        assert await get(h, path, Authorization=f"Basic {token}") == 401
        assert await get(h, path, Authorization=f"Bearer {token}") == 200
        assert (
            await h.metric(
                "remediator_rejected_inputs_total", source=source(path), kind="unauthorized"
            )
            == 3
        )


async def test_the_read_token_reads_and_the_admin_token_reads_but_only_admin_acts(
    tmp_path: Path,
) -> None:
    env = {"REMEDIATOR_READ_TOKEN": "r3ad-token", "REMEDIATOR_ADMIN_TOKEN": "adm1n-token"}
    async with Harness(tmp_path, rules=RULES, env=env) as h:
        for token in env.values():
            for path in READS:
                assert await get(h, path, Authorization=f"Bearer {token}") == 200
        resp = await h.client.post("/api/v1/pause", headers={"Authorization": "Bearer r3ad-token"})
        assert resp.status == 401
        assert not h.daemon.state.paused


async def test_secrets_the_config_read_never_appear_in_an_answer(tmp_path: Path) -> None:
    env = {"REMEDIATOR_ADMIN_TOKEN": "adm1n-token-xyz"}
    async with Harness(tmp_path, rules=RULES, env=env) as h:
        # A label that happens to carry the token (pasted into a deployment name, say).
        await h.fire(am_alert("APIDown", deployment="api-adm1n-token-xyz"))
        resp = await h.client.get(
            "/api/v1/decisions", headers={"Authorization": "Bearer adm1n-token-xyz"}
        )
        text = await resp.text()
    assert resp.status == 200
    assert "adm1n-token-xyz" not in text
    assert "restart api-[redacted]" in text


def test_answers_show_query_texts_without_their_literals_and_urls_without_passwords() -> None:
    row = {
        "detail": "connect to postgresql://remediator:hunter2@db:5432/crm failed",
        "result": {"terminated": [{"query": "ALTER ROLE app PASSWORD 'hunter2' VALID 2030"}]},
    }
    shown = api.shown(row, frozenset())
    assert "hunter2" not in json.dumps(shown)
    assert shown["result"]["terminated"][0]["query"] == "ALTER ROLE app PASSWORD ? VALID ?"
    assert shown["detail"] == "connect to postgresql://remediator:[redacted]@db:5432/crm failed"


# -- a client that is not on loopback ------------------------------------------------


def _netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture
def other_host() -> Iterator[tuple[str, str]]:
    """(namespace, our address as that host sees it): a host of the test's own."""
    if not _netns_available():
        pytest.skip("needs root and iproute2 for a network namespace")
    n = next(_nets)
    tag = f"{os.getpid() % 100000}{n}"
    ns, here, there = f"rmd-read-{tag}", f"rmh{tag}", f"rmc{tag}"
    subnet = f"198.18.{(os.getpid() + n) % 250}"
    ours, theirs = f"{subnet}.1", f"{subnet}.2"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", ns],
        ["ip", "addr", "add", f"{ours}/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{theirs}/30", "dev", there],
        ["ip", "netns", "exec", ns, "ip", "link", "set", there, "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run(step, capture_output=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace: {done.stderr.decode().strip()}")
        yield ns, ours
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


_CLIENT = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


async def get_from(ns: str, url: str, **headers: str) -> int:
    """GET `url` from a process inside the namespace `ns`; the status code."""
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT, url, json.dumps(headers),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return int(out)


@pytest.fixture
async def served_on(other_host: tuple[str, str], tmp_path: Path) -> AsyncIterator[Any]:
    """A Harness whose app also listens on our side of the veth pair."""
    ns, address = other_host

    async def start(env: dict[str, str]) -> tuple[Harness, str]:
        h = Harness(tmp_path, rules=RULES, env=env)
        await h.start()
        server = TestServer(make_app(h.daemon), host=address, port=0)
        await server.start_server()
        opened.append((h, server))
        return h, f"http://{address}:{server.port}"

    opened: list[tuple[Harness, TestServer]] = []
    try:
        yield ns, start
    finally:
        for h, server in opened:
            await server.close()
            await h.stop()


@pytest.mark.parametrize("path", [*READS, "/api/v1/decisions/1", "/ui/decisions/1"])
async def test_without_tokens_another_host_may_not_read_even_claiming_to_be_loopback(
    served_on: Any, path: str
) -> None:
    ns, start = served_on
    h, url = await start({})
    assert await get_from(ns, url + path) == 403
    assert await get_from(ns, url + path, **{"X-Forwarded-For": "127.0.0.1"}) == 403
    assert await get_from(ns, url + "/healthz") == 200  # probes stay open
    refused = await h.metric(
        "remediator_rejected_inputs_total", source=source(path), kind="forbidden"
    )
    assert refused == 2


@pytest.mark.parametrize("path", READS)
async def test_another_host_with_the_read_token_reads(served_on: Any, path: str) -> None:
    ns, start = served_on
    _, url = await start({"REMEDIATOR_READ_TOKEN": "r3ad-token"})
    assert await get_from(ns, url + path) == 401
    assert await get_from(ns, url + path, Authorization="Bearer r3ad-token") == 200


async def test_one_decision_read_by_its_id_needs_a_token_too(tmp_path: Path) -> None:
    """The detail of one decision (API and console) is a read like the list."""
    env = {"REMEDIATOR_READ_TOKEN": "r3ad-token"}
    async with Harness(tmp_path, rules=RULES, env=env) as h:
        await h.fire(am_alert("APIDown", deployment="api", namespace="prod"))
        [row] = await h.decisions()
        for path in (f"/api/v1/decisions/{row['id']}", f"/ui/decisions/{row['id']}"):
            assert await get(h, path) == 401, path
            assert await get(h, path, Authorization="Bearer not-it") == 401, path
            assert await get(h, path, Authorization="Bearer r3ad-token") == 200, path
