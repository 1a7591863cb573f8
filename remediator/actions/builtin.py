"""`log`: record only. The way to try a rule before it does anything."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from remediator.actions import params, registry
from remediator.actions.base import Context, Result
from remediator.settings import Settings


class Log:
    type: ClassVar[str] = "log"
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = True
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "message": params.Field(params.text(max_len=2000), doc="what to record"),
            "target": params.Field(
                params.text(max_len=253, multiline=False),
                required=False,
                doc="what the message is about; cooldowns key on it (default: the rule)",
            ),
        }
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        return None

    def target(self, values: Mapping[str, Any]) -> str:
        return str(values.get("target", ""))

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        ctx.log.info("action_log", message=values["message"])
        return Result(detail=values["message"])

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return Result(detail=f"would log: {values['message']}")


registry.register(Log())
