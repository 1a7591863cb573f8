"""`postgres.terminate_queries`: bounded termination of stuck queries in one database.

The runbook step of DatabaseConnectionPoolExhausted: find the sessions whose query has
run (or whose transaction has sat idle) longer than `min_duration` and
`pg_terminate_backend` them, oldest first, at most `max_queries`.

Safety, in the order it is enforced:
- the rule names a connection from config (`connection: main`); the DSN comes from the
  environment variable the config names, never from a rule or a label;
- the database must be in that connection's `allowed_databases`, a `usename` filter must
  not name a protected role (both checked before any request: `not_allowed`);
- the one statement that selects and terminates never picks: its own session or another
  of remediator's own pool, anything but a client backend (walsenders, autovacuum,
  background and parallel workers), superuser sessions, sessions of `protected_roles`,
  `idle` sessions;
- selection and termination are one statement over one snapshot of pg_stat_activity: a
  session that ended meanwhile makes `pg_terminate_backend` return false (it is
  reported as `ended_before_signal`), nothing fails and nothing else is picked instead.

Dry-run runs the same selection without the termination and records what would go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from remediator import durations, errors, settings
from remediator.actions import params, registry
from remediator.actions.base import Context, Result, family_config
from remediator.settings import Settings

SECTION = "postgres"
STATES = ("active", "idle in transaction", "idle in transaction (aborted)")
DEFAULT_STATES = ("active", "idle in transaction")

# Names as remediator accepts them from rules, labels and config: plain identifiers
# (with `-` and `$`, common in database names), at most 63 bytes like PostgreSQL's own
# NAMEDATALEN. They only ever travel as bind parameters; the format check is about what
# a label value may steer, not about quoting.
_PG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")
_CONNECTION_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")
# PostgreSQL keeps application_name printable ASCII and at most 63 bytes.
_APPLICATION_NAME = re.compile(r"[\x20-\x7e]{1,63}")
_KEY_SALT = os.urandom(32)
"""A per-process secret for client keys: keys derived from the DSN (which holds the
password) show up in logs, and without a secret salt 64 bits of an unsalted hash of
the DSN would let anyone holding a log test password guesses offline."""


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    """One named PostgreSQL server the action may act on (`postgres.connections.NAME`)."""

    name: str
    dsn_env: str
    """The environment variable holding the DSN (`postgresql://user:pass@host:5432/db`).
    The role needs `pg_signal_backend` (to terminate other roles' sessions) and
    `pg_read_all_stats` or `pg_monitor` (to see their queries); see docs."""
    dsn: str | None = dataclasses.field(default=None, repr=False)
    """Its value at config load; None when unset (an action using it then fails and says
    so: `remediator check` and `simulate` work without the secret)."""
    allowed_databases: tuple[str, ...] = ()
    """Databases whose sessions may be terminated; required, no wildcard."""
    protected_roles: tuple[str, ...] = ()
    """Roles whose sessions are never terminated (migrations, replication, backups...).
    Superuser sessions are always protected, listed or not."""
    connect_timeout: float = 5.0
    """Seconds to connect (and to wait for a free pool slot). Short: when the server is
    down the decision should say so quickly, not use up `limits.action_timeout`."""
    statement_timeout: float = 10.0
    """Seconds the select-and-terminate statement may run (server-side statement_timeout
    too). It reads pg_stat_activity only: milliseconds unless the server is in trouble."""
    pool_max: int = 2
    """Connections remediator may hold to this server. Small on purpose: it is called when
    connections are scarce; one action per target runs at a time (target lock)."""

    @property
    def key(self) -> str:
        """The client key: a changed DSN or pool setting after a reload opens a new pool.

        It is logged (e.g. when a pool fails to close), so the part derived from the DSN
        is an HMAC under a random per-process key: equal within the process, useless
        for testing password guesses outside it.
        """
        material = f"{self.dsn}\x00{self.pool_max}\x00{self.connect_timeout}\x00"
        material += str(self.statement_timeout)
        digest = hmac.new(_KEY_SALT, material.encode(), hashlib.sha256).hexdigest()[:16]
        return f"postgres:{self.name}:{digest}"


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """The `postgres:` config section."""

    connections: Mapping[str, Connection] = dataclasses.field(default_factory=dict)
    """Named servers; rules refer to them by name (`connection: main`)."""
    query_chars: int = 200
    """Characters of each terminated query kept in the audit and the log; 0 keeps no
    query text at all. 200 identifies the query without copying whole payloads."""
    redact_literals: bool = True
    """True (the default): string literals, dollar-quoted strings and numbers in the query
    text are replaced by `?` before it is cut, so the audit holds the query's shape, not
    its data (customer emails, ids, a password in an ALTER ROLE). False keeps the text as
    the server shows it in the database and the log; HTTP answers redact it anyway."""


@settings.section(SECTION)
def _config(r: settings.Reader, env: Mapping[str, str]) -> Config:
    conns = r.section("connections")
    out: dict[str, Connection] = {}
    for name in list(conns.data):
        where = f"{conns.prefix}{name}"
        if not isinstance(name, str) or not _CONNECTION_NAME.fullmatch(name):
            raise errors.ConfigError(
                where, "connection names are [a-z0-9_-], at most 63, e.g. `main`"
            )
        out[name] = _connection(conns.section(name), name, env)
    if not out:
        raise errors.ConfigError(
            f"{r.prefix}connections", "name at least one connection (e.g. `main: {dsn_env: ...}`)"
        )
    cfg = Config(
        connections=out,
        query_chars=r.integer("query_chars", 200, lo=0, hi=10_000),
        redact_literals=r.flag("redact_literals", True),
    )
    return cfg


def _connection(r: settings.Reader, name: str, env: Mapping[str, str]) -> Connection:
    dsn_env = r.text("dsn_env", "")
    if not dsn_env:
        raise errors.ConfigError(
            f"{r.prefix}dsn_env", "name the environment variable that holds the DSN"
        )
    dsn = r.secret("dsn_env", env)
    if dsn is not None and not dsn.startswith(("postgresql://", "postgres://")):
        # Never echo the value: it holds a password.
        raise errors.ConfigError(
            f"{r.prefix}dsn_env",
            f"${dsn_env} is not a postgresql:// URL (postgresql://user:pass@host:5432/db)",
        )
    databases = _names(r, "allowed_databases")
    if not databases:
        raise errors.ConfigError(
            f"{r.prefix}allowed_databases",
            "list the databases whose sessions may be terminated (nothing is allowed by default)",
        )
    conn = Connection(
        name=name,
        dsn_env=dsn_env,
        dsn=dsn,
        allowed_databases=databases,
        protected_roles=_names(r, "protected_roles"),
        connect_timeout=_seconds(r, "connect_timeout", 5.0, hi=60.0),
        statement_timeout=_seconds(r, "statement_timeout", 10.0, hi=300.0),
        pool_max=r.integer("pool_max", 2, lo=1, hi=10),
    )
    r.finish()
    return conn


def _names(r: settings.Reader, key: str) -> tuple[str, ...]:
    out = []
    for i, v in enumerate(r.raw_list(key)):
        if not isinstance(v, str) or not _PG_NAME.fullmatch(v):
            raise errors.ConfigError(
                f"{r.prefix}{key}[{i}]", f"not a PostgreSQL name ([A-Za-z0-9_$-], ≤ 63): {v!r}"
            )
        out.append(v)
    return tuple(out)


def _seconds(r: settings.Reader, key: str, default: float, *, hi: float) -> float:
    value = r.duration(key, default)
    if not 0 < value <= hi:
        raise errors.ConfigError(f"{r.prefix}{key}", f"must be more than 0s and at most {hi:g}s")
    return value


# --------------------------------------------------------------------------- params


def _pg_name(what: str) -> params.Validator:
    return params.matching(_PG_NAME, is_not=f"a {what} name ([A-Za-z0-9_$-], at most 63)")


def _connection_name() -> params.Validator:
    return params.matching(_CONNECTION_NAME, is_not="a connection name from postgres.connections")


def _application_name() -> params.Validator:
    return params.matching(_APPLICATION_NAME, is_not="an application_name (printable ASCII, ≤ 63)")


def _states() -> params.Validator:
    """A list of pg_stat_activity states (a single string is a list of one). `idle` is
    not among them: an idle session runs no query and holds no transaction."""

    def check(field: str, value: Any) -> list[str]:
        from remediator.matching.templates import Template  # noqa: PLC0415 - avoids a cycle

        items = [value] if isinstance(value, str | Template) else value
        if not isinstance(items, list | tuple) or not items:
            raise errors.ParamError(field, f"expected a list of states from: {', '.join(STATES)}")
        out = []
        for item in items:
            if isinstance(item, Template):
                # At load time list items are still templates (only top-level ones are
                # unwrapped, and `Schema.literal` sees only those): which states may be
                # terminated is the rule's to say, so a templated item is a rule error.
                if not item.is_literal:
                    raise errors.ParamError(
                        field,
                        "must be written in the rule, not a template: "
                        "a label must never choose a bound",
                    )
                item = item.render_literal()  # noqa: PLW2901 - the item, unwrapped
            if item not in STATES:
                raise errors.ParamError(
                    field, f"{item!r:.80} is not one of: {', '.join(STATES)} (never `idle`)"
                )
            if item not in out:
                out.append(item)
        return out

    return check


# --------------------------------------------------------------------------- the statement

# One statement over one snapshot of pg_stat_activity. `seen` is every session in the
# database but ours; `eligible` applies the safety rules and the rule's filters;
# `chosen` is the oldest `max_queries` of those this role may signal; the outer select
# terminates exactly the chosen rows (or, in dry-run, nothing) and carries the counts
# the audit needs even when nothing is chosen.
_SELECT = """
WITH me AS (
    SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)
               AS superuser,
           pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AS may_signal
),
seen AS MATERIALIZED (
    SELECT a.pid, a.usesysid, a.usename::text AS usename, a.application_name, a.state,
           a.backend_type, a.query,
           CASE WHEN a.state = 'active' THEN a.query_start ELSE a.state_change END AS since,
           coalesce(r.rolsuper, false) AS superuser
    FROM pg_stat_activity a
    LEFT JOIN pg_roles r ON r.oid = a.usesysid
    WHERE a.datname = $1
      AND a.pid <> pg_backend_pid()
),
eligible AS MATERIALIZED (
    SELECT s.pid, s.usename, s.application_name, s.state, s.query,
           extract(epoch FROM statement_timestamp() - s.since)::float8 AS seconds,
           (me.superuser OR me.may_signal OR pg_has_role(current_user, s.usesysid, 'MEMBER'))
               AS permitted
    FROM seen s CROSS JOIN me
    WHERE s.backend_type = 'client backend'
      AND s.state = ANY($2::text[])
      AND s.since < statement_timestamp() - make_interval(secs => $3)
      AND NOT s.superuser
      AND s.usename <> ALL($4::text[])
      AND NOT (s.usename = current_user AND s.application_name = $5)
      AND ($6::text IS NULL OR s.application_name = $6)
      AND ($7::text IS NULL OR s.usename = $7)
),
counts AS (
    SELECT (SELECT count(*) FROM eligible) AS eligible,
           (SELECT count(*) FROM eligible WHERE NOT permitted) AS denied,
           (SELECT count(*) FROM seen WHERE backend_type IS NULL AND state IS NULL
                                        AND NOT superuser) AS hidden
),
chosen AS MATERIALIZED (
    SELECT e.* FROM eligible e, counts n
    WHERE e.permitted AND n.hidden = 0
    ORDER BY e.seconds DESC, e.pid
    LIMIT $8
)
SELECT c.pid, c.usename, c.application_name, c.state, c.seconds, c.query,
       {terminate} AS signalled,
       n.eligible, n.denied, n.hidden, current_user::text AS role
