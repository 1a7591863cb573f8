"""AWS APIs through aioboto3: one session per process, clients reused, errors mapped.

The session uses botocore's default credential chain (environment, shared config and
profile, web identity / IRSA, container and instance roles); remediator never holds a
key itself. Each service client is created on first use and kept until shutdown.
Retries are botocore's `standard` mode with a bounded attempt count (`aws.max_attempts`)
and split timeouts (`aws.connect_timeout`, `aws.read_timeout`) per attempt; the engine's
`limits.action_timeout` bounds the whole action around them.

Calls whose repeat is not harmless (`once`: UpdateService with forceNewDeployment, which
would force a second deployment; StartMessageMoveTask) go through a second client per
service whose config allows a single attempt: botocore's standard mode would otherwise
send them again after a 5xx or a lost answer, when the first may well have been applied.
Reads and writes of an absolute value (desiredCount, PutFunctionConcurrency) keep the
retries: sending the same value twice is harmless.

Every failure becomes one of errors.py's types, with a message naming the call, the
resource and what to fix:

    throttled (Throttling*, TooManyRequests, 429)   → TemporaryError (after the retries)
    HTTP 5xx, InternalFailure, ServiceUnavailable   → TemporaryError (after the retries)
    cannot connect, read timeout, closed connection → TemporaryError
    AccessDenied and other credential refusals      → PermanentError (grant the IAM action)
    not found (cluster, service, function, queue)   → AwsError (a PermanentError with `code`)
    no credentials / no region                      → PermanentError (fix the environment)
    any other AWS error (validation, limits)        → AwsError (a PermanentError with `code`)
    a `once` call: 5xx, read timeout, lost answer   → ActionError "outcome unknown" + what
                                                      to check (never sent again)

A throttled request was refused before it did anything. A 5xx or a lost answer to a
call that changes something leaves the outcome unknown: the message says so, and only
actions that look before they act (and so are safe to run again) let the engine retry.
For a `once` call it is a plain ActionError ("outcome unknown", and what to check):
neither botocore nor the engine sends it again, a human (or the next alert) looks first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

# aioboto3/aiobotocore/botocore ship no type information (no py.typed).
import aioboto3
from aiobotocore.config import AioConfig
from botocore import exceptions as botoerrors

from remediator import errors

_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
    }
)
_UNAVAILABLE = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ServerException",
        "ServiceException",
    }
)
_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "AuthFailure",
        "KMSAccessDeniedException",
    }
)
_NOT_FOUND = frozenset(
    {
        "ClusterNotFoundException",
        "ServiceNotFoundException",
        "ServiceNotActiveException",
        "ResourceNotFoundException",
        "QueueDoesNotExist",
        "AWS.SimpleQueueService.NonExistentQueue",
        "NoSuchDistribution",
        "NoSuchInvalidation",
        "DBClusterNotFoundFault",
        "DeploymentDoesNotExistException",
        "DeploymentGroupDoesNotExistException",
        "ApplicationDoesNotExistException",
    }
)
_MESSAGE_MAX = 300
STREAM_MAX = 4 << 20
"""Largest streamed answer read (an AppConfig hosted configuration is at most 2 MB)."""


class AwsError(errors.PermanentError):
    """AWS refused the request; `code` is its error code, for actions that handle one
    (a failed precondition, a deployment already finished)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    """Where and how to reach AWS; the `aws:` config section holds it."""

    region: str
    endpoint_url: str | None = None
    profile: str | None = None
    max_attempts: int = 3
    connect_timeout: float = 5.0
    read_timeout: float = 10.0


