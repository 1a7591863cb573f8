"""What every AWS action shares: the `aws:` config, names and ARNs, bounds, and `call`.

Every AWS call goes through `call` and must be declared first (`declare`), mapping it to
the IAM actions it needs; deploy/aws/iam-policy.json grants exactly those, and a test
keeps the three in step. aioboto3 is imported only when a call is made
(remediator.clients.aws), so loading rules and starting stay fast.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from remediator import errors
from remediator import settings as settings_mod
from remediator.actions import base, params
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
    unscoped: bool = False
    """True for a read AWS authorizes only on all resources ("*"): it has no resource
    type in the Service Authorization Reference (ecs:ListTaskDefinitions,
    ecs:DescribeTaskDefinition, lambda:ListEventSourceMappings). Only reads may be."""


CALLS: dict[tuple[str, str], Call] = {}
"""(service, botocore operation) → Call, filled by each service module at import."""


def declare(service: str, calls: Mapping[str, Call]) -> None:
    """Declare the operations a service module calls (botocore's snake_case names)."""
    for operation, c in calls.items():
        if (service, operation) in CALLS:
            raise RuntimeError(f"{service} {operation} declared twice")
        if c.unscoped and c.changes:
            raise RuntimeError(f"{service} {operation}: only a read may be granted on '*'")
        CALLS[(service, operation)] = c


def code_of(exc: BaseException) -> str:
    """The AWS error code an error carries (`PreconditionFailedException`), or ""."""
    return str(getattr(exc, "code", ""))


def iam_actions() -> set[str]:
    """Every IAM action the code needs: what deploy/aws/iam-policy.json must grant."""
    return {a for c in CALLS.values() for a in c.iam}


# -- names and ARNs -------------------------------------------------------------------

_REGION_TEXT = r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}"
_REGION = re.compile(_REGION_TEXT)
_ACCOUNT = re.compile(r"[0-9]{12}")
_PROFILE = re.compile(r"[A-Za-z0-9_.+=,@-]{1,128}")
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s]*)?")
_P = r"(aws|aws-cn|aws-us-gov)"
_RA = rf"({_REGION_TEXT}):([0-9]{{12}})"

ECS_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_ECS_CLUSTER_ARN = re.compile(rf"arn:{_P}:ecs:{_RA}:cluster/([A-Za-z0-9_-]{{1,255}})")
_ECS_SERVICE_ARN = re.compile(
    rf"arn:{_P}:ecs:{_RA}:service/(?:([A-Za-z0-9_-]{{1,255}})/)?([A-Za-z0-9_-]{{1,255}})"
)
LAMBDA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Reserved concurrency belongs to the function, not to a version: no `:qualifier`.
_LAMBDA_ARN = re.compile(rf"arn:{_P}:lambda:{_RA}:function:([A-Za-z0-9_-]{{1,64}})")
SQS_NAME = re.compile(r"(?=.{1,80}$)[A-Za-z0-9_-]+(\.fifo)?")
_SQS_ARN = re.compile(rf"arn:{_P}:sqs:{_RA}:((?=.{{1,80}}$)[A-Za-z0-9_-]+(?:\.fifo)?)")
EVENTS_RULE = re.compile(r"[.\-_A-Za-z0-9]{1,64}")
EVENTS_BUS = re.compile(r"[.\-_A-Za-z0-9]{1,256}")
APPCONFIG_ID = re.compile(r"[a-z0-9]{4,7}")
CLOUDFRONT_ID = re.compile(r"[A-Z0-9]{6,32}")
CODEDEPLOY_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,100}")
# RDS identifiers: a letter first, then letters, digits and single hyphens, at most 63.
RDS_ID = re.compile(r"(?!.*--)[A-Za-z][A-Za-z0-9-]{0,62}(?<!-)")


@dataclasses.dataclass(frozen=True, slots=True)
class Ref:
    """A name or an ARN, split. `region` is None for a plain name."""

    name: str
    partition: str | None = None
    region: str | None = None
    account: str | None = None
    cluster: str | None = None
    """The cluster named in a (new-format) ECS service ARN."""