FROM counts n
LEFT JOIN chosen c ON true
ORDER BY c.seconds DESC NULLS LAST, c.pid
"""
TERMINATE_SQL = _SELECT.format(terminate="pg_terminate_backend(c.pid)")
SELECT_SQL = _SELECT.format(terminate="NULL::boolean")


# --------------------------------------------------------------------------- query text

_LITERALS = re.compile(
    r"""
      (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|\Z))   # $tag$ ... $tag$
    | [EeBbXxNn]?'(?:[^'\\]|\\.|'')*(?:'|\Z)                          # '...' E'...' (cut?)
    | (?<![\w$])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\w)                   # 42, 3.14, 1e9
    """,
    re.VERBOSE | re.DOTALL,
)
_SPACE = re.compile(r"\s+")


def query_text(query: str | None, *, chars: int, redact: bool) -> str:
    """A query as the audit keeps it: whitespace collapsed, literals optionally `?`,
    cut to `chars` characters (with `…` when cut). Redaction runs before the cut, so
    a literal cut in half cannot leak its first part."""
    if not query or chars <= 0:
        return ""
    text = _LITERALS.sub("?", query) if redact else query
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= chars else text[: chars - 1] + "…"


EVIDENCE_GROUPS = 20
"""(state, application) groups kept in the evidence, the largest first."""
ACTIVITY_SQL = """
SELECT coalesce(a.state, 'unknown') AS state,
       coalesce(nullif(a.application_name, ''), '(none)') AS application,
       count(*) AS sessions,
       max(extract(epoch FROM statement_timestamp()
                   - coalesce(a.query_start, a.backend_start)))::float8 AS oldest_seconds,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock') AS waiting_on_locks,
       sum(count(*)) OVER ()::int AS database_total,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int
           AS server_total,
       current_setting('max_connections')::int AS max_connections
