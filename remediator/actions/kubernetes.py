"""`kubernetes.*`: rollout restart and undo, bounded scale of replicas or of an HPA's
bounds, bounded pod delete — the way kubectl does — and the evidence they capture.

What keeps a label value from steering these actions (in this order):

1. Params are validated by format: DNS-1123 names, label keys and values, bounded
   integers. Bounds (`min_replicas`, `max_replicas`, `max_pods`, `allow_last_ready`,
   `if_rolling_out`, `to_revision`, an HPA's changes, `floor`, `ceiling`) must be literal
   in the rule: a template there is a rule error.
2. Before any request (`check_allowed`): the namespace must be in
   `kubernetes.allowed_namespaces`, the workload not in `kubernetes.protected_workloads`.
3. At run time, a workload (or a pod's owning workload, or an HPA's target) carrying
   the protected label or annotation (`remediator.io/protected: "true"`) is refused
   before anything is written; so is a rollback of what a GitOps controller reconciles.

Dry-run sends the very same writes with `dryRun=All`: the API server authorizes,
admits and validates them and persists nothing, so a dry run proves the target exists
and the permissions suffice. All I/O is in remediator/clients/kubernetes.py, imported
only when an action runs (start-up and `remediator check` stay fast).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import importlib
import re
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from remediator import errors, settings
from remediator.actions import base, evidence, params, registry
from remediator.actions.base import Context, Result

if TYPE_CHECKING:
    from remediator.clients.kubernetes import KubeClient

SECTION = "kubernetes"
_CLIENT_MODULE = "remediator.clients.kubernetes"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
MAX_REPLICAS = 10_000
"""Upper limit of any replica count or bound in a rule (a typo guard, not a policy)."""

_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """The `kubernetes:` config section: how to connect, and what may be touched."""

    allowed_namespaces: frozenset[str]
    """Namespaces Kubernetes actions may act in. Required and non-empty: nothing is
    allowed until listed. Grant the RBAC (deploy/kubernetes/base/rbac.yaml) in the same ones."""
    in_cluster: bool = False
    """Use the pod's service account (the daemon runs in the cluster). Excludes kubeconfig."""
    kubeconfig: str = ""
    """Path of a kubeconfig file; empty: $KUBECONFIG, else ~/.kube/config."""
    context: str = ""
    """Kubeconfig context to use; empty: the file's current-context."""
    request_timeout: float = 10.0
    """Seconds one API request may take (never more than what the action has left). The
    API server answers in milliseconds when healthy; 10 s leaves room for a slow one
    while retries still fit in the default 60 s action timeout."""
    protected_key: str = "remediator.io/protected"
    """A label or annotation key: a workload (or the owner of a pod) where it is "true"
    is never acted on. Lets a team opt a workload out without editing rules."""
    protected_workloads: frozenset[str] = frozenset()
    """`namespace/kind/name` entries (kind: deployment, statefulset, daemonset) refused
    before any request, whatever the rules say."""
    rollback_gitops_managed: bool = False
    """Let `kubernetes.rollout_undo` roll back a workload an Argo CD or Flux controller
    manages. Off: its self-heal would re-apply what Git holds within minutes, so the
    rollback would look like a fix and not be one (roll back in Git instead). Turn it on
    only where those controllers do not self-heal."""


@settings.section(SECTION)
def _config(r: settings.Reader, env: Mapping[str, str]) -> KubernetesConfig:
    namespaces = r.raw_list("allowed_namespaces")
    if not namespaces:
        raise errors.ConfigError(
            f"{r.prefix}allowed_namespaces",
            "required: list the namespaces Kubernetes actions may act in",
        )
    for i, ns in enumerate(namespaces):
        if not isinstance(ns, str) or not _DNS1123_LABEL.fullmatch(ns):
            raise errors.ConfigError(
                f"{r.prefix}allowed_namespaces[{i}]", f"not a namespace name: {ns!r}"
            )
    in_cluster = r.flag("in_cluster", False)
    kubeconfig = r.text("kubeconfig", "")
    context = r.text("context", "")
    if in_cluster and (kubeconfig or context):
        raise errors.ConfigError(
            f"{r.prefix}in_cluster", "in_cluster excludes kubeconfig and context: choose one"
        )
    if not in_cluster and not kubeconfig:
        kubeconfig = env.get("KUBECONFIG", "")
    timeout = r.duration("request_timeout", 10.0)
    if not 0 < timeout <= 300:
        raise errors.ConfigError(f"{r.prefix}request_timeout", "must be in (0s, 5m]")
    key = r.text("protected_key", "remediator.io/protected")
    if not _label_key_ok(key):
        raise errors.ConfigError(f"{r.prefix}protected_key", f"not a label key: {key!r}")
    protected = r.raw_list("protected_workloads")
    for i, item in enumerate(protected):
        parts = item.split("/") if isinstance(item, str) else []
        if (
            len(parts) != 3
            or not _DNS1123_LABEL.fullmatch(parts[0])
            or parts[1] not in ("deployment", "statefulset", "daemonset")
            or not _DNS1123_SUBDOMAIN.fullmatch(parts[2])
        ):
            raise errors.ConfigError(
                f"{r.prefix}protected_workloads[{i}]",
                f"expected namespace/kind/name (kind deployment, statefulset or daemonset), "
                f"got {item!r}",
            )
    return KubernetesConfig(
        allowed_namespaces=frozenset(namespaces),
        in_cluster=in_cluster,
        kubeconfig=kubeconfig,
        context=context,
        request_timeout=timeout,
        protected_key=key,
        protected_workloads=frozenset(protected),
        rollback_gitops_managed=r.flag("rollback_gitops_managed", False),
    )


# --------------------------------------------------------------------------- params


def _label_key_ok(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return False
    return bool(_LABEL_NAME.fullmatch(name))


def _is_template(value: Any) -> bool:
    from remediator.matching.templates import Template  # noqa: PLC0415 - avoids a cycle

    return isinstance(value, Template)


def _label_selector() -> params.Validator:
    """Equality labels `{key: value}` (matchLabels): each value is checked on its own,
    so a rendered label cannot add a selector operator, a comma, or an empty value."""

    def check(field: str, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping) or not value:
            raise errors.ParamError(field, "expected a non-empty mapping of label: value")
        if len(value) > 10:
            raise errors.ParamError(field, "at most 10 labels")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not _label_key_ok(k):
                raise errors.ParamError(field, f"{str(k)[:80]!r} is not a label key")
            text = v
            if _is_template(v):
                if not v.is_literal:
                    out[k] = ""  # checked again once rendered
                    continue
                text = v.render_literal()
            if not isinstance(text, str) or not _LABEL_NAME.fullmatch(text):
                raise errors.ParamError(
                    f"{field}.{k}",
                    f"{str(text)[:80]!r} is not a label value (1-63 of [A-Za-z0-9-_.], "
                    "alphanumeric at both ends)",
                )
            out[k] = text
        return out

    return check


def _step() -> params.Validator:
    """A change of replicas: +N or -N (YAML reads an unquoted +2 as 2: also a step up)."""

    def check(field: str, value: Any) -> int:
        # [0-9], not \d: \d also matches other scripts' digits, which int() then reads
        # (Arabic-Indic "+\u0661\u0660\u0660" is 100): a label could pass a step in digits
        # no one reading the audit would take for one.
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,6}", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.ParamError(field, f"expected a step like +2 or -1, got {value!r:.80}")
        if value == 0 or abs(value) > MAX_REPLICAS:
            raise errors.ParamError(field, f"step {value} must be non-zero, at most {MAX_REPLICAS}")
        return value

    return check


