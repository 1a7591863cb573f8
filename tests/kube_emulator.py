"""An in-process Kubernetes API server for tests: aiohttp on a free loopback port.

It holds objects in memory and answers the requests remediator sends the way the real
API server does — and refuses what the real one refuses, so a test passing here means
the request had the right shape:

- a Bearer token is required (401 without it);
- RBAC: given the rules of deploy/kubernetes/base/rbac.yaml, anything outside them is a 403
  with the API server's own message;
- PATCH needs a patch media type: strategic-merge, merge or JSON patch (application/json
  is a 415, as on the real server; apply is not emulated: 415). A JSON patch (RFC 6902:
  add, remove, replace, test) that does not apply is a 422; a strategic-merge patch
  honours `$patch: replace` and `$patch: delete` (what ControllerRevisions hold);
- a patch whose result carries another `metadata.resourceVersion` than the stored one is
  a 409, as the real server treats a resourceVersion in a patch as a precondition;
- an HPA patch must keep 1 <= minReplicas <= maxReplicas (422 otherwise);
- PUT .../scale needs an autoscaling/v1 Scale: apiVersion, kind, metadata.name equal to
  the URL's, spec.replicas >= 0; a stale metadata.resourceVersion is a 409;
- list parses labelSelector (=, ==, !=, in, notin, key, !key) and fieldSelector
  (metadata.name, metadata.namespace; for events also involvedObject.kind/name/namespace/
  uid); a malformed one, or a field the resource has no selector for, is a 400;
- GET pods/NAME/log serves `logs[(namespace, pod, container, previous)]` as text, honours
  container, previous, tailLines and limitBytes; `previous=true` without a terminated
  container is a 400 with the kubelet's message;
- dryRun=All runs every check and stores nothing; any other dryRun value is a 400;
- DELETE honours preconditions.uid (409) and removes the object at once (no kubelet);
- `fail(status, ...)` answers the next matching requests with 403/404/409/429/5xx;
  `stall(seconds, ...)` answers them late, after they took effect (a client timeout).

Every request is logged in `requests` (verb, resource, query, media type, body) with the
status it got. Objects are plain dicts in the API's JSON shape; `add()` fills in uid,
resourceVersion, generation and a settled status. No controller runs: `roll()` does what
the Deployment, StatefulSet and DaemonSet controllers do when the template changes (a
ReplicaSet or ControllerRevision per template, revisions numbered as they do).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import re
import uuid
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import web

LOOPBACK = "127.0.0.1"
SERVICE_ACCOUNT = "system:serviceaccount:remediator:remediator"

KINDS = {
    ("", "pods"): ("v1", "Pod"),
    ("apps", "deployments"): ("apps/v1", "Deployment"),
    ("apps", "statefulsets"): ("apps/v1", "StatefulSet"),
    ("apps", "daemonsets"): ("apps/v1", "DaemonSet"),
    ("apps", "replicasets"): ("apps/v1", "ReplicaSet"),
    ("autoscaling", "horizontalpodautoscalers"): ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("apps", "controllerrevisions"): ("apps/v1", "ControllerRevision"),
    ("", "events"): ("v1", "Event"),
}
SCALABLE = {"deployments", "statefulsets", "replicasets"}
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = {SMP, MERGE, JSON_PATCH}
FIELD_SELECTORS = {
    "events": {
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.uid",
    },
}
"""Fields beyond metadata.name/namespace a resource can be selected by (the real server
refuses others with 400)."""
REVISION = "deployment.kubernetes.io/revision"
HASH = "pod-template-hash"

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[a-z0-9.-]+)/(?P<version>v[0-9a-z]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$"
)
_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


@dataclasses.dataclass
class Seen:
    """One request as the emulator received it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    verb: str = ""
    group: str = ""
    resource: str = ""
    """plural, or plural/subresource (RBAC's spelling: deployments/scale)."""
    namespace: str = ""
    name: str = ""
    status: int = 0

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"

    @property
    def writes(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete", "deletecollection")

    @property
    def permission(self) -> tuple[str, str, str]:
        return (self.group, self.resource, self.verb)


@dataclasses.dataclass
class Fault:
    status: int
    verb: str | None
    resource: str | None
    name: str | None
    times: int
    retry_after: str | None
    after: bool = False
    """Answer with the error *after* doing the request (an answer lost on the way back)."""


@dataclasses.dataclass
class _Text:
    """A plain-text answer (a container log)."""

    text: str


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, retry_after: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.retry_after = retry_after


# --------------------------------------------------------------------------- selectors


def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """`a=b,c!=d,e in (f,g),h,!i` → [(key, op, values)]; ValueError when malformed."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for piece in re.split(r",(?![^()]*\))", text.strip()) if text.strip() else []:
        part = piece.strip()
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^()]*)\)", part)
        if m:
            key, op, vals = m.group(1), m.group(2), tuple(v.strip() for v in m.group(3).split(","))
        elif part.startswith("!"):
            key, op, vals = part[1:], "!", ()
        elif (m := re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(\S*)", part)) is not None:
            key, op, vals = m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)
        else:
            key, op, vals = part, "exists", ()
        if not _KEY.fullmatch(key) or any(not _VALUE.fullmatch(v) for v in vals):
            raise ValueError(f"unable to parse requirement: {part!r}")
        out.append((key, op, vals))
    return out


def label_match(labels: dict[str, str], reqs: list[tuple[str, str, tuple[str, ...]]]) -> bool:
    for key, op, vals in reqs:
        has, value = key in labels, labels.get(key)
        ok = {
            "=": has and value == vals[0],
            "!=": not has or value != vals[0],
            "in": has and value in vals,
            "notin": not has or value not in vals,
            "exists": has,
            "!": not has,
        }[op]
        if not ok:
            return False
    return True


def parse_field_selector(text: str, plural: str = "") -> list[tuple[str, str, str]]:
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_SELECTORS.get(plural, set())
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([a-zA-Z.]+)\s*(==|=|!=)\s*(.*)", part)
        if m is None:
            raise ValueError(f"invalid selector: {part!r}")
        if m.group(1) not in allowed:
            raise ValueError(f'field label not supported: "{m.group(1)}"')
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def selector_text(selector: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    return ",".join(parts)


# --------------------------------------------------------------------------- merging


def merge_patch(obj: Any, patch: Any, *, strategic: bool = False) -> Any:
    """JSON merge patch (RFC 7386); maps merge, null deletes, anything else replaces.

    For the patches emulated here (maps of annotations and replicas) a strategic merge
    patch means the same, plus its `$patch: replace` / `$patch: delete` directives on a
    map (what a ControllerRevision's data holds); list merge keys are not emulated.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic and patch.get("$patch") == "replace":
        return _without_directives(patch)
    out = dict(obj) if isinstance(obj, dict) else {}
    for k, v in patch.items():
        if k == "$patch":
            raise ValueError(f"$patch directive {v!r} not emulated here")
        if v is None or (strategic and isinstance(v, dict) and v.get("$patch") == "delete"):
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v, strategic=strategic)
    return out


def _without_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    return copy.deepcopy(value)


def json_patch(obj: Any, ops: Any) -> Any:
    """RFC 6902 add/remove/replace/test with RFC 6901 pointers; ValueError when an
    operation does not apply (the real server answers 422)."""
    if not isinstance(ops, list):
        raise ValueError("a JSON patch is a list of operations")
    doc = copy.deepcopy(obj)
    for op in ops:
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "test"):
            raise ValueError(f"unsupported operation: {op!r:.80}")
        path = op.get("path")
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise ValueError(f"bad path {path!r:.80}")
        keys = [k.replace("~1", "/").replace("~0", "~") for k in path.split("/")[1:]]
        if not keys:
            if op["op"] == "test":
                if doc != op.get("value"):
                    raise ValueError("testing value of the whole document failed")
                continue
            doc = copy.deepcopy(op.get("value"))
            continue
        parent = doc
        for k in keys[:-1]:
            if not isinstance(parent, dict) or k not in parent:
                raise ValueError(f"doc is missing path: {path}")
            parent = parent[k]
        last = keys[-1]
        if not isinstance(parent, dict):
            raise ValueError(f"doc is missing path: {path}")
        if op["op"] == "test":
            if parent.get(last) != op.get("value"):
                raise ValueError(f"testing value {path} failed")
        elif op["op"] == "remove":
            if last not in parent:
                raise ValueError(f"doc is missing key: {path}")
            del parent[last]
        elif op["op"] == "replace":
            if last not in parent:
                raise ValueError(f"replace operation does not apply: doc is missing key: {path}")
            parent[last] = copy.deepcopy(op.get("value"))
        else:
            parent[last] = copy.deepcopy(op.get("value"))
    return doc


