"""Crashes and shutdowns of the real daemon: nothing acknowledged is lost, nothing runs twice.

The daemon runs as a child process with dry-run off. `kill -9` in the middle of an alert
storm must lose no alert that got a 2xx and act on none twice after the restart, even
when Alertmanager re-sends everything. SIGTERM stops intake, lets a running action
finish within `shutdown_timeout`, and an action cut off by that timeout stays
`failed/interrupted` — and is not run again when its alert is re-sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests import servers
from tests.daemon_process import DaemonProcess, eventually
from tests.harness import am_alert, payload

BURST_RULES = """
rules:
  - name: burst-log
    matchers: ['alertname = "InstanceDown"']
    action:
      type: log
      params:
        message: "restart {{ labels.instance }}"
        target: "{{ labels.instance }}"
    limits: {cooldown: 0s, max_attempts: 1000000}
    verify: {resolve_within: 1h}
"""

BIG_BUDGETS = """
limits:
  max_actions_per_window: 1000000
  max_targets_per_window: 1000000
  window: 1h
"""

BURST_ALERTS = 4000
KILL_AFTER = 1000
"""Acknowledged alerts after which the daemon is killed: well inside the burst."""
CONNECTIONS = 20

NOTIFY_RULES = """
rules:
  - name: slow-notify
    matchers: ['alertname = "QueueBacklog"']
    action:
      type: notify.webhook
      params: {url_env: SLOW_HOOK_URL, text: "draining {{ labels.queue }}"}
    limits: {cooldown: 0s}
"""
INTERRUPTED = ("failed", "interrupted")
HOLD_SECONDS = 1.5
"""How long the slow receiver holds the action after SIGTERM (shutdown_timeout is 20s)."""


def decided_at(row: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(row["decided_at"].replace("Z", "+00:00")).timestamp()


def one_minute_ago() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


class Burst:
    """Many unique alerts over concurrent connections; remembers which ones got a 2xx."""

    def __init__(self, alerts: list[dict[str, Any]], *, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.batches: list[list[dict[str, Any]]] = []
        i = 0
        while i < len(alerts):
            size = rng.randint(1, 10)
            self.batches.append(alerts[i : i + size])
            i += size
        self.accepted: list[dict[str, Any]] = []
        self.refused: Counter[int] = Counter()
        self.failed_requests = 0
        self.kill_time = 0.0

    async def fire(self, daemon: DaemonProcess, *, kill_after: int | None = None) -> None:
        """Post every batch; SIGKILL the daemon once `kill_after` alerts were acknowledged."""
        pending = iter(self.batches)
        url = daemon.url + "/webhook/alertmanager"

        async def worker(session: aiohttp.ClientSession) -> None:
            for batch in pending:
                try:
                    async with session.post(
                        url,
                        data=json.dumps(payload(*batch)),
                        headers={"Content-Type": "application/json"},
                    ) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    self.failed_requests += 1
                    if not daemon.running or self.kill_time:
                        return  # the daemon is gone: the rest of the storm is not sent
                    continue
                if 200 <= status < 300:
                    self.accepted += batch
                else:
                    self.refused[status] += 1
                if (
                    kill_after is not None
                    and not self.kill_time
                    and len(self.accepted) >= kill_after
                ):
                    self.kill_time = time.time()
                    daemon.kill()

        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(CONNECTIONS)))


async def test_kill_9_mid_burst_loses_no_acknowledged_alert_and_acts_on_none_twice(
    tmp_path: Path,
) -> None:
    started = one_minute_ago()
    alerts = [
        am_alert("InstanceDown", starts_at=started, instance=f"node-{i:05d}", job="node")
        for i in range(BURST_ALERTS)
    ]
    burst = Burst(alerts)
    async with DaemonProcess(tmp_path, rules=BURST_RULES, config=BIG_BUDGETS) as daemon:
        await burst.fire(daemon, kill_after=KILL_AFTER)
        assert burst.kill_time, f"the burst ended before {KILL_AFTER} alerts were accepted"
        assert await daemon.wait_exit() == -signal.SIGKILL
        assert not burst.refused, f"refused before the kill: {burst.refused}"
        first_run_log = await asyncio.to_thread(daemon.log_path.read_text)
        accepted = {a["fingerprint"] for a in burst.accepted}
        assert len(accepted) == len(burst.accepted) >= KILL_AFTER

        await daemon.start()  # same data dir: the journal resumes

        async def all_decided() -> bool:
            rows = await daemon.decisions()
            fresh_interrupted = [
                r
                for r in rows
                if (r["outcome"], r["reason"]) == INTERRUPTED and decided_at(r) > burst.kill_time
            ]
            return (
                accepted <= {r["fingerprint"] for r in rows}
                and await daemon.settled()
                and not fresh_interrupted
            )

        await eventually(
            all_decided, timeout=30, what="a finished decision for every acknowledged alert"
        )
        rows = await daemon.decisions()
        per_occurrence = Counter((r["rule"], r["fingerprint"], r["starts_at"]) for r in rows)
        executed = Counter(
            (r["rule"], r["fingerprint"], r["starts_at"])
            for r in rows
            if r["outcome"] == "executed"
        )
        interrupted = [r for r in rows if (r["outcome"], r["reason"]) == INTERRUPTED]
        twice = [key for key, n in executed.items() if n > 1]
        assert not twice, f"{len(twice)} occurrences acted on twice, e.g. {twice[:3]}"
        several = [key for key, n in per_occurrence.items() if n > 1]
        assert not several, f"{len(several)} occurrences with several rows, e.g. {several[:3]}"
        assert Counter((r["outcome"], r["reason"]) for r in rows).keys() <= {
            ("executed", ""),
            INTERRUPTED,
        }
        # Interrupted rows are the actions that were in flight when the process died:
        # written by the first run, before the kill; the second run finished all of its own.
        assert all(decided_at(r) <= burst.kill_time for r in interrupted)
        logged = sum(f'"fingerprint": "{r["fingerprint"]}"' in first_run_log for r in interrupted)
        print(
            f"\nburst: {len(accepted)} acknowledged, {burst.failed_requests} requests cut off "
            f"by the kill; {len(rows)} decisions after restart: {len(executed)} executed, "
            f"{len(interrupted)} failed/interrupted (action logged before the kill for "
            f"{logged} of them)"
        )

        # After a restart Alertmanager re-sends everything it has: no new row, no action.
        before = {r["id"]: (r["outcome"], r["reason"]) for r in rows}
        duplicates = await daemon.metric("remediator_duplicates_total")
        actions = await daemon.metric("remediator_actions_total")
        resend = Burst(burst.accepted, seed=8)
        await resend.fire(daemon)
        assert len(resend.accepted) == len(burst.accepted), resend.refused

        async def all_counted() -> bool:
            return (
                await daemon.metric("remediator_duplicates_total")
                >= duplicates + len(burst.accepted)
            ) and await daemon.settled()

        await eventually(all_counted, timeout=15, what="every re-sent alert counted as duplicate")
        after = {r["id"]: (r["outcome"], r["reason"]) for r in await daemon.decisions()}
        assert after == before
        assert await daemon.metric("remediator_actions_total") == actions
        assert await daemon.metric("remediator_duplicates_total") == duplicates + len(
            burst.accepted
        )


# --------------------------------------------------------------------------- SIGTERM


class GatedReceiver:
    """A webhook receiver in the test that holds every request until `release()`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self._gate = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.arrived.set()
        # Bounded: a test that forgets to release still ends.
        await asyncio.wait_for(self._gate.wait(), timeout=30)
        return web.json_response({"ok": True})

    def release(self) -> None:
        self._gate.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[GatedReceiver]:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, servers.LOOPBACK, 0).start()
        self.url = f"http://{servers.LOOPBACK}:{self._runner.addresses[0][1]}/hook"
        try:
            yield self
        finally:
            self.release()
            await self._runner.cleanup()


