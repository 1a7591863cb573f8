"""`lambda.*`: reserved concurrency.

lambda.set_concurrency    PutFunctionConcurrency by step or to a value, within bounds
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import errors
from remediator.actions import params, registry
from remediator.actions.aws import common
from remediator.actions.base import Context, Result
from remediator.settings import Settings

common.declare(
    "lambda",
    {
        "get_function_concurrency": common.Call(
            "GetFunctionConcurrency", ("lambda:GetFunctionConcurrency",), False
        ),
        "put_function_concurrency": common.Call(
            "PutFunctionConcurrency", ("lambda:PutFunctionConcurrency",), True
        ),
    },
)


def _concurrency_across(values: Mapping[str, Any]) -> None:
    common.one_of_step_or_to(values)
    common.ordered(values, "min_concurrency", "max_concurrency")
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
            "function": params.Field(common.name_or_arn("function"), doc="function name or ARN"),
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

    def _check(self, values: Mapping[str, Any], settings: Settings) -> common.AwsConfig | None:
        cfg = common.cfg(settings)
        if cfg is not None:
            fn = common.ref(values["function"], "function")
            common.check_place("function", fn, cfg)
            common.check_listed("function", fn.name, cfg.lambda_functions, "aws.lambda.functions")
        return cfg

    def target(self, values: Mapping[str, Any]) -> str:
        return common.ref(values["function"], "function").name

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[int | None, int, Result | None]:
        name = self.target(values)
        what = f"lambda function {name}"
        lo, hi = values["min_concurrency"], values["max_concurrency"]
        answer = await common.call(
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
                return None, 0, common.no_change(what, why, data)
            return None, min(max(values["to"], lo), hi), None
        want = values["to"] if "to" in values else current + values["step"]
        if current == 0 and want > 0:
            why = (
                "its reserved concurrency is 0: it was turned off on purpose (by a person or "
                "a rule), and is never turned back on automatically"
            )
            return current, current, common.no_change(what, why, data)
        new, why = params.plan(current, values, lo, hi)
        if new == current:
            return current, current, common.no_change(what, why, data)
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
        answer = await common.call(
            ctx, cfg, "lambda", "put_function_concurrency",
            {"FunctionName": name, "ReservedConcurrentExecutions": new}, resource=name,
        )  # fmt: skip
        after = int(answer.get("ReservedConcurrentExecutions", new))
        lo, hi = values["min_concurrency"], values["max_concurrency"]
        return Result(
            detail=f"set reserved concurrency of lambda function {name}: "
            f"{_show_concurrency(current)} → {after}"
            f"{common.bounds_note(values, lo, hi, new, current or 0)}",
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
            return common.not_checked(
                f"would set reserved concurrency of lambda function {name} {change} "
                f"within {lo}..{hi}"
            )
        current, new, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(
            detail=f"would set reserved concurrency of lambda function {name}: "
            f"{_show_concurrency(current)} → {new}"
            f"{common.bounds_note(values, lo, hi, new, current or 0)}",
            data={
                "function": name,
                "reserved_concurrency": {"before": current, "after": new},
                "bounds": [lo, hi],
            },
        )


def _show_concurrency(value: int | None) -> str:
    return "unreserved" if value is None else str(value)


registry.register(LambdaSetConcurrency())
