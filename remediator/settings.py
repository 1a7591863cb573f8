"""Config: one YAML file + environment (for secrets) + CLI flags → frozen dataclasses.

Precedence: CLI flags override the file; the file overrides defaults. Secrets are never
in the file: the file names environment variables (`*_env` keys) that hold them.
Every error is `path: message`, `path` being the dotted config key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from remediator import durations, errors
from remediator.matching import matchers
from remediator.matching.matchers import Matcher


@dataclasses.dataclass(frozen=True, slots=True)
class Auth:
    webhook_bearer_token: str | None = None
    """Bearer token Alertmanager must send (its `http_config.authorization`); None: open."""
    webhook_basic_user: str | None = None
    webhook_basic_password: str | None = None
    """Basic auth alternative (`http_config.basic_auth`); both or neither."""
    admin_token: str | None = None
    """Bearer token for pause/resume/reload; None refuses them over HTTP (use SIGHUP)."""
    read_token: str | None = None
    """Bearer token for reading what the daemon knows (audit, rules, console). As soon as
    this or the admin token is set, reads need one of the two; with neither set, only
    loopback clients may read (the TCP peer's address: X-Forwarded-For is never trusted)."""

    @property
    def reads_need_token(self) -> bool:
        return self.read_token is not None or self.admin_token is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Intake:
    max_body_bytes: int = 1 << 20
    """Largest webhook body accepted (413 above). Alertmanager groups stay far below 1 MiB."""
    max_alerts_per_request: int = 1000
    """More alerts than this in one body is a 413: a bounded unit of journal work."""
    backlog_limit: int = 10000
    """Alerts journaled and not yet decided before answering 503; bounds memory and
    recovery time. Alerts held for a rule's `for` do not count: they have their own bound."""
    max_held: int = 50_000
    """Alerts held at once waiting for a rule's `for` (about 1 KiB each). Past it a new one
    is `skipped/held_full` (counted, and decided again when Alertmanager re-sends it):
    a storm of young alerts never blocks other alerts or resolves from being accepted."""


@dataclasses.dataclass(frozen=True, slots=True)
class Http:
    """The HTTP server's own limits: what a slow, broken or hostile client may hold.

    The SNS endpoint is meant to face the internet, so every one of these is bounded by
    default; none of them touches a well-behaved sender (Alertmanager, SNS).
    """

    header_timeout: float = 10.0
    """Seconds from a connection's start (or the first byte of its next request) until the
    request's headers are complete; then 408 and the connection is closed (slowloris)."""
    body_timeout: float = 30.0
    """Seconds a webhook body may take to arrive once its headers are in; then 408."""
    keepalive_timeout: float = 60.0
    """Seconds an idle keep-alive connection stays open (aiohttp's default is an hour).
    Longer than the 30-90 s idle timeouts of Go and Python clients, so they close first."""
    max_connections: int = 1000
    """Open connections at once; a new one past it gets 503 and is closed. Never more than
    the process's file-descriptor limit allows (`RLIMIT_NOFILE` less a reserve for the
    database and outgoing clients): the daemon keeps working when a flood arrives."""
    max_connections_per_client: int = 100
    """Open connections from one client address: one host cannot take every slot."""
    sns_rate_per_client: float = 100.0
    """Requests per second one client address may make to the unauthenticated
    `/webhook/sns` (a token bucket); past it, 503 with Retry-After, which SNS retries."""
    sns_burst_per_client: int = 1000
    """Requests one client may make to `/webhook/sns` in a burst before the rate applies:
    room for a storm of a thousand alarms delivered at once from one SNS host."""
    max_tracked_clients: int = 10_000
    """Client addresses whose SNS request budget is remembered (least recent forgotten)."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Networks of the reverse proxies (an ingress, a load balancer) in front of the
    daemon. A request from one of them is counted against the client `X-Forwarded-For`
    names (its rightmost address outside these networks) for the SNS rate, and their
    connections skip `max_connections_per_client` (one proxy carries every client).
    Empty: the TCP peer is the client and the header is ignored (it can be forged)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Budgets:
    """Global limits: the blast radius when many things break at once."""

    window: float = 3600.0
    """Seconds over which the two per-window budgets count."""
    max_actions_per_window: int = 30
    """Actions (all rules, all targets) per window before `budget_exhausted`."""
    max_targets_per_window: int = 10
    """Distinct targets acted on per window: a storm touching everything stops here."""
    max_concurrent_actions: int = 4
    """Actions running at once; the rest wait for a slot."""
    action_timeout: float = 60.0
    """Seconds an action has, retries included, before it is `failed` with `timeout`."""
    max_escalations_per_window: int = 20
    """Escalations sent (all rules) per window; past it they are recorded as suppressed and
    counted, so a storm pages a human a bounded number of times, not once per alert."""


@dataclasses.dataclass(frozen=True, slots=True)
class Blackout:
    """A window in which nothing runs (deploy freeze, maintenance): `skipped/blackout`."""

    name: str
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    """Absolute window [start, end); or a weekly one with days/from/to."""
    days: tuple[int, ...] = ()
    """Weekdays (0 = Monday) of a weekly window, in UTC."""
    daily_from: dt.time | None = None
    daily_to: dt.time | None = None
    matchers: tuple[Matcher, ...] = ()
    """Only alerts matching all of these are blacked out (default: all alerts)."""
    rules: tuple[str, ...] = ()
    """Only these rules are blacked out (default: all rules)."""

    def active(self, now: dt.datetime) -> bool:
        """Absolute: start <= now < end. Weekly: on `days`, between from and to (UTC).

        A window that crosses midnight belongs to the day it starts: `days: [fri]`,
        from 22:00 to 06:00 covers Friday night into Saturday morning.
        """
        if self.start is not None and self.end is not None:
            return self.start <= now < self.end
        if self.daily_from is None or self.daily_to is None:
            return now.weekday() in self.days
        t = now.time()
        day = now.weekday()
        if self.daily_from <= self.daily_to:
            inside = self.daily_from <= t < self.daily_to
        elif t >= self.daily_from:
            inside = True
        else:
            inside = t < self.daily_to
            day = (day - 1) % 7  # the early-morning part of the previous day's window
        return inside and (not self.days or day in self.days)


# Region-shaped on purpose: a looser `sns\.[a-z0-9-]+\.amazonaws\.com` also admits S3's
# virtual-hosted names for a bucket called `sns` (sns.s3.amazonaws.com), whose owner could
# serve a certificate of their own.
SNS_CERT_HOST_PATTERN = r"^sns\.[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\.amazonaws\.com(\.cn)?$"
SNS_CERT_PATH_PATTERN = r"^/SimpleNotificationService-[0-9a-f]+\.pem$"


@dataclasses.dataclass(frozen=True, slots=True)
class Sns:
    """SNS intake (`POST /webhook/sns`): CloudWatch alarms through an SNS subscription.

    The endpoint is internet-facing and unauthenticated by design; the message signature
    is what authenticates it. See docs/sns.md.
    """

    allowed_topics: tuple[str, ...] = ()
    """TopicArns accepted (exact, or `fnmatch` patterns such as `arn:aws:sns:*:123456789012:*`).
    Empty (the default) refuses every message with 403: the endpoint is closed until topics
    are listed. Only these topics get their subscriptions confirmed."""
    max_age: float = 3600.0
    """Seconds a message's `Timestamp` may lie in the past before it is refused as a replay.
    SNS retries an HTTP/S delivery for at most 3600 s, so one hour loses no genuine retry."""
    cert_host_pattern: re.Pattern[str] = re.compile(SNS_CERT_HOST_PATTERN)
    """Hosts `SigningCertURL` and `SubscribeURL` may name (the whole host must match; https
    only). Widen it only for tests or a private SNS-compatible service."""
    cert_path_pattern: re.Pattern[str] = re.compile(SNS_CERT_PATH_PATTERN)
    """Paths `SigningCertURL` may name: bounds the URLs a forged message can make us fetch."""
    cert_ports: tuple[int, ...] | None = (443,)
    """Ports a SigningCertURL/SubscribeURL may name (none named = 443). None (`any`): no
    restriction — for a test server or a private service only."""
    ca_file: Path | None = None
    """PEM bundle that *replaces* the system trust store for the certificate fetch and the
    subscription confirmation. Test-only (a loopback CA) or a private SNS-compatible
    service; leave unset against AWS."""
    confirm_subscriptions: bool = True
    """GET `SubscribeURL` for a verified confirmation of an allowed topic. False: log it and
    leave confirming to a human (console or `aws sns confirm-subscription`)."""
    timeout: float = 5.0
    """Seconds for one outgoing call (certificate fetch, subscription confirmation)."""
    dedup_max_entries: int = 10_000
    """MessageIds remembered (each for `max_age`) to drop SNS's at-least-once re-deliveries,
    kept in the journal's database so a re-delivery after a restart is still a duplicate.
    Past the bound the oldest are forgotten; occurrence dedup still stops a second action."""
    max_state_change_skew: float = 300.0
    """Seconds an alarm's StateChangeTime may lie after the message's signed Timestamp. A
    transition cannot happen after SNS published it: one far in the future would make
    every later notification of that alarm look stale, so it is refused (422)."""


@dataclasses.dataclass(frozen=True, slots=True)
class AlertmanagerApi:
    """Alertmanager's API v2, asked about silences before acting."""

    urls: tuple[str, ...] = ()
    """Base URLs (e.g. http://alertmanager:9093), tried in turn (an HA pair shares
    silences through gossip, so any one answers for both). Empty: no silence checks."""
    bearer_token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None
    """Credentials for Alertmanager's `http_config` (secrets come from the environment)."""
    timeout: float = 2.0
    """Seconds per request. Short: a silence check sits in front of every action."""
    cache_ttl: float = 5.0
    """Seconds a fetched silence list is reused. Longer means fewer requests in a storm
    and a longer delay before a new silence is seen; a few seconds is the design's
    trade-off."""
    on_error: str = "fail_closed"
    """`fail_closed`: when Alertmanager cannot be asked, do not act (reason
    `silence_check_failed`); `fail_open`: act as if nothing were silenced."""

    @property
    def enabled(self) -> bool:
        return bool(self.urls)


@dataclasses.dataclass(frozen=True, slots=True)
class SlackApp:
    """The Slack app that asks for approvals: its bot posts, its buttons call back."""

    bot_token: str | None = None
    """Bot token (xoxb-…, from `bot_token_env`): chat:write (and usergroups:read when a
    rule names a user group). None: no Slack messages."""
    signing_secret: str | None = None
    """Signing secret (from `signing_secret_env`): every `POST /slack/interactions` must be
    signed with it. None: the endpoint refuses everything."""
    channel: str = ""
    """Channel of approval requests when a rule names none."""
    api_url: str = "https://slack.com/api/"
    """Slack's Web API; another base only for tests."""
    timeout: float = 5.0
    """Seconds per Web API call."""

    @property
    def enabled(self) -> bool:
        return self.bot_token is not None and self.signing_secret is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Approvals:
    slack: SlackApp = SlackApp()
    tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """API approvers: name → token (each from the environment variable the config names).
    A rule's `approval.approvers` lists the names allowed to decide for it."""


@dataclasses.dataclass(frozen=True, slots=True)
class RedisBackend:
    """`backend.redis`: the shared journal and limit state of several replicas."""

    url: str | None = None
    """From the environment variable `url_env` names (a URL carries the password)."""
    url_env: str = "REMEDIATOR_REDIS_URL"
    key_prefix: str = "remediator"
    """Every key starts with `PREFIX:`; two deployments may share one Redis."""
    claim_idle: float = 30.0
    """Seconds a replica may go silent (no heartbeat) before another takes over its
    journal entries, held alerts and remediations; also the liveness lease of a replica.
    Shorter: faster take-over after a crash; too short: a stall (GC, CPU starvation) is
    taken for a death."""
    lock_ttl: float = 30.0
    """Seconds a target lock lives without renewal (its holder renews it every third of
    that while it runs); a stalled holder's lock lapses and its fencing token is stale."""
    wait_replicas: int = 0
    """Redis replicas that must have each journal write (`WAIT`) before the 2xx; 0: the
    primary's own persistence (see README, "Several replicas")."""
    timeout: float = 2.0
    """Seconds for one Redis call; a journal write past it answers 503."""
    poll_interval: float = 1.0
    """Seconds between reads of shared state kept in memory (pauses, open circuits)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Backend:
    """`backend`: where the journal and the limit state live."""

    kind: str = "embedded"
    """`embedded` (SQLite + in process, one replica) or `redis` (several replicas)."""
    redis: RedisBackend = RedisBackend()


@dataclasses.dataclass(frozen=True, slots=True)
class PostgresAudit:
    """`audit.postgres`: the audit trail in PostgreSQL, shared by every replica."""

    dsn: str | None = None
    """From the environment variable `dsn_env` names."""
    dsn_env: str = "REMEDIATOR_AUDIT_DSN"
    timeout: float = 5.0
    """Seconds for one statement; past it PostgreSQL counts as down (rows are spooled)."""
    retry_interval: float = 2.0
    """Seconds between attempts to reach PostgreSQL again while it is down."""


@dataclasses.dataclass(frozen=True, slots=True)
class AuditBackend:
    """`audit`: where decisions are recorded."""

    kind: str = "sqlite"
    """`sqlite` (beside the journal) or `postgres`."""
    postgres: PostgresAudit = PostgresAudit()


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 9097
    rules_dir: Path = Path("rules")
    rules_watch_interval: float = 10.0
    """Seconds between looks at the rule files and the config file (path, size, mtime,
    inode of each, links resolved — a Kubernetes ConfigMap update swaps a `..data` link);
    a change that has held still for one interval is reloaded like SIGHUP, all or nothing.
    0 turns it off (reload with SIGHUP or `POST /-/reload`). Polling costs a few `stat`
    calls per interval and works on every volume type; the price is up to two intervals
    between a change and the reload."""
    data_dir: Path = Path("data")
    dry_run: bool = True
    """Safe default: decide and record, change nothing. Turn off once rules are trusted."""
    paused: bool = False
    """Start paused (kill switch) unless a pause is already recorded, and pause at a
    reload that turns it on; pause/resume at run time is persisted and outlives restarts
    and reloads whatever this says (turning it off resumes nothing)."""
    external_url: str = ""
    """Where users reach this daemon (e.g. https://remediator.example), for the links in
    escalations; empty: messages name the decision id and API path only."""
    auth: Auth = Auth()
    http: Http = Http()
    intake: Intake = Intake()
    budgets: Budgets = Budgets()
    blackouts: tuple[Blackout, ...] = ()
    matchers_syntax: matchers.Syntax = matchers.Syntax.FALLBACK
    """How matcher strings (rules, blackouts) are read, as the Alertmanager you run reads
    its config: `classic` (<= 0.26), `utf8` (>= 0.27 in UTF-8 strict mode), `fallback`
    (>= 0.27's default: UTF-8, then classic with a warning). See docs/matchers.md."""
    sns: Sns = Sns()
    alertmanager: AlertmanagerApi = AlertmanagerApi()
    approvals: Approvals = Approvals()
    backend: Backend = Backend()
    audit: AuditBackend = AuditBackend()
    workers: int = 4
    """Engine tasks deciding alerts concurrently."""
    journal_fsync: bool = False
    """False: survives a process crash (kill -9). True: also a power loss, at a cost."""
    shutdown_timeout: float = 20.0
    """Seconds SIGTERM waits for in-flight actions before exiting."""
    log_format: str = "auto"
    """`json`, `console`, or `auto` (console on a terminal, JSON otherwise)."""
    log_level: str = "info"
    config_file: Path | None = None
    env_refs: tuple[EnvRef, ...] = ()
    """Every environment variable the config names, set or not (`remediator check`)."""
    secrets: frozenset[str] = frozenset()
    """Every secret value the config made the daemon read from the environment (tokens,
    passwords, DSNs): the HTTP answers replace each one wherever it would appear."""
    sections: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Config of action families (`kubernetes`, `aws`, ...), parsed by the family's own
    registered parser (see `section`); absent when the file has no such section."""

    def section(self, name: str) -> Any:
        """A family's parsed config, or None when the config file does not configure it."""
        return self.sections.get(name)


SectionParser = Callable[["Reader", Mapping[str, str]], Any]
_SECTIONS: dict[str, SectionParser] = {}


def section(name: str) -> Callable[[SectionParser], SectionParser]:
    """Register the parser of a top-level config section owned by an action family.

    The parser gets a Reader on the section (errors name `name.key`) and the environment;
    it returns the family's frozen settings. Adding a family never touches this module.
    """

    def register(parser: SectionParser) -> SectionParser:
        if name in _SECTIONS:
            raise RuntimeError(f"config section {name!r} registered twice")
        _SECTIONS[name] = parser
        return parser

    return register


def load(
    path: Path | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings: defaults ← file ← overrides (CLI flags, already typed)."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise errors.ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise errors.ConfigError(str(path), f"invalid YAML: {exc}") from exc
        except RecursionError:  # PyYAML recurses once per level of nesting
            raise errors.ConfigError(str(path), "invalid YAML: nested too deeply") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise errors.ConfigError(str(path), "top level must be a mapping")
        raw = loaded
    r = Reader(raw, "")
    listen = r.text("listen", "127.0.0.1:9097")
    syntax = matchers.Syntax(
        r.choice("matchers_syntax", "fallback", tuple(s.value for s in matchers.Syntax))
    )
    host, port = parse_listen(listen, "listen")
    settings = Settings(
        listen_host=host,
        listen_port=port,
        rules_dir=Path(r.text("rules_dir", "rules")),
        rules_watch_interval=_watch_interval(r),
        data_dir=Path(r.text("data_dir", "data")),
        dry_run=r.flag("dry_run", True),
        paused=r.flag("paused", False),
        external_url=_external_url(r),
        auth=_auth(r.section("auth"), env),
        http=_http(r.section("http")),
        intake=_intake(r.section("intake")),
        budgets=_budgets(r.section("limits")),
        blackouts=_blackouts(r.items("blackouts"), syntax),
        matchers_syntax=syntax,
        sns=_sns(r.section("sns"), env),
        alertmanager=_alertmanager(r.section("alertmanager"), env),
        approvals=_approvals(r.section("approvals"), env),
        backend=_backend(r.section("backend"), env),
        audit=_audit(r.section("audit"), env),
        workers=r.integer("workers", 4, lo=1, hi=64),
        journal_fsync=r.flag("journal_fsync", False),
        shutdown_timeout=r.duration("shutdown_timeout", 20.0),
        log_format=r.choice("log_format", "auto", ("auto", "json", "console")),
        log_level=r.choice(
            "log_level",
            env.get("REMEDIATOR_LOG_LEVEL", "info").lower(),
            ("debug", "info", "warning", "error"),
        ),
        config_file=path,
        sections=_sections(r, env),
    )
    settings = dataclasses.replace(settings, secrets=frozenset(r.secrets))
    r.finish()
    settings = dataclasses.replace(settings, env_refs=tuple(r.refs))
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    return settings


RESTART_ONLY = (
    "listen_host", "listen_port", "data_dir", "workers", "journal_fsync", "alertmanager",
    "sns", "http", "log_format", "log_level", "config_file", "backend", "audit",
    "rules_watch_interval",
)  # fmt: skip
"""Settings a running daemon cannot take on a reload: sockets, files, tasks, clients."""


def for_reload(running: Settings, fresh: Settings) -> tuple[Settings, list[str]]:
    """`fresh` with what cannot change live kept at its running value, and the names of
    the settings that will only take effect after a restart."""
    pinned = [name for name in RESTART_ONLY if getattr(running, name) != getattr(fresh, name)]
    out = dataclasses.replace(fresh, **{name: getattr(running, name) for name in pinned})
    slots = running.budgets.max_concurrent_actions
    if fresh.budgets.max_concurrent_actions != slots:  # the action slots are sized at start
        pinned.append("limits.max_concurrent_actions")
        out = dataclasses.replace(
            out, budgets=dataclasses.replace(out.budgets, max_concurrent_actions=slots)
        )
    return out, pinned


def _sections(r: Reader, env: Mapping[str, str]) -> dict[str, Any]:
    # Family modules register their sections when they are imported.
    from remediator.actions import registry  # noqa: PLC0415 - actions import settings

    registry.names()
    out = {}
    for name, parser in _SECTIONS.items():
        if r.data.get(name) is not None:
            sub = r.section(name)
            out[name] = parser(sub, env)
            sub.finish()
        else:
            r.seen.add(name)
    return out


def parse_listen(text: str, path: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise errors.ConfigError(path, f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _auth(r: Reader, env: Mapping[str, str]) -> Auth:
    def secret(key: str, default_env: str) -> str | None:
        return r.secret(key, env, default_env=default_env)

    auth = Auth(
        webhook_bearer_token=secret("webhook_bearer_token_env", "REMEDIATOR_WEBHOOK_TOKEN"),
        webhook_basic_user=r.text("webhook_basic_user", "") or None,
        webhook_basic_password=secret("webhook_basic_password_env", "REMEDIATOR_WEBHOOK_PASSWORD"),
        admin_token=secret("admin_token_env", "REMEDIATOR_ADMIN_TOKEN"),
        read_token=secret("read_token_env", "REMEDIATOR_READ_TOKEN"),
    )
    r.finish()
    if (auth.webhook_basic_user is None) != (auth.webhook_basic_password is None):
        raise errors.ConfigError(
            "auth.webhook_basic_user",
            "basic auth needs both the user and the password environment variable set",
        )
    return auth


def _sns(r: Reader, env: Mapping[str, str]) -> Sns:
    topics = []
    for i, topic in enumerate(r.raw_list("allowed_topics")):
        # The account is literal: anyone can create a topic in their own account, subscribe
        # this endpoint, and have AWS genuinely sign what they publish. The topic list is
        # what authenticates, so a wildcard may stand for the region or the name only.
        if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
            raise errors.ConfigError(
                f"{r.prefix}allowed_topics[{i}]",
                "expected a TopicArn arn:aws:sns:REGION:ACCOUNT:NAME with a literal 12-digit "
                f"account (REGION and NAME may use * and ?), got {topic!r}",
            )
        topics.append(topic)

    def pattern(key: str, default: str) -> re.Pattern[str]:
        text = r.text(key, default)
        try:
            return re.compile(text)
        except re.error as exc:
            raise errors.ConfigError(
                f"{r.prefix}{key}", f"not a regular expression: {exc}"
            ) from exc

    ca_text = r.text("ca_file", "")
    ca_file = Path(ca_text) if ca_text else None
    if ca_file is not None and not ca_file.is_file():
        raise errors.ConfigError(f"{r.prefix}ca_file", f"no such file: {ca_text}")
    out = Sns(
        allowed_topics=tuple(topics),
        max_age=r.duration("max_age", 3600.0),
        cert_host_pattern=pattern("cert_host_pattern", SNS_CERT_HOST_PATTERN),
        cert_path_pattern=pattern("cert_path_pattern", SNS_CERT_PATH_PATTERN),
        cert_ports=_ports(r, "cert_ports"),
        ca_file=ca_file,
        confirm_subscriptions=r.flag("confirm_subscriptions", True),
        timeout=r.duration("timeout", 5.0),
        dedup_max_entries=r.integer("dedup_max_entries", 10_000, lo=100, hi=10_000_000),
        max_state_change_skew=r.duration("max_state_change_skew", 300.0),
    )
    r.finish()
    if not 0 < out.max_age <= 7 * 86400:
        raise errors.ConfigError(f"{r.prefix}max_age", "must be longer than 0s, at most 7d")
    if not 0 < out.timeout <= 60:
        raise errors.ConfigError(f"{r.prefix}timeout", "must be longer than 0s, at most 60s")
    if not 0 <= out.max_state_change_skew <= 86400:
        raise errors.ConfigError(f"{r.prefix}max_state_change_skew", "must be in 0s..1d")
    return out


def _networks(r: Reader, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for i, item in enumerate(r.raw_list(key)):
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise errors.ConfigError(
                f"{r.prefix}{key}[{i}]", f"{item!r} is not an address or network (10.0.0.0/8)"
            ) from None
    return tuple(out)


def _http(r: Reader) -> Http:
    out = Http(
        header_timeout=r.duration("header_timeout", 10.0),
        body_timeout=r.duration("body_timeout", 30.0),
        keepalive_timeout=r.duration("keepalive_timeout", 60.0),
        max_connections=r.integer("max_connections", 1000, lo=1, hi=1_000_000),
        max_connections_per_client=r.integer("max_connections_per_client", 100, lo=1, hi=1_000_000),
        sns_rate_per_client=r.number("sns_rate_per_client", 100.0, lo=0.01, hi=1e6),
        sns_burst_per_client=r.integer("sns_burst_per_client", 1000, lo=1, hi=1_000_000),
        max_tracked_clients=r.integer("max_tracked_clients", 10_000, lo=10, hi=10_000_000),
        trusted_proxies=_networks(r, "trusted_proxies"),
    )
    r.finish()
    for key in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if not 0 < getattr(out, key) <= 3600:
            raise errors.ConfigError(f"{r.prefix}{key}", "must be longer than 0s, at most 1h")
    return out


_TOPIC = re.compile(
    r"arn:aws(-cn|-us-gov)?:sns:[a-z0-9*?-]{1,32}:[0-9]{12}:[A-Za-z0-9_*?.-]{1,256}"
)


def _ports(r: Reader, key: str) -> tuple[int, ...] | None:
    raw = r.data.get(key)
    r.seen.add(key)
    if raw is None:
        return (443,)
    if raw == "any":
        return None
    if not isinstance(raw, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in raw
    ):
        raise errors.ConfigError(
            f"{r.prefix}{key}", f"expected a list of ports or `any`, got {raw!r}"
        )
    return tuple(raw)


def _alertmanager(r: Reader, env: Mapping[str, str]) -> AlertmanagerApi:
    urls = []
    for i, u in enumerate(r.raw_list("urls")):
        if not isinstance(u, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", u):
            raise errors.ConfigError(f"{r.prefix}urls[{i}]", f"expected an http(s) URL, got {u!r}")
        urls.append(u.rstrip("/"))
    out = AlertmanagerApi(
        urls=tuple(urls),
        bearer_token=r.secret("bearer_token_env", env),
        basic_user=r.text("basic_user", "") or None,
        basic_password=r.secret("basic_password_env", env),
        timeout=r.duration("timeout", 2.0),
        cache_ttl=r.duration("cache_ttl", 5.0),
        on_error=r.choice("on_error", "fail_closed", ("fail_closed", "fail_open")),
    )
    r.finish()
    if out.timeout <= 0:
        raise errors.ConfigError(f"{r.prefix}timeout", "must be longer than 0s")
    return out


def _approvals(r: Reader, env: Mapping[str, str]) -> Approvals:
    sr = r.section("slack")
    api_url = sr.text("api_url", "https://slack.com/api/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", api_url):
        raise errors.ConfigError(f"{sr.prefix}api_url", f"expected an http(s) URL, got {api_url!r}")
    slack = SlackApp(
        bot_token=sr.secret("bot_token_env", env),
        signing_secret=sr.secret("signing_secret_env", env),
        channel=sr.text("channel", ""),
        api_url=api_url if api_url.endswith("/") else api_url + "/",
        timeout=sr.duration("timeout", 5.0),
    )
    sr.finish()
    tr = r.section("tokens")
    tokens = {}
    for name in list(tr.data):
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", name):
            raise errors.ConfigError(f"{tr.prefix}{name}", "approver names are [a-z0-9_.-]+")
        token = tr.secret(name, env)
        if token is not None:
            tokens[name] = token
    tr.finish()
    r.finish()
    return Approvals(slack=slack, tokens=tokens)


def _backend(r: Reader, env: Mapping[str, str]) -> Backend:
    kind = r.choice("kind", "embedded", ("embedded", "redis"))
    sub = r.section("redis")
    url_env = sub.text("url_env", "REMEDIATOR_REDIS_URL")
    redis = RedisBackend(
        url=sub.secret("url_env", env, default_env="REMEDIATOR_REDIS_URL")
        if kind == "redis"
        else None,
        url_env=url_env,
        key_prefix=sub.text("key_prefix", "remediator"),
        claim_idle=sub.duration("claim_idle", 30.0),
        lock_ttl=sub.duration("lock_ttl", 30.0),
        wait_replicas=sub.integer("wait_replicas", 0, lo=0, hi=16),
        timeout=sub.duration("timeout", 2.0),
        poll_interval=sub.duration("poll_interval", 1.0),
    )
    sub.finish()
    r.finish()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", redis.key_prefix):
        raise errors.ConfigError(
            "backend.redis.key_prefix", "letters, digits, `_`, `.`, `-`, at most 64"
        )
    for key in ("claim_idle", "lock_ttl", "timeout", "poll_interval"):
        if not 0 < getattr(redis, key) <= 3600:
            raise errors.ConfigError(f"backend.redis.{key}", "must be longer than 0s, at most 1h")
    if kind == "redis" and not redis.url:
        raise errors.ConfigError(
            "backend.redis.url_env",
            f"backend.kind is redis: set {url_env} to the Redis URL (redis://host:6379/0)",
        )
    return Backend(kind=kind, redis=redis)


def _audit(r: Reader, env: Mapping[str, str]) -> AuditBackend:
    kind = r.choice("kind", "sqlite", ("sqlite", "postgres"))
    sub = r.section("postgres")
    dsn_env = sub.text("dsn_env", "REMEDIATOR_AUDIT_DSN")
    pg = PostgresAudit(
        dsn=sub.secret("dsn_env", env, default_env="REMEDIATOR_AUDIT_DSN")
        if kind == "postgres"
        else None,
        dsn_env=dsn_env,
        timeout=sub.duration("timeout", 5.0),
        retry_interval=sub.duration("retry_interval", 2.0),
    )
    sub.finish()
    r.finish()
    for key in ("timeout", "retry_interval"):
        if not 0 < getattr(pg, key) <= 600:
            raise errors.ConfigError(f"audit.postgres.{key}", "must be longer than 0s, at most 10m")
    if kind == "postgres" and not pg.dsn:
        raise errors.ConfigError(
            "audit.postgres.dsn_env",
            f"audit.kind is postgres: set {dsn_env} to its DSN (postgresql://user@host/db)",
        )
    return AuditBackend(kind=kind, postgres=pg)


def _external_url(r: Reader) -> str:
    url = r.text("external_url", "")
    if url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise errors.ConfigError("external_url", f"expected an http(s) URL, got {url!r}")
    return url.rstrip("/")


MIN_WATCH_INTERVAL = 1.0
"""Shortest `rules_watch_interval`: more often buys nothing a human would notice."""


def _watch_interval(r: Reader) -> float:
    seconds = r.duration("rules_watch_interval", 10.0)
    if 0 < seconds < MIN_WATCH_INTERVAL or seconds > 86400:
        raise errors.ConfigError(
            "rules_watch_interval", "must be 0 (off) or between 1s and 1d, got "
            f"{r.data['rules_watch_interval']!r}",
        )  # fmt: skip
    return seconds


def _intake(r: Reader) -> Intake:
    out = Intake(
        max_body_bytes=r.integer("max_body_bytes", 1 << 20, lo=1024, hi=64 << 20),
        max_alerts_per_request=r.integer("max_alerts_per_request", 1000, lo=1, hi=100_000),
        backlog_limit=r.integer("backlog_limit", 10000, lo=10, hi=10_000_000),
        max_held=r.integer("max_held", 50_000, lo=0, hi=10_000_000),
    )
    r.finish()
    return out


def _budgets(r: Reader) -> Budgets:
    out = Budgets(
        window=r.duration("window", 3600.0),
        max_actions_per_window=r.integer("max_actions_per_window", 30, lo=0, hi=10**9),
        max_targets_per_window=r.integer("max_targets_per_window", 10, lo=0, hi=10**9),
        max_concurrent_actions=r.integer("max_concurrent_actions", 4, lo=1, hi=1024),
        action_timeout=r.duration("action_timeout", 60.0),
        max_escalations_per_window=r.integer("max_escalations_per_window", 20, lo=0, hi=10**6),
    )
    r.finish()
    if out.window <= 0:
        raise errors.ConfigError("limits.window", "must be longer than 0s")
    if out.action_timeout <= 0:
        raise errors.ConfigError("limits.action_timeout", "must be longer than 0s")
    return out


_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def _blackouts(items: list[Reader], syntax: matchers.Syntax) -> tuple[Blackout, ...]:
    out = []
    for r in items:
        name = r.text("name", "")
        if not name:
            raise errors.ConfigError(f"{r.prefix}name", "every blackout needs a name")
        start, end = r.time("start"), r.time("end")
        days_raw = r.raw_list("days")
        days = []
        for i, d in enumerate(days_raw):
            if not isinstance(d, str) or d.lower()[:3] not in _DAYS:
                raise errors.ConfigError(f"{r.prefix}days[{i}]", f"not a weekday: {d!r}")
            days.append(_DAYS[d.lower()[:3]])
        daily_from, daily_to = r.clock("from"), r.clock("to")
        ms: list[Matcher] = []
        for i, text in enumerate(r.raw_list("matchers")):
            try:
                ms.extend(matchers.parse_matchers(str(text), syntax).matchers)
            except ValueError as exc:
                raise errors.ConfigError(f"{r.prefix}matchers[{i}]", str(exc)) from exc
        rules = tuple(str(x) for x in r.raw_list("rules"))
        r.finish()
        absolute = start is not None or end is not None
        if absolute and (start is None or end is None or end <= start):
            raise errors.ConfigError(f"{r.prefix}end", "needs both start and end, end after start")
        if absolute == bool(days or daily_from or daily_to):
            raise errors.ConfigError(
                r.prefix.rstrip("."),
                "give either start/end (absolute) or days and/or from/to (weekly, UTC)",
            )
        if (daily_from is None) != (daily_to is None):
            raise errors.ConfigError(f"{r.prefix}to", "from and to go together")
        if daily_from is not None and daily_from == daily_to:
            raise errors.ConfigError(
                f"{r.prefix}to", "from equals to: an empty window (leave both out for whole days)"
            )
        out.append(Blackout(name, start, end, tuple(days), daily_from, daily_to, tuple(ms), rules))
    return tuple(out)


@dataclasses.dataclass(frozen=True, slots=True)
class EnvRef:
    """An environment variable the config names (`*_env`), for `remediator check`."""

    path: str
    """The dotted config key, e.g. `postgres.connections.main.dsn_env`."""
    name: str
    named: bool
    """Written in the file (False: a default name such as REMEDIATOR_ADMIN_TOKEN)."""
    set: bool
    weak: bool = False
    """Set, but shorter than MIN_SECRET characters: guessable, and too short to be
    redacted from answers without mangling them (a warning at start)."""


MIN_SECRET = 8
"""Characters below which a secret is not redacted from answers (and is warned about)."""


class Reader:
    """Typed access to one config mapping; remembers keys read to reject unknown ones.

    Every error is a ConfigError naming the dotted path of the key.
    """

    def __init__(
        self,
        data: Any,
        prefix: str,
        refs: list[EnvRef] | None = None,
        secrets: set[str] | None = None,
    ) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise errors.ConfigError(prefix.rstrip(".") or "<top>", "must be a mapping")
        self.data: dict[str, Any] = data
        self.prefix = prefix
        self.seen: set[str] = set()
        self.refs: list[EnvRef] = [] if refs is None else refs
        """Every environment variable the config names (shared by the nested readers)."""
        self.secrets: set[str] = set() if secrets is None else secrets
        """Secret values read through `secret` by this reader and every one under it."""

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen, key=str)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise errors.ConfigError(f"{self.prefix}{unknown[0]}", f"unknown key; known: {known}")

    def section(self, key: str) -> Reader:
        return Reader(self._get(key), f"{self.prefix}{key}.", self.refs, self.secrets)

    def items(self, key: str) -> list[Reader]:
        return [
            Reader(item, f"{self.prefix}{key}[{i}].", self.refs, self.secrets)
            for i, item in enumerate(self.raw_list(key))
        ]

    def raw_list(self, key: str) -> list[Any]:
        v = self._get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise errors.ConfigError(f"{self.prefix}{key}", "must be a list")
        return v

    def text(self, key: str, default: str) -> str:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise errors.ConfigError(f"{self.prefix}{key}", f"must be a string, got {v!r}")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise errors.ConfigError(f"{self.prefix}{key}", f"must be true or false, got {v!r}")
        return v

    def integer(self, key: str, default: int, *, lo: int, hi: int) -> int:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise errors.ConfigError(f"{self.prefix}{key}", f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise errors.ConfigError(f"{self.prefix}{key}", f"must be in {lo}..{hi}, got {v}")
        return v

    def number(self, key: str, default: float, *, lo: float, hi: float) -> float:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise errors.ConfigError(f"{self.prefix}{key}", f"must be a number, got {v!r}")
        if not lo <= v <= hi:
            raise errors.ConfigError(f"{self.prefix}{key}", f"must be in {lo:g}..{hi:g}, got {v}")
        return float(v)

    def duration(self, key: str, default: float) -> float:
        v = self._get(key)
        if v is None:
            return default
        try:
            return durations.parse(v)
        except ValueError as exc:
            raise errors.ConfigError(f"{self.prefix}{key}", str(exc)) from exc

    def secret(self, key: str, env: Mapping[str, str], *, default_env: str = "") -> str | None:
        """The value of the environment variable that `key` names (secrets never sit in
        the file); None when the key and default are empty or the variable is unset."""
        name = self.text(key, default_env)
        if name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise errors.ConfigError(
                f"{self.prefix}{key}", f"not an environment variable name: {name!r}"
            )
        value = (env.get(name) or None) if name else None
        weak = value is not None and len(value) < MIN_SECRET
        if name:
            self.refs.append(
                EnvRef(f"{self.prefix}{key}", name, named=key in self.data,
                       set=value is not None, weak=weak)
            )  # fmt: skip
        if value is not None and not weak:
            self.secrets.add(value)
        return value

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        v = self.text(key, default)
        if v not in options:
            raise errors.ConfigError(f"{self.prefix}{key}", f"must be one of {', '.join(options)}")
        return v

    def time(self, key: str) -> dt.datetime | None:
        v = self._get(key)
        if v is None:
            return None
        if isinstance(v, dt.datetime):
            return v if v.tzinfo else v.replace(tzinfo=dt.UTC)
        try:
            t = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
        except ValueError as exc:
            raise errors.ConfigError(
                f"{self.prefix}{key}", f"expected RFC 3339 like 2026-12-20T00:00:00Z, got {v!r}"
            ) from exc
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)

    def clock(self, key: str) -> dt.time | None:
        v = self._get(key)
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            # YAML 1.1 reads 22:00 as a sexagesimal integer (1320); undo that. Its hour
            # has no leading zero, so 1:00..23:59 is 60..1439; anything else is not HH:MM
            # (22:00:00 is 79200, 25:00 1500, -1:00 -60, a bare 9 is 9).
            if not 60 <= v < 24 * 60:
                raise errors.ConfigError(
                    f"{self.prefix}{key}",
                    f"expected HH:MM (UTC), quoted like '22:00'; YAML read a number: {v!r}",
                )
            return dt.time(v // 60, v % 60)
        m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", str(v))
        if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise errors.ConfigError(f"{self.prefix}{key}", f"expected HH:MM (UTC), got {v!r}")
        return dt.time(int(m.group(1)), int(m.group(2)))
