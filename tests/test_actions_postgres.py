"""postgres.terminate_queries, against a real PostgreSQL 15 started by the tests.

The runbook: DatabaseConnectionPoolExhausted in ConectCRM → terminate the queries that
have run longer than 30 s in database `conectcrm`. Here the sessions are real backends
(`pg_sleep`, an open transaction) of several roles and databases; after each action the
test reads pg_stat_activity to see exactly which backends are gone and which still run.
`min_duration` is 1 s so the sessions only need to age a second: the age is measured by
the server, so it is waited for, not faked.

One server for the module (initdb costs about a second), with password auth for every
role but the `postgres` superuser so that a wrong password can be shown to fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import socket
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from remediator import errors, settings
from remediator.actions import evidence, postgres, registry
from remediator.matching import loader
from tests import servers
from tests.harness import Harness, am_alert

pytestmark = pytest.mark.timeout(60)

REPO_RULES = Path(__file__).resolve().parent.parent / "rules"
ALERT = "DatabaseConnectionPoolExhausted"

# Trust for the superuser the tests administer with (and psql), passwords for the rest.
HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""
ROLES = {
    # remediator's own role: least privilege, as docs/actions/postgres.md says.
    "remediator": "remediator-pw IN ROLE pg_signal_backend, pg_read_all_stats",
    "app": "app-pw",
    "batch": "batch-pw",
    "migrator": "migrator-pw",
    "replicator": "replicator-pw REPLICATION",
    # Can log in, but may neither see nor signal other roles' sessions.
    "weak": "weak-pw",
}


def dsn(pg: servers.PostgresServer, role: str, database: str = "postgres") -> str:
    password = ROLES[role].split()[0]
    return f"postgresql://{role}:{password}@127.0.0.1:{pg.port}/{database}"


@pytest.fixture(scope="module")
def pg() -> Iterator[servers.PostgresServer]:
    hba_dir = Path(tempfile.mkdtemp(prefix="remediator-pg-hba-"))
    hba = hba_dir / "pg_hba.conf"
    hba.write_text(HBA)
    hba_dir.chmod(0o755)  # the server runs as the postgres user when the tests run as root
    hba.chmod(0o644)
    try:
        # wal_level=logical: a logical walsender is a replication backend *in* a database,
        # the one a filter on datname alone would wrongly pick.
        with servers.PostgresServer(
            settings={"hba_file": str(hba), "wal_level": "logical"}
        ) as server:
            for role, rest in ROLES.items():
                password, _, extra = rest.partition(" ")
                server.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' {extra}")
            server.psql("CREATE DATABASE conectcrm")
            server.psql("CREATE DATABASE other")
            yield server
    finally:
        shutil.rmtree(hba_dir, ignore_errors=True)


class Sessions:
    """Client backends for a test, each tagged with its own application_name.

    Every connection and task is closed in `close` (the fixture calls it): backends are
    terminated server-side first, so no task is left waiting on a 60 s `pg_sleep`.
    """

    def __init__(self, pg: servers.PostgresServer, admin: Any) -> None:
        self.pg = pg
        self.admin = admin
        self.pids: dict[str, int] = {}
        self._conns: list[Any] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._processes: list[asyncio.subprocess.Process] = []

    async def _connect(self, name: str, role: str, database: str) -> Any:
        conn = await asyncpg.connect(
            dsn(self.pg, role, database) if role != "postgres" else self._superuser(database),
            server_settings={"application_name": name},
        )
        self._conns.append(conn)
        self.pids[name] = conn.get_server_pid()
        return conn

    def _superuser(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg.port}/{database}"

    async def sleeping(self, name: str, *, role: str = "app", database: str = "conectcrm") -> int:
        """A backend running `SELECT pg_sleep(60)` (state `active`)."""
        conn = await self._connect(name, role, database)
        self._tasks.append(
            asyncio.create_task(conn.execute("SELECT pg_sleep(60)"), name=f"session-{name}")
        )
        await self._wait(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' "
            "AND query LIKE '%pg_sleep%'",
            self.pids[name],
        )
        return self.pids[name]

    async def idle_in_transaction(
        self, name: str, *, role: str = "app", database: str = "conectcrm"
    ) -> int:
        """A backend that began a transaction and sits idle in it."""
        conn = await self._connect(name, role, database)
        await conn.execute("BEGIN; SELECT 1")
        return self.pids[name]

    async def idle(self, name: str, *, role: str = "app", database: str = "conectcrm") -> int:
        await self._connect(name, role, database)
        return self.pids[name]

    async def walsender(self, name: str, *, database: str = "conectcrm") -> int:
        """A logical replication stream (pg_recvlogical): a walsender backend, `active`."""
        command = [
            str(servers.POSTGRES_BIN_DIR / "pg_recvlogical"),
            f"--host={servers.LOOPBACK}", f"--port={self.pg.port}", "--username=replicator",
            f"--dbname={database}", f"--slot={name.replace('-', '_')}", "--create-slot",
            "--if-not-exists", "--start", "--plugin=test_decoding", "--file=/dev/null",
            "--no-loop",
        ]  # fmt: skip
        password = ROLES["replicator"].split()[0]
        process = await asyncio.create_subprocess_exec(
            *command,
            env={**os.environ, "PGPASSWORD": password, "PGAPPNAME": name},
            stdin=asyncio.subprocess.DEVNULL,
        )
        self._processes.append(process)
        await self._wait(
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = $1 "
            "AND backend_type = 'walsender' AND state = 'active'",
            name,
        )
        self.pids[name] = await self.admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", name
        )
        return self.pids[name]

    async def age(self, seconds: float = 1.3) -> None:
        """Until every session so far has been in its state longer than `seconds`."""
        await self._wait(
            "SELECT bool_and(statement_timestamp() - CASE WHEN state = 'active' "
            "THEN query_start ELSE state_change END > make_interval(secs => $2)) "
            "FROM pg_stat_activity WHERE pid = ANY($1)",
            list(self.pids.values()),
            seconds,
        )

    async def alive(self) -> set[str]:
        """Names of the sessions whose backend is still in pg_stat_activity."""
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)", list(self.pids.values())
        )
        found = {r["pid"] for r in rows}
        return {name for name, pid in self.pids.items() if pid in found}

    async def wait_gone(self, names: set[str]) -> None:
        """Until these backends have exited (termination is a signal: they exit soon)."""
        await self._wait(
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = ANY($1)",
            [self.pids[n] for n in names],
        )

    async def _wait(self, sql: str, *args: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.admin.fetchval(sql, *args):
            assert time.monotonic() < deadline, f"timed out waiting for: {sql} {args}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for process in self._processes:  # by its own PID, before its backend goes
            if process.returncode is None:
                process.terminate()
            await process.wait()
        await self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1)",
            list(self.pids.values()),
        )
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self._conns:
            conn.terminate()


@pytest.fixture
async def sessions(pg: servers.PostgresServer) -> AsyncIterator[Sessions]:
    admin = await asyncpg.connect(pg.dsn)
    s = Sessions(pg, admin)
    try:
        yield s
    finally:
        await s.close()
        await admin.close()


def config(pg: servers.PostgresServer, *, extra: str = "", postgres: str = "", **top: str) -> str:
    """A config with connection `main` (the least-privilege role), `extra` connections,
    `postgres` keys of the section itself, and `top` top-level keys."""
    text = textwrap.dedent(
        """
        postgres:
          connections:
            main:
              dsn_env: CRM_DSN
              allowed_databases: [conectcrm]
              protected_roles: [migrator]
              connect_timeout: 2s
              statement_timeout: 5s
        """
    )
    text += textwrap.indent(textwrap.dedent(extra), "    ")
    text += textwrap.indent(textwrap.dedent(postgres), "  ")
    return text + "".join(f"{k}: {v}\n" for k, v in top.items())


def rule(
    *,
    name: str = "db-pool",
    connection: str = "main",
    max_queries: int = 10,
    min_duration: str = "1s",
    alertname: str = ALERT,
    **more: str,
) -> str:
    extra = "".join(f"        {k}: {v!r}\n" for k, v in more.items())
    return f"""
  - name: {name}
    matchers: ['alertname = "{alertname}"']
    action:
      type: postgres.terminate_queries
      params:
        connection: {connection}
        database: "{{{{ labels.database }}}}"
        min_duration: {min_duration}
        max_queries: {max_queries}
{extra}    limits: {{cooldown: 0s, max_attempts: 100}}
"""


def rules(*parts: str) -> str:
    return "rules:" + "".join(parts)


def env(pg: servers.PostgresServer, **more: str) -> dict[str, str]:
    return {"CRM_DSN": dsn(pg, "remediator"), **more}


async def only_decision(h: Harness, rule_name: str = "db-pool") -> dict[str, Any]:
    [d] = [d for d in await h.decisions() if d["rule"] == rule_name]
    return d


# --------------------------------------------------------------------------- the runbook


async def test_queries_older_than_min_duration_are_terminated_and_everything_else_runs_on(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("stuck-1")
    await sessions.sleeping("stuck-2")
    await sessions.idle_in_transaction("open-tx")
    await sessions.sleeping("migration", role="migrator")  # protected role
    await sessions.sleeping("dba", role="postgres")  # superuser
    await sessions.sleeping("elsewhere", database="other")  # another database
    await sessions.idle("pooled")  # idle: no query, no transaction
    await sessions.sleeping("remediator", role="remediator")  # remediator's own pool
    await sessions.walsender("replication")  # logical replication, in this database
    await sessions.age()
    await sessions.sleeping("young")  # younger than min_duration

    async with Harness(
        tmp_path, rules=rules(rule()), config=config(pg), env=env(pg), dry_run=False
    ) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        d = await only_decision(h)

    assert (d["outcome"], d["reason"], d["target"]) == (
        "executed",
        "",
        "postgres.terminate_queries main/conectcrm",
    )
    await sessions.wait_gone({"stuck-1", "stuck-2", "open-tx"})
    assert await sessions.alive() == {
        "migration",
        "dba",
        "elsewhere",
        "pooled",
        "remediator",
        "replication",
        "young",
    }
    terminated = d["result"]["terminated"]
    assert {t["application_name"] for t in terminated} == {"stuck-1", "stuck-2", "open-tx"}
    assert {t["pid"] for t in terminated} == {
        sessions.pids[n] for n in ("stuck-1", "stuck-2", "open-tx")
    }
    by_name = {t["application_name"]: t for t in terminated}
    assert by_name["stuck-1"]["usename"] == "app"
    assert by_name["stuck-1"]["state"] == "active"
    assert by_name["stuck-1"]["query"] == "SELECT pg_sleep(?)"  # literals redacted by default
    assert by_name["open-tx"]["state"] == "idle in transaction"
    assert all(t["duration"] >= 1.0 for t in terminated)
    assert d["result"]["eligible"] == 3
    assert d["detail"].startswith("terminated 3 queries older than 1s in database conectcrm: pid ")


async def test_max_queries_holds_and_the_oldest_go_first(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    for name in ("oldest", "older", "old", "less-old"):
        await sessions.sleeping(name)
    await sessions.age()

    async with Harness(
        tmp_path, rules=rules(rule(max_queries=2)), config=config(pg), env=env(pg), dry_run=False
    ) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        d = await only_decision(h)

    assert d["outcome"] == "executed"
    await sessions.wait_gone({"oldest", "older"})
    assert await sessions.alive() == {"old", "less-old"}
    assert [t["application_name"] for t in d["result"]["terminated"]] == ["oldest", "older"]
    assert (d["result"]["eligible"], d["result"]["left_running"]) == (4, 2)
    assert d["detail"].endswith("; max_queries 2: 2 more left running")


async def test_the_application_name_and_usename_filters_narrow_what_is_terminated(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("reports")
    await sessions.sleeping("billing")
    await sessions.sleeping("nightly", role="batch")
    await sessions.age()
    by_app = rule(name="reports-only", alertname="ReportsStuck", application_name="reports")
    by_role = rule(name="batch-only", alertname="BatchStuck", usename="batch")

    async with Harness(
        tmp_path, rules=rules(by_app, by_role), config=config(pg), env=env(pg), dry_run=False
    ) as h:
        await h.fire(am_alert("ReportsStuck", database="conectcrm"))
        await sessions.wait_gone({"reports"})
        assert await sessions.alive() == {"billing", "nightly"}
        # Both rules act on main/conectcrm: the second waits out no cooldown (0s here).
        await h.fire(am_alert("BatchStuck", database="conectcrm"))
        await sessions.wait_gone({"nightly"})
        assert await sessions.alive() == {"billing"}
        [first, second] = await h.decisions()

    assert first["detail"].startswith(
        "terminated 1 query older than 1s (application_name=reports) in database conectcrm"
    )
    assert [t["usename"] for t in second["result"]["terminated"]] == ["batch"]


async def test_nothing_older_than_min_duration_is_a_recorded_no_op(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("busy")
    await sessions.idle_in_transaction("open-tx")

    async with Harness(
        tmp_path,
        rules=rules(rule(min_duration="30s")),
        config=config(pg),
        env=env(pg),
        dry_run=False,
    ) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        d = await only_decision(h)

    assert (d["outcome"], d["detail"]) == (
        "executed",
        "no query older than 30s: nothing terminated",
    )
    assert d["result"]["terminated"] == []
    assert await sessions.alive() == {"busy", "open-tx"}


async def test_a_dry_run_records_what_would_be_terminated_and_terminates_nothing(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("stuck")
    await sessions.sleeping("migration", role="migrator")
    await sessions.age()

    cfg = config(pg)  # redact_literals is on by default
    async with Harness(tmp_path, rules=rules(rule()), config=cfg, env=env(pg)) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        d = await only_decision(h)

    assert d["outcome"] == "dry_run"
    assert d["result"]["would_terminate"][0]["query"] == "SELECT pg_sleep(?)"
    assert d["detail"].startswith("would terminate 1 query older than 1s in database conectcrm")
    assert [s["pid"] for s in d["result"]["would_terminate"]] == [sessions.pids["stuck"]]
    assert "terminated" not in d["result"]
    assert await sessions.alive() == {"stuck", "migration"}


async def test_the_example_rule_dry_runs_without_a_postgres_config(tmp_path: Path) -> None:
    example = (REPO_RULES / "database.yaml").read_text()
    async with Harness(tmp_path, rules=example) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        [d] = await h.decisions()

    assert (d["outcome"], d["reason"]) == ("dry_run", "")
    assert d["detail"] == (
        "not checked: no `postgres:` config; would terminate up to 10 queries older than "
        "30s in database conectcrm via connection main"
    )
    assert d["target"] == "postgres.terminate_queries main/conectcrm"


async def test_a_live_run_without_a_postgres_config_is_not_allowed(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=rules(rule()), dry_run=False) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        [d] = await h.decisions()
    assert (d["outcome"], d["reason"]) == ("skipped", "not_allowed")
    assert "no `postgres:` section in the config file" in d["detail"]


# --------------------------------------------------------------------------- what labels cannot do


async def test_a_database_outside_allowed_databases_is_never_touched(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("elsewhere", database="other")
    await sessions.age()
    async with Harness(
        tmp_path, rules=rules(rule()), config=config(pg), env=env(pg), dry_run=False
    ) as h:
        await h.fire(am_alert(ALERT, database="other"))
        [d] = await h.decisions()
    assert (d["outcome"], d["reason"]) == ("skipped", "not_allowed")
    assert "postgres.connections.main.allowed_databases" in d["detail"]
    assert await sessions.alive() == {"elsewhere"}


@pytest.mark.parametrize(
    ("labels", "reason", "says"),
    [
        ({"database": "conectcrm'; DROP TABLE x; --"}, "template_error", "not a database name"),
        ({"database": "conectcrm", "conn": "nope"}, "not_allowed", "no connection 'nope'"),
        ({"database": "conectcrm", "conn": "../main"}, "template_error", "not a connection"),
    ],
)
async def test_a_label_cannot_steer_the_action_outside_the_config(
    tmp_path: Path,
    labels: dict[str, str],
    reason: str,
    says: str,
) -> None:
    text = rules(rule(connection='"{{ labels.conn }}"' if "conn" in labels else "main"))
    async with Harness(
        tmp_path, rules=text, config="postgres: {connections: {main: "
        "{dsn_env: CRM_DSN, allowed_databases: [conectcrm]}}}", dry_run=False
    ) as h:  # fmt: skip
        await h.fire(am_alert(ALERT, **labels))
        [d] = await h.decisions()
    assert (d["outcome"], d["reason"]) == ("skipped", reason)
    assert says in d["detail"]


async def test_a_usename_filter_naming_a_protected_role_is_not_allowed(tmp_path: Path) -> None:
    cfg = textwrap.dedent(
        """
        postgres:
          connections:
            main: {dsn_env: CRM_DSN, allowed_databases: [conectcrm], protected_roles: [migrator]}
        """
    )
    async with Harness(
        tmp_path, rules=rules(rule(usename="migrator")), config=cfg, dry_run=False
    ) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        [d] = await h.decisions()
    assert (d["outcome"], d["reason"]) == ("skipped", "not_allowed")
    assert "postgres.connections.main.protected_roles" in d["detail"]


# --------------------------------------------------------------------------- failures


async def test_a_role_that_cannot_see_other_sessions_terminates_nothing_and_says_what_to_grant(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("stuck")
    await sessions.age()
    async with Harness(
        tmp_path,
        rules=rules(rule()),
        config=config(pg),
        env={"CRM_DSN": dsn(pg, "weak")},
        dry_run=False,
    ) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        d = await only_decision(h)
    assert (d["outcome"], d["reason"]) == ("failed", "action_error")
    assert "GRANT pg_read_all_stats TO weak" in d["detail"]
    assert await sessions.alive() == {"stuck"}


async def test_a_wrong_password_fails_clearly_and_other_actions_still_run(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("stuck")
    await sessions.age()
    bad = dsn(pg, "remediator").replace("remediator-pw", "not-the-password")
    extra = """
      wrong:
        dsn_env: WRONG_DSN
        allowed_databases: [conectcrm]
    """
    text = rules(rule(name="wrong-pw", connection="wrong"), rule(name="db-pool"))
    async with Harness(
        tmp_path,
        rules=text,
        config=config(pg, extra=extra),
        env=env(pg, WRONG_DSN=bad),
        dry_run=False,
    ) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        wrong = await only_decision(h, "wrong-pw")
        good = await only_decision(h, "db-pool")

    assert (wrong["outcome"], wrong["reason"]) == ("failed", "action_error")
    assert "password authentication failed" in wrong["detail"]
    assert "remediator@127.0.0.1" in wrong["detail"]
    assert "not-the-password" not in wrong["detail"]
    assert "postgres.connections.wrong.dsn_env" in wrong["detail"]
    assert good["outcome"] == "executed"
    await sessions.wait_gone({"stuck"})


async def test_a_server_that_never_answers_fails_within_connect_timeout(
    tmp_path: Path, pg: servers.PostgresServer
) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        extra = """
          silent:
            dsn_env: SILENT_DSN
            allowed_databases: [conectcrm]
            connect_timeout: 500ms
        """
        text = rules(
            rule(name="silent", connection="silent"),
            rule(name="db-pool", min_duration="1h"),
        )
        async with Harness(
            tmp_path,
            rules=text,
            config=config(pg, extra=extra, limits="{action_timeout: 1s}"),
            env=env(pg, SILENT_DSN=f"postgresql://remediator:pw@127.0.0.1:{port}/conectcrm"),
            dry_run=False,
        ) as h:
            started = time.monotonic()
            await h.fire(am_alert(ALERT, database="conectcrm"))
            took = time.monotonic() - started
            silent_d = await only_decision(h, "silent")
            good = await only_decision(h, "db-pool")

    assert (silent_d["outcome"], silent_d["reason"]) == ("failed", "action_error")
    assert "within 0.5s (postgres.connections.silent.connect_timeout)" in silent_d["detail"]
    assert took < 10
    assert good["outcome"] == "executed"


async def test_a_stopped_server_fails_clearly_and_other_actions_still_run(
    tmp_path: Path, pg: servers.PostgresServer
) -> None:
    doomed = await asyncio.to_thread(servers.PostgresServer().start)
    try:
        extra = """
          doomed:
            dsn_env: DOOMED_DSN
            allowed_databases: [postgres]
        """
        text = rules(
            rule(name="doomed", connection="doomed", alertname="DoomedPool"),
            rule(name="db-pool", min_duration="1h"),
        )
        async with Harness(
            tmp_path,
            rules=text,
            config=config(pg, extra=extra, limits="{action_timeout: 2s}"),
            env=env(pg, DOOMED_DSN=doomed.dsn),
            dry_run=False,
        ) as h:
            await h.fire(am_alert("DoomedPool", database="postgres"))  # opens the pool
            await asyncio.to_thread(doomed.stop)
            await h.fire(am_alert("DoomedPool", database="postgres"))
            await h.fire(am_alert(ALERT, database="conectcrm"))
            first, second, other = await h.decisions()
    finally:
        await asyncio.to_thread(doomed.stop)

    assert (first["outcome"], first["detail"]) == (
        "executed",
        "no query older than 1s: nothing terminated",
    )
    assert (second["outcome"], second["reason"]) == ("failed", "action_error")
    assert "cannot connect to postgres connection 'doomed' (postgres@127.0.0.1:" in second["detail"]
    assert "connection refused; is the server running?" in second["detail"]
    assert (other["rule"], other["outcome"]) == ("db-pool", "executed")


async def test_an_unset_dsn_variable_fails_the_action_naming_the_variable(tmp_path: Path) -> None:
    cfg = "postgres: {connections: {main: {dsn_env: CRM_DSN, allowed_databases: [conectcrm]}}}"
    async with Harness(tmp_path, rules=rules(rule()), config=cfg) as h:
        await h.fire(am_alert(ALERT, database="conectcrm"))
        [d] = await h.decisions()
    assert d["outcome"] == "dry_run"
    assert d["reason"] == "action_error"
    assert (
        "environment variable CRM_DSN (postgres.connections.main.dsn_env) is not set"
        in (d["detail"])
    )


# --------------------------------------------------------------------------- audit text


@pytest.mark.parametrize(
    ("query", "chars", "redact", "kept"),
    [
        ("SELECT pg_sleep(60)", 200, False, "SELECT pg_sleep(60)"),
        ("SELECT  *\n  FROM t\tWHERE a = 1", 200, False, "SELECT * FROM t WHERE a = 1"),
        ("SELECT 1234567890", 10, False, "SELECT 12…"),
        ("SELECT * FROM t", 0, False, ""),
        (None, 200, False, ""),
        (
            "SELECT * FROM users WHERE email = 'ana@example.com' AND id = 42 AND x2 = 1.5e3",
            200,
            True,
            "SELECT * FROM users WHERE email = ? AND id = ? AND x2 = ?",
        ),
        (
            "UPDATE t SET s = 'it''s' WHERE k = E'a\\'b'",
            200,
            True,
            "UPDATE t SET s = ? WHERE k = ?",
        ),
        ("SELECT $$secret$$, $q$also$q$, $1", 200, True, "SELECT ?, ?, $1"),
        # Cut by the server's track_activity_query_size in the middle of a literal:
        ("INSERT INTO t VALUES ('secret-token-that-was-cu", 200, True, "INSERT INTO t VALUES (?"),
    ],
)
def test_the_audit_keeps_the_first_characters_of_a_query_optionally_without_literals(
    query: str | None, chars: int, redact: bool, kept: str
) -> None:
    assert postgres.query_text(query, chars=chars, redact=redact) == kept


# --------------------------------------------------------------------------- rules and config


def test_a_session_that_ended_before_the_signal_is_reported_not_counted() -> None:
    # pg_terminate_backend() returns false for a backend that exited after the snapshot.
    row = {
        "eligible": 2, "denied": 0, "hidden": 0, "role": "remediator", "usename": "app",
        "state": "active", "seconds": 45.0, "query": "SELECT 1",
    }  # fmt: skip
    rows = [
        {**row, "pid": 11, "application_name": "a", "signalled": True},
        {**row, "pid": 12, "application_name": "b", "signalled": False},
    ]
    values = {
        "connection": "main", "database": "conectcrm", "min_duration": 30.0,
        "max_queries": 5, "states": ["active"],
    }  # fmt: skip
    result = postgres._result(
        postgres.Config(), values, rows, dry=False, log=structlog.get_logger()
    )
    assert [s["pid"] for s in result.data["terminated"]] == [11]
    assert [s["pid"] for s in result.data["ended_before_signal"]] == [12]
    assert result.detail == (
        "terminated 1 query older than 30s in database conectcrm: pid 11 app/a 45s; "
        "1 ended on its own first"
    )
    assert result.changed


def load_rule(tmp_path: Path, params: str) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - name: r\n    matchers: ['alertname = \"A\"']\n"
        f"    action: {{type: postgres.terminate_queries, params: {params}}}\n"
    )
    loader.load_dir(tmp_path)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ("{connection: main, database: d, min_duration: 30s}", "'max_queries': is required"),
        ("{connection: main, database: d, max_queries: 5}", "'min_duration': is required"),
        ("{connection: main, database: d, min_duration: 30s, max_queries: 0}", "outside 1..100"),
        ("{connection: main, database: d, min_duration: 30s, max_queries: 500}", "outside"),
        ("{connection: main, database: d, min_duration: 0s, max_queries: 5}", "outside 1.0s"),
        (
            "{connection: main, database: d, min_duration: 30s, max_queries: 5, states: [idle]}",
            "never `idle`",
        ),
        (
            "{connection: main, database: d, min_duration: 30s, max_queries: 5, states: []}",
            "expected a list of states",
        ),
        ("{connection: Main!, database: d, min_duration: 30s, max_queries: 5}", "connection"),
        ("{connection: main, database: 'a b', min_duration: 30s, max_queries: 5}", "database"),
        ("{connection: main, database: d, min_duration: 30s, max_queries: 5, dsn: x}", "unknown"),
    ],
)
def test_a_rule_with_unsafe_or_missing_params_fails_to_load(
    tmp_path: Path, params: str, says: str
) -> None:
    with pytest.raises(errors.RuleFileErrors) as caught:
        load_rule(tmp_path, params)
    assert says in str(caught.value)


LIMITED_RULE = """\
rules:
  - name: db-pool
    matchers: ['alertname = "DatabaseConnectionPoolExhausted"']
    action:
      type: postgres.terminate_queries
      params:
        connection: main
        database: "{{ labels.database }}"
        min_duration: 30s
        max_queries: 5
        states: [active]
