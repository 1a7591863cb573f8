"""`codedeploy.stop_deployment`: stop a deployment group's unfinished deployments.

The ONS runbook's "stop in-progress deployments" (`list-deployments --include-only-statuses
InProgress`, then `stop-deployment` each). The group must be in
`aws.codedeploy.deployment_groups` (`application/group`); `auto_rollback` (default true,
literal) asks CodeDeploy to roll back what the stopped deployment already changed. At
most `MAX_DEPLOYMENTS` are stopped per run; each is read back.
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
    "codedeploy",
    {
        "list_deployments": common.Call("ListDeployments", ("codedeploy:ListDeployments",), False),
        "get_deployment": common.Call("GetDeployment", ("codedeploy:GetDeployment",), False),
        "stop_deployment": common.Call("StopDeployment", ("codedeploy:StopDeployment",), True),
    },
)

UNFINISHED = ("Created", "Queued", "InProgress", "Baking", "Ready")
"""Deployment statuses that can still be stopped (Ready: blue/green, waiting to reroute)."""
MAX_DEPLOYMENTS = 10
"""Deployments stopped per run at most (a group runs one at a time; a queue stays short)."""


def _name(what: str) -> params.Field:
    return params.Field(
        params.matching(common.CODEDEPLOY_NAME, is_not=f"a CodeDeploy {what} name"),
        doc=f"the {what}",
    )


class CodeDeployStopDeployment:
    type: ClassVar[str] = "codedeploy.stop_deployment"
    # Looks before it acts; stopping a deployment already stopped is answered as such.
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "application": _name("application"),
            "deployment_group": _name("deployment group"),
            "auto_rollback": params.Field(
                params.flag(),
                required=False,
                default=True,
                doc="roll back what a stopped deployment already changed (default true)",
            ),
        },
        literal=frozenset({"auto_rollback"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = common.cfg(settings)
        if cfg is not None:
            common.check_listed(
                "deployment_group",
                self.target(values),
                cfg.codedeploy_groups,
                "aws.codedeploy.deployment_groups",
            )

    def target(self, values: Mapping[str, Any]) -> str:
        return f"{values['application']}/{values['deployment_group']}"

    async def _unfinished(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> list[dict[str, Any]]:
        where = self.target(values)
        listed = await common.call(
            ctx, cfg, "codedeploy", "list_deployments",
            {"applicationName": values["application"],
             "deploymentGroupName": values["deployment_group"],
             "includeOnlyStatuses": list(UNFINISHED)},
            resource=where,
        )  # fmt: skip
        out = []
        for deployment_id in (listed.get("deployments") or [])[:MAX_DEPLOYMENTS]:
            info = await self._get(ctx, cfg, str(deployment_id), where)
            if info.get("status") in UNFINISHED:
                out.append(info)
        return out

    @staticmethod
    async def _get(ctx: Context, cfg: common.AwsConfig, deployment_id: str, where: str) -> Any:
        got = await common.call(
            ctx, cfg, "codedeploy", "get_deployment", {"deploymentId": deployment_id},
            resource=f"{where} {deployment_id}",
        )  # fmt: skip
        return got.get("deploymentInfo") or {}

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        from remediator.clients import aws as aws_client  # noqa: PLC0415 - loaded by common.call

        where = self.target(values)
        running = await self._unfinished(values, ctx, cfg)
        if not running:
            return common.no_change(
                f"codedeploy group {where}", "it has no unfinished deployment", {"group": where}
            )
        stopped: list[dict[str, Any]] = []
        for info in running:
            deployment_id = str(info.get("deploymentId"))
            try:
                answer = await common.call(
                    ctx, cfg, "codedeploy", "stop_deployment",
                    {"deploymentId": deployment_id, "autoRollbackEnabled": values["auto_rollback"]},
                    resource=f"{where} {deployment_id}",
                )  # fmt: skip
                stop = str(answer.get("status", ""))
            except aws_client.AwsError as exc:
                if common.code_of(exc) != "DeploymentAlreadyCompletedException":
                    raise
                stop = "already completed"  # it finished (or was stopped) meanwhile
            after = await self._get(ctx, cfg, deployment_id, where)
            stopped.append(
                {"id": deployment_id, "was": info.get("status"), "stop": stop,
                 "now": after.get("status")}
            )  # fmt: skip
        if any(
            s["now"] in ("InProgress", "Created", "Queued") and s["stop"] != "Pending"
            for s in stopped
        ):
            raise errors.PermanentError(
                f"codedeploy group {where}: a deployment is still running after StopDeployment: "
                f"{stopped}"
            )
        rollback = " with auto-rollback" if values["auto_rollback"] else " (no rollback)"
        return Result(
            detail=f"stopped {len(stopped)} deployment(s) of codedeploy group {where}{rollback}: "
            + ", ".join(f"{s['id']} ({s['was']} → {s['now']})" for s in stopped),
            data={"group": where, "auto_rollback": values["auto_rollback"], "stopped": stopped},
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        where = self.target(values)
        if cfg is None:
            return common.not_checked(
                f"would stop the unfinished deployments of codedeploy group {where}"
            )
        running = await self._unfinished(values, ctx, cfg)
        if not running:
            return common.no_change(
                f"codedeploy group {where}", "it has no unfinished deployment", {"group": where}
            )
        return Result(
            detail=f"would stop {len(running)} deployment(s) of codedeploy group {where}: "
            + ", ".join(f"{d.get('deploymentId')} ({d.get('status')})" for d in running),
            data={"group": where, "deployments": [d.get("deploymentId") for d in running]},
        )


registry.register(CodeDeployStopDeployment())
