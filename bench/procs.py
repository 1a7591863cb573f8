"""Servers under test as child processes: spawn, wait until they serve, read memory, stop.

Every process is started here and stopped here, by its own PID: SIGTERM, then SIGKILL
after a bound. Ports are picked free on loopback at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Self

import aiohttp

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Share of one CPU under which a server counts as idle (done with its backlog).
IDLE_SHARE = 0.02


class BenchError(Exception):
    """A benchmark could not be measured (a server did not start, an API misbehaved)."""


def free_port() -> int:
    """A loopback TCP port free right now (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class Memory:
    """Resident memory of a process, MiB, from /proc/PID/status."""

    rss_mib: float
    #: High-water mark of RSS since the process started.
    hwm_mib: float


class ServerProcess:
    """One server under test, running as a child process with its output in a log file."""

    def __init__(
        self,
        *,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = env
        self.base_url = f"http://{LOOPBACK}:{port}"
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: int | None = None
        #: ``time.perf_counter()`` just before the spawn, for start-up figures.
        self.spawned_at = 0.0

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError(f"{self.name} was not started")
        return self._proc.pid

    async def start(self) -> Self:
        """Spawn the process; does not wait for it to serve (see :meth:`wait_http`)."""
        env = dict(os.environ)
        env.update(self.env or {})
        self._log_file = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.spawned_at = time.perf_counter()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=self._log_file,
                cwd=REPO_ROOT,
                env=env,
            )
        except OSError as exc:
            os.close(self._log_file)
            self._log_file = None
            raise BenchError(f"{self.name}: cannot run {self.argv[0]!r}: {exc}") from exc
        return self

    def exited(self) -> int | None:
        """The exit code if the process has ended, else ``None``."""
        return None if self._proc is None else self._proc.returncode

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the process's output, to say why it failed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def _failure(self, what: str) -> BenchError:
        return BenchError(
            f"{self.name}: {what}\n  command: {' '.join(self.argv)}\n"
            f"  log ({self.log_path}):\n{self.log_tail()}"
        )

    async def wait_http(
        self,
        *,
        method: str,
        path: str,
        timeout: float,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> float:
        """Retry a request until it answers 2xx; return seconds since spawn.

        Connection refused is expected while the process starts; any other answer is
        retried too (a server may answer 503 until it is ready). Gives up after
        ``timeout`` seconds or as soon as the process exits, with its log in the error.
        """
        deadline = time.perf_counter() + timeout
        last = "no answer"
        client_timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            while True:
                code = self.exited()
                if code is not None:
                    raise self._failure(f"exited with code {code} before {method} {path} worked")
                try:
                    async with session.request(
                        method, self.base_url + path, data=body, headers=headers
                    ) as resp:
                        await resp.read()
                        if 200 <= resp.status < 300:
                            return time.perf_counter() - self.spawned_at
                        last = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    last = type(exc).__name__
                if time.perf_counter() >= deadline:
                    raise self._failure(
                        f"{method} {path} did not answer 2xx within {timeout:g} s (last: {last})"
                    )
                await asyncio.sleep(0.005)

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) the process has used so far."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError as exc:
            raise self._failure(f"cannot read /proc/{self.pid}/stat: {exc}") from exc
        # Fields after the command name (which may hold spaces), from field 3 on:
        # utime and stime are fields 14 and 15 (man 5 proc), in clock ticks.
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    async def wait_cpu_idle(self, *, timeout: float, interval: float = 0.2) -> float:
        """Wait until the process uses under 2% of a CPU over ``interval`` (its backlog
        is worked off), at most ``timeout`` seconds; return its CPU seconds then.

        Nothing is asked of the process meanwhile, so the waiting costs it no CPU.
        """
        deadline = time.perf_counter() + timeout
        last = self.cpu_seconds()
        while time.perf_counter() < deadline:
            await asyncio.sleep(interval)
            now = self.cpu_seconds()
            if now - last < IDLE_SHARE * interval:
                return now
            last = now
        return last

    def memory(self) -> Memory:
        """VmRSS and VmHWM of the process itself (not of any children it may start)."""
        fields: dict[str, float] = {}
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError as exc:
            raise self._failure(f"cannot read /proc/{self.pid}/status: {exc}") from exc
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # kB → MiB
        return Memory(rss_mib=fields.get("VmRSS", 0.0), hwm_mib=fields.get("VmHWM", 0.0))

    async def stop(self, *, grace: float = 10.0) -> int | None:
        """SIGTERM to this process's PID, SIGKILL after ``grace`` seconds; the exit code."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                except TimeoutError:
                    print(
                        f"  ! {self.name} (pid {proc.pid}) ignored SIGTERM for {grace:g} s: "
                        "SIGKILL",
                        file=sys.stderr,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    await proc.wait()
            return proc.returncode
        finally:
            if self._log_file is not None:
                os.close(self._log_file)
                self._log_file = None
