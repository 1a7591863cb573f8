"""The console at /ui: what remediator did and why, for a human at 3 a.m.

    GET  /ui                         decisions, newest first: filters, pages, a chart
    GET  /ui/decisions/{id}          one decision's whole story and its occurrence's others
    GET  /ui/rules, /ui/rules/{name} rules with their live state; a rule and its file
    GET  /ui/approvals               what awaits a human, with Approve / Reject
    POST /ui/pause, /ui/resume       the global or a rule's pause (admin)
    POST /ui/approvals/{id}          approve or reject (admin, or the rule's approver)
    GET|POST /ui/login, POST /ui/logout

Server-rendered (Jinja2, autoescaped), no JavaScript: every control is a form. Reads are
allowed as for the API (web/auth.read_refusal): with tokens configured a viewer signs in
with one — a read, admin or approver token — into a signed HttpOnly, SameSite=Strict
cookie (auth.session_cookie), or sends it as a Bearer header; a form posted with a cookie
carries a CSRF token bound to the session. Every value shown passes api.shown (secrets
and query literals redacted); label values are text, never markup or a link.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from remediator.backends import state as state_mod
from remediator.backends.audit import Query
from remediator.models.alert import iso_ts, parse_time
from remediator.models.decision import GUARDS, Outcome, Reason
from remediator.web import api, auth, common, server
from remediator.web import approvals as approvals_web

if TYPE_CHECKING:
    from remediator.models.rule import Rule
    from remediator.runner import Daemon

HERE = Path(__file__).parent
CSS = HERE / "static" / "console.css"
PAGE = 50
"""Decisions per page of the timeline."""
CHART_HOURS = 24
MAX_FORM = 8192
"""Largest console form read (a pause reason is at most 500 characters)."""
RULE_FILE_LINES = 400
"""Lines of a rule file the rule's page shows at most, from the rule's own line."""
SOURCE = "ui"
OUTCOME_ORDER = (
    str(Outcome.EXECUTED), str(Outcome.FAILED), str(Outcome.DRY_RUN),
    str(Outcome.AWAITING_APPROVAL), str(Outcome.SKIPPED),
)  # fmt: skip
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""No script may run, no other site may frame or post into the console."""
NOTICES = {
    "paused": "Paused.", "resumed": "Resumed.", "approved": "Approved: it runs now.",
    "rejected": "Rejected: nothing will run.", "signed_out": "Signed out.",
}  # fmt: skip
"""What a page says after a form it redirected from (a fixed set: no text from the URL)."""

CHART_REFRESH = 60.0
"""Seconds the chart's counts are reused: it reads a day of the audit."""
_ENV: web.AppKey[jinja2.Environment] = web.AppKey("ui_templates")
_CHART: web.AppKey[dict[str, Any]] = web.AppKey("ui_chart")
_CSS: web.AppKey[bytes] = web.AppKey("ui_css")
_Handler = Callable[[web.Request, "Daemon", "Viewer"], Awaitable[web.Response]]


def setup(app: web.Application) -> None:
    app[_ENV] = environment()
    app[_CHART] = {}
    app[_CSS] = CSS.read_bytes()  # at start, not on the loop at the first request
    app.router.add_get("/ui", decisions)
    app.router.add_get("/ui/", _to_ui)
    app.router.add_get("/ui/decisions/{id}", decision)
    app.router.add_get("/ui/rules", rules)
    app.router.add_get("/ui/rules/{name}", rule_page)
    app.router.add_get("/ui/approvals", approvals)
    app.router.add_post("/ui/approvals/{id}", decide)
    app.router.add_post("/ui/pause", pause)
    app.router.add_post("/ui/resume", resume)
    app.router.add_get("/ui/login", login_page)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/static/console.css", css)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        auto_reload=False,  # templates ship with the package: no stat() per render
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = short_time
    env.filters["pretty"] = pretty
    env.filters["seconds"] = seconds
    env.filters["web_url"] = web_url
    env.filters["labels"] = lambda d: ", ".join(f"{k}={v}" for k, v in sorted(d.items()))
    return env


