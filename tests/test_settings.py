"""Config: safe defaults, every mistake named by its dotted key, secrets from the
environment, flags over the file, and blackout windows that open and close on time."""

from __future__ import annotations

import dataclasses
import datetime as dt
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from remediator import errors, settings
from remediator.settings import Blackout, Settings

UTC = dt.UTC


def load_yaml(
    tmp_path: Path,
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from a config file with `text`, and only the environment given."""
    path = tmp_path / "remediator.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return settings.load(path, environ=environ or {}, overrides=overrides)


def config_error(tmp_path: Path, text: str) -> errors.ConfigError:
    with pytest.raises(errors.ConfigError) as caught:
        load_yaml(tmp_path, text)
    return caught.value


def at(weekday: str, hhmm: str) -> dt.datetime:
    """A UTC moment in the week of Monday 2027-01-11: at("sat", "23:00")."""
    day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].index(weekday)
    hour, minute = map(int, hhmm.split(":"))
    return dt.datetime(2027, 1, 11 + day, hour, minute, tzinfo=UTC)


def test_without_a_config_file_it_runs_safely_on_loopback_in_dry_run() -> None:
    s = settings.load(None, environ={})
    assert s.dry_run is True
    assert s.paused is False
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 9097)
    assert (s.rules_dir, s.data_dir) == (Path("rules"), Path("data"))
    assert s.auth == settings.Auth()  # no credentials unless the environment has them
    assert s.intake == settings.Intake(
        max_body_bytes=1 << 20, max_alerts_per_request=1000, backlog_limit=10000
    )
    assert s.budgets == settings.Budgets(
        window=3600.0,
        max_actions_per_window=30,
        max_targets_per_window=10,
        max_concurrent_actions=4,
        action_timeout=60.0,
    )
    assert s.blackouts == ()
    assert s.matchers_syntax == "fallback"  # Alertmanager >= 0.27's default
    assert (s.workers, s.journal_fsync, s.shutdown_timeout) == (4, False, 20.0)
    assert (s.log_format, s.log_level) == ("auto", "info")
    assert s.config_file is None


def test_an_empty_config_file_means_the_defaults(tmp_path: Path) -> None:
    s = load_yaml(tmp_path, "# nothing yet\n")
    assert dataclasses.replace(s, config_file=None) == settings.load(None, environ={})


def test_the_readme_example_config_loads(tmp_path: Path) -> None:
    s = load_yaml(
        tmp_path,
        """
        listen: 0.0.0.0:9097
        rules_dir: /etc/remediator/rules
        rules_watch_interval: 10s
        data_dir: /var/lib/remediator
        dry_run: false
        paused: false
        workers: 4
        journal_fsync: false
        shutdown_timeout: 20s
        log_format: auto
        log_level: info
        auth:
          webhook_bearer_token_env: REMEDIATOR_WEBHOOK_TOKEN
          webhook_basic_user: alertmanager
          webhook_basic_password_env: REMEDIATOR_WEBHOOK_PASSWORD
          admin_token_env: REMEDIATOR_ADMIN_TOKEN
        intake:
          max_body_bytes: 1048576
          max_alerts_per_request: 1000
          backlog_limit: 10000
        limits:
          window: 1h
          max_actions_per_window: 30
          max_targets_per_window: 10
          max_concurrent_actions: 4
          action_timeout: 60s
        blackouts:
          - name: christmas-freeze
            start: 2026-12-20T00:00:00Z
            end: 2027-01-03T00:00:00Z
          - name: weekend-batch
            days: [sat, sun]
            from: "22:00"
            to: "06:00"
            matchers: ['namespace = "batch"']
            rules: [apidown-restart]
        """,
        environ={"REMEDIATOR_WEBHOOK_PASSWORD": "pw"},
    )
    assert (s.listen_host, s.listen_port, s.dry_run) == ("0.0.0.0", 9097, False)
    assert (s.rules_dir, s.data_dir) == (Path("/etc/remediator/rules"), Path("/var/lib/remediator"))
    assert s.rules_watch_interval == 10.0
    assert load_yaml(tmp_path, "rules_watch_interval: 0").rules_watch_interval == 0  # off
    assert (s.auth.webhook_basic_user, s.auth.webhook_basic_password) == ("alertmanager", "pw")
    freeze, batch = s.blackouts
    assert (freeze.start, freeze.end) == (
        dt.datetime(2026, 12, 20, tzinfo=UTC),
        dt.datetime(2027, 1, 3, tzinfo=UTC),
    )
    assert (batch.days, batch.daily_from, batch.daily_to) == ((5, 6), dt.time(22), dt.time(6))
    assert [str(m) for m in batch.matchers] == ['namespace="batch"']
    assert batch.rules == ("apidown-restart",)


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("dryrun: false", "dryrun", "unknown key"),
        ("auth: {admin_token: hunter2}", "auth.admin_token", "unknown key"),
        ("intake: {backlog: 10}", "intake.backlog", "unknown key"),
        ("limits: {max_actions: 3}", "limits.max_actions", "unknown key"),
        ("blackouts: [{name: x, days: [sat], colour: red}]", "blackouts[0].colour", "unknown key"),
        ("workers: '4'", "workers", "must be an integer, got '4'"),
        ("workers: 4.5", "workers", "must be an integer"),
        ("dry_run: 'no'", "dry_run", "must be true or false, got 'no'"),
        ("rules_dir: 3", "rules_dir", "must be a string"),
        ("auth: 3", "auth", "must be a mapping"),
        ("limits: [1]", "limits", "must be a mapping"),
        ("blackouts: {name: x}", "blackouts", "must be a list"),
        ("workers: 0", "workers", "must be in 1..64, got 0"),
        ("intake: {max_body_bytes: 10}", "intake.max_body_bytes", "must be in 1024..67108864"),
        ("intake: {backlog_limit: 1}", "intake.backlog_limit", "must be in 10..10000000"),
        ("limits: {max_concurrent_actions: 0}", "limits.max_concurrent_actions", "must be in"),
        ("listen: localhost", "listen", "expected HOST:PORT, got 'localhost'"),
        ("listen: 127.0.0.1:70000", "listen", "expected HOST:PORT"),
        ("log_format: xml", "log_format", "must be one of auto, json, console"),
        ("log_level: trace", "log_level", "must be one of debug, info, warning, error"),
        ("shutdown_timeout: soon", "shutdown_timeout", "expected a duration like 30s"),
        ("shutdown_timeout: -5", "shutdown_timeout", "must not be negative"),
        ("limits: {window: forever}", "limits.window", "expected a duration"),
        ("limits: {window: 0s}", "limits.window", "must be longer than 0s"),
        ("limits: {action_timeout: 0s}", "limits.action_timeout", "must be longer than 0s"),
        ("blackouts: [{days: [sat]}]", "blackouts[0].name", "every blackout needs a name"),
        ("blackouts: [{name: x, days: [sat, funday]}]", "blackouts[0].days[1]", "funday"),
        ("blackouts: [{name: x, start: 2027-01-01T00:00:00Z}]", "blackouts[0].end", "both"),
        (
            "blackouts: [{name: x, start: 2027-01-02T00:00:00Z, end: 2027-01-01T00:00:00Z}]",
            "blackouts[0].end",
            "end after start",
        ),
        (
            "blackouts: [{name: x, start: next friday, end: 2027-01-01}]",
            "blackouts[0].start",
            "RFC",
        ),
        ("blackouts: [{name: x, from: '25:00', to: '06:00'}]", "blackouts[0].from", "HH:MM"),
        ("blackouts: [{name: x, from: '22:00'}]", "blackouts[0].to", "from and to go together"),
        # Unquoted, YAML 1.1 reads these as sexagesimal integers (79200, 1500, -60): they
        # are no HH:MM either, not 00:00, 01:00 and 23:00.
        ("blackouts: [{name: x, from: 22:00:00, to: '06:00'}]", "blackouts[0].from", "HH:MM"),
        ("blackouts: [{name: x, from: 25:00, to: '06:00'}]", "blackouts[0].from", "HH:MM"),
        ("blackouts: [{name: x, from: '22:00', to: -1:00}]", "blackouts[0].to", "HH:MM"),
        ("blackouts: [{name: x}]", "blackouts[0]", "give either start/end"),
        (
            "blackouts: [{name: x, start: 2027-01-01, end: 2027-01-02, days: [sat]}]",
            "blackouts[0]",
            "give either start/end",
        ),
        (
            "blackouts: [{name: ok, days: [sat]}, {name: x, days: [sun], matchers: ['ns ~ x']}]",
            "blackouts[1].matchers[0]",
            "cannot parse matcher",
        ),
        ("matchers_syntax: pcre", "matchers_syntax", "must be one of classic, utf8, fallback"),
        ("rules_watch_interval: 100ms", "rules_watch_interval", "0 (off) or between 1s and 1d"),
        ("rules_watch_interval: 2d", "rules_watch_interval", "0 (off) or between 1s and 1d"),
        (
            "matchers_syntax: classic\nblackouts: [{name: x, days: [sun], matchers: ['k8s.ns=a']}]",
            "blackouts[0].matchers[0]",
            "cannot parse matcher",
        ),
    ],
)
def test_a_config_mistake_names_the_dotted_key_and_what_is_expected(
    tmp_path: Path, text: str, path: str, message: str
) -> None:
    error = config_error(tmp_path, text)
    assert error.path == path
    assert message in error.message
    assert str(error) == f"{path}: {error.message}"


def test_a_blackout_matcher_string_is_read_as_rules_read_theirs(tmp_path: Path) -> None:
    [b] = load_yaml(
        tmp_path,
        """
        blackouts:
          - name: freeze
            days: [sat]
            matchers: ['{namespace="prod", team=~"pay.*"}', k8s.cluster=eu-1]
        """,
    ).blackouts
    assert [str(m) for m in b.matchers] == [
        'namespace="prod"',
        'team=~"pay.*"',
        'k8s.cluster="eu-1"',
    ]


def test_a_config_file_that_is_not_a_mapping_or_not_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "remediator.yaml"
    for text, message in [
        ("- a\n- b\n", "top level must be a mapping"),
        ("a: [\n", "invalid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(errors.ConfigError) as caught:
            settings.load(path, environ={})
        assert caught.value.path == str(path)
        assert message in caught.value.message
    with pytest.raises(errors.ConfigError, match="cannot read"):
        settings.load(tmp_path / "missing.yaml", environ={})


def test_secrets_come_from_the_environment_variables_the_config_names(tmp_path: Path) -> None:
    s = load_yaml(
        tmp_path,
        """
        auth:
          webhook_bearer_token_env: AM_TOKEN
          admin_token_env: OPS_TOKEN
        """,
        environ={
            "AM_TOKEN": "webhook-secret",
            "OPS_TOKEN": "admin-secret",
            # The default names are not read once the config names others.
            "REMEDIATOR_WEBHOOK_TOKEN": "wrong",
            "REMEDIATOR_ADMIN_TOKEN": "wrong",
        },
    )
    assert s.auth.webhook_bearer_token == "webhook-secret"
    assert s.auth.admin_token == "admin-secret"


def test_without_auth_config_the_default_variables_are_read() -> None:
    s = settings.load(
        None,
        environ={"REMEDIATOR_WEBHOOK_TOKEN": "w", "REMEDIATOR_ADMIN_TOKEN": "a"},
    )
    assert (s.auth.webhook_bearer_token, s.auth.admin_token) == ("w", "a")


def test_an_empty_or_unset_secret_variable_means_no_credential(tmp_path: Path) -> None:
    s = load_yaml(
        tmp_path,
        "auth: {webhook_bearer_token_env: AM_TOKEN, admin_token_env: OPS_TOKEN}\n",
        environ={"AM_TOKEN": ""},
    )
    assert (s.auth.webhook_bearer_token, s.auth.admin_token) == (None, None)


def test_a_secret_written_into_the_config_file_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "auth: {webhook_bearer_token: s3cret}\n")
    assert error.path == "auth.webhook_bearer_token"
    assert "s3cret" not in str(error)


def test_basic_auth_needs_the_user_and_the_password_variable(tmp_path: Path) -> None:
    error = config_error(tmp_path, "auth: {webhook_basic_user: alertmanager}\n")
    assert error.path == "auth.webhook_basic_user"
    s = load_yaml(
        tmp_path,
        "auth: {webhook_basic_user: am, webhook_basic_password_env: AM_PASSWORD}\n",
        environ={"AM_PASSWORD": "pw"},
    )
    assert (s.auth.webhook_basic_user, s.auth.webhook_basic_password) == ("am", "pw")


def test_log_level_defaults_to_the_environment_and_the_file_wins(tmp_path: Path) -> None:
    assert settings.load(None, environ={"REMEDIATOR_LOG_LEVEL": "DEBUG"}).log_level == "debug"
    s = load_yaml(tmp_path, "log_level: warning\n", environ={"REMEDIATOR_LOG_LEVEL": "debug"})
    assert s.log_level == "warning"


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    text = """
    listen: 0.0.0.0:9000
    rules_dir: /etc/remediator/rules
    data_dir: /var/lib/remediator
    dry_run: false
    workers: 8
    """
    from_file = load_yaml(tmp_path, text)
    assert (from_file.listen_host, from_file.listen_port) == ("0.0.0.0", 9000)
    assert (from_file.dry_run, from_file.workers) == (False, 8)
    flagged = load_yaml(
        tmp_path,
        text,
        overrides={
            "listen_host": "127.0.0.1",
            "listen_port": 9555,
            "rules_dir": Path("my-rules"),
            "dry_run": True,
        },
    )
    assert (flagged.listen_host, flagged.listen_port) == ("127.0.0.1", 9555)
    assert (flagged.rules_dir, flagged.dry_run) == (Path("my-rules"), True)
    # What no flag names still comes from the file.
    assert (flagged.data_dir, flagged.workers) == (Path("/var/lib/remediator"), 8)


def test_listen_accepts_ipv6_and_an_empty_host_means_loopback() -> None:
    assert settings.parse_listen("[::1]:9100", "listen") == ("::1", 9100)
    assert settings.parse_listen(":9100", "listen") == ("127.0.0.1", 9100)
    with pytest.raises(errors.ConfigError) as caught:
        settings.parse_listen("127.0.0.1:0", "--listen")
    assert caught.value.path == "--listen"


def test_a_settings_value_cannot_be_changed_after_loading() -> None:
    s = settings.load(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.dry_run = False  # type: ignore[misc]  # the point: frozen must refuse it


# --------------------------------------------------------------------------- blackouts


def test_an_absolute_blackout_covers_its_start_and_ends_at_its_end(tmp_path: Path) -> None:
    [freeze] = load_yaml(
        tmp_path,
        """
        blackouts:
          - name: christmas-freeze
            start: 2026-12-20T00:00:00Z
            end: 2027-01-03T00:00:00Z
        """,
    ).blackouts
    assert not freeze.active(dt.datetime(2026, 12, 19, 23, 59, 59, tzinfo=UTC))
    assert freeze.active(dt.datetime(2026, 12, 20, tzinfo=UTC))
    assert freeze.active(dt.datetime(2026, 12, 25, 12, tzinfo=UTC))
    assert freeze.active(dt.datetime(2027, 1, 2, 23, 59, 59, tzinfo=UTC))
    assert not freeze.active(dt.datetime(2027, 1, 3, tzinfo=UTC))


def test_an_absolute_blackout_with_an_offset_is_the_same_instant_in_utc(tmp_path: Path) -> None:
    [window] = load_yaml(
        tmp_path,
        """
        blackouts:
          - name: berlin-maintenance
            start: 2027-01-10T02:00:00+01:00
            end: 2027-01-10T04:00:00+01:00
        """,
    ).blackouts
    assert not window.active(dt.datetime(2027, 1, 10, 0, 59, tzinfo=UTC))
    assert window.active(dt.datetime(2027, 1, 10, 1, 0, tzinfo=UTC))
    assert not window.active(dt.datetime(2027, 1, 10, 3, 0, tzinfo=UTC))


def test_a_weekly_blackout_with_days_only_covers_those_whole_days(tmp_path: Path) -> None:
    [weekend] = load_yaml(
        tmp_path, "blackouts: [{name: weekend, days: [Saturday, sun]}]\n"
    ).blackouts
    assert weekend.days == (5, 6)
    assert not weekend.active(at("fri", "23:59"))
    assert weekend.active(at("sat", "00:00"))
    assert weekend.active(at("sun", "23:59"))
    assert not weekend.active(at("mon", "00:00"))


def test_a_daily_blackout_within_one_day_ends_at_to(tmp_path: Path) -> None:
    [office] = load_yaml(
        tmp_path,
        "blackouts: [{name: office, days: [mon, tue, wed, thu, fri], "
        "from: '09:00', to: '17:30'}]\n",
    ).blackouts
    assert not office.active(at("wed", "08:59"))
    assert office.active(at("wed", "09:00"))
    assert office.active(at("wed", "17:29"))
    assert not office.active(at("wed", "17:30"))
    assert not office.active(at("sat", "12:00"))


@pytest.mark.parametrize("quoted", [True, False], ids=["quoted", "yaml-sexagesimal"])
def test_an_overnight_blackout_spans_midnight(tmp_path: Path, quoted: bool) -> None:
    q = '"' if quoted else ""
    [night] = load_yaml(
        tmp_path, f"blackouts: [{{name: night, from: {q}22:00{q}, to: {q}06:00{q}}}]\n"
    ).blackouts
    assert (night.daily_from, night.daily_to) == (dt.time(22), dt.time(6))
    assert not night.active(at("tue", "21:59"))
    assert night.active(at("tue", "22:00"))
    assert night.active(at("tue", "23:30"))
    assert night.active(at("wed", "00:00"))
    assert night.active(at("wed", "05:59"))
    assert not night.active(at("wed", "06:00"))
    assert not night.active(at("wed", "12:00"))


def test_an_overnight_blackout_on_given_days_covers_the_night_that_starts_on_them() -> None:
    friday_night = Blackout(
        "friday-maintenance", days=(4,), daily_from=dt.time(22), daily_to=dt.time(6)
    )
    assert friday_night.active(at("fri", "23:00"))
    assert friday_night.active(at("sat", "02:00"))
    assert not friday_night.active(at("fri", "02:00"))
    assert not friday_night.active(at("sat", "23:00"))


def test_a_blackout_can_be_limited_to_some_alerts_and_rules(tmp_path: Path) -> None:
    [b] = load_yaml(
        tmp_path,
        """
        blackouts:
          - name: batch
            days: [mon]
            matchers: ['namespace = "batch"', 'severity != "critical"']
            rules: [apidown-restart, db-restart]
        """,
    ).blackouts
    assert [str(m) for m in b.matchers] == ['namespace="batch"', 'severity!="critical"']
    assert b.rules == ("apidown-restart", "db-restart")


def test_the_http_limits_default_to_values_no_slow_client_can_outlast(tmp_path: Path) -> None:
    http = load_yaml(tmp_path, "").http
    assert (http.header_timeout, http.body_timeout, http.keepalive_timeout) == (10.0, 30.0, 60.0)
    assert (http.max_connections, http.max_connections_per_client) == (1000, 100)
    custom = load_yaml(
        tmp_path, "http: {header_timeout: 2s, max_connections: 50, sns_rate_per_client: 2.5}\n"
    ).http
    assert (custom.header_timeout, custom.max_connections, custom.sns_rate_per_client) == (
        2.0,
        50,
        2.5,
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("http: {header_timeout: 0s}\n", "http.header_timeout"),
        ("http: {body_timeout: 2h}\n", "http.body_timeout"),
        ("http: {max_connections: 0}\n", "http.max_connections"),
        ("http: {sns_rate_per_client: fast}\n", "http.sns_rate_per_client"),
        ("http: {slowloris: true}\n", "http.slowloris"),
        ("sns: {max_state_change_skew: 2d}\n", "sns.max_state_change_skew"),
    ],
)
def test_an_http_or_sns_limit_out_of_bounds_is_named(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).path == key


def test_any_token_configured_means_reads_need_one(tmp_path: Path) -> None:
    assert not load_yaml(tmp_path, "").auth.reads_need_token
    read = load_yaml(tmp_path, "", environ={"REMEDIATOR_READ_TOKEN": "r"}).auth
    admin = load_yaml(tmp_path, "", environ={"REMEDIATOR_ADMIN_TOKEN": "a"}).auth
    assert read.read_token == "r" and read.reads_need_token
    assert admin.read_token is None and admin.reads_need_token


def test_every_secret_read_from_the_environment_is_known_for_redaction(tmp_path: Path) -> None:
    loaded = load_yaml(
        tmp_path,
        """
        alertmanager: {urls: ["http://am:9093"], bearer_token_env: AM_TOKEN}
        postgres:
          connections:
            main: {dsn_env: CRM_DSN, allowed_databases: [crm]}
        """,
        environ={
            "REMEDIATOR_ADMIN_TOKEN": "adm1n-t0ken",
            "REMEDIATOR_READ_TOKEN": "short",
            "AM_TOKEN": "am-s3cret",
            "CRM_DSN": "postgresql://u:pw@db/crm",
            "UNRELATED": "not-read",
        },
    )
    assert loaded.secrets == {"adm1n-t0ken", "am-s3cret", "postgresql://u:pw@db/crm"}
    # Too short to redact without mangling every answer: warned about at start instead.
    [weak] = [ref for ref in loaded.env_refs if ref.weak]
    assert weak.name == "REMEDIATOR_READ_TOKEN"
