"""The Plooral runbook's AWS fixes (ecs.*, lambda.*, sqs.*) against moto's server.

Each end-to-end test fires an alert at the in-process daemon (tests/harness.py), whose
`aws:` config points at tests/aws_emulator.AwsProxy: a loopback proxy in front of
moto's ThreadedMotoServer that adds SQS message move tasks (moto has none), injects
throttling and 5xx answers, and records every call. The daemon makes real aioboto3
calls over real HTTP; afterwards each test reads the state back from moto through the
AWS API (desiredCount, deployments, reserved concurrency, messages in each queue).
Credentials are fake and every endpoint is loopback: nothing can reach real AWS.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

import botocore.session
import hypothesis
import pytest
from hypothesis import strategies as st

from remediator import errors
from remediator import settings as settings_mod
from remediator.actions import aws as aws_actions
from remediator.actions import params, registry
from remediator.matching import loader
from tests.aws_fixtures import ACCOUNT, CLUSTER, DLQ_ARN, REGION, Aws, without_evidence
from tests.harness import START, Harness, am_alert

REPO = Path(__file__).resolve().parent.parent
PLOORAL_RULES = (REPO / "rules" / "plooral.yaml").read_text()
SQS_RULES = (REPO / "rules" / "sqs.yaml").read_text()


def config(endpoint: str, *, max_attempts: int = 3, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        limits: {{action_timeout: 20s}}
        aws:
          region: {REGION}
          account_id: "{ACCOUNT}"
          endpoint_url: {endpoint}
          max_attempts: {max_attempts}
          connect_timeout: 2s
          read_timeout: 5s
          ecs: {{clusters: [{CLUSTER}]}}
          lambda: {{functions: [plooral-worker]}}
          sqs: {{queues: [plooral-jobs, plooral-jobs-dlq, plooral-worker-queue]}}
        """
    ) + textwrap.dedent(extra)


def harness(tmp_path: Path, aws: Aws, rules: str, **kw: Any) -> Harness:
    cfg = config(aws.endpoint, max_attempts=kw.pop("max_attempts", 3))
    return Harness(
        tmp_path, rules=without_evidence(rules), config=cfg, dry_run=kw.pop("dry_run", False),
        **kw,
    )  # fmt: skip


async def one_decision(h: Harness) -> dict[str, Any]:
    [row] = await h.decisions()
    return row


def api_error_alert(**labels: str) -> dict[str, Any]:
    """PlooralAPIHighErrorRate as the SNS intake labels a CloudWatch alarm."""
    return am_alert(
        "PlooralAPIHighErrorRate",
        region=REGION,
        account=ACCOUNT,
        namespace="Plooral/API",
        metric="5xxRate",
        **{"ClusterName": CLUSTER, "ServiceName": "plooral-api", **labels},
    )


def scale_rule(*, step: int | None = None, to: int | None = None, lo: int, hi: int) -> str:
    change = f"step: {step}" if step is not None else f"to: {to}"
    return f"""
rules:
  - name: api-saturated-scale
    matchers: ['alertname = "PlooralAPISaturated"']
    action:
      type: ecs.scale
      params:
        cluster: "{{{{ labels.ClusterName }}}}"
        service: "{{{{ labels.ServiceName }}}}"
        {change}
        min_desired_count: {lo}
        max_desired_count: {hi}
"""


def saturated(service: str = "plooral-api", cluster: str = CLUSTER) -> dict[str, Any]:
    return am_alert("PlooralAPISaturated", ClusterName=cluster, ServiceName=service)


def concurrency_rule(*, step: int | None = None, to: int | None = None, lo: int, hi: int) -> str:
    change = f"step: {step}" if step is not None else f"to: {to}"
    return f"""
rules:
  - name: worker-throttled
    matchers: ['alertname = "PlooralWorkerFailure"']
    action:
      type: lambda.set_concurrency
      params:
        function: "{{{{ labels.FunctionName }}}}"
        {change}
        min_concurrency: {lo}
        max_concurrency: {hi}
"""


def throttled(function: str = "plooral-worker") -> dict[str, Any]:
    return am_alert("PlooralWorkerFailure", metric="Throttles", FunctionName=function)


def dlq_alert(queue: str = "plooral-jobs-dlq") -> dict[str, Any]:
    # The rule holds it for 30m (`for`): this one has fired for an hour.
    return am_alert(
        "PlooralJobsDLQNotEmpty",
        starts_at=START - dt.timedelta(hours=1),
        QueueName=queue,
        namespace="AWS/SQS",
    )


