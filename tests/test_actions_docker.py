"""`docker.restart` as the compose-host runbooks use it (`docker compose restart backend`,
`docker compose restart redis`), against a real Docker Engine started by the tests.

One engine for the whole session (servers.DockerEngine: Debian's dockerd on its own
socket in a temporary directory, no network of its own, stopped by its PID with its
containers removed), one busybox image imported from Debian's busybox-static, containers
run with `--network none`, named after the test that made them and removed after it.
Each test fires an alert at the in-process daemon, then reads the engine back: states,
start times, health, and the engine's own events. Without root, dockerd or a static
busybox, or when the kernel refuses to run a container, these tests are skipped saying
why.

The in-repo emulator (tests/docker_emulator.py) stays for what a real engine cannot be
made to do on demand: a 500 after the restart happened or before anything did, a
restart that never answers, an engine whose API version changes under the daemon.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from remediator import errors
from remediator import settings as settings_mod
from remediator.actions import registry
from remediator.actions.docker import DockerConfig
from remediator.matching import loader
from tests import servers
from tests.docker_emulator import DockerEmulator, Request
from tests.harness import Harness, am_alert

REPO = Path(__file__).resolve().parent.parent
_ACTION = registry.get("docker.restart")
assert _ACTION is not None
ACTION = _ACTION

IMAGE = "remediator-busybox:test"
HEALTH_IMAGE = "remediator-busybox-health:test"
"""The same root filesystem with a HEALTHCHECK in the image, as a Dockerfile has it:
healthy once /dev/ready exists (/dev is a fresh tmpfs at every start, so a restarted
container is not ready until it says so again)."""
IMAGE_HEALTHCHECK = "HEALTHCHECK --interval=100ms --start-period=60s CMD test -f /dev/ready"

SERVE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"
"""A service that stops at once on SIGTERM."""
IGNORES_TERM = "trap '' TERM; while :; do sleep 3600 & wait; done"
READY_SOON = f"(sleep 0.3; touch /dev/ready) & {SERVE}"
BREAKS_ITS_NEXT_START = f"rm /bin/sh; {SERVE}"
"""Runs, but its command (/bin/sh) is gone at the next start: the engine answers the
restart with a 500 and leaves the container stopped, as with `port is already allocated`."""
EXITS_ON_ITS_NEXT_START = (
    "if [ -f /started ]; then echo 'DATABASE_URL is not set' >&2; exit 3; fi; "
    f"touch /started; {SERVE}"
)
MS = 1_000_000
HEALTH_FAILS = {
    # The first probe of each run (/dev is new at every start) counts the runs in /runs,
    # which lasts: every probe says which run it belongs to.
    "Test": [
        "CMD-SHELL",
        "[ -f /dev/probed ] || { touch /dev/probed; echo $(( $(cat /runs 2>/dev/null) + 1 )) "
        '> /runs; }; echo "run $(cat /runs): GET /health: connect ECONNREFUSED '
        '127.0.0.1:3001"; exit 1',
    ],
    "Interval": 100 * MS,
    "Retries": 1,
}
HEALTH_NOT_YET_PROBED = {"Test": ["CMD-SHELL", "true"], "Interval": 3600 * 1000 * MS}
"""Stays `starting` for an hour: the first probe runs one interval after the start."""

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


def compose(project: str, service: str, number: int = 1, **more: str) -> dict[str, str]:
    """The labels `docker compose up` puts on a service's container."""
    return {
        PROJECT_LABEL: project,
        SERVICE_LABEL: service,
        "com.docker.compose.container-number": str(number),
        "com.docker.compose.oneoff": "False",
        **more,
    }


def container_rule(stop_timeout: str | None = None) -> str:
    stop = f", stop_timeout: {stop_timeout}" if stop_timeout else ""
    return f"""
rules:
  - name: apidown-docker
    matchers: ['alertname = "APIDown"']
    action:
      type: docker.restart
      params: {{container: "{{{{ labels.container }}}}"{stop}}}
"""


CONTAINER_RULE = container_rule()

SERVICE_RULE = """
rules:
  - name: apidown-compose
    matchers: ['alertname = "APIDown"']
    action:
      type: docker.restart
      params:
        compose_service: "{{ labels.compose_project }}/backend"
        stop_timeout: 3s
        max_containers: 3
"""


# --------------------------------------------------------------------------- the engine


@pytest.fixture(scope="session")
def engine() -> Iterator[servers.DockerEngine]:
    why = servers.DockerEngine.unavailable()
    if why is not None:
        pytest.skip(f"no real Docker engine: {why}")
    server = servers.DockerEngine()
    try:
        server.start()
        server.import_busybox(IMAGE)
        server.import_busybox(HEALTH_IMAGE, changes=[IMAGE_HEALTHCHECK])
        # One container end to end: cgroups, runc, seccomp, the root filesystem.
        probe = server.create("remediator-probe", IMAGE, ["/bin/sh", "-c", "exit 7"])
        server.start_container(probe)
        code = server.wait_container(probe)
        if code != 7:
            raise servers.ServerError(f"a probe container exited {code}, not 7{server.output()}")
        server.api("DELETE", f"/containers/{probe}")
    except servers.ServerError as exc:
        server.stop()
        pytest.skip(f"the Docker engine cannot run a container on this machine: {exc}")
    try:
        yield server
    finally:
        server.stop()