_FORMATS: dict[str, tuple[re.Pattern[str], re.Pattern[str], str]] = {
    "cluster": (ECS_NAME, _ECS_CLUSTER_ARN, "an ECS cluster name or ARN"),
    "service": (ECS_NAME, _ECS_SERVICE_ARN, "an ECS service name or ARN"),
    "function": (
        LAMBDA_NAME,
        _LAMBDA_ARN,
        "a Lambda function name or unqualified ARN ([A-Za-z0-9_-], at most 64)",
    ),
    "queue": (SQS_NAME, _SQS_ARN, "an SQS queue name or ARN ([A-Za-z0-9_-], at most 80)"),
}


def ref(value: str, kind: str) -> Ref:
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


def name_or_arn(kind: str) -> params.Validator:
    name_re, arn_re, what = _FORMATS[kind]

    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not (name_re.fullmatch(value) or arn_re.fullmatch(value)):
            raise errors.ParamError(field, f"{_show(value)} is not {what}")
        return value

    return check


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def check_place(field: str, r: Ref, cfg: AwsConfig) -> None:
    """An ARN must point where the daemon acts: the configured partition, region, account."""
    if r.region is None:
        return
    if r.partition != cfg.partition or r.region != cfg.region:
        raise errors.NotAllowed(
            field,
            f"the ARN is in {r.partition}/{r.region}; remediator acts in aws.region={cfg.region}",
        )
    if cfg.account_id is None:
        raise errors.NotAllowed(
            field, "an ARN needs aws.account_id in the config so its account can be checked"
        )
    if r.account != cfg.account_id:
        raise errors.NotAllowed(
            field, f"the ARN is in account {r.account}, not aws.account_id={cfg.account_id}"
        )


def check_listed(field: str, name: str, allowed: frozenset[str], key: str) -> None:
    if name in allowed:
        return
    listed = ", ".join(sorted(allowed)[:5]) + (", ..." if len(allowed) > 5 else "")
    raise errors.NotAllowed(
        field, f"{name!r} is not in {key} ({listed or 'empty: nothing is allowed'})"
    )


# -- config ---------------------------------------------------------------------------


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
    """`ecs.clusters`: ECS clusters whose services may be redeployed, scaled, rolled back."""
    lambda_functions: frozenset[str] = frozenset()
    """`lambda.functions`: functions whose concurrency, aliases and triggers may change."""
    lambda_stable_tag: str = "remediator:stable-version"
    """`lambda.stable_tag`: the function tag whose value names its known-good version,
    for `lambda.rollback_alias` with `to: stable` (e.g. set by the deploy pipeline)."""
    sqs_queues: frozenset[str] = frozenset()
    """`sqs.queues`: queues that may be redriven from, or named as a redrive destination."""
    events_rules: frozenset[str] = frozenset()
    """`events.rules`: EventBridge rules that may be disabled or enabled: `name` (on the
    default bus) or `bus/name`."""
    appconfig_applications: frozenset[str] = frozenset()
    """`appconfig.applications`: AppConfig application IDs whose feature flags may change."""
    cloudfront_distributions: frozenset[str] = frozenset()
    """`cloudfront.distributions`: distribution IDs that may be invalidated."""
    codedeploy_groups: frozenset[str] = frozenset()
    """`codedeploy.deployment_groups`: `application/group` whose deployments may be stopped."""
    rds_clusters: frozenset[str] = frozenset()
    """`rds.clusters`: Aurora clusters that may be failed over. Empty (the default): none."""
    rds_failover_window: float = 86400.0
    """`rds.failover_window`: at most one failover per cluster in this long, whatever the
    rules say. A day: a second failover within hours means the fault is elsewhere."""

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
    lam = r.section("lambda")
    stable_tag = lam.text("stable_tag", "remediator:stable-version")
    if not re.fullmatch(r"[\w.:/=+\-@ ]{1,128}", stable_tag):
        raise errors.ConfigError(f"{lam.prefix}stable_tag", f"not a tag key: {stable_tag!r}")
    rds = r.section("rds")
    window = rds.duration("failover_window", 86400.0)
    if not 600.0 <= window <= 30 * 86400.0:
        raise errors.ConfigError(f"{rds.prefix}failover_window", "must be in 10m..30d")
    return AwsConfig(
        region=region,
        endpoint_url=endpoint,
        profile=profile,
        account_id=account,
        max_attempts=r.integer("max_attempts", 3, lo=1, hi=10),
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        ecs_clusters=_names(r.section("ecs"), "clusters", ECS_NAME),
        lambda_functions=_names(lam, "functions", LAMBDA_NAME),
        lambda_stable_tag=stable_tag,
        sqs_queues=_names(r.section("sqs"), "queues", SQS_NAME),
        events_rules=_names(
            r.section("events"),
            "rules",
            re.compile(rf"(?:{EVENTS_BUS.pattern}/)?{EVENTS_RULE.pattern}"),
            what="a rule name or bus/rule",
        ),
        appconfig_applications=_names(
            r.section("appconfig"), "applications", APPCONFIG_ID, what="an application ID"
        ),
        cloudfront_distributions=_names(
            r.section("cloudfront"), "distributions", CLOUDFRONT_ID, what="a distribution ID"
        ),
        codedeploy_groups=_names(
            r.section("codedeploy"),
            "deployment_groups",
            re.compile(rf"{CODEDEPLOY_NAME.pattern}/{CODEDEPLOY_NAME.pattern}"),
            what="application/deployment-group",
        ),
        rds_clusters=_names(rds, "clusters", RDS_ID, what="a DB cluster identifier"),
        rds_failover_window=window,
    )