def _flag() -> params.Validator:
    def check(field: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return bool(value == "true")
        raise errors.ParamError(field, f"expected true or false, got {value!r:.80}")

    return check


_NAMESPACE = params.Field(params.dns_label(), doc="namespace (must be in allowed_namespaces)")
_NAME = params.Field(params.dns_subdomain(), doc="the workload's name")
_KIND = params.Field(
    params.choice("deployment", "statefulset", "daemonset"),
    required=False,
    default="deployment",
    doc="the workload's kind",
)


class _OnWorkload:
    """What the actions on one workload (`namespace`, `kind`, `name`) share."""

    def check_allowed(self, values: Mapping[str, Any], settings: settings.Settings) -> None:
        _check_workload(values, base.family_config(settings, SECTION))

    def target(self, values: Mapping[str, Any]) -> str:
        return _workload_key(values)

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        return await workload_evidence(ctx, values["kind"], values["namespace"], values["name"])


# --------------------------------------------------------------------------- shared


def _workload_key(values: Mapping[str, Any]) -> str:
    return f"{values['namespace']}/{values['kind']}/{values['name']}"


def _check_workload(values: Mapping[str, Any], cfg: KubernetesConfig | None) -> None:
    """Allow-lists from config, before any request (cfg None: dry run without config)."""
    if cfg is None:
        return
    ns = values["namespace"]
    if ns not in cfg.allowed_namespaces:
        raise errors.NotAllowed(
            "namespace",
            f"{ns!r} is not in kubernetes.allowed_namespaces "
            f"({', '.join(sorted(cfg.allowed_namespaces))})",
        )
    if "name" in values and _workload_key(values) in cfg.protected_workloads:
        raise errors.NotAllowed(
            "name", f"{_workload_key(values)} is listed in kubernetes.protected_workloads"
        )


def _cfg(ctx: Context) -> KubernetesConfig | None:
    cfg: KubernetesConfig | None = base.family_config(ctx.settings, SECTION)
    return cfg


async def _client(ctx: Context, cfg: KubernetesConfig) -> KubeClient:
    if _CLIENT_MODULE not in sys.modules:
        # kubernetes_asyncio takes ~0.4 s to import: off the event loop, once, so the
        # first Kubernetes action does not stall intake (and start-up never pays it).
        await asyncio.to_thread(importlib.import_module, _CLIENT_MODULE)
    from remediator.clients import kubernetes as kube  # noqa: PLC0415 - kept off start-up

    async def opener() -> KubeClient:
        return await kube.open_client(
            in_cluster=cfg.in_cluster,
            kubeconfig=cfg.kubeconfig,
            context=cfg.context,
            request_timeout=cfg.request_timeout,
        )

    client: KubeClient = await ctx.clients.get("kubernetes", opener, kube.close_client)
    return client


def _deadline(ctx: Context) -> float:
    # A little before the engine's own timeout, so that the error says what was tried
    # (e.g. "HTTP 503; gave up retrying") instead of a bare timeout.
    return time.monotonic() + ctx.timeout - min(1.0, ctx.timeout * 0.1)


def _protected(obj: Mapping[str, Any], key: str) -> str | None:
    meta = obj.get("metadata") or {}
    for where in ("labels", "annotations"):
        if str((meta.get(where) or {}).get(key, "")).lower() == "true":
            return f"{where[:-1]} {key}=true"
    return None


def _refuse_protected(obj: Mapping[str, Any], cfg: KubernetesConfig, what: str) -> None:
    why = _protected(obj, cfg.protected_key)
    if why is not None:
        raise errors.NotAllowed("name", f"{what} is protected ({why}): never acted on")


def _not_checked(what: str) -> Result:
    return Result(
        detail=f"would {what} (not checked against a cluster: no `{SECTION}:` config)",
        data={"checked": False},
    )


def _now_rfc3339() -> str:
    # What kubectl writes: time.Now().Format(time.RFC3339), here in UTC.
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- restart


def _rollout_in_progress(kind: str, obj: Mapping[str, Any]) -> str | None:
    """Why a rollout of the current template is still under way, or None.

    Readiness is not part of it: pods all on the latest template but not ready are
    exactly what a restart is for (the APIDown case), so only an unfinished change of
    template counts — as `kubectl rollout status` sees it, minus availability.
    """
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    generation = int(meta.get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return f"the controller has not yet observed generation {generation}"
    if kind == "deployment":
        for c in status.get("conditions") or []:
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                return None  # a failed rollout is not progressing: a restart may be wanted
        want = int(spec.get("replicas", 1) or 0)
        updated = int(status.get("updatedReplicas") or 0)
        if updated < want:
            return f"{updated} of {want} replicas updated"
        if int(status.get("replicas") or 0) > updated:
            return f"{int(status.get('replicas') or 0) - updated} old replicas pending termination"
        return None
    if kind == "statefulset":
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type") == "OnDelete":
            return None
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        want = int(spec.get("replicas", 1) or 0) - partition
        updated = int(status.get("updatedReplicas") or 0)
        if updated < want:
            return f"{updated} of {want} replicas updated"
        current, update = status.get("currentRevision"), status.get("updateRevision")
        if partition == 0 and update and current != update:
            return f"revision {update} is replacing {current}"
        return None
    desired = int(status.get("desiredNumberScheduled") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    if updated < desired:
        return f"{updated} of {desired} pods updated"
    return None


class RolloutRestart(_OnWorkload):
    type: ClassVar[str] = "kubernetes.rollout_restart"
    # Each run is a new restart (a new restartedAt), so the engine must not repeat it;
    # a lost answer is retried here with the same patch body, which is harmless.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "namespace": _NAMESPACE,
            "name": _NAME,
            "kind": _KIND,
            "if_rolling_out": params.Field(
                params.choice("skip", "restart"),
                required=False,
                default="skip",
                doc="when a rollout is already under way: record it and change nothing "
                "(skip), or restart anyway",
            ),
        },
        literal=frozenset({"if_rolling_out"}),
    )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._restart(values, ctx, dry=False)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._restart(values, ctx, dry=True)

    async def _restart(self, values: Mapping[str, Any], ctx: Context, *, dry: bool) -> Result:
        kind, ns, name = values["kind"], values["namespace"], values["name"]
        what = f"{kind} {ns}/{name}"
        cfg = _cfg(ctx)
        if cfg is None:
            return _not_checked(f"restart {what}")
        kube, deadline = await _client(ctx, cfg), _deadline(ctx)
        from remediator.clients.kubernetes import Conflict  # noqa: PLC0415 - loaded by _client

        obj = await kube.get(kind, ns, name, deadline=deadline)
        _refuse_protected(obj, cfg, what)
        if kind == "deployment" and (obj.get("spec") or {}).get("paused"):
            raise errors.PermanentError(
                f"{what} is paused: a restart would not roll out (kubectl rollout resume first)"
            )
        data: dict[str, Any] = {"kind": kind, "namespace": ns, "name": name}
        busy = _rollout_in_progress(kind, obj)
        if busy is not None and values["if_rolling_out"] == "skip":
            return Result(
                detail=f"{what}: a rollout is already in progress ({busy}): no change",
                changed=False,
                data={**data, "rollout_in_progress": busy},
            )
        restarted_at = _now_rfc3339()
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}}
        if not dry:
            await ctx.fence(f"restart {what}")  # the read may have been long ago (a stall)
        try:
            after = await kube.patch(kind, ns, name, patch, dry_run=dry, deadline=deadline)
        except Conflict:  # a strategic-merge patch rarely conflicts; once more, then give up
            after = await kube.patch(kind, ns, name, patch, dry_run=dry, deadline=deadline)
        data |= {
            "restartedAt": restarted_at,
            "generation": (after.get("metadata") or {}).get("generation"),
            "dry_run": dry,
        }
        if busy is not None:
            data["rollout_in_progress"] = busy
        verb = "would restart (server-side dry run accepted)" if dry else "restarted"
        return Result(detail=f"{verb} {what}: {RESTARTED_AT}={restarted_at}", data=data)


