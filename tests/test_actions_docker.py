"""`docker.restart` as the compose-host runbook uses it, against a Docker Engine API
emulator on a unix socket (tests/docker_emulator.py) and through the real engine.

Each end-to-end test fires an alert at the in-process daemon and then asserts what the
engine holds afterwards (restarts done, start times, states) and exactly which requests
reached the socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remediator import errors
from remediator import settings as settings_mod
from remediator.actions import registry
from remediator.actions.docker import DockerConfig
from remediator.matching import loader
from tests.docker_emulator import DockerEmulator, Request
from tests.harness import Harness, am_alert

REPO = Path(__file__).resolve().parent.parent
_ACTION = registry.get("docker.restart")
assert _ACTION is not None
ACTION = _ACTION

COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "backend"}

CONTAINER_RULE = """
rules:
  - name: apidown-docker
    matchers: ['alertname = "APIDown"']
    action:
      type: docker.restart
      params: {container: "{{ labels.container }}"}
"""

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


def config(socket: Path, extra: str = "") -> str:
    return f"""
docker:
  socket: {socket}
  api_version: auto
  allowed_containers: [backend, deadbeef]
  allowed_compose_services: [shop/backend]
{extra}"""


@pytest.fixture
async def docker(tmp_path: Path) -> AsyncIterator[DockerEmulator]:
    async with DockerEmulator(tmp_path / "docker.sock") as emulator:
        yield emulator


def path(c: Any, verb: str) -> str:
    return f"/v1.43/containers/{c if isinstance(c, str) else c.id}/{verb}"


async def one_decision(h: Harness) -> dict[str, Any]:
    [row] = await h.decisions()
    return row


# --------------------------------------------------------------------------- restarts


async def test_an_allowed_container_is_restarted_once_with_the_configured_stop_timeout(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend = docker.add("backend", labels=COMPOSE)
    before = backend.started_at
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"], row["target"]) == (
        "executed",
        "",
        "docker.restart container/backend",
    )
    assert backend.restarts == 1
    assert backend.stop_timeouts == [10]
    assert backend.status == "running"
    assert backend.started_at != before
    assert docker.requests == [
        Request("GET", "/version", {}),
        Request("GET", path("backend", "json"), {}),
        Request("POST", path(backend, "restart"), {"t": "10"}),
        Request("GET", path(backend, "json"), {}),
    ]
    assert f"running since {backend.started_at}" in row["detail"]
    [done] = row["result"]["containers"]
    assert (done["name"], done["started_at_before"], done["started_at"]) == (
        "backend",
        before,
        backend.started_at,
    )


async def test_a_compose_service_restarts_each_of_its_containers_in_turn_and_nothing_else(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    one = docker.add("shop-backend-1", labels=COMPOSE)
    two = docker.add("shop-backend-2", labels=COMPOSE, status="exited")
    oneoff = docker.add(
        "shop-backend-run-1", labels={**COMPOSE, "com.docker.compose.oneoff": "True"}
    )
    other_project = docker.add(
        "blog-backend-1",
        labels={"com.docker.compose.project": "blog", "com.docker.compose.service": "backend"},
    )
    async with Harness(
        tmp_path, rules=SERVICE_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", compose_project="shop"))
        row = await one_decision(h)
    assert (row["outcome"], row["target"]) == ("executed", "docker.restart compose/shop/backend")
    assert (one.restarts, two.restarts, oneoff.restarts, other_project.restarts) == (1, 1, 0, 0)
    assert two.status == "running"  # an exited container of the service is started again
    [listing] = [r for r in docker.requests if r.path == "/v1.43/containers/json"]
    assert listing.query["all"] == "1"
    assert json.loads(listing.query["filters"]) == {
        "label": ["com.docker.compose.project=shop", "com.docker.compose.service=backend"]
    }
    # One at a time, in name order, each inspected after its restart.
    assert [(r.method, r.path) for r in docker.requests if r.path != listing.path][3:] == [
        ("POST", path(one, "restart")),
        ("GET", path(one, "json")),
        ("POST", path(two, "restart")),
        ("GET", path(two, "json")),
    ]
    assert one.stop_timeouts == two.stop_timeouts == [3]


async def test_a_service_restart_that_fails_midway_names_what_was_already_restarted(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    one = docker.add("shop-backend-1", labels=COMPOSE)
    two = docker.add("shop-backend-2", labels=COMPOSE)
    three = docker.add("shop-backend-3", labels=COMPOSE)
    docker.fail_next_restart(
        container="shop-backend-2",
        message="Cannot restart container shop-backend-2: port is already allocated",
        effect="stopped",
    )
    async with Harness(
        tmp_path, rules=SERVICE_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", compose_project="shop"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"].startswith("restarted shop-backend-1; then: restart container")
    assert "the container is now exited" in row["detail"]
    assert (one.restarts, two.status, three.restarts) == (1, "exited", 0)
    assert [r.path for r in docker.posts()] == [path(one, "restart"), path(two, "restart")]


async def test_a_compose_service_with_more_containers_than_max_containers_is_left_alone(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    for i in range(4):
        docker.add(f"shop-backend-{i}", labels=COMPOSE)
    async with Harness(
        tmp_path, rules=SERVICE_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", compose_project="shop"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "has 4 containers, more than max_containers (3): none restarted" in row["detail"]
    assert docker.posts() == []


# --------------------------------------------------------------------------- refusals


async def test_a_container_outside_the_allow_list_is_never_restarted_nor_asked_about(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    db = docker.add("db")
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="db"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert (
        "'db' is not in `docker.allowed_containers` (allowed: backend, deadbeef)" in (row["detail"])
    )
    assert docker.requests == []
    assert db.restarts == 0


async def test_a_label_cannot_point_a_compose_restart_at_another_project(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    blog = docker.add(
        "blog-backend-1",
        labels={"com.docker.compose.project": "blog", "com.docker.compose.service": "backend"},
    )
    async with Harness(
        tmp_path, rules=SERVICE_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", compose_project="blog"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "`docker.allowed_compose_services`" in row["detail"]
    assert docker.requests == [] and blog.restarts == 0


async def test_a_label_that_is_not_a_container_name_is_refused_before_any_request(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend/../../v1.43/containers/db"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "template_error")
    assert "is not a container name or id" in row["detail"]
    assert docker.requests == []


async def test_a_live_run_without_a_docker_section_is_refused(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=CONTAINER_RULE, dry_run=False) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("skipped", "not_allowed")
    assert "no `docker:` section in the config file" in row["detail"]


async def test_an_allowed_name_that_only_matches_another_containers_id_is_not_restarted(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    # `deadbeef` is allowed as a name; no container has it, but the engine resolves a
    # reference it cannot find by name as an id prefix, and this id starts with it.
    other = docker.add("db", id="deadbeef" + "0" * 56)
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="deadbeef"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "resolved it to 'db'" in row["detail"] and "refusing to restart it" in row["detail"]
    assert docker.posts() == [] and other.restarts == 0


def allowing(socket: Path, *entries: str) -> str:
    return config(socket).replace(
        "allowed_containers: [backend, deadbeef]",
        f"allowed_containers: [backend, deadbeef, {', '.join(entries)}]",
    )


async def test_an_allowed_hex_name_whose_container_is_gone_never_reaches_another_by_id_prefix(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    # `cafe12345678` is an allowed *name* that also looks like a short id. Its container
    # is gone; the engine then resolves the reference as an id prefix, and this id
    # starts with it. A prefix match never counts: only the exact name, or full id.
    other = docker.add("db", id="cafe12345678" + "0" * 52)
    async with Harness(
        tmp_path,
        rules=CONTAINER_RULE,
        config=allowing(docker.socket_path, "cafe12345678"),
        dry_run=False,
    ) as h:
        await h.fire(am_alert("APIDown", container="cafe12345678"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"] == (
        "inspect container 'cafe12345678': the engine resolved it to 'db' (cafe12345678), "
        "not a container of that name: refusing to restart it; allow-list ids must be full "
        "64-character ids"
    )
    assert docker.posts() == [] and other.restarts == 0


async def test_a_container_allowed_by_its_full_id_is_restarted_and_one_by_its_name_too(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    api, named = docker.add("api"), docker.add("cafe12345678")
    async with Harness(
        tmp_path,
        rules=CONTAINER_RULE,
        config=allowing(docker.socket_path, api.id, "cafe12345678"),
        dry_run=False,
    ) as h:
        await h.fire(
            am_alert("APIDown", container=api.id), am_alert("APIDown", container="cafe12345678")
        )
        rows = await h.decisions()
    assert [(r["outcome"], r["reason"]) for r in rows] == [("executed", "")] * 2, rows
    assert (api.restarts, named.restarts) == (1, 1)


async def test_an_engine_answer_over_4_mib_is_refused_not_buffered(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend = docker.add("backend", env=["BLOB=" + "x" * (5 << 20)])
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert row["detail"] == (
        f"inspect: the Docker engine on {docker.socket_path} answered HTTP 200 with more "
        "than 4 MiB; refusing to read it (is `docker.socket` really a Docker engine?)"
    )
    assert docker.posts() == [] and backend.restarts == 0


async def test_an_engine_api_version_in_other_digits_is_refused(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    docker.add("backend")
    docker.api_version = "1.\u0664\u0663"  # Arabic-Indic 43, which \d would take
    async with Harness(tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path)) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("dry_run", "action_error")
    assert "pin `docker.api_version`" in row["detail"]
    assert docker.requests == [Request("GET", "/version", {})]


COMPOSE_LIMITS = """\
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


