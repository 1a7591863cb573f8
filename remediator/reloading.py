"""Reload when the files change: the rule files and the config file, watched by polling.

Every `rules_watch_interval` the watcher takes the signature of what a reload reads —
for each rule file (as `loader.rule_files` finds them) and the config file: its path, the
path it resolves to, inode, size and mtime. A Kubernetes ConfigMap volume is updated by
writing a new hidden `..<timestamp>/` folder and atomically swapping the `..data` link the
visible files point through: the visible paths stay, what they resolve to changes, so the
signature changes even if sizes and mtimes happen to match.

A change is reloaded once it has held still for one interval (two looks in a row agree),
so a folder being written file by file is read once, whole. The reload is the daemon's
own (`Daemon.reload`, the one SIGHUP and `POST /-/reload` run): all or nothing; a broken
file keeps the rules that run and sets `remediator_config_last_reload_successful 0`, and
the same broken files are not retried until they change again.

Why polling and not inotify: it needs no dependency, works on every volume type (NFS,
FUSE, overlay mounts, where inotify stays silent), and ConfigMap link swaps need no
special case; a few `stat` calls per interval cost nothing. The price is latency: a
change is live one to two intervals later (kubelet itself takes up to a minute or so to
project a ConfigMap change into the pod).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from remediator.engine.clock import Clock, Timer
from remediator.matching import loader

log = structlog.get_logger("remediator.reloading")

Signature = tuple[tuple[str, ...], ...]
"""What a reload would read, as (path, resolved path, inode, size, mtime) per file."""


def signature(rules_dir: Path, config_file: Path | None) -> Signature:
    """The signature of the rule files under `rules_dir` and of `config_file` (blocking:
    `stat` calls; run it off the event loop). A file that cannot be read is noted as such,
    so its appearing or vanishing is a change too."""
    paths = [config_file] if config_file is not None else []
    if rules_dir.is_dir():
        paths += loader.rule_files(rules_dir)
    else:
        paths.append(rules_dir)  # no folder (yet): its appearing is a change
    out: list[tuple[str, ...]] = []
    for path in paths:
        try:
            st = path.stat()
            resolved = os.path.realpath(path)
        except OSError as exc:
            out.append((str(path), f"unreadable: {exc.strerror}"))
            continue
        out.append((str(path), resolved, str(st.st_ino), str(st.st_size), str(st.st_mtime_ns)))
    return tuple(out)


class RulesWatcher:
    """A long-lived task: look at the files every `interval`, reload when they changed.

    `look` takes the signature now (blocking; run in a thread); `reload` is the daemon's
    reload. `loaded` is the signature of what the last reload (by any trigger) read: the
    daemon sets it, so a SIGHUP after an edit is not followed by a second reload here.
    """

    def __init__(
        self,
        *,
        interval: float,
        clock: Clock,
        look: Callable[[], Signature],
        reload: Callable[[], Awaitable[tuple[bool, str]]],
        loaded: Signature,
    ) -> None:
        self.interval = interval
        self.loaded = loaded
        self._clock = clock
        self._look = look
        self._reload = reload
        self._seen = loaded
        self._stopping = False
        self._wake = asyncio.Event()
        self._timer: Timer | None = None
        self._polled = asyncio.Condition()
        self.polls = 0
        """Looks taken so far (with their reload, if any, finished)."""

    def start(self) -> asyncio.Task[None]:
        """The watching task; its first look is one interval from now."""
        self._arm()
        return asyncio.create_task(self._run(), name="rules-watch")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._stopping:
                return
            try:
                await self.poll()
            except Exception as exc:  # noqa: BLE001 - the watcher outlives any one look; the reload API still works
                log.error("rules_watch_failed", error=repr(exc))
            self._arm()
            async with self._polled:
                self.polls += 1
                self._polled.notify_all()

    def stop(self) -> None:
        """End the task now: the wait between looks wakes at once."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        self._wake.set()

    async def poll(self) -> None:
        """One look: reload if what changed since the last reload has held still since
        the previous look."""
        now = await asyncio.to_thread(self._look)
        if now == self.loaded:
            self._seen = now
            return
        if now != self._seen:
            self._seen = now
            log.info("rules_files_changed", reload_in=self.interval)
            return
        log.info("rules_reload_on_change")
        await self._reload()

    async def wait_polls(self, count: int) -> None:
        """Until `count` looks have been taken (tests drive the clock and wait here)."""
        async with self._polled:
            await self._polled.wait_for(lambda: self.polls >= count)

    def _arm(self) -> None:
        """The next look, one interval from now (on the injected clock)."""
        if self._stopping:  # stopped during a look: the wake stays set, the task ends
            return
        self._wake.clear()
        self._timer = self._clock.call_at(self._clock.now() + self.interval, self._wake.set)