FROM pg_stat_activity a
WHERE a.datname = $1 AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
GROUP BY 1, 2
ORDER BY count(*) DESC, 1, 2
LIMIT $2
"""
"""A summary of the database's client sessions for the evidence (no query texts: they
may hold data; the terminate action's own result shows the ones it ends)."""


# --------------------------------------------------------------------------- the action


class TerminateQueries:
    type: ClassVar[str] = "postgres.terminate_queries"
    # Running it again selects again: sessions already terminated are gone, so it never
    # terminates more than the rule asks. Only failures before the statement ran
    # (connect refused, timeout, no slot) are TemporaryError and so retried; a failure
    # mid-statement is permanent ("outcome unknown"), so max_queries holds per decision.
    idempotent: ClassVar[bool] = True
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "connection": params.Field(
                _connection_name(), doc="a connection named in postgres.connections"
            ),
            "database": params.Field(
                _pg_name("database"), doc="database whose sessions are looked at"
            ),
            "min_duration": params.Field(
                params.duration(lo=1.0, hi=7 * 86400.0),
                doc="terminate only sessions whose query ran (or whose transaction sat idle) "
                "longer than this",
            ),
            "max_queries": params.Field(
                params.integer(lo=1, hi=100), doc="at most this many sessions per run"
            ),
            "states": params.Field(
                _states(),
                required=False,
                default=DEFAULT_STATES,
                doc="pg_stat_activity states to consider",
            ),
            "application_name": params.Field(
                _application_name(), required=False, doc="only sessions with this application"
            ),
            "usename": params.Field(
                _pg_name("role"), required=False, doc="only sessions of this role"
            ),
        },
        # How far it may go is the rule's to say, never a label's.
        literal=frozenset({"min_duration", "max_queries", "states"}),
    )

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        cfg: Config | None = family_config(settings, SECTION)
        if cfg is None:
            return  # dry run without config: dry_run says nothing was checked
        conn = _lookup(cfg, values["connection"])
        if values["database"] not in conn.allowed_databases:
            raise errors.NotAllowed(
                "database",
                f"{values['database']!r} is not in postgres.connections.{conn.name}"
                f".allowed_databases ({', '.join(conn.allowed_databases)})",
            )
        usename = values.get("usename")
        if usename is not None and usename in conn.protected_roles:
            raise errors.NotAllowed(
                "usename",
                f"{usename!r} is listed in postgres.connections.{conn.name}.protected_roles",
            )

    def target(self, values: Mapping[str, Any]) -> str:
        return f"{values['connection']}/{values['database']}"

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg: Config = family_config(ctx.settings, SECTION)
        rows = await self._statement(cfg, values, ctx, dry=False)
        return _result(cfg, values, rows, dry=False, log=ctx.log)

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg: Config | None = family_config(ctx.settings, SECTION)
        if cfg is None:
            return Result(
                detail=f"not checked: no `{SECTION}:` config; would terminate up to "
                f"{values['max_queries']} {_what(values, 2)} in database {values['database']} "
                f"via connection {values['connection']}",
                changed=False,
                data=_base_data(values),
            )
        rows = await self._statement(cfg, values, ctx, dry=True)
        return _result(cfg, values, rows, dry=True, log=ctx.log)

    async def evidence(self, values: Mapping[str, Any], ctx: Context) -> Mapping[str, Any]:
        """The database's sessions before acting: how many per state and application,
        the oldest of each, how many wait on a lock, against max_connections."""
        cfg: Config | None = family_config(ctx.settings, SECTION)
        if cfg is None:
            return {"note": f"not captured: no `{SECTION}:` config"}
        pool = await self._pool(cfg, values, ctx)
        rows = await pool.fetch(
            ACTIVITY_SQL,
            [values["database"], EVIDENCE_GROUPS],
            what=f"summarize pg_stat_activity of database {values['database']}",
            may_retry=True,
        )
        groups = [
            {
                "state": r["state"],
                "application": r["application"],
                "sessions": r["sessions"],
                "oldest_seconds": round(float(r["oldest_seconds"] or 0.0), 1),
                "waiting_on_locks": r["waiting_on_locks"],
            }
            for r in rows
        ]
        first = rows[0] if rows else {}
        return {
            "database": values["database"],
            "sessions": first.get("database_total", 0),
            "server_sessions": first.get("server_total", 0),
            "max_connections": first.get("max_connections"),
            "by_state_and_application": groups,
        }

    async def _pool(self, cfg: Config, values: Mapping[str, Any], ctx: Context) -> Any:
        from remediator.clients import postgres as pg  # noqa: PLC0415 - asyncpg loads lazily

        conn = _lookup(cfg, values["connection"])
        dsn = conn.dsn
        if dsn is None:
            raise errors.PermanentError(
                f"postgres connection {conn.name!r}: environment variable {conn.dsn_env} "
                f"(postgres.connections.{conn.name}.dsn_env) is not set"
            )

        async def opener() -> pg.Pool:
            return await pg.open_pool(
                name=conn.name,
                dsn=dsn,
                pool_max=conn.pool_max,
                connect_timeout=conn.connect_timeout,
                statement_timeout=conn.statement_timeout,
            )

        return await ctx.clients.get(conn.key, opener, pg.close_pool)

    async def _statement(
        self, cfg: Config, values: Mapping[str, Any], ctx: Context, *, dry: bool
    ) -> list[dict[str, Any]]:
        from remediator.clients import postgres as pg  # noqa: PLC0415 - asyncpg loads lazily

        conn = _lookup(cfg, values["connection"])
        pool: pg.Pool = await self._pool(cfg, values, ctx)
        verb = "select queries to terminate" if dry else "terminate queries"
        return await pool.fetch(
            SELECT_SQL if dry else TERMINATE_SQL,
            [
                values["database"],
                list(values["states"]),
                float(values["min_duration"]),
                list(conn.protected_roles),
                pg.APPLICATION_NAME,
                values.get("application_name"),
                values.get("usename"),
                int(values["max_queries"]),
            ],
            what=f"{verb} in database {values['database']}",
            may_retry=dry,
        )