# -- who is looking -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Viewer:
    role: str
    """auth.READ, ADMIN or APPROVER; "" for a loopback client where no token is set."""
    name: str = ""
    cookie: str = ""
    """The session cookie it came with ("": a Bearer header, or no sign-in)."""
    token: str = ""

    @property
    def admin(self) -> bool:
        return self.role == auth.ADMIN

    @property
    def csrf(self) -> str:
        return auth.csrf_token(self.token, self.cookie) if self.cookie else ""

    @property
    def label(self) -> str:
        if self.role == auth.APPROVER:
            return f"approver {self.name}"
        return self.role or "loopback (no tokens configured)"

    def approves(self, rule: Rule) -> bool:
        if self.admin:
            return True
        approval = rule.approval
        return (
            self.role == auth.APPROVER and approval is not None and self.name in approval.approvers
        )


def _viewer(request: web.Request, d: Daemon) -> Viewer | None:
    """Who the request is from — a Bearer token, then a session cookie — or None."""
    cfg, tokens = d.settings.auth, d.settings.approvals.tokens
    found = auth.bearer_role(request, cfg, tokens)
    if found is not None:
        return Viewer(*found)
    cookie = request.cookies.get(auth.SESSION_COOKIE, "")
    if cookie:
        session = auth.session_role(cookie, cfg, tokens, now=d.clock.now())
        if session is not None:
            role, name, token = session
            return Viewer(role, name, cookie, token)
    if not cfg.reads_need_token and server.is_loopback(server.client_of(request.transport)):
        return Viewer("")
    return None


async def _who(request: web.Request) -> tuple[Daemon, Viewer] | web.Response:
    """The daemon and the viewer, or the refusal: the sign-in page (401) where tokens are
    set, a 403 page for another host where none is."""
    d = request.app[common.DAEMON]
    viewer = _viewer(request, d)
    if viewer is not None:
        return d, viewer
    status, message = auth.read_refusal(request, d.settings.auth) or (401, "sign in")
    if d.settings.approvals.tokens:
        status = 401  # an approver may sign in from anywhere
    d.metrics.bad_input.labels(
        source=SOURCE, kind="unauthorized" if status == 401 else "forbidden"
    ).inc()
    if status == 401:
        return _login(request, d, status=401, next_=request.path_qs, problem="")
    return _error(request, d, None, 403, message)


