"""Amazon SNS HTTP(S) subscription messages → verified envelopes → CloudWatch alarm Alerts.

Pure: parsing, canonical strings, URL and freshness checks, signature verification
against a public key the caller fetched, the CloudWatch alarm mapping, and the small
bounded in-memory state the intake keeps (MessageIds seen, the last transition of each
alarm). No I/O: fetching certificates and confirming subscriptions is clients/sns.py.

Every refusal is an errors.IntakeError with the status to answer; `Rejected` also says
which `remediator_sns_messages_total{result}` it is. See docs/sns.md.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Literal

import yarl
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from remediator import errors
from remediator.intake import payload
from remediator.models.alert import Alert, Status, parse_time
from remediator.settings import Sns

SOURCE = "sns"
TYPE_HEADER = "x-amz-sns-message-type"
SUBSCRIPTION = "SubscriptionConfirmation"
NOTIFICATION = "Notification"
UNSUBSCRIBE = "UnsubscribeConfirmation"
TYPES = (SUBSCRIPTION, NOTIFICATION, UNSUBSCRIBE)

CLOCK_SKEW = 300.0
"""Seconds a Timestamp may lie in the future (clocks differ); beyond that it is refused."""
MAX_TRACKED_ALARMS = 10_000
"""Alarms whose last transition is remembered (to give an OK its ALARM's starts_at)."""
MAX_LABELS = 128
MAX_VALUE_LEN = 16384

ALARM, OK, INSUFFICIENT_DATA = "ALARM", "OK", "INSUFFICIENT_DATA"
STATES = (ALARM, OK, INSUFFICIENT_DATA)

# Signed keys per message type, in the documented order of the canonical string.
_SIGNED: Mapping[str, tuple[str, ...]] = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    UNSUBSCRIBE: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
_COMMON = ("MessageId", "TopicArn", "Message", "Timestamp")
_SIGNING = ("SignatureVersion", "Signature", "SigningCertURL")
_REQUIRED: Mapping[str, tuple[str, ...]] = {
    NOTIFICATION: _COMMON + _SIGNING,
    SUBSCRIPTION: (*_COMMON, "SubscribeURL", "Token", *_SIGNING),
    UNSUBSCRIBE: (*_COMMON, "SubscribeURL", "Token", *_SIGNING),
}
_HASHES: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,  # SignatureVersion 1 is SHA1withRSA by AWS's definition, not our choice
    "2": hashes.SHA256,
}
_MESSAGE_ID = re.compile(r"[0-9A-Za-z-]{1,128}")
_TOPIC_ARN = re.compile(r"arn:[!-~]{1,250}")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,127}")
_RESERVED_LABELS = frozenset({"alertname", "region", "account", "namespace", "metric"})


class Rejected(errors.IntakeError):
    """A message refused for what it is or claims (not its shape); `result` names it in
    `remediator_sns_messages_total` and `remediator_rejected_inputs_total{kind}`."""

    def __init__(self, message: str, *, result: str, status: int = 403) -> None:
        super().__init__(message, status=status)
        self.result = result


# -- envelope -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One SNS message as posted, shape-checked but not yet trusted."""

    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: dt.datetime
    signature_version: str
    signature: str
    signing_cert_url: str
    subscribe_url: str
    """SubscribeURL of a (un)subscribe confirmation; "" for a notification."""
    signed: Mapping[str, str]
    """The signed keys present, in canonical order, as received."""
    doc: Mapping[str, Any]
    """The whole body: what the journal stores once the message is verified."""

    def canonical(self) -> bytes:
        """The string SNS signs: `Key\\nValue\\n` for each signed key present, in order."""
        return "".join(f"{k}\n{v}\n" for k, v in self.signed.items()).encode("utf-8")


def parse(body: bytes, *, type_header: str | None) -> Envelope:
    """Shape-check a posted body; 400 for what is not JSON or disagrees with the header,
    422 for JSON that is not an SNS message."""
    data = payload.load_bytes(body)
    if type_header is None:
        raise errors.IntakeError(f"missing the {TYPE_HEADER} header")
    envelope = _envelope(data)
    if type_header != envelope.type:
        raise errors.IntakeError(
            f"{TYPE_HEADER} header says {_show(type_header)}, the body's Type {envelope.type!r}"
        )
    return envelope


