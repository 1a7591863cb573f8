"""A Docker Engine API emulator on a unix socket, for what a real engine cannot be made
to do on demand.

Every other `docker.restart` test runs against a real engine (servers.DockerEngine).
This one exists only for the cases a real dockerd will not produce when asked:

- a restart answered with a 500 *after* the engine restarted the container (e.g. a
  write error on the answer's way out), or *before* it did anything;
- a restart that never answers (`hold_restarts`), to make the client time out;
- an engine whose API version changes under a running daemon (an upgrade), or that
  reports a version in other digits.

    async with DockerEmulator(tmp_path / "docker.sock") as docker:
        api = docker.add("backend")
        docker.fail_next_restart(effect="restarted")
        ...  # run the action against socket tmp_path / "docker.sock"
        assert api.restarts == 1
        assert docker.posts()[-1] == ("POST", f"/v1.43/containers/{api.id}/restart", {"t": "10"})

It follows the engine where `docker.restart` depends on it: the `/vX.Y` path prefix and
its version bounds (400 when outside), `GET /version`, `GET /containers/{ref}/json` and
`POST /containers/{ref}/restart?t=` — a reference resolved as the engine does (full id,
then name, then unique id prefix), 204 on success, 404 with `No such container: …`,
errors as JSON `{"message": …}`. Every request is logged as (method, path, query).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
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
    status: str
    started_at: str
    finished_at: str = "0001-01-01T00:00:00Z"
    restarts: int = 0
    """Restarts done through the API."""
    stop_timeouts: list[int | None] = dataclasses.field(default_factory=list)
    """The `t` of each restart request, None when the request gave none."""


@dataclasses.dataclass
class Failure:
    status: int
    message: str
    effect: Literal["none", "restarted"]
    """What the engine did before failing: nothing, or the whole restart."""


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

    def add(self, name: str) -> Container:
        """A running container named `name` (its id derived from the name)."""
        cid = hashlib.sha256(name.encode()).hexdigest()
        c = Container(id=cid, name=name, status="running", started_at=self._now())
        self.containers[cid] = c
        return c

    def fail_next_restart(
        self,
        *,
        status: int = 500,
        message: str = "Cannot restart container: an injected failure",
        effect: Literal["none", "restarted"] = "none",
    ) -> None:
        """The next restart request fails with `status` after doing `effect`."""
        self._failures.append(Failure(status, message, effect))

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
        if request.method == "GET" and rest == "/version":
            return web.json_response(
                {
                    "ApiVersion": self.api_version,
                    "MinAPIVersion": self.min_api_version,
                    "Version": "24.0.7-emulated",
                }
            )
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
                "Paused": False,
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
                "Pid": 4242 if c.status == "running" else 0,
                "ExitCode": 0,
                "Error": "",
                "StartedAt": c.started_at,
                "FinishedAt": c.finished_at,
            },
            "Config": {"Hostname": c.id[:12], "Image": "app:1", "Env": [], "Labels": {}},
        }

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
        failure = self._failures.pop(0) if self._failures else None
        if failure is not None and failure.effect == "none":
            return _error(failure.status, failure.message)
        c.stop_timeouts.append(None if t_text is None else int(t_text))
        c.finished_at = self._now()
        c.started_at = self._now()
        c.status = "running"
        c.restarts += 1
        if failure is not None:
            return _error(failure.status, failure.message)
        return web.Response(status=204)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)
