"""SNS as the tests see it: a loopback PKI, an https server for certificates and
subscription confirmations, and messages signed the way SNS signs them.

    pki = make_pki(tmp_path)                   # test CA, TLS cert for 127.0.0.1, signing keys
    async with CertServer(pki) as server:      # https://127.0.0.1:PORT, trusted via sns.ca_file
        body = notification(alarm_message(), cert_url=server.cert_url, key=pki.signing_key)
        resp = await post_sns(h, body)

The canonical string is built here from AWS's documentation, independently of
remediator/intake/sns.py, so that a mistake there cannot cancel out in the tests.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import ssl
import uuid
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import ClientResponse, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.harness import START, Harness

TOPIC = "arn:aws:sns:us-east-1:123456789012:plooral-alarms"
OTHER_TOPIC = "arn:aws:sns:us-east-1:999999999999:somebody-elses-topic"
CERT_PATH = "/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
OTHER_CERT_PATH = "/SimpleNotificationService-fedcba9876543210fedcba9876543210.pem"
ALARM_ARN = "arn:aws:cloudwatch:us-east-1:123456789012:alarm:PlooralAPIHighErrorRate"
LOOPBACK = "127.0.0.1"

_SIGNED_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SIGNED_CONFIRMATION = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)  # fmt: skip


# -- PKI ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    ca_file: Path
    """The test CA: the only root the daemon trusts (sns.ca_file)."""
    server_cert: Path
    server_key: Path
    signing_key: rsa.RSAPrivateKey
    signing_cert: bytes
    """PEM served at CERT_PATH: what SNS signs with."""
    other_key: rsa.RSAPrivateKey
    other_cert: bytes
    """PEM served at OTHER_CERT_PATH: a valid certificate that did not sign the message."""


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: rsa.RSAPrivateKey, issuer: str, issuer_key: rsa.RSAPrivateKey, **ext: Any
) -> x509.Certificate:
    # TLS is checked against the real time, not the daemon's FakeClock.
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if ext.get("ca"):
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if ext.get("ip"):
        import ipaddress  # noqa: PLC0415 - only the server certificate needs it

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ext["ip"]))]),
            critical=False,
        )
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> Pki:
    """A CA, a TLS certificate for 127.0.0.1 it issued, and two SNS signing identities."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, signing_key, other_key = _key(), _key(), _key(), _key()
    ca = _cert("remediator test CA", ca_key, "remediator test CA", ca_key, ca=True)
    server = _cert(LOOPBACK, server_key, "remediator test CA", ca_key, ip=LOOPBACK)
    signing = _cert("sns.amazonaws.com", signing_key, "remediator test CA", ca_key)
    other = _cert("sns.amazonaws.com", other_key, "remediator test CA", ca_key)
    (directory / "ca.pem").write_bytes(_pem(ca))
    (directory / "server.pem").write_bytes(_pem(server))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        signing_key=signing_key,
        signing_cert=_pem(signing),
        other_key=other_key,
        other_cert=_pem(other),
    )


def sns_config(pki: Pki, *, topics: tuple[str, ...] = (TOPIC,), extra: str = "") -> str:
    """Config trusting only the test CA, with 127.0.0.1 as the SNS host."""
    listed = ", ".join(json.dumps(t) for t in topics)
    return (
        "sns:\n"
        f"  allowed_topics: [{listed}]\n"
        "  cert_host_pattern: '^127\\.0\\.0\\.1$'\n"
        "  cert_ports: any\n"
        f"  ca_file: {pki.ca_file}\n"
        "  timeout: 5s\n"
        f"{extra}"
    )


# -- the https server -----------------------------------------------------------------