_tests = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class Box:
    """A container a test made, as it was when made."""

    name: str
    id: str
    started_at: str


class Docker:
    """The session's engine as one test sees it: its containers carry the test's tag in
    their names (and its compose projects in their labels), and are removed after it."""

    def __init__(self, engine: servers.DockerEngine) -> None:
        self.engine = engine
        self.tag = f"t{next(_tests)}"
        self._ids: list[str] = []

    @property
    def socket(self) -> Path:
        return self.engine.socket_path

    def project(self, name: str = "shop") -> str:
        return f"{self.tag}-{name}"

    async def run(
        self,
        name: str,
        script: str = SERVE,
        *,
        labels: Mapping[str, str] | None = None,
        healthcheck: Mapping[str, Any] | None = None,
        image: str = IMAGE,
        env: Sequence[str] = (),
        start: bool = True,
    ) -> Box:
        """A container named `name` (prefixed with the test's tag unless it already is)
        running `sh -c script`; `start=False` only creates it."""
        full = name if name.startswith(f"{self.tag}-") else f"{self.tag}-{name}"

        def make() -> str:
            cid = self.engine.create(
                full, image, ["/bin/sh", "-c", script], labels=labels, healthcheck=healthcheck,
                env=env,
            )  # fmt: skip
            self._ids.append(cid)
            if start:
                self.engine.start_container(cid)
            return cid

        cid = await asyncio.to_thread(make)
        return Box(full, cid, (await self.state(cid))["StartedAt"])

    async def service(self, project: str, service: str, count: int, **kw: Any) -> list[Box]:
        """`count` containers of a compose service, named as compose names them."""
        made = [
            self.run(f"{project}-{service}-{n}", labels=compose(project, service, n), **kw)
            for n in range(1, count + 1)
        ]
        return list(await asyncio.gather(*made))

    async def inspect(self, ref: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.engine.inspect, ref)

    async def state(self, ref: str) -> dict[str, Any]:
        state: dict[str, Any] = (await self.inspect(ref))["State"]
        return state

    async def stop(self, box: Box) -> None:
        await asyncio.to_thread(self.engine.stop_container, box.id)

    async def wait_health(self, box: Box, status: str) -> None:
        for _ in range(200):
            if _dig(await self.state(box.id), "Health", "Status") == status:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{box.name} never reported {status}")

    async def wait_gone(self, box: Box, path: str) -> None:
        """Until `path` no longer exists in the container (its script removed it)."""
        for _ in range(200):
            if not await asyncio.to_thread(self.engine.path_exists, box.id, path):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path} still exists in {box.name}")

    async def events(self, box: Box, since: float) -> list[tuple[str, int, dict[str, str]]]:
        """(action, time in ns, attributes) of the engine's events for the container."""
        found = await asyncio.to_thread(
            self.engine.events, box.id, since=since, until=time.time() + 0.001
        )
        return [(e["Action"], int(e["timeNano"]), e["Actor"]["Attributes"]) for e in found]

    async def close(self) -> None:
        def remove(cid: str) -> None:
            self.engine.api("DELETE", f"/containers/{cid}", query={"force": "1"}, expect=(204, 404))

        await asyncio.gather(*(asyncio.to_thread(remove, cid) for cid in self._ids))


@pytest.fixture
async def docker(engine: servers.DockerEngine) -> AsyncIterator[Docker]:
    d = Docker(engine)
    try:
        yield d
    finally:
        await d.close()


def config(
    socket: Path, *, containers: Sequence[str] = (), services: Sequence[str] = (), extra: str = ""
) -> str:
    """A config whose `docker:` allow-lists hold exactly these; `extra` is appended
    (indent a line by two spaces to put it in the `docker:` section)."""
    return f"""
docker:
  socket: {socket}
  api_version: auto
  allowed_containers: [{", ".join(containers)}]
  allowed_compose_services: [{", ".join(services)}]
{extra}"""


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


async def one_decision(h: Harness) -> dict[str, Any]:
    [row] = await h.decisions()
    return row


