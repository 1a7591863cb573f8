"""The seed runbooks' AWS rollbacks and switches against moto's server (through the
loopback proxy of tests/aws_emulator.py, which emulates what moto lacks and says so):

    ecs.rollback, lambda.rollback_alias, lambda.set_event_source, events.disable_rule,
    appconfig.set_feature_flag, cloudfront.create_invalidation,
    codedeploy.stop_deployment, rds.failover_db_cluster

Each is shown live and read back from moto afterwards, in dry-run, refused for what the
`aws:` allow-lists do not name, refused at load for a bound a label could move, and
retried safely after a lost answer where the API allows it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from remediator import errors
from remediator.actions import evidence, registry
from remediator.actions.aws import appconfig as appconfig_actions
from remediator.actions.aws import rds as rds_actions
from remediator.matching import loader
from tests.aws_fixtures import ACCOUNT, CLUSTER, REGION, Aws, without_evidence
from tests.harness import Harness, am_alert

FUNCTION = "plooral-worker"
RULE_NAME = "ons-data-platform-s3-processing-rule"
GROUP = "ons-data-platform-lambda-app/lambda_router-deployment-group"
AURORA = "plooral-aurora"


def config(aws: Aws, *, extra: str = "", app: str = "abc1234", dist: str = "E2EXAMPLE1234") -> str:
    return textwrap.dedent(
        f"""\
        limits: {{action_timeout: 20s}}
        aws:
          region: {REGION}
          account_id: "{ACCOUNT}"
          endpoint_url: {aws.endpoint}
          max_attempts: 3
          connect_timeout: 2s
          read_timeout: 5s
          ecs: {{clusters: [{CLUSTER}]}}
          lambda: {{functions: [{FUNCTION}]}}
          sqs: {{queues: [plooral-jobs]}}
          events: {{rules: [{RULE_NAME}, ons-bus/ons-ingest]}}
          appconfig: {{applications: ["{app}"]}}
          cloudfront: {{distributions: ["{dist}"]}}
          codedeploy: {{deployment_groups: [{GROUP}]}}
          rds: {{clusters: [{AURORA}]{extra}}}
        """
    )


def rule(action: str, params: str, name: str = "r", alert: str = "A") -> str:
    body = textwrap.indent(textwrap.dedent(params).strip(), " " * 8)
    return (
        f"rules:\n  - name: {name}\n    matchers: ['alertname = \"{alert}\"']\n"
        f"    action:\n      type: {action}\n      params:\n{body}\n"
    )


def harness(tmp_path: Path, aws: Aws, rules: str, **kw: Any) -> Harness:
    cfg = config(
        aws, extra=kw.pop("extra", ""), app=kw.pop("app", "abc1234"),
        dist=kw.pop("dist", "E2EXAMPLE1234"),
    )  # fmt: skip
    return Harness(
        tmp_path, rules=without_evidence(rules), config=cfg, dry_run=kw.pop("dry_run", False),
        **kw,
    )  # fmt: skip


async def fire_one(tmp_path: Path, aws: Aws, rules: str, **kw: Any) -> dict[str, Any]:
    labels = kw.pop("labels", {})
    async with harness(tmp_path, aws, rules, **kw) as h:
        await h.fire(am_alert("A", **labels))
        [row] = await h.decisions()
    return row


def load_error(tmp_path: Path, text: str) -> errors.RuleFileError:
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    return problem


# --------------------------------------------------------------------------- ECS


async def ecs_service(aws: Aws, images: int = 3) -> None:
    await aws.ecs.create_cluster(clusterName=CLUSTER)
    for i in range(1, images + 1):
        await aws.ecs.register_task_definition(
            family="plooral-api",
            containerDefinitions=[{"name": "api", "image": f"app:{i}", "memory": 128}],
        )
    await aws.ecs.register_task_definition(  # another family sharing the prefix
        family="plooral-api-worker",
        containerDefinitions=[{"name": "w", "image": "w", "memory": 64}],
    )
    await aws.ecs.create_service(
        cluster=CLUSTER, serviceName="plooral-api", taskDefinition=f"plooral-api:{images}",
        desiredCount=2,
    )  # fmt: skip


async def running(aws: Aws) -> str:
    [svc] = (await aws.ecs.describe_services(cluster=CLUSTER, services=["plooral-api"]))["services"]
    return str(svc["taskDefinition"]).rpartition("/")[2]


ECS_ROLLBACK = rule("ecs.rollback", f"cluster: {CLUSTER}\nservice: plooral-api")


async def test_ecs_rollback_goes_to_the_previous_active_task_definition(
    tmp_path: Path, aws: Aws
) -> None:
    await ecs_service(aws)
    await aws.ecs.deregister_task_definition(taskDefinition="plooral-api:2")  # INACTIVE
    row = await fire_one(tmp_path, aws, ECS_ROLLBACK)
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"] == (
        f"rolled back ecs service {CLUSTER}/plooral-api from plooral-api:3 to plooral-api:1"
    )
    assert await running(aws) == "plooral-api:1"  # read back from moto
    assert row["result"]["from"] == "plooral-api:3" and row["result"]["to"] == "plooral-api:1"


async def test_ecs_rollback_to_a_given_revision_and_never_to_the_running_one(
    tmp_path: Path, aws: Aws
) -> None:
    await ecs_service(aws)
    given = rule(
        "ecs.rollback", f"cluster: {CLUSTER}\nservice: plooral-api\ntask_definition: plooral-api:3"
    )
    row = await fire_one(tmp_path, aws, given)
    assert row["detail"].endswith("no change because it already runs plooral-api:3")
    assert aws.proxy.count("ecs", "UpdateService") == 0


async def test_ecs_rollback_refuses_another_family_and_an_unlisted_cluster(
    tmp_path: Path, aws: Aws
) -> None:
    await ecs_service(aws)
    other = rule(
        "ecs.rollback",
        f"cluster: {CLUSTER}\nservice: plooral-api\ntask_definition: plooral-api-worker:1",
    )
    row = await fire_one(tmp_path, aws, other)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "is not of the service's family 'plooral-api'" in row["detail"]
    unlisted = rule("ecs.rollback", "cluster: billing\nservice: api")
    row = await fire_one(tmp_path / "2", aws, unlisted)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'billing' is not in aws.ecs.clusters" in row["detail"]
    assert aws.proxy.count("ecs", "UpdateService") == 0


async def test_ecs_rollback_dry_run_says_where_it_would_go_and_changes_nothing(
    tmp_path: Path, aws: Aws
) -> None:
    await ecs_service(aws)
    row = await fire_one(tmp_path, aws, ECS_ROLLBACK, dry_run=True)
    assert row["outcome"] == "dry_run"
    assert row["detail"] == (
        f"would roll back ecs service {CLUSTER}/plooral-api from plooral-api:3 to plooral-api:2"
    )
    assert await running(aws) == "plooral-api:3"
    assert aws.proxy.count("ecs", "UpdateService") == 0


async def test_ecs_rollback_with_nothing_older_fails_and_says_so(tmp_path: Path, aws: Aws) -> None:
    await ecs_service(aws, images=1)
    row = await fire_one(tmp_path, aws, ECS_ROLLBACK)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "no earlier ACTIVE revision to roll back to" in row["detail"]


async def test_ecs_evidence_shows_counts_and_deployments(tmp_path: Path, aws: Aws) -> None:
    await ecs_service(aws)
    async with harness(tmp_path, aws, ECS_ROLLBACK) as h:
        action = registry.get("ecs.rollback")
        assert action is not None
        values = action.schema.validate({"cluster": CLUSTER, "service": "plooral-api"})
        seen = await evidence.capture(action, values, h.context())
    assert (seen["service"], seen["desired"], seen["task_definition"]) == (
        f"{CLUSTER}/plooral-api",
        2,
        "plooral-api:3",
    )
    assert [d["status"] for d in seen["deployments"]] == ["PRIMARY"]
    assert seen["events"] == []  # moto records no service events


# --------------------------------------------------------------------------- Lambda


async def function(aws: Aws, versions: int = 3, *, alias_at: str = "3") -> str:
    role = await aws.iam.create_role(RoleName=f"{FUNCTION}-role", AssumeRolePolicyDocument="{}")
    await aws.lam.create_function(
        FunctionName=FUNCTION, Runtime="python3.11", Role=role["Role"]["Arn"],
        Handler="w.h", Code={"ZipFile": _zip(0)},
    )  # fmt: skip
    for n in range(1, versions + 1):
        await aws.lam.update_function_code(FunctionName=FUNCTION, ZipFile=_zip(n))
        await aws.lam.publish_version(FunctionName=FUNCTION)
    alias = await aws.lam.create_alias(FunctionName=FUNCTION, Name="LIVE", FunctionVersion=alias_at)
    return str(alias["AliasArn"]).rpartition(":")[0]


def _zip(n: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("w.py", f"def h(event, context):\n    return {n}\n")
    return out.getvalue()


async def live(aws: Aws) -> str:
    return str((await aws.lam.get_alias(FunctionName=FUNCTION, Name="LIVE"))["FunctionVersion"])


ALIAS_ROLLBACK = rule("lambda.rollback_alias", f"function: {FUNCTION}\nalias: LIVE")


async def test_the_live_alias_goes_back_to_the_previous_published_version(
    tmp_path: Path, aws: Aws
) -> None:
    await function(aws)
    row = await fire_one(tmp_path, aws, ALIAS_ROLLBACK)
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"] == f"rolled back lambda alias {FUNCTION}:LIVE from version 3 to 2"
    assert await live(aws) == "2"


async def test_the_alias_goes_to_the_version_the_stable_tag_names(tmp_path: Path, aws: Aws) -> None:
    arn = await function(aws)
    await aws.lam.tag_resource(Resource=arn, Tags={"remediator:stable-version": "1"})
    stable = rule("lambda.rollback_alias", f"function: {FUNCTION}\nalias: LIVE\nto: stable")
    row = await fire_one(tmp_path, aws, stable)
    assert row["outcome"] == "executed", row["detail"]
    assert await live(aws) == "1"


async def test_an_alias_rollback_whose_answer_was_lost_is_read_back_not_repeated(
    tmp_path: Path, aws: Aws
) -> None:
    await function(aws)
    # Applied, answer lost: botocore sends it again with the RevisionId read before the
    # change, which the API refuses (412); the action reads the alias back.
    aws.proxy.fail(1, kind="unavailable", service="lambda", operation="UpdateAlias", after=True)
    row = await fire_one(tmp_path, aws, ALIAS_ROLLBACK)
    assert row["outcome"] == "executed", row["detail"]
    assert await live(aws) == "2"  # one step back, not two
    assert aws.proxy.count("lambda", "UpdateAlias") == 2


async def test_an_alias_someone_else_moved_meanwhile_is_not_overwritten(
    tmp_path: Path, aws: Aws
) -> None:
    await function(aws)
    # Between the read and the write a deploy moves the alias: the RevisionId no longer
    # matches, the update is refused, and the read-back says so.
    alias = await aws.lam.get_alias(FunctionName=FUNCTION, Name="LIVE")
    aws.proxy.alias_revisions[f"/2015-03-31/functions/{FUNCTION}/aliases/LIVE"] = "moved"
    row = await fire_one(tmp_path, aws, ALIAS_ROLLBACK)
    assert alias["RevisionId"] != "moved"
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "changed while it was rolled back: it points at 3" in row["detail"]
    assert await live(aws) == "3"


async def test_an_alias_on_latest_or_an_unlisted_function_is_refused(
    tmp_path: Path, aws: Aws
) -> None:
    await function(aws, alias_at="$LATEST")
    row = await fire_one(tmp_path, aws, ALIAS_ROLLBACK)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "points at $LATEST, not a published version" in row["detail"]
    other = rule("lambda.rollback_alias", "function: billing-worker\nalias: LIVE")
    row = await fire_one(tmp_path / "2", aws, other)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'billing-worker' is not in aws.lambda.functions" in row["detail"]
    assert aws.proxy.count("lambda", "UpdateAlias") == 0


async def test_an_alias_dry_run_reads_and_changes_nothing(tmp_path: Path, aws: Aws) -> None:
    await function(aws)
    row = await fire_one(tmp_path, aws, ALIAS_ROLLBACK, dry_run=True)
    assert row["detail"] == f"would roll back lambda alias {FUNCTION}:LIVE from version 3 to 2"
    assert await live(aws) == "3"


async def queue_trigger(aws: Aws) -> str:
    await function(aws, versions=1, alias_at="1")
    url = (await aws.sqs.create_queue(QueueName="plooral-jobs"))["QueueUrl"]
    arn = (await aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
        "Attributes"
    ]["QueueArn"]
    mapping = await aws.lam.create_event_source_mapping(EventSourceArn=arn, FunctionName=FUNCTION)
    return str(mapping["UUID"])


def trigger_rule(enabled: str, source: str = "plooral-jobs") -> str:
    return rule(
        "lambda.set_event_source", f"function: {FUNCTION}\nsource: {source}\nenabled: {enabled}"
    )


async def test_a_cascading_worker_has_its_sqs_trigger_disabled_then_enabled_again(
    tmp_path: Path, aws: Aws
) -> None:
    uuid = await queue_trigger(aws)
    row = await fire_one(tmp_path, aws, trigger_rule("false"))
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"] == (
        f"disabled lambda event source {FUNCTION}/plooral-jobs (mapping {uuid}): Enabled → Disabled"
    )
    assert (await aws.lam.get_event_source_mapping(UUID=uuid))["State"] == "Disabled"
    row = await fire_one(tmp_path / "again", aws, trigger_rule("false"))
    assert row["detail"].endswith("no change because it is Disabled")  # a retry is harmless
    row = await fire_one(tmp_path / "on", aws, trigger_rule("true", uuid))
    assert row["outcome"] == "executed", row["detail"]
    assert (await aws.lam.get_event_source_mapping(UUID=uuid))["State"] == "Enabled"


async def test_a_trigger_dry_run_and_a_missing_trigger(tmp_path: Path, aws: Aws) -> None:
    uuid = await queue_trigger(aws)
    row = await fire_one(tmp_path, aws, trigger_rule("false"), dry_run=True)
    assert row["detail"] == (
        f"would disable lambda event source {FUNCTION}/plooral-jobs (mapping {uuid}, Enabled)"
    )
    assert (await aws.lam.get_event_source_mapping(UUID=uuid))["State"] == "Enabled"
    row = await fire_one(tmp_path / "2", aws, trigger_rule("false", "plooral-emails"))
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "has no event source mapping from queue plooral-emails" in row["detail"]
    other = rule("lambda.set_event_source", "function: billing-worker\nsource: q\nenabled: false")
    row = await fire_one(tmp_path / "3", aws, other)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'billing-worker' is not in aws.lambda.functions" in row["detail"]
    assert aws.proxy.count("lambda", "UpdateEventSourceMapping") == 0


async def test_lambda_evidence_shows_aliases_and_triggers(tmp_path: Path, aws: Aws) -> None:
    uuid = await queue_trigger(aws)
    async with harness(tmp_path, aws, ALIAS_ROLLBACK) as h:
        action = registry.get("lambda.rollback_alias")
        assert action is not None
        values = action.schema.validate({"function": FUNCTION, "alias": "LIVE"})
        seen = await evidence.capture(action, values, h.context())
    assert seen["aliases"] == [{"name": "LIVE", "version": "1", "weights": {}}]
    [source] = seen["event_sources"]
    assert (source["uuid"], source["state"]) == (uuid, "Enabled")


# --------------------------------------------------------------------------- EventBridge


def events_rule(enabled: str = "false", extra: str = "") -> str:
    return rule("events.disable_rule", f"rule: {RULE_NAME}\nenabled: {enabled}{extra}")


async def state(aws: Aws, name: str = RULE_NAME, bus: str = "default") -> str:
    return str((await aws.events.describe_rule(Name=name, EventBusName=bus))["State"])


async def test_processing_stops_by_disabling_the_eventbridge_rule_and_resumes(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.events.put_rule(Name=RULE_NAME, EventPattern=json.dumps({"source": ["aws.s3"]}))
    row = await fire_one(tmp_path, aws, events_rule())
    assert row["detail"] == f"disabled eventbridge rule {RULE_NAME}: ENABLED → DISABLED"
    assert await state(aws) == "DISABLED"
    row = await fire_one(tmp_path / "again", aws, events_rule())
    assert row["detail"].endswith("no change because it is DISABLED")
    row = await fire_one(tmp_path / "on", aws, events_rule("true"))
    assert await state(aws) == "ENABLED", row["detail"]


async def test_a_rule_on_another_bus_must_be_listed_as_bus_slash_name(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.events.create_event_bus(Name="ons-bus")
    await aws.events.put_rule(
        Name="ons-ingest", EventBusName="ons-bus", EventPattern='{"source": ["ons.ingest"]}'
    )
    await aws.events.put_rule(
        Name="ons-other", EventBusName="ons-bus", EventPattern='{"source": ["ons.other"]}'
    )
    ok = rule("events.disable_rule", "rule: ons-ingest\nevent_bus: ons-bus\nenabled: false")
    row = await fire_one(tmp_path, aws, ok, dry_run=True)
    assert row["detail"] == "would disable eventbridge rule ons-bus/ons-ingest (now ENABLED)"
    no = rule("events.disable_rule", "rule: ons-other\nevent_bus: ons-bus\nenabled: false")
    row = await fire_one(tmp_path / "2", aws, no)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'ons-bus/ons-other' is not in aws.events.rules" in row["detail"]
    assert await state(aws, "ons-ingest", "ons-bus") == "ENABLED"
    assert aws.proxy.count("events", "DisableRule") == 0


# --------------------------------------------------------------------------- AppConfig

FLAGS = """{
  "version": "1",
  "flags": {
    "enable_new_api_endpoint": {"name": "New API endpoint"},
    "enable_problematic_feature": {"name": "Problematic", "_description": "x"}
  },
  "values": {
    "enable_new_api_endpoint": {"enabled": true},
    "enable_problematic_feature": { "enabled" : true, "_updatedAt": "2026-11-30T10:00:00Z" }
  }
}
"""


async def feature_flags(aws: Aws, *, state: str = "COMPLETE") -> tuple[str, str, str]:
    app = (await aws.appconfig.create_application(Name="ons-data-platform"))["Id"]
    profile = await aws.appconfig.create_configuration_profile(
        ApplicationId=app, Name="feature-flags", LocationUri="hosted",
        Type="AWS.AppConfig.FeatureFlags",
    )  # fmt: skip
    version = await aws.appconfig.create_hosted_configuration_version(
        ApplicationId=app, ConfigurationProfileId=profile["Id"], Content=FLAGS.encode(),
        ContentType="application/json",
    )  # fmt: skip
    env = aws.proxy.appconfig_environment(app, "production")
    aws.proxy.appconfig_deployment(
        app, env, profile_id=profile["Id"], profile_name="feature-flags",
        version=str(version["VersionNumber"]), state=state,
    )  # fmt: skip
    return app, env, str(profile["Id"])


def flag_rule(app: str, env: str, profile: str, enabled: str = "false") -> str:
    return rule(
        "appconfig.set_feature_flag",
        f'application: "{app}"\nenvironment: "{env}"\nprofile: "{profile}"\n'
        f"flag: enable_problematic_feature\nenabled: {enabled}\n"
        "deployment_strategy: AppConfig.AllAtOnce",
    )


async def test_the_problematic_flag_is_turned_off_alone_and_deployed(
    tmp_path: Path, aws: Aws
) -> None:
    app, env, profile = await feature_flags(aws)
    row = await fire_one(tmp_path, aws, flag_rule(app, env, profile), app=app)
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"] == (
        f"turned flag enable_problematic_feature off in appconfig profile {app}/{profile}: "
        "version 1 → 2, deployment 2 (DEPLOYING, strategy AppConfig.AllAtOnce)"
    )
    got = await aws.appconfig.get_hosted_configuration_version(
        ApplicationId=app, ConfigurationProfileId=profile, VersionNumber=2
    )
    text = (await got["Content"].read()).decode()
    # Only that one value changed: every other byte, spacing included, is as it was.
    assert text == FLAGS.replace('{ "enabled" : true,', '{ "enabled" : false,')
    [_, started] = aws.proxy.appconfig_deployments[(app, env)]
    assert (started["ConfigurationVersion"], started["DeploymentStrategyId"]) == (
        "2",
        "AppConfig.AllAtOnce",
    )


async def test_no_flag_is_deployed_while_another_deployment_runs(tmp_path: Path, aws: Aws) -> None:
    app, env, profile = await feature_flags(aws, state="DEPLOYING")
    row = await fire_one(tmp_path, aws, flag_rule(app, env, profile), app=app)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "deployment 1 (feature-flags version 1) is DEPLOYING" in row["detail"]
    assert aws.proxy.count("appconfig", "CreateHostedConfigurationVersion") == 0


async def test_a_flag_already_off_a_dry_run_and_an_unlisted_application(
    tmp_path: Path, aws: Aws
) -> None:
    app, env, profile = await feature_flags(aws)
    row = await fire_one(tmp_path, aws, flag_rule(app, env, profile, "true"), app=app)
    assert row["detail"].endswith(
        "no change because flag enable_problematic_feature is already on in version 1"
    )
    row = await fire_one(tmp_path / "dry", aws, flag_rule(app, env, profile), dry_run=True, app=app)
    assert row["outcome"] == "dry_run"
    assert row["detail"].startswith(
        "would turn flag enable_problematic_feature in appconfig profile"
    )
    row = await fire_one(tmp_path / "no", aws, flag_rule(app, env, profile), app="zzz9999")
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert f"{app!r} is not in aws.appconfig.applications" in row["detail"]
    assert aws.proxy.count("appconfig", "StartDeployment") == 0


def test_a_flag_is_changed_in_place_and_nothing_else_moves() -> None:
    current, new = appconfig_actions.set_flag(FLAGS, "enable_new_api_endpoint", False)
    assert current is True
    assert new == FLAGS.replace('{"enabled": true}', '{"enabled": false}', 1)
    with pytest.raises(ValueError, match="no feature flag 'nope' is defined"):
        appconfig_actions.set_flag(FLAGS, "nope", False)
    with pytest.raises(ValueError, match="not JSON"):
        appconfig_actions.set_flag("{", "x", False)


# --------------------------------------------------------------------------- CloudFront


async def distribution(aws: Aws) -> str:
    origin = {"Id": "alb", "DomainName": "api.plooral.example",
              "CustomOriginConfig": {"HTTPPort": 80, "HTTPSPort": 443,
                                     "OriginProtocolPolicy": "https-only"}}  # fmt: skip
    behaviour = {
        "TargetOriginId": "alb", "ViewerProtocolPolicy": "allow-all", "MinTTL": 0,
        "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
    }  # fmt: skip
    made = await aws.cloudfront.create_distribution(
        DistributionConfig={
            "CallerReference": "plooral", "Origins": {"Quantity": 1, "Items": [origin]},
            "DefaultCacheBehavior": behaviour, "Comment": "", "Enabled": True,
        }
    )  # fmt: skip
    return str(made["Distribution"]["Id"])


def invalidation_rule(dist: str, paths: str = '["/*"]', max_paths: int = 5) -> str:
    return rule(
        "cloudfront.create_invalidation",
        f"distribution_id: {dist}\npaths: {paths}\nmax_paths: {max_paths}",
    )


async def invalidations(aws: Aws, dist: str) -> list[str]:
    listed = (await aws.cloudfront.list_invalidations(DistributionId=dist))["InvalidationList"]
    return [i["Id"] for i in listed.get("Items") or []]


async def test_the_cache_is_invalidated_once_even_when_the_answer_is_lost(
    tmp_path: Path, aws: Aws
) -> None:
    dist = await distribution(aws)
    # Created, then every answer lost: botocore sends the same request twice more, then
    # the engine runs the action again (it is idempotent), which derives the same
    # CallerReference from the decision; CloudFront answers with what it made.
    aws.proxy.fail(
        3, kind="unavailable", service="cloudfront", operation="CreateInvalidation", after=True
    )
    row = await fire_one(tmp_path, aws, invalidation_rule(dist), dist=dist)
    assert row["outcome"] == "executed", row["detail"]
    [made] = await invalidations(aws, dist)
    assert row["detail"].startswith(f"invalidated 1 path(s) of cloudfront distribution {dist}: /*")
    assert row["result"]["invalidation_id"] == made
    assert aws.proxy.count("cloudfront", "CreateInvalidation") == 4  # 3 by botocore, 1 more
    assert row["result"]["caller_reference"].startswith("remediator-")


async def test_a_dry_run_reads_the_distribution_and_invalidates_nothing(
    tmp_path: Path, aws: Aws
) -> None:
    dist = await distribution(aws)
    paths = '["/index.html", "/assets/*"]'
    row = await fire_one(tmp_path, aws, invalidation_rule(dist, paths), dry_run=True, dist=dist)
    assert row["detail"].startswith(
        f"would invalidate 2 path(s) of cloudfront distribution {dist}: /index.html, /assets/*"
    )
    assert await invalidations(aws, dist) == []


async def test_an_unlisted_distribution_and_a_label_made_path_are_refused(
    tmp_path: Path, aws: Aws
) -> None:
    dist = await distribution(aws)
    row = await fire_one(tmp_path, aws, invalidation_rule("EOTHER123456"), dist=dist)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'EOTHER123456' is not in aws.cloudfront.distributions" in row["detail"]
    labelled = invalidation_rule(dist, '["/{{ labels.path }}"]')
    row = await fire_one(tmp_path / "2", aws, labelled, labels={"path": "a b"}, dist=dist)
    assert (row["outcome"], row["reason"]) == ("skipped", "template_error")
    assert "is not a path (/ first, no spaces)" in row["detail"]
    assert await invalidations(aws, dist) == []


async def test_the_caller_reference_is_the_same_for_a_decision_and_differs_for_another(
    tmp_path: Path, aws: Aws
) -> None:
    async with harness(tmp_path, aws, invalidation_rule("E2EXAMPLE1234")) as h:
        action = registry.get("cloudfront.create_invalidation")
        assert action is not None
        values = action.schema.validate(
            {"distribution_id": "E2EXAMPLE1234", "paths": ["/*"], "max_paths": 1}
        )
        refs = {
            action.caller_reference(values, h.context(decision_id=n))  # type: ignore[attr-defined]
            for n in (7, 7, 8)
        }
    assert len(refs) == 2 and all(len(r) <= 128 for r in refs)


# --------------------------------------------------------------------------- CodeDeploy


async def deployments(aws: Aws, n: int = 1) -> list[str]:
    app, group = GROUP.split("/")
    await aws.codedeploy.create_application(applicationName=app, computePlatform="Lambda")
    await aws.codedeploy.create_deployment_group(
        applicationName=app, deploymentGroupName=group,
        serviceRoleArn=f"arn:aws:iam::{ACCOUNT}:role/codedeploy",
    )  # fmt: skip
    ids = []
    for _ in range(n):
        made = await aws.codedeploy.create_deployment(
            applicationName=app, deploymentGroupName=group,
            revision={"revisionType": "AppSpecContent", "appSpecContent": {"content": "{}"}},
        )  # fmt: skip
        ids.append(str(made["deploymentId"]))
    return ids


STOP = rule(
    "codedeploy.stop_deployment",
    f"application: {GROUP.split('/', maxsplit=1)[0]}\ndeployment_group: {GROUP.split('/')[1]}",
)


async def test_in_progress_deployments_are_stopped_with_auto_rollback(
    tmp_path: Path, aws: Aws
) -> None:
    running, done = await deployments(aws, 2)
    aws.proxy.deployment_status(running, "InProgress")
    aws.proxy.deployment_status(done, "Succeeded")
    row = await fire_one(tmp_path, aws, STOP)
    assert row["outcome"] == "executed", row["detail"]
    assert row["detail"] == (
        f"stopped 1 deployment(s) of codedeploy group {GROUP} with auto-rollback: "
        f"{running} (InProgress → Stopped)"
    )
    assert aws.proxy.stopped == [(running, True)]
    again = await fire_one(tmp_path / "again", aws, STOP)  # a retry finds nothing to stop
    assert again["detail"].endswith("no change because it has no unfinished deployment")
    assert aws.proxy.stopped == [(running, True)]
    info = await aws.codedeploy.get_deployment(deploymentId=running)
    assert info["deploymentInfo"]["status"] == "Created"  # moto's own view; the proxy's:
    assert aws.proxy.codedeploy_status[running] == "Stopped"


async def test_no_deployment_running_a_dry_run_and_an_unlisted_group(
    tmp_path: Path, aws: Aws
) -> None:
    [deployment] = await deployments(aws)
    aws.proxy.deployment_status(deployment, "Succeeded")
    row = await fire_one(tmp_path, aws, STOP)
    assert row["detail"].endswith("no change because it has no unfinished deployment")
    aws.proxy.deployment_status(deployment, "InProgress")
    row = await fire_one(tmp_path / "dry", aws, STOP, dry_run=True)
    assert row["detail"] == (
        f"would stop 1 deployment(s) of codedeploy group {GROUP}: {deployment} (InProgress)"
    )
    other = rule("codedeploy.stop_deployment", "application: billing\ndeployment_group: prod")
    row = await fire_one(tmp_path / "no", aws, other)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert aws.proxy.stopped == []


# --------------------------------------------------------------------------- RDS


async def aurora(aws: Aws) -> str:
    made = await aws.rds.create_db_cluster(
        DBClusterIdentifier=AURORA, Engine="aurora-postgresql", MasterUsername="admin",
        MasterUserPassword="password-1234",
    )  # fmt: skip
    for name in (f"{AURORA}-1", f"{AURORA}-2"):
        await aws.rds.create_db_instance(
            DBInstanceIdentifier=name, DBClusterIdentifier=AURORA, Engine="aurora-postgresql",
            DBInstanceClass="db.r6g.large",
        )  # fmt: skip
    return str(made["DBCluster"]["DBClusterArn"])


async def writer(aws: Aws) -> str:
    [cluster] = (await aws.rds.describe_db_clusters(DBClusterIdentifier=AURORA))["DBClusters"]
    return next(
        m["DBInstanceIdentifier"] for m in cluster["DBClusterMembers"] if m["IsClusterWriter"]
    )


FAILOVER = rule("rds.failover_db_cluster", f"cluster: {AURORA}") + "    limits: {cooldown: 1m}\n"


async def test_aurora_fails_over_once_and_a_second_failover_in_the_window_is_refused(
    tmp_path: Path, aws: Aws
) -> None:
    await aurora(aws)
    # The window is wall time (the tag is read by every replica): the clock starts there.
    now = time.time()
    started = dt.datetime.fromtimestamp(now - 600, dt.UTC)
    async with harness(tmp_path, aws, FAILOVER, now=now) as h:
        await h.fire(am_alert("A", starts_at=started))
        await h.advance(300)  # past the rule's cooldown, inside the 24h window
        await h.fire(am_alert("A", starts_at=started))
        first, second = await h.decisions()
    assert first["outcome"] == "executed", first["detail"]
    assert first["detail"].startswith(
        f"failed over aurora cluster {AURORA}: writer {AURORA}-1 → {AURORA}-2"
    )
    assert await writer(aws) == f"{AURORA}-2"
    assert (second["outcome"], second["reason"]) == ("skipped", "not_allowed")
    assert "at most one failover per cluster per aws.rds.failover_window (1d)" in second["detail"]
    assert aws.proxy.count("rds", "FailoverDBCluster") == 1
    tags = await aws.rds.list_tags_for_resource(
        ResourceName=(await aws.rds.describe_db_clusters(DBClusterIdentifier=AURORA))["DBClusters"][
            0
        ]["DBClusterArn"]
    )
    [tag] = [t for t in tags["TagList"] if t["Key"] == rds_actions.TAG]
    assert "rule=r " in tag["Value"]


async def test_the_failover_window_follows_the_clock_and_survives_a_restart(
    tmp_path: Path, aws: Aws
) -> None:
    await aurora(aws)
    action = registry.get("rds.failover_db_cluster")
    assert action is not None
    values = action.schema.validate({"cluster": AURORA})
    async with harness(tmp_path, aws, FAILOVER, extra=", failover_window: 1h") as h:
        await action.run(values, h.context())
    async with harness(tmp_path, aws, FAILOVER, extra=", failover_window: 1h") as h:  # restarted
        with pytest.raises(errors.NotAllowed, match="at most one failover per cluster"):
            await action.run(values, h.context())
        h.clock.advance(3601)
        result = await action.run(values, h.context())
    assert result.detail.startswith(
        f"failed over aurora cluster {AURORA}: writer {AURORA}-2 → {AURORA}-1"
    )


async def test_a_failover_dry_run_an_unlisted_cluster_and_a_stranger_target(
    tmp_path: Path, aws: Aws
) -> None:
    await aurora(aws)
    row = await fire_one(tmp_path, aws, FAILOVER, dry_run=True)
    assert row["detail"] == (
        f"would fail over aurora cluster {AURORA} from writer {AURORA}-1 to the reader Aurora "
        f"picks (readers: {AURORA}-2)"
    )
    assert await writer(aws) == f"{AURORA}-1"
    other = rule("rds.failover_db_cluster", "cluster: billing-aurora")
    row = await fire_one(tmp_path / "2", aws, other)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'billing-aurora' is not in aws.rds.clusters" in row["detail"]
    stranger = rule("rds.failover_db_cluster", f"cluster: {AURORA}\ntarget_instance: {AURORA}-1")
    row = await fire_one(tmp_path / "3", aws, stranger)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "is not a reader of aurora cluster" in row["detail"]
    assert aws.proxy.count("rds", "FailoverDBCluster") == 0


def test_rds_failover_is_off_until_the_config_lists_clusters(tmp_path: Path) -> None:
    from remediator import settings  # noqa: PLC0415 - only this test reads a config alone

    path = tmp_path / "c.yaml"
    path.write_text(f"aws: {{region: {REGION}}}\n")
    cfg = settings.load(path, environ={}).section("aws")
    assert cfg.rds_clusters == frozenset() and cfg.rds_failover_window == 86400.0
    path.write_text(f"aws: {{region: {REGION}, rds: {{clusters: [a], failover_window: 1m}}}}\n")
    with pytest.raises(
        errors.ConfigError, match=r"aws\.rds\.failover_window: must be in 10m\.\.30d"
    ):
        settings.load(path, environ={})


# --------------------------------------------------------------------------- common


def test_every_new_action_is_registered_with_its_retry_policy() -> None:
    expected = {
        "ecs.rollback": False, "lambda.rollback_alias": False, "lambda.set_event_source": True,
        "events.disable_rule": True, "appconfig.set_feature_flag": True,
        "cloudfront.create_invalidation": True, "codedeploy.stop_deployment": True,
        "rds.failover_db_cluster": False,
    }  # fmt: skip
    for name, idempotent in expected.items():
        action = registry.get(name)
        assert action is not None and action.idempotent is idempotent, name


def test_a_tag_timestamp_is_what_the_window_reads() -> None:
    stamp = rds_actions._iso(dt.datetime(2027, 1, 15, 12, tzinfo=dt.UTC).timestamp())
    assert rds_actions._TAG_VALUE.fullmatch(f"{stamp} rule=r decision=3")


async def test_the_new_example_rules_decide_dry_run_on_a_bare_start(tmp_path: Path) -> None:
    # `make run`: no config, dry-run on. Nothing is checked, nothing is called.
    repo = Path(__file__).resolve().parent.parent / "rules"
    rules = "rules:\n" + "".join(
        (repo / f).read_text().split("rules:\n", 1)[1]
        for f in ("plooral-rollback.yaml", "ons.yaml", "agente-kubernetes.yaml")
    )
    alerts = [
        am_alert("PlooralAPIErrorsAfterDeploy", ClusterName=CLUSTER, ServiceName="plooral-api"),
        am_alert("PlooralWorkerFailure", metric="Errors", FunctionName=FUNCTION),
        am_alert("PlooralWorkerCascade"),
        am_alert("PlooralFrontendStale"),
        am_alert("PlooralAuroraWriterUnhealthy"),
        am_alert("ONSLambdaHighErrorRate", FunctionName="lambda_router"),
        am_alert("ONSFeatureFlagErrors", flag="enable_problematic_feature"),
        am_alert("ONSCriticalFailure"),
        am_alert("ONSDataCorruptionSuspected"),
        am_alert("HighErrorRate", namespace="prod", deployment="agente-api"),
        am_alert("HighResponseTime", namespace="prod"),
    ]
    budgets = "limits: {max_targets_per_window: 20}\n"  # more targets than the default 10
    async with Harness(tmp_path, rules=rules, config=budgets) as h:
        await h.fire(*alerts)
        rows = await h.decisions()
    assert len(rows) == len(alerts)
    for row in rows:
        assert (row["outcome"], row["reason"]) == ("dry_run", ""), row
        assert "not checked" in row["detail"], row["detail"]


@pytest.mark.parametrize("value", ["*", "assets/*"])
async def test_a_label_cannot_widen_an_invalidation_into_a_wildcard(
    tmp_path: Path, aws: Aws, value: str
) -> None:
    # The rule invalidates one page a label names: a label value ending in `*` would make
    # it the whole distribution (or a whole tree), which the rule never wrote.
    dist = await distribution(aws)
    labelled = invalidation_rule(dist, '["/{{ labels.path }}"]')
    row = await fire_one(tmp_path, aws, labelled, labels={"path": value}, dist=dist)
    assert (row["outcome"], row["reason"]) == ("skipped", "template_error"), row["detail"]
    assert "wildcard" in row["detail"]
    assert await invalidations(aws, dist) == []
    row = await fire_one(tmp_path / "2", aws, labelled, labels={"path": "index.html"}, dist=dist)
    assert row["outcome"] == "executed", row["detail"]
