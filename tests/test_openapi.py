"""docs/openapi.yaml stays the truth about the HTTP API.

Three checks, each failing with what to do:
- every route of the app is documented, and every documented operation is a route;
- every documented status is reached: `REACH` maps (method, path, status) to a function
  that makes the daemon answer it (or names the test elsewhere that does);
- schemathesis sends generated requests to a live daemon (a real process) for every
  operation: each answer's status and body are as documented, and none is a 500.

Adding an endpoint: document it in remediator/web/openapi.yaml, and add one REACH entry
per status it documents.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi import checks as openapi_checks

from remediator.web import api
from remediator.web.app import make_app
from tests import servers
from tests.harness import Harness, am_alert, payload
from tests.sns_fixtures import TOPIC, CertServer, alarm_message, make_pki, notification, sns_config

REPO = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load(api.OPENAPI.read_text())
RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart the API"}}
"""
ADMIN = {"REMEDIATOR_ADMIN_TOKEN": "adm1n-token"}
METHODS = ("get", "post", "put", "patch", "delete")


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in METHODS
    }


def documented_statuses() -> list[tuple[str, str, int]]:
    return sorted(
        (method.upper(), path, int(status))
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if method in METHODS
        for status in operation["responses"]
    )


def test_the_description_is_valid_openapi_3() -> None:
    from openapi_spec_validator import validate  # noqa: PLC0415 - test-only dependency

    validate(SPEC)
    assert (REPO / "docs" / "openapi.yaml").resolve() == api.OPENAPI.resolve()


async def test_every_route_is_documented_and_every_documented_operation_is_a_route(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        app = make_app(h.daemon)
        routed = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None  # HEAD comes with GET
        }
    assert routed - documented_operations() == set(), "document these in openapi.yaml"
    assert documented_operations() - routed == set(), "documented but not served"


async def test_the_daemon_serves_its_description(tmp_path: Path) -> None:
    async with Harness(tmp_path, rules=RULES) as h:
        resp = await h.client.get("/api/v1/openapi.json")
        assert resp.status == 200
        assert await resp.json() == SPEC


# -- every documented status, reached ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Elsewhere:
    """The status is asserted by a test in another module (it needs more set-up)."""

    test: str  # "tests/test_x.py::test_name"


Reach = Callable[[Path], Awaitable[int]] | Elsewhere
BODY = json.dumps(payload(am_alert("APIDown", namespace="prod"))).encode()


async def call(
    tmp_path: Path,
    method: str,
    path: str,
    *,
    env: dict[str, str] | None = None,
    config: str = "",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    before: Callable[[Harness], Any] | None = None,
    follow: bool = True,
    **query: str,
) -> int:
    async with Harness(tmp_path / "h", rules=RULES, env=env, config=config) as h:
        if before is not None:
            await before(h)
        resp = await h.client.request(
            method, path, data=data, headers=headers, params=query, allow_redirects=follow
        )
        await resp.read()
        return resp.status


def req(method: str, path: str, **kwargs: Any) -> Reach:
    """A Reach that sends one request to a fresh daemon (see `call` for the options)."""

    async def reach(tmp_path: Path) -> int:
        return await call(tmp_path, method, path, **kwargs)

    return reach


def am(**kwargs: Any) -> Reach:
    return req("POST", "/webhook/alertmanager", **{"data": BODY, **kwargs})


def sns(**kwargs: Any) -> Reach:
    return req(
        "POST", "/webhook/sns", **{"headers": {"x-amz-sns-message-type": "Notification"}, **kwargs}
    )


async def sns_signed(tmp_path: Path) -> int:
    pki = make_pki(tmp_path / "pki")
    async with CertServer(pki) as server:
        body = notification(alarm_message(), cert_url=server.cert_url, key=pki.signing_key)
        return await call(
            tmp_path, "POST", "/webhook/sns", config=sns_config(pki),
            data=json.dumps(body).encode(), headers={"x-amz-sns-message-type": "Notification"},
        )  # fmt: skip