def _envelope(data: Any) -> Envelope:
    if not isinstance(data, dict):
        raise _schema("body must be a JSON object")
    kind = data.get("Type")
    if kind not in TYPES:
        raise _schema(f"Type must be one of {', '.join(TYPES)}, got {_show(kind)}")
    for key in _REQUIRED[kind]:
        if not isinstance(data.get(key), str):
            raise _schema(f"{key} must be a string, got {_show(data.get(key))}")
    subject = data.get("Subject")
    if subject is not None and not isinstance(subject, str):
        raise _schema(f"Subject must be a string, got {_show(subject)}")
    if not _MESSAGE_ID.fullmatch(data["MessageId"]):
        raise _schema(
            f"MessageId must be 1-128 letters, digits or '-', got {_show(data['MessageId'])}"
        )
    if not _TOPIC_ARN.fullmatch(data["TopicArn"]):
        raise _schema(f"TopicArn must be an ARN, got {_show(data['TopicArn'])}")
    try:
        timestamp = parse_time(data["Timestamp"])
    except ValueError as exc:
        raise _schema(f"Timestamp {_show(data['Timestamp'])} is not an ISO 8601 time") from exc
    signed = {k: data[k] for k in _SIGNED[kind] if data.get(k) is not None}
    return Envelope(
        type=kind,
        message_id=data["MessageId"],
        topic_arn=data["TopicArn"],
        message=data["Message"],
        timestamp=timestamp,
        signature_version=data["SignatureVersion"],
        signature=data["Signature"],
        signing_cert_url=data["SigningCertURL"],
        subscribe_url=data.get("SubscribeURL", "") if kind != NOTIFICATION else "",
        signed=signed,
        doc=data,
    )


# -- trust --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Urls:
    """The URLs of a message that passed `Gate.check`: safe to call."""

    cert: yarl.URL
    subscribe: yarl.URL | None


def check_url(
    text: str,
    *,
    host: re.Pattern[str],
    path: re.Pattern[str] | None,
    what: str,
    ports: tuple[int, ...] | None = (443,),
    query: bool = False,
) -> yarl.URL:
    """`text` as a URL we may call: https, no credentials, no fragment, a port in `ports`,
    a query only if `query`, the whole host matching `host` (and the path `path`). Parsed
    by yarl, the parser aiohttp will use, so the host checked is the host connected to.
    Every variation a forger could add (ports, queries) would otherwise be one more URL
    to fetch and cache."""
    try:
        url = yarl.URL(text)
        url_host = url.host
    except (ValueError, TypeError, UnicodeError):
        raise Rejected(f"{what} is not a URL", result="bad_signature") from None
    if url.scheme != "https":
        raise Rejected(
            f"{what} must use https, got {_show(url.scheme + ':')}", result="bad_signature"
        )
    if url.user is not None or url.password is not None:
        raise Rejected(f"{what} must not carry credentials", result="bad_signature")
    if url.raw_fragment or (url.raw_query_string and not query):
        raise Rejected(f"{what} must not carry a query or fragment", result="bad_signature")
    if ports is not None and (url.explicit_port or 443) not in ports:
        raise Rejected(
            f"{what} port {url.explicit_port} is not in sns.cert_ports", result="bad_signature"
        )
    if not url_host or not host.fullmatch(url_host):
        raise Rejected(
            f"{what} host {_show(url_host)} does not match sns.cert_host_pattern",
            result="bad_signature",
        )
    if path is not None and not path.fullmatch(url.raw_path):
        raise Rejected(
            f"{what} path {_show(url.raw_path)} does not match sns.cert_path_pattern",
            result="bad_signature",
        )
    return url


_AWS_HOST = re.compile(r"sns\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")


def _same_region(url: yarl.URL, topic_arn: str, what: str) -> None:
    """An AWS SNS host must be the topic's own region: a topic in us-east-1 is never
    signed by a certificate served from another region's endpoint."""
    found = _AWS_HOST.fullmatch(url.host or "")
    parts = topic_arn.split(":")
    if found is not None and len(parts) > 3 and found.group(1) != parts[3]:
        raise Rejected(
            f"{what} is in region {found.group(1)}, the topic in {parts[3]}",
            result="bad_signature",
        )


