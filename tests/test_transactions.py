"""The appservice API: durable, exactly-once transactions and the other endpoints."""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import pytest

from testkit.helpers import command, is_notice_from, open_room
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver, RunningBridge


def _command_event(room_id: str, sender: str, body: str) -> dict[str, Any]:
    """An event as the homeserver would push it; its ID is made up, so only the bridge
    (not Synapse) knows it, and any reply to it can only come from this transaction."""
    return {
        "type": "m.room.message", "room_id": room_id, "sender": sender,
        "event_id": f"$test-{uuid.uuid4().hex}", "origin_server_ts": int(time.time() * 1000),
        "content": {"msgtype": "m.text", "body": body},
    }


async def _put_transaction(homeserver: Homeserver, txn_id: str, events: list[dict[str, Any]],
                           token: str | None, raw: bytes | None = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{homeserver.bridge_port}/_matrix/app/v1/transactions/{txn_id}"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.put(
            url, headers=headers, data=raw if raw is not None else None,
            json=None if raw is not None else {"events": events}) as response:
        return response.status, await response.json(content_type=None)


def _replies_to(event_id: str) -> Any:
    def predicate(event: dict[str, Any]) -> bool:
        relates = event["content"].get("m.relates_to", {}).get("m.in_reply_to", {})
        return relates.get("event_id") == event_id
    return predicate


async def _count_replies(user: MatrixTestClient, room: str, event_id: str) -> int:
    return sum(1 for e in await user.messages(room, limit=100) if _replies_to(event_id)(e))


async def test_replayed_transaction_has_no_second_effect_also_after_restart(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, direct=True)
    event = _command_event(room, admin.user_id, "ping")
    token = bridge.config.appservice.hs_token
    txn = f"replay-{uuid.uuid4().hex}"

    assert await _put_transaction(homeserver, txn, [event], token) == (200, {})
    await admin.wait_for_event(room, _replies_to(event["event_id"]))
    assert await _put_transaction(homeserver, txn, [event], token) == (200, {})

    await bridge.restart()
    assert await _put_transaction(homeserver, txn, [event], token) == (200, {})
    # The same event inside a new transaction (the homeserver re-sent it) is also known.
    assert await _put_transaction(homeserver, f"{txn}-b", [event], token) == (200, {})

    # Events of a room are handled in order, so once a later command is answered any
    # duplicate answer would already be there.
    await command(homeserver.bot, admin, room, "ping", expect="Pong")
    assert await _count_replies(admin, room, event["event_id"]) == 1


async def test_a_reused_transaction_id_with_new_events_is_handled(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """A homeserver that counts its transaction IDs anew (Synapse on SQLite after a
    restart) is heard: an ID is a duplicate only when its events are known."""
    room = await open_room(homeserver.bot, admin, direct=True)
    token = bridge.config.appservice.hs_token
    txn = f"reused-{uuid.uuid4().hex}"
    first = _command_event(room, admin.user_id, "ping")
    assert await _put_transaction(homeserver, txn, [first], token) == (200, {})
    await admin.wait_for_event(room, _replies_to(first["event_id"]))

    second = _command_event(room, admin.user_id, "ping")
    with caplog.at_level("WARNING", logger="bridge.appservice"):
        assert await _put_transaction(homeserver, txn, [first, second], token) == (200, {})
        await admin.wait_for_event(room, _replies_to(second["event_id"]))
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and txn in r.getMessage()]
    assert len(warnings) == 1 and "used before for other events" in warnings[0].getMessage()
    # The known event inside it had no second effect.
    await command(homeserver.bot, admin, room, "ping", expect="Pong")
    assert await _count_replies(admin, room, first["event_id"]) == 1
    assert await _count_replies(admin, room, second["event_id"]) == 1


async def test_wrong_or_missing_hs_token_is_refused_without_effect(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, direct=True)
    event = _command_event(room, admin.user_id, "ping")
    status, body = await _put_transaction(homeserver, "forged-1", [event], "not-the-token")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    status, body = await _put_transaction(homeserver, "forged-2", [event], None)
    assert status == 401 and body["errcode"] == "M_UNAUTHORIZED"

    await command(homeserver.bot, admin, room, "ping", expect="Pong")
    assert await _count_replies(admin, room, event["event_id"]) == 0
    # The refused transaction IDs were not recorded either: the real one still works.
    token = bridge.config.appservice.hs_token
    assert await _put_transaction(homeserver, "forged-1", [event], token) == (200, {})
    await admin.wait_for_event(room, _replies_to(event["event_id"]))


async def test_malformed_transaction_is_rejected(homeserver: Homeserver, bridge: RunningBridge,
                                                 admin: MatrixTestClient) -> None:
    token = bridge.config.appservice.hs_token
    status, body = await _put_transaction(homeserver, "bad-1", [], token, raw=b"{not json")
    assert status == 400 and body["errcode"] == "M_NOT_JSON"
    status, body = await _put_transaction(homeserver, "bad-2", [], token, raw=b'{"events": 5}')
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    # Neither ID was consumed.
    assert await _put_transaction(homeserver, "bad-1", [], token) == (200, {})