async def sns_other_topic(tmp_path: Path) -> int:
    pki = make_pki(tmp_path / "pki")
    body = notification(
        alarm_message(), cert_url="https://127.0.0.1/c.pem", key=pki.signing_key,
        topic=TOPIC.replace("plooral", "other"),
    )  # fmt: skip
    return await call(
        tmp_path, "POST", "/webhook/sns", config=sns_config(pki),
        data=json.dumps(body).encode(), headers={"x-amz-sns-message-type": "Notification"},
    )  # fmt: skip


async def slow_body(tmp_path: Path, path: str) -> int:
    async with Harness(tmp_path / "h", rules=RULES, config="http: {body_timeout: 0.2s}\n") as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return int(answer.split(b" ")[1])


def stopping(h: Harness) -> Awaitable[None]:
    async def stop() -> None:
        h.daemon.stopping = True  # what SIGTERM's first stage sets

    return stop()


def one_decision(h: Harness) -> Awaitable[None]:
    return h.fire(am_alert("APIDown", namespace="prod"))


def broken_rules(h: Harness) -> Awaitable[None]:
    async def write() -> None:
        (h.rules_dir / "broken.yaml").write_text("rules:\n  - name: Broken\n")

    return write()


ADMIN_AUTH = {"Authorization": "Bearer adm1n-token"}
WRONG_AUTH = {"Authorization": "Bearer wrong"}
TOO_LARGE = b"[" + b" " * (2 << 20) + b"]"

OTHER_HOST = Elsewhere(
    "tests/test_read_access.py::test_without_tokens_another_host_may_not_read_even_claiming_to_be_loopback"
)
READER = {**ADMIN, "REMEDIATOR_READ_TOKEN": "r3ad-token"}
READ_AUTH = {"Authorization": "Bearer r3ad-token"}


def ui(method: str, path: str, **kwargs: Any) -> Reach:
    """A console request; a form (bytes `data`) is sent by a Bearer admin unless told."""
    if method == "POST":
        kwargs = {"env": ADMIN, "headers": ADMIN_AUTH, "follow": False, **kwargs}
    return req(method, path, **kwargs)


UI_READS: dict[tuple[str, str, int], Reach] = {
    **{
        ("GET", path, status): reach
        for path, concrete in [
            ("/ui", "/ui"),
            ("/ui/rules", "/ui/rules"),
            ("/ui/approvals", "/ui/approvals"),
            ("/ui/rules/{name}", "/ui/rules/api-restart"),
            ("/ui/decisions/{id}", "/ui/decisions/1"),
        ]
        for status, reach in {
            200: ui("GET", concrete, before=one_decision),
            401: ui("GET", concrete, env=ADMIN),
            403: OTHER_HOST,
        }.items()
    },
    ("GET", "/ui", 400): ui("GET", "/ui", outcome="nonsense"),
    ("GET", "/ui/", 302): ui("GET", "/ui/", follow=False),
    ("GET", "/ui/decisions/{id}", 400): ui("GET", "/ui/decisions/x"),
    ("GET", "/ui/decisions/{id}", 404): ui("GET", "/ui/decisions/7"),
    ("GET", "/ui/rules/{name}", 404): ui("GET", "/ui/rules/nope"),
    ("POST", "/ui/approvals/{id}", 303): Elsewhere(
        "tests/test_console.py::test_an_approver_approves_through_the_page_and_it_runs_once"
    ),
    ("POST", "/ui/approvals/{id}", 400): ui("POST", "/ui/approvals/1", data=b"decision=maybe"),
    ("POST", "/ui/approvals/{id}", 401): ui("POST", "/ui/approvals/1", headers={}),
    ("POST", "/ui/approvals/{id}", 403): ui(
        "POST", "/ui/approvals/1", env=READER, headers=READ_AUTH, data=b"decision=approve"
    ),
    ("POST", "/ui/approvals/{id}", 409): ui("POST", "/ui/approvals/1", data=b"decision=approve"),
    **{
        ("POST", f"/ui/{verb}", status): reach
        for verb in ("pause", "resume")
        for status, reach in {
            303: ui("POST", f"/ui/{verb}", data=b"reason=deploy"),
            400: ui("POST", f"/ui/{verb}", data=b"rule=a&rule=b"),
            401: ui("POST", f"/ui/{verb}", headers=WRONG_AUTH, data=b""),
            403: ui("POST", f"/ui/{verb}", env=READER, headers=READ_AUTH, data=b""),
            404: ui("POST", f"/ui/{verb}", data=b"rule=nope"),
        }.items()
    },
    ("GET", "/ui/login", 200): ui("GET", "/ui/login"),
    ("POST", "/ui/login", 303): ui("POST", "/ui/login", headers={}, data=b"token=adm1n-token"),
    ("POST", "/ui/login", 400): ui("POST", "/ui/login", headers={}, data=b"token=a&token=b"),
    ("POST", "/ui/login", 401): ui("POST", "/ui/login", headers={}, data=b"token=wrong"),
    ("POST", "/ui/logout", 303): ui("POST", "/ui/logout", headers={}, data=b""),
    ("GET", "/ui/static/console.css", 200): ui("GET", "/ui/static/console.css"),
}
"""The console's statuses (its pages answer refusals with a page, not JSON)."""

