"""`sqs.redrive_dlq`: StartMessageMoveTask from a DLQ, rate-bounded, one task at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import errors
from remediator.actions import params, registry
from remediator.actions.aws import common
from remediator.actions.base import Context, Result
from remediator.settings import Settings

common.declare(
    "sqs",
    {
        "get_queue_url": common.Call("GetQueueUrl", ("sqs:GetQueueUrl",), False),
        "get_queue_attributes": common.Call(
            "GetQueueAttributes", ("sqs:GetQueueAttributes",), False
        ),
        "list_message_move_tasks": common.Call(
            "ListMessageMoveTasks", ("sqs:ListMessageMoveTasks",), False
        ),
        # SQS moves the messages with the caller's permissions: it receives and deletes
        # them on the DLQ and sends them to the destination.
        "start_message_move_task": common.Call(
            "StartMessageMoveTask",
            (
                "sqs:StartMessageMoveTask",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:SendMessage",
            ),
            True,
        ),
    },
)


def _redrive_across(values: Mapping[str, Any]) -> None:
    dlq, dest = values.get("dlq"), values.get("destination")
    if not (isinstance(dlq, str) and isinstance(dest, str)):
        return  # one of them is rendered from a template: checked again once rendered
    if common.ref(dlq, "queue").name == common.ref(dest, "queue").name:
        raise errors.ParamError("destination", "is the DLQ itself")


class SqsRedriveDlq:
    type: ClassVar[str] = "sqs.redrive_dlq"
    # Looks before it acts, so the engine may run it again after a temporary error
    # before the write. StartMessageMoveTask itself is sent once (see `_call`): after a
    # 5xx or a lost answer the action fails with "outcome unknown".
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "dlq": params.Field(
                common.name_or_arn("queue"), doc="the dead-letter queue, name or ARN"
            ),
            # Required: without one SQS sends each message back to the queue it came
            # from, recorded per message — queues no allow-list here can check (not
            # even ListDeadLetterSourceQueues: a queue whose redrive policy changed
            # since still gets its old messages back).
            "destination": params.Field(
                common.name_or_arn("queue"),
                doc="where to move the messages: a queue name or ARN in aws.sqs.queues",
            ),
            # SQS moves at most 500 messages per second; a rule states its own rate so
            # a redrive cannot flood consumers that just recovered.
            "max_messages_per_second": params.Field(
                params.bound(lo=1, hi=500), doc="move rate limit"
            ),
        },
        literal=frozenset({"max_messages_per_second"}),
        across=_redrive_across,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        self._check(values, settings)

    def _check(self, values: Mapping[str, Any], settings: Settings) -> common.AwsConfig | None:
        cfg = common.cfg(settings)
        if cfg is not None:
            for field in ("dlq", "destination"):
                if field in values:
                    ref = common.ref(values[field], "queue")
                    common.check_place(field, ref, cfg)
                    common.check_listed(field, ref.name, cfg.sqs_queues, "aws.sqs.queues")
        return cfg

    def target(self, values: Mapping[str, Any]) -> str:
        return common.ref(values["dlq"], "queue").name

    async def _queue_arn(
        self, ctx: Context, cfg: common.AwsConfig, name: str, extra: list[str]
    ) -> Any:
        url = (
            await common.call(ctx, cfg, "sqs", "get_queue_url", {"QueueName": name}, resource=name)
        )["QueueUrl"]
        answer = await common.call(
            ctx, cfg, "sqs", "get_queue_attributes",
            {"QueueUrl": url, "AttributeNames": ["QueueArn", *extra]}, resource=name,
        )  # fmt: skip
        return answer.get("Attributes") or {}

    async def _look(
        self, values: Mapping[str, Any], ctx: Context, cfg: common.AwsConfig
    ) -> tuple[dict[str, Any], Result | None]:
        name = self.target(values)
        attrs = await self._queue_arn(ctx, cfg, name, ["ApproximateNumberOfMessages"])
        source_arn = str(attrs["QueueArn"])
        waiting = int(attrs.get("ApproximateNumberOfMessages", 0))
        dest = common.ref(values["destination"], "queue").name
        plan: dict[str, Any] = {
            "dlq": source_arn,
            "destination": str((await self._queue_arn(ctx, cfg, dest, []))["QueueArn"]),
            "messages": waiting,
            "max_messages_per_second": values["max_messages_per_second"],
        }
        tasks = await common.call(
            ctx, cfg, "sqs", "list_message_move_tasks",
            {"SourceArn": source_arn, "MaxResults": 10}, resource=name,
        )  # fmt: skip
        running = [t for t in tasks.get("Results") or [] if t.get("Status") == "RUNNING"]
        what = f"sqs queue {name}"
        if running:
            t = running[0]
            why = (
                f"a message move task is already running from it "
                f"({t.get('ApproximateNumberOfMessagesMoved', '?')} of "
                f"{t.get('ApproximateNumberOfMessagesToMove', '?')} moved)"
            )
            return plan, common.no_change(what, why, {**plan, "running_task": t.get("TaskHandle")})
        if waiting == 0:
            return plan, common.no_change(what, "the DLQ holds no visible messages", plan)
        return plan, None

    @staticmethod
    def _moving(plan: Mapping[str, Any], name: str) -> str:
        to = str(plan["destination"]).rpartition(":")[2]
        return (
            f"~{plan['messages']} messages from sqs queue {name} to {to} at most "
            f"{plan['max_messages_per_second']}/s"
        )

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg = self._check(values, ctx.settings)
        assert cfg is not None  # family_config refuses a live run without the section
        name = self.target(values)
        plan, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        request = {
            "SourceArn": plan["dlq"],
            # Always given: without it SQS would choose, per message (see the schema).
            "DestinationArn": plan["destination"],
            "MaxNumberOfMessagesPerSecond": plan["max_messages_per_second"],
        }
        answer = await common.call(
            ctx, cfg, "sqs", "start_message_move_task", request, resource=name,
            once=f"check the DLQ's move tasks (`aws sqs list-message-move-tasks --source-arn "
            f"{plan['dlq']}`) before starting another",
        )  # fmt: skip
        handle = answer.get("TaskHandle")
        return Result(
            detail=f"started moving {self._moving(plan, name)}",
            data={**plan, "task_handle": handle},
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        name = self.target(values)
        cfg = self._check(values, ctx.settings)
        if cfg is None:
            rate = values["max_messages_per_second"]
            return common.not_checked(f"would redrive sqs queue {name} at most {rate}/s")
        plan, skip = await self._look(values, ctx, cfg)
        if skip is not None:
            return skip
        return Result(detail=f"would move {self._moving(plan, name)}", data=plan)


registry.register(SqsRedriveDlq())