def verify_signature(envelope: Envelope, public_key: rsa.RSAPublicKey) -> None:
    """Raise Rejected(bad_signature) unless `Signature` signs the canonical string."""
    algorithm = _HASHES.get(envelope.signature_version)
    if algorithm is None:
        raise Rejected(
            f"SignatureVersion must be 1 or 2, got {_show(envelope.signature_version)}",
            result="bad_signature",
        )
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("Signature is not base64", result="bad_signature") from None
    try:
        public_key.verify(signature, envelope.canonical(), padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise Rejected(
            "Signature does not match the message and its signing certificate",
            result="bad_signature",
        ) from None


class MessageIds:
    """MessageIds already accepted, each until its message would be too old anyway.

    SNS delivers at least once; a MessageId seen again is answered 2xx without a second
    decision. One still being accepted is `pending`: its outcome is not known yet, so the
    copy must be retried rather than acknowledged. Bounded: past `max_entries` the oldest
    are forgotten (occurrence dedup in the engine still stops a second action).
    """

    def __init__(self, max_entries: int) -> None:
        self._expires: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._pending: set[str] = set()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._expires)

    def reserve(
        self, message_id: str, *, expires: float, now: float
    ) -> Literal["new", "pending", "seen"]:
        """Remember `message_id` until `expires`, as pending until `settle` or `release`."""
        while self._expires:
            first, at = next(iter(self._expires.items()))
            if at > now:
                break
            del self._expires[first]
        if message_id in self._pending:
            return "pending"
        if message_id in self._expires:
            return "seen"
        self._expires[message_id] = expires
        self._pending.add(message_id)
        while len(self._expires) > self._max:
            self._pending.discard(self._expires.popitem(last=False)[0])
        return "new"

    def remember(self, message_id: str, expires: float) -> None:
        """A MessageId accepted by an earlier run (restored from the database)."""
        self._expires[message_id] = expires
        while len(self._expires) > self._max:
            self._expires.popitem(last=False)

    def expires(self, message_id: str) -> float | None:
        return self._expires.get(message_id)

    def settle(self, message_id: str) -> None:
        """The message was accepted: a copy from now on is a duplicate."""
        self._pending.discard(message_id)

    def release(self, message_id: str) -> None:
        """The message was not accepted after all: SNS's retry must be."""
        self._pending.discard(message_id)
        self._expires.pop(message_id, None)