class AwsClient:
    """One aioboto3 session and its service clients, opened lazily and closed together."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session = aioboto3.Session(
            region_name=connection.region, profile_name=connection.profile
        )
        self._configs = {
            # once → the config of that kind of client; True: a single attempt, no retry.
            once: AioConfig(
                connect_timeout=connection.connect_timeout,
                read_timeout=connection.read_timeout,
                retries={
                    "mode": "standard",
                    "total_max_attempts": 1 if once else connection.max_attempts,
                },
            )
            for once in (False, True)
        }
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[tuple[str, bool], Any] = {}
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        self._clients.clear()
        await self._stack.aclose()

    async def _client(self, service: str, *, once: bool) -> Any:
        key = (service, once)
        found = self._clients.get(key)
        if found is not None:
            return found
        async with self._lock:
            found = self._clients.get(key)
            if found is None:
                # botocore reads its JSON models synchronously when it makes a client
                # (0.1-0.6 s each): read them in a thread first, so that the event loop
                # only finds them cached.
                await asyncio.to_thread(self._warm, service)
                try:
                    found = await self._stack.enter_async_context(
                        self._session.client(
                            service,
                            endpoint_url=self.connection.endpoint_url,
                            config=self._configs[once],
                        )
                    )
                except botoerrors.BotoCoreError as exc:
                    raise errors.PermanentError(
                        f"cannot create the AWS {service} client: {exc} "
                        "(check aws.region, aws.profile and aws.endpoint_url)"
                    ) from exc
                self._clients[key] = found
        return found

    def _warm(self, service: str) -> None:
        loader = self._session._session.get_component("data_loader")
        try:
            loader.load_service_model(service, "service-2")
            loader.load_service_model(service, "endpoint-rule-set-1")
            for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
                loader.load_data(name)
        except botoerrors.BotoCoreError:
            return  # making the client says what is wrong, with the config key to fix

    async def call(
        self,
        service: str,
        operation: str,
        params: Mapping[str, Any],
        *,
        what: str,
        changes: bool,
        permission: str,
        once: str | None = None,
    ) -> dict[str, Any]:
        """Call `operation` (botocore's snake_case name) of `service` with `params`.

        `what` names the call and resource in errors ("ecs UpdateService prod/api");
        `changes` says whether the call changes something (an unknown outcome is then
        said so); `permission` is the IAM action to grant when AWS refuses it. `once`,
        for a call whose repeat is not harmless, sends it a single time (no botocore
        retry) and is what to check when its outcome is unknown.
        """
        client = await self._client(service, once=once is not None)
        try:
            return await self._send(
                client, operation, params, what=what, changes=changes, permission=permission,
                once=once,
            )  # fmt: skip
        except errors.TemporaryError as exc:
            if once is None or not _maybe_applied(exc):
                raise
            # It may have been applied: sending it again (botocore, or the engine running
            # an idempotent action again) could apply it twice. Say so, and stop.
            raise errors.ActionError(
                f"{exc}; sent once, not retried (a repeat is not harmless); outcome unknown: {once}"
            ) from exc

    async def _send(
        self,
        client: Any,
        operation: str,
        params: Mapping[str, Any],
        *,
        what: str,
        changes: bool,
        permission: str,
        once: str | None,
    ) -> dict[str, Any]:
        tries = "1 attempt" if once is not None else f"{self.connection.max_attempts} attempts"
        try:
            answer = await getattr(client, operation)(**params)
        except botoerrors.ClientError as exc:
            raise _client_error(
                exc, what=what, changes=changes, permission=permission, once=once is not None
            ) from exc
        except (botoerrors.NoCredentialsError, botoerrors.PartialCredentialsError) as exc:
            raise errors.PermanentError(
                f"{what}: no AWS credentials found by the default chain (environment, "
                "aws.profile, web identity / IRSA, instance or task role): give the "
                "daemon one of them"
            ) from exc
        except botoerrors.CredentialRetrievalError as exc:
            raise errors.TemporaryError(
                f"{what}: could not fetch AWS credentials: {_cut(str(exc))}"
            ) from exc
        except botoerrors.NoRegionError as exc:
            raise errors.PermanentError(f"{what}: no AWS region: set aws.region") from exc
        except (botoerrors.ConnectTimeoutError, botoerrors.EndpointConnectionError) as exc:
            # Nothing reached AWS: safe to try again, whatever the call does.
            raise errors.TemporaryError(
                f"{what}: cannot reach the AWS endpoint after {tries} "
                f"({type(exc).__name__}); check the network or aws.endpoint_url"
            ) from exc
        except (botoerrors.ReadTimeoutError, botoerrors.ConnectionClosedError) as exc:
            raise _Lost(
                f"{what}: no answer from AWS within aws.read_timeout="
                f"{self.connection.read_timeout:g}s after {tries}"
                f"{_unknown(changes and once is None)}"
            ) from exc
        except botoerrors.ParamValidationError as exc:
            raise errors.PermanentError(f"{what}: invalid request: {_cut(str(exc))}") from exc
        except botoerrors.BotoCoreError as exc:
            if once is not None:
                raise _Lost(f"{what}: {type(exc).__name__}: {_cut(str(exc))}") from exc
            raise errors.PermanentError(
                f"{what}: {type(exc).__name__}: {_cut(str(exc))}{_unknown(changes)}"
            ) from exc
        except OSError as exc:  # a socket error botocore did not wrap
            raise _Lost(
                f"{what}: {type(exc).__name__}: {_cut(str(exc))}"
                f"{_unknown(changes and once is None)}"
            ) from exc
        out = dict(answer)
        for key, value in out.items():
            if hasattr(value, "read"):  # a streamed payload: read now, bounded
                data = await value.read(STREAM_MAX + 1)
                if len(data) > STREAM_MAX:
                    raise errors.PermanentError(f"{what}: answer larger than {STREAM_MAX} bytes")
                out[key] = data
        return out


class _Lost(errors.TemporaryError):
    """The request may have reached AWS and its answer was lost."""


class _ServerError(errors.TemporaryError):
    """AWS answered 5xx: the request reached it and may have been applied."""


def _maybe_applied(exc: errors.TemporaryError) -> bool:
    return isinstance(exc, _Lost | _ServerError)


async def open_client(connection: Connection) -> AwsClient:
    """The process's AWS client (for `Clients.get`)."""
    return AwsClient(connection)


async def close_client(client: AwsClient) -> None:
    await client.close()


def _client_error(
    exc: Any, *, what: str, changes: bool, permission: str, once: bool = False
) -> errors.ActionError:
    response = exc.response if isinstance(getattr(exc, "response", None), dict) else {}
    err = response.get("Error") or {}
    code = str(err.get("Code") or "")
    # SQS's JSON protocol names errors with a namespace ("com.amazonaws.sqs#QueueDoesNotExist").
    code = code.rpartition("#")[2]
    message = _cut(str(err.get("Message") or ""))
    meta = response.get("ResponseMetadata") or {}
    status = int(meta.get("HTTPStatusCode") or 0)
    attempts = int(meta.get("RetryAttempts") or 0) + 1
    gave_up = "" if once else f"; gave up after {attempts} attempts (aws.max_attempts)"
    said = f"{code or 'error'} (HTTP {status}){': ' + message if message else ''}"
    if code in _THROTTLED or status == 429:
        return errors.TemporaryError(
            f"{what}: AWS {'throttled' if once else 'kept throttling'} the call: {said}"
            f"{gave_up}; nothing was changed",
            delay=2.0,
        )
    if code in _UNAVAILABLE or status >= 500:
        # With `once`, AwsClient.call says the outcome is unknown and what to check.
        return _ServerError(
            f"{what}: AWS answered with a server error: {said}{gave_up}"
            f"{_unknown(changes and not once)}",
            delay=2.0,
        )
    if code in _DENIED or status == 403:
        return errors.PermanentError(
            f"{what}: AWS refused the credentials or the permission: {said}; grant "
            f"{permission} on this resource to the daemon's role (deploy/aws/iam-policy.json)"
        )
    if code in _NOT_FOUND or status == 404:
        return AwsError(f"{what}: not found: {said}", code=code)
    return AwsError(f"{what}: {said}", code=code)


def _unknown(changes: bool) -> str:
    return "; the change may or may not have been applied: check it" if changes else ""


def _cut(text: str) -> str:
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."