async def start_slow_action(
    daemon: DaemonProcess, receiver: GatedReceiver, alert: dict[str, Any]
) -> None:
    status, answer = await daemon.post(payload(alert))
    assert status == 200, answer
    await asyncio.wait_for(receiver.arrived.wait(), timeout=10)


async def test_sigterm_refuses_new_alerts_and_lets_the_running_action_finish(
    tmp_path: Path,
) -> None:
    async with GatedReceiver().running() as receiver:
        daemon = DaemonProcess(
            tmp_path,
            rules=NOTIFY_RULES,
            config="shutdown_timeout: 20s\n",
            env={"SLOW_HOOK_URL": receiver.url},
        )
        async with daemon:
            alert = am_alert("QueueBacklog", starts_at=one_minute_ago(), queue="orders")
            await start_slow_action(daemon, receiver, alert)

            daemon.terminate()

            async def not_ready() -> bool:
                return await daemon.status("GET", "/readyz") == 503

            await eventually(not_ready, timeout=10, what="/readyz says shutting down")
            late = am_alert("QueueBacklog", starts_at=one_minute_ago(), queue="late")
            status, _ = await daemon.post(payload(late))
            assert status == 503
            # Hold the action a while: the daemon must keep waiting for it, not exit.
            await asyncio.sleep(HOLD_SECONDS)
            assert daemon.running, "the daemon exited while its action was still running"

            receiver.release()
            assert await daemon.wait_exit(timeout=15) == 0

            await daemon.start()
            [row] = await daemon.decisions()
            assert (row["rule"], row["fingerprint"]) == ("slow-notify", alert["fingerprint"])
            assert (row["outcome"], row["reason"]) == ("executed", "")
            assert row["detail"].startswith("posted to $SLOW_HOOK_URL (HTTP 200)")
            assert receiver.requests == [{"text": "draining orders"}]


async def test_an_action_cut_off_by_shutdown_timeout_stays_interrupted_and_is_not_repeated(
    tmp_path: Path,
) -> None:
    async with GatedReceiver().running() as receiver:
        daemon = DaemonProcess(
            tmp_path,
            rules=NOTIFY_RULES,
            config="shutdown_timeout: 1s\n",
            env={"SLOW_HOOK_URL": receiver.url},
        )
        async with daemon:
            alert = am_alert("QueueBacklog", starts_at=one_minute_ago(), queue="orders")
            await start_slow_action(daemon, receiver, alert)

            daemon.terminate()
            assert await daemon.wait_exit(timeout=15) == 0
            receiver.release()

            await daemon.start()
            [row] = await daemon.decisions()
            assert (row["outcome"], row["reason"]) == INTERRUPTED
            assert row["fingerprint"] == alert["fingerprint"]

            # Alertmanager re-sends the still-firing alert to the restarted daemon.
            status, _ = await daemon.post(payload(alert))
            assert status == 200

            async def counted() -> bool:
                return await daemon.metric("remediator_duplicates_total") == 1

            await eventually(counted, timeout=10, what="the re-send counted as a duplicate")
            assert await daemon.decisions() == [row]
            assert await daemon.metric("remediator_actions_total") == 0
            assert len(receiver.requests) == 1
