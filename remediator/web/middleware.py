"""Around every request: no answer is a silent 500.

A handler's own refusals are 4xx answers, counted where they are made. An exception
that escapes a handler is a bug: it is answered 500 with the request id, counted in
`remediator_http_errors_total{route}` and logged once, with its traceback and the same
request id, so the operator can find the line the client reports. A shared backend
that does not answer (Redis, PostgreSQL: `errors.BackendUnavailable`) is no bug: 503
with what is down and a Retry-After, logged as a warning.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from remediator import errors
from remediator.web import common, server

LIMITS: web.AppKey[server.Limits] = web.AppKey("limits", server.Limits)
log = structlog.get_logger("remediator.web")


def route_of(request: web.Request) -> str:
    """The route's path pattern (bounded: one per registered route), or `unmatched`."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[server.ROUTED] = True
    limits = request.app.get(LIMITS)
    if limits is None:
        return await _answer(request, handler)
    guard = limits.request(request.transport)
    try:
        return await _answer(request, handler)
    finally:
        if guard is not None:
            guard.answered()


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError):
        raise  # aiohttp's own answers (404, 405, ...) and a client that went away
    except errors.BackendUnavailable as exc:
        log.warning(
            "request_backend_unavailable", request_id=common.request_id(request),
            route=route_of(request), error=str(exc),
        )  # fmt: skip
        return common.error(503, f"{exc}; retry later", **{"Retry-After": "5"})
    except Exception:
        request_id = common.request_id(request)
        route = route_of(request)
        request.app[common.DAEMON].metrics.http_errors.labels(route=route).inc()
        log.exception("request_failed", request_id=request_id, route=route, method=request.method)
        response = common.error(
            500,
            f"internal error, logged with request_id {request_id}; please report it",
            **{"X-Request-Id": request_id},
        )
        response.force_close()
        return response
