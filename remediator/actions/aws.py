"""`ecs.*`, `lambda.*`, `sqs.*`: bounded AWS remediations.

    ecs.force_new_deployment  UpdateService(forceNewDeployment) unless a rollout is under way
    ecs.scale                 UpdateService(desiredCount) by step or to a value, within bounds
    lambda.set_concurrency    PutFunctionConcurrency by step or to a value, within bounds
    sqs.redrive_dlq           StartMessageMoveTask from a DLQ, rate-bounded, one task at a time

Targets usually come from alert labels (CloudWatch dimensions `ClusterName`,
`ServiceName`, `FunctionName`, `QueueName`), which are untrusted: every name is checked
for its AWS format, an ARN must be in the configured region (and account), and the
name must be in the `aws:` config's allow-lists before any request is made.

Every AWS call goes through `_call` and must be declared in `CALLS`, which maps it to
the IAM actions it needs; deploy/aws/iam-policy.json grants exactly those, and a test
keeps the three in step. aioboto3 is imported only when a call is made
(remediator.clients.aws), so loading rules and starting stay fast.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import errors
from remediator import settings as settings_mod
from remediator.actions import base, params, registry
from remediator.actions.base import Context, Result
from remediator.settings import Settings

SECTION = "aws"

# -- the AWS calls the code makes, and the IAM actions each needs ----------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One AWS API operation the actions call."""

    api: str
    """The operation's AWS name, e.g. `UpdateService`."""
    iam: tuple[str, ...]
    """IAM actions the caller needs for it; the first is the operation's own."""
    changes: bool
    """True when it changes something (a lost answer leaves the outcome unknown)."""


CALLS: Mapping[tuple[str, str], Call] = {
    ("ecs", "describe_services"): Call("DescribeServices", ("ecs:DescribeServices",), False),
    ("ecs", "update_service"): Call("UpdateService", ("ecs:UpdateService",), True),
    ("lambda", "get_function_concurrency"): Call(
        "GetFunctionConcurrency", ("lambda:GetFunctionConcurrency",), False
    ),
    ("lambda", "put_function_concurrency"): Call(
        "PutFunctionConcurrency", ("lambda:PutFunctionConcurrency",), True
    ),
    ("sqs", "get_queue_url"): Call("GetQueueUrl", ("sqs:GetQueueUrl",), False),
    ("sqs", "get_queue_attributes"): Call("GetQueueAttributes", ("sqs:GetQueueAttributes",), False),
    ("sqs", "list_message_move_tasks"): Call(
        "ListMessageMoveTasks", ("sqs:ListMessageMoveTasks",), False
    ),
    # SQS moves the messages with the caller's permissions: it receives and deletes
    # them on the DLQ and sends them to the destination.
    ("sqs", "start_message_move_task"): Call(
        "StartMessageMoveTask",
        (
            "sqs:StartMessageMoveTask",
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:SendMessage",
        ),
        True,
    ),
}


def iam_actions() -> set[str]:
    """Every IAM action the code needs: what deploy/aws/iam-policy.json must grant."""
    return {a for call in CALLS.values() for a in call.iam}


# -- config ---------------------------------------------------------------------------

_REGION_TEXT = r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}"
_REGION = re.compile(_REGION_TEXT)
_ACCOUNT = re.compile(r"[0-9]{12}")
_PROFILE = re.compile(r"[A-Za-z0-9_.+=,@-]{1,128}")
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s]*)?")


