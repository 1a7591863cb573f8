"""The HTTP server under the app: the connection limits aiohttp leaves open.

aiohttp bounds header sizes and closes idle keep-alive connections, but a client that
opens connections and sends nothing, sends its headers a byte at a time, or never
finishes its body holds a socket (a file descriptor) for as long as it likes. This
module closes those gaps, in front of aiohttp's own protocol:

- `Guard` wraps each connection's aiohttp protocol: admission against `http.max_connections`
  (never more than the fd limit allows) and `http.max_connections_per_client` (503 and
  close), and the header timeout (408 and close) — from the connection's start, or the
  first byte of its next request, until the app sees the request.
- `Site` listens like aiohttp's TCPSite, with guarded connections.
- `on_loop_exception` logs running out of file descriptors once per interval (with a
  count), not once per failed accept().

The body timeout is the webhook handlers' (web/common.py `read_body`); idle keep-alive
is aiohttp's `keepalive_timeout`.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import ipaddress
import logging as log_module
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from remediator.metrics import Metrics
from remediator.settings import Http

log = structlog.get_logger("remediator.web.server")

FD_RESERVE = 64
"""File descriptors kept out of `http.max_connections` for the database, the outgoing
clients (Kubernetes, AWS, PostgreSQL, Alertmanager) and the listening socket itself."""
MIN_CONNECTIONS = 8
FD_LOG_INTERVAL = 10.0
"""Seconds between two `out_of_file_descriptors` log lines (the rest are counted)."""
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})


def _response(status: str, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


REFUSED = _response("503 Service Unavailable", "too many connections; retry later")
TIMED_OUT = _response("408 Request Timeout", "request headers too slow (http.header_timeout)")


def connection_cap(configured: int) -> int:
    """`http.max_connections`, lowered to what the file-descriptor limit leaves (but
    never below MIN_CONNECTIONS for that: a tiny limit still serves a few)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return min(configured, max(MIN_CONNECTIONS, soft - FD_RESERVE))


def client_of(transport: asyncio.BaseTransport | None) -> str:
    """The TCP peer's address (never a forwarded header); "" when unknown."""
    if transport is None:
        return ""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return ""


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def trusted(address: str, proxies: Networks) -> bool:
    """Whether `address` is in one of the trusted proxy networks."""
    if not proxies:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def forwarded_client(peer: str, forwarded_for: str | None, proxies: Networks) -> str:
    """The client a request counts against: the TCP peer, or when that is a trusted
    proxy, the rightmost `X-Forwarded-For` address that is not one (each proxy appends
    the address it saw; what the client wrote itself is left of that). A header that
    cannot be read counts against the proxy itself."""
    if not forwarded_for or not trusted(peer, proxies):
        return peer
    for part in reversed(forwarded_for.split(",")[-32:]):
        hop = part.strip()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not trusted(hop, proxies):
            return hop
    return peer


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


ROUTED: web.RequestKey[bool] = web.RequestKey("routed", bool)
"""Set on every request the app's middleware saw: the others are aiohttp's own refusals."""


class ClientRates:
    """A token bucket per client address: `rate` requests per second, `burst` at once.

    Pure (the caller passes the time); bounded to `max_clients` addresses, the least
    recently seen forgotten first (a forgotten client starts again with a full bucket).
    """

    def __init__(self, *, rate: float, burst: int, max_clients: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, client: str, *, now: float) -> bool:
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed


class Limits:
    """Connections open now (total and per client), shared by every guarded connection."""

    def __init__(self, settings: Http, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cap = connection_cap(settings.max_connections)
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.guards: dict[asyncio.BaseTransport, Guard] = {}

    def admit(self, client: str) -> str:
        """ "" when a new connection from `client` may open, else why not."""
        if self.open >= self.cap:
            return "max_connections"
        per_client = self.per_client.get(client, 0)
        if per_client >= self.settings.max_connections_per_client and not trusted(
            client, self.settings.trusted_proxies
        ):
            return "max_connections_per_client"
        self.open += 1
        self.per_client[client] = per_client + 1
        self.metrics.http_connections.set(self.open)
        return ""

    def release(self, client: str) -> None:
        self.open -= 1
        left = self.per_client.get(client, 1) - 1
        if left > 0:
            self.per_client[client] = left
        else:
            self.per_client.pop(client, None)
        self.metrics.http_connections.set(self.open)

    def request(self, transport: asyncio.BaseTransport | None) -> Guard | None:
        """A request in the app: its headers are in, so no header timeout runs until it
        is answered and its caller calls `Guard.answered` (no generator-based context
        manager: this runs for every request). None for a connection this module did not
        open (tests' TestServer)."""
        guard = self.guards.get(transport) if transport is not None else None
        if guard is not None:
            guard.busy += 1
            guard.stop_timer()
        return guard


class Guard(asyncio.Protocol):
    """One connection: admission and the header timeout, in front of aiohttp's protocol."""

    def __init__(self, inner: asyncio.Protocol, limits: Limits) -> None:
        self._inner = inner
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._admitted = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        """When the headers waited for must be in; None when none are waited for. The
        timer is not cancelled and armed again per request (a heap entry each): when it
        fires before a moved deadline, it is armed again for that deadline."""
        self.busy = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP server hands out streams
        self._transport = transport
        self._client = client_of(transport)
        refusal = self._limits.admit(self._client)
        if refusal:
            self._limits.metrics.http_connections_closed.labels(reason=refusal).inc()
            transport.write(REFUSED)
            transport.close()
            return
        self._admitted = True
        self._loop = asyncio.get_running_loop()
        self._limits.guards[transport] = self
        self._inner.connection_made(transport)
        self._start_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.stop_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._limits.guards.pop(self._transport, None)
        self._limits.release(self._client)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        self._inner.data_received(data)
        if not self.busy and self._deadline is None and self._admitted:
            self._start_timer()  # the first bytes of a next request on a kept-alive connection

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def answered(self) -> None:
        """The request `Limits.request` saw is answered (or given up)."""
        self.busy -= 1

    def _start_timer(self) -> None:
        loop = self._loop
        assert loop is not None  # set when the connection was admitted
        self._deadline = loop.time() + self._limits.settings.header_timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._timed_out)

    def stop_timer(self) -> None:
        self._deadline = None

    def _timed_out(self) -> None:
        self._timer = None
        deadline, loop = self._deadline, self._loop
        if deadline is None or loop is None:
            return  # nothing waited for now; the next request's bytes arm it again
        if loop.time() < deadline:  # a later request's deadline: wait for that one
            self._timer = loop.call_at(deadline, self._timed_out)
            return
        self._deadline = None
        if self.busy or self._transport is None or self._transport.is_closing():
            return
        self._limits.metrics.http_connections_closed.labels(reason="header_timeout").inc()
        self._transport.write(TIMED_OUT)
        self._transport.close()


