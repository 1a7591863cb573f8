"""Alertmanager webhook (v4) load generator.

Two ways to offer load:

- open loop (``rate`` alerts/s): requests leave on a fixed schedule whatever the server
  does, which is how an alert storm behaves and the only honest way to measure latency;
- closed loop (``rate=None``, "max"): ``connections`` workers each send the next request
  as soon as the previous one is answered, which finds the throughput ceiling.

Either way the run is bounded twice: by ``count`` alerts and by ``duration`` seconds,
after which in-flight requests get at most ``timeout`` seconds to finish.

Every alert carries a fingerprint unique to the run (16 hex chars of a hash of ``run_id``
and a counter: scattered like Alertmanager's, which hash the label set, so whatever is
keyed or indexed by fingerprint is written at random places, as in production) and a
unique ``instance`` label, so the daemon sees no duplicate occurrences and each alert's
decision can be traced back to the moment it was sent.

    python -m bench.loadgen --url URL --rate 500 --per-request 1 --count 5000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import secrets
import sys
import time
from typing import Any

import aiohttp

JSON_HEADERS = {"Content-Type": "application/json"}

#: Placeholders replaced per alert; they never occur in real payload text.
_INSTANCE_MARK = "@@INSTANCE@@"
_FINGERPRINT_MARK = "@@FINGERPRINT@@"
_ALERTS_MARK = '"@@ALERTS@@"'


def rfc3339_utc(moment: datetime.datetime) -> str:
    """Alertmanager's timestamp shape: UTC, millisecond precision, ``Z`` suffix."""
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def alert_dict(*, fingerprint: str, instance: str, starts_at: str) -> dict[str, Any]:
    """One firing alert as Alertmanager puts it in a v4 webhook."""
    return {
        "status": "firing",
        "labels": {"alertname": "BenchAlert", "instance": instance, "namespace": "prod"},
        "annotations": {"summary": "bench"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": fingerprint,
    }


def payload_dict(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """The v4 webhook envelope around ``alerts``, grouped by alertname like Alertmanager."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="BenchAlert"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "remediator",
        "groupLabels": {"alertname": "BenchAlert"},
        "commonLabels": {"alertname": "BenchAlert"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
    }


class PayloadFactory:
    """Builds request bodies for alert numbers of one run.

    The JSON text is rendered once from :func:`payload_dict` with placeholders and then
    filled in by concatenation: ``json.dumps`` per alert would cost the load generator a
    noticeable share of the CPU it shares with the server under test.
    """

    def __init__(self, *, run_id: str, starts_at: str) -> None:
        if len(run_id) != 6 or any(c not in "0123456789abcdef" for c in run_id):
            raise ValueError(f"run_id must be 6 lowercase hex chars, got {run_id!r}")
        self.run_id = run_id
        alert = json.dumps(
            alert_dict(fingerprint=_FINGERPRINT_MARK, instance=_INSTANCE_MARK, starts_at=starts_at),
            separators=(",", ":"),
        )
        self._head, rest = alert.split(_INSTANCE_MARK)
        self._mid, self._tail = rest.split(_FINGERPRINT_MARK)
        envelope_dict = payload_dict([])
        envelope_dict["alerts"] = [_ALERTS_MARK.strip('"')]
        envelope = json.dumps(envelope_dict, separators=(",", ":"))
        self._envelope_head, self._envelope_tail = envelope.split(_ALERTS_MARK)

    def fingerprint(self, number: int) -> str:
        """The fingerprint of alert ``number``: 16 hex chars, unique across runs (64 bits
        of a hash: a collision in a million alerts is about one chance in 10^7)."""
        return hashlib.blake2b(f"{self.run_id}:{number}".encode(), digest_size=8).hexdigest()

    def instance(self, number: int) -> str:
        """The unique ``instance`` label of alert ``number``."""
        return f"i-{self.run_id}-{number}"

    def body(self, numbers: range) -> tuple[bytes, list[str]]:
        """The request body for alerts ``numbers`` and their fingerprints, in order."""
        fingerprints = [self.fingerprint(n) for n in numbers]
        alerts = ",".join(
            self._head + self.instance(n) + self._mid + fp + self._tail
            for n, fp in zip(numbers, fingerprints, strict=True)
        )
        return (self._envelope_head + alerts + self._envelope_tail).encode(), fingerprints


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """What load to offer, and for how long at most."""

    url: str
    #: Offered alerts per second (open loop); ``None`` means closed loop as fast as answered.
    rate: float | None
    #: Alerts per request: 1 is the worst case for intake, 50 is a grouped storm.
    per_request: int = 1
    #: Stop after this many alerts have been sent.
    count: int = 5000
    #: Stop sending after this many seconds even if ``count`` is not reached.
    duration: float = 20.0
    #: Closed loop: concurrent workers. Open loop: bound on requests in flight; when it is
    #: reached the schedule slips, which the result reports as a lower offered rate.
    connections: int = 32
    #: Per-request bound (connect + send + answer), seconds.
    timeout: float = 10.0
    #: 6 hex chars prefixed to every fingerprint; random when not given.
    run_id: str | None = None
    #: Minutes before now put in ``startsAt``: old enough for any default ``for``.
    age_minutes: float = 10.0


@dataclasses.dataclass
class LoadResult:
    """What happened to every request and alert of one run."""

    spec: LoadSpec
    run_id: str
    started_at: float = 0.0
    #: Seconds from the first request sent to the last one answered.
    elapsed: float = 0.0
    #: Seconds spent sending (until count or duration ran out).
    send_elapsed: float = 0.0
    requests: int = 0
    alerts_sent: int = 0
    requests_by_status: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )
    alerts_by_status: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    #: Wall-clock (``time.time()``) moment each alert's request was handed to the client.
    sent_at: dict[str, float] = dataclasses.field(default_factory=dict)
    accepted: set[str] = dataclasses.field(default_factory=set)
    rejected: set[str] = dataclasses.field(default_factory=set)
    #: Transport errors and timeouts: the server may or may not have taken these.
    unknown: set[str] = dataclasses.field(default_factory=set)
    #: Seconds each request took, send to answer read.
    request_latencies: list[float] = dataclasses.field(default_factory=list)

    @property
    def accepted_count(self) -> int:
        return len(self.accepted)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted_count / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def offered_per_s(self) -> float:
        return self.alerts_sent / self.send_elapsed if self.send_elapsed > 0 else 0.0

    @property
    def requests_503(self) -> int:
        return self.requests_by_status.get(503, 0)

    def summary(self) -> dict[str, Any]:
        """Counts and rates, without the per-alert detail."""
        lat = sorted(self.request_latencies)
        return {
            "url": self.spec.url,
            "mode": "closed loop" if self.spec.rate is None else "open loop",
            "rate": "max" if self.spec.rate is None else self.spec.rate,
            "per_request": self.spec.per_request,
            "connections": self.spec.connections,
            "run_id": self.run_id,
            "elapsed_s": round(self.elapsed, 3),
            "requests": self.requests,
            "alerts_sent": self.alerts_sent,
            "offered_alerts_per_s": round(self.offered_per_s, 1),
            "accepted_alerts": self.accepted_count,
            "accepted_alerts_per_s": round(self.accepted_per_s, 1),
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
            "alerts_by_status": {str(k): v for k, v in sorted(self.alerts_by_status.items())},
            "requests_503": self.requests_503,
            "errors": dict(self.errors),
            "request_p50_ms": _ms(percentile(lat, 50)),
            "request_p99_ms": _ms(percentile(lat, 99)),
        }


def percentile(ordered: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list; ``None`` when it is empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class _Run:
    """One load run's shared state: the session, the payloads, the result being filled."""

    def __init__(self, spec: LoadSpec, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.session = session
        run_id = spec.run_id or secrets.token_hex(3)
        starts = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=spec.age_minutes)
        self.payloads = PayloadFactory(run_id=run_id, starts_at=rfc3339_utc(starts))
        self.result = LoadResult(spec=spec, run_id=run_id)
        self.total_requests = math.ceil(spec.count / spec.per_request)
        self.last_answer = 0.0

    def numbers(self, index: int) -> range:
        first = index * self.spec.per_request
        return range(first, min(first + self.spec.per_request, self.spec.count))

    async def send(self, index: int) -> None:
        body, fingerprints = self.payloads.body(self.numbers(index))
        result = self.result
        sent_wall = time.time()
        for fp in fingerprints:
            result.sent_at[fp] = sent_wall
        result.requests += 1
        result.alerts_sent += len(fingerprints)
        began = time.perf_counter()
        try:
            async with self.session.post(self.spec.url, data=body, headers=JSON_HEADERS) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result.errors[type(exc).__name__] += 1
            result.unknown.update(fingerprints)
            self.last_answer = time.perf_counter()
            return
        self.last_answer = time.perf_counter()
        result.request_latencies.append(self.last_answer - began)
        result.requests_by_status[status] += 1
        result.alerts_by_status[status] += len(fingerprints)
        (result.accepted if 200 <= status < 300 else result.rejected).update(fingerprints)


async def _closed_loop(run: _Run, deadline: float) -> None:
    indexes = itertools.count()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            index = next(indexes)
            if index >= run.total_requests:
                return
            await run.send(index)

    await asyncio.gather(*(worker() for _ in range(run.spec.connections)))


async def _open_loop(run: _Run, deadline: float, rate: float) -> float:
    """Dispatch on schedule; return the seconds the schedule spanned (the offered window)."""
    interval = run.spec.per_request / rate
    in_flight = asyncio.Semaphore(run.spec.connections)
    tasks: set[asyncio.Task[None]] = set()

    async def send(index: int) -> None:
        try:
            await run.send(index)
        finally:
            in_flight.release()

    start = time.perf_counter()
    for index in range(run.total_requests):
        due = start + index * interval
        if due >= deadline:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await in_flight.acquire()
        task = asyncio.create_task(send(index), name=f"loadgen-request-{index}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    offered_window = time.perf_counter() - start + interval
    if tasks:
        await asyncio.gather(*tasks)
    return offered_window


async def run_load(spec: LoadSpec) -> LoadResult:
    """Offer ``spec``'s load and return what happened; never raises for server errors."""
    if spec.per_request < 1 or spec.count < 1 or spec.connections < 1:
        raise ValueError("per_request, count and connections must be at least 1")
    if spec.rate is not None and spec.rate <= 0:
        raise ValueError("rate must be positive, or None for closed loop")
    connector = aiohttp.TCPConnector(limit=spec.connections)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        run = _Run(spec, session)
        run.result.started_at = time.time()
        began = time.perf_counter()
        deadline = began + spec.duration
        if spec.rate is None:
            await _closed_loop(run, deadline)
            # Closed loop has no separate send phase: the last answer ends it.
            send_elapsed = time.perf_counter() - began
        else:
            send_elapsed = await _open_loop(run, deadline, spec.rate)
    result = run.result
    result.send_elapsed = send_elapsed
    result.elapsed = max(run.last_answer, began) - began
    return result


def _rate(value: str) -> float | None:
    if value == "max":
        return None
    rate = float(value)
    if rate <= 0:
        raise argparse.ArgumentTypeError("--rate must be positive or 'max'")
    return rate


def _print_summary(summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="POST Alertmanager v4 webhooks at a fixed rate or as fast as answered.",
    )
    parser.add_argument(
        "--url", required=True, help="webhook URL, e.g. http://127.0.0.1:9097/webhook/alertmanager"
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        default=None,
        help="alerts/s offered, or 'max' (default) for closed loop",
    )
    parser.add_argument("--per-request", type=int, default=1, help="alerts per request (default 1)")
    parser.add_argument(
        "--count", type=int, default=5000, help="alerts to send at most (default 5000)"
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds to send at most (default 20)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="concurrent connections (default 32)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        url=args.url,
        rate=args.rate,
        per_request=args.per_request,
        count=args.count,
        duration=args.duration,
        connections=args.connections,
        timeout=args.timeout,
    )
    try:
        result = asyncio.run(run_load(spec))
    except ValueError as exc:
        parser.error(str(exc))
    summary = result.summary()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        _print_summary(summary)
    return 0 if result.accepted_count else 1


if __name__ == "__main__":
    sys.exit(main())
