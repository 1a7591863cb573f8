"""`events.disable_rule`: disable (or enable again) an EventBridge rule.

The ONS runbook's "stop processing" step (`aws events disable-rule --name ...`): the
rule must be in `aws.events.rules` (`name` on the default bus, or `bus/name`). A rule
another AWS service manages (ManagedBy) is refused: that service would re-enable it.
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
    "events",
    {
        "describe_rule": common.Call("DescribeRule", ("events:DescribeRule",), False),
        "disable_rule": common.Call("DisableRule", ("events:DisableRule",), True),
        "enable_rule": common.Call("EnableRule", ("events:EnableRule",), True),
    },
)


class EventsDisableRule:
    type: ClassVar[str] = "events.disable_rule"
    # Setting a rule's state twice is harmless.
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "rule": params.Field(
                params.matching(common.EVENTS_RULE, is_not="an EventBridge rule name"),
                doc="the rule's name",
            ),
            "event_bus": params.Field(
                params.matching(common.EVENTS_BUS, is_not="an event bus name"),
                required=False,
                doc="the bus it is on (default: the default bus)",
            ),
            "enabled": params.Field(
                params.flag(), doc="false disables the rule, true enables it again"
            ),
        },
        literal=frozenset({"enabled"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = common.cfg(settings)
        if cfg is not None:
            common.check_listed("rule", self.target(values), cfg.events_rules, "aws.events.rules")

    def target(self, values: Mapping[str, Any]) -> str:
        bus = values.get("event_bus")
        return f"{bus}/{values['rule']}" if bus and bus != "default" else str(values["rule"])

    def _request(self, values: Mapping[str, Any]) -> dict[str, Any]:
        request = {"Name": values["rule"]}
        if values.get("event_bus"):
            request["EventBusName"] = values["event_bus"]
        return request

    async def _state(self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig) -> str:
        rule = await common.call(
            ctx, cfg, "events", "describe_rule", self._request(values), resource=self.target(values)
        )
        if rule.get("ManagedBy"):
            raise errors.PermanentError(
                f"eventbridge rule {self.target(values)} is managed by {rule['ManagedBy']}: "
                "that service owns its state"
            )
        return str(rule.get("State", ""))

    async def _set(self, values: Mapping[str, Any], ctx: Context, *, dry: bool) -> Result:
        cfg = common.cfg(ctx.settings)
        what = f"eventbridge rule {self.target(values)}"
        verb = "enable" if values["enabled"] else "disable"
        if cfg is None:
            return common.not_checked(f"would {verb} {what}")
        before = await self._state(values, ctx, cfg)
        on = before.startswith("ENABLED")
        data = {"rule": self.target(values), "state": before}
        if on == values["enabled"]:
            return common.no_change(what, f"it is {before}", data)
        if dry:
            return Result(detail=f"would {verb} {what} (now {before})", data=data)
        request, where = self._request(values), self.target(values)
        if values["enabled"]:
            await common.call(ctx, cfg, "events", "enable_rule", request, resource=where)
        else:
            await common.call(ctx, cfg, "events", "disable_rule", request, resource=where)
        after = await self._state(values, ctx, cfg)
        if after.startswith("ENABLED") != values["enabled"]:
            raise errors.PermanentError(f"{what}: still {after} after {verb.capitalize()}Rule")
        return Result(
            detail=f"{verb}d {what}: {before} → {after}",
            data={**data, "state": {"before": before, "after": after}},
        )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._set(values, ctx, dry=False)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._set(values, ctx, dry=True)


registry.register(EventsDisableRule())
