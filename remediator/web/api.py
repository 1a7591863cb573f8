"""Probes, metrics, and the control and audit API (`/api/v1/...`, `/-/reload`)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from remediator.actions import postgres
from remediator.backends.audit import Query
from remediator.models.alert import parse_time
from remediator.web import auth, common

if TYPE_CHECKING:
    from remediator.runner import Daemon


async def metrics(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    d.refresh_gauges()
    body = generate_latest(d.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


OPENAPI = Path(__file__).with_name("openapi.yaml")
"""The description of the whole HTTP API (docs/openapi.yaml links to it)."""


@functools.cache
def _openapi_json() -> bytes:
    return json.dumps(yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))).encode()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_openapi_json(), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    problems = d.readiness_problems()
    if problems:
        return web.json_response({"status": "not_ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready", "rules": len(d.engine.index)})


async def reload(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    if not auth.admin_ok(request, d.settings.auth):
        return _admin_refused(d)
    ok, message = await d.reload()
    return web.json_response(
        {"status": "ok" if ok else "error", "message": message}, status=200 if ok else 422
    )


async def pause(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    d = request.app[common.DAEMON]
    if not auth.admin_ok(request, d.settings.auth):
        return _admin_refused(d)
    d.set_paused(paused, by=request.remote or "")
    return web.json_response({"status": "ok", "paused": paused})


def _admin_refused(d: Daemon) -> web.Response:
    d.metrics.bad_input.labels(source="api", kind="unauthorized").inc()
    if d.settings.auth.admin_token is None:
        return common.error(
            403, "admin API disabled: set REMEDIATOR_ADMIN_TOKEN (auth.admin_token_env)"
        )
    return common.error(401, "missing or wrong admin token", **{"WWW-Authenticate": "Bearer"})


def _read_refused(request: web.Request, d: Daemon) -> web.Response | None:
    """The 401/403 answer (counted) when this client may not read, else None."""
    refusal = auth.read_refusal(request, d.settings.auth)
    if refusal is None:
        return None
    status, message = refusal
    d.metrics.bad_input.labels(
        source="api", kind="unauthorized" if status == 401 else "forbidden"
    ).inc()
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return common.error(status, message, **headers)


_USERINFO = re.compile(r"(?<=://)([^/@\s:]*):[^/@\s]*@")
REDACTED = "[redacted]"


def shown(value: Any, secrets: frozenset[str]) -> Any:
    """What an answer may show of a value from the audit or the rules: every secret the
    config read replaced, passwords in URLs replaced, and query texts (a `query` key, as
    postgres.terminate_queries records them) with their literals replaced by `?`."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _USERINFO.sub(rf"\1:{REDACTED}@", value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "query" and isinstance(v, str):
                out[k] = shown(postgres.query_text(v, chars=len(v) + 1, redact=True), secrets)
            else:
                out[k] = shown(v, secrets)
        return out
    if isinstance(value, list):
        return [shown(v, secrets) for v in value]
    return value


async def rules(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    refused = _read_refused(request, d)
    if refused is not None:
        return refused
    now = d.clock.now()
    out: list[dict[str, Any]] = []
    for rule in d.engine.index.rules:
        out.append(
            {
                "name": rule.name,
                "description": rule.description,
                "runbook_url": rule.runbook_url,
                "source": rule.source,
                "file": f"{rule.file}:{rule.line}",
                "matchers": [str(m) for m in rule.matchers],
                "for_seconds": rule.for_,
                "action": rule.action.type,
                "escalate": rule.escalate.type if rule.escalate else None,
                "limits": {
                    "cooldown_seconds": rule.limits.cooldown,
                    "max_attempts": rule.limits.max_attempts,
                    "window_seconds": rule.limits.window,
                    "max_actions": rule.limits.max_actions,
                    "retry_while_firing": rule.limits.retry_while_firing,
                },
                "verify": {"resolve_within_seconds": rule.resolve_within},
                "circuit_breaker": {
                    "open_after": rule.circuit_breaker.open_after,
                    "reset_after_seconds": rule.circuit_breaker.reset_after,
                },
                "state": await d.state.snapshot(rule, now),
            }
        )
    return web.json_response(
        {
            "rules": shown(out, d.settings.secrets),
            "paused": d.state.paused,
            "dry_run": d.settings.dry_run,
        }
    )


async def decisions(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    refused = _read_refused(request, d)
    if refused is not None:
        return refused
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
        before = int(q["before"]) if "before" in q else None
        if before is not None and not 0 < before < 2**63:
            raise ValueError("before must be a decision id (next_before of the previous page)")
        since = _since(q["since"], now=d.clock.now()) if "since" in q else None
    except ValueError as exc:
        return common.error(400, f"bad query: {exc}")
    if not 1 <= limit <= 1000:
        return common.error(400, "limit must be in 1..1000")
    outcome = q.get("outcome")
    if outcome is not None and outcome not in ("executed", "dry_run", "failed", "skipped"):
        return common.error(400, "outcome must be executed, dry_run, failed or skipped")
    query = Query(
        rule=q.get("rule"), alertname=q.get("alertname"), outcome=outcome, since=since,
        before=before, limit=limit,
    )  # fmt: skip
    rows = await d.audit.query(query)
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return web.json_response(
        {"decisions": shown(rows, d.settings.secrets), "next_before": next_before}
    )


def _since(text: str, *, now: float) -> dt.datetime:
    """RFC 3339, Unix seconds, or a duration ago (`15m`)."""
    from remediator import durations  # noqa: PLC0415 - only this query form needs it

    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        return dt.datetime.fromtimestamp(now - durations.parse(text), dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"since={text!r}: expected RFC 3339, Unix seconds or a duration") from exc