class Gate:
    """What the SNS intake remembers between requests, and the checks that need no I/O."""

    def __init__(self, settings: Sns) -> None:
        self.settings = settings
        self.seen = MessageIds(settings.dedup_max_entries)
        self.alarms = AlarmTracker(MAX_TRACKED_ALARMS)

    def topic_allowed(self, topic_arn: str) -> bool:
        return any(fnmatch.fnmatchcase(topic_arn, p) for p in self.settings.allowed_topics)

    def check(self, envelope: Envelope, *, now: float) -> Urls:
        """Cheap checks, before any certificate is fetched: allowed topic, fresh Timestamp,
        supported SignatureVersion, callable URLs. Raises Rejected."""
        s = self.settings
        if not self.topic_allowed(envelope.topic_arn):
            raise Rejected(
                f"topic {envelope.topic_arn} is not in sns.allowed_topics",
                result="topic_not_allowed",
            )
        age = now - envelope.timestamp.timestamp()
        if age > s.max_age:
            raise Rejected(
                f"Timestamp {envelope.signed['Timestamp']} is {age:.0f}s old, more than "
                f"sns.max_age ({s.max_age:.0f}s)",
                result="replay",
            )
        if age < -CLOCK_SKEW:
            raise Rejected(
                f"Timestamp {envelope.signed['Timestamp']} is {-age:.0f}s in the future",
                result="replay",
            )
        if envelope.signature_version not in _HASHES:
            raise Rejected(
                f"SignatureVersion must be 1 or 2, got {_show(envelope.signature_version)}",
                result="bad_signature",
            )
        cert = check_url(
            envelope.signing_cert_url, host=s.cert_host_pattern, path=s.cert_path_pattern,
            what="SigningCertURL", ports=s.cert_ports,
        )  # fmt: skip
        _same_region(cert, envelope.topic_arn, "SigningCertURL")
        subscribe = None
        if envelope.type == SUBSCRIPTION:
            subscribe = check_url(
                envelope.subscribe_url, host=s.cert_host_pattern, path=None,
                what="SubscribeURL", ports=s.cert_ports, query=True,
            )  # fmt: skip
            _same_region(subscribe, envelope.topic_arn, "SubscribeURL")
        return Urls(cert=cert, subscribe=subscribe)

    def check_alarm_time(self, alarm: Alarm, envelope: Envelope) -> None:
        """Refuse (422) an alarm whose StateChangeTime lies after the message's signed
        Timestamp by more than sns.max_state_change_skew: CloudWatch publishes a transition
        after it happens, and a time in the future would make every later notification
        of the alarm look stale (and, remembered, stay so across restarts)."""
        ahead = (alarm.changed_at - envelope.timestamp).total_seconds()
        if ahead > self.settings.max_state_change_skew:
            raise Rejected(
                f"Message.StateChangeTime {alarm.changed_at.isoformat()} is {ahead:.0f}s after "
                f"the message's Timestamp {envelope.signed['Timestamp']} (more than "
                f"sns.max_state_change_skew, {self.settings.max_state_change_skew:.0f}s)",
                result="future_state_change",
                status=422,
            )

    def remember_until(self, envelope: Envelope, *, now: float) -> float:
        """When a MessageId may be forgotten: its message is refused as too old by then."""
        return min(envelope.timestamp.timestamp(), now + CLOCK_SKEW) + self.settings.max_age


# -- CloudWatch alarms ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Alarm:
    """A CloudWatch alarm state change, as carried in a notification's Message."""

    name: str
    state: str
    """ALARM, OK or INSUFFICIENT_DATA (NewStateValue)."""
    old_state: str
    changed_at: dt.datetime
    """StateChangeTime of this transition."""
    fingerprint: str
    """Stable per alarm: a hash of its AlarmArn."""
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    generator_url: str


def parse_alarm(envelope: Envelope) -> Alarm | None:
    """The CloudWatch alarm in a notification; None if the Message is something else.

    A Message that is JSON with AlarmName and NewStateValue is an alarm: if the rest is
    wrong it is a 422, not silently ignored.
    """
    try:
        data = json.loads(envelope.message)
    except (RecursionError, ValueError):
        return None
    if not isinstance(data, dict) or "AlarmName" not in data or "NewStateValue" not in data:
        return None
    try:
        payload.check_storable(envelope.message, data, what="Message")
    except errors.IntakeError as exc:
        raise _schema(str(exc)) from None
    name = data["AlarmName"]
    if not isinstance(name, str) or not 0 < len(name) <= 255:
        raise _schema(f"Message.AlarmName must be a string of 1-255 characters, got {_show(name)}")
    state = data["NewStateValue"]
    if state not in STATES:
        raise _schema(
            f"Message.NewStateValue must be one of {', '.join(STATES)}, got {_show(state)}"
        )
    changed = data.get("StateChangeTime")
    if not isinstance(changed, str):
        raise _schema(f"Message.StateChangeTime must be a time string, got {_show(changed)}")
    try:
        changed_at = parse_time(changed)
    except ValueError:
        raise _schema(f"Message.StateChangeTime {_show(changed)} is not an ISO 8601 time") from None
    arn = _text(data, "AlarmArn")
    arn_parts = arn.split(":") if arn.startswith("arn:") else []
    region = arn_parts[3] if len(arn_parts) > 5 else ""
    account = _text(data, "AWSAccountId") or (arn_parts[4] if len(arn_parts) > 5 else "")
    labels = {"alertname": name}
    for label, value in (("region", region), ("account", account)):
        if value:
            labels[label] = value[:MAX_VALUE_LEN]
    trigger = data.get("Trigger")
    if isinstance(trigger, dict):
        _trigger_labels(trigger, labels)
    identity = arn or "\n".join((account, _text(data, "Region"), name))
    annotations = {
        "description": _text(data, "AlarmDescription"),
        "reason": _text(data, "NewStateReason"),
        "alarm_arn": arn,
        "topic_arn": envelope.topic_arn,
        "old_state": _text(data, "OldStateValue"),
        "state_change_time": changed,
        "message_id": envelope.message_id,
    }
    return Alarm(
        name=name,
        state=state,
        old_state=annotations["old_state"],
        changed_at=changed_at,
        fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16],
        labels=labels,
        annotations={k: v[:MAX_VALUE_LEN] for k, v in annotations.items() if v},
        generator_url=_console_url(arn_parts, name),
    )


