"""A Docker Engine API emulator on a unix socket, for `docker.restart` tests.

    async with DockerEmulator(tmp_path / "docker.sock") as docker:
        api = docker.add("backend", labels={...})
        ...  # run the action against socket tmp_path / "docker.sock"
        assert api.restarts == 1
        assert docker.requests[-2] == ("POST", f"/v1.43/containers/{api.id}/restart", {"t": "10"})

It follows the engine where `docker.restart` depends on it: the `/vX.Y` path prefix and
its version bounds (400 when outside), `GET /version`, `GET /_ping`, `GET /containers/json`
with `all` and `filters` (label filters, list or map form), `GET /containers/{ref}/json`
and `POST /containers/{ref}/restart?t=` — a reference resolved as the engine does (full
id, then name, then unique id prefix), 204 on success, 404 with `No such container: …`,
errors as JSON `{"message": …}`. Restart failures are injected on demand (`fail_next_restart`,
with what the engine had done before failing) and restarts can be held (`hold_restarts`)
to make a client time out. Every request is logged as (method, path, query).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

from aiohttp import web

BASE_TIME = dt.datetime(2027, 1, 15, 11, 0, 0, tzinfo=dt.UTC)
_PATH = re.compile(r"^(?:/v(?P<version>[0-9]+\.[0-9]+))?(?P<rest>/.*)$")
_CONTAINER = re.compile(r"^/containers/(?P<ref>[^/]+)/(?P<verb>json|restart)$")


class Request(NamedTuple):
    method: str
    path: str
    query: dict[str, str]


@dataclasses.dataclass
class Container:
    id: str
    name: str
    labels: dict[str, str]
    status: str
    started_at: str
    finished_at: str = "0001-01-01T00:00:00Z"
    exit_code: int = 0
    env: list[str] = dataclasses.field(default_factory=list)
    restarts: int = 0
    """Restarts done through the API (the engine's RestartCount only counts restarts by
    a restart policy, so it stays 0 here as on a real engine)."""
    stop_timeouts: list[int | None] = dataclasses.field(default_factory=list)
    """The `t` of each restart request, None when the request gave none."""


@dataclasses.dataclass
class Failure:
    status: int
    message: str
    effect: Literal["none", "stopped", "restarted"]
    """What the engine did before failing: nothing, stopped it (the start failed), or
    the whole restart (the answer failed)."""
    container: str | None
    """Only a restart of this container (by name) fails; None: the next restart."""


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


class DockerEmulator:
    def __init__(
        self,
        socket_path: Path,
        *,
        api_version: str = "1.43",
        min_api_version: str = "1.24",
    ) -> None:
        self.socket_path = socket_path
        self.api_version = api_version
        self.min_api_version = min_api_version
        self.containers: dict[str, Container] = {}
        self.requests: list[Request] = []
        self._failures: list[Failure] = []
        self._ticks = 0
        self._held: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ test controls

    def add(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        status: str = "running",
        env: list[str] | None = None,
        id: str | None = None,
    ) -> Container:
        cid = id or hashlib.sha256(name.encode()).hexdigest()
        c = Container(
            id=cid,
            name=name,
            labels=dict(labels or {}),
            status=status,
            started_at=self._now(),
            env=list(env or []),
        )
        self.containers[cid] = c
        return c

    def fail_next_restart(
        self,
        *,
        status: int = 500,
        message: str = "Cannot restart container: an injected failure",
        effect: Literal["none", "stopped", "restarted"] = "none",
        container: str | None = None,
    ) -> None:
        """The next restart request (of `container`, if given) fails with `status` after
        doing `effect`."""
        self._failures.append(Failure(status, message, effect, container))

    def hold_restarts(self) -> None:
        """Restart requests wait (until `release`, or the emulator stops) before acting."""
        self._held = asyncio.Event()

    def release(self) -> None:
        if self._held is not None:
            self._held.set()

    def posts(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
        self.socket_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the API

    def _now(self) -> str:
        t = BASE_TIME + dt.timedelta(seconds=self._ticks)
        self._ticks += 1
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Request(request.method, request.path, dict(request.query)))
        m = _PATH.match(request.path)
        if m is None:
            return _error(404, "page not found")
        version = m.group("version")
        if version is not None:
            if _version(version) > _version(self.api_version):
                return _error(
                    400,
                    f"client version {version} is too new. Maximum supported API version "
                    f"is {self.api_version}",
                )
            if _version(version) < _version(self.min_api_version):
                return _error(
                    400,
                    f"client version {version} is too old. Minimum supported API version "
                    f"is {self.min_api_version}, please upgrade your client to a newer version",
                )
        rest = m.group("rest")
        if request.method == "GET" and rest == "/_ping":
            return web.Response(text="OK")
        if request.method == "GET" and rest == "/version":
            return web.json_response(
                {
                    "ApiVersion": self.api_version,
                    "MinAPIVersion": self.min_api_version,
                    "Version": "24.0.7-emulated",
                }
            )
        if request.method == "GET" and rest == "/containers/json":
            return self._list(request)
        c = _CONTAINER.match(rest)
        if c is not None and request.method == "GET" and c.group("verb") == "json":
            found = self._find(c.group("ref"))
            return (
                found
                if isinstance(found, web.Response)
                else web.json_response(self._inspect(found))
            )
        if c is not None and request.method == "POST" and c.group("verb") == "restart":
            return await self._restart(request, c.group("ref"))
        return _error(404, "page not found")

    def _find(self, ref: str) -> Container | web.Response:
        """Resolve as the engine does: full id, then name, then a unique id prefix."""
        if ref in self.containers:
            return self.containers[ref]
        for c in self.containers.values():
            if c.name == ref.lstrip("/"):
                return c
        matches = [c for c in self.containers.values() if c.id.startswith(ref)]
        if len(matches) > 1:
            return _error(400, f"multiple IDs found with provided prefix: {ref}")
        if matches:
            return matches[0]
        return _error(404, f"No such container: {ref}")

    def _inspect(self, c: Container) -> dict[str, Any]:
        return {
            "Id": c.id,
            "Name": f"/{c.name}",
            "Created": BASE_TIME.strftime("%Y-%m-%dT%H:%M:%S.%f000Z"),
            "RestartCount": 0,
            "State": {
                "Status": c.status,
                "Running": c.status == "running",
                "Paused": c.status == "paused",
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
                "Pid": 4242 if c.status == "running" else 0,
                "ExitCode": c.exit_code,
                "Error": "",
                "StartedAt": c.started_at,
                "FinishedAt": c.finished_at,
            },
            "Config": {"Hostname": c.id[:12], "Image": "app:1", "Env": c.env, "Labels": c.labels},
        }

    def _list(self, request: web.Request) -> web.Response:
        show_all = request.query.get("all", "") in ("1", "true", "True")
        wanted: list[str] = []
        if "filters" in request.query:
            try:
                filters = json.loads(request.query["filters"])
            except ValueError:
                return _error(400, "invalid filter: not JSON")
            if not isinstance(filters, dict):
                return _error(400, "invalid filter")
            for key, value in filters.items():
                if key != "label":
                    return _error(400, f"invalid filter '{key}'")  # only what is emulated
                wanted = (
                    list(value) if isinstance(value, list) else [k for k, v in value.items() if v]
                )
        out = []
        for c in self.containers.values():
            if not show_all and c.status != "running":
                continue
            if not all(_has_label(c, item) for item in wanted):
                continue
            out.append(
                {
                    "Id": c.id,
                    "Names": [f"/{c.name}"],
                    "Image": "app:1",
                    "Labels": c.labels,
                    "State": c.status,
                    "Status": "Up 5 minutes" if c.status == "running" else "Exited (0)",
                }
            )
        return web.json_response(out)

    async def _restart(self, request: web.Request, ref: str) -> web.Response:
        t_text = request.query.get("t")
        if t_text is not None and not re.fullmatch(r"-?[0-9]+", t_text):
            return _error(400, f'invalid value for "t": {t_text}')
        found = self._find(ref)
        if isinstance(found, web.Response):
            return found
        if self._held is not None:
            await self._held.wait()
        c = found
        failure = next((f for f in self._failures if f.container in (None, c.name)), None)
        if failure is not None:
            self._failures.remove(failure)
        if failure is not None and failure.effect == "none":
            return _error(failure.status, failure.message)
        c.stop_timeouts.append(None if t_text is None else int(t_text))
        c.finished_at = self._now()
        c.exit_code = 0
        if failure is not None and failure.effect == "stopped":
            c.status = "exited"
            c.exit_code = 143
            return _error(failure.status, failure.message)
        c.started_at = self._now()
        c.status = "running"
        c.restarts += 1
        if failure is not None:
            return _error(failure.status, failure.message)
        return web.Response(status=204)


def _has_label(c: Container, item: str) -> bool:
    key, sep, value = item.partition("=")
    if not sep:
        return key in c.labels
    return c.labels.get(key) == value


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)