# --------------------------------------------------------------------------- scale


def _scale_across(values: Mapping[str, Any]) -> None:
    if ("replicas" in values) == ("to" in values):
        raise errors.ParamError(
            "replicas", "give either `replicas` (a step like +2 or -1) or `to` (a count)"
        )
    lo, hi = values.get("min_replicas"), values.get("max_replicas")
    if lo is not None and hi is not None and lo > hi:
        raise errors.ParamError("min_replicas", f"{lo} is above max_replicas {hi}")


class Scale(_OnWorkload):
    type: ClassVar[str] = "kubernetes.scale"
    # A step applied twice is two steps: never repeated by the engine. Requests are
    # retried here (the PUT carries the resourceVersion read, so it cannot double).
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "namespace": _NAMESPACE,
            "name": _NAME,
            "kind": params.Field(
                params.choice("deployment", "statefulset"),
                required=False,
                default="deployment",
                doc="the workload's kind",
            ),
            "replicas": params.Field(
                _step(), required=False, doc="a step: +N adds, -N removes (or use `to`)"
            ),
            "to": params.Field(
                params.integer(lo=0, hi=MAX_REPLICAS),
                required=False,
                doc="an absolute replica count (or use `replicas`)",
            ),
            "min_replicas": params.Field(
                params.integer(lo=0, hi=MAX_REPLICAS), doc="never below this (required)"
            ),
            "max_replicas": params.Field(
                params.integer(lo=1, hi=MAX_REPLICAS), doc="never above this (required)"
            ),
        },
        literal=frozenset({"min_replicas", "max_replicas"}),
        across=_scale_across,
    )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._scale(values, ctx, dry=False)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._scale(values, ctx, dry=True)

    @staticmethod
    def desired(values: Mapping[str, Any], current: int) -> tuple[int, str]:
        """The replica count to set, and why it differs from the request (or "").

        A change never goes the other way from what was asked (as AWS's `_plan`): `to:
        100` on a deployment a person scaled to 20 above `max_replicas: 10` is a request
        for more, and clamping it to 10 would cut capacity; `to: 0` below `min_replicas`
        must not add replicas. Both leave `current`, with the reason.
        """
        lo, hi = values["min_replicas"], values["max_replicas"]
        step = values.get("replicas")
        if step is None:
            want = int(values["to"])
            got = min(max(want, lo), hi)
            if want == current:
                return current, ""
            if (want - current) * (got - current) <= 0:
                if want > current:
                    return (
                        current,
                        f"already at or beyond the bound: to {want} asks for "
                        f"more, and {current} is at or above max_replicas {hi}",
                    )
                return (
                    current,
                    f"already at or beyond the bound: to {want} asks for "
                    f"fewer, and {current} is at or below min_replicas {lo}",
                )
            return got, (f"clamped from {want} to {got}" if got != want else "")
        want = current + step
        # A step up never lowers (current may already be above max), a step down never raises.
        got = max(current, min(want, hi)) if step > 0 else min(current, max(want, lo))
        return got, (f"clamped from {want} to {got}" if got != want else "")

    async def _scale(self, values: Mapping[str, Any], ctx: Context, *, dry: bool) -> Result:
        kind, ns, name = values["kind"], values["namespace"], values["name"]
        lo, hi = values["min_replicas"], values["max_replicas"]
        what = f"{kind} {ns}/{name}"
        request = f"{values['replicas']:+d}" if "replicas" in values else f"to {values['to']}"
        cfg = _cfg(ctx)
        if cfg is None:
            return _not_checked(f"scale {what} {request} within {lo}..{hi}")
        kube, deadline = await _client(ctx, cfg), _deadline(ctx)
        from remediator.clients.kubernetes import Conflict  # noqa: PLC0415 - loaded by _client

        obj = await kube.get(kind, ns, name, deadline=deadline)
        _refuse_protected(obj, cfg, what)
        # An HPA owns the replicas of its target: a manual change is undone within its
        # sync period (15 s), so it would look like a fix and not be one. Refused; change
        # the HPA's minReplicas/maxReplicas instead (kubernetes.scale_hpa).
        api_kind = {"deployment": "Deployment", "statefulset": "StatefulSet"}[kind]
        for hpa in await kube.list_hpas(ns, deadline=deadline):
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if ref.get("kind") == api_kind and ref.get("name") == name:
                hpa_name = (hpa.get("metadata") or {}).get("name", "?")
                raise errors.NotAllowed(
                    "name",
                    f"{what} is managed by HorizontalPodAutoscaler {ns}/{hpa_name}: a manual "
                    "scale would be undone; change the HPA's bounds instead "
                    "(kubernetes.scale_hpa)",
                )
        data: dict[str, Any] = {
            "kind": kind, "namespace": ns, "name": name, "request": request,
            "min_replicas": lo, "max_replicas": hi, "dry_run": dry,
        }  # fmt: skip
        tried: int | None = None
        for attempt in (1, 2):  # a 409 means it changed since it was read: re-read, once
            scale = await kube.get_scale(kind, ns, name, deadline=deadline)
            current = int((scale.get("spec") or {}).get("replicas") or 0)
            if tried is not None and current == tried and not dry:
                # The write refused with 409 may have been ours, sent again after a lost
                # answer: the count is what was asked for, and a new step would double it.
                data["confirmed_after_conflict"] = True
                break
            target, note = self.desired(values, current)
            data |= {"from": current, "to": target}
            data.pop("clamped", None)
            if note and target != current:
                data["clamped"] = note
            if target == current:
                step = values.get("replicas") or 0
                if step > 0 and current >= hi:
                    why = f"at or above max_replicas {hi}"
                elif step < 0 and current <= lo:
                    why = f"at or below min_replicas {lo}"
                elif note:  # `to` the other way from what clamping allows
                    why = note
                else:
                    why = f"already at {current}"
                data["already"] = why
                return Result(
                    detail=f"{what} has {current} replicas, {why}: no change",
                    changed=False,
                    data=data,
                )
            version = str((scale.get("metadata") or {}).get("resourceVersion") or "")
            try:
                await kube.replace_scale(
                    kind, ns, name, target, resource_version=version, dry_run=dry,
                    deadline=deadline,
                )  # fmt: skip
                break
            except Conflict:
                tried = target
                if attempt == 2:
                    raise
        verb = "would scale (server-side dry run accepted)" if dry else "scaled"
        extra = f", {data['clamped']}" if "clamped" in data else ""
        return Result(
            detail=f"{verb} {what} from {data['from']} to {data['to']} replicas "
            f"({request}, bounds {lo}..{hi}{extra})",
            data=data,
        )