@dataclasses.dataclass(frozen=True, slots=True)
class AwsConfig:
    """The `aws:` section: where to act, how to retry, and what may be acted on."""

    region: str
    """The region every action acts in (`AWS_REGION` when the file does not say)."""
    endpoint_url: str | None = None
    """Another endpoint for every service: a test server, a VPC/private endpoint."""
    profile: str | None = None
    """A named profile of the shared AWS config; None: the default credential chain
    (environment, profile, web identity / IRSA, container or instance role)."""
    account_id: str | None = None
    """The account acted in. Required to accept ARNs in params: an ARN of another
    account is refused. Names (what CloudWatch dimensions carry) need no account."""
    max_attempts: int = 3
    """Attempts per AWS call, the first included (botocore `standard` retry mode, which
    backs off exponentially with jitter). 3 rides out a throttling burst and still fits
    several calls in the default 60s `limits.action_timeout`."""
    connect_timeout: float = 5.0
    """Seconds to open a connection, per attempt. AWS endpoints answer in milliseconds."""
    read_timeout: float = 10.0
    """Seconds to wait for an answer, per attempt. Control-plane calls answer in well under
    a second; 10s leaves room for a slow region, and 3 attempts of 5s + 10s plus backoff
    still fit the default 60s `limits.action_timeout`."""
    ecs_clusters: frozenset[str] = frozenset()
    """`ecs.clusters`: ECS clusters whose services may be redeployed or scaled."""
    lambda_functions: frozenset[str] = frozenset()
    """`lambda.functions`: Lambda functions whose reserved concurrency may change."""
    sqs_queues: frozenset[str] = frozenset()
    """`sqs.queues`: queues that may be redriven from, or named as a redrive destination."""

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"


@settings_mod.section(SECTION)
def _config(r: settings_mod.Reader, env: Mapping[str, str]) -> AwsConfig:
    p = r.prefix
    region = r.text("region", env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "")
    if not region:
        raise errors.ConfigError(f"{p}region", "required: the region to act in (e.g. eu-west-1)")
    if not _REGION.fullmatch(region):
        raise errors.ConfigError(f"{p}region", f"not an AWS region: {region!r}")
    endpoint = r.text("endpoint_url", "") or None
    if endpoint is not None and not _URL.fullmatch(endpoint):
        raise errors.ConfigError(f"{p}endpoint_url", f"expected an http(s) URL, got {endpoint!r}")
    profile = r.text("profile", "") or None
    if profile is not None and not _PROFILE.fullmatch(profile):
        raise errors.ConfigError(f"{p}profile", f"not a profile name: {profile!r}")
    if isinstance(r.data.get("account_id"), int):
        raise errors.ConfigError(
            f"{p}account_id", 'quote it ("123456789012"): YAML reads it as a number'
        )
    account = r.text("account_id", "") or None
    if account is not None and not _ACCOUNT.fullmatch(account):
        raise errors.ConfigError(f"{p}account_id", f"expected 12 digits, got {account!r}")
    connect_timeout = r.duration("connect_timeout", 5.0)
    read_timeout = r.duration("read_timeout", 10.0)
    for key, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not 0 < value <= 300:
            raise errors.ConfigError(f"{p}{key}", "must be more than 0s and at most 5m")
    cfg = AwsConfig(
        region=region,
        endpoint_url=endpoint,
        profile=profile,
        account_id=account,
        max_attempts=r.integer("max_attempts", 3, lo=1, hi=10),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        ecs_clusters=_names(r.section("ecs"), "clusters", _ECS_NAME),
        lambda_functions=_names(r.section("lambda"), "functions", _LAMBDA_NAME),
        sqs_queues=_names(r.section("sqs"), "queues", _SQS_NAME),
    )
    return cfg


def _names(r: settings_mod.Reader, key: str, pattern: re.Pattern[str]) -> frozenset[str]:
    out = set()
    for i, name in enumerate(r.raw_list(key)):
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise errors.ConfigError(
                f"{r.prefix}{key}[{i}]", f"not a name (names here, not ARNs): {name!r}"
            )
        out.add(name)
    r.finish()
    return frozenset(out)


def _cfg(settings: Settings) -> AwsConfig | None:
    cfg: AwsConfig | None = base.family_config(settings, SECTION)
    return cfg


# -- names and ARNs -------------------------------------------------------------------

_P = r"(aws|aws-cn|aws-us-gov)"
_RA = rf"({_REGION_TEXT}):([0-9]{{12}})"
_ECS_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_ECS_CLUSTER_ARN = re.compile(rf"arn:{_P}:ecs:{_RA}:cluster/([A-Za-z0-9_-]{{1,255}})")
_ECS_SERVICE_ARN = re.compile(
    rf"arn:{_P}:ecs:{_RA}:service/(?:([A-Za-z0-9_-]{{1,255}})/)?([A-Za-z0-9_-]{{1,255}})"
)
_LAMBDA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Reserved concurrency belongs to the function, not to a version: no `:qualifier`.
_LAMBDA_ARN = re.compile(rf"arn:{_P}:lambda:{_RA}:function:([A-Za-z0-9_-]{{1,64}})")
_SQS_NAME = re.compile(r"(?=.{1,80}$)[A-Za-z0-9_-]+(\.fifo)?")
_SQS_ARN = re.compile(rf"arn:{_P}:sqs:{_RA}:((?=.{{1,80}}$)[A-Za-z0-9_-]+(?:\.fifo)?)")


