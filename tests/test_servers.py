"""The real-server helpers start, answer, and leave nothing behind."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from tests import servers

TOKEN = "s3cret-token"


def _alertnames(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["labels"]["alertname"] for a in alerts}


@pytest.mark.timeout(60)
def test_alertmanager_stores_posted_alerts_and_silences_and_stops_by_pid() -> None:
    # Nothing listens on the webhook port: this test is about the API only.
    am = servers.AlertmanagerServer(f"http://127.0.0.1:{servers.free_port()}/webhook")
    with am:
        assert servers.http_status(f"{am.url}/-/ready") == 200
        am.post_alerts(
            [servers.alert("APIDown", labels={"namespace": "prod"}, annotations={"x": "y"})]
        )
        alerts = am.get_alerts(filter=['alertname="APIDown"'])
        assert _alertnames(alerts) == {"APIDown"}
        assert alerts[0]["labels"]["namespace"] == "prod"
        assert alerts[0]["annotations"] == {"x": "y"}

        silence_id = am.create_silence({"alertname": "APIDown"}, duration=dt.timedelta(minutes=5))
        active = am.list_silences(state="active")
        assert [s["id"] for s in active] == [silence_id]
        assert active[0]["matchers"] == [
            {"name": "alertname", "value": "APIDown", "isRegex": False, "isEqual": True}
        ]

        am.expire_silence(silence_id)
        assert am.list_silences(state="active") == []
        assert [s["id"] for s in am.list_silences(state="expired")] == [silence_id]
        pid, directory = am.pid, am.directory

    assert not servers.pid_alive(pid)
    assert not directory.exists()


@pytest.mark.timeout(60)
async def test_alertmanager_delivers_firing_and_resolved_webhooks_with_the_bearer_token() -> None:
    async with servers.WebhookReceiver() as receiver:
        am = servers.AlertmanagerServer(f"{receiver.url}/webhook/alertmanager", bearer_token=TOKEN)
        await asyncio.to_thread(am.start)
        try:
            started = dt.datetime.now(dt.UTC)
            firing = servers.alert("QueueBacklog", labels={"queue": "orders"}, starts_at=started)
            await asyncio.to_thread(am.post_alerts, [firing])

            def carries(status: str) -> Any:
                def check(request: servers.ReceivedRequest) -> bool:
                    payload = request.json()
                    return payload["status"] == status and any(
                        a["labels"].get("alertname") == "QueueBacklog" for a in payload["alerts"]
                    )

                return check

            request = await receiver.wait_for(carries("firing"), timeout=15)
            payload = request.json()
            assert request.method == "POST"
            assert request.path == "/webhook/alertmanager"
            assert request.headers["Authorization"] == f"Bearer {TOKEN}"
            assert payload["version"] == "4"
            assert payload["receiver"] == "remediator"
            assert payload["externalURL"] == am.url
            [sent] = payload["alerts"]
            assert sent["status"] == "firing"
            assert sent["labels"] == {"alertname": "QueueBacklog", "queue": "orders"}
            assert sent["fingerprint"]

            # send_resolved: true — ending the alert produces a resolved notification.
            ended = {**firing, "endsAt": servers.rfc3339(dt.datetime.now(dt.UTC))}
            await asyncio.to_thread(am.post_alerts, [ended])
            resolved = (await receiver.wait_for(carries("resolved"), timeout=15)).json()
            assert resolved["alerts"][0]["fingerprint"] == sent["fingerprint"]
        finally:
            pid = am.pid
            await asyncio.to_thread(am.stop)
    assert not servers.pid_alive(pid)


@pytest.mark.timeout(60)
def test_alertmanager_that_rejects_its_config_fails_with_the_reason_and_leaves_nothing() -> None:
    am = servers.AlertmanagerServer("http://127.0.0.1:9/webhook", group_interval="0s")
    with pytest.raises(servers.ServerError, match="group_interval cannot be zero"):
        am.start()
    assert not servers.pid_alive(am.pid)
    assert not am.directory.exists()


@pytest.mark.timeout(60)
def test_waiting_for_a_port_nobody_serves_times_out_with_the_url() -> None:
    url = f"http://127.0.0.1:{servers.free_port()}/-/ready"
    with pytest.raises(servers.ServerError, match=r"did not answer .* within 0.3s"):
        servers.wait_http(url, timeout=0.3)


@pytest.mark.timeout(60)
def test_redis_sets_and_gets_a_key_over_resp_and_stops_by_pid() -> None:
    with servers.RedisServer() as redis:
        assert redis.command("PING") == "PONG"
        assert redis.command("SET", "remediator:test", "ok") == "OK"
        assert redis.command("GET", "remediator:test") == "ok"
        assert redis.command("GET", "remediator:missing") is None
        assert redis.command("INCR", "remediator:counter") == 1
        assert redis.command("CONFIG", "GET", "bind") == ["bind", "127.0.0.1"]
        pid, directory = redis.pid, redis.directory

    assert not servers.pid_alive(pid)
    assert not directory.exists()


@pytest.mark.timeout(60)
def test_postgres_answers_select_1_through_psql_and_stops_by_pid() -> None:
    with servers.PostgresServer() as pg:
        assert pg.psql("select 1").strip() == "1"
        assert pg.psql("show listen_addresses").strip() == "127.0.0.1"
        assert pg.psql("show fsync").strip() == "off"
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        pid, directory = pg.pid, pg.directory

    assert not servers.pid_alive(pid)
    assert not directory.exists()