# --------------------------------------------------------------------------- delete pods


def _pods_across(values: Mapping[str, Any]) -> None:
    if ("selector" in values) == ("pod" in values):
        raise errors.ParamError("selector", "give either `selector` (labels) or `pod` (a name)")


def _selector_text(selector: Mapping[str, Any]) -> str:
    """A LabelSelector (matchLabels + matchExpressions) as the list query's string."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        key, op, vals = e.get("key", ""), e.get("operator", ""), e.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(vals)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(vals)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def _controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


@dataclasses.dataclass(slots=True)
class _Owner:
    """The workload that recreates a pod, and how many of its pods are ready."""

    kind: str
    namespace: str
    name: str
    obj: dict[str, Any]
    ready: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class DeletePod:
    type: ClassVar[str] = "kubernetes.delete_pod"
    # Run again, it would pick the next pods: never repeated by the engine.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "namespace": _NAMESPACE,
            "selector": params.Field(
                _label_selector(),
                required=False,
                doc="pods whose labels equal all of these (or use `pod`)",
            ),
            "pod": params.Field(params.dns_subdomain(), required=False, doc="one pod by name"),
            "max_pods": params.Field(
                params.integer(lo=1, hi=100),
                required=False,
                default=1,
                doc="at most this many pods deleted per action",
            ),
            "allow_last_ready": params.Field(
                _flag(),
                required=False,
                default=False,
                doc="may delete the last ready pod of its owner (default false: never)",
            ),
        },
        literal=frozenset({"max_pods", "allow_last_ready"}),
        across=_pods_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: settings.Settings) -> None:
        _check_workload(values, base.family_config(settings, SECTION))

    def target(self, values: Mapping[str, Any]) -> str:
        if "pod" in values:
            return f"{values['namespace']}/pod/{values['pod']}"
        labels = ",".join(f"{k}={v}" for k, v in sorted(values["selector"].items()))
        return f"{values['namespace']}/pods/{labels}"

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._delete(values, ctx, dry=False)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._delete(values, ctx, dry=True)

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        cfg = _cfg(ctx)
        if cfg is None:
            return {"note": f"not captured: no `{SECTION}:` config"}
        kube, deadline = await _client(ctx, cfg), _deadline(ctx)
        ns = values["namespace"]
        if "pod" in values:
            selected = {"field_selector": f"metadata.name={values['pod']}"}
        else:
            labels = ",".join(f"{k}={v}" for k, v in sorted(values["selector"].items()))
            selected = {"label_selector": labels}
        pods = await kube.list_pods(ns, deadline=deadline, **selected)
        return await pods_evidence(kube, ns, pods, about=[], deadline=deadline)

    async def _delete(self, values: Mapping[str, Any], ctx: Context, *, dry: bool) -> Result:
        ns, limit = values["namespace"], values["max_pods"]
        what = self.target(values)
        cfg = _cfg(ctx)
        if cfg is None:
            return _not_checked(f"delete at most {limit} pod(s) of {what}")
        kube, deadline = await _client(ctx, cfg), _deadline(ctx)
        from remediator.clients.kubernetes import (  # noqa: PLC0415 - loaded on first use
            Conflict,
            NotFound,
        )

        if "pod" in values:
            pods = await kube.list_pods(
                ns, field_selector=f"metadata.name={values['pod']}", deadline=deadline
            )
        else:
            selector = ",".join(f"{k}={v}" for k, v in sorted(values["selector"].items()))
            pods = await kube.list_pods(ns, label_selector=selector, deadline=deadline)
        pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
        # The broken ones first (not ready), then by name: deterministic, and the pods a
        # runbook means by "the bad pod" go before healthy ones.
        pods.sort(key=lambda p: (_ready(p), (p.get("metadata") or {}).get("name", "")))
        owners: dict[str, _Owner | str] = {}
        deleted: list[str] = []
        kept: list[dict[str, str]] = []
        for pod in pods:
            name = (pod.get("metadata") or {}).get("name", "")
            if len(deleted) >= limit:
                kept.append({"pod": name, "why": f"max_pods {limit} reached"})
                continue
            mark = _protected(pod, cfg.protected_key)
            owner = (
                f"pod is protected ({mark})"
                if mark is not None
                else await self._owner(kube, cfg, pod, owners, deadline)
            )
            if isinstance(owner, str):
                kept.append({"pod": name, "why": owner})
                continue
            ready = _ready(pod)
            if ready and owner.ready <= 1 and not values["allow_last_ready"]:
                kept.append({"pod": name, "why": f"last ready pod of {owner.label}"})
                continue
            uid = str((pod.get("metadata") or {}).get("uid") or "")
            try:
                await kube.delete_pod(ns, name, uid=uid, dry_run=dry, deadline=deadline)
            except (NotFound, Conflict):  # gone, or replaced by a new pod of that name
                kept.append({"pod": name, "why": "already gone"})
                continue
            deleted.append(name)
            owner.ready -= ready
        data = {
            "namespace": ns, "matched": len(pods), "deleted": deleted, "kept": kept,
            "max_pods": limit, "dry_run": dry,
        }  # fmt: skip
        if not pods:
            return Result(detail=f"no pod matches {what}: no change", changed=False, data=data)
        if not deleted:
            why = "; ".join(f"{k['pod']}: {k['why']}" for k in kept[:5])
            return Result(detail=f"no pod deleted ({why}): no change", changed=False, data=data)
        verb = "would delete (server-side dry run accepted)" if dry else "deleted"
        return Result(
            detail=f"{verb} {len(deleted)} of {len(pods)} pod(s) matching {what}: "
            f"{', '.join(deleted)}" + (f"; kept {len(kept)}" if kept else ""),
            data=data,
        )

    async def _owner(
        self,
        kube: KubeClient,
        cfg: KubernetesConfig,
        pod: Mapping[str, Any],
        seen: dict[str, _Owner | str],
        deadline: float,
    ) -> _Owner | str:
        """The workload that recreates this pod (with its ready count), or why none may
        be acted on. A pod nothing recreates is never deleted."""
        ns = (pod.get("metadata") or {}).get("namespace") or ""
        ref = _controller(pod)
        if ref is None or ref.get("kind") not in ("ReplicaSet", "StatefulSet", "DaemonSet"):
            kind = ref.get("kind") if ref else "nothing"
            return f"owned by {kind}: not recreated by a ReplicaSet, StatefulSet or DaemonSet"
        key = f"{ref['kind']}/{ref.get('name')}"
        if key in seen:
            return seen[key]
        kind, name = str(ref["kind"]).lower(), str(ref.get("name", ""))
        obj = await kube.get(kind, ns, name, deadline=deadline)
        owner = _Owner(kind, ns, name, obj)
        if kind == "replicaset":
            top = _controller(obj)
            if top is not None and top.get("kind") == "Deployment":
                dep = await kube.get("deployment", ns, str(top.get("name")), deadline=deadline)
                owner = _Owner("deployment", ns, str(top.get("name")), dep)
        why = _protected(owner.obj, cfg.protected_key) or _protected(obj, cfg.protected_key)
        if why is None and f"{ns}/{owner.kind}/{owner.name}" in cfg.protected_workloads:
            why = "listed in kubernetes.protected_workloads"
        found: _Owner | str = owner
        if why is not None:
            found = f"{owner.label} is protected ({why})"
        else:
            owner.ready = await self._ready_count(kube, owner, deadline)
        seen[key] = found
        return found

    @staticmethod
    async def _ready_count(kube: KubeClient, owner: _Owner, deadline: float) -> int:
        """Ready pods of the owner, from the pods themselves (its status may lag)."""
        selector = _selector_text((owner.obj.get("spec") or {}).get("selector") or {})
        if not selector:
            return 0  # an owner that selects nothing: count none, delete nothing ready
        pods = await kube.list_pods(owner.namespace, label_selector=selector, deadline=deadline)
        uid = (owner.obj.get("metadata") or {}).get("uid")
        mine = [
            p
            for p in pods
            # A Deployment owns its pods through ReplicaSets it selects the same way.
            if owner.kind == "deployment" or (_controller(p) or {}).get("uid") == uid
        ]
        return sum(_ready(p) for p in mine)


# --------------------------------------------------------------------------- undo

REVISION = "deployment.kubernetes.io/revision"
POD_TEMPLATE_HASH = "pod-template-hash"
ROLLED_BACK_FROM = "remediator.io/rolled-back-from"
"""Annotation on a workload rolled back: the ReplicaSets or ControllerRevisions it was
rolled back *from*, newest first. A later undo never picks them again: the Deployment
controller renumbers the revision rolled back to as the newest, so a plain "previous"
would otherwise flip straight back to the bad one."""
_MARKS_KEPT = 5
_KEEP_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
        ROLLED_BACK_FROM,
    }
)
"""A Deployment's annotations a rollback keeps from the Deployment rather than copying
them from the ReplicaSet (kubectl's annotationsToSkip, plus our own mark)."""
GITOPS_MARKERS: tuple[tuple[str, str, str], ...] = (
    ("annotations", "argocd.argoproj.io/tracking-id", "Argo CD"),
    ("labels", "argocd.argoproj.io/instance", "Argo CD"),
    ("labels", "kustomize.toolkit.fluxcd.io/name", "Flux"),
    ("labels", "helm.toolkit.fluxcd.io/name", "Flux"),
)
"""(where, key, controller): the marks Argo CD (annotation tracking; the label its
`application.instanceLabelKey` names when set) and Flux (kustomize and helm
controllers) leave on what they apply. Argo CD's older default, label tracking with
`app.kubernetes.io/instance`, is not listed: Helm sets that label too."""
_GITOPS_MANAGERS = {
    "argocd-controller": "Argo CD",
    "argocd-application-controller": "Argo CD",
    "kustomize-controller": "Flux",
    "helm-controller": "Flux",
}
"""Field managers (server-side apply) of the same controllers."""
_FLUX_DISABLED = "kustomize.toolkit.fluxcd.io/reconcile"


def gitops_manager(obj: Mapping[str, Any]) -> str | None:
    """Which GitOps controller reconciles this object (and by what mark), or None."""
    meta = obj.get("metadata") or {}
    flux_off = (meta.get("annotations") or {}).get(_FLUX_DISABLED) == "disabled"
    for where, key, who in GITOPS_MARKERS:
        if key in (meta.get(where) or {}) and not (who == "Flux" and flux_off):
            return f"{who} ({where[:-1]} {key})"
    for entry in meta.get("managedFields") or []:
        manager = _GITOPS_MANAGERS.get(str(entry.get("manager", "")))
        if manager is not None and not (manager == "Flux" and flux_off):
            return f"{manager} (field manager {entry.get('manager')})"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Revision:
    """One entry of a workload's history: a ReplicaSet or a ControllerRevision."""

    number: int
    name: str
    template: dict[str, Any]
    """The pod template it holds, without the pod-template-hash label."""
    annotations: dict[str, str]

    @property
    def images(self) -> str:
        containers = (self.template.get("spec") or {}).get("containers") or []
        return ", ".join(str(c.get("image", "?")) for c in containers) or "?"


def _bare_template(template: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(template))
    out.pop("$patch", None)
    labels = (out.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(POD_TEMPLATE_HASH, None)
    return out


def _history(kind: str, obj: Mapping[str, Any], items: list[dict[str, Any]]) -> list[_Revision]:
    """The revisions of `obj` among `items`, oldest first (only those it controls)."""
    uid = (obj.get("metadata") or {}).get("uid")
    out = []
    for item in items:
        if (_controller(item) or {}).get("uid") != uid:
            continue
        meta = item.get("metadata") or {}
        if kind == "deployment":
            raw = (meta.get("annotations") or {}).get(REVISION, "")
            template = (item.get("spec") or {}).get("template") or {}
        else:
            raw = item.get("revision", "")
            template = ((item.get("data") or {}).get("spec") or {}).get("template") or {}
        if not re.fullmatch(r"[0-9]{1,18}", str(raw)):
            continue  # no revision number: not part of the history kubectl sees either
        out.append(
            _Revision(
                int(raw),
                str(meta.get("name", "")),
                _bare_template(template),
                dict(meta.get("annotations") or {}),
            )
        )
    return sorted(out, key=lambda r: r.number)


class RolloutUndo(_OnWorkload):
    type: ClassVar[str] = "kubernetes.rollout_undo"
    # Run again it would step back once more: never repeated by the engine. A request
    # is retried here with the same body, whose resourceVersion makes a repeat a 409.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "namespace": _NAMESPACE,
            "name": _NAME,
            "kind": _KIND,
            "to_revision": params.Field(
                params.integer(lo=1, hi=10**9),
                required=False,
                doc="roll back to this revision (`kubectl rollout history`); default: the "
                "previous one",
            ),
        },
        literal=frozenset({"to_revision"}),
    )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._undo(values, ctx, dry=False)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._undo(values, ctx, dry=True)

    async def _undo(self, values: Mapping[str, Any], ctx: Context, *, dry: bool) -> Result:
        kind, ns, name = values["kind"], values["namespace"], values["name"]
        what = f"{kind} {ns}/{name}"
        to = values.get("to_revision")
        cfg = _cfg(ctx)
        if cfg is None:
            return _not_checked(
                f"roll back {what} to " + (f"revision {to}" if to else "its previous revision")
            )
        kube, deadline = await _client(ctx, cfg), _deadline(ctx)
        from remediator.clients.kubernetes import Conflict  # noqa: PLC0415 - loaded by _client

        sent: dict[str, Any] | None = None
        for attempt in (1, 2):  # a 409 means it changed since it was read: re-read, once
            obj = await kube.get(kind, ns, name, deadline=deadline)
            current_template = _bare_template((obj.get("spec") or {}).get("template") or {})
            if sent is not None and current_template == sent["to"].template and not dry:
                # The write refused with 409 may have been ours, sent again after a lost
                # answer: it already runs the template asked for.
                return self._done(what, sent, dry=dry, confirmed=True)
            plan = await self._plan(
                kube=kube, cfg=cfg, kind=kind, obj=obj, to=to, what=what, deadline=deadline
            )
            if isinstance(plan, Result):
                return plan
            body, patch_type = self._patch(kind, obj, plan)
            try:
                after = await kube.patch(
                    kind, ns, name, body, dry_run=dry, deadline=deadline, patch_type=patch_type
                )
            except Conflict:
                sent = plan
                if attempt == 2:
                    raise
                continue
            got = _bare_template((after.get("spec") or {}).get("template") or {})
            if got != plan["to"].template:
                raise errors.PermanentError(
                    f"{what}: the API server accepted the rollback but answered with another "
                    "template (a mutating webhook?); check `kubectl rollout history`"
                )
            return self._done(what, plan, dry=dry)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    async def _plan(
        self,
        *,
        kube: KubeClient,
        cfg: KubernetesConfig,
        kind: str,
        obj: dict[str, Any],
        to: int | None,
        what: str,
        deadline: float,
    ) -> dict[str, Any] | Result:
        """The revision to roll back to (with the current one), or the no-change Result."""
        _refuse_protected(obj, cfg, what)
        managed = gitops_manager(obj)
        if managed is not None and not cfg.rollback_gitops_managed:
            raise errors.NotAllowed(
                "name",
                f"{what} is managed by {managed}: its self-heal would re-apply what Git "
                "holds and undo the rollback; roll back in Git, or set "
                "kubernetes.rollback_gitops_managed: true where it does not self-heal",
            )
        spec = obj.get("spec") or {}
        if kind == "deployment" and spec.get("paused"):
            raise errors.PermanentError(
                f"{what} is paused: a rollback would not roll out (kubectl rollout resume first)"
            )
        selector = _selector_text(spec.get("selector") or {})
        if not selector:
            raise errors.PermanentError(f"{what} selects no pods: it has no history to use")
        ns = (obj.get("metadata") or {}).get("namespace", "")
        history = _history(
            kind, obj, await kube.list_history(kind, ns, selector, deadline=deadline)
        )
        numbers = ", ".join(str(r.number) for r in history) or "none"
        template = _bare_template(spec.get("template") or {})
        running = [r for r in history if r.template == template]
        current = running[-1] if running else (history[-1] if history else None)
        if current is None:
            raise errors.PermanentError(f"{what} has no rollout history: nothing to roll back to")
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        marks = [m for m in str(annotations.get(ROLLED_BACK_FROM, "")).split(",") if m]
        data = {"from_revision": current.number, "revisions": numbers}
        if to is not None:
            found = [r for r in history if r.number == to]
            if not found:
                raise errors.PermanentError(f"{what} has no revision {to} (revisions: {numbers})")
            chosen = found[0]
        else:
            older = [
                r
                for r in history
                if r.number < current.number and r.template != template and r.name not in marks
            ]
            if not older:
                skipped = [r.number for r in history if r.name in marks]
                why = f"; skipped {skipped}: rolled back from before" if skipped else ""
                raise errors.PermanentError(
                    f"{what} has no earlier revision to roll back to (revisions: {numbers}{why})"
                )
            chosen = older[-1]
        if chosen.template == template:
            return Result(
                detail=f"{what} already runs the template of revision {chosen.number} "
                f"({chosen.images}): no change",
                changed=False,
                data={**data, "to_revision": chosen.number, "already": True},
            )
        marks = [current.name, *[m for m in marks if m != current.name]][:_MARKS_KEPT]
        return {"from": current, "to": chosen, "marks": marks, **data}

    @staticmethod
    def _patch(kind: str, obj: Mapping[str, Any], plan: Mapping[str, Any]) -> tuple[Any, str]:
        """What kubectl sends (a JSON patch of a Deployment's template and annotations; a
        ControllerRevision's data as a strategic-merge patch), plus the resourceVersion
        read as a precondition and our mark of what it was rolled back from."""
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion") or "")
        mark = ",".join(plan["marks"])
        chosen: _Revision = plan["to"]
        if kind == "deployment":
            mine = meta.get("annotations") or {}
            annotations = {k: v for k, v in mine.items() if k in _KEEP_ANNOTATIONS}
            annotations |= {
                k: v for k, v in chosen.annotations.items() if k not in _KEEP_ANNOTATIONS
            }
            annotations[ROLLED_BACK_FROM] = mark
            ops = [
                {"op": "replace", "path": "/metadata/resourceVersion", "value": version},
                {"op": "replace", "path": "/spec/template", "value": chosen.template},
                {"op": "add", "path": "/metadata/annotations", "value": annotations},
            ]
            return ops, "json"
        body = {
            "metadata": {"resourceVersion": version, "annotations": {ROLLED_BACK_FROM: mark}},
            "spec": {"template": {**copy.deepcopy(chosen.template), "$patch": "replace"}},
        }
        return body, "strategic"

    @staticmethod
    def _done(what: str, plan: Mapping[str, Any], *, dry: bool, confirmed: bool = False) -> Result:
        before: _Revision = plan["from"]
        after: _Revision = plan["to"]
        data = {
            "from_revision": before.number,
            "to_revision": after.number,
            "from_images": before.images,
            "to_images": after.images,
            "revisions": plan["revisions"],
            "dry_run": dry,
        }
        if confirmed:
            data["confirmed_after_conflict"] = True
        verb = "would roll back (server-side dry run accepted)" if dry else "rolled back"
        return Result(
            detail=f"{verb} {what} from revision {before.number} ({before.images}) to "
            f"revision {after.number} ({after.images})",
            data=data,
        )


