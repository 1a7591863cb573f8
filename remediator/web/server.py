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
import contextlib
import errno
import ipaddress
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from aiohttp import web

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
    """`http.max_connections`, lowered to what the file-descriptor limit leaves."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(MIN_CONNECTIONS, min(configured, soft - FD_RESERVE))


def client_of(transport: asyncio.BaseTransport | None) -> str:
    """The TCP peer's address (never a forwarded header); "" when unknown."""
    if transport is None:
        return ""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return ""


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


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
        if self.per_client.get(client, 0) >= self.settings.max_connections_per_client:
            return "max_connections_per_client"
        self.open += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
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

    @contextlib.contextmanager
    def request(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """Around one request in the app: its headers are in, so no header timeout runs
        until it is answered."""
        guard = self.guards.get(transport) if transport is not None else None
        if guard is None:  # a connection this module did not open (tests' TestServer)
            yield
            return
        guard.busy += 1
        guard.stop_timer()
        try:
            yield
        finally:
            guard.busy -= 1


class Guard(asyncio.Protocol):
    """One connection: admission and the header timeout, in front of aiohttp's protocol."""

    def __init__(self, inner: asyncio.Protocol, limits: Limits) -> None:
        self._inner = inner
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
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
        self._limits.guards[transport] = self
        self._inner.connection_made(transport)
        self._start_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.stop_timer()
        if self._transport is not None:
            self._limits.guards.pop(self._transport, None)
        self._limits.release(self._client)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        self._inner.data_received(data)
        if not self.busy and self._timer is None and self._admitted:
            self._start_timer()  # the first bytes of a next request on a kept-alive connection

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _start_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.settings.header_timeout, self._timed_out)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.busy or self._transport is None or self._transport.is_closing():
            return
        self._limits.metrics.http_connections_closed.labels(reason="header_timeout").inc()
        self._transport.write(TIMED_OUT)
        self._transport.close()


class Site(web.BaseSite):
    """aiohttp's TCPSite, with every connection behind a `Guard`."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, *, limits: Limits, backlog: int = 1024
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port (the requested one until started; useful with port 0)."""
        sockets = getattr(self._server, "sockets", None)  # an asyncio.Server once started
        if sockets:
            return int(sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # set by runner.setup(), checked by BaseSite
        limits = self._limits

        def factory() -> Guard:
            return Guard(server(), limits)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def handler_args(settings: Http) -> dict[str, Any]:
    """What aiohttp's own protocol enforces, from the `http:` section."""
    return {
        "keepalive_timeout": settings.keepalive_timeout,
        # After answering a request whose body was not read, aiohttp reads and drops the
        # rest for this long before closing: a bounded courtesy, not an hour.
        "lingering_time": min(2.0, settings.body_timeout),
        # Bodies are decoded by the handlers (web/common.py), bounded by
        # intake.max_body_bytes once decoded, and a bad encoding is a counted 4xx.
        "auto_decompress": False,
    }


def on_loop_exception(
    metrics: Metrics,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler: running out of file descriptors is logged once per
    FD_LOG_INTERVAL with the count since the last line; anything else as asyncio would."""
    last = 0.0
    suppressed = 0

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last, suppressed
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_FDS:
            metrics.fd_exhausted.inc()
            now = time.monotonic()
            if now - last < FD_LOG_INTERVAL:
                suppressed += 1
                return
            last = now
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error(
                "out_of_file_descriptors", error=str(exc), where=context.get("message", ""),
                fd_limit=soft, suppressed=suppressed,
                hint="raise the process's open-files limit (ulimit -n / LimitNOFILE) "
                "or lower http.max_connections",
            )  # fmt: skip
            suppressed = 0
            return
        loop.default_exception_handler(context)

    return handle
