"""`cloudfront.create_invalidation`: invalidate a bounded list of paths, once per decision.

The Plooral runbook's `aws cloudfront create-invalidation --paths "/*"`. The rule names
the paths (a label may fill one in; each is checked) and `max_paths`, a literal bound;
the distribution must be in `aws.cloudfront.distributions`.

The CallerReference is derived from the decision (rule, alert occurrence, decision id):
CloudFront answers a request whose CallerReference it has seen with the invalidation it
already created, so a retry — botocore's after a lost answer, or the engine's — never
invalidates twice, and the action may be retried.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import errors
from remediator.actions import params, registry
from remediator.actions.aws import common
from remediator.actions.base import Context, Result
from remediator.settings import Settings

common.declare(
    "cloudfront",
    {
        "get_distribution": common.Call("GetDistribution", ("cloudfront:GetDistribution",), False),
        "create_invalidation": common.Call(
            "CreateInvalidation", ("cloudfront:CreateInvalidation",), True
        ),
        "get_invalidation": common.Call("GetInvalidation", ("cloudfront:GetInvalidation",), False),
    },
)

MAX_PATHS = 3000
"""CloudFront's limit of paths in progress per distribution (a wildcard counts as one)."""
_PATH = re.compile(r"/[\x21-\x7e]{0,4095}")


def _paths() -> params.Validator:
    def check(field: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise errors.ParamError(field, "expected a non-empty list of paths like /index.html")
        if len(value) > MAX_PATHS:
            raise errors.ParamError(field, f"more than {MAX_PATHS} paths")
        out = []
        for i, raw in enumerate(value):
            text = raw
            if _is_template(raw):
                if not raw.is_literal:
                    out.append("")  # checked again once rendered
                    continue
                text = raw.render_literal()
            if not isinstance(text, str) or not _PATH.fullmatch(text):
                raise errors.ParamError(
                    f"{field}[{i}]", f"{str(text)[:80]!r} is not a path (/ first, no spaces)"
                )
            if "*" in text[:-1]:
                raise errors.ParamError(f"{field}[{i}]", "a * may only end a path (/assets/*)")
            out.append(text)
        return out

    return check


def _no_wildcard(value: str) -> str:
    """What a template inserts into a path: a `*` there would widen the invalidation to a
    whole tree (or the distribution) the rule never wrote; only its own text may."""
    if "*" in value:
        raise errors.TemplateError(
            f"{value[:80]!r}: a label value cannot add a wildcard (*) to a path"
        )
    return value


def _is_template(value: Any) -> bool:
    from remediator.matching.templates import Template  # noqa: PLC0415 - avoids a cycle

    return isinstance(value, Template)


def _across(values: Mapping[str, Any]) -> None:
    paths, limit = values.get("paths"), values.get("max_paths")
    if isinstance(paths, list) and isinstance(limit, int) and len(paths) > limit:
        raise errors.ParamError("paths", f"{len(paths)} paths, more than max_paths {limit}")


class CloudFrontCreateInvalidation:
    type: ClassVar[str] = "cloudfront.create_invalidation"
    # The CallerReference makes a repeat return the first invalidation: safe to retry.
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "distribution_id": params.Field(
                params.matching(common.CLOUDFRONT_ID, is_not="a CloudFront distribution ID"),
                doc="the distribution (must be in aws.cloudfront.distributions)",
            ),
            "paths": params.Field(
                _paths(),
                doc="paths to invalidate, e.g. [/*] or [/index.html]",
                escape=_no_wildcard,
            ),
            "max_paths": params.Field(
                params.bound(lo=1, hi=MAX_PATHS), doc="at most this many paths (required)"
            ),
        },
        literal=frozenset({"max_paths"}),
        across=_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = common.cfg(settings)
        if cfg is not None:
            common.check_listed(
                "distribution_id",
                values["distribution_id"],
                cfg.cloudfront_distributions,
                "aws.cloudfront.distributions",
            )

    def target(self, values: Mapping[str, Any]) -> str:
        return str(values["distribution_id"])

    @staticmethod
    def caller_reference(values: Mapping[str, Any], ctx: Context) -> str:
        """The same for every try of one decision, different for any other."""
        alert = ctx.alert
        material = "\x00".join(
            [ctx.rule, alert.fingerprint, alert.starts_iso, str(ctx.decision_id),
             values["distribution_id"], *sorted(values["paths"])]
        )  # fmt: skip
        digest = hashlib.sha256(material.encode()).hexdigest()[:32]
        return f"remediator-{ctx.decision_id}-{digest}"

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        dist, paths = values["distribution_id"], list(values["paths"])
        reference = self.caller_reference(values, ctx)
        answer = await common.call(
            ctx, cfg, "cloudfront", "create_invalidation",
            {"DistributionId": dist,
             "InvalidationBatch": {"Paths": {"Quantity": len(paths), "Items": paths},
                                   "CallerReference": reference}},
            resource=dist,
        )  # fmt: skip
        created = answer.get("Invalidation") or {}
        inv_id = str(created.get("Id", ""))
        after = await common.call(
            ctx, cfg, "cloudfront", "get_invalidation", {"DistributionId": dist, "Id": inv_id},
            resource=f"{dist}/{inv_id}",
        )  # fmt: skip
        inv = after.get("Invalidation") or {}
        batch = inv.get("InvalidationBatch") or {}
        got = sorted((batch.get("Paths") or {}).get("Items") or [])
        if got != sorted(paths) or batch.get("CallerReference") != reference:
            raise errors.PermanentError(
                f"cloudfront invalidation {inv_id} of {dist} holds {got}, not {sorted(paths)}"
            )
        return Result(
            detail=f"invalidated {len(paths)} path(s) of cloudfront distribution {dist}: "
            f"{', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''} (invalidation {inv_id}, "
            f"{inv.get('Status')})",
            data={
                "distribution_id": dist,
                "invalidation_id": inv_id,
                "status": inv.get("Status"),
                "paths": paths,
                "caller_reference": reference,
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        dist, paths = values["distribution_id"], list(values["paths"])
        would = (
            f"would invalidate {len(paths)} path(s) of cloudfront distribution {dist}: "
            + ", ".join(paths[:5])
        )
        if cfg is None:
            return common.not_checked(would)
        found = await common.call(
            ctx, cfg, "cloudfront", "get_distribution", {"Id": dist}, resource=dist
        )
        distribution = found.get("Distribution") or {}
        return Result(
            detail=f"{would} ({distribution.get('DomainName')}, {distribution.get('Status')})",
            data={"distribution_id": dist, "paths": paths, "status": distribution.get("Status")},
        )


registry.register(CloudFrontCreateInvalidation())
