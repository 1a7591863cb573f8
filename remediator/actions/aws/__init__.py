"""The AWS family: bounded remediations on ECS, Lambda, SQS, EventBridge, AppConfig,
CloudFront, CodeDeploy and RDS, one module per service.

    ecs.force_new_deployment        UpdateService(forceNewDeployment) unless a rollout is under way
    ecs.scale                       UpdateService(desiredCount) by step or to a value, within bounds
    ecs.rollback                    the service back to its previous ACTIVE task definition
    lambda.set_concurrency          PutFunctionConcurrency by step or to a value, within bounds
    lambda.rollback_alias           an alias back to the previous (or the stable) version
    lambda.set_event_source         disable or enable an event source mapping (SQS trigger)
    sqs.redrive_dlq                 StartMessageMoveTask from a DLQ, rate-bounded
    events.disable_rule             disable or enable an EventBridge rule
    appconfig.set_feature_flag      one flag of a feature-flag profile, deployed
    cloudfront.create_invalidation  bounded paths, never twice for one decision
    codedeploy.stop_deployment      stop a group's unfinished deployments, with rollback
    rds.failover_db_cluster         Aurora failover, at most once per cluster per window

Targets usually come from alert labels (CloudWatch dimensions `ClusterName`,
`ServiceName`, `FunctionName`, `QueueName`), which are untrusted: every name is checked
for its AWS format, an ARN must be in the configured region (and account), and the
name must be in the `aws:` config's allow-lists before any request is made. What the
modules share (config, names, bounds, `call`) is in `common`.
"""

from __future__ import annotations

from remediator.actions.aws import (  # noqa: F401 - imported to register their actions
    appconfig,
    cloudfront,
    codedeploy,
    ecs,
    events,
    lambda_,
    rds,
    sqs,
)
from remediator.actions.aws.common import CALLS, AwsConfig, Call, iam_actions, retry_budget

__all__ = ["CALLS", "AwsConfig", "Call", "iam_actions", "retry_budget"]