async def test_events_of_a_room_are_handled_in_order(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, direct=True)
    events = [_command_event(room, admin.user_id, "ping") for _ in range(15)]
    token = bridge.config.appservice.hs_token
    # Split over several transactions, as the homeserver would.
    for start in range(0, 15, 5):
        status, _ = await _put_transaction(homeserver, f"order-{uuid.uuid4().hex}",
                                           events[start:start + 5], token)
        assert status == 200
    answered = []
    for _ in events:
        reply = await admin.wait_for_event(room, is_notice_from(homeserver.bot, "Pong"))
        answered.append(reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"])
    assert answered == [e["event_id"] for e in events]


async def test_messages_sent_while_the_bridge_is_down_arrive_after_restart(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, direct=True)
    await bridge.stop()
    event_id = await admin.send_text(room, "ping")
    await bridge.start()
    reply = await admin.wait_for_event(room, _replies_to(event_id), timeout=30)
    assert reply["content"]["body"].startswith("Pong")


async def test_user_alias_and_ping_endpoints(homeserver: Homeserver,
                                             bridge: RunningBridge) -> None:
    base = f"http://127.0.0.1:{homeserver.bridge_port}/_matrix/app/v1"
    token = {"Authorization": f"Bearer {bridge.config.appservice.hs_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/users/{homeserver.bot}", headers=token) as r:
            assert r.status == 200
        async with http.get(f"{base}/users/@test_nobody:bridge.test", headers=token) as r:
            assert r.status == 404
        async with http.get(f"{base}/users/{homeserver.bot}",
                            headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 403
        async with http.get(f"{base}/rooms/%23anything:bridge.test", headers=token) as r:
            assert r.status == 404
        async with http.post(f"{base}/ping", headers=token, json={"transaction_id": "t"}) as r:
            assert r.status == 200 and await r.json() == {}
        async with http.post(f"{base}/ping", json={}) as r:
            assert r.status == 401


async def test_homeserver_ping_reaches_the_bridge(homeserver: Homeserver,
                                                  bridge: RunningBridge) -> None:
    url = f"{homeserver.url}/_matrix/client/v1/appservice/{bridge.config.appservice.id}/ping"
    headers = {"Authorization": f"Bearer {bridge.config.appservice.as_token}"}
    async with aiohttp.ClientSession() as http, http.post(
            url, headers=headers, json={"transaction_id": "from-test"}) as response:
        assert response.status == 200
        assert "duration_ms" in await response.json()


async def test_health_and_metrics(homeserver: Homeserver, bridge: RunningBridge,
                                  admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, direct=True)
    await command(homeserver.bot, admin, room, "ping", expect="Pong")
    base = f"http://127.0.0.1:{homeserver.bridge_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/_bridge/health") as r:
            assert r.status == 200
            health = await r.json()
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    assert health["ready"] is True and health["database"] == "ok"
    assert health["networks"]["test"]["ok"] is True
    assert 'bridge_events_total{direction="in",network="matrix"}' in text
    assert 'bridge_events_total{direction="out",network="matrix"}' in text
    assert 'bridge_queue_depth{queue="inbox"}' in text
    assert "bridge_event_handling_seconds_bucket" in text
    assert "# TYPE bridge_failures_total counter" in text
    # What contrib/prometheus/alerts.yml watches besides: each network's and the
    # homeserver's health, as /_bridge/health reports them.
    assert 'bridge_network_up{network="test"} 1.0' in text
    assert "\nbridge_homeserver_up 1.0\n" in text


async def test_health_is_503_when_the_database_is_gone(homeserver: Homeserver,
                                                       bridge: RunningBridge) -> None:
    url = bridge.config.database.url
    if not url.startswith("postgresql"):
        pytest.skip("an SQLite file cannot be taken away from an open connection; "
                    "the PostgreSQL run covers this")
    from tests.conftest import _drop_postgres_database

    await _drop_postgres_database(url.rsplit("/", 1)[1])
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{homeserver.bridge_port}/_bridge/health") as r:
        assert r.status == 503
        health = await r.json()
    assert health["ready"] is False
    assert health["database"].startswith("unreachable")


async def test_the_bridge_keeps_nothing_of_rooms_it_is_not_in(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient,
        outsider: MatrixTestClient) -> None:
    """The registration's alias namespace (for migration plans) makes the homeserver send the
    events of every room with a local alias: the bridge stores none of a room it is not in."""
    from sqlalchemy import func, select

    from bridge import metrics
    from bridge.db.models import InboxItem

    before = metrics.EVENTS_NOT_OURS._value.get()
    elsewhere = await outsider.create_room(
        name="Not bridged", extra={"room_alias_name": f"elsewhere-{uuid.uuid4().hex[:8]}"})
    await outsider.send_text(elsewhere, "nothing for the bridge")
    # Then a command in a portal: once it is answered, the homeserver has sent the bridge
    # everything before it (it sends transactions in order).
    room = await open_room(homeserver.bot, admin, direct=True)
    await command(homeserver.bot, admin, room, "ping", expect="Pong")
    async with bridge.hub.db.sessions() as session:
        stored = await session.scalar(select(func.count()).select_from(InboxItem)
                                      .where(InboxItem.room_id == elsewhere))
    assert stored == 0
    assert metrics.EVENTS_NOT_OURS._value.get() > before  # it was sent, and left out