REACH: dict[tuple[str, str, int], Reach] = {
    **UI_READS,
    ("POST", "/webhook/alertmanager", 200): am(),
    ("POST", "/webhook/alertmanager", 400): am(data=b"{not json"),
    ("POST", "/webhook/alertmanager", 401): am(env={"REMEDIATOR_WEBHOOK_TOKEN": "t0ken"}),
    ("POST", "/webhook/alertmanager", 403): am(headers={"Origin": "http://attacker.example"}),
    ("POST", "/webhook/alertmanager", 408): lambda p: slow_body(p, "/webhook/alertmanager"),
    ("POST", "/webhook/alertmanager", 413): am(data=TOO_LARGE),
    ("POST", "/webhook/alertmanager", 415): am(headers={"Content-Encoding": "br"}),
    ("POST", "/webhook/alertmanager", 422): am(data=b'{"version": "3"}'),
    ("POST", "/webhook/alertmanager", 503): am(before=stopping),
    ("POST", "/webhook/sns", 200): sns_signed,
    ("POST", "/webhook/sns", 400): sns(data=b"{not json"),
    ("POST", "/webhook/sns", 403): sns_other_topic,
    ("POST", "/webhook/sns", 408): lambda p: slow_body(p, "/webhook/sns"),
    ("POST", "/webhook/sns", 413): sns(data=TOO_LARGE),
    ("POST", "/webhook/sns", 415): sns(
        data=gzip.compress(b"{}"), headers={"Content-Encoding": "zstd"}
    ),
    ("POST", "/webhook/sns", 422): sns(data=b'{"Type": "Notification"}'),
    ("POST", "/webhook/sns", 503): sns(data=b"{}", before=stopping),
    ("GET", "/metrics", 200): req("GET", "/metrics"),
    ("GET", "/healthz", 200): req("GET", "/healthz"),
    ("GET", "/readyz", 200): req("GET", "/readyz"),
    ("GET", "/readyz", 503): req("GET", "/readyz", before=stopping),
    ("POST", "/-/reload", 200): req("POST", "/-/reload", env=ADMIN, headers=ADMIN_AUTH),
    ("POST", "/-/reload", 401): req("POST", "/-/reload", env=ADMIN, headers=WRONG_AUTH),
    ("POST", "/-/reload", 403): req("POST", "/-/reload"),
    ("POST", "/-/reload", 422): req(
        "POST", "/-/reload", env=ADMIN, headers=ADMIN_AUTH, before=broken_rules
    ),
    ("POST", "/api/v1/pause", 200): req("POST", "/api/v1/pause", env=ADMIN, headers=ADMIN_AUTH),
    ("POST", "/api/v1/pause", 401): req("POST", "/api/v1/pause", env=ADMIN, headers=WRONG_AUTH),
    ("POST", "/api/v1/pause", 403): req("POST", "/api/v1/pause"),
    ("POST", "/api/v1/resume", 200): req("POST", "/api/v1/resume", env=ADMIN, headers=ADMIN_AUTH),
    ("POST", "/api/v1/resume", 401): req("POST", "/api/v1/resume", env=ADMIN, headers=WRONG_AUTH),
    ("POST", "/api/v1/resume", 403): req("POST", "/api/v1/resume"),
    ("GET", "/api/v1/rules", 200): req("GET", "/api/v1/rules"),
    ("GET", "/api/v1/rules", 401): req("GET", "/api/v1/rules", env=ADMIN),
    ("GET", "/api/v1/rules", 403): Elsewhere(
        "tests/test_read_access.py::test_without_tokens_another_host_may_not_read_even_claiming_to_be_loopback"
    ),
    ("GET", "/api/v1/decisions", 200): req("GET", "/api/v1/decisions"),
    ("GET", "/api/v1/decisions", 400): req("GET", "/api/v1/decisions", limit="0"),
    ("GET", "/api/v1/decisions", 401): req("GET", "/api/v1/decisions", env=ADMIN),
    ("GET", "/api/v1/decisions", 403): Elsewhere(
        "tests/test_read_access.py::test_without_tokens_another_host_may_not_read_even_claiming_to_be_loopback"
    ),
    ("GET", "/api/v1/openapi.json", 200): req("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/pause", 400): req(
        "POST", "/api/v1/pause", env=ADMIN, headers=ADMIN_AUTH, data=b'{"until": "yesterday"}'
    ),
    ("POST", "/api/v1/rules/{name}/pause", 200): req(
        "POST", "/api/v1/rules/api-restart/pause", env=ADMIN, headers=ADMIN_AUTH
    ),
    ("POST", "/api/v1/rules/{name}/pause", 400): req(
        "POST", "/api/v1/rules/api-restart/pause", env=ADMIN, headers=ADMIN_AUTH, data=b"[1]"
    ),
    ("POST", "/api/v1/rules/{name}/pause", 401): req(
        "POST", "/api/v1/rules/api-restart/pause", env=ADMIN, headers=WRONG_AUTH
    ),
    ("POST", "/api/v1/rules/{name}/pause", 403): req("POST", "/api/v1/rules/api-restart/pause"),
    ("POST", "/api/v1/rules/{name}/pause", 404): req(
        "POST", "/api/v1/rules/nope/pause", env=ADMIN, headers=ADMIN_AUTH
    ),
    ("POST", "/api/v1/rules/{name}/resume", 200): req(
        "POST", "/api/v1/rules/api-restart/resume", env=ADMIN, headers=ADMIN_AUTH
    ),
    ("POST", "/api/v1/rules/{name}/resume", 401): req(
        "POST", "/api/v1/rules/api-restart/resume", env=ADMIN, headers=WRONG_AUTH
    ),
    ("POST", "/api/v1/rules/{name}/resume", 403): req("POST", "/api/v1/rules/api-restart/resume"),
    ("POST", "/api/v1/rules/{name}/resume", 404): req(
        "POST", "/api/v1/rules/nope/resume", env=ADMIN, headers=ADMIN_AUTH
    ),
    ("GET", "/api/v1/decisions/{id}", 200): req("GET", "/api/v1/decisions/1", before=one_decision),
    ("GET", "/api/v1/decisions/{id}", 400): req("GET", "/api/v1/decisions/x"),
    ("GET", "/api/v1/decisions/{id}", 401): req("GET", "/api/v1/decisions/1", env=ADMIN),
    ("GET", "/api/v1/decisions/{id}", 403): Elsewhere(
        "tests/test_read_access.py::test_without_tokens_another_host_may_not_read_even_claiming_to_be_loopback"
    ),
    ("GET", "/api/v1/decisions/{id}", 404): req("GET", "/api/v1/decisions/7"),
    ("GET", "/api/v1/approvals", 200): req(
        "GET", "/api/v1/approvals", env=ADMIN, headers=ADMIN_AUTH
    ),
    ("GET", "/api/v1/approvals", 401): req(
        "GET", "/api/v1/approvals", env=ADMIN, headers=WRONG_AUTH
    ),
    ("GET", "/api/v1/approvals", 403): req("GET", "/api/v1/approvals"),
    **{
        ("POST", f"/api/v1/approvals/{{id}}/{verb}", status): reach
        for verb in ("approve", "reject")
        for status, reach in {
            200: Elsewhere(
                "tests/test_approvals.py::test_the_api_lets_named_approvers_decide_only_for_their_rules"
            ),
            400: req("POST", f"/api/v1/approvals/x/{verb}", env=ADMIN, headers=ADMIN_AUTH),
            401: req("POST", f"/api/v1/approvals/1/{verb}", env=ADMIN, headers=WRONG_AUTH),
            403: req("POST", f"/api/v1/approvals/1/{verb}"),
            409: req("POST", f"/api/v1/approvals/1/{verb}", env=ADMIN, headers=ADMIN_AUTH),
            504: Elsewhere(
                "tests/test_redis_backend.py::"
                "test_a_handed_answer_whose_holder_never_says_what_came_of_it_is_a_504"
            ),
        }.items()
    },
    ("POST", "/slack/interactions", 200): Elsewhere(
        "tests/test_approvals.py::test_an_approved_fix_runs_exactly_once_and_the_message_says_who_approved"
    ),
    ("POST", "/slack/interactions", 400): Elsewhere(
        "tests/test_approvals.py::test_a_click_that_is_not_a_button_press_is_a_400"
    ),
    ("POST", "/slack/interactions", 401): req("POST", "/slack/interactions", data=b"payload=x"),
    ("POST", "/slack/interactions", 413): Elsewhere(
        "tests/test_approvals.py::test_a_click_that_is_not_a_button_press_is_a_400"
    ),
}


