"""Probes, metrics, and the control and audit API (`/api/v1/...`, `/-/reload`)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from remediator import durations
from remediator.actions import postgres
from remediator.backends import state as state_mod
from remediator.backends.audit import Query
from remediator.models.alert import iso_ts, parse_time
from remediator.models.decision import Outcome
from remediator.web import auth, common

if TYPE_CHECKING:
    from remediator.models.rule import Rule
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


MAX_PAUSE_BODY = 4096


async def pause(request: web.Request) -> web.Response:
    """Pause every rule: `{"reason": "...", "until": "30m" | RFC 3339, "by": "..."}`."""
    return await _pause(request, state_mod.GLOBAL)


async def resume(request: web.Request) -> web.Response:
    return await _resume(request, state_mod.GLOBAL)


async def pause_rule(request: web.Request) -> web.Response:
    return await _pause(request, request.match_info["name"])


async def resume_rule(request: web.Request) -> web.Response:
    return await _resume(request, request.match_info["name"])


async def _pause(request: web.Request, key: str) -> web.Response:
    d = request.app[common.DAEMON]
    if not auth.admin_ok(request, d.settings.auth):
        return _admin_refused(d)
    if key and key not in d.engine.index.by_name:
        return common.error(404, f"no rule named {key!r}")
    try:
        body = await common.small_json(request, d, MAX_PAUSE_BODY)
        pause = pause_from(body, now=d.clock.now(), by=request.remote or "")
    except ValueError as exc:
        return common.error(400, f"bad pause request: {exc}")
    await d.set_pause(key, pause, by=pause.by)
    return web.json_response({"status": "ok", "paused": True, "pause": pause_view(pause)})


def pause_from(body: Mapping[str, Any], *, now: float, by: str) -> state_mod.Pause:
    """A pause from what a request asked (`reason`, `until`, `by`); ValueError if bad."""
    reason = _text(body, "reason", 500)
    who = _text(body, "by", 100) or by
    return state_mod.Pause(
        by=who, reason=reason, since=now, until=_until(body.get("until"), now=now)
    )


async def _resume(request: web.Request, key: str) -> web.Response:
    d = request.app[common.DAEMON]
    if not auth.admin_ok(request, d.settings.auth):
        return _admin_refused(d)
    if key and key not in d.engine.index.by_name and key not in d.state.pauses():
        return common.error(404, f"no rule named {key!r}")
    await d.set_pause(key, None, by=request.remote or "")
    return web.json_response({"status": "ok", "paused": False})


def _text(body: Mapping[str, Any], key: str, max_len: int) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > max_len or not value.isprintable():
        raise ValueError(f"{key} must be printable text of at most {max_len} characters")
    return value


MAX_PAUSE_SECONDS = 366 * 86400
"""The furthest `until` a pause takes; beyond it, a pause without `until` says it better."""


def _until(value: Any, *, now: float) -> float | None:
    """`until`: RFC 3339, or a duration from now (`30m`); absent or null: until resumed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("until must be RFC 3339 or a duration like 30m")
    try:
        until = parse_time(value).timestamp()
    except ValueError:
        try:
            until = now + durations.parse(value)
        except ValueError as exc:
            raise ValueError(f"until={value!r}: expected RFC 3339 or a duration") from exc
    if until <= now:
        raise ValueError("until lies in the past")
    if until > now + MAX_PAUSE_SECONDS:
        raise ValueError("until is more than a year away: leave it out to pause until resumed")
    return until


def pause_view(p: state_mod.Pause | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "by": p.by, "reason": p.reason, "since": iso_ts(p.since),
        "until": iso_ts(p.until) if p.until is not None else None,
    }  # fmt: skip


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
    pauses = d.state.pauses()
    out = [await rule_view(d, rule, now, pauses) for rule in d.engine.index.rules]
    main = pauses.get(state_mod.GLOBAL)
    active = main is not None and main.active(now)
    return web.json_response(
        {
            "rules": shown(out, d.settings.secrets), "paused": active,
            "pause": pause_view(main if active else None), "dry_run": d.settings.dry_run,
        }
    )  # fmt: skip


