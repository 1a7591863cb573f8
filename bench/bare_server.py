"""The ceiling: an aiohttp server that only parses the webhook JSON and answers 200.

It runs in its own process, like the daemon, so that the load generator measures both the
same way. Anything the daemon does beyond this (validation, journal, engine) is the cost
the ``daemon/bare`` ratio shows.

With ``--writes`` it also makes the durable writes every alert costs the daemon, through
the daemon's own SQLite writer (`remediator.backends.sqlite.Database`: one writer thread,
group commit) and its own schemas, and nothing else (no validation, matching or
deciding): the floor under the daemon's CPU per alert.

- ``journal``: the request's journal row committed before the 200;
- ``decided``: that, then per alert a row of the audit's ``decisions`` table (its five
  indexes) and, once that row is durable, the journal row's removal.

    python -m bench.bare_server --listen 127.0.0.1:PORT [--writes journal|decided --data-dir D]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from remediator.backends import audit, journal
from remediator.backends.sqlite import Database

WEBHOOK_PATH = "/webhook/alertmanager"
WRITES = ("none", "journal", "decided")
_DB: web.AppKey[Database] = web.AppKey("db", Database)
_WRITES: web.AppKey[str] = web.AppKey("writes", str)
_INSERT_JOURNAL = (
    "INSERT INTO journal (request_id, source, received_at, payload) VALUES (?, ?, ?, ?)"
)
_INSERT_DECISION = (
    f"INSERT INTO decisions ({', '.join(audit.INSERTED)}) "
    f"VALUES ({', '.join('?' * len(audit.INSERTED))})"
)


async def _webhook(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        payload = json.loads(body)
    except ValueError:
        return web.json_response({"error": "malformed JSON"}, status=400)
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    count = len(alerts) if isinstance(alerts, list) else 0
    db = request.app.get(_DB)
    if db is not None and count:
        assert isinstance(alerts, list)
        await _write(db, request.app[_WRITES], body, alerts)
    return web.json_response({"accepted": count})


async def _write(db: Database, writes: str, body: bytes, alerts: list[Any]) -> None:
    now = dt.datetime.now(dt.UTC).isoformat()
    row = await db.submit(
        lambda c: (
            c.execute(
                _INSERT_JOURNAL,
                ("bench", "alertmanager", now, body),
            ).lastrowid
        )
    )
    if writes != "decided":
        return
    rows = [_decision(a, now) for a in alerts]
    done = db.submit(lambda c: c.executemany(_INSERT_DECISION, rows))
    done.add_done_callback(
        lambda _: db.submit(lambda c: c.execute("DELETE FROM journal WHERE id = ?", (row,)))
    )


def _decision(alert: Any, now: str) -> tuple[Any, ...]:
    """A dry-run decision's row, sized like the daemon's (labels, params, texts)."""
    labels = alert.get("labels", {}) if isinstance(alert, dict) else {}
    return (
        now, now, "bench-rule", labels.get("alertname", ""), alert.get("fingerprint", ""),
        alert.get("startsAt", ""), "alertmanager", "dry_run", "dry_run",
        labels.get("instance", ""), "log", json.dumps({"message": "bench"}), "", "bench", 1,
        "{}", json.dumps({"labels": labels, "annotations": {}}), 1, "{}",
    )  # fmt: skip


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(writes: str = "none", data_dir: Path | None = None) -> web.Application:
    """The bare application: one webhook route and a liveness probe, nothing else; with
    `writes`, also the durable writes of every alert (the module's doc)."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post(WEBHOOK_PATH, _webhook)
    app.router.add_get("/healthz", _healthz)
    app[_WRITES] = writes
    if writes != "none":
        path = (data_dir or Path(tempfile.mkdtemp(prefix="bare-writes-"))) / "bare.db"
        db = Database(path, fsync=False, schema=journal.SCHEMA + audit.SCHEMA)

        async def start(app: web.Application) -> None:
            await db.start()
            app[_DB] = db

        async def stop(_app: web.Application) -> None:
            await db.close()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
    return app


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__)
    parser.add_argument(
        "--listen", type=_split_listen, default=("127.0.0.1", 9098), help="HOST:PORT to bind"
    )
    parser.add_argument(
        "--writes", choices=WRITES, default="none",
        help="durable writes per request: none (the ceiling), journal, decided",
    )  # fmt: skip
    parser.add_argument("--data-dir", type=Path, help="where --writes puts its database")
    args = parser.parse_args(argv)
    host, port = args.listen
    # No access log: the daemon under test logs at warning, so the ceiling must not pay
    # for a log line per request either.
    logging.basicConfig(level=logging.WARNING)
    web.run_app(
        make_app(args.writes, args.data_dir), host=host, port=port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
