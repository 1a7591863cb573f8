"""`ecs.*`: redeploy and scale an ECS service.

ecs.force_new_deployment  UpdateService(forceNewDeployment) unless a rollout is under way
ecs.scale                 UpdateService(desiredCount) by step or to a value, within bounds
ecs.rollback              UpdateService(taskDefinition) back to the previous ACTIVE revision
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import errors
from remediator.actions import params, registry
from remediator.actions.aws import common
from remediator.actions.base import Context, Result
from remediator.settings import Settings

common.declare(
    "ecs",
    {
        "describe_services": common.Call("DescribeServices", ("ecs:DescribeServices",), False),
        "update_service": common.Call("UpdateService", ("ecs:UpdateService",), True),
        "describe_task_definition": common.Call(
            "DescribeTaskDefinition", ("ecs:DescribeTaskDefinition",), False, unscoped=True
        ),
        "list_task_definitions": common.Call(
            "ListTaskDefinitions", ("ecs:ListTaskDefinitions",), False, unscoped=True
        ),
    },
)


def _ecs_check(values: Mapping[str, Any], settings: Settings) -> common.AwsConfig | None:
    cfg = common.cfg(settings)
    cluster, service = (
        common.ref(values["cluster"], "cluster"),
        common.ref(values["service"], "service"),
    )
    if service.cluster is not None and service.cluster != cluster.name:
        raise errors.NotAllowed(
            "service", f"the ARN names cluster {service.cluster!r}, not {cluster.name!r}"
        )
    if cfg is None:
        return None
    common.check_place("cluster", cluster, cfg)
    common.check_place("service", service, cfg)
    common.check_listed("cluster", cluster.name, cfg.ecs_clusters, "aws.ecs.clusters")
    return cfg


def _ecs_names(values: Mapping[str, Any]) -> tuple[str, str]:
    return common.ref(values["cluster"], "cluster").name, common.ref(
        values["service"], "service"
    ).name


async def _describe_service(ctx: Context, cfg: common.AwsConfig, cluster: str, service: str) -> Any:
    where = f"{cluster}/{service}"
    answer = await common.call(
        ctx, cfg, "ecs", "describe_services",
        {"cluster": cluster, "services": [service]}, resource=where,
    )  # fmt: skip
    found = answer.get("services") or []
    if not found:
        reasons = ", ".join(str(f.get("reason")) for f in answer.get("failures") or [])
        raise errors.PermanentError(
            f"ecs DescribeServices {where}: no such service ({reasons or 'MISSING'}); "
            "check the cluster and service names"
        )
    svc = found[0]
    if svc.get("status") != "ACTIVE":
        raise errors.PermanentError(
            f"ecs service {where} is {svc.get('status')}, not ACTIVE: nothing to change"
        )
    return svc


def _rollout_in_progress(svc: Any) -> dict[str, Any] | None:
    """The deployment still rolling out, if any: IN_PROGRESS, or old tasks still draining."""
    deployments = [d for d in svc.get("deployments") or [] if isinstance(d, dict)]
    for d in deployments:
        if d.get("rolloutState") == "IN_PROGRESS":
            return d
    if len(deployments) > 1:  # a PRIMARY plus ACTIVE ones: the last rollout has not finished
        return next((d for d in deployments if d.get("status") == "PRIMARY"), deployments[0])
    return None


def _primary(svc: Any) -> dict[str, Any]:
    deployments = [d for d in svc.get("deployments") or [] if isinstance(d, dict)]
    return next((d for d in deployments if d.get("status") == "PRIMARY"), {})


def _task_definition(svc: Any) -> str:
    return str(svc.get("taskDefinition", "")).rpartition("/")[2]


_ECS_TARGET = {
    "cluster": params.Field(common.name_or_arn("cluster"), doc="ECS cluster name or ARN"),
    "service": params.Field(common.name_or_arn("service"), doc="ECS service name or ARN"),
}


class EcsForceNewDeployment:
    type: ClassVar[str] = "ecs.force_new_deployment"
    # Looks before it acts, so the engine may run it again after a temporary error
    # that happened before the write (a throttled or unreachable DescribeServices). The
    # write itself is sent once: after a 5xx or a lost answer the new deployment may
    # not show yet, so the action fails with "outcome unknown" instead (see `_call`).
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(dict(_ECS_TARGET))

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        _ecs_check(values, settings)

    def target(self, values: Mapping[str, Any]) -> str:
        return "/".join(_ecs_names(values))

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        return await service_evidence(values, ctx)

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[Any, Result | None]:
        cluster, service = _ecs_names(values)
        svc = await _describe_service(ctx, cfg, cluster, service)
        controller = (svc.get("deploymentController") or {}).get("type", "ECS")
        if controller != "ECS":
            raise errors.PermanentError(
                f"ecs service {cluster}/{service} uses the {controller} deployment "
                "controller: force a deployment through it (UpdateService cannot)"
            )
        busy = _rollout_in_progress(svc)
        if busy is None:
            return svc, None
        data = {"cluster": cluster, "service": service, "deployment_id": busy.get("id")}
        why = (
            f"deployment {busy.get('id')} is already in progress "
            f"(rolloutState {busy.get('rolloutState', 'unknown')}, "
            f"{busy.get('runningCount', '?')} of {busy.get('desiredCount', '?')} running)"
        )
        return svc, common.no_change(f"ecs service {cluster}/{service}", why, data)

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = _ecs_check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        cluster, service = _ecs_names(values)
        svc, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        before = _primary(svc).get("id")
        answer = await common.call(
            ctx, cfg, "ecs", "update_service",
            {"cluster": cluster, "service": service, "forceNewDeployment": True},
            resource=f"{cluster}/{service}",
            # A second forced deployment would replace the tasks the first just started.
            once=f"check the service's deployments (`aws ecs describe-services --cluster "
            f"{cluster} --services {service}`) before forcing another",
        )  # fmt: skip
        after = answer.get("service") or {}
        new = _primary(after).get("id")
        return Result(
            detail=f"forced a new deployment of ecs service {cluster}/{service}: {new} "
            f"(task definition {_task_definition(after)}, "
            f"desiredCount {after.get('desiredCount')})",
            data={
                "cluster": cluster,
                "service": service,
                "deployment_id": new,
                "previous_deployment_id": before,
                "task_definition": _task_definition(after),
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cluster, service = _ecs_names(values)
        cfg = _ecs_check(values, ctx.settings)
        if cfg is None:
            return common.not_checked(
                f"would force a new deployment of ecs service {cluster}/{service}"
            )
        svc, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(
            detail=f"would force a new deployment of ecs service {cluster}/{service} "
            f"(task definition {_task_definition(svc)}, {svc.get('runningCount')} of "
            f"{svc.get('desiredCount')} running)",
            data={"cluster": cluster, "service": service, "deployment_id": _primary(svc).get("id")},
        )


def _scale_across(values: Mapping[str, Any]) -> None:
    common.one_of_step_or_to(values)
    common.ordered(values, "min_desired_count", "max_desired_count")


class EcsScale:
    type: ClassVar[str] = "ecs.scale"
    # Not idempotent: a step run again after a lost answer would step twice. botocore's
    # own retries are safe (they resend the same absolute desiredCount).
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            **_ECS_TARGET,
            "step": params.Field(
                params.integer(lo=-1000, hi=1000), required=False, doc="change desiredCount by"
            ),
            "to": params.Field(
                params.integer(lo=0, hi=5000), required=False, doc="set desiredCount to"
            ),
            "min_desired_count": params.Field(params.bound(lo=0, hi=5000), doc="lower bound"),
            "max_desired_count": params.Field(params.bound(lo=1, hi=5000), doc="upper bound"),
        },
        literal=frozenset({"min_desired_count", "max_desired_count"}),
        across=_scale_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        _ecs_check(values, settings)

    def target(self, values: Mapping[str, Any]) -> str:
        return "/".join(_ecs_names(values))

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        return await service_evidence(values, ctx)

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[int, int, Result | None]:
        cluster, service = _ecs_names(values)
        svc = await _describe_service(ctx, cfg, cluster, service)
        current = int(svc.get("desiredCount", 0))
        lo, hi = values["min_desired_count"], values["max_desired_count"]
        new, why = params.plan(current, values, lo, hi)
        if new != current:
            return current, new, None
        data = {
            "cluster": cluster,
            "service": service,
            "desired_count": current,
            "bounds": [lo, hi],
        }
        return current, new, common.no_change(f"ecs service {cluster}/{service}", why, data)

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = _ecs_check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        cluster, service = _ecs_names(values)
        current, new, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        answer = await common.call(
            ctx, cfg, "ecs", "update_service",
            {"cluster": cluster, "service": service, "desiredCount": new},
            resource=f"{cluster}/{service}",
        )  # fmt: skip
        after = int((answer.get("service") or {}).get("desiredCount", new))
        lo, hi = values["min_desired_count"], values["max_desired_count"]
        return Result(
            detail=f"scaled ecs service {cluster}/{service}: desiredCount {current} → {after}"
            f"{common.bounds_note(values, lo, hi, new, current)}",
            data={
                "cluster": cluster,
                "service": service,
                "desired_count": {"before": current, "after": after},
                "bounds": [lo, hi],
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cluster, service = _ecs_names(values)
        lo, hi = values["min_desired_count"], values["max_desired_count"]
        cfg = _ecs_check(values, ctx.settings)
        change = f"to {values['to']}" if "to" in values else f"by {values['step']:+d}"
        if cfg is None:
            return common.not_checked(
                f"would scale ecs service {cluster}/{service} {change} within {lo}..{hi}"
            )
        current, new, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(
            detail=f"would scale ecs service {cluster}/{service}: desiredCount {current} → "
            f"{new}{common.bounds_note(values, lo, hi, new, current)}",
            data={
                "cluster": cluster,
                "service": service,
                "desired_count": {"before": current, "after": new},
                "bounds": [lo, hi],
            },
        )


# -- rollback ---------------------------------------------------------------------------

_TD_NAME = re.compile(r"([A-Za-z0-9_-]{1,255}):([0-9]{1,9})")
_TD_ARN = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov):ecs:([a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}):([0-9]{12}):"
    r"task-definition/([A-Za-z0-9_-]{1,255}):([0-9]{1,9})"
)
EVIDENCE_EVENTS = 10
"""Service events kept in the evidence (DescribeServices lists the newest first)."""
HISTORY_PAGE = 100
"""Task definition revisions read to find the previous ACTIVE one (newest first)."""


def _task_definition_param() -> params.Validator:
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not (
            _TD_NAME.fullmatch(value) or _TD_ARN.fullmatch(value)
        ):
            raise errors.ParamError(
                field, f"{value!r:.80} is not a task definition family:revision or its ARN"
            )
        return value

    return check


def _family_revision(arn_or_name: str) -> tuple[str, int]:
    m = _TD_NAME.fullmatch(arn_or_name.rpartition("/")[2])
    if m is None:
        raise errors.PermanentError(f"not a task definition revision: {arn_or_name!r}")
    return m.group(1), int(m.group(2))


class EcsRollback:
    type: ClassVar[str] = "ecs.rollback"
    # Run again it would step back once more: never repeated by the engine. botocore's
    # own retries resend the same absolute taskDefinition, which is harmless.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            **_ECS_TARGET,
            "task_definition": params.Field(
                _task_definition_param(),
                required=False,
                doc="roll back to this revision (family:revision or ARN, in the service's "
                "family); default: the previous ACTIVE revision",
            ),
        },
        literal=frozenset({"task_definition"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = _ecs_check(values, settings)
        m = _TD_ARN.fullmatch(values.get("task_definition") or "")
        if cfg is not None and m is not None:
            arn = common.Ref(m.group(4), m.group(1), m.group(2), m.group(3))
            common.check_place("task_definition", arn, cfg)

    def target(self, values: Mapping[str, Any]) -> str:
        return "/".join(_ecs_names(values))

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        return await service_evidence(values, ctx)

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[str, str, Result | None]:
        """(current task definition ARN, the one to roll back to, or the no-change Result)."""
        cluster, service = _ecs_names(values)
        what = f"ecs service {cluster}/{service}"
        svc = await _describe_service(ctx, cfg, cluster, service)
        controller = (svc.get("deploymentController") or {}).get("type", "ECS")
        if controller != "ECS":
            raise errors.PermanentError(
                f"{what} uses the {controller} deployment controller: roll it back through "
                "it (codedeploy.stop_deployment with auto_rollback), not UpdateService"
            )
        current = str(svc.get("taskDefinition", ""))
        family, revision = _family_revision(current)
        data = {"cluster": cluster, "service": service, "task_definition": f"{family}:{revision}"}
        wanted = values.get("task_definition")
        if wanted is not None:
            w_family, w_revision = _family_revision(wanted)
            if w_family != family:
                raise errors.NotAllowed(
                    "task_definition",
                    f"{w_family}:{w_revision} is not of the service's family {family!r}",
                )
            found = await common.call(
                ctx, cfg, "ecs", "describe_task_definition",
                {"taskDefinition": f"{family}:{w_revision}"}, resource=f"{family}:{w_revision}",
            )  # fmt: skip
            td = found.get("taskDefinition") or {}
            if td.get("status") != "ACTIVE":
                raise errors.PermanentError(
                    f"task definition {family}:{w_revision} is {td.get('status')}, not ACTIVE: "
                    "a service cannot be rolled back to it"
                )
            chosen = str(td.get("taskDefinitionArn"))
            if w_revision == revision:
                why = f"it already runs {family}:{revision}"
                return current, chosen, common.no_change(what, why, data)
            return current, chosen, None
        query = {"familyPrefix": family, "status": "ACTIVE", "sort": "DESC"}
        listed = await common.call(
            ctx, cfg, "ecs", "list_task_definitions", query | {"maxResults": HISTORY_PAGE},
            resource=family,
        )  # fmt: skip
        older = [
            (r, arn)
            for arn in listed.get("taskDefinitionArns") or []
            for f, r in [_family_revision(str(arn))]
            if f == family and r < revision  # familyPrefix `api` also lists `api-worker`
        ]
        if not older:
            raise errors.PermanentError(
                f"{what} runs {family}:{revision} and the family has no earlier ACTIVE "
                "revision to roll back to"
            )
        return current, str(max(older)[1]), None

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = _ecs_check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        cluster, service = _ecs_names(values)
        current, chosen, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        answer = await common.call(
            ctx, cfg, "ecs", "update_service",
            {"cluster": cluster, "service": service, "taskDefinition": chosen},
            resource=f"{cluster}/{service}",
        )  # fmt: skip
        after = answer.get("service") or {}
        if after.get("taskDefinition") != chosen:
            raise errors.PermanentError(
                f"ecs UpdateService {cluster}/{service} answered taskDefinition "
                f"{after.get('taskDefinition')}, not {chosen}: check the service's deployments"
            )
        primary = _primary(after)
        on_new = primary.get("taskDefinition") == chosen
        return Result(
            detail=f"rolled back ecs service {cluster}/{service} from "
            f"{_task_definition({'taskDefinition': current})} to "
            f"{_task_definition({'taskDefinition': chosen})}"
            + (f" (deployment {primary.get('id')})" if on_new else ""),
            data={
                "cluster": cluster,
                "service": service,
                "from": _task_definition({"taskDefinition": current}),
                "to": _task_definition({"taskDefinition": chosen}),
                "deployment_id": primary.get("id") if on_new else None,
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cluster, service = _ecs_names(values)
        cfg = _ecs_check(values, ctx.settings)
        to = values.get("task_definition") or "its previous ACTIVE task definition"
        if cfg is None:
            return common.not_checked(f"would roll back ecs service {cluster}/{service} to {to}")
        current, chosen, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        before = _task_definition({"taskDefinition": current})
        after = _task_definition({"taskDefinition": chosen})
        return Result(
            detail=f"would roll back ecs service {cluster}/{service} from {before} to {after}",
            data={"cluster": cluster, "service": service, "from": before, "to": after},
        )


# -- evidence -----------------------------------------------------------------------------


async def service_evidence(values: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """What the service looks like before acting: counts, deployments, last events."""
    cfg = common.cfg(ctx.settings)
    if cfg is None:
        return {"note": f"not captured: no `{common.SECTION}:` config"}
    cluster, service = _ecs_names(values)
    svc = await _describe_service(ctx, cfg, cluster, service)
    return {
        "service": f"{cluster}/{service}",
        "desired": svc.get("desiredCount"),
        "running": svc.get("runningCount"),
        "pending": svc.get("pendingCount"),
        "task_definition": _task_definition(svc),
        "deployments": [
            {
                "id": d.get("id"),
                "status": d.get("status"),
                "rollout": d.get("rolloutState"),
                "task_definition": _task_definition(d),
                "desired": d.get("desiredCount"),
                "running": d.get("runningCount"),
                "failed_tasks": d.get("failedTasks", 0),
            }
            for d in svc.get("deployments") or []
            if isinstance(d, dict)
        ],
        "events": [
            {"time": str(e.get("createdAt", "")), "message": str(e.get("message", ""))[:300]}
            for e in (svc.get("events") or [])[:EVIDENCE_EVENTS]
            if isinstance(e, dict)
        ],
    }


registry.register(EcsForceNewDeployment())
registry.register(EcsScale())
registry.register(EcsRollback())
