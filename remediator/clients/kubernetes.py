"""The Kubernetes API through kubernetes_asyncio: one ApiClient per process, errors mapped.

Objects come back as plain dicts in the API's own JSON shape (camelCase keys), so the
actions read them the way `kubectl get -o json` shows them.

Every request has a timeout (`kubernetes.request_timeout`, never past the action's
deadline). 429, 5xx and connection failures are retried here with bounded backoff until
the deadline: every request this module sends is safe to repeat (the same patch body, a
PUT carrying the resourceVersion it read, a DELETE with a UID precondition). A 409 is
raised as `Conflict` for the action to re-read and decide again; 404 as `NotFound`; 403
and other 4xx as PermanentError naming the verb and the resource.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from remediator import errors

WORKLOADS = {
    "deployment": "deployments",
    "statefulset": "statefulsets",
    "daemonset": "daemonsets",
    "replicaset": "replicasets",
}
"""Workload kinds (lower case, as in rule params) → their resource in API group `apps`."""
_METHOD = {
    "deployment": "deployment",
    "statefulset": "stateful_set",
    "daemonset": "daemon_set",
    "replicaset": "replica_set",
}
"""Kind → how kubernetes_asyncio's AppsV1Api spells it (read_namespaced_stateful_set)."""
PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}
"""Patch kinds → media type: strategic merge (kubectl's default), merge (RFC 7386), JSON
patch (RFC 6902, a list of operations: what `kubectl rollout undo` sends a Deployment)."""

PERMISSIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        # kubernetes.rollout_restart: read (protection, rollout state), then patch.
        ("apps", "deployments", "get"),
        ("apps", "statefulsets", "get"),
        ("apps", "daemonsets", "get"),
        ("apps", "deployments", "patch"),
        ("apps", "statefulsets", "patch"),
        ("apps", "daemonsets", "patch"),
        # kubernetes.scale: the scale subresource, and the HPAs that may own it.
        ("apps", "deployments/scale", "get"),
        ("apps", "statefulsets/scale", "get"),
        ("apps", "deployments/scale", "update"),
        ("apps", "statefulsets/scale", "update"),
        ("autoscaling", "horizontalpodautoscalers", "list"),
        # kubernetes.delete_pod: the pods, and their owners (ReplicaSet → Deployment).
        ("", "pods", "list"),
        ("", "pods", "delete"),
        ("apps", "replicasets", "get"),
        # kubernetes.rollout_undo: the revision history (ReplicaSets of a Deployment,
        # ControllerRevisions of a StatefulSet or DaemonSet); the patch is above.
        ("apps", "replicasets", "list"),
        ("apps", "controllerrevisions", "list"),
        # kubernetes.scale_hpa: read and patch the HPA's minReplicas/maxReplicas.
        ("autoscaling", "horizontalpodautoscalers", "get"),
        ("autoscaling", "horizontalpodautoscalers", "patch"),
        # evidence: recent events and the previous container's last log lines.
        ("", "events", "list"),
        ("", "pods/log", "get"),
    }
)
"""Every (API group, resource, verb) this module can request: deploy/kubernetes/base/rbac.yaml
grants exactly these, and a test holds the two (and what the code sends) equal."""

log = structlog.get_logger(__name__)

BACKOFF_FIRST = 0.2
"""Seconds before the first retry of a 429/5xx; doubles each time."""
BACKOFF_MAX = 5.0
"""Longest wait between retries (a Retry-After above it is cut to it)."""


class NotFound(errors.PermanentError):
    """HTTP 404: the object (or its namespace) does not exist."""


class Conflict(errors.PermanentError):
    """HTTP 409: the object changed since it was read (or a precondition failed)."""