def test_every_reach_entry_is_a_documented_status() -> None:
    assert set(REACH) - set(documented_statuses()) == set(), "REACH names undocumented statuses"


@pytest.mark.parametrize(("method", "path", "status"), documented_statuses())
async def test_every_documented_status_is_reached(
    tmp_path: Path, method: str, path: str, status: int
) -> None:
    reach = REACH.get((method, path, status))
    assert reach is not None, f"add REACH[({method!r}, {path!r}, {status})] to this module"
    if isinstance(reach, Elsewhere):
        module, _, name = reach.test.partition("::")
        assert f"def {name}(" in (REPO / module).read_text(), f"{reach.test} does not exist"
        return
    assert await reach(tmp_path) == status


# -- schemathesis against a live daemon -------------------------------------------------

MAX_EXAMPLES = 25
"""Generated requests per operation: enough to find a 500 or an undocumented status,
few enough that the whole run takes seconds."""


LIVE_ADMIN_TOKEN = "schemathesis-admin-token"
"""The live daemon's admin token, sent with every generated request: without it every
admin and read endpoint refuses before it reads its body, and none of those parsers
would be exercised (the refusals are reached by the REACH table above)."""


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`remediator serve` as a child process on a free loopback port; its base URL."""
    base = tmp_path_factory.mktemp("schemathesis")
    (base / "rules").mkdir()
    (base / "rules" / "rules.yaml").write_text(RULES)
    port = servers.free_port()
    log = (base / "daemon.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "remediator", "serve", "--listen", f"127.0.0.1:{port}",
            "--rules", str(base / "rules"), "--data-dir", str(base / "data"),
        ],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=base,
        env={k: v for k, v in os.environ.items() if not k.startswith("REMEDIATOR_")}
        | {"REMEDIATOR_ADMIN_TOKEN": LIVE_ADMIN_TOKEN},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError((base / "daemon.log").read_text()) from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


# The same description the live daemon serves (test_the_daemon_serves_its_description).
schema = schemathesis.openapi.from_dict(SPEC)
CHECKS = [
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_generated_requests_get_documented_answers_and_never_a_500(
    case: Any, live_daemon: str
) -> None:
    response = case.call(
        base_url=live_daemon, timeout=10, headers={"Authorization": f"Bearer {LIVE_ADMIN_TOKEN}"}
    )
    assert response.status_code != 500, response.text
    case.validate_response(response, checks=CHECKS)


def test_the_description_names_the_package_version() -> None:
    from remediator import __version__  # noqa: PLC0415 - only this test needs it

    assert SPEC["info"]["version"] == __version__