def _trigger_labels(trigger: Mapping[str, Any], labels: dict[str, str]) -> None:
    """namespace, metric and one label per dimension. A metric-math alarm has no metric of
    its own: the first MetricStat gives namespace and metric, all of them the dimensions."""
    namespace, metric = _text(trigger, "Namespace"), _text(trigger, "MetricName")
    dimensions: list[Any] = []
    if isinstance(trigger.get("Dimensions"), list):
        dimensions.extend(trigger["Dimensions"])
    metrics = trigger.get("Metrics")
    for item in metrics if isinstance(metrics, list) else ():
        stat = item.get("MetricStat") if isinstance(item, dict) else None
        found = stat.get("Metric") if isinstance(stat, dict) else None
        if not isinstance(found, dict):
            continue
        if not metric:
            namespace, metric = _text(found, "Namespace"), _text(found, "MetricName")
        if isinstance(found.get("Dimensions"), list):
            dimensions.extend(found["Dimensions"])
    if namespace:
        labels["namespace"] = namespace[:MAX_VALUE_LEN]
    if metric:
        labels["metric"] = metric[:MAX_VALUE_LEN]
    for d in dimensions:
        if len(labels) >= MAX_LABELS:
            break
        if not isinstance(d, dict):
            continue
        name, value = d.get("name", d.get("Name")), d.get("value", d.get("Value"))
        if not isinstance(name, str) or not isinstance(value, str) or not name:
            continue
        label = dimension_label(name)
        if label in _RESERVED_LABELS:
            label = f"dimension_{label}"
        if label not in labels:  # the first of two dimensions that map alike wins
            labels[label] = value[:MAX_VALUE_LEN]


def dimension_label(name: str) -> str:
    """A CloudWatch dimension name as a label name: characters outside [a-zA-Z0-9_] become
    `_`, a leading digit gets a `_` prefix, at most 128 characters (`Queue.Name` →
    `Queue_Name`, `5xx` → `_5xx`)."""
    label = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    if label[0].isdigit():
        label = "_" + label
    return label[:128]


