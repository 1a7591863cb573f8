"""The aiohttp application: routes onto one module per concept.

`alertmanager` and `sns` take webhooks in (thin: parse, validate, journal, answer);
`api` serves probes, metrics, the audit and the controls; `approvals` the human approvals;
`ui` the console; `common` holds what they share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from remediator.web import alertmanager, api, approvals, common, middleware, server, ui
from remediator.web import sns as sns_web

if TYPE_CHECKING:
    from remediator.runner import Daemon


def make_app(daemon: Daemon, *, limits: server.Limits | None = None) -> web.Application:
    """The app; `limits` are the guarded server's (runner.serve), None under a test server."""
    # aiohttp enforces the body bound while reading (413) before any JSON work.
    app = web.Application(
        client_max_size=daemon.settings.intake.max_body_bytes,
        middlewares=[middleware.guard],
        handler_args=server.handler_args(daemon.settings.http, daemon.metrics),
    )
    app[common.DAEMON] = daemon
    if limits is not None:
        app[middleware.LIMITS] = limits
    app[sns_web.SNS_GATE] = daemon.sns_gate
    app[sns_web.SNS_CLIENTS] = server.ClientRates(
        rate=daemon.settings.http.sns_rate_per_client,
        burst=daemon.settings.http.sns_burst_per_client,
        max_clients=daemon.settings.http.max_tracked_clients,
    )
    app.router.add_post("/webhook/alertmanager", alertmanager.webhook)
    app.router.add_post("/webhook/sns", sns_web.webhook)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_post("/-/reload", api.reload)
    app.router.add_get("/api/v1/rules", api.rules)
    app.router.add_get("/api/v1/decisions", api.decisions)
    app.router.add_get("/api/v1/decisions/{id}", api.decision)
    app.router.add_post("/api/v1/pause", api.pause)
    app.router.add_post("/api/v1/resume", api.resume)
    app.router.add_post("/api/v1/rules/{name}/pause", api.pause_rule)
    app.router.add_post("/api/v1/rules/{name}/resume", api.resume_rule)
    app.router.add_get("/api/v1/openapi.json", api.openapi)
    approvals.setup(app)
    ui.setup(app)
    return app