@dataclasses.dataclass(frozen=True, slots=True)
class Ref:
    """A name or an ARN, split. `region` is None for a plain name."""

    name: str
    partition: str | None = None
    region: str | None = None
    account: str | None = None
    cluster: str | None = None
    """The cluster named in a (new-format) ECS service ARN."""


def _ref(value: str, kind: str) -> Ref:
    """Split an already validated name or ARN of `kind` (cluster, service, function, queue)."""
    name_re, arn_re = _FORMATS[kind][:2]
    if name_re.fullmatch(value):
        return Ref(value)
    m = arn_re.fullmatch(value)
    if m is None:  # validated before; a bug if reached
        raise errors.ParamError(kind, f"not an ECS/Lambda/SQS {kind}: {value!r}")
    g = m.groups()
    if kind == "service":
        return Ref(g[4], g[0], g[1], g[2], g[3])
    return Ref(g[3], g[0], g[1], g[2])


_FORMATS: dict[str, tuple[re.Pattern[str], re.Pattern[str], str]] = {
    "cluster": (_ECS_NAME, _ECS_CLUSTER_ARN, "an ECS cluster name or ARN"),
    "service": (_ECS_NAME, _ECS_SERVICE_ARN, "an ECS service name or ARN"),
    "function": (
        _LAMBDA_NAME,
        _LAMBDA_ARN,
        "a Lambda function name or unqualified ARN ([A-Za-z0-9_-], at most 64)",
    ),
    "queue": (_SQS_NAME, _SQS_ARN, "an SQS queue name or ARN ([A-Za-z0-9_-], at most 80)"),
}


def _name_or_arn(kind: str) -> params.Validator:
    name_re, arn_re, what = _FORMATS[kind]

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not (name_re.fullmatch(value) or arn_re.fullmatch(value)):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise errors.ParamError(field, f"{shown} is not {what}")
        return value

    return check


def _check_place(field: str, ref: Ref, cfg: AwsConfig) -> None:
    """An ARN must point where the daemon acts: the configured partition, region, account."""
    if ref.region is None:
        return
    if ref.partition != cfg.partition or ref.region != cfg.region:
        raise errors.NotAllowed(
            field,
            f"the ARN is in {ref.partition}/{ref.region}; remediator acts in "
            f"aws.region={cfg.region}",
        )
    if cfg.account_id is None:
        raise errors.NotAllowed(
            field, "an ARN needs aws.account_id in the config so its account can be checked"
        )
    if ref.account != cfg.account_id:
        raise errors.NotAllowed(
            field, f"the ARN is in account {ref.account}, not aws.account_id={cfg.account_id}"
        )


def _check_listed(field: str, name: str, allowed: frozenset[str], key: str) -> None:
    if name in allowed:
        return
    listed = ", ".join(sorted(allowed)[:5]) + (", ..." if len(allowed) > 5 else "")
    raise errors.NotAllowed(
        field, f"{name!r} is not in {key} ({listed or 'empty: nothing is allowed'})"
    )


# -- params that need each other --------------------------------------------------------


def _one_of_step_or_to(values: Mapping[str, Any]) -> None:
    if ("step" in values) == ("to" in values):
        raise errors.ParamError("step", "give exactly one of `step` and `to`")
    if values.get("step") == 0:
        raise errors.ParamError("step", "a step of 0 changes nothing")


def _ordered(values: Mapping[str, Any], lo: str, hi: str) -> None:
    if values[lo] > values[hi]:
        raise errors.ParamError(lo, f"{values[lo]} is above {hi} ({values[hi]})")


def _plan(current: int, values: Mapping[str, Any], lo: int, hi: int) -> tuple[int, str]:
    """The new value for `step` or `to`, clamped to [lo, hi]; (current, why) for no change.

    A change never goes the other way from what was asked: a step up from above the
    upper bound (a person scaled further by hand) leaves the value alone.
    """
    want = values["to"] if "to" in values else current + values["step"]
    new = min(max(want, lo), hi)
    if want == current:
        return current, f"it is already {current}"
    if (want - current) * (new - current) <= 0:
        if want > current:
            return current, f"{current} is already at or above the upper bound {hi}"
        return current, f"{current} is already at or below the lower bound {lo}"
    return new, ""