async def rule_view(
    d: Daemon, rule: Rule, now: float, pauses: Mapping[str, state_mod.Pause]
) -> dict[str, Any]:
    """A rule and its live state as `/api/v1/rules` and the console show it (not redacted)."""
    rule_pause = pauses.get(rule.name)
    return {
        "name": rule.name,
        "description": rule.description,
        "runbook_url": rule.runbook_url,
        "source": rule.source,
        "file": f"{rule.file}:{rule.line}",
        "matchers": [str(m) for m in rule.matchers],
        "for_seconds": rule.for_,
        "action": rule.action.type,
        "steps": [
            {"action": s.action.type, "resolve_within_seconds": s.resolve_within}
            for s in rule.steps
        ],
        "dry_run": rule.dry_run,
        "paused": pause_view(rule_pause if rule_pause and rule_pause.active(now) else None),
        "remediations": d.engine.loop.snapshot(rule.name),
        "escalate": rule.escalate.type if rule.escalate else None,
        "limits": {
            "cooldown_seconds": rule.limits.cooldown,
            "max_attempts": rule.limits.max_attempts,
            "window_seconds": rule.limits.window,
            "max_actions": rule.limits.max_actions,
            "retry_while_firing": rule.limits.retry_while_firing,
        },
        "circuit_breaker": {
            "open_after": rule.circuit_breaker.open_after,
            "reset_after_seconds": rule.circuit_breaker.reset_after,
        },
        "state": await d.state.snapshot(rule, now),
    }


async def decision(request: web.Request) -> web.Response:
    """One decision's whole row: `GET /api/v1/decisions/{id}` (the link escalations carry)."""
    d = request.app[common.DAEMON]
    refused = _read_refused(request, d)
    if refused is not None:
        return refused
    text = request.match_info["id"]
    found = common.decision_id(text)
    if found is None:
        return common.error(400, "a decision id is a positive integer")
    row = await d.audit.get(found)
    if row is None:
        return common.error(404, f"no decision {text}")
    return web.json_response(shown(row, d.settings.secrets))


async def decisions(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    refused = _read_refused(request, d)
    if refused is not None:
        return refused
    try:
        query = decisions_query(request.query, now=d.clock.now())
    except ValueError as exc:
        return common.error(400, f"bad query: {exc}")
    rows = await d.audit.query(query)
    next_before = rows[-1]["id"] if len(rows) == query.limit else None
    return web.json_response(
        {"decisions": shown(rows, d.settings.secrets), "next_before": next_before}
    )


OUTCOMES = tuple(str(o) for o in Outcome)


def decisions_query(q: Mapping[str, str], *, now: float, limit: int = 100) -> Query:
    """The audit query a request's parameters ask for (rule, alertname, outcome, target,
    since, before, limit); ValueError says what is wrong. Empty values filter nothing; a
    parameter given twice is refused (which one was meant?)."""
    getall = getattr(q, "getall", None)
    if getall is not None:
        twice = sorted(k for k in set(q) if len(getall(k)) > 1)
        if twice:
            raise ValueError(f"{twice[0][:40]!r} given more than once")
    try:
        limit = int(q.get("limit") or limit)
        before = int(q["before"]) if q.get("before") else None
    except ValueError as exc:
        raise ValueError("limit and before are integers") from exc
    if before is not None and not 0 < before < 2**63:
        raise ValueError("before must be a decision id (next_before of the previous page)")
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be in 1..1000")
    since = _since(q["since"], now=now) if q.get("since") else None
    outcome = q.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    return Query(
        rule=q.get("rule") or None, alertname=q.get("alertname") or None, outcome=outcome,
        target=q.get("target") or None, since=since, before=before, limit=limit,
    )  # fmt: skip


def _since(text: str, *, now: float) -> dt.datetime:
    """RFC 3339, Unix seconds, or a duration ago (`15m`)."""
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
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"since={text!r}: expected RFC 3339, Unix seconds or a duration") from exc