# --------------------------------------------------------------------------- HPA


def _hpa_change() -> params.Validator:
    """`{step: +N}` / `{step: -N}` or `{to: N}`: a change of one HPA bound, written in the
    rule (a mapping, so that YAML's `+2` can never be read as "set to 2")."""
    step, to = _step(), params.integer(lo=1, hi=MAX_REPLICAS)

    def check(field: str, value: Any) -> dict[str, int]:
        if not isinstance(value, Mapping) or len(value) != 1 or set(value) - {"step", "to"}:
            raise errors.ParamError(field, "expected {step: +N} (or -N), or {to: N}")
        [(key, raw)] = value.items()
        if _is_template(raw):
            if not raw.is_literal:
                raise errors.ParamError(
                    field,
                    "must be written in the rule, not a template: a label must never "
                    "choose a bound",
                )
            raw = raw.render_literal()
        return {key: (step if key == "step" else to)(f"{field}.{key}", raw)}

    return check


def _hpa_across(values: Mapping[str, Any]) -> None:
    if "min_replicas" not in values and "max_replicas" not in values:
        raise errors.ParamError("min_replicas", "give min_replicas, max_replicas or both")
    lo, hi = values.get("floor"), values.get("ceiling")
    if isinstance(lo, int) and isinstance(hi, int):
        if lo > hi:
            raise errors.ParamError("floor", f"{lo} is above ceiling {hi}")
        for field in ("min_replicas", "max_replicas"):
            to = (
                (values.get(field) or {}).get("to") if isinstance(values.get(field), dict) else None
            )
            if isinstance(to, int) and not lo <= to <= hi:
                raise errors.ParamError(field, f"to {to} is outside floor..ceiling ({lo}..{hi})")


