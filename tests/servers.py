"""Real servers on loopback for integration tests: Alertmanager, Redis, PostgreSQL, and
a Docker Engine on its own unix socket.

Each server class starts its binary on a free ``127.0.0.1`` port with its state in a
fresh temporary directory, waits until the server answers, and stops it by its own PID
(never by name). Output goes to a log file in that directory; every start-up failure or
timeout raises :class:`ServerError` with the tail of that log, so a broken environment
says what broke. Use them as context managers (or call :meth:`stop` in a ``finally``)::

    with servers.RedisServer() as redis:
        assert redis.command("PING") == "PONG"

The helpers are synchronous on purpose (plain ``subprocess`` and ``urllib``) so that
fixtures of any scope can use them. From an ``async`` test that also serves something on
its event loop, call them through ``asyncio.to_thread`` so the loop keeps running.

:class:`WebhookReceiver` is the other direction: a small aiohttp server inside the test
that records what Alertmanager (or an action such as ``notify.webhook``) sends it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from aiohttp import web
from multidict import CIMultiDict

ALERTMANAGER_BIN = os.environ.get(
    "REMEDIATOR_TEST_ALERTMANAGER", "/usr/bin/prometheus-alertmanager"
)
AMTOOL_BIN = os.environ.get("REMEDIATOR_TEST_AMTOOL", "/usr/bin/amtool")
"""Alertmanager's CLI (same Debian package): `check-config` is its config parser."""
REDIS_SERVER_BIN = os.environ.get("REMEDIATOR_TEST_REDIS_SERVER", "/usr/bin/redis-server")
DOCKERD_BIN = os.environ.get("REMEDIATOR_TEST_DOCKERD", "/usr/sbin/dockerd")
BUSYBOX_BIN = os.environ.get("REMEDIATOR_TEST_BUSYBOX", "/bin/busybox")
POSTGRES_BIN_DIR = Path(
    os.environ.get("REMEDIATOR_TEST_POSTGRES_BIN_DIR", "/usr/lib/postgresql/15/bin")
)
# PostgreSQL refuses to run as root; when the tests run as root, its processes run as
# this system user (created by Debian's postgresql-common).
POSTGRES_OS_USER = "postgres"

LOOPBACK = "127.0.0.1"
LOG_TAIL_CHARS = 4000
"""How much of a server's log an error message shows: enough for the cause, not a page."""

