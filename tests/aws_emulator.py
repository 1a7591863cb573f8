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
  Operations are named from botocore's own service models (JSON target, query Action,
  or the REST method and URI template).

Emulated, because moto 5 lacks them (each checks the request shape the real API expects
and answers in its documented response shape; see the AWS API references):

- **CloudFront CreateInvalidation's CallerReference.** moto creates a new invalidation
  for every request. The real API returns the invalidation already created for a
  CallerReference when the paths are the same, and `InvalidationBatchAlreadyExists`
  (400) when they differ; the proxy does that, and forwards only first requests.
- **CodeDeploy StopDeployment**, and deployment states: moto's deployments stay
  `Created`. :meth:`AwsProxy.deployment_status` sets a deployment's status (e.g.
  `InProgress`); the proxy shows it in GetDeployment/BatchGetDeployments, filters
  ListDeployments' `includeOnlyStatuses` by it, and answers StopDeployment itself
  (`{"status": "Pending", "statusMessage": ...}`; `DeploymentAlreadyCompletedException`
  for a finished one), recording `autoRollbackEnabled` in :attr:`AwsProxy.stopped`.
- **AppConfig environments and deployments** (GetEnvironment, ListDeployments,
  StartDeployment, GetDeployment): moto has applications, profiles and hosted versions
  only. :meth:`AwsProxy.appconfig_environment` creates an environment and
  :meth:`AwsProxy.appconfig_deployment` records one (what is live); StartDeployment
  checks that the version exists in moto and answers 409 `ConflictException` while
  another deployment of the environment is not finished, as AppConfig does.
- **Lambda UpdateAlias's RevisionId**: moto ignores it and never changes an alias's
  RevisionId. The proxy issues a new RevisionId on every update, shows it in
  GetAlias/UpdateAlias answers, and refuses an UpdateAlias whose RevisionId is not the
  current one with 412 `PreconditionFailedException`.

Everything else is forwarded to moto unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import re
import time
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any, Self

import aiohttp
import botocore.session
from aiohttp import web
from moto.server import ThreadedMotoServer