class ScaleHpa:
    type: ClassVar[str] = "kubernetes.scale_hpa"
    # A step applied twice is two steps: never repeated by the engine. The patch carries
    # the resourceVersion read, so a request retried here cannot double it either.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "namespace": _NAMESPACE,
            "name": params.Field(params.dns_subdomain(), doc="the HorizontalPodAutoscaler's name"),
            "min_replicas": params.Field(
                _hpa_change(),
                required=False,
                doc="change of spec.minReplicas: {step: +N} or {to: N}",
            ),
            "max_replicas": params.Field(
                _hpa_change(),
                required=False,
                doc="change of spec.maxReplicas: {step: +N} or {to: N}",
            ),
            "floor": params.Field(
                params.bound(lo=1, hi=MAX_REPLICAS),
                doc="neither bound of the HPA is ever set below this (required)",
            ),
            "ceiling": params.Field(
                params.bound(lo=1, hi=MAX_REPLICAS),
                doc="neither bound of the HPA is ever set above this (required)",
            ),
        },
        literal=frozenset({"min_replicas", "max_replicas", "floor", "ceiling"}),
        across=_hpa_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: settings.Settings) -> None:
        _check_workload({"namespace": values["namespace"]}, base.family_config(settings, SECTION))

    def target(self, values: Mapping[str, Any]) -> str:
        return f"{values['namespace']}/hpa/{values['name']}"

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._scale(values, ctx, dry=False)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._scale(values, ctx, dry=True)

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        cfg = _cfg(ctx)
        if cfg is None:
            return {"note": f"not captured: no `{SECTION}:` config"}
        kube, deadline = await _client(ctx, cfg), _deadline(ctx)
        hpa = await kube.get_hpa(values["namespace"], values["name"], deadline=deadline)
        spec, status = hpa.get("spec") or {}, hpa.get("status") or {}
        out: dict[str, Any] = {
            "hpa": {
                "min_replicas": spec.get("minReplicas", 1),
                "max_replicas": spec.get("maxReplicas"),
                "current_replicas": status.get("currentReplicas"),
                "desired_replicas": status.get("desiredReplicas"),
            }
        }
        ref = spec.get("scaleTargetRef") or {}
        kind = str(ref.get("kind", "")).lower()
        if kind in ("deployment", "statefulset"):
            out |= await workload_evidence(ctx, kind, values["namespace"], str(ref.get("name")))
        return out

    @staticmethod
    def desired(
        values: Mapping[str, Any], current_min: int, current_max: int
    ) -> tuple[int, int, list[str]]:
        """The new (minReplicas, maxReplicas) within floor..ceiling, and notes on why
        they differ from the request; each bound moves only the way it was asked."""
        lo, hi = values["floor"], values["ceiling"]
        notes: list[str] = []
        new_min, new_max = current_min, current_max
        for field, current in (("min_replicas", current_min), ("max_replicas", current_max)):
            if field not in values:
                continue
            got, why = params.plan(current, values[field], lo, hi)
            if why and got == current:
                notes.append(f"{field}: {why}")
            if field == "min_replicas":
                new_min = got
            else:
                new_max = got
        if new_min > new_max:  # the HPA refuses min > max: the moving bound stops at the other
            if new_min != current_min:
                notes.append(f"min_replicas held at maxReplicas {new_max}")
                new_min = max(current_min, new_max) if new_max >= current_min else current_min
            else:
                notes.append(f"max_replicas held at minReplicas {new_min}")
                new_max = new_min
        return new_min, new_max, notes

    async def _scale(self, values: Mapping[str, Any], ctx: Context, *, dry: bool) -> Result:
        ns, name = values["namespace"], values["name"]
        lo, hi = values["floor"], values["ceiling"]
        what = f"HorizontalPodAutoscaler {ns}/{name}"
        asked = ", ".join(
            f"{f} {_show_change(values[f])}"
            for f in ("min_replicas", "max_replicas")
            if f in values
        )
        cfg = _cfg(ctx)
        if cfg is None:
            return _not_checked(f"change {what}: {asked} within {lo}..{hi}")
        kube, deadline = await _client(ctx, cfg), _deadline(ctx)
        from remediator.clients.kubernetes import Conflict  # noqa: PLC0415 - loaded by _client

        tried: tuple[int, int] | None = None
        for attempt in (1, 2):  # a 409 means it changed since it was read: re-read, once
            hpa = await kube.get_hpa(ns, name, deadline=deadline)
            _refuse_protected(hpa, cfg, what)
            await self._refuse_protected_target(kube, cfg, hpa, ns, deadline)
            spec = hpa.get("spec") or {}
            cur_min, cur_max = int(spec.get("minReplicas") or 1), int(spec.get("maxReplicas") or 1)
            if tried is not None and (cur_min, cur_max) == tried and not dry:
                # The write refused with 409 may have been ours, sent again after a lost
                # answer: the bounds are what was asked for, and a new step would double it.
                return self._result(
                    what, (cur_min, cur_max), tried, values=values, notes=[], dry=dry,
                    confirmed=True,
                )  # fmt: skip
            new_min, new_max, notes = self.desired(values, cur_min, cur_max)
            data = {
                "namespace": ns, "name": name, "floor": lo, "ceiling": hi,
                "min_replicas": {"before": cur_min, "after": new_min},
                "max_replicas": {"before": cur_max, "after": new_max},
            }  # fmt: skip
            if (new_min, new_max) == (cur_min, cur_max):
                why = "; ".join(notes) or "already there"
                return Result(
                    detail=f"{what} has minReplicas {cur_min}, maxReplicas {cur_max}; {why}: "
                    "no change",
                    changed=False,
                    data=data,
                )
            change = {
                k: v
                for k, v, old in (
                    ("minReplicas", new_min, cur_min),
                    ("maxReplicas", new_max, cur_max),
                )
                if v != old
            }
            version = str((hpa.get("metadata") or {}).get("resourceVersion") or "")
            try:
                after = await kube.patch_hpa(
                    ns, name, change, resource_version=version, dry_run=dry, deadline=deadline
                )
            except Conflict:
                tried = (new_min, new_max)
                if attempt == 2:
                    raise
                continue
            got = after.get("spec") or {}
            if (got.get("minReplicas", 1), got.get("maxReplicas")) != (new_min, new_max):
                raise errors.PermanentError(
                    f"{what}: the API server answered minReplicas {got.get('minReplicas')}, "
                    f"maxReplicas {got.get('maxReplicas')} instead of {new_min}, {new_max}"
                )
            return self._result(
                what, (cur_min, cur_max), (new_min, new_max), values=values, notes=notes,
                dry=dry,
            )  # fmt: skip
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    @staticmethod
    async def _refuse_protected_target(
        kube: KubeClient, cfg: KubernetesConfig, hpa: Mapping[str, Any], ns: str, deadline: float
    ) -> None:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        kind, target = str(ref.get("kind", "")).lower(), str(ref.get("name", ""))
        if f"{ns}/{kind}/{target}" in cfg.protected_workloads:
            raise errors.NotAllowed(
                "name",
                f"its target {ns}/{kind}/{target} is listed in kubernetes.protected_workloads",
            )
        if kind in ("deployment", "statefulset"):
            obj = await kube.get(kind, ns, target, deadline=deadline)
            _refuse_protected(obj, cfg, f"its target {kind} {ns}/{target}")

    @staticmethod
    def _result(
        what: str,
        before: tuple[int, int],
        after: tuple[int, int],
        *,
        values: Mapping[str, Any],
        notes: list[str],
        dry: bool,
        confirmed: bool = False,
    ) -> Result:
        data: dict[str, Any] = {
            "min_replicas": {"before": before[0], "after": after[0]},
            "max_replicas": {"before": before[1], "after": after[1]},
            "floor": values["floor"],
            "ceiling": values["ceiling"],
            "dry_run": dry,
        }
        if notes:
            data["notes"] = notes
        if confirmed:
            data["confirmed_after_conflict"] = True
        verb = "would change (server-side dry run accepted)" if dry else "changed"
        extra = f"; {'; '.join(notes)}" if notes else ""
        return Result(
            detail=f"{verb} {what}: minReplicas {before[0]} → {after[0]}, maxReplicas "
            f"{before[1]} → {after[1]} (bounds {values['floor']}..{values['ceiling']}{extra})",
            data=data,
        )


