"""The daemon under test: its command line, config, rule sets, and the bare ceiling.

The daemon runs exactly as an operator would run it (``python -m remediator serve``), in
dry-run, with the embedded default backends in a fresh data directory, and with global
budgets raised so that no bench alert is skipped for budget reasons.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from bench import procs

BENCH_RULES = Path(__file__).resolve().parent / "rules"
WEBHOOK_PATH = "/webhook/alertmanager"
#: The daemon's log level for the bench: a log line per decision would be measured too.
DAEMON_ENV = {"REMEDIATOR_LOG_LEVEL": "warning"}
#: Default bound on the daemon's intake backlog during the bench (alerts).
BACKLOG_LIMIT = 20_000

_CONFIG = """\
# Written by bench/daemon.py: budgets high enough that no bench alert is skipped for them.
limits:
  max_actions_per_window: 100000000
  max_targets_per_window: 100000000
  window: {window}
  max_concurrent_actions: 64
intake:
  backlog_limit: {backlog_limit}
"""

_UNRELATED_RULE = """\
  - name: unrelated-{i:04d}
    matchers: ['alertname = "Unrelated{i}"']
    action: {{type: log, params: {{message: "unrelated {{{{ labels.instance }}}}"}}}}
    limits: {{cooldown: 0s, max_attempts: 1000000, window: 1h}}
"""


def write_config(path: Path, *, backlog_limit: int = BACKLOG_LIMIT, window: str = "1h") -> Path:
    """The daemon config file for a bench run with the given intake backlog bound and
    global budget window."""
    path.write_text(_CONFIG.format(backlog_limit=backlog_limit, window=window))
    return path


def write_many_rules(directory: Path, *, unrelated: int = 1000) -> Path:
    """A rules directory with the bench rule plus ``unrelated`` rules that never match.

    Each unrelated rule matches its own alertname, so an index by alertname should make
    them free for BenchAlert; a linear scan would show in the "cost vs rule count" figure.
    """
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BENCH_RULES / "bench.yaml", directory / "bench.yaml")
    text = "rules:\n" + "".join(_UNRELATED_RULE.format(i=i) for i in range(unrelated))
    (directory / "unrelated.yaml").write_text(text)
    return directory


def daemon_process(
    *,
    name: str,
    workdir: Path,
    rules: Path = BENCH_RULES,
    backlog_limit: int = BACKLOG_LIMIT,
    window: str = "1h",
    python: str = sys.executable,
) -> procs.ServerProcess:
    """A not yet started daemon with its own port, data dir, config file and log file."""
    home = workdir / name
    home.mkdir(parents=True)
    data_dir = home / "data"
    data_dir.mkdir()
    config = write_config(home / "config.yaml", backlog_limit=backlog_limit, window=window)
    port = procs.free_port()
    argv = [
        python,
        "-m",
        "remediator",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"{procs.LOOPBACK}:{port}",
        "--data-dir",
        str(data_dir),
        "--rules",
        str(rules),
        "--dry-run",
    ]
    return procs.ServerProcess(
        name=name, argv=argv, port=port, log_path=home / "daemon.log", env=DAEMON_ENV
    )


def bare_process(
    *, workdir: Path, python: str = sys.executable, writes: str = "none"
) -> procs.ServerProcess:
    """A not yet started bare aiohttp server (the ceiling) on its own port; with `writes`
    (`bench.bare_server.WRITES`), the floor: it also makes the daemon's durable writes."""
    port = procs.free_port()
    argv = [python, "-m", "bench.bare_server", "--listen", f"{procs.LOOPBACK}:{port}"]
    name = "bare-aiohttp"
    if writes != "none":
        name = f"bare-writes-{writes}"
        data_dir = workdir / name
        data_dir.mkdir()
        argv += ["--writes", writes, "--data-dir", str(data_dir)]
    return procs.ServerProcess(name=name, argv=argv, port=port, log_path=workdir / f"{name}.log")
