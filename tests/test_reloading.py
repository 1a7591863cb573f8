"""Rules reload when their files change: edits, replaced files, a ConfigMap's link swap.

The watcher looks every `rules_watch_interval` on the injected clock; these tests move
the clock by one interval (`Harness.look_at_rules`) and wait for that look, never sleep.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path

import pytest
import structlog

from remediator.matching import loader
from tests.harness import Harness, am_alert

INTERVAL = 10.0

RULE = """
rules:
  - name: {name}
    matchers: ['alertname = "{alert}"']
    action: {{type: log, params: {{message: "{name} fired"}}}}
"""


def rule(name: str, alert: str = "APIDown") -> str:
    return textwrap.dedent(RULE.format(name=name, alert=alert))


def configmap_volume(directory: Path, files: dict[str, str], version: int) -> None:
    """Lay out (or update) `directory` as kubelet lays out a ConfigMap volume: the files
    in a hidden `..<version>` folder, a `..data` link to it swapped atomically, and each
    visible name a link through `..data`."""
    directory.mkdir(exist_ok=True)
    payload = directory / f"..{version:04d}"
    payload.mkdir()
    for name, text in files.items():
        (payload / name).write_text(text)
        # Same size and mtime as the version before: only what the link leads to differs.
        os.utime(payload / name, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    staged = directory / "..data_tmp"
    staged.symlink_to(payload.name)
    staged.replace(directory / "..data")
    for name in files:
        visible = directory / name
        if not visible.is_symlink():
            visible.symlink_to(f"..data/{name}")
    for old in directory.glob("..[0-9]*"):
        if old != payload:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()


async def rule_names(h: Harness) -> list[str]:
    resp = await h.client.get("/api/v1/rules")
    assert resp.status == 200
    return sorted(r["name"] for r in (await resp.json())["rules"])


async def test_a_new_rule_file_is_loaded_once_it_has_held_still_for_one_interval(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=INTERVAL) as h:
        (h.rules_dir / "db.yaml").write_text(rule("db-log", "DatabaseConnectionPoolExhausted"))
        await h.look_at_rules()
        assert await rule_names(h) == ["api-log"]  # seen changing: wait for it to settle
        await h.look_at_rules()
        assert await rule_names(h) == ["api-log", "db-log"]
        assert await h.metric("remediator_rules_loaded") == 2
        await h.fire(am_alert("DatabaseConnectionPoolExhausted"))
        assert [d["rule"] for d in await h.decisions()] == ["db-log"]


async def test_a_file_still_being_written_is_not_reloaded_until_it_stops_changing(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=INTERVAL) as h:
        with structlog.testing.capture_logs() as logs:
            for i in range(3):
                (h.rules_dir / "more.yaml").write_text(rule("x" * (i + 1)))
                await h.look_at_rules()
            assert await rule_names(h) == ["api-log"]
            await h.look_at_rules()
        assert await rule_names(h) == ["api-log", "xxx"]
        assert [e["event"] for e in logs].count("rules_reloaded") == 1


async def test_a_file_replaced_by_a_rename_is_reloaded(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=INTERVAL) as h:
        staged = tmp_path / "rules.yaml.new"
        staged.write_text(rule("api-log-v2"))
        staged.replace(h.rules_dir / "rules.yaml")
        await h.look_at_rules()
        await h.look_at_rules()
        assert await rule_names(h) == ["api-log-v2"]


async def test_a_configmap_update_by_link_swap_is_reloaded(tmp_path: Path) -> None:
    volume = tmp_path / "configmap"
    # Two rule names of the same length: the files differ in content only.
    configmap_volume(volume, {"apidown.yaml": rule("api-log-1")}, version=1)
    async with Harness(
        tmp_path, rules=rule("unused"), rules_dir=volume, rules_watch_interval=INTERVAL
    ) as h:
        assert await rule_names(h) == ["api-log-1"]
        configmap_volume(volume, {"apidown.yaml": rule("api-log-2")}, version=2)
        await h.look_at_rules()
        await h.look_at_rules()
        assert await rule_names(h) == ["api-log-2"]
        # A file added to the ConfigMap appears through ..data as well.
        configmap_volume(
            volume, {"apidown.yaml": rule("api-log-2"), "db.yaml": rule("db-log")}, version=3
        )
        await h.look_at_rules()
        await h.look_at_rules()
        assert await rule_names(h) == ["api-log-2", "db-log"]


def test_the_rule_files_are_found_while_kubelet_swaps_a_configmap_volume(tmp_path: Path) -> None:
    # kubelet deletes the old `..<version>` folder right after the `..data` swap: a walk
    # into that hidden folder as it goes raised FileNotFoundError — a reload that failed
    # (metric at 0, the new rules not live) until the next change. Bounded: 1.5 s of swaps.
    rules_dir = tmp_path / "rules"
    files = {f"r{i}.yaml": rule(f"r{i}") for i in range(3)}
    configmap_volume(rules_dir, files, 0)
    stop = threading.Event()

    def kubelet() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            configmap_volume(rules_dir, files, version)

    swapping = threading.Thread(target=kubelet)
    swapping.start()
    walks, failures = 0, []
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            walks += 1
            try:
                found = loader.rule_files(rules_dir)
            except OSError as exc:
                failures.append(repr(exc))
                continue
            # A visible link read across the swap may miss its file (kubelet's protocol
            # has that instant too); a hidden path is never returned.
            assert {p.name for p in found} <= set(files)
    finally:
        stop.set()
        swapping.join()
    assert walks > 100
    assert failures == []


async def test_a_broken_file_keeps_the_rules_that_run_until_it_is_fixed(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=INTERVAL) as h:
        assert await h.metric("remediator_config_last_reload_successful") == 1
        with structlog.testing.capture_logs() as logs:
            (h.rules_dir / "rules.yaml").write_text(rule("api-log") + "    limits: {cooldown: x}\n")
            for _ in range(4):  # the same broken file is tried once, not at every look
                await h.look_at_rules()
        assert [e["event"] for e in logs].count("reload_failed") == 1
        assert await rule_names(h) == ["api-log"]
        assert await h.metric("remediator_config_last_reload_successful") == 0
        await h.fire(am_alert("APIDown"))
        assert [d["rule"] for d in await h.decisions()] == ["api-log"]

        (h.rules_dir / "rules.yaml").write_text(rule("api-log-fixed"))
        await h.look_at_rules()
        await h.look_at_rules()
        assert await rule_names(h) == ["api-log-fixed"]
        assert await h.metric("remediator_config_last_reload_successful") == 1


async def test_yaml_nested_too_deeply_fails_the_reload_at_its_file(tmp_path: Path) -> None:
    # Deeper than PyYAML (one Python call per level) can recurse: a RecursionError that
    # escaped the loader, so the reload raised instead of failing.
    async with Harness(tmp_path, rules=rule("api-log")) as h:
        deep = h.rules_dir / "deep.yaml"
        deep.write_text("rules: " + "[" * 5000 + "]" * 5000 + "\n")
        ok, message = await h.daemon.reload()
        assert (ok, message) == (False, f"{deep}:0: invalid YAML: nested too deeply")
        deep.unlink()
        h.config_path.write_text("blackouts: " + "[" * 5000 + "]" * 5000 + "\n")
        ok, message = await h.daemon.reload()
        assert (ok, message) == (
            False,
            f"{h.config_path}:0: invalid YAML: nested too deeply",
        )
        assert await h.metric("remediator_config_last_reload_successful") == 0
        assert await rule_names(h) == ["api-log"]


async def test_whatever_reading_raises_the_reload_fails_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Harness(tmp_path, rules=rule("api-log")) as h:

        def broken(directory: Path) -> list[Path]:
            raise OSError(5, "Input/output error")  # fault injection: a failing volume

        monkeypatch.setattr(loader, "rule_files", broken)
        with structlog.testing.capture_logs() as logs:
            ok, message = await h.daemon.reload()
        assert not ok
        assert "Input/output error" in message
        assert [e["event"] for e in logs].count("reload_failed") == 1
        assert await h.metric("remediator_config_last_reload_successful") == 0
        assert await rule_names(h) == ["api-log"]


async def test_a_config_file_change_is_reloaded_too(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=INTERVAL) as h:
        assert h.daemon.settings.dry_run
        h.config_path.write_text("dry_run: false\n")
        await h.look_at_rules()
        await h.look_at_rules()
        assert not h.daemon.settings.dry_run


async def test_a_sighup_reload_after_an_edit_is_not_followed_by_a_second_one(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=INTERVAL) as h:
        with structlog.testing.capture_logs() as logs:
            (h.rules_dir / "rules.yaml").write_text(rule("api-log-v2"))
            await h.look_at_rules()  # seen changing...
            assert (await h.daemon.reload())[0]  # ...and reloaded by hand meanwhile
            await h.look_at_rules()
            await h.look_at_rules()
        assert [e["event"] for e in logs].count("rules_reloaded") == 1
        assert await rule_names(h) == ["api-log-v2"]


async def test_with_the_interval_at_zero_nothing_watches(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=0.0) as h:
        assert h.daemon.watcher is None
        (h.rules_dir / "rules.yaml").write_text(rule("api-log-v2"))
        await h.advance(3600)
        assert await rule_names(h) == ["api-log"]


async def test_shutdown_does_not_wait_for_the_next_look(tmp_path: Path) -> None:
    # A day between looks on a clock that never moves: the stop must wake the wait, so
    # that the task ends by itself rather than being cancelled after a second.
    h = Harness(tmp_path, rules=rule("api-log"), rules_watch_interval=86400.0)
    await h.start()
    with structlog.testing.capture_logs() as logs:
        await h.stop()
    assert h.daemon.watcher is not None and h.daemon.watcher.polls == 0
    assert "rules_watch_cancelled" not in [e["event"] for e in logs]  # it ended by itself