async def open_client(
    *, in_cluster: bool, kubeconfig: str, context: str, request_timeout: float
) -> KubeClient:
    """Load the connection (service account or kubeconfig + context) and open the client."""
    cfg = client.Configuration()
    where = "the in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig!r}"
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]  # unannotated upstream
        else:
            async with asyncio.timeout(request_timeout):  # exec credential plugins may hang
                await config.load_kube_config(
                    config_file=kubeconfig or None,
                    context=context or None,
                    client_configuration=cfg,
                    persist_config=False,
                )
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        raise errors.PermanentError(
            f"kubernetes: cannot load {where}: {exc}; fix the `kubernetes:` config section"
        ) from exc
    except TimeoutError as exc:
        raise errors.TemporaryError(
            f"kubernetes: loading {where} took longer than {request_timeout:.0f}s"
        ) from exc
    # The API server is the authority on what a valid object is: a field the client's
    # models require but an answer lacks must not make a read fail. Models are built
    # with the library's default Configuration, so that is where validation is off.
    client.Configuration.get_default().client_side_validation = False
    cfg.client_side_validation = False
    return KubeClient(client.ApiClient(configuration=cfg), request_timeout=request_timeout)


async def close_client(kube: KubeClient) -> None:
    await kube.close()


class KubeClient:
    """Typed calls in, dicts out; see the module docstring for timeouts and errors."""

    def __init__(self, api: client.ApiClient, *, request_timeout: float) -> None:
        self._api = api
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._autoscaling = client.AutoscalingV2Api(api)
        self.request_timeout = request_timeout

    async def close(self) -> None:
        await self._api.close()

    # -- workloads (apps/v1) --------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str, *, deadline: float) -> dict[str, Any]:
        fn = getattr(self._apps, f"read_namespaced_{_METHOD[kind]}")
        return await self._call(
            verb="get",
            group="apps",
            resource=WORKLOADS[kind],
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: fn(name, namespace, _request_timeout=t),
        )

    async def patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        body: dict[str, Any] | list[dict[str, Any]],
        *,
        dry_run: bool,
        deadline: float,
        patch_type: str = "strategic",
    ) -> dict[str, Any]:
        """A patch of a workload: strategic merge by default (what `kubectl patch` and
        `rollout restart` send); `json` for a list of RFC 6902 operations. A
        `metadata.resourceVersion` in the patch is a precondition (409 if it changed)."""
        fn = getattr(self._apps, f"patch_namespaced_{_METHOD[kind]}")
        content_type = PATCH_TYPES[patch_type]
        return await self._call(
            verb="patch",
            group="apps",
            resource=WORKLOADS[kind],
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: fn(
                name,
                namespace,
                body,
                _request_timeout=t,
                _content_type=content_type,
                **_dry(dry_run),
            ),
        )

    async def list_history(
        self, kind: str, namespace: str, selector: str, *, deadline: float
    ) -> list[dict[str, Any]]:
        """The revision history of a workload, unfiltered by owner: ReplicaSets for a
        Deployment, ControllerRevisions for a StatefulSet or DaemonSet (`selector` is the
        workload's own label selector, as kubectl lists them)."""
        resource = "replicasets" if kind == "deployment" else "controllerrevisions"
        method = "replica_set" if kind == "deployment" else "controller_revision"
        fn = getattr(self._apps, f"list_namespaced_{method}")
        out = await self._call(
            verb="list",
            group="apps",
            resource=resource,
            namespace=namespace,
            name="",
            deadline=deadline,
            send=lambda t: fn(namespace, label_selector=selector, _request_timeout=t),
        )
        return list(out.get("items") or [])

    async def get_scale(
        self, kind: str, namespace: str, name: str, *, deadline: float
    ) -> dict[str, Any]:
        fn = getattr(self._apps, f"read_namespaced_{_METHOD[kind]}_scale")
        return await self._call(
            verb="get",
            group="apps",
            resource=f"{WORKLOADS[kind]}/scale",
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: fn(name, namespace, _request_timeout=t),
        )

    async def replace_scale(
        self,
        kind: str,
        namespace: str,
        name: str,
        replicas: int,
        *,
        resource_version: str,
        dry_run: bool,
        deadline: float,
    ) -> dict[str, Any]:
        """PUT an autoscaling/v1 Scale carrying the resourceVersion read: a 409 if the
        replicas changed meanwhile, so a step is never applied on top of another change."""
        body = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": resource_version,
            },
            "spec": {"replicas": replicas},
        }
        fn = getattr(self._apps, f"replace_namespaced_{_METHOD[kind]}_scale")
        return await self._call(
            verb="update",
            group="apps",
            resource=f"{WORKLOADS[kind]}/scale",
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: fn(name, namespace, body, _request_timeout=t, **_dry(dry_run)),
        )

    # -- autoscalers, pods ------------------------------------------------------------

    async def list_hpas(self, namespace: str, *, deadline: float) -> list[dict[str, Any]]:
        out = await self._call(
            verb="list",
            group="autoscaling",
            resource="horizontalpodautoscalers",
            namespace=namespace,
            name="",
            deadline=deadline,
            send=lambda t: self._autoscaling.list_namespaced_horizontal_pod_autoscaler(
                namespace, _request_timeout=t
            ),
        )
        return list(out.get("items") or [])

    async def get_hpa(self, namespace: str, name: str, *, deadline: float) -> dict[str, Any]:
        return await self._call(
            verb="get",
            group="autoscaling",
            resource="horizontalpodautoscalers",
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: self._autoscaling.read_namespaced_horizontal_pod_autoscaler(
                name, namespace, _request_timeout=t
            ),
        )

    async def patch_hpa(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        *,
        resource_version: str,
        dry_run: bool,
        deadline: float,
    ) -> dict[str, Any]:
        """A merge patch of the HPA's spec carrying the resourceVersion read: a 409 if it
        changed meanwhile, so a step is never applied on top of another change."""
        body = {"metadata": {"resourceVersion": resource_version}, "spec": spec}
        # The stubs omit `_content_type`, which the generated method accepts (and needs:
        # its default would be a JSON patch).
        fn = getattr(self._autoscaling, "patch_namespaced_horizontal_pod_autoscaler")  # noqa: B009
        return await self._call(
            verb="patch",
            group="autoscaling",
            resource="horizontalpodautoscalers",
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: fn(
                name,
                namespace,
                body,
                _request_timeout=t,
                _content_type=PATCH_TYPES["merge"],
                **_dry(dry_run),
            ),
        )

    async def list_events(
        self, namespace: str, *, field_selector: str, deadline: float
    ) -> list[dict[str, Any]]:
        out = await self._call(
            verb="list",
            group="",
            resource="events",
            namespace=namespace,
            name="",
            deadline=deadline,
            send=lambda t: self._core.list_namespaced_event(
                namespace, field_selector=field_selector, _request_timeout=t
            ),
        )
        return list(out.get("items") or [])

    async def pod_log(
        self,
        namespace: str,
        name: str,
        *,
        container: str,
        previous: bool,
        tail_lines: int,
        limit_bytes: int,
        deadline: float,
    ) -> str:
        """The last `tail_lines` lines of a container's log (of its previous instance with
        `previous`: what a crash-looping container printed before it died)."""
        out = await self._call(
            verb="get",
            group="",
            resource="pods/log",
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: self._core.read_namespaced_pod_log(
                name,
                namespace,
                container=container,
                previous=previous,
                tail_lines=tail_lines,
                limit_bytes=limit_bytes,
                _request_timeout=t,
            ),
        )
        return str(out.get("text", ""))

    async def list_pods(
        self,
        namespace: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        deadline: float,
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        out = await self._call(
            verb="list",
            group="",
            resource="pods",
            namespace=namespace,
            name="",
            deadline=deadline,
            send=lambda t: self._core.list_namespaced_pod(namespace, _request_timeout=t, **kwargs),
        )
        return list(out.get("items") or [])

    async def delete_pod(
        self, namespace: str, name: str, *, uid: str, dry_run: bool, deadline: float
    ) -> dict[str, Any]:
        """Delete one pod with its default grace period, only if it is still the pod that
        was listed (UID precondition: a StatefulSet's replacement has the same name)."""
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        return await self._call(
            verb="delete",
            group="",
            resource="pods",
            namespace=namespace,
            name=name,
            deadline=deadline,
            send=lambda t: self._core.delete_namespaced_pod(
                name, namespace, body=body, _request_timeout=t, **_dry(dry_run)
            ),
        )

    # -- the one place requests are sent ------------------------------------------------

    async def _call(
        self,
        *,
        verb: str,
        group: str,
        resource: str,
        namespace: str,
        name: str,
        deadline: float,
        send: Callable[[float], Awaitable[Any]],
    ) -> dict[str, Any]:
        if (group, resource, verb) not in PERMISSIONS:
            raise RuntimeError(f"{verb} {resource} is not in PERMISSIONS (and not in the RBAC)")
        what = _describe(verb, group, resource, namespace, name)
        delay = BACKOFF_FIRST
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.TemporaryError(f"{what}: no time left within the action timeout")
            try:
                answer = await send(min(self.request_timeout, left))
            except ApiException as exc:
                status = int(exc.status or 0)
                if status != 429 and status < 500:
                    raise _mapped(
                        exc,
                        status=status,
                        what=what,
                        verb=verb,
                        group=group,
                        resource=resource,
                        namespace=namespace,
                    ) from exc
                problem = f"HTTP {status}{_message(exc)}"
                wait = _retry_after(exc, delay)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__} {exc}".strip()
                wait = delay
            else:
                return self._as_dict(answer)
            if time.monotonic() + wait >= deadline:
                raise errors.TemporaryError(
                    f"{what}: {problem}; gave up retrying within the action timeout"
                )
            log.info("kubernetes_request_retry", request=what, problem=problem, wait=wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, BACKOFF_MAX)

    def _as_dict(self, model: Any) -> dict[str, Any]:
        if isinstance(model, str):  # a log: text, not an object
            return {"text": model}
        data = self._api.sanitize_for_serialization(model)
        return data if isinstance(data, dict) else {}


