"""The ceiling: an aiohttp server that only parses the webhook JSON and answers 200.

It runs in its own process, like the daemon, so that the load generator measures both the
same way. Anything the daemon does beyond this (validation, journal, engine) is the cost
the ``daemon/bare`` ratio shows.

    python -m bench.bare_server --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import json
import logging

from aiohttp import web

WEBHOOK_PATH = "/webhook/alertmanager"


async def _webhook(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        payload = json.loads(body)
    except ValueError:
        return web.json_response({"error": "malformed JSON"}, status=400)
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    count = len(alerts) if isinstance(alerts, list) else 0
    return web.json_response({"accepted": count})


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app() -> web.Application:
    """The bare application: one webhook route and a liveness probe, nothing else."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post(WEBHOOK_PATH, _webhook)
    app.router.add_get("/healthz", _healthz)
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
    args = parser.parse_args(argv)
    host, port = args.listen
    # No access log: the daemon under test logs at warning, so the ceiling must not pay
    # for a log line per request either.
    logging.basicConfig(level=logging.WARNING)
    web.run_app(make_app(), host=host, port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
