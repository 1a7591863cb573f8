"""An in-process daemon for tests: real SQLite, real aiohttp app, an injected clock.

    async with Harness(tmp_path, rules=RULES) as h:
        await h.post(payload(am_alert("APIDown", namespace="prod")))
        await h.settle()
        assert [d["outcome"] for d in await h.decisions()] == ["dry_run"]

The engine and HTTP surface are the production ones; only time is injected (FakeClock),
so guards that depend on minutes are tested by advancing the clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import textwrap
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from remediator import settings as settings_mod
from remediator.actions.base import Context
from remediator.engine.clock import FakeClock
from remediator.models.alert import Alert
from remediator.runner import Daemon
from remediator.web.app import make_app

START = dt.datetime(2027, 1, 15, 12, 0, 0, tzinfo=dt.UTC)
_fingerprints = itertools.count(1)


def am_alert(
    name: str,
    *,
    status: str = "firing",
    starts_at: dt.datetime | None = None,
    fingerprint: str | None = None,
    annotations: dict[str, str] | None = None,
    **labels: str,
) -> dict[str, Any]:
    """One alert as Alertmanager's webhook carries it."""
    return {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": annotations or {"summary": f"{name} summary"},
        "startsAt": (starts_at or START - dt.timedelta(minutes=10)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        ),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": fingerprint or f"{next(_fingerprints):016x}",
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    """A v4 webhook body around some alerts."""
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "remediator",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


def resolved(alert: dict[str, Any]) -> dict[str, Any]:
    """The resolved notification of a firing alert: same fingerprint and startsAt."""
    return {**alert, "status": "resolved", "endsAt": START.strftime("%Y-%m-%dT%H:%M:%SZ")}


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        *,
        rules: str,
        config: str = "",
        env: dict[str, str] | None = None,
        now: float | None = None,
        port: int | None = None,
        **overrides: Any,
    ) -> None:
        """`now`: where the FakeClock starts (default START); pass time.time() when a real
        server's notion of time (Alertmanager's silences) must agree with the daemon's.
        `port`: where the HTTP surface listens (default: any free one), for a real
        Alertmanager that must know where to send its webhooks before the daemon starts."""
        self._port = port
        self.tmp_path = tmp_path
        self.rules_dir = tmp_path / "rules"
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        (self.rules_dir / "rules.yaml").write_text(textwrap.dedent(rules))
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(textwrap.dedent(config))
        self._overrides = {"rules_dir": self.rules_dir, "data_dir": tmp_path / "data", **overrides}
        self._environ = env or {}
        self.settings = settings_mod.load(
            self.config_path, overrides=self._overrides, environ=self._environ
        )
        self.clock = FakeClock(START.timestamp() if now is None else now)
        self.daemon: Daemon
        self.client: TestClient[Any, Any]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.daemon = Daemon(self.settings, clock=self.clock, config_loader=self._reload_settings)
        await self.daemon.start()
        server = TestServer(make_app(self.daemon), host="127.0.0.1", port=self._port)
        self.client = TestClient(server)
        await self.client.start_server()

    def _reload_settings(self) -> settings_mod.Settings:
        """What a reload reads: the config file again, with the same overrides."""
        return settings_mod.load(self.config_path, overrides=self._overrides, environ=self._environ)

    async def stop(self) -> None:
        await self.settle()
        await self.client.close()
        await self.daemon.shutdown()

    def with_settings(self, **changes: Any) -> None:
        """Change settings before start() (e.g. to restart with other limits)."""
        self.settings = dataclasses.replace(self.settings, **changes)

    async def post(self, body: Any, *, headers: dict[str, str] | None = None) -> ClientResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = await self.client.post(
            "/webhook/alertmanager",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        await resp.read()
        return resp

    async def fire(self, *alerts: dict[str, Any]) -> None:
        """Post alerts, require a 2xx, and wait until they are decided."""
        resp = await self.post(payload(*alerts))
        assert resp.status == 200, await resp.text()
        await self.settle()

    async def settle(self) -> None:
        """Wait until queued alerts are decided, actions have finished and rows committed."""
        engine = self.daemon.engine
        for _ in range(10):
            await engine.wait_idle()
            await engine.wait_actions()
            # Writes chain: decision rows commit, then the journal rows they finish are
            # removed in a later batch. Each round lets one batch flush (call_soon) and
            # waits for a commit behind it.
            for _ in range(3):
                await asyncio.sleep(0)
                await self.daemon.db.submit(lambda c: None)
            if engine._queue.empty() and not engine._tasks:
                return

    async def advance(self, seconds: float) -> None:
        """Move the clock on; fire timers (held alerts, verification) and let them settle."""
        self.clock.advance(seconds)
        await asyncio.sleep(0)
        await self.settle()

    async def look_at_rules(self) -> None:
        """Move the clock on by `rules_watch_interval` and wait until the rules watcher has
        looked at the files (and finished the reload it may have started)."""
        watcher = self.daemon.watcher
        assert watcher is not None, "the rules watcher is off (rules_watch_interval: 0)"
        looked = watcher.polls
        self.clock.advance(watcher.interval)
        await asyncio.wait_for(watcher.wait_polls(looked + 1), timeout=30)

    async def decisions(self, **query: str) -> list[dict[str, Any]]:
        """Audit rows, oldest first (the API serves newest first)."""
        resp = await self.client.get(
            "/api/v1/decisions", params={"limit": "1000", **query}, headers=self.read_headers()
        )
        assert resp.status == 200, await resp.text()
        return list(reversed((await resp.json())["decisions"]))

    def read_headers(self) -> dict[str, str]:
        """The Authorization a reader of the audit sends once a token is configured."""
        auth = self.daemon.settings.auth
        token = auth.read_token or auth.admin_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def outcomes(self) -> list[tuple[str, str]]:
        return [(d["outcome"], d["reason"]) for d in await self.decisions()]

    def context(
        self,
        *,
        rule: str = "test-rule",
        labels: dict[str, str] | None = None,
        decision_id: int = 0,
        timeout: float = 20.0,
    ) -> Context:
        """What the engine hands an action, for calling one (or its evidence) directly:
        the daemon's own settings, clients and clock."""
        return Context(
            alert=Alert(
                source="alertmanager",
                name=(labels or {}).get("alertname", "TestAlert"),
                status="firing",
                labels=labels or {"alertname": "TestAlert"},
                annotations={"summary": "a test alert"},
                starts_at=START - dt.timedelta(minutes=10),
                ends_at=None,
                fingerprint="00000000000000aa",
                generator_url="http://prometheus.example/graph",
                received_at=START,
            ),
            rule=rule,
            settings=self.daemon.settings,
            clients=self.daemon.clients,
            timeout=timeout,
            decision_id=decision_id,
            now=self.clock.now,
        )

    async def metric(self, name: str, **labels: str) -> float:
        value = self.daemon.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
