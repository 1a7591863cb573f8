"""`rds.failover_db_cluster`: fail an Aurora cluster over to a replica — the last resort.

Allowed only for clusters the config's `aws.rds.clusters` names (empty by default:
none), and at most once per cluster per `aws.rds.failover_window` (24 h by default)
whatever the rules say: a second failover within hours means the fault is elsewhere,
and each one drops every connection.

The record of the last failover lives on the cluster itself, as the tag
`remediator:last-failover` (`<RFC 3339 time> rule=<rule> decision=<id>`): it survives a
restart of the daemon, is seen by every replica sharing the cluster, and shows in the
console. It is written *before* the failover is asked for, so a failover that fails
still counts: a human looks before another is tried (delete the tag to allow one).
Two runs on one cluster never overlap: the engine holds the target lock
(`rds.failover_db_cluster <cluster>`) around each, across rules and replicas.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import durations, errors
from remediator.actions import params, registry
from remediator.actions.aws import common
from remediator.actions.base import Context, Result
from remediator.settings import Settings

common.declare(
    "rds",
    {
        "describe_db_clusters": common.Call(
            "DescribeDBClusters", ("rds:DescribeDBClusters",), False
        ),
        "list_tags_for_resource": common.Call(
            "ListTagsForResource", ("rds:ListTagsForResource",), False
        ),
        "add_tags_to_resource": common.Call("AddTagsToResource", ("rds:AddTagsToResource",), True),
        "failover_db_cluster": common.Call("FailoverDBCluster", ("rds:FailoverDBCluster",), True),
    },
)

TAG = "remediator:last-failover"
_TAG_VALUE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z)(?: .*)?")


class RdsFailoverDbCluster:
    type: ClassVar[str] = "rds.failover_db_cluster"
    # Never repeated by the engine; FailoverDBCluster itself is sent once.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "cluster": params.Field(
                params.matching(common.RDS_ID, is_not="a DB cluster identifier"),
                doc="the Aurora cluster (must be in aws.rds.clusters)",
            ),
            "target_instance": params.Field(
                params.matching(common.RDS_ID, is_not="a DB instance identifier"),
                required=False,
                doc="the reader to promote (default: the one Aurora picks)",
            ),
        }
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg = common.cfg(settings)
        if cfg is not None:
            common.check_listed("cluster", values["cluster"], cfg.rds_clusters, "aws.rds.clusters")

    def target(self, values: Mapping[str, Any]) -> str:
        return str(values["cluster"])

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        cfg = common.cfg(ctx.settings)
        if cfg is None:
            return {"note": f"not captured: no `{common.SECTION}:` config"}
        cluster = await self._describe(ctx, cfg, values["cluster"])
        return {
            "cluster": values["cluster"],
            "status": cluster.get("Status"),
            "writer": _writer(cluster),
            "readers": _readers(cluster),
        }

    @staticmethod
    async def _describe(ctx: Context, cfg: common.AwsConfig, name: str) -> dict[str, Any]:
        found = await common.call(
            ctx, cfg, "rds", "describe_db_clusters", {"DBClusterIdentifier": name}, resource=name
        )
        clusters = found.get("DBClusters") or []
        if not clusters:
            raise errors.PermanentError(f"rds DescribeDBClusters {name}: no such cluster")
        return dict(clusters[0])

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[dict[str, Any], str]:
        """The cluster, and the reader to promote ("" for Aurora's choice); raises when
        the cluster cannot fail over, or already did within the window."""
        name = values["cluster"]
        what = f"aurora cluster {name}"
        cluster = await self._describe(ctx, cfg, name)
        if cluster.get("Status") != "available":
            raise errors.PermanentError(
                f"{what} is {cluster.get('Status')}: a failover is only asked of an available "
                "cluster (one may be under way)"
            )
        readers = _readers(cluster)
        target = values.get("target_instance", "")
        if not readers:
            raise errors.PermanentError(f"{what} has no reader to fail over to")
        if target and target not in readers:
            raise errors.NotAllowed(
                "target_instance",
                f"{target!r} is not a reader of {what} (readers: {', '.join(readers)})",
            )
        tags = await common.call(
            ctx, cfg, "rds", "list_tags_for_resource",
            {"ResourceName": cluster["DBClusterArn"]}, resource=name,
        )  # fmt: skip
        last = next(
            (t.get("Value", "") for t in tags.get("TagList") or [] if t.get("Key") == TAG), ""
        )
        m = _TAG_VALUE.fullmatch(str(last))
        if m is not None:
            at = dt.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            next_at = at + cfg.rds_failover_window
            if ctx.now() < next_at:
                raise errors.NotAllowed(
                    "cluster",
                    f"{what} was failed over by remediator at {m.group(1)} "
                    f"({last[21:] or 'tag ' + TAG}); "
                    f"at most one failover per cluster per aws.rds.failover_window "
                    f"({durations.format(cfg.rds_failover_window)}), whatever the rule: next "
                    f"possible after {_iso(next_at)} (or delete the tag {TAG} after a look)",
                )
        return cluster, target

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        name = values["cluster"]
        cluster, target = await self._look(values, ctx, cfg)
        stamp = f"{_iso(ctx.now())} rule={ctx.rule} decision={ctx.decision_id}"
        # Claimed first: if the failover then fails, the window still counts it.
        await common.call(
            ctx, cfg, "rds", "add_tags_to_resource",
            {"ResourceName": cluster["DBClusterArn"], "Tags": [{"Key": TAG, "Value": stamp}]},
            resource=name,
        )  # fmt: skip
        request = {"DBClusterIdentifier": name}
        if target:
            request["TargetDBInstanceIdentifier"] = target
        await common.call(
            ctx, cfg, "rds", "failover_db_cluster", request, resource=name,
            once=f"check the cluster (`aws rds describe-db-clusters --db-cluster-identifier "
            f"{name}`): the failover may be under way; the window is claimed ({TAG})",
        )  # fmt: skip
        after = await self._describe(ctx, cfg, name)
        before_writer, after_writer = _writer(cluster), _writer(after)
        if after.get("Status") != "failing-over" and after_writer == before_writer:
            raise errors.PermanentError(
                f"aurora cluster {name}: FailoverDBCluster was accepted but the cluster is "
                f"{after.get('Status')} with writer {after_writer} still: check its events"
            )
        return Result(
            detail=f"failed over aurora cluster {name}: writer {before_writer} → "
            f"{after_writer if after_writer != before_writer else target or 'a reader'} "
            f"({after.get('Status')}); the next failover of it is refused until "
            f"{_iso(ctx.now() + cfg.rds_failover_window)}",
            data={
                "cluster": name,
                "writer": {"before": before_writer, "after": after_writer},
                "status": after.get("Status"),
                "claimed": stamp,
            },
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = common.cfg(ctx.settings)
        name = values["cluster"]
        if cfg is None:
            return common.not_checked(f"would fail over aurora cluster {name}")
        cluster, target = await self._look(values, ctx, cfg)
        return Result(
            detail=f"would fail over aurora cluster {name} from writer {_writer(cluster)} to "
            f"{target or 'the reader Aurora picks'} (readers: {', '.join(_readers(cluster))})",
            data={"cluster": name, "writer": _writer(cluster), "readers": _readers(cluster)},
        )


def _writer(cluster: Mapping[str, Any]) -> str:
    members = cluster.get("DBClusterMembers") or []
    return next(
        (str(m.get("DBInstanceIdentifier")) for m in members if m.get("IsClusterWriter")), ""
    )


def _readers(cluster: Mapping[str, Any]) -> list[str]:
    members = cluster.get("DBClusterMembers") or []
    return [str(m.get("DBInstanceIdentifier")) for m in members if not m.get("IsClusterWriter")]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


registry.register(RdsFailoverDbCluster())