def _console_url(arn_parts: list[str], name: str) -> str:
    if len(arn_parts) < 4 or not re.fullmatch(r"[a-z0-9-]{1,32}", arn_parts[3]):
        return ""
    partition, region = arn_parts[1], arn_parts[3]
    host = "console.amazonaws.cn" if partition == "aws-cn" else "console.aws.amazon.com"
    alarm = urllib.parse.quote(name, safe="")
    return f"https://{host}/cloudwatch/home?region={region}#alarmsV2:alarm/{alarm}"


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def to_alert(alarm: Alarm, *, starts_at: dt.datetime, received_at: dt.datetime) -> Alert:
    """The Alert of an ALARM (firing) or OK (resolved) transition."""
    status: Status = "firing" if alarm.state == ALARM else "resolved"
    return Alert(
        source=SOURCE,
        name=alarm.name,
        status=status,
        labels=alarm.labels,
        annotations=alarm.annotations,
        starts_at=starts_at,
        ends_at=alarm.changed_at if status == "resolved" else None,
        fingerprint=alarm.fingerprint,
        generator_url=alarm.generator_url,
        received_at=received_at,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class AlarmState:
    state: str
    changed_at: dt.datetime
    firing_since: dt.datetime | None
    """StateChangeTime of the ALARM that began the episode not yet ended by an OK."""


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """What one alarm notification means for the engine."""

    status: Literal["firing", "resolved", "ignored"]
    starts_at: dt.datetime
    """The occurrence: an OK carries the starts_at of the ALARM it ends, if known."""
    note: str = ""
    """Why it is ignored (`stale`, `insufficient_data`), or `episode_unknown` for an OK
    whose ALARM this process did not see (it resolves nothing)."""


class AlarmTracker:
    """The last transition of each alarm (bounded, least recently changed forgotten first).

    CloudWatch's OK notification does not say when the ALARM it ends began, but the
    engine links a resolved alert to its firing one by (fingerprint, starts_at): this is
    where that time is kept. It also recognizes a notification older than a transition
    already seen (SNS does not keep order), which must not act.
    """

    def __init__(self, max_entries: int) -> None:
        self._last: collections.OrderedDict[str, AlarmState] = collections.OrderedDict()
        self._max = max_entries
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._last)

    def get(self, fingerprint: str) -> AlarmState | None:
        return self._last.get(fingerprint)

    def restore(self, fingerprint: str, state: AlarmState) -> None:
        """An alarm's last transition as an earlier run saw it (oldest restored first)."""
        self._last[fingerprint] = state
        self._last.move_to_end(fingerprint)
        while len(self._last) > self._max:
            self._last.popitem(last=False)

    def advance(self, alarm: Alarm) -> tuple[Transition, Callable[[], None]]:
        """Record a transition; returns what it means and how to undo it (if the alert
        could not be journaled, so that the sender's retry sees the same state)."""
        key, t = alarm.fingerprint, alarm.changed_at
        prev = self._last.get(key)
        if prev is not None and t < prev.changed_at:
            return Transition("ignored", t, "stale"), _nothing
        since = prev.firing_since if prev is not None else None
        if alarm.state == ALARM:
            # ALARM → INSUFFICIENT_DATA → ALARM is one episode: missing data (often the
            # remediated service restarting) is not a recovery.
            new = AlarmState(ALARM, t, since or t)
            transition = Transition("firing", since or t)
        elif alarm.state == OK:
            new = AlarmState(OK, t, None)
            transition = Transition("resolved", since or t, "" if since else "episode_unknown")
        else:
            new = AlarmState(INSUFFICIENT_DATA, t, since)
            transition = Transition("ignored", since or t, "insufficient_data")
        self._last[key] = new
        self._last.move_to_end(key)
        while len(self._last) > self._max:
            self._last.popitem(last=False)

        def undo() -> None:
            if self._last.get(key) is new:
                if prev is None:
                    del self._last[key]
                else:
                    self._last[key] = prev

        return transition, undo


def _nothing() -> None:
    return None


# -- journal ------------------------------------------------------------------------


def journal_payload(envelope: Envelope, alert: Alert) -> bytes:
    """What the journal keeps: the verified message and the occurrence it was given (an
    OK's starts_at comes from in-memory state a restart would not have)."""
    return json.dumps({"sns": envelope.doc, "starts_at": alert.starts_iso}).encode()


def replay(payload: bytes, received_at: dt.datetime) -> list[Alert]:
    """The alerts of a journaled payload; trusts it (it was verified before it was written)."""
    data = json.loads(payload)
    alarm = parse_alarm(_envelope(data["sns"]))
    if alarm is None or alarm.state == INSUFFICIENT_DATA:
        return []
    return [to_alert(alarm, starts_at=parse_time(data["starts_at"]), received_at=received_at)]


def sample(body: bytes, *, received_at: dt.datetime) -> list[Alert]:
    """The alert of a notification body for `remediator simulate`: no signature or
    freshness check, and an OK is its own occurrence (no earlier ALARM is known)."""
    alarm = parse_alarm(_envelope(payload.load_bytes(body)))
    if alarm is None or alarm.state == INSUFFICIENT_DATA:
        return []
    return [to_alert(alarm, starts_at=alarm.changed_at, received_at=received_at)]


def _schema(message: str) -> errors.IntakeError:
    return errors.IntakeError(message, status=422)


def _show(v: Any) -> str:
    r = repr(v) if not isinstance(v, Mapping) else "an object"
    return r if len(r) <= 60 else r[:57] + "..."
