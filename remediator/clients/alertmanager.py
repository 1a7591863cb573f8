"""Alertmanager API v2: list, create and expire silences; an HA pair tried in turn."""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse
from collections.abc import Mapping
from typing import Any

from remediator import errors
from remediator.clients.http import HttpClient
from remediator.models.alert import iso, parse_time
from remediator.settings import AlertmanagerApi


def _same_start(text: Any, starts_at: float) -> bool:
    """The same occurrence: Alertmanager's startsAt within a second of ours (a re-fire of
    the same alert is a new startsAt, a new occurrence)."""
    if not isinstance(text, str):
        return False
    try:
        return abs(parse_time(text).timestamp() - starts_at) < 1.0
    except ValueError:
        return False


class AlertmanagerClient:
    def __init__(self, http: HttpClient, config: AlertmanagerApi) -> None:
        self._http = http
        self._config = config
        self._headers: dict[str, str] = {}
        if config.bearer_token:
            self._headers["Authorization"] = f"Bearer {config.bearer_token}"
        elif config.basic_user is not None:
            pair = f"{config.basic_user}:{config.basic_password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()

    async def list_silences(self) -> list[Any]:
        """Every silence Alertmanager holds (any state), as it sent them: the caller filters
        active ones, and an entry it cannot read must fail closed, not vanish here."""
        body = await self._call("GET", "/api/v2/silences", what="list silences")
        if not isinstance(body, list):
            raise errors.PermanentError("list silences: Alertmanager answered something not a list")
        return body

    async def lists_alert(self, alertname: str, fingerprint: str, starts_at: float) -> bool:
        """Whether Alertmanager still holds this occurrence (fingerprint and startsAt) as
        active, silenced or not: the engine asks before a retry or a next step, in case the
        resolved notification never came."""
        value = alertname.replace("\\", "\\\\").replace('"', '\\"')
        query = urllib.parse.urlencode(
            {"active": "true", "silenced": "true", "inhibited": "true",
             "filter": f'alertname="{value}"'}
        )  # fmt: skip
        body = await self._call("GET", f"/api/v2/alerts?{query}", what="list alerts")
        if not isinstance(body, list):
            raise errors.PermanentError("list alerts: Alertmanager answered something not a list")
        return any(
            isinstance(a, Mapping) and a.get("fingerprint") == fingerprint
            and _same_start(a.get("startsAt"), starts_at)
            for a in body
        )  # fmt: skip

    async def create_silence(
        self,
        *,
        matchers: list[dict[str, Any]],
        starts_at: dt.datetime,
        ends_at: dt.datetime,
        comment: str,
        created_by: str,
    ) -> str:
        """Create a silence; returns its id."""
        body = {
            "matchers": matchers,
            "startsAt": iso(starts_at),
            "endsAt": iso(ends_at),
            "createdBy": created_by,
            "comment": comment,
        }
        answer = await self._call("POST", "/api/v2/silences", what="create silence", body=body)
        if not isinstance(answer, Mapping) or not isinstance(answer.get("silenceID"), str):
            raise errors.PermanentError("create silence: no silenceID in Alertmanager's answer")
        return str(answer["silenceID"])

    async def expire_silence(self, silence_id: str) -> None:
        await self._call("DELETE", f"/api/v2/silence/{silence_id}", what="expire silence")

    async def _call(self, method: str, path: str, *, what: str, body: Any = None) -> Any:
        """Try each configured URL in turn; the last error if none answers."""
        last: errors.ActionError | None = None
        for base in self._config.urls:
            try:
                _, answer = await self._http.request(
                    method, base + path, body=body, headers=self._headers,
                    timeout=self._config.timeout, what=f"alertmanager {what} ({base})",
                )  # fmt: skip
            except (errors.TemporaryError, errors.PermanentError) as exc:
                last = exc
                continue
            return answer
        raise last or errors.PermanentError(f"alertmanager {what}: no alertmanager.urls configured")
