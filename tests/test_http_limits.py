"""What a slow, broken or hostile client may hold: never a socket for ever.

The real daemon runs as a child process (the production server, not a test server),
with short timeouts in its config so each case ends quickly. Every test asserts what
the client sees — a 408 or 503 and the connection closed — and never how long it took:
the waits below are generous upper bounds for a loaded machine, not measurements.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.daemon_process import DaemonProcess, eventually
from tests.harness import am_alert, payload

RULES = """
rules:
  - name: api-restart
    matchers: ['alertname = "APIDown"']
    action: {type: log, params: {message: "restart the API"}}
"""
CONFIG = """
http:
  header_timeout: 0.5s
  body_timeout: 0.5s
  keepalive_timeout: 2s
  max_connections_per_client: 20
"""
GIVE_UP = 15.0
"""Seconds after which a connection still open means the limit does not work."""
BODY = json.dumps(payload(am_alert("APIDown", namespace="prod"))).encode()
HEAD = (
    b"POST /webhook/alertmanager HTTP/1.1\r\nHost: remediator\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
)


@pytest.fixture
async def daemon(tmp_path: Path) -> DaemonProcess:
    async with DaemonProcess(tmp_path, rules=RULES, config=CONFIG) as d:
        yield d  # type: ignore[misc]  # pytest-asyncio drives the generator


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the daemon sent until it closed the connection."""
    return await asyncio.wait_for(reader.read(), GIVE_UP)


async def connect(d: DaemonProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", d.port)


async def test_a_connection_that_never_finishes_its_headers_is_answered_408_and_closed(
    daemon: DaemonProcess,
) -> None:
    reader, writer = await connect(daemon)
    writer.write(HEAD[:40])  # the request line and half a header, then nothing
    answer = await until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert (
        await daemon.metric("remediator_http_connections_closed_total", reason="header_timeout")
        == 1
    )


async def test_headers_sent_a_byte_at_a_time_do_not_keep_the_connection_open(
    daemon: DaemonProcess,
) -> None:
    reader, writer = await connect(daemon)

    async def drip() -> None:
        for byte in HEAD * 10:  # far more bytes than fit before the timeout
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        answer = await until_closed(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_body_that_never_arrives_is_answered_408_counted_and_closed(
    daemon: DaemonProcess,
) -> None:
    reader, writer = await connect(daemon)
    writer.write(HEAD + BODY[:10])  # the headers promise more than ever comes
    answer = await until_closed(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"http.body_timeout" in answer
    assert (
        await daemon.metric(
            "remediator_rejected_inputs_total", source="alertmanager", kind="timeout"
        )
        == 1
    )
    assert await daemon.decisions() == []


async def test_an_idle_keep_alive_connection_is_closed(daemon: DaemonProcess) -> None:
    reader, writer = await connect(daemon)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: remediator\r\n\r\n")
    answer = await until_closed(reader)  # answered, then closed once idle
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")


async def test_one_client_cannot_take_every_connection(tmp_path: Path) -> None:
    config = CONFIG.replace("header_timeout: 0.5s", "header_timeout: 1m")
    async with DaemonProcess(tmp_path, rules=RULES, config=config) as daemon:
        await _one_client_cannot_take_every_connection(daemon)


async def _one_client_cannot_take_every_connection(daemon: DaemonProcess) -> None:
    held = [await connect(daemon) for _ in range(20)]
    try:
        reader, writer = await connect(daemon)
        answer = await until_closed(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
    finally:
        for _, w in held:
            w.close()
    # Once they are gone, the same client is served again.
    await eventually(
        lambda: _accepted(daemon), timeout=GIVE_UP, what="a webhook accepted after the flood"
    )
    refused = "remediator_http_connections_closed_total"
    assert await daemon.metric(refused, reason="max_connections_per_client") >= 1


async def test_past_max_connections_a_new_connection_gets_503_and_is_closed(
    tmp_path: Path,
) -> None:
    """The global cap, whoever connects (the per-client cap is far above it here)."""
    config = (
        CONFIG.replace("header_timeout: 0.5s", "header_timeout: 1m")
        .replace("keepalive_timeout: 2s", "keepalive_timeout: 1m")
        .replace("max_connections_per_client: 20", "max_connections_per_client: 100")
    ) + "  max_connections: 3\n"
    async with DaemonProcess(tmp_path, rules=RULES, config=config) as daemon:
        # The test's own client may hold one kept-alive connection: 3 may be refused.
        opened = [await connect(daemon) for _ in range(4)]
        try:
            refused = [await _refused(reader) for reader, _ in opened]
        finally:
            for _, w in opened:
                w.close()
        assert refused[-1] and refused[:2] == [False, False], refused
        await eventually(
            lambda: _accepted(daemon), timeout=GIVE_UP, what="a webhook accepted after the flood"
        )
        refused = "remediator_http_connections_closed_total"
        assert await daemon.metric(refused, reason="max_connections") >= 1


async def _refused(reader: asyncio.StreamReader) -> bool:
    """Whether the daemon answered this connection 503 and closed it (an admitted one,
    with no request sent, gets nothing until its header timeout)."""
    try:
        answer = await asyncio.wait_for(reader.read(), 1.0)
    except TimeoutError:
        return False
    return answer.startswith(b"HTTP/1.1 503 ")


async def _accepted(daemon: DaemonProcess) -> bool:
    try:
        status, _ = await daemon.post(payload(am_alert("APIDown", namespace="prod")))
    except (OSError, ValueError):  # refused, reset, or a 503 in plain text
        return False
    return status == 200


async def test_out_of_file_descriptors_the_daemon_logs_a_few_lines_and_recovers(
    tmp_path: Path,
) -> None:
    # 17 open files: the daemon needs about a dozen for itself, so a flood of
    # connections runs it out of descriptors and accept() fails with EMFILE.
    async with DaemonProcess(tmp_path, rules=RULES, config=CONFIG, fd_limit=17) as daemon:
        before = len(daemon.log_path.read_text().splitlines())
        flood = []
        for _ in range(100):
            try:
                flood.append(await connect(daemon))
            except OSError:
                break
        await asyncio.sleep(1.0)  # the flood sits there, header timeouts firing
        for _, writer in flood:
            writer.close()
        await eventually(
            lambda: _accepted(daemon), timeout=GIVE_UP, what="a webhook accepted after the flood"
        )
        assert await daemon.metric("remediator_fd_exhausted_total") > 0
        lines = daemon.log_path.read_text().splitlines()[before:]
        assert sum("out_of_file_descriptors" in line for line in lines) >= 1
        assert len(lines) < 30, "\n".join(lines[:40])
