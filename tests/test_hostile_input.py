"""Bytes nobody should send: every one is a counted 4xx, and a real bug is a logged 500.

Requests go over a raw socket to the in-process daemon, so that headers can carry what
no HTTP client library would put there (a 0xff in Authorization, a lying
Content-Encoding, a body cut short).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from pathlib import Path

import pytest
import structlog

from tests.harness import Harness, am_alert, payload

RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart the API"}}
"""
TOKENS = {
    "REMEDIATOR_WEBHOOK_TOKEN": "hook-token-1",
    "REMEDIATOR_ADMIN_TOKEN": "admin-token-1",
    "REMEDIATOR_READ_TOKEN": "read-token-1",
}
BODY = json.dumps(payload(am_alert("APIDown", namespace="prod"))).encode()


async def raw(h: Harness, request: bytes, *, half_close: bool = False) -> tuple[int, bytes]:
    """Send `request` as is; (status, body) of the answer (0 if there was none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port)
    try:
        writer.write(request)
        if half_close:
            writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if not answer:
        return 0, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def post(path: str, body: bytes, *headers: bytes) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1".encode(), b"Host: remediator", b"Connection: close",
        b"Content-Type: application/json", b"x-amz-sns-message-type: Notification",
        *headers, b"Content-Length: %d" % len(body),
    ]  # fmt: skip
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
async def h(tmp_path: Path) -> Harness:
    async with Harness(tmp_path, rules=RULES, env=TOKENS) as harness:
        yield harness  # type: ignore[misc]  # pytest-asyncio drives the generator


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("/webhook/alertmanager", "alertmanager"),
        ("/api/v1/pause", "api"),
        ("/api/v1/resume", "api"),
        ("/-/reload", "api"),
        ("/api/v1/decisions", "api"),
        ("/api/v1/rules", "api"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe-token", b"Basic \xc3\xa9\xff==", b"\xff", b"Bearer hook-token-1\x80"],
)
async def test_a_non_utf8_authorization_header_is_a_counted_401(
    h: Harness, path: str, source: str, authorization: bytes
) -> None:
    method = b"GET" if path.startswith(("/api/v1/decisions", "/api/v1/rules")) else b"POST"
    request = post(path, BODY, b"Authorization: " + authorization)
    if method == b"GET":
        request = request.replace(b"POST ", b"GET ", 1)
    status, _ = await raw(h, request)
    assert status == 401
    assert (
        await h.metric("remediator_rejected_inputs_total", source=source, kind="unauthorized") == 1
    )
    assert await h.metric("remediator_http_errors_total", route=path) == 0
    assert not h.daemon.state.paused


@pytest.mark.parametrize("path", ["/webhook/alertmanager", "/webhook/sns"])
@pytest.mark.parametrize(
    ("encoding", "body", "status", "kind"),
    [
        (b"gzip", b"this is not gzip", 400, "bad_encoding"),
        (b"gzip", gzip.compress(BODY)[:-12], 400, "bad_encoding"),  # cut short
        (b"deflate", b"\x00\x01\x02", 400, "bad_encoding"),
        (b"br", BODY, 415, "unsupported_encoding"),
        (b"\xff\xfe", BODY, 415, "unsupported_encoding"),
        (b"gzip", gzip.compress(b" " * (2 << 20)), 413, "too_large"),  # 2 MiB of nothing
    ],
)
async def test_a_body_that_is_not_what_its_content_encoding_says_is_a_counted_4xx(
    h: Harness, path: str, encoding: bytes, body: bytes, status: int, kind: str
) -> None:
    source = path.rsplit("/", 1)[1]
    answer, text = await raw(
        h,
        post(path, body, b"Authorization: Bearer hook-token-1", b"Content-Encoding: " + encoding),
    )
    assert answer == status, text
    assert await h.metric("remediator_rejected_inputs_total", source=source, kind=kind) == 1
    assert await h.metric("remediator_http_errors_total", route=path) == 0
    assert await h.decisions() == []


@pytest.mark.parametrize("encoding", [b"gzip", b"deflate", b"x-gzip"])
async def test_a_compressed_webhook_is_decoded_and_decided(h: Harness, encoding: bytes) -> None:
    body = gzip.compress(BODY) if b"gzip" in encoding else zlib.compress(BODY)
    status, text = await raw(
        h,
        post(
            "/webhook/alertmanager",
            body,
            b"Authorization: Bearer hook-token-1",
            b"Content-Encoding: " + encoding,
        ),
    )
    assert status == 200, text
    await h.settle()
    assert await h.outcomes() == [("dry_run", "")]


@pytest.mark.parametrize("path", ["/webhook/alertmanager", "/webhook/sns"])
async def test_a_body_cut_short_by_the_sender_is_counted_as_truncated(
    h: Harness, path: str
) -> None:
    request = post(path, BODY, b"Authorization: Bearer hook-token-1")
    reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port)
    writer.write(request[:-20])
    await asyncio.sleep(0.05)  # the handler is reading the body ...
    writer.write_eof()  # ... when the client goes away
    await reader.read()
    writer.close()
    source = path.rsplit("/", 1)[1]
    for _ in range(100):
        if await h.metric("remediator_rejected_inputs_total", source=source, kind="truncated"):
            break
        await asyncio.sleep(0.01)
    assert await h.metric("remediator_rejected_inputs_total", source=source, kind="truncated") == 1
    assert await h.metric("remediator_http_errors_total", route=path) == 0
    assert await h.decisions() == []


async def test_odd_bytes_in_other_headers_are_ignored_or_refused_never_a_500(h: Harness) -> None:
    status, _ = await raw(
        h,
        post(
            "/webhook/alertmanager",
            BODY,
            b"Authorization: Bearer hook-token-1",
            b"X-Request-Id: \xff\xfe",
            b"Accept: application/\xffjson; charset=\xfe",
            b"X-Forwarded-For: \xff, 127.0.0.1",
        ),
    )
    assert status == 200
    await h.settle()
    assert await h.outcomes() == [("dry_run", "")]
    status, _ = await raw(h, post("/webhook/sns", BODY).replace(b"Notification", b"\xffNotif"))
    assert status == 422  # not an SNS message, whatever its type header says
    assert await h.metric("remediator_rejected_inputs_total", source="sns", kind="schema") == 1


@pytest.mark.parametrize(
    "header", [b"X-Request-Id: a\x00b", b"X: a\rb", b"Bad Header: x", b"X: " + b"a" * 9000]
)
async def test_a_header_http_itself_forbids_is_a_counted_400(h: Harness, header: bytes) -> None:
    status, _ = await raw(h, post("/webhook/alertmanager", BODY, header))
    assert status in (400, 431)
    assert (
        await h.metric("remediator_rejected_inputs_total", source="http", kind="bad_request") == 1
    )
    assert await h.decisions() == []


async def test_a_bug_is_a_500_counted_and_logged_once_with_its_request_id(h: Harness) -> None:
    def broken() -> list[str]:
        raise RuntimeError("a bug in readiness")

    h.daemon.readiness_problems = broken  # type: ignore[method-assign]  # stands for a bug
    with structlog.testing.capture_logs() as logs:
        resp = await h.client.get("/readyz", headers={"X-Request-Id": "probe-42"})
    assert resp.status == 500
    assert "probe-42" in (await resp.json())["error"]
    assert resp.headers["X-Request-Id"] == "probe-42"
    assert await h.metric("remediator_http_errors_total", route="/readyz") == 1
    failures = [e for e in logs if e["event"] == "request_failed"]
    assert len(failures) == 1
    assert (failures[0]["request_id"], failures[0]["route"]) == ("probe-42", "/readyz")
    assert failures[0]["exc_info"] is True
