"""`docker.restart`: restart a container through the Docker Engine API socket.

The runbook step "APIDown on a compose host: `docker compose restart backend`". A rule
names either one container (`container`: its exact name, or its full id) or one compose
service (`compose_service: project/service`, every container of it, one after the
other). Both must be on the `docker:` allow-lists, checked before any request is made:
a label value can only ever pick a container the config already names.

A restart counts as done only once it is read back: the container is inspected after
the engine's 204 and must be running with a new `State.StartedAt`; when it has a health
check (the image's HEALTHCHECK or the container's), the action waits, bounded by
`docker.health_timeout` and the action's time, for `healthy`. A container that exits,
reports `unhealthy` or is still `starting` at the bound is a failed attempt whose detail
quotes the health check's last output, and the containers of a service after it are left
alone: a rolling restart stops at the first container that does not come back.

A restart is not safe to repeat blindly (each one cuts the service), so the action is
not idempotent and the engine never retries it. When the restart call fails after the
engine may have acted on it (HTTP 500, timeout, dropped connection), the container is
inspected again and the failure says what state it was left in — a 500 from a restart
whose start failed leaves the container stopped, which is what a human must know first.
Every failure carries in `data` the containers restarted so far and what was read back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from remediator import errors
from remediator import settings as settings_mod
from remediator.actions import base, params, registry
from remediator.actions.base import Context, Result

if TYPE_CHECKING:
    from remediator.clients.docker import DockerClient

# Docker's own rule for container names (daemon/names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`),
# bounded so that a 10 kB label is refused by format, not sent.
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}")
# A full container id. An allow-list entry is either a name or a full id: never an id
# prefix, which could later match another container (see `_resolve`).
_FULL_ID = re.compile(r"[0-9a-f]{64}")
# Compose normalises project names to this; service names are YAML keys compose accepts.
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_SERVICE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
DEFAULT_STOP_TIMEOUT = 10.0
_MARGIN = 1.0
"""Seconds kept back from a restart call for the inspect that follows it."""
_MAX_LABELS = 20
_MAX_LISTED = 5
"""Containers named in a decision's detail; the `result` holds them all."""
_MAX_LABEL_VALUE = 200
_HEALTH_POLL = 0.25
"""Seconds between inspects while a health check reports `starting`: a local socket
answers in milliseconds, and Docker's own probes run at most this often in practice."""
_HEALTH_LINES = 3
"""Health check results quoted as evidence (the newest of the current run)."""
_HEALTH_OUTPUT = 200
"""Characters kept of each health check's output (Docker itself keeps 4 kB)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DockerConfig:
    """The `docker:` config section: which engine, and what it may restart."""

    socket: str = "/var/run/docker.sock"
    """Path of the engine's unix socket (Docker's default). remediator's user needs
    read/write on it: root or the socket's group. Only a unix socket: no TCP, no TLS."""
    api_version: str = "auto"
    """API version in request paths, like "1.43"; `auto` asks the engine (`GET /version`)
    once, because Docker 29 refuses versions below 1.44 and Docker 24 serves at most 1.43."""
    allowed_containers: frozenset[str] = frozenset()
    """Container names (or full 64-character ids) `container:` may name. Empty: none.
    A container matches only by its exact name or exact full id, never by id prefix."""
    allowed_compose_services: frozenset[str] = frozenset()
    """`project/service` pairs `compose_service:` may name. Empty: none."""
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    """Seconds between SIGTERM and SIGKILL when a rule gives no `stop_timeout`; 10 is
    Docker's and compose's own default, so a restart behaves as `docker restart` does."""
    start_timeout: float = 20.0
    """Seconds a restart call may take beyond `stop_timeout` (the start: networks,
    mounts, the entrypoint's exec). stop_timeout + start_timeout must fit in
    `limits.action_timeout`, or a slow stop could be cut off midway."""
    request_timeout: float = 10.0
    """Seconds for each read call (version, inspect, list): a local socket answers in
    milliseconds, so 10 s only trips on an engine that is stuck."""
    health_timeout: float = 30.0
    """Seconds to wait after a restart for a container with a health check to report
    `healthy` (never longer than what is left of `limits.action_timeout`). 30 s leaves
    the defaults (10 s stop + 20 s start + 30 s) within the default 60 s action timeout;
    raise both for a service that warms up slowly (its HEALTHCHECK's start period)."""