async def decide(
    tmp_path: Path,
    alert: dict[str, Any],
    *,
    config: str,
    rules: str = CONTAINER_RULE,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Fire one alert at a daemon with these rules and config; its one decision."""
    async with Harness(tmp_path, rules=rules, config=config, dry_run=dry_run) as h:
        await h.fire(alert)
        return await one_decision(h)


# --------------------------------------------------------------------------- restarts


async def test_an_allowed_container_is_restarted_and_read_back_running_with_a_new_start_time(
    tmp_path: Path, docker: Docker
) -> None:
    backend = await docker.run("backend", labels={"app": "conectcrm"})
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    after = await docker.state(backend.id)
    assert (row["outcome"], row["reason"], row["target"]) == (
        "executed",
        "",
        f"docker.restart container/{backend.name}",
    )
    assert after["Status"] == "running"
    assert when(after["StartedAt"]) > when(backend.started_at)
    assert row["result"] == {
        "checked": True,
        "stop_timeout": 10,
        "containers": [
            {
                "name": backend.name,
                "id": backend.id[:12],
                "status_before": "running",
                "started_at_before": backend.started_at,
                "status": "running",
                "health": "none",
                "started_at": after["StartedAt"],
            }
        ],
    }
    assert f"running since {after['StartedAt']}" in row["detail"]


async def test_a_container_allowed_by_full_id_is_restarted_and_an_id_prefix_never_counts(
    tmp_path: Path, docker: Docker
) -> None:
    # `db`'s short id is on the allow-list as if it were a name: the engine resolves a
    # reference it cannot find by name as an id prefix, and would pick `db`. Only an exact
    # name or a full id counts.
    api, db = await docker.run("api"), await docker.run("db")
    cfg = config(docker.socket, containers=[api.id, db.id[:12]])
    async with Harness(tmp_path, rules=CONTAINER_RULE, config=cfg, dry_run=False) as h:
        await h.fire(am_alert("APIDown", container=api.id))
        await h.fire(am_alert("APIDown", container=db.id[:12]))
        rows = await h.decisions()
    by_target = {r["target"]: r for r in rows}
    assert by_target[f"docker.restart container/{api.id}"]["outcome"] == "executed"
    refused = by_target[f"docker.restart container/{db.id[:12]}"]
    assert (refused["outcome"], refused["reason"]) == ("failed", "action_error")
    assert refused["detail"] == (
        f"inspect container {db.id[:12]!r}: the engine resolved it to {db.name!r} "
        f"({db.id[:12]}), not a container of that name: refusing to restart it; allow-list "
        "ids must be full 64-character ids"
    )
    assert when((await docker.state(api.id))["StartedAt"]) > when(api.started_at)
    assert (await docker.state(db.id))["StartedAt"] == db.started_at


async def test_a_compose_service_restarts_each_of_its_containers_and_the_audit_lists_them_all(
    tmp_path: Path, docker: Docker
) -> None:
    shop, blog = docker.project("shop"), docker.project("blog")
    one, two, three = await docker.service(shop, "backend", 3)
    await docker.stop(two)  # a stopped container of the service is started again
    stopped = await docker.state(two.id)
    # Not of the service, so never restarted: had they been, they would run now.
    oneoff = compose(shop, "backend", **{"com.docker.compose.oneoff": "True"})
    untouched = await asyncio.gather(
        docker.run(f"{shop}-backend-run-1", labels=oneoff, start=False),  # `compose run`
        docker.run(f"{shop}-frontend-1", labels=compose(shop, "frontend"), start=False),
        docker.run(f"{blog}-backend-1", labels=compose(blog, "backend"), start=False),
    )
    cfg = config(docker.socket, services=[f"{shop}/backend"])
    row = await decide(
        tmp_path, am_alert("APIDown", compose_project=shop), rules=SERVICE_RULE, config=cfg
    )
    assert (row["outcome"], row["target"]) == ("executed", f"docker.restart compose/{shop}/backend")
    listed = row["result"]["containers"]
    assert [c["name"] for c in listed] == [one.name, two.name, three.name]
    for box, entry in zip((one, two, three), listed, strict=True):
        now = await docker.state(box.id)
        assert now["Status"] == "running"
        assert entry["started_at"] == now["StartedAt"]  # the audit has the new start time
        assert when(now["StartedAt"]) > when(stopped["StartedAt"] if box is two else box.started_at)
    assert listed[1]["status_before"] == "exited"
    for box in untouched:
        assert (await docker.state(box.id))["Status"] == "created"
    assert row["result"]["stop_timeout"] == 3
    for box in (one, two, three):
        assert f"{box.name} ({box.id[:12]}) running since" in row["detail"]


async def test_a_stopped_container_is_started_again(tmp_path: Path, docker: Docker) -> None:
    backend = await docker.run("backend")
    await docker.stop(backend)
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    assert row["outcome"] == "executed"
    assert (await docker.state(backend.id))["Status"] == "running"
    [done] = row["result"]["containers"]
    assert (done["status_before"], done["status"]) == ("exited", "running")
    assert "(was exited since" in row["detail"]


async def test_the_rules_stop_timeout_is_honoured_for_a_container_that_ignores_sigterm(
    tmp_path: Path, docker: Docker
) -> None:
    stubborn = await docker.run("worker", IGNORES_TERM)
    cfg = config(docker.socket, containers=[stubborn.name])  # docker.stop_timeout: 10s
    since = time.time()
    row = await decide(
        tmp_path,
        am_alert("APIDown", container=stubborn.name),
        rules=container_rule(stop_timeout="1s"),
        config=cfg,
    )
    assert row["outcome"] == "executed" and row["result"]["stop_timeout"] == 1
    events = [(a, t, attrs) for a, t, attrs in await docker.events(stubborn, since) if a != "start"]
    assert [(a, attrs.get("signal", attrs.get("exitCode"))) for a, _, attrs in events] == [
        ("kill", "15"),  # SIGTERM, ignored
        ("kill", "9"),  # SIGKILL once the stop timeout ran out
        ("die", "137"),
        ("stop", None),
        ("restart", None),
    ]
    # The engine's own clock: SIGKILL came after the rule's 1 s, not the config's 10 s.
    waited = (events[1][1] - events[0][1]) / 1e9
    assert 1.0 <= waited < 10.0
    assert (await docker.state(stubborn.id))["Status"] == "running"


# --------------------------------------------------------------------------- read-back


async def test_a_restart_waits_for_the_images_health_check_to_report_healthy(
    tmp_path: Path, docker: Docker
) -> None:
    backend = await docker.run("backend", READY_SOON, image=HEALTH_IMAGE)
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    assert row["outcome"] == "executed"
    [done] = row["result"]["containers"]
    # Right after a restart the engine reports `starting`; the row is written once healthy.
    assert (done["status"], done["health"]) == ("running", "healthy")
    assert f"{backend.name} ({backend.id[:12]}) running, healthy since" in row["detail"]
    state = await docker.state(backend.id)
    assert done["started_at"] == state["StartedAt"] != backend.started_at


async def test_a_container_unhealthy_after_its_restart_is_a_failed_attempt_quoting_its_health_log(
    tmp_path: Path, docker: Docker
) -> None:
    backend = await docker.run("backend", healthcheck=HEALTH_FAILS)
    await docker.wait_health(backend, "unhealthy")  # the run before has its failures too
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    state = await docker.state(backend.id)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"].startswith(
        f"container {backend.name} was restarted (running since {state['StartedAt']}) but its "
        "health check reports unhealthy: last health check output: [exit 1] run 2: GET "
        "/health: connect ECONNREFUSED 127.0.0.1:3001"
    )
    assert "run 1" not in row["detail"]  # Docker keeps the run before's results: not evidence
    [seen] = row["result"]["containers"]  # the failed attempt's evidence, in its row
    assert (seen["name"], seen["health"]) == (backend.name, "unhealthy")


async def test_a_health_check_still_starting_at_the_health_timeout_is_a_failed_attempt(
    tmp_path: Path, docker: Docker
) -> None:
    backend = await docker.run("backend", healthcheck=HEALTH_NOT_YET_PROBED)
    cfg = config(docker.socket, containers=[backend.name], extra="  health_timeout: 1s\n")
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"].endswith(
        "but its health check still reports starting after 1s (`docker.health_timeout`): "
        "no health check has run since the restart"
    )
    assert when((await docker.state(backend.id))["StartedAt"]) > when(backend.started_at)


async def test_a_container_that_exits_right_after_its_restart_is_a_failed_attempt(
    tmp_path: Path, docker: Docker
) -> None:
    backend = await docker.run(
        "backend", EXITS_ON_ITS_NEXT_START, healthcheck=HEALTH_NOT_YET_PROBED
    )
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    state = await docker.state(backend.id)
    assert (state["Status"], state["ExitCode"]) == ("exited", 3)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"] == (
        f"container {backend.name} was restarted at {state['StartedAt']} but is now exited "
        "(exit code 3): it does not stay up; a human must look"
    )


async def test_a_service_restart_stops_at_the_first_container_that_does_not_come_back(
    tmp_path: Path, docker: Docker
) -> None:
    shop = docker.project()
    one = await docker.run(f"{shop}-backend-1", labels=compose(shop, "backend", 1))
    two = await docker.run(
        f"{shop}-backend-2", BREAKS_ITS_NEXT_START, labels=compose(shop, "backend", 2)
    )
    three = await docker.run(f"{shop}-backend-3", labels=compose(shop, "backend", 3))
    await docker.wait_gone(two, "/bin/sh")
    cfg = config(docker.socket, services=[f"{shop}/backend"])
    row = await decide(
        tmp_path, am_alert("APIDown", compose_project=shop), rules=SERVICE_RULE, config=cfg
    )
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    detail = row["detail"]
    assert detail.startswith(f"restarted {one.name}; then: restart container {two.id[:12]}: ")
    assert f"HTTP 500: Cannot restart container {two.id}: " in detail
    assert "no such file or directory" in detail  # the engine's own reason
    assert "the container is now exited (it was running)" in detail
    assert detail.endswith(f"; not restarted: {three.name}")
    assert when((await docker.state(one.id))["StartedAt"]) > when(one.started_at)
    assert (await docker.state(two.id))["Status"] == "exited"
    assert (await docker.state(three.id))["StartedAt"] == three.started_at


async def test_a_compose_service_with_more_containers_than_max_containers_is_left_alone(
    tmp_path: Path, docker: Docker
) -> None:
    shop = docker.project()
    boxes = await docker.service(shop, "backend", 4, start=False)
    cfg = config(docker.socket, services=[f"{shop}/backend"])
    row = await decide(
        tmp_path, am_alert("APIDown", compose_project=shop), rules=SERVICE_RULE, config=cfg
    )
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "has 4 containers, more than max_containers (3): none restarted" in row["detail"]
    for box in boxes:
        assert (await docker.state(box.id))["Status"] == "created"


# --------------------------------------------------------------------------- refusals


async def test_a_container_outside_the_allow_list_is_never_restarted(
    tmp_path: Path, docker: Docker
) -> None:
    db = await docker.run("db")
    cfg = config(docker.socket, containers=[f"{docker.tag}-backend"])
    row = await decide(tmp_path, am_alert("APIDown", container=db.name), config=cfg)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert row["detail"] == (
        f"docker.restart: param 'container': {db.name!r} is not in `docker.allowed_containers` "
        f"(allowed: {docker.tag}-backend)"
    )
    assert (await docker.state(db.id))["StartedAt"] == db.started_at


async def test_a_label_cannot_point_a_compose_restart_at_another_project(
    tmp_path: Path, docker: Docker
) -> None:
    shop, blog = docker.project("shop"), docker.project("blog")
    [other] = await docker.service(blog, "backend", 1)
    cfg = config(docker.socket, services=[f"{shop}/backend"])
    row = await decide(
        tmp_path, am_alert("APIDown", compose_project=blog), rules=SERVICE_RULE, config=cfg
    )
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "`docker.allowed_compose_services`" in row["detail"]
    assert (await docker.state(other.id))["StartedAt"] == other.started_at


async def test_a_label_that_is_not_a_container_name_is_refused_before_the_action_runs(
    tmp_path: Path,
) -> None:
    # No engine behind the socket: had the action run, it would have failed on it.
    cfg = config(tmp_path / "no.sock", containers=["backend"])
    row = await decide(
        tmp_path,
        am_alert("APIDown", container="backend/../../v1.43/containers/db"),
        config=cfg,
    )
    assert (row["outcome"], row["reason"]) == ("skipped", "template_error")
    assert "is not a container name or id" in row["detail"]


async def test_a_live_run_without_a_docker_section_is_refused(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=CONTAINER_RULE, dry_run=False) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "no `docker:` section in the config file" in row["detail"]


# --------------------------------------------------------------------------- failures


async def test_an_absent_socket_fails_saying_which_socket_and_what_to_check(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-docker.sock"
    cfg = config(missing, containers=["backend"])
    row = await decide(tmp_path, am_alert("APIDown", container="backend"), config=cfg)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert f"Docker socket {missing} does not exist" in row["detail"]
    assert "`docker.socket`" in row["detail"]


async def test_an_unknown_container_fails_with_the_engines_404_message(
    tmp_path: Path, docker: Docker
) -> None:
    name = f"{docker.tag}-backend"
    cfg = config(docker.socket, containers=[name])
    row = await decide(tmp_path, am_alert("APIDown", container=name), config=cfg)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"] == (
        f"inspect container {name!r}: no such container on this Docker engine "
        f"(No such container: {name})"
    )


async def test_a_compose_project_with_no_containers_fails_naming_the_labels(
    tmp_path: Path, docker: Docker
) -> None:
    shop = docker.project()
    cfg = config(docker.socket, services=[f"{shop}/backend"])
    row = await decide(
        tmp_path, am_alert("APIDown", compose_project=shop), rules=SERVICE_RULE, config=cfg
    )
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert f"{PROJECT_LABEL}={shop} and {SERVICE_LABEL}=backend" in row["detail"]


async def test_a_restart_whose_start_fails_leaves_the_container_stopped_and_says_so(
    tmp_path: Path, docker: Docker
) -> None:
    backend = await docker.run("backend", BREAKS_ITS_NEXT_START)
    await docker.wait_gone(backend, "/bin/sh")
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert f"HTTP 500: Cannot restart container {backend.id}: " in row["detail"]
    assert row["detail"].endswith(
        "the container is now exited (it was running): it may have been stopped and not "
        "started again; a human must look"
    )
    assert (await docker.state(backend.id))["Status"] == "exited"


async def test_an_engine_answer_over_4_mib_is_refused_not_buffered(
    tmp_path: Path, docker: Docker
) -> None:
    backend = await docker.run("backend", env=["BLOB=" + "x" * (5 << 20)], start=False)
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(tmp_path, am_alert("APIDown", container=backend.name), config=cfg)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"] == (
        f"inspect: the Docker engine on {docker.socket} answered HTTP 200 with more "
        "than 4 MiB; refusing to read it (is `docker.socket` really a Docker engine?)"
    )
    assert (await docker.state(backend.id))["Status"] == "created"


async def test_an_api_version_the_engine_refuses_fails_naming_the_config_key(
    tmp_path: Path, docker: Docker
) -> None:
    name = f"{docker.tag}-backend"  # never reached: the first call is refused
    pinned = config(docker.socket, containers=[name]).replace(
        "api_version: auto", 'api_version: "1.999"'
    )
    row = await decide(tmp_path, am_alert("APIDown", container=name), config=pinned)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"].startswith(
        f"inspect container {name!r}: the engine refuses the API version (client version "
        "1.999 is too new. Maximum supported API version is "
    )
    assert "set `docker.api_version` to auto" in row["detail"]


# --------------------------------------------------------------------------- dry run


async def test_a_dry_run_only_reads_and_says_what_it_would_restart(
    tmp_path: Path, docker: Docker
) -> None:
    labels = compose(docker.project(), "backend")
    backend = await docker.run("backend", labels=labels, env=["DB_PASSWORD=hunter2"])
    cfg = config(docker.socket, containers=[backend.name])
    row = await decide(
        tmp_path,
        am_alert("APIDown", container=backend.name),
        config=cfg,
        dry_run=True,
    )
    assert (row["outcome"], row["reason"]) == ("dry_run", "")
    assert row["detail"] == (
        f"would restart container {backend.name}: {backend.name} ({backend.id[:12]}, running "
        f"since {backend.started_at}); stop timeout 10s"
    )
    assert (await docker.state(backend.id))["StartedAt"] == backend.started_at
    [seen] = row["result"]["containers"]
    assert (seen["status"], seen["health"], seen["labels"]) == ("running", "none", labels)
    assert "hunter2" not in json.dumps(row)  # the environment is never copied to the audit


async def test_a_dry_run_of_an_unknown_container_records_why_it_would_fail(
    tmp_path: Path, docker: Docker
) -> None:
    name = f"{docker.tag}-backend"
    cfg = config(docker.socket, containers=[name])
    row = await decide(tmp_path, am_alert("APIDown", container=name), config=cfg, dry_run=True)
    assert (row["outcome"], row["reason"]) == ("dry_run", "action_error")
    assert f"No such container: {name}" in row["detail"]


# --------------------------------------------------------------------------- example rules


async def test_the_compose_apidown_example_rule_restarts_the_backend_service(
    tmp_path: Path, docker: Docker
) -> None:
    shop = docker.project()
    backends = await docker.service(shop, "backend", 2)
    [redis] = await docker.service(shop, "redis", 1, start=False)
    rules = (REPO / "rules" / "compose-apidown.yaml").read_text()
    cfg = config(docker.socket, services=[f"{shop}/backend", f"{shop}/redis"])
    row = await decide(
        tmp_path, am_alert("APIDown", compose_project=shop, job="api"), rules=rules, config=cfg
    )
    assert (row["rule"], row["outcome"]) == ("apidown-compose-restart", "executed")
    assert [c["name"] for c in row["result"]["containers"]] == [b.name for b in backends]
    for box in backends:
        assert when((await docker.state(box.id))["StartedAt"]) > when(box.started_at)
    assert (await docker.state(redis.id))["Status"] == "created"


async def test_the_redisdown_example_rule_restarts_the_redis_service_and_nothing_else(
    tmp_path: Path, docker: Docker
) -> None:
    shop = docker.project()
    [backend] = await docker.service(shop, "backend", 1, start=False)
    [redis] = await docker.service(shop, "redis", 1)
    rules = (REPO / "rules" / "compose-redisdown.yaml").read_text()
    cfg = config(docker.socket, services=[f"{shop}/backend", f"{shop}/redis"])
    row = await decide(
        tmp_path, am_alert("RedisDown", compose_project=shop, job="redis"), rules=rules, config=cfg
    )
    assert (row["rule"], row["outcome"], row["target"]) == (
        "redisdown-compose-restart",
        "executed",
        f"docker.restart compose/{shop}/redis",
    )
    assert [c["name"] for c in row["result"]["containers"]] == [redis.name]
    assert when((await docker.state(redis.id))["StartedAt"]) > when(redis.started_at)
    assert (await docker.state(backend.id))["Status"] == "created"


async def test_the_compose_example_rule_dry_runs_without_any_config(tmp_path: Path) -> None:
    rules = (REPO / "rules" / "compose-apidown.yaml").read_text()
    async with Harness(tmp_path, rules=rules) as h:
        await h.fire(am_alert("APIDown", compose_project="shop"))
        # The Kubernetes case of APIDown carries a namespace: not this rule's.
        await h.fire(am_alert("APIDown", namespace="prod", deployment="api"))
        row = await one_decision(h)
    assert (row["rule"], row["outcome"], row["target"]) == (
        "apidown-compose-restart",
        "dry_run",
        "docker.restart compose/shop/backend",
    )
    assert "not checked: no `docker:` config" in row["detail"]
    assert row["result"] == {"checked": False, "stop_timeout": 10}


async def test_the_compose_example_rule_does_not_match_the_kubernetes_example_payload(
    tmp_path: Path,
) -> None:
    rules = (REPO / "rules" / "compose-apidown.yaml").read_text()
    body = json.loads((REPO / "examples" / "apidown.json").read_text())
    async with Harness(tmp_path, rules=rules) as h:
        resp = await h.post(body)
        assert resp.status == 200
        await h.settle()
        assert await h.decisions() == []


# --------------------------------------------------------------------------- emulator
# What a real engine cannot be made to do on demand: answer a restart with a 500 after
# it happened, or before doing anything; never answer; change its API version.


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[DockerEmulator]:
    async with DockerEmulator(tmp_path / "docker.sock") as e:
        yield e


def emulated(e: DockerEmulator, extra: str = "") -> str:
    return config(e.socket_path, containers=["backend", "deadbeef"], extra=extra)


async def test_a_500_after_the_restart_happened_says_the_container_did_restart(
    tmp_path: Path, emulator: DockerEmulator
) -> None:
    backend = emulator.add("backend")
    emulator.fail_next_restart(message="write /var/lib/docker: disk full", effect="restarted")
    row = await decide(
        tmp_path,
        am_alert("APIDown", container="backend"),
        config=emulated(emulator),
    )
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert f"the container did restart: running since {backend.started_at}" in row["detail"]
    assert backend.restarts == 1 and len(emulator.posts()) == 1


async def test_a_500_before_anything_happened_is_reported_and_never_retried(
    tmp_path: Path, emulator: DockerEmulator
) -> None:
    backend = emulator.add("backend")
    emulator.fail_next_restart(message="context deadline exceeded", effect="none")
    row = await decide(
        tmp_path,
        am_alert("APIDown", container="backend"),
        config=emulated(emulator),
    )
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "HTTP 500: context deadline exceeded" in row["detail"]
    assert "no restart seen afterwards: still running" in row["detail"]
    assert backend.restarts == 0
    assert len(emulator.posts()) == 1  # a restart is not idempotent: no blind retry


async def test_a_restart_that_does_not_answer_in_time_fails_with_the_state_it_left(
    tmp_path: Path, emulator: DockerEmulator
) -> None:
    backend = emulator.add("backend")
    emulator.hold_restarts()
    extra = "  stop_timeout: 0s\n  start_timeout: 1s\nlimits: {action_timeout: 3s}\n"
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=emulated(emulator, extra), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
        emulator.release()
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "no answer from the Docker engine" in row["detail"]
    assert "the restart may or may not have happened" in row["detail"]
    assert "no restart seen afterwards: still running" in row["detail"]
    assert backend.stop_timeouts in ([], [0])


async def test_an_engine_upgraded_under_a_running_daemon_is_asked_its_version_again(
    tmp_path: Path, emulator: DockerEmulator
) -> None:
    backend, other = emulator.add("backend"), emulator.add("deadbeef")
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=emulated(emulator), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        emulator.api_version, emulator.min_api_version = "1.45", "1.44"  # e.g. Docker 29
        await h.fire(am_alert("APIDown", container="deadbeef"))
        await h.advance(16 * 60)  # past the cooldown of that target
        await h.fire(am_alert("APIDown", container="deadbeef"))
        rows = await h.decisions()
    outcomes = [(d["outcome"], d["reason"]) for d in rows]
    assert outcomes == [("executed", ""), ("failed", "action_error"), ("executed", "")]
    assert (backend.restarts, other.restarts) == (1, 1)
    refused = rows[1]["detail"]
    assert "client version 1.43 is too old" in refused
    assert "`docker.api_version` is auto: the next attempt asks the engine again" in refused
    versions = [r.path for r in emulator.requests if r.path == "/version"]
    assert len(versions) == 2  # once at first use, once after the engine refused 1.43
    assert emulator.posts()[-1].path == f"/v1.45/containers/{other.id}/restart"


async def test_an_engine_api_version_in_other_digits_is_refused(
    tmp_path: Path, emulator: DockerEmulator
) -> None:
    emulator.add("backend")
    emulator.api_version = "1.\u0664\u0663"  # Arabic-Indic 43, which \d would take
    row = await decide(
        tmp_path,
        am_alert("APIDown", container="backend"),
        config=emulated(emulator),
        dry_run=True,
    )
    assert (row["outcome"], row["reason"]) == ("dry_run", "action_error")
    assert "pin `docker.api_version`" in row["detail"]
    assert emulator.requests == [Request("GET", "/version", {})]


# --------------------------------------------------------------------------- rule limits


COMPOSE_LIMITS = SERVICE_RULE.lstrip("\n")  # line 8: stop_timeout, line 9: max_containers


@pytest.mark.parametrize(
    ("line", "templated", "field"),
    [
        (8, 'stop_timeout: "{{ labels.grace }}"', "stop_timeout"),
        (9, 'max_containers: "{{ labels.count }}"', "max_containers"),
    ],
)
def test_a_label_can_never_set_the_stop_timeout_or_how_many_containers_go(
    tmp_path: Path, line: int, templated: str, field: str
) -> None:
    lines = COMPOSE_LIMITS.splitlines()
    assert lines[line - 1].strip().startswith(f"{field}:")
    lines[line - 1] = " " * 8 + templated
    (tmp_path / "compose.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(errors.RuleFileErrors) as caught:
        loader.load_dir(tmp_path)
    [problem] = caught.value.errors
    assert (problem.file, problem.line) == (str(tmp_path / "compose.yaml"), line)
    assert problem.message == (
        f"docker.restart: param '{field}': must be written in the rule, not a template: "
        "a label must never choose a bound"
    )
    (tmp_path / "compose.yaml").write_text(COMPOSE_LIMITS)
    [rule] = loader.load_dir(tmp_path)  # written in the rule, they load
    assert rule.action.type == "docker.restart"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "value",
    [
        "",
        "b",
        "-backend",
        ".backend",
        "/backend",
        "back end",
        "backend\n",
        "shop/backend",
        "backend;rm",
        "x" * 129,
        7,
        None,
    ],
)
def test_a_container_reference_must_look_like_a_docker_name(value: Any) -> None:
    with pytest.raises(errors.ParamError, match="'container'"):
        ACTION.schema.validate({"container": value})


@pytest.mark.parametrize("value", ["backend", "Shop_backend-1.v2", "x" * 128, "3f4e5d6c7b8a"])
def test_docker_names_and_ids_are_accepted(value: str) -> None:
    assert ACTION.schema.validate({"container": value})["container"] == value


@pytest.mark.parametrize("value", ["shop", "shop/", "/backend", "Shop/backend", "a/b/c", "s/-x"])
def test_a_compose_service_must_be_project_slash_service(value: str) -> None:
    with pytest.raises(errors.ParamError, match="'compose_service'"):
        ACTION.schema.validate({"compose_service": value})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give either `container` or `compose_service`"),
        ({"container": "a1", "compose_service": "s/b"}, "give either"),
        ({"container": "a1", "max_containers": 2}, "only applies with `compose_service`"),
        ({"container": "a1", "stop_timeout": "1.5s"}, "not a whole number of seconds"),
        ({"container": "a1", "stop_timeout": "11m"}, "outside"),
        ({"compose_service": "s/b", "max_containers": 0}, "outside 1..50"),
    ],
)
def test_rule_params_are_checked_when_the_rule_loads(params: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.ParamError, match=message):
        ACTION.schema.check_static(params)


def settings_with(tmp_path: Path, text: str) -> settings_mod.Settings:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    return settings_mod.load(f, environ={})


def test_the_docker_section_has_safe_defaults(tmp_path: Path) -> None:
    cfg = settings_with(tmp_path, "docker: {allowed_containers: [backend]}\n").section("docker")
    assert cfg == DockerConfig(allowed_containers=frozenset({"backend"}))
    assert (cfg.socket, cfg.api_version, cfg.stop_timeout) == ("/var/run/docker.sock", "auto", 10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("socket: docker.sock", "docker.socket: must be an absolute path"),
        ("api_version: v1.43", "docker.api_version: must be"),
        ('api_version: "1.\\u0664\\u0663"', "docker.api_version: must be"),
        ("allowed_containers: [backend, 'a b']", "docker.allowed_containers[1]: 'a b' is not"),
        ("allowed_compose_services: [backend]", "docker.allowed_compose_services[0]: 'backend'"),
        ("stop_timeout: 2.5s", "docker.stop_timeout: must be whole seconds"),
        ("request_timeout: 5m", "docker.request_timeout: must be in"),
        ("health_timeout: 0s", "docker.health_timeout: must be in 1s..10m"),
        ("host: tcp://docker:2375", "docker.host: unknown key"),
    ],
)
def test_a_bad_docker_section_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        settings_with(tmp_path, f"docker:\n  {text}\n")
    assert str(caught.value).startswith(message)


def test_a_stop_timeout_that_cannot_finish_within_the_action_timeout_is_not_allowed(
    tmp_path: Path,
) -> None:
    s = settings_with(
        tmp_path,
        "dry_run: false\nlimits: {action_timeout: 30s}\n"
        "docker: {allowed_containers: [backend], start_timeout: 20s}\n",
    )
    ACTION.check_allowed({"container": "backend", "stop_timeout": 10.0}, s)
    with pytest.raises(errors.NotAllowed, match=r"exceeds `limits.action_timeout` \(30s\)"):
        ACTION.check_allowed({"container": "backend", "stop_timeout": 11.0}, s)


def test_targets_name_the_container_or_the_compose_service() -> None:
    assert ACTION.target({"container": "backend"}) == "container/backend"
    assert ACTION.target({"compose_service": "shop/backend"}) == "compose/shop/backend"
