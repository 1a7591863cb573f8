"""`lambda.*`: reserved concurrency.

lambda.set_concurrency    PutFunctionConcurrency by step or to a value, within bounds
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
    "lambda",
    {
        "get_function_concurrency": common.Call(
            "GetFunctionConcurrency", ("lambda:GetFunctionConcurrency",), False
        ),
        "put_function_concurrency": common.Call(
            "PutFunctionConcurrency", ("lambda:PutFunctionConcurrency",), True
        ),
        "get_alias": common.Call("GetAlias", ("lambda:GetAlias",), False),
        "list_aliases": common.Call("ListAliases", ("lambda:ListAliases",), False),
        "update_alias": common.Call("UpdateAlias", ("lambda:UpdateAlias",), True),
        "list_versions_by_function": common.Call(
            "ListVersionsByFunction", ("lambda:ListVersionsByFunction",), False
        ),
        "list_tags": common.Call("ListTags", ("lambda:ListTags",), False),
        "list_event_source_mappings": common.Call(
            "ListEventSourceMappings", ("lambda:ListEventSourceMappings",), False, unscoped=True
        ),
        "get_event_source_mapping": common.Call(
            "GetEventSourceMapping", ("lambda:GetEventSourceMapping",), False
        ),
        "update_event_source_mapping": common.Call(
            "UpdateEventSourceMapping", ("lambda:UpdateEventSourceMapping",), True
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
        return _check_function(values, settings)

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        return await function_evidence(values, ctx)

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


# -- alias rollback -----------------------------------------------------------------------

_ALIAS = re.compile(r"(?!^[0-9]+$)[A-Za-z0-9_-]{1,128}")
_VERSION = re.compile(r"[0-9]{1,10}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VERSION_PAGES = 10
"""Pages of ListVersionsByFunction read (50 versions each) to find the previous one."""
EVIDENCE_ALIASES = 10


def _version_param() -> params.Validator:
    def check(field: str, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value == "$LATEST":
            raise errors.ParamError(
                field, "$LATEST is not a version: an alias must point at a published version"
            )
        if not isinstance(value, str) or not _VERSION.fullmatch(value):
            raise errors.ParamError(field, f"{value!r:.80} is not a published version number")
        return value

    return check


def _rollback_across(values: Mapping[str, Any]) -> None:
    if "version" in values and "to" in values:
        raise errors.ParamError("version", "give `version` or `to`, not both")


def _weights(alias: Mapping[str, Any]) -> dict[str, float]:
    routing = alias.get("RoutingConfig") or {}
    return dict(routing.get("AdditionalVersionWeights") or {})


class LambdaRollbackAlias:
    type: ClassVar[str] = "lambda.rollback_alias"
    # Run again, `previous` would step back once more: never repeated by the engine.
    # UpdateAlias carries the RevisionId read: a retry after a lost answer is refused
    # (412) and read back instead of applied twice.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "function": params.Field(common.name_or_arn("function"), doc="function name or ARN"),
            "alias": params.Field(
                params.matching(_ALIAS, is_not="an alias name"), doc="the alias, e.g. LIVE"
            ),
            "version": params.Field(
                _version_param(), required=False, doc="roll back to this published version"
            ),
            "to": params.Field(
                params.choice("previous", "stable"),
                required=False,
                default="previous",
                doc="`previous`: the published version before the alias's; `stable`: the "
                "version the function's stable tag names (aws.lambda.stable_tag)",
            ),
        },
        literal=frozenset({"version", "to"}),
        across=_rollback_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        _check_function(values, settings)

    def target(self, values: Mapping[str, Any]) -> str:
        return f"{common.ref(values['function'], 'function').name}:{values['alias']}"

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        return await function_evidence(values, ctx)

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[dict[str, Any], str, Result | None]:
        """(the alias as read, the version to point it at, or the no-change Result)."""
        name = common.ref(values["function"], "function").name
        what = f"lambda alias {name}:{values['alias']}"
        alias = await common.call(
            ctx, cfg, "lambda", "get_alias",
            {"FunctionName": name, "Name": values["alias"]}, resource=f"{name}:{values['alias']}",
        )  # fmt: skip
        current = str(alias.get("FunctionVersion", ""))
        weights = _weights(alias)
        data = {"function": name, "alias": values["alias"], "version": current, "weights": weights}
        if current == "$LATEST":
            raise errors.PermanentError(
                f"{what} points at $LATEST, not a published version: there is no version to "
                "step back from (publish versions and point the alias at one)"
            )
        if "version" in values:
            chosen = values["version"]
            await self._versions(ctx, cfg, name, must_have=chosen)
        elif values["to"] == "stable":
            chosen = await self._stable(ctx, cfg, name, alias)
        elif weights:
            # A weighted alias is a canary: the extra version is the new one; going back
            # is dropping it and keeping the alias's own version.
            chosen = current
        else:
            older = [v for v in await self._versions(ctx, cfg, name) if v < int(current)]
            if not older:
                raise errors.PermanentError(
                    f"{what} points at version {current}: no earlier published version"
                )
            chosen = str(max(older))
        if chosen == current and not weights:
            return alias, chosen, common.no_change(what, f"it already points at {chosen}", data)
        return alias, chosen, None

    async def _versions(
        self, ctx: Context, cfg: common.AwsConfig, name: str, *, must_have: str | None = None
    ) -> list[int]:
        found: list[int] = []
        marker: str | None = None
        for _ in range(VERSION_PAGES):
            request: dict[str, Any] = {"FunctionName": name, "MaxItems": 50}
            if marker:
                request["Marker"] = marker
            page = await common.call(
                ctx, cfg, "lambda", "list_versions_by_function", request, resource=name
            )
            found += [
                int(v["Version"])
                for v in page.get("Versions") or []
                if _VERSION.fullmatch(str(v.get("Version")))
            ]
            marker = page.get("NextMarker")
            if not marker or (must_have is not None and int(must_have) in found):
                break
        if must_have is not None and int(must_have) not in found:
            raise errors.PermanentError(
                f"lambda function {name} has no published version {must_have}"
            )
        return found

    async def _stable(
        self, ctx: Context, cfg: common.AwsConfig, name: str, alias: Mapping[str, Any]
    ) -> str:
        arn = str(alias.get("AliasArn", "")).rpartition(":")[0]  # the function's own ARN
        tags = (
            await common.call(ctx, cfg, "lambda", "list_tags", {"Resource": arn}, resource=name)
        ).get("Tags") or {}
        stable = str(tags.get(cfg.lambda_stable_tag, ""))
        if not _VERSION.fullmatch(stable):
            raise errors.PermanentError(
                f"lambda function {name} has no tag {cfg.lambda_stable_tag} "
                f"(aws.lambda.stable_tag) naming a published version (found {stable!r:.40})"
            )
        await self._versions(ctx, cfg, name, must_have=stable)
        return stable

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = _check_function(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        name = common.ref(values["function"], "function").name
        alias, chosen, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        from remediator.clients import aws as aws_client  # noqa: PLC0415 - loaded by common.call

        request = {
            "FunctionName": name,
            "Name": values["alias"],
            "FunctionVersion": chosen,
            "RoutingConfig": {"AdditionalVersionWeights": {}},
            "RevisionId": alias.get("RevisionId"),
        }
        where = f"{name}:{values['alias']}"
        try:
            await common.call(ctx, cfg, "lambda", "update_alias", request, resource=where)
        except aws_client.AwsError as exc:
            if common.code_of(exc) != "PreconditionFailedException":
                raise
            # It changed since it was read; maybe by this very update, sent again after a
            # lost answer. Read back below: done if it points where asked, else refused.
        after = await common.call(
            ctx, cfg, "lambda", "get_alias", {"FunctionName": name, "Name": values["alias"]},
            resource=where,
        )  # fmt: skip
        if str(after.get("FunctionVersion")) != chosen or _weights(after):
            raise errors.PermanentError(
                f"lambda alias {where} changed while it was rolled back: it points at "
                f"{after.get('FunctionVersion')} (weights {_weights(after)}), not {chosen}; "
                "someone else is deploying it"
            )
        before = str(alias.get("FunctionVersion"))
        dropped = f", dropped the weights {_weights(alias)}" if _weights(alias) else ""
        return Result(
            detail=f"rolled back lambda alias {where} from version {before} to {chosen}{dropped}",
            data={
                "function": name,
                "alias": values["alias"],
                "version": {"before": before, "after": chosen},
                "weights_before": _weights(alias),
                "revision_id": after.get("RevisionId"),
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = _check_function(values, ctx.settings)
        where = self.target(values)
        if cfg is None:
            to = values.get("version") or values["to"]
            return common.not_checked(f"would roll back lambda alias {where} to {to}")
        alias, chosen, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(
            detail=f"would roll back lambda alias {where} from version "
            f"{alias.get('FunctionVersion')} to {chosen}",
            data={"version": {"before": alias.get("FunctionVersion"), "after": chosen}},
        )


def _check_function(values: Mapping[str, Any], settings: Settings) -> common.AwsConfig | None:
    cfg = common.cfg(settings)
    if cfg is not None:
        fn = common.ref(values["function"], "function")
        common.check_place("function", fn, cfg)
        common.check_listed("function", fn.name, cfg.lambda_functions, "aws.lambda.functions")
    return cfg


# -- event source mappings --------------------------------------------------------------


def _source_param() -> params.Validator:
    queue = common.name_or_arn("queue")

    def check(field: str, value: Any) -> str:
        if isinstance(value, str) and _UUID.fullmatch(value):
            return value
        try:
            return str(queue(field, value))
        except errors.ParamError as exc:
            raise errors.ParamError(
                field, f"{value!r:.80} is not an SQS queue name or ARN, nor a mapping UUID"
            ) from exc

    return check


class LambdaSetEventSource:
    type: ClassVar[str] = "lambda.set_event_source"
    # Setting Enabled to an absolute value twice is harmless.
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "function": params.Field(common.name_or_arn("function"), doc="function name or ARN"),
            "source": params.Field(
                _source_param(),
                doc="the trigger: its SQS queue (name or ARN) or the mapping's UUID",
            ),
            "enabled": params.Field(
                params.flag(), doc="false disables the trigger, true enables it"
            ),
        },
        literal=frozenset({"enabled"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = _check_function(values, settings)
        source = values["source"]
        if cfg is not None and not _UUID.fullmatch(source):
            common.check_place("source", common.ref(source, "queue"), cfg)

    def target(self, values: Mapping[str, Any]) -> str:
        source = values["source"]
        shown = source if _UUID.fullmatch(source) else common.ref(source, "queue").name
        return f"{common.ref(values['function'], 'function').name}/{shown}"

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        return await function_evidence(values, ctx)

    async def _mapping(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> dict[str, Any]:
        name = common.ref(values["function"], "function").name
        source = values["source"]
        if _UUID.fullmatch(source):
            mapping = await common.call(
                ctx, cfg, "lambda", "get_event_source_mapping", {"UUID": source}, resource=source
            )
            owner = str(mapping.get("FunctionArn", "")).split(":")[6:7]
            if owner != [name]:
                raise errors.NotAllowed(
                    "source", f"mapping {source} triggers {':'.join(owner) or '?'}, not {name}"
                )
            return mapping
        queue = common.ref(source, "queue")
        listed = await common.call(
            ctx, cfg, "lambda", "list_event_source_mappings",
            {"FunctionName": name, "MaxItems": 100}, resource=name,
        )  # fmt: skip
        found = [
            m
            for m in listed.get("EventSourceMappings") or []
            if str(m.get("EventSourceArn", "")).split(":")[:6][-1:] == [queue.name]
            and (queue.region is None or m.get("EventSourceArn") == source)
        ]
        if not found:
            raise errors.PermanentError(
                f"lambda function {name} has no event source mapping from queue {queue.name}"
            )
        if len(found) > 1:
            uuids = ", ".join(str(m.get("UUID")) for m in found)
            raise errors.PermanentError(
                f"lambda function {name} has {len(found)} mappings from queue {queue.name} "
                f"({uuids}): name one by its UUID"
            )
        return dict(found[0])

    async def _set(self, values: Mapping[str, Any], ctx: Context, *, dry: bool) -> Result:
        cfg = _check_function(values, ctx.settings)
        want = "enable" if values["enabled"] else "disable"
        where = self.target(values)
        if cfg is None:
            return common.not_checked(f"would {want} lambda event source {where}")
        mapping = await self._mapping(values, ctx, cfg)
        uuid, state = str(mapping.get("UUID")), str(mapping.get("State", ""))
        data = {"uuid": uuid, "source": mapping.get("EventSourceArn"), "state": state}
        on = ("Enabled", "Enabling")
        if (state in on) == values["enabled"] and state in (*on, "Disabled", "Disabling"):
            return common.no_change(f"lambda event source {where}", f"it is {state}", data)
        if dry:
            return Result(
                detail=f"would {want} lambda event source {where} (mapping {uuid}, {state})",
                data=data,
            )
        answer = await common.call(
            ctx, cfg, "lambda", "update_event_source_mapping",
            {"UUID": uuid, "Enabled": values["enabled"]}, resource=uuid,
        )  # fmt: skip
        after = str(answer.get("State", ""))
        expected = on if values["enabled"] else ("Disabled", "Disabling")
        if after not in expected:
            raise errors.PermanentError(
                f"lambda UpdateEventSourceMapping {uuid} answered State {after!r}, not "
                f"{' or '.join(expected)}"
            )
        return Result(
            detail=f"{want}d lambda event source {where} (mapping {uuid}): {state} → {after}",
            data={**data, "state": {"before": state, "after": after}},
        )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._set(values, ctx, dry=False)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        return await self._set(values, ctx, dry=True)


# -- evidence -----------------------------------------------------------------------------


async def function_evidence(values: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """What the function looks like before acting: its aliases (the version each points
    at, and a canary's weights) and its event source mappings (state, source)."""
    cfg = common.cfg(ctx.settings)
    if cfg is None:
        return {"note": f"not captured: no `{common.SECTION}:` config"}
    name = common.ref(values["function"], "function").name
    aliases = await common.call(
        ctx, cfg, "lambda", "list_aliases", {"FunctionName": name, "MaxItems": EVIDENCE_ALIASES},
        resource=name,
    )  # fmt: skip
    mappings = await common.call(
        ctx, cfg, "lambda", "list_event_source_mappings", {"FunctionName": name, "MaxItems": 10},
        resource=name,
    )  # fmt: skip
    return {
        "function": name,
        "aliases": [
            {"name": a.get("Name"), "version": a.get("FunctionVersion"), "weights": _weights(a)}
            for a in aliases.get("Aliases") or []
        ],
        "event_sources": [
            {"uuid": m.get("UUID"), "source": m.get("EventSourceArn"), "state": m.get("State")}
            for m in mappings.get("EventSourceMappings") or []
        ],
    }


registry.register(LambdaSetConcurrency())
registry.register(LambdaRollbackAlias())
registry.register(LambdaSetEventSource())