def _bounds_note(values: Mapping[str, Any], lo: int, hi: int, new: int, current: int) -> str:
    want = values["to"] if "to" in values else current + values["step"]
    return f" (clamped from {want} to {lo}..{hi})" if want != new else f" (bounds {lo}..{hi})"


# -- calling AWS ------------------------------------------------------------------------


async def _call(
    ctx: Context,
    cfg: AwsConfig,
    service: str,
    operation: str,
    request: Mapping[str, Any],
    *,
    resource: str,
    once: str | None = None,
) -> dict[str, Any]:
    """Call one declared AWS operation through the process's shared client.

    `once`: the call must not be sent twice (a second forced deployment, a second move
    task): one attempt, no botocore retry, and when its outcome is unknown (5xx, lost
    answer) the action fails saying so and `once` — what to check — instead of the
    engine running it again.
    """
    call = CALLS.get((service, operation))
    if call is None:  # a bug: the IAM policy would not grant it either
        raise errors.PermanentError(f"{service} {operation} is not declared in actions.aws.CALLS")
    from remediator.clients import aws as aws_client  # noqa: PLC0415 - aioboto3 is slow to import

    connection = aws_client.Connection(
        region=cfg.region,
        endpoint_url=cfg.endpoint_url,
        profile=cfg.profile,
        max_attempts=cfg.max_attempts,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
    )

    async def opener() -> Any:
        worst = retry_budget(cfg)
        if worst > ctx.timeout:
            ctx.log.warning(
                "aws_retries_exceed_action_timeout",
                worst_case_seconds=worst,
                action_timeout=ctx.timeout,
                hint="lower aws.max_attempts or aws.read_timeout, or raise limits.action_timeout",
            )
        return await aws_client.open_client(connection)

    client = await ctx.clients.get(SECTION, opener, aws_client.close_client)
    answer: dict[str, Any] = await client.call(
        service,
        operation,
        request,
        what=f"{service} {call.api} {resource}",
        changes=call.changes,
        permission=call.iam[0],
        once=once,
    )
    return answer


def retry_budget(cfg: AwsConfig) -> float:
    """Seconds one AWS call may take at worst: every attempt timing out, plus botocore's
    standard-mode backoff (up to 2**i seconds before attempt i+2, capped at 20s)."""
    attempts = cfg.max_attempts * (cfg.connect_timeout + cfg.read_timeout)
    return attempts + sum(min(2.0**i, 20.0) for i in range(cfg.max_attempts - 1))


def _not_checked(would: str) -> Result:
    return Result(
        detail=f"{would}; not checked against AWS: no `{SECTION}:` config",
        changed=False,
        data={"checked": False},
    )


def _no_change(what: str, why: str, data: Mapping[str, Any]) -> Result:
    return Result(detail=f"{what}: no change because {why}", changed=False, data=data)


# -- ECS ------------------------------------------------------------------------------


def _ecs_check(values: Mapping[str, Any], settings: Settings) -> AwsConfig | None:
    cfg = _cfg(settings)
    cluster, service = _ref(values["cluster"], "cluster"), _ref(values["service"], "service")
    if service.cluster is not None and service.cluster != cluster.name:
        raise errors.NotAllowed(
            "service", f"the ARN names cluster {service.cluster!r}, not {cluster.name!r}"
        )
    if cfg is None:
        return None
    _check_place("cluster", cluster, cfg)
    _check_place("service", service, cfg)
    _check_listed("cluster", cluster.name, cfg.ecs_clusters, "aws.ecs.clusters")
    return cfg


def _ecs_names(values: Mapping[str, Any]) -> tuple[str, str]:
    return _ref(values["cluster"], "cluster").name, _ref(values["service"], "service").name