def _show_change(change: Mapping[str, int]) -> str:
    if "step" in change:
        return f"{change['step']:+d}"
    return f"to {change['to']}"


# --------------------------------------------------------------------------- evidence

EVIDENCE_PODS = 10
"""Pods listed per workload (the worst first: not ready, then most restarted)."""
EVIDENCE_EVENTS = 10
"""Events kept (the newest first) of the workload and its worst pods."""
EVIDENCE_EVENT_PODS = 3
"""Pods whose events are fetched (one list request each), the worst first."""
LOG_LINES = 20
"""Lines of the previous container's log kept (`kubectl logs --previous --tail 20`)."""
LOG_BYTES = 4096
"""Bytes of log asked of the kubelet at most (a line of 1 MB stays bounded)."""
_API_KIND = {"deployment": "Deployment", "statefulset": "StatefulSet", "daemonset": "DaemonSet"}


async def workload_evidence(ctx: Context, kind: str, ns: str, name: str) -> dict[str, Any]:
    """What a workload looks like before acting: replicas, its pods' phases and restarts,
    the last events about it and its worst pods, the last lines the worst pod's previous
    container printed. A part that cannot be read becomes a note; the rest stays."""
    cfg = _cfg(ctx)
    if cfg is None:
        return {"note": f"not captured: no `{SECTION}:` config"}
    kube, deadline = await _client(ctx, cfg), _deadline(ctx)
    obj = await kube.get(kind, ns, name, deadline=deadline)
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    out: dict[str, Any] = {
        "workload": {
            "kind": kind,
            "name": f"{ns}/{name}",
            "replicas": spec.get("replicas"),
            "ready": status.get("readyReplicas", status.get("numberReady", 0)),
            "updated": status.get("updatedReplicas", status.get("updatedNumberScheduled", 0)),
            "available": status.get("availableReplicas", status.get("numberAvailable", 0)),
        }
    }
    selector = _selector_text(spec.get("selector") or {})
    pods = await kube.list_pods(ns, label_selector=selector, deadline=deadline) if selector else []
    about = [(_API_KIND.get(kind, kind), name)]
    return out | await pods_evidence(kube, ns, pods, about=about, deadline=deadline)