def _whole_seconds(path: str, value: float, *, lo: float, hi: float) -> float:
    if value != int(value) or not lo <= value <= hi:
        raise errors.ConfigError(path, f"must be whole seconds in {lo:.0f}s..{hi:.0f}s")
    return value


@settings_mod.section("docker")
def _config(r: settings_mod.Reader, env: Mapping[str, str]) -> DockerConfig:
    """Parse `docker:`; every entry of the allow-lists is checked by format here."""
    d = DockerConfig()
    socket = r.text("socket", d.socket)
    if not socket.startswith("/") or "\x00" in socket or len(socket) > 107:
        # 107: the longest path a unix socket address holds (sun_path is 108 bytes).
        raise errors.ConfigError(
            f"{r.prefix}socket", f"must be an absolute path to a unix socket, got {socket!r}"
        )
    api_version = r.text("api_version", d.api_version)
    if api_version != "auto" and not re.fullmatch(r"1\.[0-9]{1,3}", api_version):
        raise errors.ConfigError(
            f"{r.prefix}api_version", f'must be "auto" or like "1.43", got {api_version!r}'
        )
    containers = []
    for i, item in enumerate(r.raw_list("allowed_containers")):
        if not isinstance(item, str) or not _NAME.fullmatch(item):
            raise errors.ConfigError(
                f"{r.prefix}allowed_containers[{i}]",
                f"{item!r} is not a container name ([a-zA-Z0-9][a-zA-Z0-9_.-]+, at most 128)",
            )
        containers.append(item)
    services = []
    for i, item in enumerate(r.raw_list("allowed_compose_services")):
        if not isinstance(item, str) or _split_service(item) is None:
            raise errors.ConfigError(
                f"{r.prefix}allowed_compose_services[{i}]",
                f"{item!r} is not `project/service` (the compose project and service names)",
            )
        services.append(item)
    stop = r.duration("stop_timeout", d.stop_timeout)
    start = r.duration("start_timeout", d.start_timeout)
    request = r.duration("request_timeout", d.request_timeout)
    if not 0.1 <= request <= 60:
        raise errors.ConfigError(f"{r.prefix}request_timeout", "must be in 100ms..60s")
    health = r.duration("health_timeout", d.health_timeout)
    if not 1 <= health <= 600:
        raise errors.ConfigError(f"{r.prefix}health_timeout", "must be in 1s..10m")
    return DockerConfig(
        socket=socket,
        api_version=api_version,
        allowed_containers=frozenset(containers),
        allowed_compose_services=frozenset(services),
        stop_timeout=_whole_seconds(f"{r.prefix}stop_timeout", stop, lo=0, hi=600),
        start_timeout=_whole_seconds(f"{r.prefix}start_timeout", start, lo=1, hi=600),
        request_timeout=request,
        health_timeout=health,
    )


def _split_service(text: str) -> tuple[str, str] | None:
    project, sep, service = text.partition("/")
    if sep and _PROJECT.fullmatch(project) and _SERVICE.fullmatch(service):
        return project, service
    return None


# --------------------------------------------------------------------------- params


def _container() -> params.Validator:
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise errors.ParamError(
                field,
                f"{_show(value)} is not a container name or id "
                "([a-zA-Z0-9][a-zA-Z0-9_.-]+, at most 128)",
            )
        return value

    return check


def _compose_service() -> params.Validator:
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or _split_service(value) is None:
            raise errors.ParamError(
                field, f"{_show(value)} is not `project/service` (compose project and service)"
            )
        return value

    return check


def _stop_timeout() -> params.Validator:
    seconds = params.duration(lo=0, hi=600)

    def check(field: str, value: Any) -> float:
        out: float = seconds(field, value)
        if out != int(out):
            # The engine takes whole seconds (`?t=`); rounding would change what was asked.
            raise errors.ParamError(field, f"{_show(value)} is not a whole number of seconds")
        return out

    return check


