"""AWS fixtures for every AWS test module: moto's server, the proxy, direct clients.

`moto` (one server per test module) and `aws` (a proxy and clients per test) are made
available to all tests through tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from remediator.actions import aws as aws_actions
from tests.aws_emulator import AwsProxy, MotoServer

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
CLUSTER = "plooral-prod"
DLQ_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:plooral-jobs-dlq"
SESSION = aioboto3.Session(region_name=REGION)
"""Shared by every test: it caches the service models; the clients are per test."""
SERVICES = ("ecs", "lambda", "sqs", "iam", "events", "appconfig", "cloudfront", "codedeploy", "rds")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    # Read botocore's models before any event loop runs: each test's clients then find
    # them cached instead of parsing megabytes of JSON on the loop.
    loader = SESSION._session.get_component("data_loader")
    for service in SERVICES:
        loader.load_service_model(service, "service-2")
        loader.load_service_model(service, "endpoint-rule-set-1")
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        loader.load_data(name)
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@dataclasses.dataclass
class Aws:
    """moto, the proxy in front of it, and clients that go to moto directly."""

    proxy: AwsProxy
    ecs: Any
    lam: Any
    sqs: Any
    iam: Any
    events: Any = None
    appconfig: Any = None
    cloudfront: Any = None
    codedeploy: Any = None
    rds: Any = None

    @property
    def endpoint(self) -> str:
        return self.proxy.url

    async def service(self, name: str, *, desired: int, rolling: bool = False) -> None:
        """An ECS service; its deployment is COMPLETED unless `rolling`."""
        await self.ecs.create_cluster(clusterName=CLUSTER)
        await self.ecs.register_task_definition(
            family=name, containerDefinitions=[{"name": name, "image": "app:1", "memory": 128}]
        )
        # moto reports a deployment IN_PROGRESS until this many tasks run; read at creation.
        os.environ["MOTO_ECS_SERVICE_RUNNING"] = "0" if rolling else str(desired)
        try:
            await self.ecs.create_service(
                cluster=CLUSTER, serviceName=name, taskDefinition=name, desiredCount=desired
            )
        finally:
            del os.environ["MOTO_ECS_SERVICE_RUNNING"]

    async def described(self, name: str) -> dict[str, Any]:
        [svc] = (await self.ecs.describe_services(cluster=CLUSTER, services=[name]))["services"]
        return dict(svc)

    async def function(self, name: str, *, reserved: int | None) -> None:
        role = await self.iam.create_role(
            RoleName=f"{name}-role",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ]
                }
            ),
        )
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as z:
            z.writestr("worker.py", "def handle(event, context):\n    return None\n")
        await self.lam.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role["Role"]["Arn"],
            Handler="worker.handle",
            Code={"ZipFile": code.getvalue()},
        )
        if reserved is not None:
            await self.lam.put_function_concurrency(
                FunctionName=name, ReservedConcurrentExecutions=reserved
            )

    async def reserved(self, name: str) -> int | None:
        answer = await self.lam.get_function_concurrency(FunctionName=name)
        value = answer.get("ReservedConcurrentExecutions")
        return None if value is None else int(value)

    async def queues(self, *, in_dlq: int) -> None:
        """plooral-jobs with plooral-jobs-dlq as its DLQ, and `in_dlq` failed jobs in it."""
        dlq = await self.sqs.create_queue(QueueName="plooral-jobs-dlq")
        await self.sqs.create_queue(
            QueueName="plooral-jobs",
            Attributes={
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": 3})
            },
        )
        await self.sqs.create_queue(QueueName="plooral-jobs-retry")
        for i in range(in_dlq):
            await self.sqs.send_message(QueueUrl=dlq["QueueUrl"], MessageBody=f"job-{i}")

    async def visible(self, queue: str) -> int:
        url = (await self.sqs.get_queue_url(QueueName=queue))["QueueUrl"]
        attrs = await self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

    async def bodies(self, queue: str) -> list[str]:
        url = (await self.sqs.get_queue_url(QueueName=queue))["QueueUrl"]
        got = await self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        return sorted(m["Body"] for m in got.get("Messages", []))


DECLARED = {(service, call.api) for (service, _), call in aws_actions.CALLS.items()}


@pytest.fixture
async def aws(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Aws]:
    # Fake credentials, no profile or metadata service, no proxy: only loopback.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                 "https_proxy", "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    await asyncio.to_thread(moto.reset)
    proxy = await AwsProxy(moto.url).start()
    session = SESSION  # shared: it caches the service models, the clients are per test
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for name in SERVICES:
                clients.append(
                    await stack.enter_async_context(session.client(name, endpoint_url=moto.url))
                )
                # Each client is built in its own loop step: nine in one would hold the
                # loop for a second on a loaded machine (the suite fails a blocked loop).
                await asyncio.sleep(0)
            ecs, lam, sqs, iam, events, appconfig, cloudfront, codedeploy, rds = clients
            yield Aws(proxy, ecs, lam, sqs, iam, events, appconfig, cloudfront, codedeploy, rds)
    finally:
        await proxy.stop()
    undeclared = set(proxy.calls) - DECLARED
    assert not undeclared, f"calls not declared in actions.aws.common.CALLS: {undeclared}"


def without_evidence(rules: str) -> str:
    """The rules with `evidence: false`: tests that count an action's own AWS calls keep
    its evidence reads (tested on their own) out of the count."""
    return re.sub(
        r"^( *)- name: ([a-z0-9-]+)\n", r"\1- name: \2\n\1  evidence: false\n", rules, flags=re.M
    )
