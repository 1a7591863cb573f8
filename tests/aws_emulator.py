"""AWS for tests: moto's server on loopback, and a small proxy in front of it.

:class:`MotoServer` runs moto's ThreadedMotoServer on ``127.0.0.1`` with a port the
kernel picks (bound at once: no race), in a thread of the test process; it serves
every AWS API over real HTTP, and :meth:`MotoServer.reset` empties it between tests.

:class:`AwsProxy` is an aiohttp reverse proxy the daemon under test talks to instead of
moto directly. It does three things moto cannot:

- **SQS message move tasks.** moto 5 implements neither ``StartMessageMoveTask`` nor
  ``ListMessageMoveTasks``. The proxy answers both itself, checking the request shape
  the real API expects, and performs the move through moto's own SQS API (receive from
  the DLQ, send to the destination, delete), so a test reads the moved messages back
  from moto. A move completes before the answer; :meth:`AwsProxy.hold_running` adds a
  task that stays RUNNING, as one started from the console would. The real API moves
  asynchronously at ``MaxNumberOfMessagesPerSecond``; here the rate is only recorded.
- **Fault injection.** :meth:`AwsProxy.fail` answers the next N matching requests with a
  throttling error or a 5xx, in the service's own error format, before forwarding again
  — or, with ``after=True``, after serving them (the change is applied, the answer lost).
- **A record of every call** (service, operation), so a test can assert that nothing
  reached AWS (a refusal before any request) and that only declared calls were made.

Everything else is forwarded to moto unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, Self

import aiohttp
from aiohttp import web
from moto.server import ThreadedMotoServer

LOOPBACK = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SCOPE = re.compile(r"Credential=[^/]+/[0-9]{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_SQS_ARN = re.compile(r"arn:aws:sqs:([a-z0-9-]+):([0-9]{12}):([A-Za-z0-9_.-]{1,80})")
_LAMBDA_OPS = (
    ("GET", re.compile(r"/2019-09-30/functions/[^/]+/concurrency"), "GetFunctionConcurrency"),
    ("PUT", re.compile(r"/2017-10-31/functions/[^/]+/concurrency"), "PutFunctionConcurrency"),
    ("DELETE", re.compile(r"/2017-10-31/functions/[^/]+/concurrency"), "DeleteFunctionConcurrency"),
)
_HOP_BY_HOP = {
    "connection",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "keep-alive",
    "host",
}


class MotoServer:
    """moto's threaded server on a kernel-picked loopback port; stopped by :meth:`stop`."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self.url = ""

    def start(self) -> Self:
        # moto logs every request through werkzeug; the test output does not need them.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def reset(self) -> None:
        """Forget every resource (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with _OPENER.open(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        self._server.stop()


@dataclasses.dataclass
class _Fault:
    times: int
    status: int
    code: str
    service: str | None
    operation: str | None
    after: bool = False
    """Serve the request first, then answer the error: applied, answer lost."""


@dataclasses.dataclass
class _MoveTask:
    handle: str
    source_arn: str
    destination_arn: str | None
    rate: int | None
    status: str
    moved: int = 0
    to_move: int = 0
    started: int = dataclasses.field(default_factory=lambda: int(time.time() * 1000))

    def listed(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "TaskHandle": self.handle,
            "Status": self.status,
            "SourceArn": self.source_arn,
            "ApproximateNumberOfMessagesMoved": self.moved,
            "ApproximateNumberOfMessagesToMove": self.to_move,
            "StartedTimestamp": self.started,
        }
        if self.destination_arn:
            out["DestinationArn"] = self.destination_arn
        if self.rate is not None:
            out["MaxNumberOfMessagesPerSecond"] = self.rate
        return out


class _Refused(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class AwsProxy:
    """A loopback reverse proxy to moto that adds move tasks, faults and a call record."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[tuple[str, str]] = []
        """(service, operation) of every request received, in order."""
        self.tasks: list[_MoveTask] = []
        self._faults: list[_Fault] = []
        self._handles = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), trust_env=False
        )
        app = web.Application(client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.url = f"http://{LOOPBACK}:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- what tests use

    def fail(
        self,
        times: int,
        *,
        kind: str = "throttle",
        service: str | None = None,
        operation: str | None = None,
        after: bool = False,
    ) -> None:
        """Answer the next `times` matching requests with an error (-1: every one).

        `kind` is ``throttle`` (HTTP 400 ThrottlingException; Lambda: 429
        TooManyRequestsException), ``unavailable`` (HTTP 503 ServiceUnavailable) or
        ``denied`` (HTTP 400 AccessDeniedException). `after`: the request is served
        first (it takes effect) and only its answer is the error, as when AWS applied a
        change and the answer was lost on the way back.
        """
        if kind == "throttle":
            status, code = (
                (429, "TooManyRequestsException")
                if service == "lambda"
                else (
                    400,
                    "ThrottlingException",
                )
            )
        elif kind == "unavailable":
            status, code = 503, "ServiceUnavailable"
        elif kind == "denied":
            status, code = 400, "AccessDeniedException"
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        self._faults.append(_Fault(times, status, code, service, operation, after))

    def hold_running(self, source_arn: str, *, to_move: int = 100) -> str:
        """Record a move task from `source_arn` that stays RUNNING; returns its handle."""
        task = _MoveTask(
            self._new_handle(source_arn), source_arn, None, None, "RUNNING", 0, to_move
        )
        self.tasks.append(task)
        return task.handle

    def count(self, service: str, operation: str | None = None) -> int:
        return sum(
            1 for s, o in self.calls if s == service and (operation is None or o == operation)
        )

    # -- serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        region, service = _scope(request.headers.get("Authorization", ""))
        operation = _operation(service, request)
        self.calls.append((service, operation))
        fault = self._fault(service, operation)
        if fault is not None and not fault.after:
            return _error(service, fault.status, fault.code, "injected by the test proxy")
        answer = await self._serve(request, body, region, service, operation)
        if fault is not None:  # served; the answer is lost
            return _error(service, fault.status, fault.code, "injected by the test proxy")
        return answer

    async def _serve(
        self, request: web.Request, body: bytes, region: str, service: str, operation: str
    ) -> web.Response:
        if service == "sqs" and operation in ("StartMessageMoveTask", "ListMessageMoveTasks"):
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise _Refused("InvalidParameterValue", "the request body is not an object")
                if operation == "StartMessageMoveTask":
                    answer = await self._start_move(region, payload)
                else:
                    answer = self._list_moves(payload)
            except _Refused as exc:
                return _error("sqs", exc.status, exc.code, exc.message)
            return web.json_response(answer, content_type="application/x-amz-json-1.0")
        return await self._forward(request, body)

    def _fault(self, service: str, operation: str) -> _Fault | None:
        for fault in self._faults:
            if fault.times == 0:
                continue
            if fault.service not in (None, service) or fault.operation not in (None, operation):
                continue
            if fault.times > 0:
                fault.times -= 1
            return fault
        return None

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        # moto builds queue URLs from the Host header: keep the proxy's, so clients come back here.
        headers["Host"] = request.headers.get("Host", "")
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, body=data, headers=out)

    # -- SQS message move tasks (not in moto)

    def _new_handle(self, source_arn: str) -> str:
        # Real handles are opaque base64 text; a readable one helps test failures.
        return f"task-{next(self._handles)}-{source_arn.rpartition(':')[2]}"

    async def _start_move(self, region: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(payload) - {"SourceArn", "DestinationArn", "MaxNumberOfMessagesPerSecond"}
        if unknown:
            raise _Refused("InvalidParameterValue", f"unknown parameters {sorted(unknown)}")
        source = payload.get("SourceArn")
        if not isinstance(source, str) or not _SQS_ARN.fullmatch(source):
            raise _Refused("InvalidParameterValue", f"SourceArn is not a queue ARN: {source!r}")
        dest = payload.get("DestinationArn")
        if dest is not None and (not isinstance(dest, str) or not _SQS_ARN.fullmatch(dest)):
            raise _Refused("InvalidParameterValue", f"DestinationArn is not a queue ARN: {dest!r}")
        rate = payload.get("MaxNumberOfMessagesPerSecond")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= 500
        ):
            raise _Refused("InvalidParameterValue", "MaxNumberOfMessagesPerSecond is not 1..500")
        if any(t.source_arn == source and t.status == "RUNNING" for t in self.tasks):
            raise _Refused(
                "UnsupportedOperation",
                "There is already a task running. Only one active task is allowed for each "
                "source queue arn at a given time.",
            )
        source_url = await self._queue_url(region, source)
        targets = [dest] if dest else await self._sources_of(region, source)
        if len(targets) != 1:
            raise _Refused(
                "InvalidParameterValue",
                f"Source queue must be configured as a Dead Letter Queue (sources: {targets})",
            )
        dest_url = await self._queue_url(region, targets[0])
        task = _MoveTask(self._new_handle(source), source, dest, rate, "RUNNING")
        self.tasks.append(task)
        while True:
            got = await self._sqs(
                region,
                "ReceiveMessage",
                {
                    "QueueUrl": source_url,
                    "MaxNumberOfMessages": 10,
                    "VisibilityTimeout": 60,
                    "MessageAttributeNames": ["All"],
                },
            )
            messages = got.get("Messages") or []
            if not messages:
                break
            for m in messages:
                send: dict[str, Any] = {"QueueUrl": dest_url, "MessageBody": m["Body"]}
                if m.get("MessageAttributes"):
                    send["MessageAttributes"] = m["MessageAttributes"]
                await self._sqs(region, "SendMessage", send)
                await self._sqs(
                    region,
                    "DeleteMessage",
                    {"QueueUrl": source_url, "ReceiptHandle": m["ReceiptHandle"]},
                )
                task.moved += 1
        task.to_move = task.moved
        task.status = "COMPLETED"
        return {"TaskHandle": task.handle}

    def _list_moves(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        source = payload.get("SourceArn")
        if not isinstance(source, str) or not _SQS_ARN.fullmatch(source):
            raise _Refused("InvalidParameterValue", f"SourceArn is not a queue ARN: {source!r}")
        limit = payload.get("MaxResults", 1)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10:
            raise _Refused("InvalidParameterValue", "MaxResults is not 1..10")
        mine = [t.listed() for t in reversed(self.tasks) if t.source_arn == source]
        return {"Results": mine[:limit]}

    async def _queue_url(self, region: str, arn: str) -> str:
        m = _SQS_ARN.fullmatch(arn)
        assert m is not None
        try:
            got = await self._sqs(region, "GetQueueUrl", {"QueueName": m.group(3)})
        except _Refused as exc:
            raise _Refused("QueueDoesNotExist", f"no queue {arn}") from exc
        return str(got["QueueUrl"])

    async def _sources_of(self, region: str, dlq_arn: str) -> list[str]:
        """Queues whose redrive policy sends failures to `dlq_arn` (the original sources)."""
        urls = (await self._sqs(region, "ListQueues", {})).get("QueueUrls") or []
        found = []
        for url in urls:
            attrs = (
                await self._sqs(
                    region,
                    "GetQueueAttributes",
                    {"QueueUrl": url, "AttributeNames": ["QueueArn", "RedrivePolicy"]},
                )
            ).get("Attributes") or {}
            policy = json.loads(attrs.get("RedrivePolicy") or "{}")
            if policy.get("deadLetterTargetArn") == dlq_arn:
                found.append(attrs["QueueArn"])
        return found

    async def _sqs(self, region: str, operation: str, payload: Mapping[str, Any]) -> Any:
        """One SQS JSON-protocol call to moto, signed well enough for moto to route it."""
        assert self._session is not None
        headers = {
            "X-Amz-Target": f"AmazonSQS.{operation}",
            "Content-Type": "application/x-amz-json-1.0",
            "Authorization": "AWS4-HMAC-SHA256 "
            f"Credential=testing/20270101/{region}/sqs/aws4_request, "
            "SignedHeaders=host, Signature=0",
        }
        async with self._session.post(
            self.upstream + "/", data=json.dumps(payload), headers=headers
        ) as response:
            answer = json.loads(await response.read() or b"{}")
            if response.status != 200:
                raise _Refused(str(answer.get("__type", "Error")), str(answer), response.status)
            return answer


def _scope(authorization: str) -> tuple[str, str]:
    """(region, service) from a SigV4 Authorization header's credential scope."""
    m = _SCOPE.search(authorization)
    return (m.group(1), m.group(2)) if m else ("", "")


def _operation(service: str, request: web.Request) -> str:
    target = request.headers.get("X-Amz-Target", "")
    if target:  # JSON protocols (ECS, SQS): "AmazonSQS.ListQueues"
        return target.rpartition(".")[2]
    if service == "lambda":  # REST: the method and path name the operation
        for method, path, name in _LAMBDA_OPS:
            if request.method == method and path.fullmatch(request.path):
                return name
    return f"{request.method} {request.path}"


def _error(service: str, status: int, code: str, message: str) -> web.Response:
    """An AWS error in the service's wire format (JSON `__type`, or REST's header)."""
    body = {"__type": code, "message": message, "Message": message}
    headers = {"x-amzn-ErrorType": code, "x-amzn-RequestId": "injected"}
    if service == "sqs":  # SQS's JSON protocol keeps the query protocol's codes here
        headers["x-amzn-query-error"] = f"{code};Sender"
    content_type = "application/json" if service == "lambda" else "application/x-amz-json-1.1"
    return web.Response(
        status=status, text=json.dumps(body), headers=headers, content_type=content_type
    )