def _page(handler: _Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A page for whoever may read: the handler gets the daemon and the viewer."""

    @functools.wraps(handler)
    async def serve(request: web.Request) -> web.Response:
        who = await _who(request)
        if isinstance(who, web.Response):
            return who
        return await handler(request, *who)

    return serve


# -- pages ------------------------------------------------------------------------------


@_page
async def decisions(request: web.Request, d: Daemon, viewer: Viewer) -> web.Response:
    q = request.query
    now = d.clock.now()
    problem, rows = "", []
    try:
        query = api.decisions_query(q, now=now, limit=PAGE)
    except ValueError as exc:  # no rows: unfiltered ones would pass for the filtered
        problem, query = str(exc), Query(limit=PAGE)
    else:
        rows = api.shown(await d.audit.query(query), d.settings.secrets)
    hist = await _histogram(request, d, now)
    filters = {k: q.get(k, "") for k in ("rule", "alertname", "outcome", "target", "since")}
    older = ""
    if len(rows) == query.limit:
        older = "/ui?" + urllib.parse.urlencode(
            {**{k: v for k, v in filters.items() if v}, "before": rows[-1]["id"]}
        )
    return _render(
        request, d, viewer, "decisions.html", status=400 if problem else 200, nav="decisions",
        rows=rows, filters=filters, problem=problem, older=older,
        newest="/ui?" + urllib.parse.urlencode({k: v for k, v in filters.items() if v}),
        paging=bool(q.get("before")),
        rule_names=sorted({*d.engine.index.by_name, filters["rule"]} - {""}),
        outcomes=OUTCOME_ORDER, chart=chart(hist, now),
    )  # fmt: skip


@_page
async def decision(request: web.Request, d: Daemon, viewer: Viewer) -> web.Response:
    text = request.match_info["id"]
    number = common.decision_id(text)
    if number is None:
        return _error(request, d, viewer, 400, "a decision id is a positive integer")
    found = await d.audit.get(number)
    if found is None:
        return _error(request, d, viewer, 404, f"no decision {text}")
    row = api.shown(found, d.settings.secrets)
    others = await d.audit.query(
        Query(fingerprint=found["fingerprint"], starts_at=found["starts_at"], limit=100)
    )
    rule = d.engine.index.by_name.get(found["rule"])
    live = [
        r for r in (d.engine.loop.snapshot(rule.name) if rule else [])
        if r["fingerprint"] == found["fingerprint"] and r["starts_at"] == found["starts_at"]
    ]  # fmt: skip
    return _render(
        request, d, viewer, "decision.html", nav="decisions", row=row, rule=rule,
        guards=story(found), occurrence=api.shown(list(reversed(others)), d.settings.secrets),
        live=api.shown(live, d.settings.secrets),
        awaiting=rule is not None and d.engine.loop.approval(number) is not None,
        approves=rule is not None and viewer.approves(rule),
    )  # fmt: skip


@_page
async def rules(request: web.Request, d: Daemon, viewer: Viewer) -> web.Response:
    now, pauses = d.clock.now(), d.state.pauses()
    views = [await api.rule_view(d, r, now, pauses) for r in d.engine.index.rules]
    return _render(
        request, d, viewer, "rules.html", nav="rules",
        rules=api.shown(views, d.settings.secrets),
    )  # fmt: skip


@_page
async def rule_page(request: web.Request, d: Daemon, viewer: Viewer) -> web.Response:
    rule = d.engine.index.by_name.get(request.match_info["name"])
    if rule is None:
        return _error(request, d, viewer, 404, "no rule of that name is loaded")
    view = await api.rule_view(d, rule, d.clock.now(), d.state.pauses())
    recent = await d.audit.query(Query(rule=rule.name, limit=20))
    lines = await asyncio.to_thread(_file_lines, rule.file, rule.line)
    return _render(
        request, d, viewer, "rule.html", nav="rules", rule=api.shown(view, d.settings.secrets),
        recent=api.shown(recent, d.settings.secrets), approvers=rule.approval.approvers
        if rule.approval else (), lines=api.shown(lines, d.settings.secrets), line=rule.line,
    )  # fmt: skip


@_page
async def approvals(request: web.Request, d: Daemon, viewer: Viewer) -> web.Response:
    pending = []
    for rem in sorted(d.engine.loop.awaiting_approval(), key=lambda r: r.decision_id):
        item = approvals_web.view(rem)
        item["may_decide"] = viewer.approves(approvals_web.rule_now(d, rem))
        item["summary"] = rem.alert.annotations.get("summary", "")
        pending.append(item)
    return _render(
        request, d, viewer, "approvals.html", nav="approvals",
        pending=api.shown(pending, d.settings.secrets),
    )  # fmt: skip


async def css(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[_CSS], content_type="text/css", headers={"Cache-Control": "max-age=3600"}
    )


async def _to_ui(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


# -- controls ---------------------------------------------------------------------------


async def pause(request: web.Request) -> web.Response:
    return await _pause(request, resume=False)


async def resume(request: web.Request) -> web.Response:
    return await _pause(request, resume=True)


async def _pause(request: web.Request, *, resume: bool) -> web.Response:
    ready = await _posted(request)
    if isinstance(ready, web.Response):
        return ready
    d, viewer, form = ready
    if not viewer.admin:
        return _error(request, d, viewer, 403, "pausing and resuming needs the admin token")
    key = form.get("rule", "")
    back = f"/ui/rules/{urllib.parse.quote(key)}" if key else "/ui/rules"
    if key and key not in d.engine.index.by_name and not (resume and key in d.state.pauses()):
        return _error(request, d, viewer, 404, "no rule of that name is loaded")
    if resume:
        await d.set_pause(key, None, by=viewer.label)
        return _back(back, "resumed")
    try:
        fields = {"reason": form.get("reason", ""), "until": form.get("until") or None}
        p = api.pause_from(fields, now=d.clock.now(), by=f"{viewer.label} via console")
    except ValueError as exc:
        return _error(request, d, viewer, 400, f"bad pause request: {exc}", back=back)
    await d.set_pause(key, p, by=p.by)
    return _back(back, "paused")


async def decide(request: web.Request) -> web.Response:
    ready = await _posted(request)
    if isinstance(ready, web.Response):
        return ready
    d, viewer, form = ready
    choice = form.get("decision", "")
    if choice not in ("approve", "reject"):
        return _error(request, d, viewer, 400, "decision must be approve or reject")
    if not viewer.admin and viewer.role != auth.APPROVER:
        return _error(request, d, viewer, 403, "deciding needs an approver or the admin token")
    text = request.match_info["id"]
    status, what = await approvals_web.decide(
        d, (viewer.name, viewer.admin), text, approve=choice == "approve",
        reason=form.get("reason", ""), via="console",
    )  # fmt: skip
    if status != 200:
        return _error(request, d, viewer, status, what, back="/ui/approvals")
    return _back(f"/ui/decisions/{text}", "approved" if choice == "approve" else "rejected")


async def _posted(request: web.Request) -> tuple[Daemon, Viewer, dict[str, str]] | web.Response:
    """The viewer and the form of a console POST, once its CSRF token is checked."""
    who = await _who(request)
    if isinstance(who, web.Response):
        return who
    d, viewer = who
    if not _same_site(request, d):
        return _cross_site(request, d, viewer)
    try:
        form = await _form(request, d)
    except ValueError as exc:
        return _error(request, d, viewer, 400, str(exc))
    if viewer.cookie and not auth.csrf_ok(form.get("csrf", ""), viewer.token, viewer.cookie):
        d.metrics.bad_input.labels(source=SOURCE, kind="csrf").inc()
        return _error(request, d, viewer, 403, "the form is stale or from elsewhere: reload "
                      "the page and try again")  # fmt: skip
    return d, viewer, form


def _same_site(request: web.Request, d: Daemon) -> bool:
    """A console POST comes from a console page, whatever credential it carries (a proxy
    may inject a Bearer header into another site's POST too): a browser's
    Sec-Fetch-Site is same-origin (or none: typed by the user), and its Origin, when
    sent, is this host or external_url's. A client that is not a browser sends neither."""
    site = request.headers.get("Sec-Fetch-Site", "")
    if site and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    ours = {f"{request.scheme}://{request.host}"}
    if d.settings.external_url:
        parts = urllib.parse.urlsplit(d.settings.external_url)
        ours.add(f"{parts.scheme}://{parts.netloc}")
    return origin in ours


def _cross_site(request: web.Request, d: Daemon, viewer: Viewer | None) -> web.Response:
    d.metrics.bad_input.labels(source=SOURCE, kind="csrf").inc()
    return _error(request, d, viewer, 403, "this form was posted from another site: use the "
                  "console's own pages")  # fmt: skip


async def _form(request: web.Request, d: Daemon) -> dict[str, str]:
    """A small urlencoded form, read whole: each field once, UTF-8."""
    raw = await common.small_body(request, d, MAX_FORM)
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError("the form is not UTF-8 urlencoded") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise ValueError(f"form field {key[:40]!r} given twice")
        form[key] = value.strip()
    return form


def _back(path: str, notice: str) -> web.Response:
    raise web.HTTPSeeOther(f"{path}?notice={notice}", headers=HEADERS)


# -- signing in -------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    return _login(request, d, status=200, next_=request.query.get("next", "/ui"), problem="")


async def login(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    if not _same_site(request, d):
        return _cross_site(request, d, None)
    try:
        form = await _form(request, d)
    except ValueError as exc:
        return _login(request, d, status=400, next_="/ui", problem=str(exc))
    next_ = form.get("next", "/ui")
    cfg, tokens = d.settings.auth, d.settings.approvals.tokens
    found = auth.token_role(form.get("token", ""), cfg, tokens)
    if found is None:
        d.metrics.bad_input.labels(source=SOURCE, kind="unauthorized").inc()
        return _login(request, d, status=401, next_=next_, problem="That token is not one of "
                      "this daemon's read, admin or approver tokens.")  # fmt: skip
    role, name = found
    token = form["token"]
    cookie = auth.session_cookie(role, name, token, now=d.clock.now())
    response = web.HTTPSeeOther(_local(next_), headers=HEADERS)
    response.set_cookie(
        auth.SESSION_COOKIE, cookie, max_age=auth.SESSION_SECONDS, path="/ui", httponly=True,
        samesite="Strict", secure=request.secure or d.settings.external_url.startswith("https:"),
    )  # fmt: skip
    raise response


async def logout(request: web.Request) -> web.Response:
    d = request.app[common.DAEMON]
    if not _same_site(request, d):
        return _cross_site(request, d, None)
    response = web.HTTPSeeOther("/ui/login?notice=signed_out", headers=HEADERS)
    response.del_cookie(auth.SESSION_COOKIE, path="/ui")
    raise response


def _local(path: str) -> str:
    """Where to go after signing in: only a console page (never another site)."""
    if path.startswith("/ui") and not path.startswith("//") and "\\" not in path:
        return path
    return "/ui"


def _login(
    request: web.Request, d: Daemon, *, status: int, next_: str, problem: str
) -> web.Response:
    cfg = d.settings.auth
    page = _template(request, "login.html").render(
        next=_local(next_), problem=problem, notice=_notice(request),
        tokens=cfg.reads_need_token or bool(d.settings.approvals.tokens), viewer=None,
        pause=None, paused_rules=[], dry_run=d.settings.dry_run, nav="", title="Sign in",
    )  # fmt: skip
    headers = dict(HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.Response(text=page, status=status, content_type="text/html", headers=headers)


# -- rendering --------------------------------------------------------------------------


def _notice(request: web.Request) -> str:
    return NOTICES.get(request.query.get("notice", ""), "")


def _template(request: web.Request, name: str) -> jinja2.Template:
    return request.app[_ENV].get_template(name)


def _render(
    request: web.Request, d: Daemon, viewer: Viewer, name: str, *, status: int = 200, **ctx: Any
) -> web.Response:
    now = d.clock.now()
    pauses = {k: p for k, p in d.state.pauses().items() if p.active(now)}
    main = pauses.pop(state_mod.GLOBAL, None)
    page = _template(request, name).render(
        viewer=viewer, dry_run=d.settings.dry_run, now=iso_ts(now),
        pause=api.shown(api.pause_view(main), d.settings.secrets),
        paused_rules=sorted(pauses), notice=_notice(request), status=status,
        **ctx,
    )  # fmt: skip
    return web.Response(text=page, status=status, content_type="text/html", headers=HEADERS)


def _error(
    request: web.Request, d: Daemon, viewer: Viewer | None, status: int, message: str,
    *, back: str = "/ui",
) -> web.Response:  # fmt: skip
    if viewer is None:
        page = _template(request, "error.html").render(
            viewer=None, pause=None, paused_rules=[], dry_run=d.settings.dry_run, notice="",
            nav="", status=status, message=message, back=back,
        )  # fmt: skip
        return web.Response(text=page, status=status, content_type="text/html", headers=HEADERS)
    return _render(
        request, d, viewer, "error.html", status=status, nav="", message=message, back=back
    )


# -- what the pages compute -------------------------------------------------------------


async def _histogram(request: web.Request, d: Daemon, now: float) -> list[tuple[str, str, int]]:
    """The last CHART_HOURS of decisions per hour and outcome, read at most once per
    CHART_REFRESH (many viewers, or one reloading, cost one scan of the day)."""
    cache = request.app[_CHART]
    if cache.get("at") is None or not 0 <= now - cache["at"] < CHART_REFRESH:
        since = dt.datetime.fromtimestamp(now - CHART_HOURS * 3600, dt.UTC)
        cache["hist"], cache["at"] = await d.audit.histogram(since), now
    hist: list[tuple[str, str, int]] = cache["hist"]
    return hist


def story(row: dict[str, Any]) -> list[dict[str, str]]:
    """Each guard of the chain and what it said of this decision, in order.

    The audit records the one verdict that decided (reason, detail): guards before it
    passed, those after it were not reached."""
    outcome, reason = row["outcome"], row["reason"]
    refused_at = next((i for i, (_, rs) in enumerate(GUARDS) if reason in rs), None)
    asked = next(i for i, (name, _) in enumerate(GUARDS) if name == "approval")
    if (
        refused_at is not None
        and refused_at < asked
        and str(row.get("approval")).startswith("approved")
    ):
        return _refused_after_approval(row, refused_at, asked)
    out = []
    for i, (name, _) in enumerate(GUARDS):
        verdict, detail = "passed", ""
        if refused_at is not None and i > refused_at:
            verdict = "not reached"
        elif refused_at == i:
            verdict = "failed" if outcome == str(Outcome.FAILED) else "refused"
            detail = row["detail"]
        elif name == "silenced" and row.get("silence"):
            detail = f"silence {row['silence']}"
        elif name == "approval":
            if outcome == str(Outcome.AWAITING_APPROVAL):
                verdict, detail = "awaiting", "a human approves or rejects it"
            elif row.get("approval"):
                detail = row["approval"]
            else:
                verdict = "not required"
        elif name == "dry-run":
            if outcome == str(Outcome.DRY_RUN):
                verdict = "dry run"
                detail = "global dry_run: nothing changed" if reason == str(Reason.NONE) else ""
            elif outcome == str(Outcome.AWAITING_APPROVAL):
                verdict = "not reached"
        elif name == "act":
            verdict = {
                str(Outcome.EXECUTED): "done", str(Outcome.DRY_RUN): "not run",
                str(Outcome.AWAITING_APPROVAL): "not reached",
            }.get(outcome, verdict)  # fmt: skip
            if outcome == str(Outcome.FAILED):
                verdict, detail = "failed", row["detail"]
        out.append({"guard": name, "verdict": verdict, "detail": detail})
    return out


def _refused_after_approval(
    row: dict[str, Any], refused_at: int, asked: int
) -> list[dict[str, str]]:
    """A human approved, and the guards run again at approval refused: every guard
    passed up to the approval, then the one that refused on its second look."""
    out = [{"guard": name, "verdict": "passed", "detail": ""} for name, _ in GUARDS[:asked]]
    out.append({"guard": "approval", "verdict": "approved", "detail": row["approval"]})
    again = GUARDS[refused_at][0]
    out.append({"guard": f"{again} (again)", "verdict": "refused", "detail": row["detail"]})
    out += [
        {"guard": name, "verdict": "not reached", "detail": ""} for name, _ in GUARDS[asked + 1 :]
    ]
    return out


def chart(hist: list[tuple[str, str, int]], now: float) -> dict[str, Any]:
    """Decisions per hour and outcome over the last CHART_HOURS as stacked SVG bars."""
    last = dt.datetime.fromtimestamp(now, dt.UTC).replace(minute=0, second=0, microsecond=0)
    hours = [(last - dt.timedelta(hours=n)).strftime("%Y-%m-%dT%H") for n in range(CHART_HOURS)]
    hours.reverse()
    counts: dict[str, dict[str, int]] = {h: {} for h in hours}
    for hour, outcome, n in hist:
        if hour in counts:
            counts[hour][outcome] = counts[hour].get(outcome, 0) + n
    top = max((sum(c.values()) for c in counts.values()), default=0) or 1
    height, width = 120.0, 24.0
    bars = []
    for x, hour in enumerate(hours):
        y, parts = height, []
        for outcome in OUTCOME_ORDER:
            n = counts[hour].get(outcome, 0)
            if n:
                h = max(1.0, height * n / top)
                y -= h
                parts.append({"outcome": outcome, "n": n, "y": round(y, 1), "h": round(h, 1)})
        bars.append({"x": x * width, "hour": hour[11:13], "day": hour[:10], "parts": parts,
                     "total": sum(counts[hour].values())})  # fmt: skip
    totals = {o: sum(c.get(o, 0) for c in counts.values()) for o in OUTCOME_ORDER}
    return {"bars": bars, "top": top, "width": width, "height": height, "totals": totals}


def _file_lines(path: str, line: int) -> list[tuple[int, str]]:
    """The rule's file as numbered lines, from a little before its own line (in a thread:
    it reads the disk). The file as it is now, which a reload makes what is loaded."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = max(1, line - 3)
            out = []
            for n, text in enumerate(f, start=1):
                if n >= first + RULE_FILE_LINES:
                    break
                if n >= first:
                    out.append((n, text.rstrip("\n")[:400]))
            return out
    except OSError:
        return []


def short_time(value: Any) -> str:
    """`2026-12-01 22:01:05` from our RFC 3339 (UTC), or the value as it came."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        return parse_time(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def pretty(value: Any) -> str:
    if value in (None, "", {}, []):
        return ""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def seconds(value: Any) -> str:
    """A duration in seconds as a human reads it: 90 → 1m30s."""
    if not isinstance(value, int | float):
        return ""
    total = round(value)
    if total < 60:
        return f"{total}s"
    m, s = divmod(total, 60)
    h, m = divmod(m, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")


def web_url(value: Any) -> str:
    """A link only when it is http(s); anything else (javascript:, data:) is not a link."""
    if isinstance(value, str) and value.lower().startswith(("https://", "http://")):
        return value
    return ""