class CertServer:
    """https on a free loopback port: serves the signing certificates, answers
    confirmations at /confirm, counts every request by path."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.hits: Counter[str] = Counter()
        self.confirmations: list[str] = []
        self.bodies = {CERT_PATH: pki.signing_cert, OTHER_CERT_PATH: pki.other_cert}
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def cert_url(self) -> str:
        return self.url + CERT_PATH

    def fetches(self, path: str = CERT_PATH) -> int:
        return self.hits[path]

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        if request.path == "/confirm":
            self.confirmations.append(request.path_qs)
            arn = request.query.get("TopicArn", "") + ":0f1e2d3c"
            body = (
                "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult>"
                f"<SubscriptionArn>{arn}</SubscriptionArn>"
                "</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
            )
            return web.Response(text=body, content_type="text/xml")
        if request.path == "/huge.pem":
            return web.Response(body=b"-" * (1 << 20))
        found = self.bodies.get(request.path)
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found, content_type="application/x-pem-file")

    async def start(self) -> Self:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0, ssl_context=context).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# -- messages -------------------------------------------------------------------------


def stamp(t: dt.datetime) -> str:
    """SNS's Timestamp form: milliseconds and a Z."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def cloudwatch_time(t: dt.datetime) -> str:
    """CloudWatch's StateChangeTime form: milliseconds and +0000."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+0000"


def alarm_message(
    name: str = "PlooralAPIHighErrorRate",
    *,
    state: str = "ALARM",
    old_state: str = "OK",
    changed_at: dt.datetime | None = None,
    namespace: str = "AWS/ECS",
    metric: str = "HTTPCode_Target_5XX_Count",
    dimensions: dict[str, str] | None = None,
    arn: str | None = None,
) -> dict[str, Any]:
    """A CloudWatch alarm state change as CloudWatch publishes it to SNS."""
    dims = {"ClusterName": "plooral-prod", "ServiceName": "plooral-api"}
    return {
        "AlarmName": name,
        "AlarmDescription": f"{name} description",
        "AWSAccountId": "123456789012",
        "AlarmConfigurationUpdatedTimestamp": "2026-11-02T09:00:00.000+0000",
        "NewStateValue": state,
        "NewStateReason": f"Threshold Crossed: {state}",
        "StateChangeTime": cloudwatch_time(changed_at or START - dt.timedelta(minutes=1)),
        "Region": "US East (N. Virginia)",
        "AlarmArn": arn or f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}",
        "OldStateValue": old_state,
        "OKActions": [],
        "AlarmActions": [TOPIC],
        "InsufficientDataActions": [],
        "Trigger": {
            "MetricName": metric,
            "Namespace": namespace,
            "StatisticType": "Statistic",
            "Statistic": "SUM",
            "Unit": None,
            "Dimensions": [
                {"value": v, "name": k}
                for k, v in (dims if dimensions is None else dimensions).items()
            ],
            "Period": 60,
            "EvaluationPeriods": 1,
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": 5.0,
            "TreatMissingData": "missing",
            "EvaluateLowSampleCountPercentile": "",
        },
    }


def canonical(doc: dict[str, Any]) -> bytes:
    keys = _SIGNED_NOTIFICATION if doc["Type"] == "Notification" else _SIGNED_CONFIRMATION
    return "".join(f"{k}\n{doc[k]}\n" for k in keys if k in doc).encode()


def sign(doc: dict[str, Any], key: rsa.RSAPrivateKey, version: str = "1") -> dict[str, Any]:
    """`doc` with SignatureVersion and Signature set as SNS sets them."""
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(canonical(doc), padding.PKCS1v15(), algorithm)
    return {**doc, "SignatureVersion": version, "Signature": base64.b64encode(signature).decode()}


def notification(
    message: dict[str, Any] | str,
    *,
    cert_url: str,
    key: rsa.RSAPrivateKey,
    version: str = "1",
    topic: str = TOPIC,
    timestamp: dt.datetime = START,
    message_id: str | None = None,
    subject: str | None = 'ALARM: "PlooralAPIHighErrorRate" in US East (N. Virginia)',
) -> dict[str, Any]:
    """A signed Notification as SNS posts it."""
    doc: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": stamp(timestamp),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }
    if subject is not None:
        doc["Subject"] = subject
    return sign(doc, key, version)


def confirmation(
    *,
    cert_url: str,
    subscribe_url: str,
    key: rsa.RSAPrivateKey,
    kind: str = "SubscriptionConfirmation",
    topic: str = TOPIC,
    timestamp: dt.datetime = START,
    version: str = "1",
) -> dict[str, Any]:
    """A signed SubscriptionConfirmation (or UnsubscribeConfirmation)."""
    doc = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e2425c464de12884",
        "TopicArn": topic,
        "Message": f"You have chosen to subscribe to the topic {topic}.",
        "SubscribeURL": subscribe_url,
        "Timestamp": stamp(timestamp),
        "SigningCertURL": cert_url,
    }
    return sign(doc, key, version)


async def post_sns(
    h: Harness, body: dict[str, Any] | bytes, *, message_type: str | None = None
) -> ClientResponse:
    """POST as SNS does: text/plain, the type in x-amz-sns-message-type."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "text/plain; charset=UTF-8"}
    kind = message_type or (body.get("Type") if isinstance(body, dict) else None)
    if isinstance(kind, str):
        headers["x-amz-sns-message-type"] = kind
    resp = await h.client.post("/webhook/sns", data=data, headers=headers)
    await resp.read()
    return resp