async def _describe_service(ctx: Context, cfg: AwsConfig, cluster: str, service: str) -> Any:
    where = f"{cluster}/{service}"
    answer = await _call(
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
    "cluster": params.Field(_name_or_arn("cluster"), doc="ECS cluster name or ARN"),
    "service": params.Field(_name_or_arn("service"), doc="ECS service name or ARN"),
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

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: AwsConfig
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
        return svc, _no_change(f"ecs service {cluster}/{service}", why, data)

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = _ecs_check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        cluster, service = _ecs_names(values)
        svc, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        before = _primary(svc).get("id")
        answer = await _call(
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
            return _not_checked(f"would force a new deployment of ecs service {cluster}/{service}")
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
    _one_of_step_or_to(values)
    _ordered(values, "min_desired_count", "max_desired_count")


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

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: AwsConfig
    ) -> tuple[int, int, Result | None]:
        cluster, service = _ecs_names(values)
        svc = await _describe_service(ctx, cfg, cluster, service)
        current = int(svc.get("desiredCount", 0))
        lo, hi = values["min_desired_count"], values["max_desired_count"]
        new, why = _plan(current, values, lo, hi)
        if new != current:
            return current, new, None
        data = {
            "cluster": cluster,
            "service": service,
            "desired_count": current,
            "bounds": [lo, hi],
        }
        return current, new, _no_change(f"ecs service {cluster}/{service}", why, data)

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = _ecs_check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        cluster, service = _ecs_names(values)
        current, new, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        answer = await _call(
            ctx, cfg, "ecs", "update_service",
            {"cluster": cluster, "service": service, "desiredCount": new},
            resource=f"{cluster}/{service}",
        )  # fmt: skip
        after = int((answer.get("service") or {}).get("desiredCount", new))
        lo, hi = values["min_desired_count"], values["max_desired_count"]
        return Result(
            detail=f"scaled ecs service {cluster}/{service}: desiredCount {current} → {after}"
            f"{_bounds_note(values, lo, hi, new, current)}",
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
            return _not_checked(
                f"would scale ecs service {cluster}/{service} {change} within {lo}..{hi}"
            )
        current, new, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(
            detail=f"would scale ecs service {cluster}/{service}: desiredCount {current} → "
            f"{new}{_bounds_note(values, lo, hi, new, current)}",
            data={
                "cluster": cluster,
                "service": service,
                "desired_count": {"before": current, "after": new},
                "bounds": [lo, hi],
            },
        )


# -- Lambda ---------------------------------------------------------------------------


def _concurrency_across(values: Mapping[str, Any]) -> None:
    _one_of_step_or_to(values)
    _ordered(values, "min_concurrency", "max_concurrency")
    if values.get("allow_zero") is not True:
        if values["min_concurrency"] == 0:
            raise errors.ParamError(
                "min_concurrency",
                "0 throttles the function entirely: set allow_zero: true to allow it",
            )
        if values.get("to") == 0:
            raise errors.ParamError(
                "to", "0 throttles the function entirely: set allow_zero: true to allow it"
            )


class LambdaSetConcurrency:
    type: ClassVar[str] = "lambda.set_concurrency"
    # Not idempotent for the same reason as ecs.scale: a step must not apply twice.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "function": params.Field(_name_or_arn("function"), doc="function name or ARN"),
            "step": params.Field(
                params.integer(lo=-10000, hi=10000),
                required=False,
                doc="change reserved concurrency by",
            ),
            "to": params.Field(
                params.integer(lo=0, hi=100000), required=False, doc="set reserved concurrency to"
            ),
            "min_concurrency": params.Field(params.bound(lo=0, hi=100000), doc="lower bound"),
            "max_concurrency": params.Field(params.bound(lo=1, hi=100000), doc="upper bound"),
            "allow_zero": params.Field(
                params.flag(),
                required=False,
                default=False,
                doc="allow 0 (the function stops running entirely); literal only",
            ),
        },
        literal=frozenset({"min_concurrency", "max_concurrency", "allow_zero"}),
        across=_concurrency_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        self._check(values, settings)

    def _check(self, values: Mapping[str, Any], settings: Settings) -> AwsConfig | None:
        cfg = _cfg(settings)
        if cfg is not None:
            fn = _ref(values["function"], "function")
            _check_place("function", fn, cfg)
            _check_listed("function", fn.name, cfg.lambda_functions, "aws.lambda.functions")
        return cfg

    def target(self, values: Mapping[str, Any]) -> str:
        return _ref(values["function"], "function").name

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: AwsConfig
    ) -> tuple[int | None, int, Result | None]:
        name = self.target(values)
        what = f"lambda function {name}"
        lo, hi = values["min_concurrency"], values["max_concurrency"]
        answer = await _call(
            ctx, cfg, "lambda", "get_function_concurrency", {"FunctionName": name}, resource=name
        )
        raw = answer.get("ReservedConcurrentExecutions")
        current = None if raw is None else int(raw)
        data = {"function": name, "reserved_concurrency": current, "bounds": [lo, hi]}
        if current is None:
            if "step" in values:
                why = (
                    "it has no reserved concurrency (it draws on the account's unreserved "
                    "pool): a step has nothing to start from, and reserving some would also "
                    "cap it; use `to` to reserve a value"
                )
                return None, 0, _no_change(what, why, data)
            return None, min(max(values["to"], lo), hi), None
        want = values["to"] if "to" in values else current + values["step"]
        if current == 0 and want > 0:
            why = (
                "its reserved concurrency is 0: it was turned off on purpose (by a person or "
                "a rule), and is never turned back on automatically"
            )
            return current, current, _no_change(what, why, data)
        new, why = _plan(current, values, lo, hi)
        if new == current:
            return current, current, _no_change(what, why, data)
        if new == 0 and values.get("allow_zero") is not True:  # excluded by the bounds
            raise errors.PermanentError(f"{what}: refusing to set reserved concurrency to 0")
        return current, new, None

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = self._check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        name = self.target(values)
        current, new, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        answer = await _call(
            ctx, cfg, "lambda", "put_function_concurrency",
            {"FunctionName": name, "ReservedConcurrentExecutions": new}, resource=name,
        )  # fmt: skip
        after = int(answer.get("ReservedConcurrentExecutions", new))
        lo, hi = values["min_concurrency"], values["max_concurrency"]
        return Result(
            detail=f"set reserved concurrency of lambda function {name}: "
            f"{_show_concurrency(current)} → {after}"
            f"{_bounds_note(values, lo, hi, new, current or 0)}",
            data={
                "function": name,
                "reserved_concurrency": {"before": current, "after": after},
                "bounds": [lo, hi],
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        name = self.target(values)
        lo, hi = values["min_concurrency"], values["max_concurrency"]
        cfg = self._check(values, ctx.settings)
        change = f"to {values['to']}" if "to" in values else f"by {values['step']:+d}"
        if cfg is None:
            return _not_checked(
                f"would set reserved concurrency of lambda function {name} {change} "
                f"within {lo}..{hi}"
            )
        current, new, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(
            detail=f"would set reserved concurrency of lambda function {name}: "
            f"{_show_concurrency(current)} → {new}"
            f"{_bounds_note(values, lo, hi, new, current or 0)}",
            data={
                "function": name,
                "reserved_concurrency": {"before": current, "after": new},
                "bounds": [lo, hi],
            },
        )


def _show_concurrency(value: int | None) -> str:
    return "unreserved" if value is None else str(value)


# -- SQS ------------------------------------------------------------------------------


def _redrive_across(values: Mapping[str, Any]) -> None:
    dlq, dest = values.get("dlq"), values.get("destination")
    if not (isinstance(dlq, str) and isinstance(dest, str)):
        return  # one of them is rendered from a template: checked again once rendered
    if _ref(dlq, "queue").name == _ref(dest, "queue").name:
        raise errors.ParamError("destination", "is the DLQ itself")


class SqsRedriveDlq:
    type: ClassVar[str] = "sqs.redrive_dlq"
    # Looks before it acts, so the engine may run it again after a temporary error
    # before the write. StartMessageMoveTask itself is sent once (see `_call`): after a
    # 5xx or a lost answer the action fails with "outcome unknown".
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "dlq": params.Field(_name_or_arn("queue"), doc="the dead-letter queue, name or ARN"),
            # Required: without one SQS sends each message back to the queue it came
            # from, recorded per message — queues no allow-list here can check (not
            # even ListDeadLetterSourceQueues: a queue whose redrive policy changed
            # since still gets its old messages back).
            "destination": params.Field(
                _name_or_arn("queue"),
                doc="where to move the messages: a queue name or ARN in aws.sqs.queues",
            ),
            # SQS moves at most 500 messages per second; a rule states its own rate so
            # a redrive cannot flood consumers that just recovered.
            "max_messages_per_second": params.Field(
                params.bound(lo=1, hi=500), doc="move rate limit"
            ),
        },
        literal=frozenset({"max_messages_per_second"}),
        across=_redrive_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        self._check(values, settings)

    def _check(self, values: Mapping[str, Any], settings: Settings) -> AwsConfig | None:
        cfg = _cfg(settings)
        if cfg is not None:
            for field in ("dlq", "destination"):
                if field in values:
                    ref = _ref(values[field], "queue")
                    _check_place(field, ref, cfg)
                    _check_listed(field, ref.name, cfg.sqs_queues, "aws.sqs.queues")
        return cfg

    def target(self, values: Mapping[str, Any]) -> str:
        return _ref(values["dlq"], "queue").name

    async def _queue_arn(self, ctx: Context, cfg: AwsConfig, name: str, extra: list[str]) -> Any:
        url = (await _call(ctx, cfg, "sqs", "get_queue_url", {"QueueName": name}, resource=name))[
            "QueueUrl"
        ]
        answer = await _call(
            ctx, cfg, "sqs", "get_queue_attributes",
            {"QueueUrl": url, "AttributeNames": ["QueueArn", *extra]}, resource=name,
        )  # fmt: skip
        return answer.get("Attributes") or {}

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: AwsConfig
    ) -> tuple[dict[str, Any], Result | None]:
        name = self.target(values)
        attrs = await self._queue_arn(ctx, cfg, name, ["ApproximateNumberOfMessages"])
        source_arn = str(attrs["QueueArn"])
        waiting = int(attrs.get("ApproximateNumberOfMessages", 0))
        dest = _ref(values["destination"], "queue").name
        plan: dict[str, Any] = {
            "dlq": source_arn,
            "destination": str((await self._queue_arn(ctx, cfg, dest, []))["QueueArn"]),
            "messages": waiting,
            "max_messages_per_second": values["max_messages_per_second"],
        }
        tasks = await _call(
            ctx, cfg, "sqs", "list_message_move_tasks",
            {"SourceArn": source_arn, "MaxResults": 10}, resource=name,
        )  # fmt: skip
        running = [t for t in tasks.get("Results") or [] if t.get("Status") == "RUNNING"]
        what = f"sqs queue {name}"
        if running:
            t = running[0]
            why = (
                f"a message move task is already running from it "
                f"({t.get('ApproximateNumberOfMessagesMoved', '?')} of "
                f"{t.get('ApproximateNumberOfMessagesToMove', '?')} moved)"
            )
            return plan, _no_change(what, why, {**plan, "running_task": t.get("TaskHandle")})
        if waiting == 0:
            return plan, _no_change(what, "the DLQ holds no visible messages", plan)
        return plan, None

    @staticmethod
    def _moving(plan: Mapping[str, Any], name: str) -> str:
        to = str(plan["destination"]).rpartition(":")[2]
        return (
            f"~{plan['messages']} messages from sqs queue {name} to {to} at most "
            f"{plan['max_messages_per_second']}/s"
        )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = self._check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        name = self.target(values)
        plan, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        request = {
            "SourceArn": plan["dlq"],
            # Always given: without it SQS would choose, per message (see the schema).
            "DestinationArn": plan["destination"],
            "MaxNumberOfMessagesPerSecond": plan["max_messages_per_second"],
        }
        answer = await _call(
            ctx, cfg, "sqs", "start_message_move_task", request, resource=name,
            once=f"check the DLQ's move tasks (`aws sqs list-message-move-tasks --source-arn "
            f"{plan['dlq']}`) before starting another",
        )  # fmt: skip
        handle = answer.get("TaskHandle")
        return Result(
            detail=f"started moving {self._moving(plan, name)}",
            data={**plan, "task_handle": handle},
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        name = self.target(values)
        cfg = self._check(values, ctx.settings)
        if cfg is None:
            rate = values["max_messages_per_second"]
            return _not_checked(f"would redrive sqs queue {name} at most {rate}/s")
        plan, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(detail=f"would move {self._moving(plan, name)}", data=plan)


registry.register(EcsForceNewDeployment())
registry.register(EcsScale())
registry.register(LambdaSetConcurrency())
registry.register(SqsRedriveDlq())
