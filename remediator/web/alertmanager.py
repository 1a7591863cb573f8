"""POST /webhook/alertmanager: Alertmanager's webhook (payload v4)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from aiohttp import web

from remediator import errors
from remediator.intake import alertmanager
from remediator.web import auth, common

if TYPE_CHECKING:
    from remediator.runner import Daemon


async def webhook(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    source = alertmanager.SOURCE
    response = await _intake(request, d)
    d.metrics.child(d.metrics.webhook_requests, source, str(response.status)).inc()
    return response


BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode")


def from_a_browser(request: web.Request) -> bool:
    """A request a browser made for a web page: it says so (Origin on every POST, the
    Sec-Fetch headers), Alertmanager never does. Without webhook auth (the default on
    loopback) any page the SRE opens could otherwise post alerts through their browser:
    a form's text/plain body can be made to spell an alert's JSON."""
    return any(name in request.headers for name in BROWSER_HEADERS)


async def _intake(request: web.Request, d: Daemon) -> web.Response:
    source = alertmanager.SOURCE
    if d.stopping:
        return common.stopping()
    if from_a_browser(request):
        d.metrics.bad_input.labels(source=source, kind="cross_site").inc()
        return common.error(403, "a web page may not post alerts: this browser request is refused")
    if not auth.webhook_ok(request, d.settings.auth):
        d.metrics.bad_input.labels(source=source, kind="unauthorized").inc()
        return common.error(401, "missing or wrong credentials", **{"WWW-Authenticate": "Bearer"})
    body = await common.read_body(request, d, source)
    if isinstance(body, web.Response):
        return body
    received_at = dt.datetime.fromtimestamp(d.clock.now(), dt.UTC)  # the engine's clock
    try:
        alerts = alertmanager.parse(
            body, received_at=received_at, max_alerts=d.settings.intake.max_alerts_per_request
        )
    except errors.IntakeError as exc:
        return common.refused(d, source, exc)
    return await common.journal(
        d, alerts, source=source, payload=body, request_id=common.request_id(request),
        received_at=received_at,
    )  # fmt: skip