def _dry(dry_run: bool) -> dict[str, Any]:
    # Server-side dry run: admission, validation and authorization run, nothing persists.
    return {"dry_run": "All"} if dry_run else {}


def _describe(verb: str, group: str, resource: str, namespace: str, name: str) -> str:
    base, _, sub = resource.partition("/")
    qualified = (f"{base}.{group}" if group else base) + (f"/{sub}" if sub else "")
    target = f"{namespace}/{name}" if name else f"in namespace {namespace}"
    return f"kubernetes: {verb} {qualified} {target}"


def _message(exc: ApiException) -> str:
    """The API server's own message (its Status body), cut short, or nothing."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {str(message)[:300]}" if message else ""


def _retry_after(exc: ApiException, default: float) -> float:
    headers: Any = exc.headers
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        return min(max(float(raw), 0.0), BACKOFF_MAX) if raw is not None else default
    except ValueError:
        return default


def _mapped(
    exc: ApiException,
    *,
    status: int,
    what: str,
    verb: str,
    group: str,
    resource: str,
    namespace: str,
) -> errors.ActionError:
    said = _message(exc)
    if status == 404:
        return NotFound(f"{what}: not found (HTTP 404){said}")
    if status == 403:
        api = f"API group {group!r}" if group else "the core API group"
        return errors.PermanentError(
            f"{what}: forbidden (HTTP 403): the service account may not {verb} {resource} "
            f"in {api} in namespace {namespace}; grant it (deploy/kubernetes/base/rbac.yaml) "
            f"with a RoleBinding in that namespace{said}"
        )
    if status == 401:
        return errors.PermanentError(
            f"{what}: unauthorized (HTTP 401): the API server rejected the credentials of "
            "the kubeconfig or service account"
        )
    if status == 409:
        return Conflict(f"{what}: conflict (HTTP 409){said}")
    if status == 0:
        return errors.PermanentError(f"{what}: the request could not be sent: {exc.reason}")
    return errors.PermanentError(f"{what}: HTTP {status}{said}")