# --------------------------------------------------------------------------- objects


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _template(labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }


def deployment(
    name: str,
    namespace: str = "prod",
    *,
    replicas: int = 3,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    match = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**match, **(labels or {})},
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match},
            "template": _template(match),
            "strategy": {"type": "RollingUpdate"},
        },
    }


def statefulset(
    name: str, namespace: str = "prod", *, replicas: int = 3, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    match = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": {**match, **(labels or {})}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": match},
            "template": _template(match),
            "updateStrategy": {"type": "RollingUpdate"},
        },
    }


def daemonset(name: str, namespace: str = "prod") -> dict[str, Any]:
    match = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(match)},
        "spec": {"selector": {"matchLabels": match}, "template": _template(match)},
    }


def replicaset(owner: dict[str, Any], pod_hash: str = "5d8f7b9c4") -> dict[str, Any]:
    """The ReplicaSet a Deployment (already added, so it has a uid) runs its pods in."""
    meta = owner["metadata"]
    match = {**owner["spec"]["selector"]["matchLabels"], "pod-template-hash": pod_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{pod_hash}",
            "namespace": meta["namespace"],
            "labels": dict(match),
            "ownerReferences": [_owner_ref(owner)],
        },
        "spec": {
            "replicas": owner["spec"]["replicas"],
            "selector": {"matchLabels": match},
            "template": _template(match),
        },
    }