"""


@pytest.mark.parametrize(
    ("line", "templated", "field"),
    [
        (9, 'min_duration: "{{ labels.age }}"', "min_duration"),
        (10, 'max_queries: "{{ labels.count }}"', "max_queries"),
        (11, 'states: "{{ labels.state }}"', "states"),
        (11, 'states: [active, "{{ labels.state }}"]', "states"),
    ],
)
def test_a_label_can_never_set_how_old_how_many_or_which_sessions_go(
    tmp_path: Path, line: int, templated: str, field: str
) -> None:
    lines = LIMITED_RULE.splitlines()
    assert lines[line - 1].strip().split(":")[0] == field
    lines[line - 1] = " " * 8 + templated
    (tmp_path / "db.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    assert (problem.file, problem.line) == (str(tmp_path / "db.yaml"), line)
    assert problem.message == (
        f"postgres.terminate_queries: param '{field}': must be written in the rule, not a "
        "template: a label must never choose a bound"
    )


def test_the_limits_written_in_the_rule_load_and_the_database_may_come_from_a_label(
    tmp_path: Path,
) -> None:
    (tmp_path / "db.yaml").write_text(LIMITED_RULE)
    [rule] = loader.load_dir(tmp_path)
    assert rule.action.type == "postgres.terminate_queries"


def test_the_pool_key_in_logs_is_no_unsalted_hash_of_the_password() -> None:
    # The key is logged when a pool fails to close. 64 bits of a plain SHA-256 of the
    # DSN would let anyone with the log test password guesses offline.
    conn = postgres.Connection(
        name="main", dsn_env="CRM_DSN", dsn="postgresql://remediator:s3cret@db:5432/postgres"
    )
    material = f"{conn.dsn}\x00{conn.pool_max}\x00{conn.connect_timeout}\x00"
    material += str(conn.statement_timeout)
    for guess in ("s3cret", "password", "hunter2"):
        guessed = material.replace("s3cret", guess).encode()
        assert hashlib.sha256(guessed).hexdigest()[:16] not in conn.key
    assert conn.key.startswith("postgres:main:") and "s3cret" not in conn.key
    # Still a key: the same within the process, another when the DSN changes (reload).
    same = dataclasses.replace(conn)
    other = dataclasses.replace(conn, dsn="postgresql://remediator:n3w@db:5432/postgres")
    assert same.key == conn.key != other.key


def test_the_pool_key_depends_on_a_secret_of_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = postgres.Connection(
        name="main", dsn_env="CRM_DSN", dsn="postgresql://remediator:s3cret@db:5432/postgres"
    )
    first = conn.key
    monkeypatch.setattr(postgres, "_KEY_SALT", bytes(32))
    assert conn.key != first


def test_states_default_to_active_and_idle_in_transaction() -> None:
    action = registry.get("postgres.terminate_queries")
    assert action is not None
    values = action.schema.validate(
        {"connection": "main", "database": "conectcrm", "min_duration": "30s", "max_queries": "5"}
    )
    assert list(values["states"]) == ["active", "idle in transaction"]
    assert (values["min_duration"], values["max_queries"]) == (30.0, 5)


def load_config(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return settings.load(path, environ=environ or {}).section("postgres")


def test_the_config_section_is_parsed_with_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path,
        """
        postgres:
          connections:
            main: {dsn_env: CRM_DSN, allowed_databases: [conectcrm]}
        """,
        {"CRM_DSN": "postgresql://remediator:s3cret@db:5432/postgres"},
    )
    main = cfg.connections["main"]
    assert (main.connect_timeout, main.statement_timeout, main.pool_max) == (5.0, 10.0, 2)
    assert (cfg.query_chars, cfg.redact_literals) == (200, True)
    assert main.protected_roles == ()
    assert "s3cret" not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "path", "says"),
    [
        ("postgres: {connections: {}}", "postgres.connections", "at least one"),
        ("postgres: {connections: {main: {allowed_databases: [a]}}}", "main.dsn_env", "name"),
        ("postgres: {connections: {main: {dsn_env: X}}}", "main.allowed_databases", "list"),
        (
            "postgres: {connections: {main: {dsn_env: X, allowed_databases: ['a;b']}}}",
            "main.allowed_databases[0]",
            "not a PostgreSQL name",
        ),
        (
            "postgres: {connections: {Main: {dsn_env: X, allowed_databases: [a]}}}",
            "postgres.connections.Main",
            "connection names",
        ),
        (
            "postgres: {connections: {m: {dsn_env: X, allowed_databases: [a], pool_max: 50}}}",
            "m.pool_max",
            "1..10",
        ),
        (
            "postgres: {connections: {m: {dsn_env: X, allowed_databases: [a], dsn: pw}}}",
            "postgres.connections.m.dsn",
            "unknown key",
        ),
        (
            "postgres: {connections: {m: {dsn_env: X, allowed_databases: [a], "
            "connect_timeout: 0s}}}",
            "m.connect_timeout",
            "more than 0s",
        ),
        (
            "postgres: {connections: {m: {dsn_env: X, allowed_databases: [a]}}, query_chars: -1}",
            "postgres.query_chars",
            "0..10000",
        ),
        (
            "postgres: {connections: {m: {dsn_env: BAD_DSN, allowed_databases: [a]}}}",
            "m.dsn_env",
            "not a postgresql:// URL",
        ),
    ],
)
def test_a_bad_postgres_section_is_a_config_error_naming_the_key(
    tmp_path: Path, text: str, path: str, says: str
) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        load_config(tmp_path, text, {"BAD_DSN": "host=db password=hunter2"})
    assert path in caught.value.path
    assert says in caught.value.message
    assert "hunter2" not in str(caught.value)


def test_the_asyncpg_client_is_not_imported_by_loading_the_actions() -> None:
    import subprocess  # noqa: PLC0415 - only this test starts an interpreter
    import sys  # noqa: PLC0415 - idem

    code = (
        "import sys; from remediator.actions import registry; registry.names(); "
        "print('asyncpg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- evidence


async def test_evidence_summarizes_the_databases_sessions_by_state_and_application(
    tmp_path: Path, pg: servers.PostgresServer, sessions: Sessions
) -> None:
    await sessions.sleeping("crm-api")
    await sessions.sleeping("crm-api-2")
    await sessions.idle_in_transaction("crm-worker")
    await sessions.idle("crm-api-idle")
    await sessions.sleeping("elsewhere", database="other")  # not this database
    async with Harness(
        tmp_path, rules=rules(rule()), config=config(pg), env=env(pg), dry_run=False
    ) as h:
        action = registry.get("postgres.terminate_queries")
        assert action is not None
        values = action.schema.validate(
            {"connection": "main", "database": "conectcrm", "min_duration": "1s", "max_queries": 5}
        )
        seen = await evidence.capture(action, values, h.context())
    groups = {(g["state"], g["application"]): g for g in seen["by_state_and_application"]}
    assert groups[("active", "crm-api")]["sessions"] == 1
    assert groups[("idle in transaction", "crm-worker")]["sessions"] == 1
    assert ("idle", "crm-api-idle") in groups
    assert not any(app == "elsewhere" for _, app in groups)
    assert seen["database"] == "conectcrm" and seen["sessions"] == 4
    assert seen["server_sessions"] >= 5 and seen["max_connections"] >= 5
    assert all(g["oldest_seconds"] >= 0 for g in groups.values())
    assert await sessions.alive() >= {"crm-api", "crm-api-2", "crm-worker"}  # nothing ended


async def test_evidence_of_an_unreachable_database_is_a_note(
    tmp_path: Path, pg: servers.PostgresServer
) -> None:
    bad = {"CRM_DSN": f"postgresql://remediator:wrong@127.0.0.1:{pg.port}/conectcrm"}
    async with Harness(tmp_path, rules=rules(rule()), config=config(pg), env=bad) as h:
        action = registry.get("postgres.terminate_queries")
        assert action is not None
        values = action.schema.validate(
            {"connection": "main", "database": "conectcrm", "min_duration": "1s", "max_queries": 5}
        )
        seen = await evidence.capture(action, values, h.context())
    assert list(seen) == ["note"]
    assert seen["note"].startswith("evidence not captured: summarize pg_stat_activity")