def _lookup(cfg: Config, name: str) -> Connection:
    conn = cfg.connections.get(name)
    if conn is None:
        raise errors.NotAllowed(
            "connection",
            f"no connection {name!r} in postgres.connections "
            f"(configured: {', '.join(sorted(cfg.connections))})",
        )
    return conn


def _what(values: Mapping[str, Any], count: int | None = None) -> str:
    """`query older than 30s` (count 1 or None) or `queries older than 30s`, with the
    rule's filters, for details."""
    noun = "query" if count in (None, 1) else "queries"
    text = f"{noun} older than {durations.format(values['min_duration'])}"
    filters = [f"{k}={values[k]}" for k in ("application_name", "usename") if values.get(k)]
    return text + (f" ({', '.join(filters)})" if filters else "")


def _base_data(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "connection": values["connection"],
        "database": values["database"],
        "min_duration": values["min_duration"],
        "max_queries": values["max_queries"],
        "states": list(values["states"]),
    }


_LISTED = 10
"""Sessions named in a detail line; the audit's `result` has them all."""


def _listing(sessions: list[dict[str, Any]]) -> str:
    shown = ", ".join(
        f"pid {s['pid']} {s['usename']}/{s['application_name'] or '-'} "
        f"{durations.format(s['duration'])}"
        for s in sessions[:_LISTED]
    )
    more = len(sessions) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _result(
    cfg: Config, values: Mapping[str, Any], rows: list[dict[str, Any]], *, dry: bool, log: Any
) -> Result:
    """Turn the statement's rows into the audit's detail and `result` data."""
    head = rows[0] if rows else {}
    eligible, denied, hidden = (int(head.get(k) or 0) for k in ("eligible", "denied", "hidden"))
    role = str(head.get("role") or "?")
    db = values["database"]
    if hidden:
        raise errors.PermanentError(
            f"role {role} cannot see the queries of {hidden} session(s) in database {db}, so "
            f"it cannot tell which are stuck; nothing was terminated. Grant it "
            f"pg_read_all_stats (or pg_monitor): GRANT pg_read_all_stats TO {role}"
        )
    chosen = [r for r in rows if r["pid"] is not None]
    if not chosen and denied:
        raise errors.PermanentError(
            f"{denied} {_what(values, denied)} in database {db}, but role {role} may not "
            f"terminate them: GRANT pg_signal_backend TO {role}"
        )
    sessions = [
        {
            "pid": r["pid"],
            "usename": r["usename"],
            "application_name": r["application_name"],
            "state": r["state"],
            "duration": round(float(r["seconds"]), 1),
            "query": query_text(r["query"], chars=cfg.query_chars, redact=cfg.redact_literals),
        }
        for r in chosen
    ]
    data = _base_data(values)
    data["eligible"] = eligible
    notes = []
    left = eligible - denied - len(sessions)
    if left > 0:
        notes.append(f"max_queries {values['max_queries']}: {left} more left running")
        data["left_running"] = left
    if denied:
        notes.append(f"{denied} not permitted for role {role} (grant pg_signal_backend)")
        data["not_permitted"] = denied
    if dry:
        data["would_terminate"] = sessions
        if not sessions:
            detail = f"no {_what(values)}: nothing would be terminated"
        else:
            detail = (
                f"would terminate {len(sessions)} {_what(values, len(sessions))} "
                f"in database {db}: {_listing(sessions)}"
            )
        return Result(detail=_with(detail, notes), changed=False, data=data)
    done = [s for s, r in zip(sessions, chosen, strict=True) if r["signalled"]]
    gone = [s for s, r in zip(sessions, chosen, strict=True) if not r["signalled"]]
    data["terminated"] = done
    if gone:
        # Selected, but its backend had exited by the time the signal was sent.
        data["ended_before_signal"] = gone
        notes.append(f"{len(gone)} ended on its own first")
    if not done:
        return Result(
            detail=_with(f"no {_what(values)}: nothing terminated", notes),
            changed=False,
            data=data,
        )
    log.info(
        "postgres_queries_terminated",
        connection=values["connection"],
        database=db,
        pids=[s["pid"] for s in done],
        ended_before_signal=[s["pid"] for s in gone],
    )
    return Result(
        detail=_with(
            f"terminated {len(done)} {_what(values, len(done))} in database {db}: {_listing(done)}",
            notes,
        ),
        changed=True,
        data=data,
    )


def _with(detail: str, notes: list[str]) -> str:
    return f"{detail}; {'; '.join(notes)}" if notes else detail


registry.register(TerminateQueries())
