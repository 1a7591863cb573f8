"""The real daemon as a child process: `python -m remediator serve` on a free loopback port.

    async with DaemonProcess(tmp_path, rules=RULES, config=CONFIG) as daemon:
        status, _ = await daemon.post(payload(alert))
        daemon.kill()                      # SIGKILL, by its own PID
        await daemon.wait_exit()
        await daemon.start()               # same data dir, same port when it is still free
        rows = await daemon.decisions()

Everything a test reads goes through the daemon's HTTP surface (`/api/v1/decisions`,
`/metrics`, `/readyz`), as an operator would. Output (JSON log lines) goes to
`daemon.log` in the test's directory, appended across restarts; every failure message
carries its tail. The process is only ever signalled by its own PID, and a daemon still
running at interpreter exit is killed, so a crashed test leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests import servers

START_TIMEOUT = 15.0
REPO = Path(__file__).resolve().parents[1]
POLL_INTERVAL = 0.05

_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_RUNNING):
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


class DaemonProcess:
    """One `remediator serve` process with its rules, config and data dir under `base`."""

    def __init__(
        self,
        base: Path,
        *,
        rules: str,
        config: str | None = None,
        dry_run: bool = False,
        env: Mapping[str, str] | None = None,
        fd_limit: int | None = None,
    ) -> None:
        """`fd_limit`: the daemon's RLIMIT_NOFILE (soft and hard), set before it starts."""
        self.base = base
        self.fd_limit = fd_limit
        self.rules_dir = base / "rules"
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        (self.rules_dir / "rules.yaml").write_text(textwrap.dedent(rules))
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = base / "config.yaml"
            self.config_path.write_text(textwrap.dedent(config))
        self.data_dir = base / "data"
        self.log_path = base / "daemon.log"
        self.dry_run = dry_run
        # The daemon reads secrets from REMEDIATOR_* variables even without a config
        # file: the caller's environment must not switch auth on by accident.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATOR_")}
        self.env |= {"REMEDIATOR_LOG_LEVEL": "info", **(env or {})}
        # The code of this checkout, not whatever `remediator` the interpreter would
        # find from the daemon's own working directory (an editable install elsewhere).
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p
        )
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{servers.LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the daemon was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return servers.read_tail(self.log_path)

    def _command(self) -> list[str]:
        command = [
            sys.executable, "-m", "remediator", "serve",
            "--listen", f"{servers.LOOPBACK}:{self.port}",
            "--data-dir", str(self.data_dir),
            "--rules", str(self.rules_dir),
            "--no-dry-run" if not self.dry_run else "--dry-run",
        ]  # fmt: skip
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        if self.fd_limit is not None:
            # The open-files limit an operator could have set (ulimit -n), applied by a
            # tiny exec wrapper: no preexec_fn in a process that runs threads.
            limit = (
                "import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({self.fd_limit}, {self.fd_limit})); "
                "os.execv(sys.argv[1], sys.argv[1:])"
            )
            command = [sys.executable, "-c", limit, *command]
        return command

    async def start(self) -> Self:
        """Start (or restart on the same data dir) and return once /healthz answers."""
        assert not self.running, f"daemon {self.pid} is still running"
        if self._session is None:
            # force_close: after a kill -9, a pooled keep-alive connection would be dead.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=10),
            )
        for attempt in range(3):
            if self.port == 0 or attempt > 0:
                self.port = servers.free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            if await self._spawn_and_wait():
                return self
            if b"listen_failed" not in self._log_since(offset):
                break
        raise servers.ServerError(f"the daemon did not start:\n{self.output()}")

    async def _spawn_and_wait(self) -> bool:
        command = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            # In a thread: forking a large test process can hold the loop for a second
            # on a loaded machine, which the blocked-loop guard rightly counts.
            self.process = await asyncio.to_thread(
                subprocess.Popen,
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=self.env,
            )
        _RUNNING.add(self.process)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                _RUNNING.discard(self.process)
                return False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                if await self.status("GET", "/healthz") == 200:
                    return True
            await asyncio.sleep(POLL_INTERVAL)
        self.kill()
        await self.wait_exit()
        raise servers.ServerError(
            f"the daemon did not answer /healthz within {START_TIMEOUT:g}s:\n{self.output()}"
        )

    def _log_since(self, offset: int) -> bytes:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read()

    def kill(self) -> None:
        """SIGKILL the daemon (its own PID): no shutdown, no last commit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the daemon's staged shutdown."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to end; return its exit code (negative: the signal)."""
        assert self.process is not None
        try:
            code = await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"daemon {self.pid} still running after {timeout:g}s:\n{self.output()}"
            ) from None
        _RUNNING.discard(self.process)
        return code

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            try:
                return await self.wait_exit(timeout)
            except AssertionError:
                self.kill()
                await self.wait_exit(10.0)
                raise
        _RUNNING.discard(self.process)
        return self.process.returncode

    async def close(self) -> None:
        """Stop the process if it runs and close the HTTP session."""
        try:
            await self.stop()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- HTTP -------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() the daemon first"
        return self._session

    async def status(self, method: str, path: str) -> int:
        async with self.session.request(method, self.url + path) as resp:
            await resp.read()
            return resp.status

    async def post(self, body: Any, *, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """POST a webhook body; (status, decoded JSON answer)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(
            self.url + "/webhook/alertmanager",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as resp:
            return resp.status, json.loads(await resp.read() or b"null")

    async def decisions(self, **query: str) -> list[dict[str, Any]]:
        """Every audit row (all pages of /api/v1/decisions), oldest first."""
        rows: list[dict[str, Any]] = []
        params = {"limit": "1000", **query}
        while True:
            async with self.session.get(
                self.url + "/api/v1/decisions", params=params, headers=self.read_headers()
            ) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            rows += page["decisions"]
            if page["next_before"] is None:
                return list(reversed(rows))
            params["before"] = str(page["next_before"])

    def read_headers(self) -> dict[str, str]:
        """The Authorization a reader sends once a read or admin token is configured."""
        token = self.env.get("REMEDIATOR_READ_TOKEN") or self.env.get("REMEDIATOR_ADMIN_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        async with self.session.get(self.url + "/metrics") as resp:
            assert resp.status == 200, await resp.text()
            text = await resp.text()
        return [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0 if none)."""
        return sum(
            value
            for sample, sample_labels, value in await self.metrics()
            if sample == name and labels.items() <= sample_labels.items()
        )

    async def settled(self) -> bool:
        """Journal drained and no action running or waiting for a slot."""
        samples = {name: value for name, _, value in await self.metrics()}
        return (
            samples["remediator_journal_backlog"] == 0
            and samples["remediator_inflight_actions"] == 0
        )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(interval)
