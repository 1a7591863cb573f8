"""The AWS family: bounded remediations, one module per service (ECS, Lambda, SQS).

    ecs.force_new_deployment        UpdateService(forceNewDeployment) unless a rollout is under way
    ecs.scale                       UpdateService(desiredCount) by step or to a value, within bounds
    lambda.set_concurrency          PutFunctionConcurrency by step or to a value, within bounds
    sqs.redrive_dlq                 StartMessageMoveTask from a DLQ, rate-bounded

Targets usually come from alert labels (CloudWatch dimensions `ClusterName`,
`ServiceName`, `FunctionName`, `QueueName`), which are untrusted: every name is checked
for its AWS format, an ARN must be in the configured region (and account), and the
name must be in the `aws:` config's allow-lists before any request is made. What the
modules share (config, names, bounds, `call`) is in `common`.
"""

from __future__ import annotations

from remediator.actions.aws import (  # noqa: F401 - imported to register their actions
    ecs,
    lambda_,
    sqs,
)
from remediator.actions.aws.common import CALLS, AwsConfig, Call, iam_actions, retry_budget

__all__ = ["CALLS", "AwsConfig", "Call", "iam_actions", "retry_budget"]