# --------------------------------------------------------------------------- ECS


async def test_a_high_api_error_rate_forces_a_new_deployment_of_the_api(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.service("plooral-api", desired=3)
    before = (await aws.described("plooral-api"))["deployments"][0]["id"]
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(api_error_alert())
        row = await one_decision(h)
    after = (await aws.described("plooral-api"))["deployments"][0]["id"]
    assert (row["outcome"], row["reason"]) == ("executed", "")
    assert row["target"] == f"ecs.force_new_deployment {CLUSTER}/plooral-api"
    assert after != before
    assert row["result"]["deployment_id"] == after
    assert row["result"]["previous_deployment_id"] == before
    assert f"forced a new deployment of ecs service {CLUSTER}/plooral-api: {after}" in row["detail"]
    assert aws.proxy.calls == [("ecs", "DescribeServices"), ("ecs", "UpdateService")]


async def test_no_new_deployment_is_forced_while_one_is_still_rolling_out(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.service("plooral-api", desired=3, rolling=True)
    before = (await aws.described("plooral-api"))["deployments"]
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(api_error_alert())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("executed", "")
    assert "no change because deployment ecs-svc/" in row["detail"]
    assert "already in progress (rolloutState IN_PROGRESS" in row["detail"]
    assert (await aws.described("plooral-api"))["deployments"] == before
    assert aws.proxy.count("ecs", "UpdateService") == 0


async def test_saturation_scales_the_service_by_its_step(tmp_path: Path, aws: Aws) -> None:
    await aws.service("plooral-api", desired=2)
    async with harness(tmp_path, aws, scale_rule(step=2, lo=1, hi=6)) as h:
        await h.fire(saturated())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert (await aws.described("plooral-api"))["desiredCount"] == 4
    assert row["result"]["desired_count"] == {"before": 2, "after": 4}
    assert row["detail"].endswith("desiredCount 2 → 4 (bounds 1..6)")


async def test_a_scale_step_is_clamped_at_max_desired_count(tmp_path: Path, aws: Aws) -> None:
    await aws.service("plooral-api", desired=5)
    async with harness(tmp_path, aws, scale_rule(step=3, lo=1, hi=6)) as h:
        await h.fire(saturated())
        row = await one_decision(h)
    assert (await aws.described("plooral-api"))["desiredCount"] == 6
    assert row["detail"].endswith("desiredCount 5 → 6 (clamped from 8 to 1..6)")


async def test_a_step_down_from_above_the_bounds_removes_only_its_step(
    tmp_path: Path, aws: Aws
) -> None:
    """A person scaled to 20 by hand; the rule (1..6, step -1) allows one task less, not
    fourteen at once."""
    await aws.service("plooral-api", desired=20)
    async with harness(tmp_path, aws, scale_rule(step=-1, lo=1, hi=6)) as h:
        await h.fire(saturated())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert (await aws.described("plooral-api"))["desiredCount"] == 19
    assert row["detail"].endswith("desiredCount 20 → 19 (bounds 1..6)")


async def test_a_service_already_at_its_bound_is_a_recorded_no_op(tmp_path: Path, aws: Aws) -> None:
    await aws.service("plooral-api", desired=9)  # scaled by hand beyond the rule's max
    async with harness(tmp_path, aws, scale_rule(step=1, lo=1, hi=6)) as h:
        await h.fire(saturated())
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert row["detail"] == (
        f"ecs service {CLUSTER}/plooral-api: no change because 9 is already at or above "
        "the upper bound 6"
    )
    # A step up never scales down to the bound.
    assert (await aws.described("plooral-api"))["desiredCount"] == 9
    assert aws.proxy.count("ecs", "UpdateService") == 0


async def test_a_cluster_not_in_the_config_is_refused_before_any_request(
    tmp_path: Path, aws: Aws
) -> None:
    async with harness(tmp_path, aws, scale_rule(step=1, lo=1, hi=6)) as h:
        await h.fire(saturated(cluster="billing-prod"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'billing-prod' is not in aws.ecs.clusters (plooral-prod)" in row["detail"]
    assert aws.proxy.calls == []


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ("api; rm -rf /", "is not an ECS service name or ARN"),
        ("x" * 300, "is not an ECS service name or ARN"),
        (f"arn:aws:ecs:us-east-1:{ACCOUNT}:service/{CLUSTER}/api", "aws.region=eu-west-1"),
        (f"arn:aws:ecs:{REGION}:210987654321:service/{CLUSTER}/api", "not aws.account_id"),
        (f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/other/api", "names cluster 'other'"),
        # Other scripts' digits are not digits in an ARN (\d would take them).
        ("arn:aws:ecs:eu-west-\u0661:123456789012:service/plooral-prod/api",
         "is not an ECS service name or ARN"),
        (f"arn:aws:ecs:{REGION}:\u0661{ACCOUNT[1:]}:service/{CLUSTER}/api",
         "is not an ECS service name or ARN"),
    ],
)  # fmt: skip
async def test_a_label_cannot_steer_a_scale_outside_the_config(
    tmp_path: Path, aws: Aws, service: str, message: str
) -> None:
    async with harness(tmp_path, aws, scale_rule(step=1, lo=1, hi=6)) as h:
        await h.fire(saturated(service=service))
        row = await one_decision(h)
    assert row["outcome"] == "skipped"
    assert row["reason"] in ("template_error", "not_allowed")
    assert message in row["detail"]
    assert aws.proxy.calls == []


async def test_a_missing_service_fails_and_says_so(tmp_path: Path, aws: Aws) -> None:
    await aws.service("plooral-api", desired=2)
    async with harness(tmp_path, aws, scale_rule(step=1, lo=1, hi=6)) as h:
        await h.fire(saturated(service="plooral-gone"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert (
        f"ecs DescribeServices {CLUSTER}/plooral-gone: no such service (MISSING)" in row["detail"]
    )


async def test_a_dry_run_reads_the_service_and_says_what_it_would_change(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.service("plooral-api", desired=2)
    async with harness(tmp_path, aws, scale_rule(to=5, lo=1, hi=4), dry_run=True) as h:
        await h.fire(saturated())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("dry_run", "")
    assert row["detail"] == (
        f"would scale ecs service {CLUSTER}/plooral-api: desiredCount 2 → 4 "
        "(clamped from 5 to 1..4)"
    )
    assert (await aws.described("plooral-api"))["desiredCount"] == 2
    assert aws.proxy.calls == [("ecs", "DescribeServices")]


# --------------------------------------------------------------------------- Lambda


async def test_a_queue_backlog_raises_the_worker_lambdas_reserved_concurrency(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.function("plooral-worker", reserved=20)
    async with harness(tmp_path, aws, SQS_RULES) as h:
        await h.fire(am_alert("SQSBacklog", QueueName="plooral-worker-queue"))
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert await aws.reserved("plooral-worker") == 30
    assert row["result"]["reserved_concurrency"] == {"before": 20, "after": 30}
    assert aws.proxy.calls == [
        ("lambda", "GetFunctionConcurrency"),
        ("lambda", "PutFunctionConcurrency"),
    ]


async def test_reserved_concurrency_is_clamped_at_max_concurrency(tmp_path: Path, aws: Aws) -> None:
    await aws.function("plooral-worker", reserved=48)
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(throttled())
        row = await one_decision(h)
    assert await aws.reserved("plooral-worker") == 50
    assert row["detail"].endswith("48 → 50 (clamped from 53 to 5..50)")


async def test_a_function_turned_off_with_0_is_never_turned_back_on(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.function("plooral-worker", reserved=0)
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(throttled())
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert "no change because its reserved concurrency is 0" in row["detail"]
    assert await aws.reserved("plooral-worker") == 0
    assert aws.proxy.count("lambda", "PutFunctionConcurrency") == 0


async def test_a_step_down_stops_at_min_and_never_reaches_0(tmp_path: Path, aws: Aws) -> None:
    await aws.function("plooral-worker", reserved=3)
    async with harness(tmp_path, aws, concurrency_rule(step=-10, lo=1, hi=50)) as h:
        await h.fire(throttled())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert await aws.reserved("plooral-worker") == 1


async def test_a_step_needs_a_reservation_to_start_from(tmp_path: Path, aws: Aws) -> None:
    await aws.function("plooral-worker", reserved=None)
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(throttled())
        row = await one_decision(h)
    assert "no change because it has no reserved concurrency" in row["detail"]
    assert await aws.reserved("plooral-worker") is None


async def test_a_function_not_in_the_config_is_refused_before_any_request(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.function("billing-worker", reserved=10)
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(throttled("billing-worker"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'billing-worker' is not in aws.lambda.functions" in row["detail"]
    assert aws.proxy.calls == []
    assert await aws.reserved("billing-worker") == 10


# --------------------------------------------------------------------------- SQS


async def test_a_dlq_redrive_moves_the_failed_jobs_back_to_the_jobs_queue(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.queues(in_dlq=3)
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(dlq_alert())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert await aws.visible("plooral-jobs-dlq") == 0
    assert await aws.bodies("plooral-jobs") == ["job-0", "job-1", "job-2"]
    [task] = aws.proxy.tasks
    assert (task.source_arn, task.destination_arn, task.rate) == (
        DLQ_ARN,
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:plooral-jobs",
        10,
    )
    assert row["result"]["task_handle"] == task.handle
    assert row["detail"] == (
        "started moving ~3 messages from sqs queue plooral-jobs-dlq to plooral-jobs at most 10/s"
    )


def test_a_redrive_rule_must_name_where_the_messages_go(tmp_path: Path) -> None:
    # Without a destination SQS sends each message back to the queue it came from, as
    # recorded on the message: queues no allow-list could check (a queue whose redrive
    # policy changed since still gets its old messages). So the rule must name one.
    text = PLOORAL_RULES.replace("        destination: plooral-jobs\n", "")
    (tmp_path / "plooral.yaml").write_text(text)
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    assert problem.line == text.splitlines().index('        dlq: "{{ labels.QueueName }}"') + 1
    assert problem.message == "sqs.redrive_dlq: param 'destination': is required"
    action = registry.get("sqs.redrive_dlq")
    assert action is not None
    with pytest.raises(errors.ParamError, match="'destination': is required"):
        action.schema.validate({"dlq": "plooral-jobs-dlq", "max_messages_per_second": 5})


async def test_no_second_redrive_starts_while_a_move_task_runs(tmp_path: Path, aws: Aws) -> None:
    await aws.queues(in_dlq=3)
    aws.proxy.hold_running(DLQ_ARN)  # started from the console, say
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(dlq_alert())
        row = await one_decision(h)
    assert row["outcome"] == "executed"
    assert "no change because a message move task is already running" in row["detail"]
    assert aws.proxy.count("sqs", "StartMessageMoveTask") == 0
    assert await aws.visible("plooral-jobs-dlq") == 3


async def test_an_empty_dlq_is_not_redriven(tmp_path: Path, aws: Aws) -> None:
    await aws.queues(in_dlq=0)
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(dlq_alert())
        row = await one_decision(h)
    assert row["detail"].endswith("no change because the DLQ holds no visible messages")
    assert aws.proxy.count("sqs", "StartMessageMoveTask") == 0


async def test_a_queue_not_in_the_config_is_refused_before_any_request(
    tmp_path: Path, aws: Aws
) -> None:
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(dlq_alert("billing-dlq"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "'billing-dlq' is not in aws.sqs.queues" in row["detail"]
    assert aws.proxy.calls == []


async def test_a_redrive_dry_run_counts_the_messages_and_moves_none(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.queues(in_dlq=4)
    async with harness(tmp_path, aws, PLOORAL_RULES, dry_run=True) as h:
        await h.fire(dlq_alert())
        row = await one_decision(h)
    assert row["outcome"] == "dry_run"
    assert row["detail"] == (
        "would move ~4 messages from sqs queue plooral-jobs-dlq to plooral-jobs at most 10/s"
    )
    assert await aws.visible("plooral-jobs-dlq") == 4
    assert aws.proxy.count("sqs", "StartMessageMoveTask") == 0


# --------------------------------------------------------------------------- AWS errors


@pytest.mark.parametrize("applied", [False, True], ids=["refused", "applied-answer-lost"])
async def test_a_forced_deployment_answered_with_a_503_is_never_sent_twice(
    tmp_path: Path, aws: Aws, applied: bool
) -> None:
    await aws.service("plooral-api", desired=3)
    before = (await aws.described("plooral-api"))["deployments"][0]["id"]
    aws.proxy.fail(1, kind="unavailable", service="ecs", operation="UpdateService", after=applied)
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(api_error_alert())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    # Neither botocore's retries nor the engine's (the action is idempotent) sent it again.
    assert aws.proxy.count("ecs", "UpdateService") == 1
    assert row["detail"] == (
        f"ecs UpdateService {CLUSTER}/plooral-api: AWS answered with a server error: "
        "ServiceUnavailable (HTTP 503): injected by the test proxy; sent once, not retried "
        "(a repeat is not harmless); outcome unknown: check the service's deployments "
        f"(`aws ecs describe-services --cluster {CLUSTER} --services plooral-api`) before "
        "forcing another"
    )
    after = (await aws.described("plooral-api"))["deployments"][0]["id"]
    assert (after != before) is applied  # forced exactly once (moto: a new id), or not at all


async def test_a_throttled_forced_deployment_is_tried_again_since_nothing_changed(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.service("plooral-api", desired=3)
    before = (await aws.described("plooral-api"))["deployments"][0]["id"]
    aws.proxy.fail(1, kind="throttle", service="ecs", operation="UpdateService")
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(api_error_alert())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    # Sent once by botocore, refused; the engine ran the idempotent action again, which
    # looked first (a second DescribeServices) and then forced the deployment.
    assert aws.proxy.calls == [("ecs", "DescribeServices"), ("ecs", "UpdateService")] * 2
    assert (await aws.described("plooral-api"))["deployments"][0]["id"] != before


async def test_a_redrive_answered_with_a_503_is_never_started_twice(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.queues(in_dlq=3)
    aws.proxy.fail(1, kind="unavailable", service="sqs", operation="StartMessageMoveTask")
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(dlq_alert())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert aws.proxy.count("sqs", "StartMessageMoveTask") == 1
    assert (
        "outcome unknown: check the DLQ's move tasks (`aws sqs list-message-move-tasks "
        in (row["detail"])
    )
    assert f"--source-arn {DLQ_ARN}`) before starting another" in row["detail"]
    assert aws.proxy.tasks == [] and await aws.visible("plooral-jobs-dlq") == 3


async def test_throttling_is_retried_within_the_timeout(tmp_path: Path, aws: Aws) -> None:
    await aws.service("plooral-api", desired=2)
    aws.proxy.fail(2, kind="throttle", service="ecs", operation="UpdateService")
    async with harness(tmp_path, aws, scale_rule(step=1, lo=1, hi=6)) as h:
        await h.fire(saturated())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert (await aws.described("plooral-api"))["desiredCount"] == 3
    assert aws.proxy.count("ecs", "UpdateService") == 3


async def test_a_lambda_429_is_retried_within_the_timeout(tmp_path: Path, aws: Aws) -> None:
    await aws.function("plooral-worker", reserved=10)
    aws.proxy.fail(1, kind="throttle", service="lambda", operation="PutFunctionConcurrency")
    aws.proxy.fail(1, kind="unavailable", service="lambda", operation="GetFunctionConcurrency")
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(throttled())
        row = await one_decision(h)
    assert row["outcome"] == "executed", row["detail"]
    assert await aws.reserved("plooral-worker") == 15
    assert aws.proxy.count("lambda") == 4


async def test_a_persistent_503_fails_clearly_after_the_bounded_attempts(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.service("plooral-api", desired=2)
    aws.proxy.fail(-1, kind="unavailable", service="ecs", operation="UpdateService")
    async with harness(tmp_path, aws, scale_rule(step=1, lo=1, hi=6), max_attempts=2) as h:
        await h.fire(saturated())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"] == (
        f"ecs UpdateService {CLUSTER}/plooral-api: AWS answered with a server error: "
        "ServiceUnavailable (HTTP 503): injected by the test proxy; gave up after 2 attempts "
        "(aws.max_attempts); the change may or may not have been applied: check it"
    )
    # ecs.scale is not idempotent (a step must not apply twice): the engine does not
    # run it again, so only botocore's bounded attempts reached AWS.
    assert aws.proxy.count("ecs", "UpdateService") == 2
    assert (await aws.described("plooral-api"))["desiredCount"] == 2


async def test_persistent_throttling_says_nothing_was_changed(tmp_path: Path, aws: Aws) -> None:
    await aws.function("plooral-worker", reserved=10)
    aws.proxy.fail(-1, kind="throttle", service="lambda", operation="PutFunctionConcurrency")
    async with harness(tmp_path, aws, PLOORAL_RULES, max_attempts=2) as h:
        await h.fire(throttled())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "AWS kept throttling the call: TooManyRequestsException (HTTP 429)" in row["detail"]
    assert row["detail"].endswith(
        "gave up after 2 attempts (aws.max_attempts); nothing was changed"
    )
    assert await aws.reserved("plooral-worker") == 10


async def test_one_aws_client_serves_every_action_and_is_closed_at_shutdown(
    tmp_path: Path, aws: Aws
) -> None:
    await aws.service("plooral-api", desired=2)
    await aws.function("plooral-worker", reserved=10)
    rules = PLOORAL_RULES + scale_rule(step=1, lo=1, hi=6).replace("rules:\n", "", 1)
    h = harness(tmp_path, aws, rules)
    await h.start()
    try:
        await h.fire(saturated(), throttled(), api_error_alert())
        assert [r["outcome"] for r in await h.decisions()] == ["executed"] * 3
        client, _ = h.daemon.clients._opened["aws"]
        # Per service, one client that retries; ECS also has the one-attempt client for
        # the forced deployment, which must never be sent twice.
        assert sorted(client._clients) == [("ecs", False), ("ecs", True), ("lambda", False)]
    finally:
        await h.stop()
    assert client._clients == {}  # closed with the daemon


async def test_a_refused_permission_names_the_iam_action_to_grant(tmp_path: Path, aws: Aws) -> None:
    await aws.service("plooral-api", desired=3)
    aws.proxy.fail(-1, kind="denied", service="ecs", operation="UpdateService")
    async with harness(tmp_path, aws, PLOORAL_RULES) as h:
        await h.fire(api_error_alert())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"].endswith(
        "grant ecs:UpdateService on this resource to the daemon's role (deploy/aws/iam-policy.json)"
    )
    assert aws.proxy.count("ecs", "UpdateService") == 1  # not retried: it cannot help


# --------------------------------------------------------------------------- no config


async def test_the_example_rules_decide_dry_run_on_a_bare_start(tmp_path: Path) -> None:
    # `make run`: no config file, dry-run on. Nothing is checked, nothing is called.
    rules = PLOORAL_RULES + SQS_RULES.replace("rules:\n", "", 1)
    async with Harness(tmp_path, rules=rules) as h:
        await h.fire(
            api_error_alert(),
            throttled(),
            dlq_alert(),
            am_alert("SQSBacklog", QueueName="plooral-emails"),
        )
        rows = await h.decisions()
    assert [(r["rule"], r["outcome"], r["reason"]) for r in rows] == [
        ("plooral-api-redeploy", "dry_run", ""),
        ("plooral-worker-throttled", "dry_run", ""),
        ("plooral-dlq-redrive", "dry_run", ""),
        ("sqs-backlog-scale-ecs-consumers", "dry_run", ""),
    ]
    assert [r["detail"] for r in rows] == [
        f"would force a new deployment of ecs service {CLUSTER}/plooral-api; "
        "not checked against AWS: no `aws:` config",
        "would set reserved concurrency of lambda function plooral-worker by +5 within 5..50; "
        "not checked against AWS: no `aws:` config",
        "would redrive sqs queue plooral-jobs-dlq at most 10/s; "
        "not checked against AWS: no `aws:` config",
        f"would scale ecs service {CLUSTER}/plooral-email-consumer by +2 within 2..12; "
        "not checked against AWS: no `aws:` config",
    ]


async def test_a_live_run_without_an_aws_section_acts_on_nothing(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=PLOORAL_RULES, dry_run=False) as h:
        await h.fire(api_error_alert())
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "no `aws:` section in the config file: nothing is allowed" in row["detail"]


# --------------------------------------------------------------------------- rules


def load_rules(tmp_path: Path, params: str, action: str = "lambda.set_concurrency") -> Any:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - name: r\n    matchers: ['alertname = \"A\"']\n"
        f"    action:\n      type: {action}\n      params:\n"
        + textwrap.indent(textwrap.dedent(params).strip() + "\n", " " * 8)
    )
    return loader.load_dir(tmp_path)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("function: w\nstep: 1\nmin_concurrency: 0\nmax_concurrency: 5",
         "param 'min_concurrency': 0 throttles the function entirely: set allow_zero: true"),
        ("function: w\nto: 0\nmin_concurrency: 1\nmax_concurrency: 5",
         "param 'to': 0 throttles the function entirely"),
        ("function: w\nstep: 1\nmin_concurrency: 1\nmax_concurrency: '{{ labels.max }}'",
         "param 'max_concurrency': must be written in the rule, not a template"),
        ("function: w\nstep: 1\nmin_concurrency: 1\nmax_concurrency: '50'",
         "param 'max_concurrency': is a bound: write it in the rule as a number, got '50'"),
        ("function: w\nstep: 1\nmin_concurrency: 1",
         "param 'max_concurrency': is required"),
        ("function: w\nstep: 1\nto: 3\nmin_concurrency: 1\nmax_concurrency: 5",
         "param 'step': give exactly one of `step` and `to`"),
        ("function: w\nstep: 1\nmin_concurrency: 9\nmax_concurrency: 5",
         "param 'min_concurrency': 9 is above max_concurrency (5)"),
        ("function: w\nstep: 1\nmin_concurrency: 1\nmax_concurrency: 5\n"
         "allow_zero: '{{ labels.z }}'",
         "param 'allow_zero': must be written in the rule"),
        ("function: 'arn:aws:lambda:eu-west-1:123456789012:function:w:live'\nstep: 1\n"
         "min_concurrency: 1\nmax_concurrency: 5",
         "is not a Lambda function name or unqualified ARN"),
    ],
)  # fmt: skip
def test_a_concurrency_rule_that_could_throttle_or_drift_fails_to_load(
    tmp_path: Path, params: str, message: str
) -> None:
    with pytest.raises(errors.RuleFileErrors) as caught:
        load_rules(tmp_path, params)
    assert message in str(caught.value)


def test_zero_concurrency_loads_only_when_the_rule_says_so(tmp_path: Path) -> None:
    [rule] = load_rules(
        tmp_path, "function: w\nto: 0\nmin_concurrency: 0\nmax_concurrency: 5\nallow_zero: true"
    )
    assert rule.action.type == "lambda.set_concurrency"


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("ecs.scale", "cluster: c\nservice: s\nstep: 1\nmax_desired_count: 5",
         "param 'min_desired_count': is required"),
        ("ecs.scale", "cluster: c\nservice: s\nstep: 0\nmin_desired_count: 1\nmax_desired_count: 5",
         "a step of 0 changes nothing"),
        ("sqs.redrive_dlq", "dlq: q-dlq\ndestination: q",
         "param 'max_messages_per_second': is required"),
        ("sqs.redrive_dlq", "dlq: q\ndestination: q2\nmax_messages_per_second: 501",
         "param 'max_messages_per_second': 501 is outside 1..500"),
        ("sqs.redrive_dlq", "dlq: q\ndestination: q\nmax_messages_per_second: 5",
         "param 'destination': is the DLQ itself"),
    ],
)  # fmt: skip
def test_scale_and_redrive_rules_need_their_bounds(
    tmp_path: Path, action: str, params: str, message: str
) -> None:
    with pytest.raises(errors.RuleFileErrors) as caught:
        load_rules(tmp_path, params, action)
    assert message in str(caught.value)


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(
    ("current", "change", "new", "why"),
    [
        (2, {"step": 2}, 4, ""),
        (5, {"step": 3}, 6, ""),
        (0, {"step": 1}, 1, ""),
        (3, {"step": -5}, 1, ""),
        (20, {"step": -1}, 19, ""),  # above the bounds (by hand): one step, not to 6
        (9, {"step": -5}, 4, ""),
        (20, {"to": 3}, 3, ""),  # `to` says where: all the way
        (9, {"step": 1}, 9, "9 is already at or above the upper bound 6"),
        (1, {"step": -1}, 1, "1 is already at or below the lower bound 1"),
        (9, {"to": 5}, 5, ""),
        (9, {"to": 50}, 9, "9 is already at or above the upper bound 6"),
        (4, {"to": 4}, 4, "it is already 4"),
    ],
)
def test_a_change_is_clamped_and_never_goes_the_other_way(
    current: int, change: dict[str, int], new: int, why: str
) -> None:
    assert params.plan(current, change, 1, 6) == (new, why)


@hypothesis.given(
    current=st.integers(0, 100),
    change=st.one_of(
        st.builds(dict, step=st.integers(-50, 50).filter(bool)),
        st.builds(dict, to=st.integers(0, 100)),
    ),
    lo=st.integers(0, 50),
    span=st.integers(0, 50),
)
def test_a_change_lands_within_the_bounds_or_not_at_all(
    current: int, change: dict[str, int], lo: int, span: int
) -> None:
    hi = lo + span
    new, why = params.plan(current, change, lo, hi)
    want = change["to"] if "to" in change else current + change["step"]
    if new == current:
        assert why
        return
    assert not why
    assert (new - current) * (want - current) > 0  # the way that was asked
    if "to" in change:
        assert lo <= new <= hi
        return
    step = change["step"]
    assert abs(new - current) <= abs(step)  # never further than the step
    assert new <= hi if step > 0 else new >= lo  # never past the bound it moves toward
    assert lo <= new <= hi or new == want  # inside the bounds, or one whole step nearer


# --------------------------------------------------------------------------- config


def load_config(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return settings_mod.load(path, environ=env or {}).section("aws")


def test_the_aws_section_parses_with_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, "aws: {ecs: {clusters: [plooral-prod]}}", {"AWS_REGION": REGION})
    assert cfg == aws_actions.AwsConfig(region=REGION, ecs_clusters=frozenset({"plooral-prod"}))
    assert (cfg.max_attempts, cfg.connect_timeout, cfg.read_timeout) == (3, 5.0, 10.0)
    assert cfg.endpoint_url is None and cfg.profile is None
    # Every attempt timing out, plus backoff, still fits the default 60s action timeout.
    assert aws_actions.retry_budget(cfg) == 3 * (5 + 10) + 1 + 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aws: {}", "aws.region: required"),
        ("aws: {region: europe}", "aws.region: not an AWS region: 'europe'"),
        ("aws: {region: eu-west-1, account_id: 123456789012}", "aws.account_id: quote it"),
        ("aws: {region: eu-west-1, endpoint_url: 'ftp://x'}",
         "aws.endpoint_url: expected an http(s) URL"),
        ("aws: {region: eu-west-1, max_attempts: 0}", "aws.max_attempts: must be in 1..10"),
        ("aws: {region: eu-west-1, read_timeout: 0s}", "aws.read_timeout: must be more than 0s"),
        ("aws: {region: eu-west-1, ecs: {clusters: ['arn:aws:ecs:x']}}",
         "aws.ecs.clusters[0]: not a name (names here, not ARNs)"),
        ("aws: {region: eu-west-1, appconfig: {applications: [0123456]}}",
         "aws.appconfig.applications[0]: 42798 was read as a number: quote it"),  # octal!
        ("aws: {region: eu-west-1, lambda: {function: [w]}}", "aws.lambda.function: unknown key"),
        ("aws: {region: eu-west-1, secret_key: x}", "aws.secret_key: unknown key"),
        ("aws: {region: \"eu-west-\\u0661\"}", "aws.region: not an AWS region"),
        ("aws: {region: eu-west-1, account_id: \"\\u0661\\u0662\\u0663456789012\"}",
         "aws.account_id: expected 12 digits"),
    ],
)  # fmt: skip
def test_a_bad_aws_section_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        load_config(tmp_path, text)
    assert str(caught.value).startswith(message)


# --------------------------------------------------------------------------- IAM policy


def called_operations() -> set[tuple[str, str]]:
    """Every (service, operation) literally passed to `common.call` in the AWS family."""
    found = set()
    for path in Path(aws_actions.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            func = node.func if isinstance(node, ast.Call) else None
            if not (isinstance(func, ast.Attribute) and func.attr == "call"):
                continue
            if getattr(func.value, "id", None) != "common":
                continue
            service, operation = node.args[2], node.args[3]
            assert isinstance(service, ast.Constant) and isinstance(operation, ast.Constant)
            found.add((service.value, operation.value))
    return found


def test_the_iam_policy_grants_exactly_the_actions_the_code_calls() -> None:
    policy = json.loads((REPO / "deploy" / "aws" / "iam-policy.json").read_text())
    granted: set[str] = set()
    unscoped = {a for c in aws_actions.CALLS.values() if c.unscoped for a in c.iam}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        actions = set([actions] if isinstance(actions, str) else actions)
        granted |= actions
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            if resource == "*":
                # Only reads AWS cannot scope to a resource (declared so in CALLS).
                assert actions <= unscoped, sorted(actions - unscoped)
            else:
                assert resource.startswith("arn:aws:"), resource  # resource-scoped
    assert called_operations() == set(aws_actions.CALLS)
    assert granted == aws_actions.iam_actions()
    changing = {a for c in aws_actions.CALLS.values() if c.changes for a in c.iam[:1]}
    assert not changing & unscoped  # nothing that changes anything is granted on "*"


def test_every_declared_call_is_a_real_aws_operation() -> None:
    session = botocore.session.get_session()
    for (service, operation), call in aws_actions.CALLS.items():
        model = session.get_service_model(service)
        assert call.api in model.operation_names, (service, call.api)
        assert botocore.xform_name(call.api) == operation
        assert call.iam[0] == f"{service}:{call.api}"


def test_registered_aws_actions_have_bounds_where_they_change_capacity() -> None:
    for name, bounds in {
        "ecs.scale": ("min_desired_count", "max_desired_count"),
        "lambda.set_concurrency": ("min_concurrency", "max_concurrency"),
    }.items():
        action = registry.get(name)
        assert action is not None
        assert all(action.schema.fields[b].required for b in bounds)
        assert action.idempotent is False  # a step must never apply twice