# The stdlib opener honours http_proxy/https_proxy from the environment; a proxy must
# never see (or break) requests to our own loopback servers.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """A test server failed to start, answer, or stop; the message carries its log tail."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the kernel picks it).

    There is a short race until the server binds it; the server classes retry with a new
    port when the binary reports the address in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (a zombie counts as alive until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        return True
    return True


def rfc3339(moment: dt.datetime) -> str:
    """Format an aware datetime the way Alertmanager's API expects (UTC, ``Z``)."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass an aware one (tz=datetime.UTC)")
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def read_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return text[-chars:] if len(text) > chars else text


def _describe(process: subprocess.Popen[bytes] | None, log: Path | None) -> str:
    parts = []
    if process is not None:
        code = process.poll()
        state = "running" if code is None else f"exited with code {code}"
        parts.append(f"process {process.pid} {state}")
    if log is not None:
        parts.append(f"log {log}:\n{read_tail(log)}")
    return ("\n" + "\n".join(parts)) if parts else ""


def http_status(url: str, *, method: str = "GET", timeout: float = 2.0) -> int:
    """The HTTP status a URL answers with (4xx/5xx included); raises ``OSError`` if none."""
    request = urllib.request.Request(url, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def wait_http(
    url: str,
    *,
    timeout: float = 20.0,
    ok: Callable[[int], bool] = lambda status: status < 500,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> int:
    """Poll ``url`` until it answers with a status ``ok`` accepts; return that status.

    With ``process`` given, stop waiting as soon as it exits; with ``log`` given, the
    error shows its tail. Raises :class:`ServerError` on timeout or early exit.
    """
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            raise ServerError(f"{url}: the server exited before answering{_describe(process, log)}")
        try:
            status = http_status(url, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        except OSError as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if ok(status):
                return status
            last = f"HTTP {status}"
        if time.monotonic() >= deadline:
            raise ServerError(
                f"{url} did not answer as expected within {timeout:g}s (last: {last})"
                f"{_describe(process, log)}"
            )
        time.sleep(0.05)


async def wait_http_async(
    url: str,
    *,
    timeout: float = 20.0,
    ok: Callable[[int], bool] = lambda status: status < 500,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> int:
    """:func:`wait_http` for coroutines: polls without blocking the event loop."""
    return await asyncio.to_thread(wait_http, url, timeout=timeout, ok=ok, process=process, log=log)


def _request_json(
    method: str, url: str, body: Any = None, *, timeout: float = 5.0, expect: int = 200
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, raw = int(error.code), error.read()
    if status != expect:
        raise ServerError(f"{method} {url}: HTTP {status} (expected {expect}): {raw[:1000]!r}")
    return json.loads(raw) if raw.strip() else None


# --------------------------------------------------------------------------- base class

# Servers still running at interpreter exit (a test that crashed past its ``finally``)
# are stopped here, so a test run never leaves daemons behind.
_RUNNING: set[_Server] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop()


class _Server:
    """One child process on a free loopback port, with its state in a temporary directory.

    Subclasses provide :meth:`_command` and :meth:`_ready`; this class owns starting
    (with a retry when the port was taken meanwhile), waiting, logs and stopping.
    """

    name: ClassVar[str] = "server"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    start_attempts: ClassVar[int] = 3

    def __init__(self, *, start_timeout: float = 20.0, stop_timeout: float = 10.0) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- to override

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """Whether the server answers; called repeatedly until true or timeout."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """One-time set-up in :attr:`directory` before the first start attempt."""

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    # -- lifecycle

    @property
    def directory(self) -> Path:
        """The server's temporary directory (log, config, data); removed by :meth:`stop`."""
        if self._directory is None:
            raise ServerError(f"{self.name} was never started")
        return self._directory

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def pid(self) -> int:
        """The PID of the server process (the one :meth:`stop` signals)."""
        if self._process is None:
            raise ServerError(f"{self.name} was never started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """The tail of the server's log (stdout and stderr) while its directory exists."""
        return read_tail(self.log_path) if self._directory else "(not started)"

    def start(self) -> Self:
        """Start on a free port and return once the server answers."""
        if self._directory is not None:
            raise ServerError(f"{self.name} already started ({self!r}); use a new instance")
        self._directory = Path(tempfile.mkdtemp(prefix=f"remediator-{self.name}-"))
        try:
            self._prepare()
        except BaseException:
            self._cleanup()
            raise
        for attempt in range(1, self.start_attempts + 1):
            self.port = free_port()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._spawn_and_wait()
            except BaseException as error:
                port_taken = b"address already in use" in self._log_since(log_offset).lower()
                self._terminate()
                if isinstance(error, ServerError) and port_taken and attempt < self.start_attempts:
                    continue
                self._cleanup()
                raise
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _log_since(self, offset: int) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read()
        except FileNotFoundError:
            return b""

    def _spawn_and_wait(self) -> None:
        command = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                **self._popen_kwargs(),
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited during start-up{_describe(self._process, self.log_path)}"
                )
            if self._ready():
                return
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"{self.name} on port {self.port} not ready within {self.start_timeout:g}s"
                    f"{_describe(self._process, self.log_path)}"
                )
            time.sleep(0.05)

    def _terminate(self) -> int | None:
        """Signal our own PID, wait a bounded time, then SIGKILL; return the exit code."""
        process = self._process
        if process is None:
            return None
        _RUNNING.discard(self)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(self.stop_signal)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=self.stop_timeout)
        return process.returncode

    def _cleanup(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def halt(self, *, kill: bool = False) -> int | None:
        """Stop the process (its own PID: the stop signal, or SIGKILL — a crash — with
        ``kill``) but keep its directory and port, so :meth:`resume` restarts it on what
        it persisted; return its exit code."""
        if kill and self.running:
            assert self._process is not None
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        return self._terminate()

    def resume(self) -> Self:
        """Start the server again after :meth:`halt`, on the same port and directory."""
        if self.running:
            raise ServerError(f"{self.name} is still running ({self!r}); halt() it first")
        self._spawn_and_wait()
        return self

    def stop(self) -> int | None:
        """Stop the server (idempotent), remove its directory; return its exit code."""
        code = self._terminate()
        self._cleanup()
        return code

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        return f"<{type(self).__name__} port={self.port} pid={pid} dir={self._directory}>"


# --------------------------------------------------------------------------- Alertmanager


class AlertmanagerServer(_Server):
    """``prometheus-alertmanager`` routing every alert to one webhook receiver.

    The generated config has one route (``group_by``, ``group_wait``, ``group_interval``,
    ``repeat_interval`` as given) to a receiver named ``receiver_name`` that POSTs the
    webhook v4 payload to ``webhook_url`` with ``send_resolved: true``; ``bearer_token``
    adds ``http_config.authorization.credentials``. ``extra_receivers`` (receiver dicts as
    in alertmanager.yml) and ``extra_routes`` (child routes that may name them) are added
    as given. Durations are Alertmanager duration strings; the binary rejects a zero
    ``group_interval`` or ``repeat_interval`` but accepts ``group_wait: 0s`` and
    millisecond intervals. HA gossip is disabled (``--cluster.listen-address=``) unless
    ``cluster_port`` is given: then it gossips on that loopback port with ``peers``
    (``host:port`` of the others' cluster ports), waiting ``peer_timeout`` per position
    before it notifies (Alertmanager's own de-duplication between peers).
    """

    name = "alertmanager"

    def __init__(
        self,
        webhook_url: str,
        *,
        bearer_token: str | None = None,
        group_by: Sequence[str] = ("alertname",),
        group_wait: str = "0s",
        group_interval: str = "1s",
        repeat_interval: str = "2s",
        receiver_name: str = "remediator",
        max_alerts: int = 0,
        extra_receivers: Sequence[Mapping[str, Any]] = (),
        extra_routes: Sequence[Mapping[str, Any]] = (),
        log_level: str = "debug",
        cluster_port: int | None = None,
        peers: Sequence[str] = (),
        peer_timeout: str = "15s",
        binary: str = ALERTMANAGER_BIN,
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.webhook_url = webhook_url
        self.cluster_port = cluster_port
        self.peers = list(peers)
        self.peer_timeout = peer_timeout
        self.binary = binary
        self.log_level = log_level
        webhook: dict[str, Any] = {
            "url": webhook_url,
            "send_resolved": True,
            "max_alerts": max_alerts,
        }
        if bearer_token is not None:
            webhook["http_config"] = {"authorization": {"credentials": bearer_token}}
        route: dict[str, Any] = {
            "receiver": receiver_name,
            "group_by": list(group_by),
            "group_wait": group_wait,
            "group_interval": group_interval,
            "repeat_interval": repeat_interval,
        }
        if extra_routes:
            route["routes"] = [dict(r) for r in extra_routes]
        self.config: dict[str, Any] = {
            "route": route,
            "receivers": [
                {"name": receiver_name, "webhook_configs": [webhook]},
                *(dict(r) for r in extra_receivers),
            ],
        }

    @property
    def config_path(self) -> Path:
        return self.directory / "alertmanager.yml"

    def _command(self) -> list[str]:
        # JSON is YAML, so the config needs no YAML writer and stays exact.
        self.config_path.write_text(json.dumps(self.config, indent=2))
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            # Otherwise externalURL (in every webhook payload) is derived from the hostname.
            f"--web.external-url={self.url}",
            *self._cluster_args(),
            f"--log.level={self.log_level}",
        ]

    def _cluster_args(self) -> list[str]:
        if self.cluster_port is None:
            # Empty disables HA gossip, which would otherwise bind 0.0.0.0:9094.
            return ["--cluster.listen-address="]
        address = f"{LOOPBACK}:{self.cluster_port}"
        return [
            f"--cluster.listen-address={address}",
            f"--cluster.advertise-address={address}",
            *(f"--cluster.peer={peer}" for peer in self.peers),
            f"--cluster.peer-timeout={self.peer_timeout}",
            # Loopback peers: gossip and settle in a second, not a minute.
            "--cluster.gossip-interval=50ms",
            "--cluster.pushpull-interval=1s",
            "--cluster.settle-timeout=2s",
            "--cluster.reconnect-interval=500ms",
        ]

    def _ready(self) -> bool:
        try:
            return http_status(f"{self.url}/-/ready", timeout=1.0) == 200
        except OSError:
            return False

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (the API is under ``/api/v2``)."""
        return f"http://{LOOPBACK}:{self.port}"

    def api(self, method: str, path: str, body: Any = None, *, expect: int = 200) -> Any:
        """Call the v2 API (``path`` relative to ``/api/v2``) and decode its JSON answer."""
        return _request_json(method, f"{self.url}/api/v2/{path.lstrip('/')}", body, expect=expect)

    def post_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """``POST /api/v2/alerts``: dicts with labels, annotations, startsAt, endsAt, ...

        :func:`alert` builds one. Alertmanager fills a missing ``startsAt`` with now; an
        ``endsAt`` in the past resolves the alert.
        """
        self.api("POST", "alerts", [dict(a) for a in alerts])

    def get_alerts(
        self,
        *,
        filter: Sequence[str] = (),
        active: bool = True,
        silenced: bool = True,
        inhibited: bool = True,
        unprocessed: bool = True,
    ) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``; ``filter`` holds matchers such as ``'alertname="X"'``."""
        query = [("filter", f) for f in filter] + [
            ("active", str(active).lower()),
            ("silenced", str(silenced).lower()),
            ("inhibited", str(inhibited).lower()),
            ("unprocessed", str(unprocessed).lower()),
        ]
        result: list[dict[str, Any]] = self.api("GET", f"alerts?{urllib.parse.urlencode(query)}")
        return result

    def create_silence(
        self,
        matchers: Sequence[Mapping[str, Any]] | Mapping[str, str],
        *,
        duration: dt.timedelta = dt.timedelta(hours=1),
        starts_at: dt.datetime | None = None,
        created_by: str = "tests",
        comment: str = "integration test",
    ) -> str:
        """``POST /api/v2/silences``; return the new silence ID.

        ``matchers`` is either ``{"name": "value", ...}`` (equality matchers) or a list of
        API matchers ``{"name", "value", "isRegex"?, "isEqual"?}`` (defaults: equal, no
        regex).
        """
        given: list[Mapping[str, Any]] = (
            [{"name": k, "value": v} for k, v in matchers.items()]
            if isinstance(matchers, Mapping)
            else list(matchers)
        )
        matcher_list = [{"isRegex": False, "isEqual": True, **m} for m in given]
        start = starts_at or dt.datetime.now(dt.UTC)
        answer = self.api(
            "POST",
            "silences",
            {
                "matchers": matcher_list,
                "startsAt": rfc3339(start),
                "endsAt": rfc3339(start + duration),
                "createdBy": created_by,
                "comment": comment,
            },
        )
        return str(answer["silenceID"])

    def expire_silence(self, silence_id: str) -> None:
        """``DELETE /api/v2/silence/{id}``: the silence becomes ``expired``."""
        self.api("DELETE", f"silence/{urllib.parse.quote(silence_id)}")

    def list_silences(self, *, state: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/v2/silences`` (expired ones included unless ``state`` filters)."""
        silences: list[dict[str, Any]] = self.api("GET", "silences")
        if state is not None:
            silences = [s for s in silences if s["status"]["state"] == state]
        return silences


def alert(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    starts_at: dt.datetime | None = None,
    ends_at: dt.datetime | None = None,
    generator_url: str = "",
) -> dict[str, Any]:
    """One alert for :meth:`AlertmanagerServer.post_alerts` (``alertname`` is ``name``)."""
    body: dict[str, Any] = {
        "labels": {"alertname": name, **(labels or {})},
        "annotations": dict(annotations or {}),
    }
    if starts_at is not None:
        body["startsAt"] = rfc3339(starts_at)
    if ends_at is not None:
        body["endsAt"] = rfc3339(ends_at)
    if generator_url:
        body["generatorURL"] = generator_url
    return body


# --------------------------------------------------------------------------- Redis


class RedisServer(_Server):
    """``redis-server`` on loopback without persistence; :meth:`command` speaks RESP."""

    name = "redis"

    def __init__(
        self,
        *,
        binary: str = REDIS_SERVER_BIN,
        extra_args: Sequence[str] = (),
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.binary = binary
        self.extra_args = list(extra_args)

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            *self.extra_args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            return bool(self.command("PING", timeout=1.0) == "PONG")
        except (OSError, ServerError):
            return False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def command(self, *args: str | bytes | int, timeout: float = 5.0) -> Any:
        """Send one command over a fresh connection and return the decoded reply.

        Simple strings and bulk strings come back as ``str`` (``None`` for nil), integers
        as ``int``, arrays as lists; an error reply raises :class:`ServerError`.
        """
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
            sock.sendall(resp_encode(args))
            with sock.makefile("rb") as stream:
                return resp_read(stream)


def resp_encode(args: Sequence[str | bytes | int]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def resp_read(stream: Any) -> Any:
    """Read one RESP2 reply from a binary file-like object."""
    line: bytes = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ServerError(f"redis: connection closed mid-reply ({line!r})")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise ServerError(f"redis error reply: {rest}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = stream.read(size + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [resp_read(stream) for _ in range(count)]
    raise ServerError(f"redis: unexpected reply {line!r}")


# --------------------------------------------------------------------------- PostgreSQL


class PostgresServer(_Server):
    """PostgreSQL 15 from Debian: ``initdb`` into a temporary directory, then ``postgres``.

    Listens on 127.0.0.1 only, with its Unix socket in its own directory, trust auth for
    the ``postgres`` superuser and ``fsync=off`` (tests need speed, not durability). When
    the tests run as root, both binaries run as the ``postgres`` system user, because
    PostgreSQL refuses root. Stops with SIGINT (fast shutdown), then SIGKILL.
    """

    name = "postgres"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        *,
        bin_dir: Path = POSTGRES_BIN_DIR,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.bin_dir = bin_dir
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            **(settings or {}),
        }
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            self._user = {"user": POSTGRES_OS_USER, "group": POSTGRES_OS_USER, "extra_groups": []}

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    def _prepare(self) -> None:
        self.socket_dir.mkdir()
        if self._user:
            # mkdtemp made the directory 0700 for root; the postgres user must own it.
            for path in (self.directory, self.socket_dir):
                shutil.chown(path, POSTGRES_OS_USER, POSTGRES_OS_USER)
        command = [
            str(self.bin_dir / "initdb"),
            "--pgdata", str(self.data_dir),
            "--username", "postgres",
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",
            "--no-sync",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                cwd=self.directory,
                timeout=self.start_timeout,
                check=False,
                **self._user,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise ServerError(f"initdb could not run ({' '.join(command)}): {error}") from error
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise ServerError(f"initdb failed with code {result.returncode}:\n{output}")

    def _command(self) -> list[str]:
        command = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-c", f"listen_addresses={LOOPBACK}",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
        ]  # fmt: skip
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _popen_kwargs(self) -> dict[str, Any]:
        return dict(self._user)

    def _ready(self) -> bool:
        command = [
            str(self.bin_dir / "pg_isready"),
            f"--host={LOOPBACK}",
            f"--port={self.port}",
            "--username=postgres",
            "--dbname=postgres",
            "--timeout=1",
        ]
        result = subprocess.run(command, capture_output=True, timeout=5, check=False)
        return result.returncode == 0

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth, no password)."""
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    def psql(self, sql: str, *, database: str = "postgres", timeout: float = 30.0) -> str:
        """Run SQL through ``psql`` (unaligned, tuples only) and return its stdout."""
        command = [
            str(self.bin_dir / "psql"),
            f"--host={LOOPBACK}",
            f"--port={self.port}",
            "--username=postgres",
            f"--dbname={database}",
            "--no-psqlrc",
            "--no-align",
            "--tuples-only",
            "--set=ON_ERROR_STOP=1",
            f"--command={sql}",
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(
                f"psql failed with code {result.returncode} for {sql!r}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode()


# --------------------------------------------------------------------------- Docker Engine


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, *, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def is_static_elf(path: str) -> bool:
    """Whether ``path`` is a 64-bit ELF executable without a program interpreter, i.e.
    one that runs alone in an empty root filesystem (Debian's busybox-static, not the
    dynamically linked ``busybox`` package, which installs the same path)."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if len(header) < 64 or header[:5] != b"\x7fELF\x02" or header[5] != 1:
                return False
            phoff, phentsize, phnum = (
                struct.unpack_from("<Q", header, 32)[0],
                *struct.unpack_from("<HH", header, 54),
            )
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


class DockerEngine(_Server):
    """Debian's ``dockerd`` (package docker.io) as root, everything of it in its own
    temporary directory: ``--data-root``, ``--exec-root``, ``--pidfile``, an empty
    ``--config-file`` (the host's /etc/docker/daemon.json is never read) and the API on
    ``docker.sock`` there. No network of its own: ``--bridge=none``, no iptables, no IP
    forwarding or masquerading, no userland proxy; containers run with ``--network
    none``. dockerd 20.10 starts and supervises its own containerd, whose socket and state
    are under the exec root too.

    What stays outside the directory, because dockerd 20.10 and containerd 1.6 hard-code
    it: ``/etc/docker/key.json`` (the engine's identity key, created once if absent and
    otherwise only read), the empty ``/var/run/docker/plugins`` discovery directory, and
    the shims' sockets under ``/run/containerd/s/`` (each removed when its container
    stops; their names hash our containerd's address, so they never meet a system
    engine's).

    Images come from no registry: :meth:`import_busybox` turns Debian's busybox-static
    into a root filesystem and ``docker import``s it. :meth:`stop` removes every container
    first, then stops dockerd by its PID (SIGTERM, then SIGKILL), and its containerd by
    the PID containerd wrote, should dockerd have died without stopping it.

    The helpers speak the Engine API directly (unversioned paths: the engine's own
    version), so no ``docker`` CLI is needed and none of another version is used.
    """

    name = "dockerd"
    APPLETS = ("sh", "sleep", "touch", "rm", "cat", "echo", "true", "false")

    def __init__(
        self,
        *,
        binary: str = DOCKERD_BIN,
        busybox: str = BUSYBOX_BIN,
        start_timeout: float = 30.0,
        stop_timeout: float = 20.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.binary = binary
        self.busybox = busybox

    @classmethod
    def unavailable(cls, *, binary: str = DOCKERD_BIN, busybox: str = BUSYBOX_BIN) -> str | None:
        """Why a Docker engine cannot be started here, or None if it can be tried."""
        if os.geteuid() != 0:
            return "dockerd must run as root and these tests do not"
        if not os.access(binary, os.X_OK):
            return f"no dockerd at {binary}: apt-get install docker.io (make test does, as root)"
        if not is_static_elf(busybox):
            return (
                f"{busybox} is not a static busybox: apt-get install busybox-static "
                "(make test does, as root)"
            )
        return None

    @property
    def socket_path(self) -> Path:
        return self.directory / "docker.sock"

    def _prepare(self) -> None:
        (self.directory / "daemon.json").write_text("{}\n")

    def _command(self) -> list[str]:
        d = self.directory
        return [
            self.binary,
            "--config-file", str(d / "daemon.json"),
            "--data-root", str(d / "data"),
            "--exec-root", str(d / "exec"),
            "--pidfile", str(d / "docker.pid"),
            "--host", f"unix://{self.socket_path}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--userland-proxy=false",
            "--log-level=warn",
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            return self.api("GET", "/_ping", timeout=1.0) == "OK"
        except (OSError, ServerError, http.client.HTTPException):
            return False

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        data: bytes | None = None,
        content_type: str = "application/json",
        expect: Iterable[int] = (200, 201, 204),
        timeout: float = 30.0,
        status_only: bool = False,
    ) -> Any:
        """One Engine API call; the decoded JSON answer (a list for a JSON-lines stream),
        or the text, or with ``status_only`` the status. Raises :class:`ServerError` on a
        status not in ``expect``."""
        if body is not None:
            data = json.dumps(body).encode()
        url = path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        conn = _UnixHTTPConnection(str(self.socket_path), timeout=timeout)
        try:
            headers = {"Content-Type": content_type} if data is not None else {}
            conn.request(method, url, body=data, headers=headers)
            response = conn.getresponse()
            status, raw = response.status, response.read()
        finally:
            conn.close()
        if status not in tuple(expect):
            raise ServerError(f"{method} {url}: HTTP {status}: {raw[:1000]!r}")
        if status_only:
            return status
        text = raw.decode(errors="replace")
        if not text.strip():
            return None
        with contextlib.suppress(ValueError):
            return json.loads(text)
        with contextlib.suppress(ValueError):  # a stream: one JSON document per line
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return text

    def import_busybox(self, reference: str, *, changes: Sequence[str] = ()) -> None:
        """``docker import`` of a root filesystem holding only busybox, its applets
        :attr:`APPLETS` as symlinks, and empty /tmp, /proc, /sys, /dev, /etc;
        ``changes`` are Dockerfile lines (``HEALTHCHECK …``, ``CMD …``)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for directory in ("bin", "tmp", "proc", "sys", "dev", "etc"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
                tar.addfile(info)
            tar.add(self.busybox, arcname="bin/busybox")
            for applet in self.APPLETS:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        repo, _, tag = reference.partition(":")
        query = [("fromSrc", "-"), ("repo", repo), ("tag", tag or "latest")]
        query += [("changes", c) for c in changes]
        answer = self.api(
            "POST",
            f"/images/create?{urllib.parse.urlencode(query)}",
            data=buffer.getvalue(),
            content_type="application/x-tar",
        )
        for line in answer if isinstance(answer, list) else [answer]:
            if isinstance(line, dict) and "error" in line:
                raise ServerError(f"docker import {reference}: {line['error']}")

    def create(
        self,
        name: str,
        image: str,
        command: Sequence[str],
        *,
        labels: Mapping[str, str] | None = None,
        healthcheck: Mapping[str, Any] | None = None,
        env: Sequence[str] = (),
    ) -> str:
        """``docker create --network none``; returns the container's full id."""
        body: dict[str, Any] = {
            "Image": image,
            "Cmd": list(command),
            "Labels": dict(labels or {}),
            "Env": list(env),
            "HostConfig": {"NetworkMode": "none"},
        }
        if healthcheck is not None:
            body["Healthcheck"] = dict(healthcheck)
        answer = self.api("POST", "/containers/create", body, query={"name": name})
        return str(answer["Id"])

    def start_container(self, ref: str) -> None:
        self.api("POST", f"/containers/{urllib.parse.quote(ref)}/start")

    def stop_container(self, ref: str, *, timeout: int = 0) -> None:
        self.api("POST", f"/containers/{urllib.parse.quote(ref)}/stop", query={"t": str(timeout)})

    def wait_container(self, ref: str, *, timeout: float = 30.0) -> int:
        """``docker wait``: block until the container exits; its exit code."""
        answer = self.api("POST", f"/containers/{urllib.parse.quote(ref)}/wait", timeout=timeout)
        return int(answer["StatusCode"])

    def path_exists(self, ref: str, path: str) -> bool:
        """Whether ``path`` exists in the container's filesystem (``HEAD …/archive``)."""
        status = self.api(
            "HEAD",
            f"/containers/{urllib.parse.quote(ref)}/archive",
            query={"path": path},
            expect=(200, 404),
            status_only=True,
        )
        return bool(status == 200)

    def inspect(self, ref: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.api("GET", f"/containers/{urllib.parse.quote(ref)}/json")
        return answer

    def events(self, container: str, *, since: float, until: float) -> list[dict[str, Any]]:
        """The engine's events for one container between two Unix times (seconds)."""
        answer = self.api(
            "GET",
            "/events",
            query={
                "since": f"{since:.9f}",
                "until": f"{until:.9f}",
                "filters": json.dumps({"container": [container]}),
            },
        )
        if answer is None:
            return []
        return answer if isinstance(answer, list) else [answer]

    def remove_all(self) -> None:
        """Force-remove every container of this engine (and its anonymous volumes)."""
        for c in self.api("GET", "/containers/json", query={"all": "1"}) or []:
            self.api(
                "DELETE",
                f"/containers/{c['Id']}",
                query={"force": "1", "v": "1"},
                expect=(204, 404),
            )

    def stop(self) -> int | None:
        containerd = self._containerd_pid()
        if self.running:
            with contextlib.suppress(OSError, ServerError, http.client.HTTPException):
                self.remove_all()
        code = self._terminate()
        if code == -signal.SIGKILL and containerd is not None:
            # dockerd was killed before it could stop the containerd it started: stop that
            # one, by the PID it wrote, after checking it is still ours.
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{containerd}/cmdline").read_bytes()
                if str(self.directory).encode() in cmdline:
                    os.kill(containerd, signal.SIGKILL)
        self._cleanup()
        return code

    def _containerd_pid(self) -> int | None:
        if self._directory is None:
            return None
        try:
            return int((self.directory / "exec" / "containerd" / "containerd.pid").read_text())
        except (OSError, ValueError):
            return None


# --------------------------------------------------------------------------- webhook receiver


@dataclass(frozen=True)
class ReceivedRequest:
    """One request a :class:`WebhookReceiver` got."""

    method: str
    path: str
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An aiohttp server on a free loopback port that records every request.

    Answers ``status`` to everything (after ``fail_first`` requests answered 503). Use
    ``async with WebhookReceiver() as receiver:`` and point the sender at
    ``receiver.url + "/any/path"``.
    """

    status: int = 200
    fail_first: int = 0
    """Answer this many requests (recorded all the same) with 503, as a receiver that is
    down for a while does, before ``status``."""
    requests: list[ReceivedRequest] = field(default_factory=list, init=False)
    port: int = field(default=0, init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        received = ReceivedRequest(
            method=request.method,
            path=request.path_qs,
            headers=CIMultiDict(request.headers),
            body=await request.read(),
        )
        async with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()
        if len(self.requests) <= self.fail_first:
            return web.Response(status=503, text="upstream connect error")
        return web.Response(status=self.status)

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # Port 0 in the bind itself: no window in which another process can take it.
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(
        self, predicate: Callable[[ReceivedRequest], bool], *, timeout: float = 10.0
    ) -> ReceivedRequest:
        """The first request (already received or arriving) that matches ``predicate``."""

        async def first_match() -> ReceivedRequest:
            async with self._arrived:
                seen = 0
                while True:
                    for request in self.requests[seen:]:
                        if predicate(request):
                            return request
                    seen = len(self.requests)
                    await self._arrived.wait()

        try:
            async with asyncio.timeout(timeout):
                return await first_match()
        except TimeoutError:
            raise ServerError(
                f"no matching request at {self.url} within {timeout:g}s; "
                f"got {len(self.requests)}: {[r.body[:300] for r in self.requests]}"
            ) from None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
