"""The Docker Engine API on its unix socket (aiohttp's UnixConnector), errors mapped.

Only what `docker.restart` needs: read the engine's API version, inspect a container,
list a compose service's containers, restart one. Every call has a timeout, and every
failure becomes one of errors.py's types with a message naming the call, the container
and what to fix:

    socket file absent, permission denied      → PermanentError (fix the config or host)
    nothing listening, I/O error, timeout      → TemporaryError (the engine may come back)
    HTTP 404                                   → PermanentError (no such container)
    HTTP 400 about the client version          → PermanentError (fix `docker.api_version`)
    other HTTP 4xx                             → PermanentError
    HTTP 5xx                                   → TemporaryError
    an answer larger than MAX_BODY (4 MiB)     → PermanentError (not read, not buffered)

`restart` is the one call with a side effect; when it fails after the request may have
reached the engine (5xx, timeout, dropped connection) it raises a plain ActionError:
the restart may or may not have happened, and the caller must look before anyone
retries. Only a failure to connect says for certain that nothing was sent.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp

from remediator import errors

_VERSION = re.compile(r"1\.[0-9]{1,3}")
_MESSAGE_MAX = 300
MAX_BODY = 4 << 20
"""Bytes of an engine answer read at most. An inspect is a few kB (tens with many
labels or mounts); a list of a compose service's containers stays far below this. A
larger answer is not a Docker engine behaving: it is refused, not buffered."""


class _TooLarge(errors.PermanentError):
    """An answer over MAX_BODY: its status is known, its body was not read."""


class DockerClient:
    """One Docker engine behind one unix socket; a pooled aiohttp session."""

    def __init__(self, *, socket_path: str, api_version: str) -> None:
        self.socket_path = socket_path
        self._pinned = None if api_version == "auto" else api_version
        self._version: str | None = self._pinned
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=socket_path),
            # The host part is ignored on a unix socket; the engine only needs a Host.
            base_url="http://docker",
        )

    async def close(self) -> None:
        await self._session.close()

    async def api_version(self, *, timeout: float) -> str:
        """The API version in the paths: pinned in config, or the engine's own (`auto`).

        Docker 29 refuses API versions below 1.44 and Docker 24 serves at most 1.43,
        so no single pinned version works everywhere; `auto` asks `GET /version` once.
        The calls made here have the same shape in every version since 1.24.
        """
        if self._version is not None:
            return self._version
        what = "ask the Docker engine its API version"
        status, body = await self._call("GET", "/version", timeout=timeout, what=what)
        if status != 200:
            raise self._status_error(status, body, what=what, ref="")
        version = body.get("ApiVersion") if isinstance(body, dict) else None
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise errors.PermanentError(
                f'{what}: the engine answered {version!r}; pin `docker.api_version` (e.g. "1.43")'
            )
        self._version = version
        return version

    async def inspect(self, ref: str, *, timeout: float) -> dict[str, Any]:
        """`GET /containers/{ref}/json`: the container by id, name or id prefix."""
        path = f"/containers/{_quote(ref)}/json"
        status, body = await self._versioned("GET", path, timeout=timeout, what="inspect")
        if status != 200 or not isinstance(body, dict):
            raise self._status_error(status, body, what=f"inspect container {ref!r}", ref=ref)
        return body

    async def list_by_labels(
        self, labels: Mapping[str, str], *, timeout: float
    ) -> list[dict[str, Any]]:
        """`GET /containers/json?all=1&filters=…`: every container (running or not) that
        carries all of these labels with exactly these values."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in sorted(labels.items())]})
        status, body = await self._versioned(
            "GET",
            "/containers/json",
            params={"all": "1", "filters": filters},
            timeout=timeout,
            what="list containers",
        )
        if status != 200 or not isinstance(body, list):
            raise self._status_error(status, body, what="list containers", ref="")
        return [c for c in body if isinstance(c, dict)]

    async def restart(self, container_id: str, *, stop_timeout: int, timeout: float) -> None:
        """`POST /containers/{id}/restart?t=…`: SIGTERM, SIGKILL after `stop_timeout`
        seconds, then start. 204 is done; see the module docstring for failures."""
        what = f"restart container {container_id[:12]}"
        path = f"/containers/{_quote(container_id)}/restart"
        # Learn the API version first: a failure there has sent no restart.
        await self.api_version(timeout=timeout)
        try:
            status, body = await self._versioned(
                "POST", path, params={"t": str(stop_timeout)}, timeout=timeout, what=what
            )
        except errors.TemporaryError as exc:
            not_sent = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
            if isinstance(exc.__cause__, not_sent):
                raise errors.TemporaryError(f"{exc} (the restart was not sent)") from exc
            raise errors.ActionError(f"{exc}: the restart may or may not have happened") from exc
        except _TooLarge as exc:
            raise errors.ActionError(f"{exc}: the restart may or may not have happened") from exc
        if status == 204:
            return
        if status >= 500:
            raise errors.ActionError(
                f"{what}: the Docker engine answered HTTP {status}: {_message(body)}"
            )
        raise self._status_error(status, body, what=what, ref=container_id)

    async def _versioned(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        what: str,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        version = await self.api_version(timeout=timeout)
        status, body = await self._call(
            method, f"/v{version}{path}", params=params, timeout=timeout, what=what
        )
        if status == 400 and self._pinned is None and "version" in _message(body).lower():
            # The engine was upgraded or downgraded under us: ask again next time.
            self._version = None
        return status, body

    async def _call(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        what: str,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        t = aiohttp.ClientTimeout(total=max(timeout, 0.001), connect=min(timeout, 5.0))
        try:
            async with self._session.request(method, path, params=params, timeout=t) as resp:
                status = resp.status
                raw = await self._read(resp, what)
        except aiohttp.ConnectionTimeoutError as exc:
            raise errors.TemporaryError(
                f"{what}: cannot connect to the Docker socket {self.socket_path} "
                f"within {t.connect:.1f}s"
            ) from exc
        except TimeoutError as exc:
            raise errors.TemporaryError(
                f"{what}: no answer from the Docker engine on {self.socket_path} "
                f"within {timeout:.1f}s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise self._connect_error(exc, what) from exc
        except aiohttp.ClientError as exc:
            raise errors.TemporaryError(
                f"{what}: the Docker engine on {self.socket_path} dropped the connection "
                f"({type(exc).__name__})"
            ) from exc
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw[:_MESSAGE_MAX].decode("utf-8", "replace")

    async def _read(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        """The answer's body, refused (not buffered) beyond MAX_BODY bytes."""
        chunks: list[bytes] = []
        size = 0
        declared = resp.content_length
        while declared is None or declared <= MAX_BODY:
            chunk = await resp.content.read(64 << 10)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY:
                break
            chunks.append(chunk)
        raise _TooLarge(
            f"{what}: the Docker engine on {self.socket_path} answered HTTP {resp.status} "
            f"with more than {MAX_BODY >> 20} MiB; refusing to read it "
            "(is `docker.socket` really a Docker engine?)"
        )

    def _status_error(self, status: int, body: Any, *, what: str, ref: str) -> errors.ActionError:
        message = _message(body)
        if status == 404 and ref:
            return errors.PermanentError(
                f"{what}: no such container on this Docker engine ({message})"
            )
        if status == 400 and "version" in message.lower():
            fix = (
                "`docker.api_version` is auto: the next attempt asks the engine again"
                if self._pinned is None
                else "set `docker.api_version` to auto, or to what "
                "`docker version --format '{{.Server.APIVersion}}'` prints"
            )
            return errors.PermanentError(
                f"{what}: the engine refuses the API version ({message}); {fix}"
            )
        if status >= 500:
            return errors.TemporaryError(
                f"{what}: the Docker engine answered HTTP {status}: {message}"
            )
        return errors.PermanentError(f"{what}: the Docker engine answered HTTP {status}: {message}")

    def _connect_error(self, exc: aiohttp.ClientConnectorError, what: str) -> errors.ActionError:
        cause = exc.os_error
        where = f"Docker socket {self.socket_path}"
        if isinstance(cause, FileNotFoundError):
            return errors.PermanentError(
                f"{what}: {where} does not exist: is the Docker engine running on this host, "
                "and does `docker.socket` name its socket?"
            )
        if isinstance(cause, PermissionError):
            return errors.PermanentError(
                f"{what}: permission denied on {where}: run remediator as root or as a "
                "member of the socket's group (usually `docker`)"
            )
        if isinstance(cause, ConnectionRefusedError):
            return errors.TemporaryError(
                f"{what}: nothing listens on {where}: the Docker engine is stopped or restarting"
            )
        return errors.TemporaryError(f"{what}: cannot connect to {where}: {cause}")


def _quote(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def _message(body: Any) -> str:
    """The engine's `{"message": …}`, cut to a readable length."""
    text = body.get("message") if isinstance(body, dict) else body
    text = str(text if text is not None else "no message").replace("\n", " ")
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."