class FdAlarm:
    """Running out of file descriptors, reported once per FD_LOG_INTERVAL (with how many
    times it happened since the last line) and counted every time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._last = -FD_LOG_INTERVAL
        self._suppressed = 0

    def report(self, exc: OSError, where: str) -> None:
        self._metrics.fd_exhausted.inc()
        now = time.monotonic()
        if now - self._last < FD_LOG_INTERVAL:
            self._suppressed += 1
            return
        self._last = now
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.error(
            "out_of_file_descriptors", error=str(exc), where=where, fd_limit=soft,
            suppressed=self._suppressed,
            hint="raise the open-files limit (ulimit -n, systemd LimitNOFILE) "
            "or lower http.max_connections",
        )  # fmt: skip
        self._suppressed = 0


ACCEPTS_PER_EVENT = 128
"""Connections accepted per readiness event of the listening socket, before other work."""
ACCEPT_RETRY = 0.1
"""Seconds before accepting again once accept() ran out of file descriptors."""
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Listener:
    """A listening socket whose connections we accept ourselves.

    asyncio's own accept loop (CPython 3.11) answers a failed accept() by scheduling a
    retry and then trying again, up to its backlog times per event: out of file
    descriptors, that is a thousand retries and tracebacks per event, each scheduling
    more. Here it is one log line (FdAlarm), one pause of ACCEPT_RETRY, one retry.
    Connections are handed to the loop with `connect_accepted_socket`, as asyncio does.
    """

    def __init__(
        self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], alarm: FdAlarm
    ) -> None:
        self.sock = sock
        self._factory = factory
        self._alarm = alarm
        self._loop = asyncio.get_running_loop()
        self._retry: asyncio.TimerHandle | None = None
        self._handing: set[asyncio.Task[Any]] = set()
        self._open = False

    def start(self) -> None:
        self._open = True
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def _resume(self) -> None:
        self._retry = None
        if self._open:
            self._loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._alarm.report(exc, "accept")
                else:
                    log.error("accept_failed", error=str(exc))
                self._loop.remove_reader(self.sock.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY, self._resume)
                return
            conn.setblocking(False)
            task = self._loop.create_task(
                self._loop.connect_accepted_socket(self._factory, conn), name="http-accept"
            )
            self._handing.add(task)
            task.add_done_callback(functools.partial(self._handed, conn))

    def _handed(self, conn: socket.socket, task: asyncio.Task[Any]) -> None:
        self._handing.discard(task)
        if task.cancelled() or task.exception() is not None:
            conn.close()

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def listen(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address `host` resolves to."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


class Site(web.BaseSite):
    """aiohttp's TCPSite, with our accept loop and every connection behind a `Guard`."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        limits: Limits,
        alarm: FdAlarm,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits
        self._alarm = alarm
        self._listeners: list[Listener] = []

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the requested one until started; useful with port 0)."""
        if self._listeners:
            return int(self._listeners[0].sock.getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # set by runner.setup(), checked by BaseSite
        limits = self._limits

        def factory() -> Guard:
            return Guard(server(), limits)

        for sock in listen(self._host, self._port, backlog=self._backlog):
            listener = Listener(sock, factory, self._alarm)
            listener.start()
            self._listeners.append(listener)

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        await super().stop()


def handler_args(settings: Http, metrics: Metrics) -> dict[str, Any]:
    """What aiohttp's own protocol enforces, from the `http:` section, and the counting
    of the requests it refuses before the app sees them."""
    return {
        "access_log_class": _refusal_counter(metrics),
        "access_log": log_module.getLogger("remediator.web.access"),
        "keepalive_timeout": settings.keepalive_timeout,
        # After answering a request whose body was not read, aiohttp reads and drops the
        # rest for this long before closing: a bounded courtesy, not an hour.
        "lingering_time": min(2.0, settings.body_timeout),
        # Bodies are decoded by the handlers (web/common.py), bounded by
        # intake.max_body_bytes once decoded, and a bad encoding is a counted 4xx.
        "auto_decompress": False,
    }


def _refusal_counter(metrics: Metrics) -> type[AbstractAccessLogger]:
    """aiohttp answers a request it cannot parse (a NUL or a bare CR in a header, a bad
    request line, a header over its size bounds) with a 400 of its own, before any
    middleware runs: its "access log" is where those answers can be counted, as
    `remediator_rejected_inputs_total{source="http", kind="bad_request"}`."""
    counter = metrics.bad_input.labels(source="http", kind="bad_request")

    class RefusalCounter(AbstractAccessLogger):
        def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
            if response.status >= 400 and ROUTED not in request:
                counter.inc()  # web/middleware.py marks every request the app handled

    return RefusalCounter


def on_loop_exception(
    alarm: FdAlarm,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler: running out of file descriptors anywhere (an outgoing
    connection, a thread) goes to `alarm`; anything else is logged as asyncio would."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_FDS:
            alarm.report(exc, str(context.get("message", "")))
            return
        loop.default_exception_handler(context)

    return handle