LOOPBACK = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SCOPE = re.compile(r"Credential=[^/]+/[0-9]{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_SQS_ARN = re.compile(r"arn:aws:sqs:([a-z0-9-]+):([0-9]{12}):([A-Za-z0-9_.-]{1,80})")
_BOTOCORE = botocore.session.get_session()
_REST_OPS: dict[str, list[tuple[str, re.Pattern[str], int, str]]] = {}
_APPCONFIG_ENV = re.compile(r"/applications/([a-z0-9]{4,7})/environments/([a-z0-9]{4,7})")
_DONE = {"COMPLETE", "ROLLED_BACK", "REVERTED"}
_CODEDEPLOY_DONE = {"Succeeded", "Failed", "Stopped"}
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
        self.requests: list[tuple[str, str, bytes]] = []
        """(service, operation, body) of every request received, in order."""
        self.tasks: list[_MoveTask] = []
        self.invalidations: dict[tuple[str, str], tuple[list[str], int, bytes, dict[str, str]]] = {}
        """(distribution, CallerReference) → paths and the answer first given."""
        self.codedeploy_status: dict[str, str] = {}
        self.stopped: list[tuple[str, bool]] = []
        """(deploymentId, autoRollbackEnabled) of every StopDeployment answered."""
        self.appconfig_envs: dict[tuple[str, str], dict[str, Any]] = {}
        self.appconfig_deployments: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.alias_revisions: dict[str, str] = {}
        """Alias path (/2015-03-31/functions/F/aliases/A) → its current RevisionId."""
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

    def deployment_status(self, deployment_id: str, status: str) -> None:
        """Give a CodeDeploy deployment (created in moto) a status moto never reaches."""
        self.codedeploy_status[deployment_id] = status

    def appconfig_environment(self, application_id: str, name: str) -> str:
        """Create an AppConfig environment of an application (moto has none); its ID."""
        env_id = uuid.uuid4().hex[:7]
        self.appconfig_envs[(application_id, env_id)] = {
            "ApplicationId": application_id,
            "Id": env_id,
            "Name": name,
            "State": "ReadyForDeployment",
            "Monitors": [],
        }
        self.appconfig_deployments[(application_id, env_id)] = []
        return env_id

    def appconfig_deployment(
        self,
        application_id: str,
        environment_id: str,
        *,
        profile_id: str,
        profile_name: str,
        version: str,
        state: str = "COMPLETE",
        strategy: str = "AppConfig.AllAtOnce",
    ) -> dict[str, Any]:
        """Record a deployment of a hosted version (what runs in that environment)."""
        deployments = self.appconfig_deployments[(application_id, environment_id)]
        deployment = {
            "ApplicationId": application_id,
            "EnvironmentId": environment_id,
            "DeploymentStrategyId": strategy,
            "ConfigurationProfileId": profile_id,
            "DeploymentNumber": len(deployments) + 1,
            "ConfigurationName": profile_name,
            "ConfigurationLocationUri": "hosted",
            "ConfigurationVersion": version,
            "Description": "",
            "DeploymentDurationInMinutes": 0,
            "GrowthType": "LINEAR",
            "GrowthFactor": 100.0,
            "FinalBakeTimeInMinutes": 0,
            "State": state,
            "EventLog": [],
            "PercentageComplete": 100.0 if state in _DONE else 0.0,
            "StartedAt": time.time(),
        }
        deployments.append(deployment)
        return deployment

    def count(self, service: str, operation: str | None = None) -> int:
        return sum(
            1 for s, o in self.calls if s == service and (operation is None or o == operation)
        )

    # -- serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        region, service = _scope(request.headers.get("Authorization", ""))
        operation = _operation(service, request, body)
        self.calls.append((service, operation))
        self.requests.append((service, operation, body))
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
        try:
            if service == "cloudfront" and operation == "CreateInvalidation":
                return await self._create_invalidation(request, body)
            if service == "codedeploy" and operation in (
                "StopDeployment", "GetDeployment", "BatchGetDeployments", "ListDeployments"
            ):  # fmt: skip
                return await self._codedeploy(request, body, operation)
            if service == "appconfig" and _APPCONFIG_ENV.match(request.path):
                return await self._appconfig(request, body, operation)
            if service == "lambda" and operation in ("GetAlias", "UpdateAlias"):
                return await self._alias(request, body, operation)
        except _Refused as exc:
            return _error(service, exc.status, exc.code, exc.message)
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

    # -- CloudFront invalidations: CallerReference (moto ignores it)

    async def _create_invalidation(self, request: web.Request, body: bytes) -> web.Response:
        dist = request.path.split("/")[3]
        root = ET.fromstring(body)
        ns = {"cf": root.tag.partition("}")[0].lstrip("{")} if root.tag.startswith("{") else {}
        pre = "cf:" if ns else ""
        ref = root.findtext(f"{pre}CallerReference", namespaces=ns) or ""
        paths = [p.text or "" for p in root.iterfind(f"{pre}Paths/{pre}Items/{pre}Path", ns)]
        quantity = root.findtext(f"{pre}Paths/{pre}Quantity", namespaces=ns)
        if not ref or quantity is None or int(quantity) != len(paths) or not paths:
            raise _Refused(
                "InvalidArgument", "CallerReference and Paths (Quantity = Items) are required"
            )
        known = self.invalidations.get((dist, ref))
        if known is not None:
            if sorted(known[0]) != sorted(paths):
                raise _Refused(
                    "InvalidationBatchAlreadyExists",
                    "The CallerReference you are using to create an invalidation batch is "
                    "already in use with a different invalidation batch.",
                )
            return web.Response(status=known[1], body=known[2], headers=known[3])
        answer = await self._forward(request, body)
        if answer.status < 300:
            headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            self.invalidations[(dist, ref)] = (
                paths,
                answer.status,
                _body(answer),
                headers,
            )
        return answer

    # -- CodeDeploy: StopDeployment and deployment states (moto's stay Created)

    async def _codedeploy(self, request: web.Request, body: bytes, operation: str) -> web.Response:
        payload = json.loads(body or b"{}")
        if operation == "StopDeployment":
            deployment_id = payload.get("deploymentId")
            if not isinstance(deployment_id, str):
                raise _Refused("DeploymentIdRequiredException", "deploymentId is required")
            info = await self._moto_json(
                "codedeploy", "CodeDeploy_20141006.GetDeployment", {"deploymentId": deployment_id}
            )
            status = self.codedeploy_status.get(deployment_id, info["deploymentInfo"]["status"])
            if status in _CODEDEPLOY_DONE:
                raise _Refused(
                    "DeploymentAlreadyCompletedException",
                    f"Deployment {deployment_id} has already completed.",
                )
            rollback = payload.get("autoRollbackEnabled")
            if rollback is not None and not isinstance(rollback, bool):
                raise _Refused("InvalidInput", "autoRollbackEnabled must be a boolean")
            self.codedeploy_status[deployment_id] = "Stopped"
            self.stopped.append((deployment_id, bool(rollback)))
            return web.json_response(
                {"status": "Pending", "statusMessage": "Stopping deployment"},
                content_type="application/x-amz-json-1.1",
            )
        wanted = None
        if operation == "ListDeployments" and payload.get("includeOnlyStatuses"):
            wanted = set(payload.pop("includeOnlyStatuses"))
            body = json.dumps(payload).encode()
        answer = await self._forward(request, body)
        if answer.status != 200:
            return answer
        data = json.loads(_body(answer))
        if operation == "GetDeployment":
            self._overlay(data.get("deploymentInfo") or {})
        elif operation == "BatchGetDeployments":
            for info in data.get("deploymentsInfo") or []:
                self._overlay(info)
        elif wanted is not None:
            kept = []
            for deployment_id in data.get("deployments") or []:
                info = await self._moto_json(
                    "codedeploy",
                    "CodeDeploy_20141006.GetDeployment",
                    {"deploymentId": deployment_id},
                )
                if (
                    self.codedeploy_status.get(deployment_id, info["deploymentInfo"]["status"])
                    in wanted
                ):
                    kept.append(deployment_id)
            data["deployments"] = kept
        return web.json_response(data, content_type="application/x-amz-json-1.1")

    def _overlay(self, info: dict[str, Any]) -> None:
        status = self.codedeploy_status.get(str(info.get("deploymentId")))
        if status is not None:
            info["status"] = status

    # -- AppConfig environments and deployments (moto has neither)

    async def _appconfig(self, request: web.Request, body: bytes, operation: str) -> web.Response:
        m = _APPCONFIG_ENV.match(request.path)
        assert m is not None
        key = (m.group(1), m.group(2))
        env = self.appconfig_envs.get(key)
        if env is None:
            raise _Refused("ResourceNotFoundException", f"Environment {key[1]} not found", 404)
        deployments = self.appconfig_deployments[key]
        if operation == "GetEnvironment":
            return web.json_response(env)
        if operation == "ListDeployments":
            fields = (
                "DeploymentNumber", "ConfigurationName", "ConfigurationVersion",
                "DeploymentDurationInMinutes", "GrowthType", "GrowthFactor",
                "FinalBakeTimeInMinutes", "State", "PercentageComplete", "StartedAt",
            )  # fmt: skip
            items = [{k: d[k] for k in fields} for d in reversed(deployments)]
            limit = int(request.query.get("max_results", "50"))
            return web.json_response({"Items": items[:limit]})
        if operation == "GetDeployment":
            number = int(request.path.rpartition("/")[2])
            if not 1 <= number <= len(deployments):
                raise _Refused("ResourceNotFoundException", f"Deployment {number} not found", 404)
            return web.json_response(deployments[number - 1])
        if operation != "StartDeployment":
            raise _Refused("BadRequestException", f"{operation} is not emulated")
        payload = json.loads(body or b"{}")
        for field in ("ConfigurationProfileId", "ConfigurationVersion", "DeploymentStrategyId"):
            if not isinstance(payload.get(field), str) or not payload[field]:
                raise _Refused("BadRequestException", f"{field} is required")
        if not re.fullmatch(
            r"[a-z0-9]{4,7}|AppConfig\.[A-Za-z0-9]{9,40}", payload["DeploymentStrategyId"]
        ):
            raise _Refused("BadRequestException", "DeploymentStrategyId is not a strategy ID")
        busy = [d for d in deployments if d["State"] not in _DONE]
        if busy:
            raise _Refused(
                "ConflictException",
                f"Deployment {busy[0]['DeploymentNumber']} is in progress for environment {key[1]}",
                409,
            )
        profile = await self._moto_rest(
            "GET",
            f"/applications/{key[0]}/configurationprofiles/{payload['ConfigurationProfileId']}",
        )
        await self._moto_rest(
            "GET",
            f"/applications/{key[0]}/configurationprofiles/{payload['ConfigurationProfileId']}"
            f"/hostedconfigurationversions/{payload['ConfigurationVersion']}",
        )
        deployment = self.appconfig_deployment(
            key[0], key[1], profile_id=payload["ConfigurationProfileId"],
            profile_name=json.loads(profile)["Name"], version=payload["ConfigurationVersion"],
            state="DEPLOYING", strategy=payload["DeploymentStrategyId"],
        )  # fmt: skip
        deployment["Description"] = str(payload.get("Description", ""))
        return web.json_response(deployment, status=201)

    # -- Lambda alias RevisionId (moto never changes it, nor checks it)

    async def _alias(self, request: web.Request, body: bytes, operation: str) -> web.Response:
        path = urllib.parse.unquote(request.path)
        if operation == "UpdateAlias":
            payload = json.loads(body or b"{}")
            current = self.alias_revisions.get(path)
            if current is None:
                got = await self._moto_rest("GET", request.path, service="lambda")
                current = json.loads(got)["RevisionId"]
            given = payload.get("RevisionId")
            if given is not None and given != current:
                raise _Refused(
                    "PreconditionFailedException",
                    "The Revision Id provided does not match the latest Revision Id. Call the "
                    "GetAlias API to retrieve the latest Revision Id",
                    412,
                )
        answer = await self._forward(request, body)
        if answer.status != 200:
            return answer
        data = json.loads(_body(answer))
        if operation == "UpdateAlias":
            self.alias_revisions[path] = str(uuid.uuid4())
        data["RevisionId"] = self.alias_revisions.setdefault(path, str(data.get("RevisionId")))
        return web.json_response(data)

    async def _moto_json(self, service: str, target: str, payload: Mapping[str, Any]) -> Any:
        """One JSON-protocol call to moto, signed well enough for moto to route it."""
        assert self._session is not None
        headers = {
            "X-Amz-Target": target,
            "Content-Type": "application/x-amz-json-1.1",
            "Authorization": "AWS4-HMAC-SHA256 "
            f"Credential=testing/20270101/eu-west-1/{service}/aws4_request, "
            "SignedHeaders=host, Signature=0",
        }
        async with self._session.post(
            self.upstream + "/", data=json.dumps(payload), headers=headers
        ) as r:
            answer = json.loads(await r.read() or b"{}")
            if r.status != 200:
                code = str(answer.get("__type", "Error")).rpartition("#")[2]
                raise _Refused(code, str(answer.get("message", answer)), r.status)
            return answer

    async def _moto_rest(self, method: str, path: str, *, service: str = "appconfig") -> bytes:
        assert self._session is not None
        headers = {
            "Authorization": "AWS4-HMAC-SHA256 "
            f"Credential=testing/20270101/eu-west-1/{service}/aws4_request, "
            "SignedHeaders=host, Signature=0",
        }
        async with self._session.request(method, self.upstream + path, headers=headers) as r:
            data = await r.read()
            if r.status >= 300:
                raise _Refused(
                    r.headers.get("x-amzn-ErrorType", "ResourceNotFoundException").partition(":")[
                        0
                    ],
                    data.decode(errors="replace")[:200],
                    r.status,
                )
            return data

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


def _body(response: web.Response) -> bytes:
    body = response.body
    return body if isinstance(body, bytes) else b"{}"


def _scope(authorization: str) -> tuple[str, str]:
    """(region, service) from a SigV4 Authorization header's credential scope."""
    m = _SCOPE.search(authorization)
    return (m.group(1), m.group(2)) if m else ("", "")


def _operation(service: str, request: web.Request, body: bytes) -> str:
    target = request.headers.get("X-Amz-Target", "")
    if target:  # JSON protocols (ECS, SQS, CodeDeploy, EventBridge): "AmazonSQS.ListQueues"
        return target.rpartition(".")[2]
    if request.method == "POST" and body.startswith(b"Action="):  # query protocol (RDS)
        return urllib.parse.parse_qs(body.decode()).get("Action", [""])[0]
    path = urllib.parse.unquote(request.path)
    found = [
        (literal, name)
        for method, pattern, literal, name in _rest_operations(service)
        if method == request.method and pattern.fullmatch(path)
    ]
    if found:  # REST protocols: the most specific URI template that matches
        return max(found)[1]
    return f"{request.method} {request.path}"


def _rest_operations(service: str) -> list[tuple[str, re.Pattern[str], int, str]]:
    """(method, path pattern, literal characters, operation) from botocore's model."""
    if service not in _REST_OPS:
        ops = []
        try:
            model = _BOTOCORE.get_service_model(service)
        except Exception:  # noqa: BLE001 - an unknown service names its calls by path
            model = None
        for name in model.operation_names if model is not None else []:
            http = model.operation_model(name).http
            uri = http["requestUri"].partition("?")[0]
            parts = re.split(r"(\{[^}]+\})", uri)
            regex = "".join(
                (".+" if p.endswith("+}") else "[^/]+") if p.startswith("{") else re.escape(p)
                for p in parts
            )
            literal = sum(len(p) for p in parts if not p.startswith("{"))
            ops.append((http["method"], re.compile(regex.rstrip("/") or "/"), literal, name))
        _REST_OPS[service] = ops
    return _REST_OPS[service]


def _error(service: str, status: int, code: str, message: str) -> web.Response:
    """An AWS error in the service's wire format (XML for CloudFront and RDS; JSON with
    `__type` or REST's header for the others)."""
    if service in ("cloudfront", "rds"):
        root = "ErrorResponse"
        xml = (
            f'<?xml version="1.0"?><{root}><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>injected</RequestId></{root}>"
        )
        return web.Response(status=status, text=xml, content_type="text/xml")
    body = {"__type": code, "message": message, "Message": message}
    headers = {"x-amzn-ErrorType": code, "x-amzn-RequestId": "injected"}
    if service == "sqs":  # SQS's JSON protocol keeps the query protocol's codes here
        headers["x-amzn-query-error"] = f"{code};Sender"
    rest = service in ("lambda", "appconfig")
    content_type = "application/json" if rest else "application/x-amz-json-1.1"
    return web.Response(
        status=status, text=json.dumps(body), headers=headers, content_type=content_type
    )