# --------------------------------------------------------------------------- failures


async def test_an_absent_socket_fails_saying_which_socket_and_what_to_check(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-docker.sock"
    async with Harness(tmp_path, rules=CONTAINER_RULE, config=config(missing), dry_run=False) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert f"Docker socket {missing} does not exist" in row["detail"]
    assert "`docker.socket`" in row["detail"]


async def test_an_unknown_container_fails_with_the_engines_404_message(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "no such container on this Docker engine (No such container: backend)" in (row["detail"])
    assert docker.posts() == []


async def test_a_compose_project_with_no_containers_fails_naming_the_labels(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    async with Harness(
        tmp_path, rules=SERVICE_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", compose_project="shop"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "com.docker.compose.project=shop" in row["detail"]


async def test_a_500_that_left_the_container_stopped_is_reported_and_never_retried(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend = docker.add("backend")
    docker.fail_next_restart(
        message="Cannot restart container backend: Bind for 0.0.0.0:8080 failed: "
        "port is already allocated",
        effect="stopped",
    )
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "HTTP 500: Cannot restart container backend: Bind for" in row["detail"]
    assert "the container is now exited (it was running)" in row["detail"]
    assert backend.status == "exited"
    assert len(docker.posts()) == 1  # a restart is not idempotent: no blind retry


async def test_a_500_after_the_restart_happened_says_the_container_did_restart(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend = docker.add("backend")
    docker.fail_next_restart(message="write /var/lib/docker: disk full", effect="restarted")
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert f"the container did restart: running since {backend.started_at}" in row["detail"]
    assert backend.restarts == 1 and len(docker.posts()) == 1


async def test_a_500_before_anything_happened_says_the_container_was_not_restarted(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend = docker.add("backend")
    docker.fail_next_restart(message="context deadline exceeded", effect="none")
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "no restart seen afterwards: still running" in row["detail"]
    assert backend.restarts == 0 and len(docker.posts()) == 1


async def test_a_restart_that_does_not_answer_in_time_fails_with_the_state_it_left(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend = docker.add("backend")
    docker.hold_restarts()
    extra = "  stop_timeout: 0s\n  start_timeout: 1s\nlimits: {action_timeout: 3s}\n"
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path, extra), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
        docker.release()
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "no answer from the Docker engine" in row["detail"]
    assert "the restart may or may not have happened" in row["detail"]
    assert "no restart seen afterwards: still running" in row["detail"]
    assert backend.stop_timeouts == [] or backend.stop_timeouts == [0]


async def test_an_api_version_the_engine_refuses_fails_naming_the_config_key(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    docker.add("backend")
    pinned = config(docker.socket_path).replace("api_version: auto", 'api_version: "1.44"')
    async with Harness(tmp_path, rules=CONTAINER_RULE, config=pinned, dry_run=False) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("failed", "action_error")
    assert "client version 1.44 is too new" in row["detail"]
    assert "`docker.api_version`" in row["detail"]
    # Pinned: no version negotiation, straight to the versioned path.
    assert docker.requests == [Request("GET", "/v1.44/containers/backend/json", {})]


# --------------------------------------------------------------------------- dry run


async def test_a_dry_run_only_reads_and_says_what_it_would_restart(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend = docker.add("backend", labels=COMPOSE, env=["DB_PASSWORD=hunter2"])
    async with Harness(tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path)) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("dry_run", "")
    assert row["detail"] == (
        f"would restart container backend: backend ({backend.id[:12]}, running since "
        f"{backend.started_at}); stop timeout 10s"
    )
    assert {r.method for r in docker.requests} == {"GET"}
    assert backend.restarts == 0
    [seen] = row["result"]["containers"]
    assert (seen["status"], seen["labels"]) == ("running", COMPOSE)
    assert "hunter2" not in json.dumps(row)  # the environment is never copied to the audit


async def test_a_dry_run_of_an_unknown_container_records_why_it_would_fail(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    async with Harness(tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path)) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        row = await one_decision(h)
    assert (row["outcome"], row["reason"]) == ("dry_run", "action_error")
    assert "No such container: backend" in row["detail"]


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


async def test_an_engine_upgraded_under_a_running_daemon_is_asked_its_version_again(
    tmp_path: Path, docker: DockerEmulator
) -> None:
    backend, other = docker.add("backend"), docker.add("deadbeef")
    async with Harness(
        tmp_path, rules=CONTAINER_RULE, config=config(docker.socket_path), dry_run=False
    ) as h:
        await h.fire(am_alert("APIDown", container="backend"))
        docker.api_version, docker.min_api_version = "1.45", "1.44"  # e.g. Docker 29
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
    versions = [r.path for r in docker.requests if r.path == "/version"]
    assert len(versions) == 2  # once at first use, once after the engine refused 1.43
    assert docker.posts()[-1].path == f"/v1.45/containers/{other.id}/restart"
