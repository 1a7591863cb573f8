"""Metric definitions, on a registry the caller injects (one per app, so tests isolate).

Label sets are bounded: rule names, action types, outcomes and reasons come from
config and code, never from alert label values or fingerprints.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from remediator import __version__

PREFIX = "remediator"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.webhook_requests = Counter(
            f"{PREFIX}_webhook_requests", "Webhook requests by source and HTTP status code.",
            ["source", "code"], registry=r,
        )  # fmt: skip
        self.alerts_received = Counter(
            f"{PREFIX}_alerts_received", "Alerts accepted into the journal.",
            ["source", "status"], registry=r,
        )  # fmt: skip
        self.duplicates = Counter(
            f"{PREFIX}_duplicates", "Re-deliveries of an occurrence that already has a decision.",
            ["source"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            f"{PREFIX}_decisions", "Recorded decisions by rule, outcome and reason.",
            ["rule", "outcome", "reason"], registry=r,
        )  # fmt: skip
        self.actions = Counter(
            f"{PREFIX}_actions", "Actions run, by rule, action type and result.",
            ["rule", "action", "result"], registry=r,
        )  # fmt: skip
        self.action_duration = Histogram(
            f"{PREFIX}_action_duration_seconds", "Time an action took, retries included.",
            ["action"], registry=r,
            buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )  # fmt: skip
        self.journal_backlog = Gauge(
            f"{PREFIX}_journal_backlog", "Journaled alerts not yet decided.", registry=r
        )
        self.inflight_actions = Gauge(
            f"{PREFIX}_inflight_actions", "Actions running or waiting for a slot.", registry=r
        )
        self.circuit_open = Gauge(
            f"{PREFIX}_circuit_open", "Targets whose circuit breaker is open, per rule.",
            ["rule"], registry=r,
        )  # fmt: skip
        self.verified = Counter(
            f"{PREFIX}_remediation_verified", "Verification of attempts: effective or ineffective.",
            ["rule", "result"], registry=r,
        )  # fmt: skip
        self.escalations = Counter(
            f"{PREFIX}_escalations", "Escalations run, by rule and result.",
            ["rule", "result"], registry=r,
        )  # fmt: skip
        self.rules_loaded = Gauge(f"{PREFIX}_rules_loaded", "Rules currently loaded.", registry=r)
        self.reload_ok = Gauge(
            f"{PREFIX}_config_last_reload_successful",
            "1 if the last config/rules reload succeeded, else 0.", registry=r,
        )  # fmt: skip
        self.reload_ts = Gauge(
            f"{PREFIX}_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful reload.", registry=r,
        )  # fmt: skip
        self.bad_input = Counter(
            f"{PREFIX}_rejected_inputs", "Rejected webhook bodies, by source and kind.",
            ["source", "kind"], registry=r,
        )  # fmt: skip
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Always 1; the version as a label.", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.paused = Gauge(f"{PREFIX}_paused", "1 while all actions are paused.", registry=r)
        self.rule_paused = Gauge(
            f"{PREFIX}_rule_paused", "1 while a rule's actions are paused on their own.",
            ["rule"], registry=r,
        )  # fmt: skip
        self.remediations = Gauge(
            f"{PREFIX}_remediations_active",
            "Remediations under way: acting, verifying, waiting to step up, escalating.",
            registry=r,
        )  # fmt: skip
        self.approvals = Counter(
            f"{PREFIX}_approvals", "Approval requests and how they ended: requested, approved, "
            "rejected, expired, resolved, refused (not an approver).",
            ["rule", "result"], registry=r,
        )  # fmt: skip
        self.held = Gauge(
            f"{PREFIX}_held_alerts", "Alerts held until they have fired for their rule's `for`.",
            registry=r,
        )  # fmt: skip
        self.backend_up = Gauge(
            f"{PREFIX}_backend_up", "1 while a backend the daemon needs is usable (journal, "
            "database writer, each configured action family), else 0; /readyz says why.",
            ["backend"], registry=r,
        )  # fmt: skip
        self._http(r)
        self._sns(r)
        self._silences(r)

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once per label set: labels() takes a lock
        and builds tuples on every call, and intake counts per request and per alert.
        Only for metrics whose children are never removed."""
        key = (id(metric), values)  # the metric lives as long as this object
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def _http(self, r: CollectorRegistry) -> None:
        """Metrics of the HTTP server itself (web/server.py, web/middleware.py)."""
        self.http_connections = Gauge(
            f"{PREFIX}_http_connections", "HTTP connections open now.", registry=r
        )
        self.http_connections_closed = Counter(
            f"{PREFIX}_http_connections_closed",
            "Connections refused or closed by a limit: max_connections, "
            "max_connections_per_client (503), header_timeout (408).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.fd_exhausted = Counter(
            f"{PREFIX}_fd_exhausted",
            "Times the process ran out of file descriptors (accept() failing with EMFILE).",
            registry=r,
        )  # fmt: skip
        self.http_errors = Counter(
            f"{PREFIX}_http_errors",
            "Requests answered 500 because of a bug (each also logged once with its "
            "request id), by route.", ["route"], registry=r,
        )  # fmt: skip

    def _sns(self, r: CollectorRegistry) -> None:
        """Metrics of the SNS intake."""
        self.sns_messages = Counter(
            f"{PREFIX}_sns_messages",
            "SNS requests by message type and result: verified, bad_signature, "
            "topic_not_allowed, replay, duplicate, malformed, too_large, cert_unavailable.",
            ["type", "result"], registry=r,
        )  # fmt: skip
        self.sns_notifications = Counter(
            f"{PREFIX}_sns_notifications",
            "Verified SNS notifications by CloudWatch alarm state (ALARM, OK, "
            "INSUFFICIENT_DATA) or stale (older than a transition already seen), not_alarm.",
            ["state"], registry=r,
        )  # fmt: skip
        self.sns_subscriptions = Counter(
            f"{PREFIX}_sns_subscriptions",
            "Subscription events: confirmed, confirm_failed, left_unconfirmed, unsubscribed.",
            ["event"], registry=r,
        )  # fmt: skip
        self.sns_cert_fetches = Counter(
            f"{PREFIX}_sns_cert_fetches",
            "Signing certificate downloads by result (ok, error); cached ones are not counted.",
            ["result"], registry=r,
        )  # fmt: skip

    def _silences(self, r: CollectorRegistry) -> None:
        """Metrics of the silence checks."""
        self.silence_checks = Counter(
            f"{PREFIX}_silence_checks", "Silence checks before acting, by result (silenced, "
            "not_silenced, error: Alertmanager not asked, unreadable: a silence that cannot "
            "be evaluated could cover the alert).", ["result"], registry=r,
        )  # fmt: skip
        self.silences_unreadable = Gauge(
            f"{PREFIX}_silences_unreadable", "Active or pending silences in the last list "
            "from Alertmanager that cannot be fully evaluated (they fail closed).",
            registry=r,
        )  # fmt: skip
        self.silences_managed = Counter(
            f"{PREFIX}_silences", "Silences remediator created or expired itself "
            "(silence_while_remediating), by operation and result.",
            ["operation", "result"], registry=r,
        )  # fmt: skip