def _show(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def _one_target(p: Mapping[str, Any]) -> None:
    if ("container" in p) == ("compose_service" in p):
        raise errors.ParamError("container", "give either `container` or `compose_service`")
    if "max_containers" in p and "compose_service" not in p:
        raise errors.ParamError("max_containers", "only applies with `compose_service`")


# --------------------------------------------------------------------------- the action


class DockerRestart:
    type: ClassVar[str] = "docker.restart"
    # Not idempotent: two restarts cut the service twice, and after a 500 or a timeout
    # the first may well have happened. The engine never retries it; the rule's limits
    # (cooldown, max_attempts, circuit breaker) decide whether it is tried again.
    idempotent: ClassVar[bool] = False
    local: ClassVar[bool] = False
    schema: ClassVar[params.Schema] = params.Schema(
        {
            "container": params.Field(
                _container(),
                required=False,
                doc="container name (or full id) to restart; must be in docker.allowed_containers",
            ),
            "compose_service": params.Field(
                _compose_service(),
                required=False,
                doc="`project/service`: restart every container of that compose service, "
                "one at a time; must be in docker.allowed_compose_services",
            ),
            "stop_timeout": params.Field(
                _stop_timeout(),
                required=False,
                doc="seconds between SIGTERM and SIGKILL (default: docker.stop_timeout)",
            ),
            "max_containers": params.Field(
                params.integer(lo=1, hi=50),
                required=False,
                default=5,
                doc="with compose_service: refuse (restart none) if it has more containers",
            ),
        },
        # How long a container may take to stop, and how many go, is the rule's to say.
        literal=frozenset({"stop_timeout", "max_containers"}),
        across=_one_target,
    )

    def check_allowed(self, values: Mapping[str, Any], settings: settings_mod.Settings) -> None:
        cfg: DockerConfig | None = base.family_config(settings, "docker")
        if cfg is None:
            return
        if "container" in values:
            if values["container"] not in cfg.allowed_containers:
                raise errors.NotAllowed(
                    "container",
                    f"{values['container']!r} is not in `docker.allowed_containers` "
                    f"({_listing(cfg.allowed_containers)})",
                )
        elif values["compose_service"] not in cfg.allowed_compose_services:
            raise errors.NotAllowed(
                "compose_service",
                f"{values['compose_service']!r} is not in `docker.allowed_compose_services` "
                f"({_listing(cfg.allowed_compose_services)})",
            )
        stop = float(values.get("stop_timeout", cfg.stop_timeout))
        budget = settings.budgets.action_timeout
        if stop + cfg.start_timeout > budget:
            raise errors.NotAllowed(
                "stop_timeout",
                f"{stop:.0f}s plus `docker.start_timeout` ({cfg.start_timeout:.0f}s) exceeds "
                f"`limits.action_timeout` ({budget:.0f}s): the restart could be cut off with "
                "the container stopped; lower stop_timeout or raise limits.action_timeout",
            )

    def target(self, values: Mapping[str, Any]) -> str:
        if "container" in values:
            return f"container/{values['container']}"
        return f"compose/{values['compose_service']}"

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg: DockerConfig = base.family_config(ctx.settings, "docker")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.timeout
        client = await _client(ctx, cfg)
        stop = int(values.get("stop_timeout", cfg.stop_timeout))
        found = await _resolve(values, cfg, client, deadline)
        done: list[dict[str, Any]] = []

        def data(*more: dict[str, Any]) -> dict[str, Any]:
            return {"checked": True, "stop_timeout": stop, "containers": [*done, *more]}

        for i, before in enumerate(found):
            name = _name(before)
            left = deadline - loop.time() - _MARGIN
            if left < stop + 1:
                raise errors.PermanentError(
                    f"{_done(done)}not enough time left in `limits.action_timeout` to restart "
                    f"container {name} with a {stop}s stop timeout: not started",
                    data=data(),
                )
            try:
                await client.restart(
                    str(before["Id"]),
                    stop_timeout=stop,
                    timeout=min(stop + cfg.start_timeout, left),
                )
            except (errors.PermanentError, errors.TemporaryError) as exc:
                raise type(exc)(f"{_done(done)}{exc}", data=data()) from exc
            except errors.ActionError as exc:
                # The engine may have stopped it, restarted it, or done nothing: look.
                after = await _look(client, before, cfg, deadline)
                raise errors.ActionError(
                    f"{_done(done)}{exc}; {_after_failure(before, after)}{_rest(found, i)}",
                    data=data(_summary(before, after)),
                ) from exc
            try:
                summary = await _confirm(client, before, cfg, deadline)
            except _Unconfirmed as exc:
                raise errors.ActionError(
                    f"{_done(done)}{exc}{_rest(found, i)}", data=data(exc.summary)
                ) from exc
            done.append(summary)
            ctx.log.info(
                "docker_restarted",
                container=name,
                id=str(before["Id"])[:12],
                stop_timeout=stop,
                started_at=summary["started_at"],
                health=summary["health"],
            )
        what = ", ".join(_restarted_text(d) for d in done[:_MAX_LISTED])
        if len(done) > _MAX_LISTED:
            what += f" and {len(done) - _MAX_LISTED} more (see result)"
        return Result(
            detail=f"restarted {_what(values)}: {what}; stop timeout {stop}s", data=data()
        )

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        cfg: DockerConfig | None = base.family_config(ctx.settings, "docker")
        stop = int(values.get("stop_timeout", cfg.stop_timeout if cfg else DEFAULT_STOP_TIMEOUT))
        if cfg is None:
            return Result(
                detail=f"would restart {_what(values)} with a {stop}s stop timeout; not "
                "checked: no `docker:` config, so no Docker engine was asked about it",
                data={"checked": False, "stop_timeout": stop},
            )
        loop = asyncio.get_running_loop()
        client = await _client(ctx, cfg)
        found = await _resolve(values, cfg, client, loop.time() + ctx.timeout)
        states = [_state(c) for c in found]
        shown = ", ".join(
            f"{s['name']} ({s['id']}, {s['status']}{_health_text(s['health'])} "
            f"since {s['started_at']})"
            for s in states[:_MAX_LISTED]
        )
        if len(states) > _MAX_LISTED:
            shown += f" and {len(states) - _MAX_LISTED} more (see result)"
        return Result(
            detail=f"would restart {_what(values)}: {shown}; stop timeout {stop}s",
            data={"checked": True, "stop_timeout": stop, "containers": states},
        )


registry.register(DockerRestart())


# --------------------------------------------------------------------------- helpers


async def _client(ctx: Context, cfg: DockerConfig) -> DockerClient:
    from remediator.clients import docker as docker_client  # noqa: PLC0415 - fast start-up

    async def opener() -> DockerClient:
        return docker_client.DockerClient(socket_path=cfg.socket, api_version=cfg.api_version)

    async def closer(client: DockerClient) -> None:
        await client.close()

    client: DockerClient = await ctx.clients.get(
        f"docker:{cfg.socket}:{cfg.api_version}", opener, closer
    )
    return client


def _left(deadline: float, cfg: DockerConfig) -> float:
    return max(0.001, min(cfg.request_timeout, deadline - asyncio.get_running_loop().time()))


async def _resolve(
    values: Mapping[str, Any], cfg: DockerConfig, client: DockerClient, deadline: float
) -> list[dict[str, Any]]:
    """The inspected containers to restart; only GETs, and each checked to be allowed."""
    if "container" in values:
        ref = values["container"]
        info = await client.inspect(ref, timeout=_left(deadline, cfg))
        name, cid = _name(info), str(info.get("Id", ""))
        # The engine resolves a reference as full id, then name, then id prefix: an
        # allowed name whose container is gone (`cafe12345678`, say) would fall through
        # to whichever container's id starts with it. So the container must carry exactly
        # the allowed name, or exactly the allowed full id; a prefix never counts.
        if name != ref and not (_FULL_ID.fullmatch(ref) and cid == ref):
            hint = (
                "; allow-list ids must be full 64-character ids"
                if re.fullmatch(r"[0-9a-f]{12,63}", ref)
                else ""
            )
            raise errors.PermanentError(
                f"inspect container {ref!r}: the engine resolved it to {name!r} "
                f"({cid[:12]}), not a container of that name: refusing to restart it{hint}"
            )
        return [info]
    project, service = values["compose_service"].split("/", 1)
    wanted = {PROJECT_LABEL: project, SERVICE_LABEL: service}
    listed = await client.list_by_labels(wanted, timeout=_left(deadline, cfg))
    # `docker compose run` containers carry the service label too; compose's own restart
    # leaves them alone, and so does this.
    ids = sorted(
        str(c.get("Id", "")) for c in listed if _of_service(c.get("Labels"), project, service)
    )
    if not ids:
        raise errors.PermanentError(
            f"compose service {project}/{service}: no container on this Docker engine has "
            f"the labels {PROJECT_LABEL}={project} and {SERVICE_LABEL}={service} "
            "(`docker compose ls` shows the project names)"
        )
    if len(ids) > values["max_containers"]:
        raise errors.PermanentError(
            f"compose service {project}/{service} has {len(ids)} containers, more than "
            f"max_containers ({values['max_containers']}): none restarted"
        )
    found = []
    for cid in ids:
        info = await client.inspect(cid, timeout=_left(deadline, cfg))
        if str(info.get("Id", "")) != cid or not _of_service(
            (info.get("Config") or {}).get("Labels"), project, service
        ):
            raise errors.PermanentError(
                f"compose service {project}/{service}: container {cid[:12]} changed while "
                "being inspected: none restarted"
            )
        found.append(info)
    return sorted(found, key=_name)


def _of_service(labels: Any, project: str, service: str) -> bool:
    if not isinstance(labels, dict):
        return False
    return (
        labels.get(PROJECT_LABEL) == project
        and labels.get(SERVICE_LABEL) == service
        and str(labels.get(ONEOFF_LABEL, "False")).lower() != "true"
    )


async def _look(
    client: DockerClient, before: Mapping[str, Any], cfg: DockerConfig, deadline: float
) -> dict[str, Any] | None:
    """Inspect after a restart call; None if even that fails (the row says so)."""
    try:
        return await client.inspect(str(before["Id"]), timeout=_left(deadline, cfg))
    except errors.ActionError:
        return None


class _Unconfirmed(errors.ActionError):
    """A restart the engine answered 204 to, not confirmed by what was read back."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


async def _confirm(
    client: DockerClient, before: Mapping[str, Any], cfg: DockerConfig, deadline: float
) -> dict[str, Any]:
    """Read a restarted container back: running, with a new start time and, when it has
    a health check, `healthy` — waiting for that within `docker.health_timeout` and the
    action's deadline. Returns the audit summary; raises _Unconfirmed otherwise."""
    loop = asyncio.get_running_loop()
    waited_from = loop.time()
    by_health = waited_from + cfg.health_timeout
    until = min(by_health, deadline - _MARGIN)
    name = _name(before)
    while True:
        try:
            after = await client.inspect(str(before["Id"]), timeout=_left(deadline, cfg))
        except errors.ActionError as exc:
            raise _Unconfirmed(
                f"container {name}: the engine answered the restart (HTTP 204) but its state "
                f"afterwards could not be read ({exc}): check it by hand (`docker ps -a`)",
                _summary(before, None),
            ) from exc
        s = _summary(before, after)
        state = _dict(after.get("State"))
        if s["started_at"] == s["started_at_before"]:
            raise _Unconfirmed(
                f"container {name}: the engine answered the restart (HTTP 204) but its start "
                f"time did not change ({s['status']} since {s['started_at']}): not restarted",
                s,
            )
        if s["status"] != "running":
            error = str(state.get("Error", ""))[:_HEALTH_OUTPUT]
            raise _Unconfirmed(
                f"container {name} was restarted at {s['started_at']} but is now "
                f"{s['status']} (exit code {state.get('ExitCode', '?')}"
                f"{', ' + error if error else ''}): it does not stay up; a human must look",
                s,
            )
        if s["health"] in ("none", "healthy"):
            return s
        log = _health_log(state, s["started_at"])
        s["health_log"] = log
        evidence = _log_text(log)
        if s["health"] != "starting":
            raise _Unconfirmed(
                f"container {name} was restarted (running since {s['started_at']}) but its "
                f"health check reports {s['health']}: {evidence}",
                s,
            )
        left = until - loop.time()
        if left <= 0:
            bound = (
                "`docker.health_timeout`"
                if by_health <= deadline - _MARGIN
                else "what was left of `limits.action_timeout`"
            )
            raise _Unconfirmed(
                f"container {name} was restarted (running since {s['started_at']}) but its "
                f"health check still reports starting after {loop.time() - waited_from:.0f}s "
                f"({bound}): {evidence}",
                s,
            )
        await asyncio.sleep(min(_HEALTH_POLL, left))


def _health(state: Mapping[str, Any]) -> str:
    """`State.Health.Status`, or "none" for a container without a health check."""
    status = _dict(state.get("Health")).get("Status")
    return str(status) if status and status != "none" else "none"


def _health_log(state: Mapping[str, Any], started_at: str) -> list[dict[str, Any]]:
    """The newest results of the health check since the container (re)started: Docker
    keeps the last five across restarts, and those of the run before are no evidence."""
    since = _time(started_at)
    out = []
    for entry in _dict(state.get("Health")).get("Log") or []:
        if not isinstance(entry, dict):
            continue
        start = _time(str(entry.get("Start", "")))
        if since is not None and start is not None and start < since:
            continue
        output = " ".join(str(entry.get("Output", "")).split())
        out.append(
            {
                "start": str(entry.get("Start", ""))[:40],
                "exit_code": entry.get("ExitCode"),
                "output": output[:_HEALTH_OUTPUT],
            }
        )
    return out[-_HEALTH_LINES:]


def _log_text(log: list[dict[str, Any]]) -> str:
    if not log:
        return "no health check has run since the restart"
    shown = "; ".join(f"[exit {e['exit_code']}] {e['output'] or '(no output)'}" for e in log)
    return f"last health check output: {shown}"


def _time(text: str) -> dt.datetime | None:
    """An engine timestamp (RFC 3339 with nanoseconds); None when it is not one."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _health_text(health: str) -> str:
    return "" if health == "none" else f", {health}"


def _rest(found: list[dict[str, Any]], i: int) -> str:
    rest = [_name(c) for c in found[i + 1 :]]
    if not rest:
        return ""
    return f"; not restarted: {', '.join(rest[:_MAX_LISTED])}" + (
        f" and {len(rest) - _MAX_LISTED} more" if len(rest) > _MAX_LISTED else ""
    )


def _name(info: Mapping[str, Any]) -> str:
    return str(info.get("Name", "")).lstrip("/")


def _state(info: Mapping[str, Any]) -> dict[str, Any]:
    """What the audit keeps of an inspected container: bounded, no environment."""
    state = _dict(info.get("State"))
    raw = _dict(_dict(info.get("Config")).get("Labels"))
    labels = {
        str(k)[:_MAX_LABEL_VALUE]: str(v)[:_MAX_LABEL_VALUE]
        for k, v in sorted(raw.items())[:_MAX_LABELS]
    }
    return {
        "name": _name(info),
        "id": str(info.get("Id", ""))[:12],
        "status": str(state.get("Status", "unknown")),
        "health": _health(state),
        "started_at": str(state.get("StartedAt", "")),
        "labels": labels,
    }


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _summary(before: Mapping[str, Any], after: Mapping[str, Any] | None) -> dict[str, Any]:
    b = _state(before)
    out = {
        "name": b["name"],
        "id": b["id"],
        "status_before": b["status"],
        "started_at_before": b["started_at"],
    }
    if after is None:
        return {**out, "status": "unknown", "health": "unknown", "started_at": ""}
    a = _state(after)
    return {**out, "status": a["status"], "health": a["health"], "started_at": a["started_at"]}


def _restarted_text(d: Mapping[str, Any]) -> str:
    """One confirmed restart (a `_confirm` summary) in words."""
    return (
        f"{d['name']} ({d['id']}) {d['status']}{_health_text(d['health'])} since "
        f"{d['started_at']} (was {d['status_before']} since {d['started_at_before']})"
    )


def _after_failure(before: Mapping[str, Any], after: Mapping[str, Any] | None) -> str:
    if after is None:
        return "its state afterwards could not be read: check it by hand (`docker ps -a`)"
    b, a = _state(before), _state(after)
    if a["started_at"] != b["started_at"] and a["status"] == "running":
        return f"the container did restart: {a['status']} since {a['started_at']}"
    if a["status"] != "running":
        return (
            f"the container is now {a['status']} (it was {b['status']}): it may have been "
            "stopped and not started again; a human must look"
        )
    return f"no restart seen afterwards: still {a['status']} since {a['started_at']}"


def _done(done: list[dict[str, Any]]) -> str:
    if not done:
        return ""
    return f"restarted {', '.join(d['name'] for d in done)}; then: "


def _what(values: Mapping[str, Any]) -> str:
    if "container" in values:
        return f"container {values['container']}"
    return f"compose service {values['compose_service']}"


def _listing(allowed: frozenset[str]) -> str:
    if not allowed:
        return "the list is empty"
    names = sorted(allowed)
    shown = ", ".join(names[:10])
    return f"allowed: {shown}" + (f" and {len(names) - 10} more" if len(names) > 10 else "")