def _names(
    r: settings_mod.Reader,
    key: str,
    pattern: re.Pattern[str],
    *,
    what: str = "a name (names here, not ARNs)",
) -> frozenset[str]:
    out = set()
    for i, name in enumerate(r.raw_list(key)):
        if isinstance(name, int | float) and not isinstance(name, bool):
            raise errors.ConfigError(
                f"{r.prefix}{key}[{i}]",
                f'{name!r} was read as a number: quote it ("{name}") so YAML keeps it text',
            )
        if not isinstance(name, str) or not pattern.fullmatch(name):
            raise errors.ConfigError(f"{r.prefix}{key}[{i}]", f"not {what}: {name!r}")
        out.add(name)
    r.finish()
    return frozenset(out)


def cfg(settings: Settings) -> AwsConfig | None:
    """The `aws:` section, or None in a dry run without one (see base.family_config)."""
    found: AwsConfig | None = base.family_config(settings, SECTION)
    return found


# -- params that need each other --------------------------------------------------------


def one_of_step_or_to(values: Mapping[str, Any]) -> None:
    if ("step" in values) == ("to" in values):
        raise errors.ParamError("step", "give exactly one of `step` and `to`")
    if values.get("step") == 0:
        raise errors.ParamError("step", "a step of 0 changes nothing")


def ordered(values: Mapping[str, Any], lo: str, hi: str) -> None:
    if values[lo] > values[hi]:
        raise errors.ParamError(lo, f"{values[lo]} is above {hi} ({values[hi]})")


def bounds_note(values: Mapping[str, Any], lo: int, hi: int, new: int, current: int) -> str:
    want = values["to"] if "to" in values else current + values["step"]
    return f" (clamped from {want} to {lo}..{hi})" if want != new else f" (bounds {lo}..{hi})"


# -- calling AWS ------------------------------------------------------------------------


async def call(
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
    declared = CALLS.get((service, operation))
    if declared is None:  # a bug: the IAM policy would not grant it either
        raise errors.PermanentError(f"{service} {operation} is not declared (common.declare)")
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
        what=f"{service} {declared.api} {resource}",
        changes=declared.changes,
        permission=declared.iam[0],
        once=once,
    )
    return answer


def retry_budget(cfg: AwsConfig) -> float:
    """Seconds one AWS call may take at worst: every attempt timing out, plus botocore's
    standard-mode backoff (up to 2**i seconds before attempt i+2, capped at 20s)."""
    attempts = cfg.max_attempts * (cfg.connect_timeout + cfg.read_timeout)
    return attempts + sum(min(2.0**i, 20.0) for i in range(cfg.max_attempts - 1))


def not_checked(would: str) -> Result:
    return Result(
        detail=f"{would}; not checked against AWS: no `{SECTION}:` config",
        changed=False,
        data={"checked": False},
    )


def no_change(what: str, why: str, data: Mapping[str, Any]) -> Result:
    return Result(detail=f"{what}: no change because {why}", changed=False, data=data)