async def pods_evidence(
    kube: KubeClient,
    ns: str,
    pods: list[dict[str, Any]],
    *,
    about: list[tuple[str, str]],
    deadline: float,
) -> dict[str, Any]:
    """Phases, readiness and restarts of `pods`; the last events about `about` and the
    worst pods; the previous container's last log lines of the worst restarted pod."""
    pods = sorted(pods, key=lambda p: (_ready(p), -_restarts(p), _pod_name(p)))
    out: dict[str, Any] = {
        "pods_total": len(pods),
        "pods": [_pod_summary(p) for p in pods[:EVIDENCE_PODS]],
    }
    events: list[dict[str, Any]] = []
    notes: list[str] = []
    for kind, name in [*about, *(("Pod", _pod_name(p)) for p in pods[:EVIDENCE_EVENT_PODS])]:
        try:
            found = await kube.list_events(
                ns,
                field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
                deadline=deadline,
            )
        except errors.ActionError as exc:
            notes.append(evidence.note(exc, f"events of {kind} {name}"))
            continue
        events.extend(found)
    events.sort(key=_event_time, reverse=True)
    out["events"] = [_event_summary(e) for e in events[:EVIDENCE_EVENTS]]
    crashed = next((p for p in pods if _restarts(p) > 0), None)
    if crashed is not None:
        container = _restarted_container(crashed)
        try:
            text = await kube.pod_log(
                ns, _pod_name(crashed), container=container, previous=True,
                tail_lines=LOG_LINES, limit_bytes=LOG_BYTES, deadline=deadline,
            )  # fmt: skip
            out["previous_log"] = {
                "pod": _pod_name(crashed),
                "container": container,
                "lines": [line[: evidence.MAX_TEXT] for line in text.splitlines()[-LOG_LINES:]],
            }
        except errors.ActionError as exc:
            notes.append(evidence.note(exc, f"previous log of {_pod_name(crashed)}"))
    if notes:
        out["notes"] = notes
    return out


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def _restarts(pod: Mapping[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(c.get("restartCount") or 0) for c in statuses)


def _restarted_container(pod: Mapping[str, Any]) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    worst: Mapping[str, Any] = max(
        statuses, key=lambda c: int(c.get("restartCount") or 0), default={}
    )
    return str(
        worst.get("name") or ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name", "")
    )


def _pod_summary(pod: Mapping[str, Any]) -> dict[str, Any]:
    status = pod.get("status") or {}
    reason = ""
    for c in status.get("containerStatuses") or []:
        state, last = c.get("state") or {}, c.get("lastState") or {}
        reason = str(
            (state.get("waiting") or {}).get("reason")
            or (last.get("terminated") or {}).get("reason")
            or ""
        )
        if reason:
            break
    out = {
        "name": _pod_name(pod),
        "phase": status.get("phase", "Unknown"),
        "ready": _ready(pod),
        "restarts": _restarts(pod),
    }
    if reason:
        out["reason"] = reason
    return out


def _event_time(event: Mapping[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def _event_summary(event: Mapping[str, Any]) -> dict[str, Any]:
    about = event.get("involvedObject") or {}
    return {
        "time": _event_time(event),
        "type": event.get("type", ""),
        "reason": event.get("reason", ""),
        "object": f"{about.get('kind', '?')}/{about.get('name', '?')}",
        "message": str(event.get("message", ""))[:300],
        "count": event.get("count") or 1,
    }


registry.register(RolloutRestart())
registry.register(Scale())
registry.register(DeletePod())
registry.register(RolloutUndo())
registry.register(ScaleHpa())
