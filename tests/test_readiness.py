"""/readyz tells the load balancer and the operator what is broken, by name.

A full disk is a real one when the tests run as root (a small tmpfs, filled to the last
byte); elsewhere the write error is injected into SQLite itself (`PRAGMA query_only` on
the writer's connection), which fails the same writes at the same place.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Harness, am_alert, payload

RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    for: 1m
    action: {type: log, params: {message: "restart the API"}}
"""


async def readiness(h: Harness) -> tuple[int, list[str]]:
    resp = await h.client.get("/readyz")
    body = await resp.json()
    return resp.status, body.get("problems", [])


class Disk:
    """Where the daemon's data lives, and a way to fill it up and free it again."""

    def __init__(
        self, data_dir: Path, fill: Callable[[Harness], Any], free: Callable[[Harness], Any]
    ):
        self.data_dir = data_dir
        self.fill = fill
        self.free = free


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[bool]:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield False
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    with tmpfs(tmp_path / "disk") as mounted:
        data = tmp_path / "disk" / "data"
        filler = tmp_path / "disk" / "filler"
        if mounted:

            async def fill(h: Harness) -> None:
                # Unbuffered, and the close inside the suppress: a buffered close would
                # try the last write again and raise "no space" out of the fixture.
                with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
                    while True:
                        f.write(b"\0" * 65536)

            async def free(h: Harness) -> None:
                filler.unlink()

        else:

            async def fill(h: Harness) -> None:
                await h.daemon.db.submit(lambda c: c.execute("PRAGMA query_only = 1"))

            async def free(h: Harness) -> None:
                await h.daemon.db.submit(lambda c: c.execute("PRAGMA query_only = 0"))

        yield Disk(data, fill, free)


@pytest.fixture
async def h(tmp_path: Path, disk: Disk) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, rules=RULES, data_dir=disk.data_dir)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def post(h: Harness, *alerts: dict[str, Any]) -> int:
    return (await h.post(payload(*alerts))).status


async def test_with_the_disk_full_webhooks_get_503_and_readyz_says_why(
    h: Harness, disk: Disk
) -> None:
    assert (await readiness(h))[0] == 200
    await disk.fill(h)

    assert (
        await post(h, am_alert("APIDown", namespace="prod", annotations={"x": "y" * 5000})) == 503
    )
    status, problems = await readiness(h)
    assert status == 503
    assert any("write(s) failed" in p for p in problems), problems
    assert await h.metric("remediator_backend_up", backend="database") == 0

    await disk.free(h)
    await readiness(h)  # queues a probe write; the next answer has its outcome
    await h.daemon.db.submit(lambda c: None)
    assert await readiness(h) == (200, [])
    assert await h.metric("remediator_backend_up", backend="database") == 1
    assert await post(h, am_alert("APIDown", namespace="prod")) == 200


async def test_an_alert_whose_decision_was_not_written_leaves_the_backlog_and_is_decided_later(
    h: Harness, disk: Disk
) -> None:
    now = dt.datetime.fromtimestamp(h.clock.now(), dt.UTC)
    assert await post(h, am_alert("APIDown", namespace="prod", starts_at=now)) == 200  # held 1m
    await h.settle()
    # Held on its own (its request left the journal): not backlog, no slot taken.
    assert (h.daemon.journal.backlog, len(h.daemon.engine.held)) == (0, 1)
    await disk.fill(h)

    await h.advance(120)  # decided now: its audit row cannot be written

    assert h.daemon.journal.backlog == 0, "a failed write must not hold a backlog slot"
    assert await readiness(h) != (200, [])
    await disk.free(h)
    await h.stop()
    await h.start()  # nothing lost: its held record stays until its decision is written
    await h.advance(0)
    assert [(d["outcome"], d["rule"]) for d in await h.decisions()] == [("dry_run", "api-restart")]


@pytest.mark.parametrize(
    ("config", "env", "backend", "problem"),
    [
        (
            "kubernetes: {allowed_namespaces: [prod], kubeconfig: /nonexistent/kubeconfig}\n",
            {},
            "kubernetes",
            "kubernetes.kubeconfig: cannot read /nonexistent/kubeconfig",
        ),
        (
            "postgres:\n  connections:\n    main: {dsn_env: CRM_DSN, allowed_databases: [crm]}\n",
            {},
            "postgres",
            "postgres.connections.main: $CRM_DSN is unset",
        ),
        (
            "docker: {socket: /nonexistent/docker.sock}\n",
            {},
            "docker",
            "docker.socket: /nonexistent/docker.sock does not exist",
        ),
    ],
)
async def test_a_configured_family_whose_client_cannot_work_is_named(
    tmp_path: Path, config: str, env: dict[str, str], backend: str, problem: str
) -> None:
    async with Harness(tmp_path, rules=RULES, config=config, env=env) as h:
        status, problems = await readiness(h)
        assert status == 503
        assert any(p.startswith(problem) for p in problems), problems
        assert await h.metric("remediator_backend_up", backend=backend) == 0
        assert await h.metric("remediator_backend_up", backend="database") == 1


async def test_a_readable_kubeconfig_is_ready(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    config = f"kubernetes: {{allowed_namespaces: [prod], kubeconfig: {kubeconfig}}}\n"
    async with Harness(tmp_path, rules=RULES, config=config) as h:
        assert await readiness(h) == (200, [])
        assert await h.metric("remediator_backend_up", backend="kubernetes") == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_database_writer_is_named_and_webhooks_get_503(tmp_path: Path) -> None:
    h = Harness(tmp_path, rules=RULES)
    await h.start()
    try:

        def die(conn: Any) -> None:
            raise SystemExit("the writer thread dies")  # not an Exception: nothing catches it

        with contextlib.suppress(BaseException):
            await asyncio.wait_for(h.daemon.db.submit(die), 0.5)
        await asyncio.to_thread(h.daemon.db._thread.join, 5)  # type: ignore[union-attr]
        status, problems = await readiness(h)
        assert status == 503
        assert any("is not running" in p for p in problems), problems
        assert await post(h, am_alert("APIDown", namespace="prod")) == 503
    finally:
        await h.client.close()
        await h.daemon.shutdown()


async def test_metrics_say_which_backend_is_down_without_asking_readyz(tmp_path: Path) -> None:
    config = "docker: {socket: /nonexistent/docker.sock}\n"
    async with Harness(tmp_path, rules=RULES, config=config) as h:
        text = await (await h.client.get("/metrics")).text()
    assert 'remediator_backend_up{backend="docker"} 0.0' in text
    assert 'remediator_backend_up{backend="database"} 1.0' in text