def pod(
    name: str,
    owner: dict[str, Any] | None,
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """A running pod of `owner` (a ReplicaSet, StatefulSet or DaemonSet, already added)."""
    base_labels = dict(owner["spec"]["selector"]["matchLabels"]) if owner else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace or (owner["metadata"]["namespace"] if owner else "prod"),
            "labels": {**base_labels, **(labels or {})},
            "ownerReferences": [_owner_ref(owner)] if owner else [],
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def hpa(name: str, target: dict[str, Any], *, lo: int = 2, hi: int = 10) -> dict[str, Any]:
    meta = target["metadata"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": target["kind"],
                "name": meta["name"],
            },
            "minReplicas": lo,
            "maxReplicas": hi,
        },
    }


def event(
    about: dict[str, Any],
    reason: str,
    message: str,
    *,
    type_: str = "Warning",
    count: int = 1,
    last: str = "2027-01-15T11:58:00Z",
    name: str = "",
) -> dict[str, Any]:
    """A core/v1 Event about an object (already added, so it has a uid)."""
    meta = about["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": name or f"{meta['name']}.{uuid.uuid4().hex[:12]}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": about["apiVersion"],
            "kind": about["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "count": count,
        "firstTimestamp": last,
        "lastTimestamp": last,
        "source": {"component": "kubelet"},
    }


def template_hash(template: dict[str, Any]) -> str:
    """A stable pod-template-hash of a template (the real one is FNV of the object)."""
    clean = copy.deepcopy(template)
    (clean.get("metadata") or {}).get("labels", {}).pop(HASH, None)
    digest = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16)] for c in digest[:10])


