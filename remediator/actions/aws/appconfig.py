"""`appconfig.set_feature_flag`: turn one flag of a feature-flag profile off (or on), and
deploy that.

The ONS runbook's `rollback-flags` step. What runs is the configuration version last
deployed to the environment (not the newest hosted version, which may hold changes
someone staged and did not deploy): remediator reads it, changes only
`values.<flag>.enabled` in its text — every other byte stays as it was, so a diff of the
two versions shows the one change — creates a new hosted version with it, and starts a
deployment with the rule's strategy. It refuses while another deployment of the
environment is under way (AppConfig runs one at a time, and that one may be the fix or
the fault) and reads the deployment back.

IDs, not names, name the application, environment, profile and strategy (what the
AppConfig API takes, and what `terraform output` gives); the application must be in
`aws.appconfig.applications`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import errors
from remediator.actions import params, registry
from remediator.actions.aws import common
from remediator.actions.base import Context, Result
from remediator.settings import Settings

common.declare(
    "appconfig",
    {
        "get_configuration_profile": common.Call(
            "GetConfigurationProfile", ("appconfig:GetConfigurationProfile",), False
        ),
        "list_deployments": common.Call("ListDeployments", ("appconfig:ListDeployments",), False),
        "get_deployment": common.Call("GetDeployment", ("appconfig:GetDeployment",), False),
        "get_hosted_configuration_version": common.Call(
            "GetHostedConfigurationVersion", ("appconfig:GetHostedConfigurationVersion",), False
        ),
        "create_hosted_configuration_version": common.Call(
            "CreateHostedConfigurationVersion",
            ("appconfig:CreateHostedConfigurationVersion",),
            True,
        ),
        "start_deployment": common.Call("StartDeployment", ("appconfig:StartDeployment",), True),
    },
)

FEATURE_FLAGS = "AWS.AppConfig.FeatureFlags"
RUNNING = frozenset({"BAKING", "DEPLOYING", "VALIDATING", "ROLLING_BACK"})
"""Deployment states that are not finished: another deployment is refused meanwhile."""
_FLAG = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_STRATEGY = re.compile(r"[a-z0-9]{4,7}|AppConfig\.[A-Za-z0-9]{9,40}")
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _id(what: str) -> params.Field:
    text = params.matching(common.APPCONFIG_ID, is_not=f"an AppConfig {what} ID ([a-z0-9]{{4,7}})")

    def check(field: str, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            raise errors.ParamError(
                field, f'quote it ("{value}"): YAML reads an ID of digits as a number'
            )
        return str(text(field, value))

    return params.Field(check, doc=f"the {what} ID")


class AppConfigSetFeatureFlag:
    type: ClassVar[str] = "appconfig.set_feature_flag"
    # Looks before it acts, so the engine may run it again after a temporary error before
    # StartDeployment (at worst one more identical hosted version). StartDeployment is
    # sent once: after a lost answer the action fails with "outcome unknown".
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "application": _id("application"),
            "environment": _id("environment"),
            "profile": _id("configuration profile"),
            "flag": params.Field(
                params.matching(_FLAG, is_not="a feature flag key"), doc="the flag's key"
            ),
            "enabled": params.Field(params.flag(), doc="false turns it off, true on"),
            "deployment_strategy": params.Field(
                params.matching(_STRATEGY, is_not="a deployment strategy ID"),
                doc="how to deploy it, e.g. AppConfig.AllAtOnce",
            ),
        },
        literal=frozenset({"enabled", "deployment_strategy"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = common.cfg(settings)
        if cfg is not None:
            common.check_listed(
                "application",
                values["application"],
                cfg.appconfig_applications,
                "aws.appconfig.applications",
            )

    def target(self, values: Mapping[str, Any]) -> str:
        return "/".join(values[k] for k in ("application", "environment", "profile", "flag"))

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[dict[str, Any], Result | None]:
        """What is deployed and the text to deploy instead, or the no-change Result."""
        app, env, profile_id = values["application"], values["environment"], values["profile"]
        where = f"{app}/{env}"
        profile = await common.call(
            ctx, cfg, "appconfig", "get_configuration_profile",
            {"ApplicationId": app, "ConfigurationProfileId": profile_id},
            resource=f"{app}/{profile_id}",
        )  # fmt: skip
        if profile.get("Type") != FEATURE_FLAGS:
            raise errors.PermanentError(
                f"appconfig profile {app}/{profile_id} is {profile.get('Type') or 'freeform'}, "
                f"not {FEATURE_FLAGS}: it holds no feature flags"
            )
        listed = await common.call(
            ctx, cfg, "appconfig", "list_deployments",
            {"ApplicationId": app, "EnvironmentId": env, "MaxResults": 50}, resource=where,
        )  # fmt: skip
        items = sorted(
            listed.get("Items") or [], key=lambda d: int(d.get("DeploymentNumber", 0)), reverse=True
        )
        busy = [d for d in items if d.get("State") in RUNNING]
        if busy:
            d = busy[0]
            raise errors.PermanentError(
                f"appconfig environment {where}: deployment {d.get('DeploymentNumber')} "
                f"({d.get('ConfigurationName')} version {d.get('ConfigurationVersion')}) is "
                f"{d.get('State')}; AppConfig runs one deployment per environment at a time: "
                "wait for it or stop it (aws appconfig stop-deployment) first"
            )
        deployed = None
        for d in items:
            if d.get("State") != "COMPLETE" or d.get("ConfigurationName") != profile.get("Name"):
                continue
            full = await common.call(
                ctx, cfg, "appconfig", "get_deployment",
                {"ApplicationId": app, "EnvironmentId": env,
                 "DeploymentNumber": int(d["DeploymentNumber"])},
                resource=where,
            )  # fmt: skip
            if full.get("ConfigurationProfileId") == profile_id:
                deployed = full
                break
        if deployed is None:
            raise errors.PermanentError(
                f"appconfig profile {app}/{profile_id} has no completed deployment in "
                f"environment {env}: nothing live to change"
            )
        version = str(deployed["ConfigurationVersion"])
        hosted = await common.call(
            ctx, cfg, "appconfig", "get_hosted_configuration_version",
            {"ApplicationId": app, "ConfigurationProfileId": profile_id,
             "VersionNumber": int(version)},
            resource=f"{app}/{profile_id}/{version}",
        )  # fmt: skip
        content = hosted.get("Content") or b""
        text = content.decode("utf-8") if isinstance(content, bytes) else str(content)
        flag = values["flag"]
        try:
            current, new_text = set_flag(text, flag, values["enabled"])
        except ValueError as exc:
            raise errors.PermanentError(
                f"appconfig profile {app}/{profile_id} version {version}: {exc}"
            ) from exc
        plan = {
            "application": app, "environment": env, "profile": profile_id, "flag": flag,
            "deployed_version": version, "deployment": deployed.get("DeploymentNumber"),
            "enabled": {"before": current, "after": values["enabled"]},
            "content_type": hosted.get("ContentType") or "application/json", "text": new_text,
        }  # fmt: skip
        if current == values["enabled"]:
            data = {k: v for k, v in plan.items() if k not in ("text", "content_type")}
            why = f"flag {flag} is already {'on' if current else 'off'} in version {version}"
            return plan, common.no_change(f"appconfig profile {app}/{profile_id}", why, data)
        return plan, None

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        plan, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        app, env, profile_id = plan["application"], plan["environment"], plan["profile"]
        state = "on" if values["enabled"] else "off"
        note = f"remediator: flag {plan['flag']} {state} (rule {ctx.rule})"
        created = await common.call(
            ctx, cfg, "appconfig", "create_hosted_configuration_version",
            {"ApplicationId": app, "ConfigurationProfileId": profile_id,
             "Content": plan["text"].encode("utf-8"), "ContentType": plan["content_type"],
             "Description": note[:1024]},
            resource=f"{app}/{profile_id}",
        )  # fmt: skip
        version = str(created["VersionNumber"])
        started = await common.call(
            ctx, cfg, "appconfig", "start_deployment",
            {"ApplicationId": app, "EnvironmentId": env, "ConfigurationProfileId": profile_id,
             "ConfigurationVersion": version,
             "DeploymentStrategyId": values["deployment_strategy"], "Description": note[:1024]},
            resource=f"{app}/{env}",
            once=f"check the environment's deployments (`aws appconfig list-deployments "
            f"--application-id {app} --environment-id {env}`) before starting another",
        )  # fmt: skip
        number = int(started["DeploymentNumber"])
        after = await common.call(
            ctx, cfg, "appconfig", "get_deployment",
            {"ApplicationId": app, "EnvironmentId": env, "DeploymentNumber": number},
            resource=f"{app}/{env}",
        )  # fmt: skip
        if str(after.get("ConfigurationVersion")) != version:
            raise errors.PermanentError(
                f"appconfig deployment {number} of {app}/{env} deploys version "
                f"{after.get('ConfigurationVersion')}, not {version}"
            )
        return Result(
            detail=f"turned flag {plan['flag']} {state} in appconfig profile {app}/{profile_id}: "
            f"version {plan['deployed_version']} → {version}, deployment {number} "
            f"({after.get('State')}, strategy {values['deployment_strategy']})",
            data={
                "application": app,
                "environment": env,
                "profile": profile_id,
                "flag": plan["flag"],
                "enabled": plan["enabled"],
                "version": {"before": plan["deployed_version"], "after": version},
                "deployment": number,
                "state": after.get("State"),
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        state = "on" if values["enabled"] else "off"
        profile = f"{values['application']}/{values['profile']}"
        what = f"flag {values['flag']} in appconfig profile {profile}"
        if cfg is None:
            return common.not_checked(f"would turn {what} {state}")
        plan, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(
            detail=f"would turn {what} {state} (a new version from version "
            f"{plan['deployed_version']}, deployed with {values['deployment_strategy']})",
            data={k: v for k, v in plan.items() if k not in ("text", "content_type")},
        )


def set_flag(text: str, flag: str, enabled: bool) -> tuple[bool, str]:
    """(the flag's current `enabled`, `text` with only `values.<flag>.enabled` changed).

    Edits the JSON text in place — whitespace, key order, number spelling and every other
    flag stay byte for byte — and checks the result parses to the same document but for
    that one value. ValueError says why it cannot (not JSON, no such flag).
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the content is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or flag not in (doc.get("flags") or {}):
        raise ValueError(f"no feature flag {flag!r} is defined")
    values = _members(text, 0).get("values")
    if values is None:
        raise ValueError("no `values` in the feature flags")
    entry = _members(text, values[0]).get(flag)
    if entry is None:
        raise ValueError(f"flag {flag!r} has no value")
    span = _members(text, entry[0]).get("enabled")
    if span is None:
        raise ValueError(f"flag {flag!r} has no `enabled` value")
    current = json.loads(text[span[0] : span[1]])
    if not isinstance(current, bool):
        raise ValueError(f"flag {flag!r} has enabled={current!r}, not true or false")
    new = text[: span[0]] + ("true" if enabled else "false") + text[span[1] :]
    expected = json.loads(text)
    expected["values"][flag]["enabled"] = enabled
    if json.loads(new) != expected:  # e.g. a duplicate key: the last one wins
        raise ValueError(f"flag {flag!r} cannot be changed alone (duplicate keys?)")
    return current, new


def _members(text: str, start: int) -> dict[str, tuple[int, int]]:
    """Key → (start, end) of each value of the JSON object at `text[start]`."""
    i = _skip(text, start)
    if text[i : i + 1] != "{":
        raise ValueError(f"expected an object at offset {i}")
    i = _skip(text, i + 1)
    out: dict[str, tuple[int, int]] = {}
    if text[i : i + 1] == "}":
        return out
    while True:
        if text[i : i + 1] != '"':
            raise ValueError(f"expected a key at offset {i}")
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]  # public, unlisted in typeshed
        i = _skip(text, i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at offset {i}")
        i = _skip(text, i + 1)
        _, end = _DECODER.raw_decode(text, i)
        out[key] = (i, end)
        i = _skip(text, end)
        if text[i : i + 1] == ",":
            i = _skip(text, i + 1)
        elif text[i : i + 1] == "}":
            return out
        else:
            raise ValueError(f"expected ',' or '}}' at offset {i}")


def _skip(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


registry.register(AppConfigSetFeatureFlag())