def _owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def load_rbac(path: Path) -> tuple[set[tuple[str, str, str]], set[str]]:
    """(group, resource, verb) of the ClusterRole, and the namespaces it is bound in."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    rules: set[tuple[str, str, str]] = set()
    namespaces: set[str] = set()
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role"):
            for r in d["rules"]:
                for g in r["apiGroups"]:
                    for res in r["resources"]:
                        for v in r["verbs"]:
                            rules.add((g, res, v))
        elif d["kind"] == "RoleBinding":
            namespaces.add(d["metadata"]["namespace"])
    return rules, namespaces


# --------------------------------------------------------------------------- server


@dataclasses.dataclass
class KubeEmulator:
    token: str = "emulator-token"
    rbac: set[tuple[str, str, str]] | None = None
    """Allowed (group, resource, verb); None allows everything."""
    rbac_namespaces: set[str] | None = None
    requests: list[Seen] = dataclasses.field(default_factory=list)
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = dataclasses.field(
        default_factory=dict
    )
    faults: list[Fault] = dataclasses.field(default_factory=list)
    stalls: list[list[Any]] = dataclasses.field(default_factory=list)
    """[seconds, verb, times left] of `stall`."""

    logs: dict[tuple[str, str, str, bool], str] = dataclasses.field(default_factory=dict)
    """(namespace, pod, container, previous) → log text, for GET pods/NAME/log."""
    port: int = 0
    _runner: web.AppRunner | None = None
    _versions: itertools.count[int] = dataclasses.field(
        default_factory=lambda: itertools.count(100)
    )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def kubeconfig(self, path: Path, *, context: str = "emulator") -> Path:
        """A kubeconfig whose current-context points elsewhere: only `context` works."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "emulator", "cluster": {"server": self.url}},
                        {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}},
                    ],
                    "users": [{"name": "remediator", "user": {"token": self.token}}],
                    "contexts": [
                        {"name": context, "context": {"cluster": "emulator", "user": "remediator"}},
                        {"name": "other", "context": {"cluster": "nowhere", "user": "remediator"}},
                    ],
                    "current-context": "other",
                }
            )
        )
        return path

    # -- state, for tests ---------------------------------------------------------------

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if created and settled by its controller; returns it."""
        obj = copy.deepcopy(obj)
        group = obj["apiVersion"].rpartition("/")[0]
        plural = obj["kind"].lower() + "s"
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_iso())
        meta["resourceVersion"] = str(next(self._versions))
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            meta.setdefault("generation", 1)
            obj.setdefault("status", self._settled(obj))
        self.objects[(group, plural, meta["namespace"], meta["name"])] = obj
        return obj

    def roll(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        """What the workload's controller does after its template changed: reuse (and
        renumber as the newest) the ReplicaSet or ControllerRevision of that template, or
        create one, then settle. Returns the workload."""
        obj = self.get(plural, namespace, name)
        assert obj is not None, f"{plural} {namespace}/{name}"
        template = obj["spec"]["template"]
        h = template_hash(template)
        uid = obj["metadata"]["uid"]
        if plural == "deployments":
            owned = [
                o
                for (_, p, ns, _), o in self.objects.items()
                if (p, ns) == ("replicasets", namespace)
                and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
            ]
            revisions = [int(o["metadata"]["annotations"][REVISION]) for o in owned]
            newest = max(revisions, default=0) + 1
            found = next((o for o in owned if o["metadata"]["labels"].get(HASH) == h), None)
            if found is None:
                labels = {**template["metadata"].get("labels", {}), HASH: h}
                annotations = {
                    k: v
                    for k, v in (obj["metadata"].get("annotations") or {}).items()
                    if k != REVISION
                }
                found = self.add(
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "metadata": {
                            "name": f"{name}-{h}",
                            "namespace": namespace,
                            "labels": labels,
                            "annotations": {**annotations, REVISION: str(newest)},
                            "ownerReferences": [_owner_ref(obj)],
                        },
                        "spec": {
                            "replicas": obj["spec"].get("replicas", 1),
                            "selector": {
                                "matchLabels": {**obj["spec"]["selector"]["matchLabels"], HASH: h}
                            },
                            "template": {
                                **copy.deepcopy(template),
                                "metadata": {
                                    **copy.deepcopy(template.get("metadata") or {}),
                                    "labels": labels,
                                },
                            },
                        },
                    }
                )
            else:
                found["metadata"]["annotations"][REVISION] = str(newest)
                found["metadata"]["resourceVersion"] = str(next(self._versions))
            obj["metadata"].setdefault("annotations", {})[REVISION] = str(newest)
        else:
            owned = [
                o
                for (_, p, ns, _), o in self.objects.items()
                if (p, ns) == ("controllerrevisions", namespace)
                and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
            ]
            newest = max((int(o["revision"]) for o in owned), default=0) + 1
            found = next((o for o in owned if o["metadata"]["name"] == f"{name}-{h}"), None)
            if found is None:
                found = self.add(
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ControllerRevision",
                        "metadata": {
                            "name": f"{name}-{h}",
                            "namespace": namespace,
                            "labels": {
                                **obj["spec"]["selector"]["matchLabels"],
                                "controller-revision-hash": h,
                            },
                            "ownerReferences": [_owner_ref(obj)],
                        },
                        "data": {
                            "spec": {"template": {**copy.deepcopy(template), "$patch": "replace"}}
                        },
                        "revision": newest,
                    }
                )
            else:
                found["revision"] = newest
                found["metadata"]["resourceVersion"] = str(next(self._versions))
            if plural == "statefulsets":
                obj["status"] |= {"currentRevision": found["metadata"]["name"]}
                obj["status"] |= {"updateRevision": found["metadata"]["name"]}
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        obj["status"] = {**obj.get("status", {}), **self._settled(obj)}
        if plural == "statefulsets":
            obj["status"]["currentRevision"] = obj["status"]["updateRevision"] = found["metadata"][
                "name"
            ]
        return obj

    def deploy(
        self, kind: str, name: str, images: list[str], *, namespace: str = "prod"
    ) -> dict[str, Any]:
        """A workload rolled out once per image in turn: revision i runs images[i-1]."""
        make = {"deployment": deployment, "statefulset": statefulset, "daemonset": daemonset}
        obj = self.add(make[kind](name, namespace))
        plural = f"{kind}s"
        for i, image in enumerate(images):
            if i:
                obj["metadata"]["generation"] += 1
            obj["spec"]["template"]["spec"]["containers"][0]["image"] = image
            obj = self.roll(plural, namespace, name)
        return obj

    @staticmethod
    def _settled(obj: dict[str, Any]) -> dict[str, Any]:
        gen, n = obj["metadata"]["generation"], obj["spec"].get("replicas", 1)
        if obj["kind"] == "DaemonSet":
            return {
                "observedGeneration": gen,
                "desiredNumberScheduled": 3,
                "currentNumberScheduled": 3,
                "numberMisscheduled": 0,
                "updatedNumberScheduled": 3,
                "numberReady": 3,
                "numberAvailable": 3,
            }
        status = {
            "observedGeneration": gen,
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        }
        if obj["kind"] == "StatefulSet":
            status |= {"currentRevision": "r1", "updateRevision": "r1"}
        return status

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        for (_, p, ns, n), obj in self.objects.items():
            if (p, ns, n) == (plural, namespace, name):
                return obj
        return None

    def names(self, plural: str, namespace: str) -> list[str]:
        return sorted(n for (_, p, ns, n) in self.objects if (p, ns) == (plural, namespace))

    def fail(
        self,
        status: int,
        *,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
        times: int = 1,
        retry_after: str | None = None,
        after: bool = False,
    ) -> None:
        """Answer the next `times` requests matching verb/resource/name with `status`
        (with `after`, once the request has taken effect: the answer is what is lost)."""
        self.faults.append(Fault(status, verb, resource, name, times, retry_after, after))

    def stall(self, seconds: float, *, verb: str | None = None, times: int = 1) -> None:
        """Serve the next `times` requests matching `verb`, then wait `seconds` before
        answering: the change is made, and a client with a shorter timeout never hears."""
        self.stalls.append([seconds, verb, times])

    def writes(self) -> list[Seen]:
        return [r for r in self.requests if r.writes]

    # -- HTTP ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        seen = Seen(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            content_type=request.headers.get("Content-Type", "").split(";")[0].strip(),
            body=body,
        )
        self.requests.append(seen)
        try:
            answer = self._serve(request, seen, raw)
            for stall in self.stalls:
                if stall[2] > 0 and stall[1] in (None, seen.verb):
                    stall[2] -= 1
                    seen.status = 200
                    await asyncio.sleep(stall[0])
                    break
            self._inject(seen, after=True)
        except ApiError as exc:
            seen.status = exc.code
            headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": exc.message,
                    "reason": exc.reason,
                    "code": exc.code,
                },
                status=exc.code,
                headers=headers,
            )
        seen.status = 200
        if isinstance(answer, _Text):
            return web.Response(text=answer.text, content_type="text/plain")
        return web.json_response(answer)

    def _serve(self, request: web.Request, seen: Seen, raw: bytes) -> Any:
        m = _PATH.match(request.path)
        if m is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        group = m.group("group") or ""
        plural, ns, name, sub = m.group("plural"), m.group("ns"), m.group("name"), m.group("sub")
        if (group, plural) not in KINDS or sub not in (None, "scale", "log"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verb = {
            "GET": "get" if name else "list",
            "PUT": "update",
            "PATCH": "patch",
            "POST": "create",
            "DELETE": "delete" if name else "deletecollection",
        }.get(request.method, request.method.lower())
        if request.query.get("watch") in ("true", "1"):
            verb = "watch"
        resource = f"{plural}/{sub}" if sub else plural
        seen.verb, seen.group, seen.resource = verb, group, resource
        seen.namespace, seen.name = ns, name or ""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        self._inject(seen)
        if self.rbac is not None and (
            (group, resource, verb) not in self.rbac
            or (self.rbac_namespaces is not None and ns not in self.rbac_namespaces)
        ):
            what = f'{plural}{"." + group if group else ""} "{name}"' if name else plural
            raise ApiError(
                403,
                "Forbidden",
                f'{what} is forbidden: User "{SERVICE_ACCOUNT}" cannot {verb} resource '
                f'"{resource}" in API group "{group}" in the namespace "{ns}"',
            )
        dry = request.query.get("dryRun")
        if dry is not None and dry != "All":
            raise ApiError(400, "BadRequest", f'Invalid dryRun value: "{dry}": must be "All"')
        if verb == "list":
            return self._list(group, plural, ns, request)
        if verb not in ("get", "patch", "update", "delete"):
            raise ApiError(405, "MethodNotAllowed", f"{verb} is not emulated")
        key = (group, plural, ns, name or "")
        qualified = f"{plural}.{group}" if group else plural
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{qualified} "{name}" not found')
        if sub == "log":
            if plural != "pods" or verb != "get":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self._log(ns, obj, request)
        if sub == "scale":
            if plural not in SCALABLE:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self._scale(verb, key, obj, seen, qualified, dry == "All")
        if verb == "get":
            return obj
        if verb == "patch":
            return self._patch(key, obj, seen, qualified, dry == "All")
        if verb == "delete":
            return self._delete(key, obj, seen, qualified, dry == "All")
        raise ApiError(405, "MethodNotAllowed", "update of whole objects is not emulated")

    def _inject(self, seen: Seen, *, after: bool = False) -> None:
        for f in self.faults:
            if f.times <= 0 or f.after != after:
                continue
            if f.verb not in (None, seen.verb) or f.resource not in (None, seen.resource):
                continue
            if f.name not in (None, seen.name):
                continue
            f.times -= 1
            reason = {
                403: "Forbidden",
                404: "NotFound",
                409: "Conflict",
                429: "TooManyRequests",
                500: "InternalError",
                503: "ServiceUnavailable",
                504: "Timeout",
            }.get(f.status, "Unknown")
            message = {
                403: f'User "{SERVICE_ACCOUNT}" cannot {seen.verb} resource "{seen.resource}"',
                404: f'{seen.resource} "{seen.name}" not found',
                409: "the object has been modified; please apply your changes to the latest "
                "version and try again",
                429: "too many requests, please try again later",
            }.get(f.status, "the server is currently unable to handle the request")
            # The real server says Retry-After: 1 (or more); 0 keeps the tests fast.
            after = f.retry_after or ("0" if f.status == 429 else "")
            raise ApiError(f.status, reason, message, after)

    def _list(self, group: str, plural: str, ns: str, request: web.Request) -> Any:
        try:
            labels = parse_label_selector(request.query.get("labelSelector", ""))
            fields = parse_field_selector(request.query.get("fieldSelector", ""), plural)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from exc
        items = []
        for (g, p, n_s, _), obj in sorted(self.objects.items()):
            if (g, p, n_s) != (group, plural, ns):
                continue
            meta = obj["metadata"]
            if not label_match(meta.get("labels") or {}, labels):
                continue
            if not all((field_value(obj, f) == v) == (op == "=") for f, op, v in fields):
                continue
            items.append(obj)
        api_version, kind = KINDS[(group, plural)]
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": items,
        }

    def _patch(self, key: Any, obj: dict[str, Any], seen: Seen, qualified: str, dry: bool) -> Any:
        if seen.content_type not in PATCH_TYPES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({seen.content_type!r}) - "
                "accepted media types include: application/json-patch+json, "
                "application/merge-patch+json, application/apply-patch+yaml, "
                "application/strategic-merge-patch+json",
            )
        if seen.content_type == JSON_PATCH:
            try:
                new = json_patch(obj, seen.body)
            except ValueError as exc:
                raise ApiError(422, "Invalid", f"the server rejected our request: {exc}") from exc
        else:
            if not isinstance(seen.body, dict):
                raise ApiError(400, "BadRequest", "the patch must be a JSON object")
            try:
                new = merge_patch(obj, seen.body, strategic=seen.content_type == SMP)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", str(exc)) from exc
        meta = new.get("metadata") or {}
        if meta.get("name") != obj["metadata"]["name"]:
            raise ApiError(422, "Invalid", f"{qualified}: metadata.name may not change")
        if meta.get("resourceVersion") != obj["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {qualified} "{meta.get("name")}": the object '
                "has been modified; please apply your changes to the latest version and try again",
            )
        if obj["kind"] == "HorizontalPodAutoscaler":
            spec = new.get("spec") or {}
            lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas")
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise ApiError(
                    422,
                    "Invalid",
                    f'HorizontalPodAutoscaler.autoscaling "{meta.get("name")}" is invalid: '
                    f"spec.minReplicas ({lo!r}) must be at least 1 and at most "
                    f"spec.maxReplicas ({hi!r})",
                )
        for where in (meta, ((new.get("spec") or {}).get("template") or {}).get("metadata") or {}):
            for field in ("labels", "annotations"):
                values = where.get(field) or {}
                if not isinstance(values, dict) or not all(
                    isinstance(v, str) for v in values.values()
                ):
                    raise ApiError(422, "Invalid", f"{qualified}: {field} values must be strings")
        return self._store(key, obj, new, dry)

    def _log(self, ns: str, pod: dict[str, Any], request: web.Request) -> Any:
        containers = [c["name"] for c in pod["spec"]["containers"]]
        container = request.query.get("container") or (
            containers[0] if len(containers) == 1 else ""
        )
        name = pod["metadata"]["name"]
        if container not in containers:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}")
        # The API server parses booleans as Go's strconv.ParseBool (the client sends "True").
        previous = request.query.get("previous") in ("1", "t", "T", "true", "True", "TRUE")
        text = self.logs.get((ns, name, container, previous))
        if text is None and previous:
            raise ApiError(
                400,
                "BadRequest",
                f'previous terminated container "{container}" in pod "{name}" not found',
            )
        lines = (text or "").splitlines(keepends=True)
        if "tailLines" in request.query:
            lines = lines[-int(request.query["tailLines"]) :]
        out = "".join(lines)
        if "limitBytes" in request.query:
            out = out.encode()[: int(request.query["limitBytes"])].decode(errors="ignore")
        return _Text(out)

    def _store(self, key: Any, old: dict[str, Any], new: dict[str, Any], dry: bool) -> Any:
        if new == old:
            return old  # a no-op write bumps nothing, as on the real server
        new = copy.deepcopy(new)
        if new.get("spec") != old.get("spec") and "generation" in old["metadata"]:
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        new["metadata"]["resourceVersion"] = str(next(self._versions))
        if not dry:
            self.objects[key] = new
        return new

    def _scale(
        self, verb: str, key: Any, obj: dict[str, Any], seen: Seen, qualified: str, dry: bool
    ) -> Any:
        meta = obj["metadata"]

        def view(o: dict[str, Any]) -> dict[str, Any]:
            m = o["metadata"]
            return {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {
                    "name": m["name"],
                    "namespace": m["namespace"],
                    "uid": m["uid"],
                    "resourceVersion": m["resourceVersion"],
                    "creationTimestamp": m["creationTimestamp"],
                },
                "spec": {"replicas": o["spec"].get("replicas", 1)},
                "status": {
                    "replicas": (o.get("status") or {}).get("replicas", 0),
                    "selector": selector_text(o["spec"]["selector"]),
                },
            }

        if verb == "get":
            return view(obj)
        if verb == "patch":
            if seen.content_type not in PATCH_TYPES or not isinstance(seen.body, dict):
                raise ApiError(415, "UnsupportedMediaType", "scale patch needs a merge patch")
            body = merge_patch(view(obj), seen.body)
        elif verb == "update":
            if seen.content_type != "application/json":
                raise ApiError(415, "UnsupportedMediaType", f"{seen.content_type!r} for PUT")
            body = seen.body
        else:
            raise ApiError(405, "MethodNotAllowed", f"{verb} of scale")
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        if (body.get("apiVersion"), body.get("kind")) != ("autoscaling/v1", "Scale"):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) and kind "
                f"({body.get('kind')}) do not match the expected autoscaling/v1 Scale",
            )
        bmeta = body.get("metadata") or {}
        if bmeta.get("name") != meta["name"]:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({bmeta.get('name')}) does not match the name on "
                f"the URL ({meta['name']})",
            )
        if bmeta.get("namespace") not in (None, "", meta["namespace"]):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        version = bmeta.get("resourceVersion")
        if version and version != meta["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {qualified} "{meta["name"]}": the object has '
                "been modified; please apply your changes to the latest version and try again",
            )
        replicas = (body.get("spec") or {}).get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ApiError(
                422,
                "Invalid",
                f'Scale.autoscaling "{meta["name"]}" is invalid: spec.replicas: Invalid value: '
                f"{replicas!r}: must be greater than or equal to 0",
            )
        new = merge_patch(obj, {"spec": {"replicas": replicas}})
        return view(self._store(key, obj, new, dry))

    def _delete(self, key: Any, obj: dict[str, Any], seen: Seen, qualified: str, dry: bool) -> Any:
        options = seen.body if isinstance(seen.body, dict) else {}
        uid = (options.get("preconditions") or {}).get("uid")
        if uid and uid != obj["metadata"]["uid"]:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{obj['metadata']['uid']}",
            )
        if not dry:
            del self.objects[key]
        return obj
