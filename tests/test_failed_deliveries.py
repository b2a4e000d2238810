"""Deliveries that fail for good: told once in the room, counted in `!bridge status` and
/metrics, listed by `!bridge failed` and put back by `!bridge retry`; failures a retry cannot
fix fail at once, and a failing command is answered once and never retried."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import aiohttp
import sqlalchemy.exc

from bridge.core.outbox import cannot_succeed_on_retry
from bridge.db import queues
from testkit.helpers import command, is_notice_from, open_room
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver, RunningBridge

FAILED_NOTICE = "Could not deliver to Test network"


async def _linked_room(homeserver: Homeserver, admin: MatrixTestClient) -> str:
    room = await open_room(homeserver.bot, admin, name="Sozialamt", bot_power=100)
    await command(homeserver.bot, admin, room, f"!bridge link test C{uuid.uuid4().hex[:6]}",
                  expect="Linked")
    return room


def _body_is(text: str) -> Any:
    return lambda event: event.get("content", {}).get("body") == text


async def _failed_count(bridge: RunningBridge, room: str | None = None) -> int:
    assert bridge.bridge is not None
    async with bridge.bridge.db.sessions() as session:
        return await queues.count_failed(session, room)


async def _wait_failed(bridge: RunningBridge, room: str, count: int) -> None:
    deadline = time.monotonic() + 15
    while await _failed_count(bridge, room) != count:
        assert time.monotonic() < deadline, f"never {count} failed deliveries in {room}"
        await asyncio.sleep(0.05)


async def _metric(homeserver: Homeserver, name: str) -> float:
    url = f"http://127.0.0.1:{homeserver.bridge_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def _notices(admin: MatrixTestClient, room: str, contains: str) -> list[dict[str, Any]]:
    return [e for e in await admin.messages(room, limit=100)
            if e["type"] == "m.room.message" and contains in e["content"].get("body", "")
            and e["content"].get("msgtype") == "m.notice"]


async def test_failed_delivery_is_told_once_counted_listed_and_retried(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    bot = homeserver.bot
    bridge.connector.failures = ["permanent"]
    await admin.send_text(room, "Antrag Nr. 7")
    notice = await admin.wait_for_event(room, is_notice_from(bot, FAILED_NOTICE), timeout=15)

    status = (await command(bot, admin, room, "!bridge status"))["content"]["body"]
    assert "Failed deliveries**: 1 in this room, 1 overall" in status
    assert await _metric(homeserver, "bridge_failed_deliveries") == 1
    listed = (await command(bot, admin, room, "!bridge failed"))["content"]["body"]
    match = re.search(r"- `(\d+)` to Test network \(relay\) in (\S+), (\d{4}-\d\d-\d\d "
                      r"\d\d:\d\d UTC): remote side refused the message", listed)
    assert match, listed
    item_id = match.group(1)
    assert f"`!bridge retry {item_id}` to try again" in notice["content"]["body"]
    assert match.group(2) == room

    # Put back, and it fails again: the room was told already, so no second notice.
    attempts = bridge.connector.attempts
    bridge.connector.failures = ["permanent"]
    reply = await command(bot, admin, room, f"!bridge retry {item_id}")
    assert f"Delivery `{item_id}` will be tried again now." in reply["content"]["body"]
    await _wait_failed(bridge, room, 1)
    assert bridge.connector.attempts == attempts + 1
    await command(bot, admin, room, "!bridge ping", expect="Pong")  # after any notice
    assert len(await _notices(admin, room, FAILED_NOTICE)) == 1

    # Wrong IDs are refused clearly and change nothing.
    reply = await command(bot, admin, room, "!bridge retry 999999")
    assert "There is no failed delivery `999999`" in reply["content"]["body"]
    reply = await command(bot, admin, room, "!bridge retry seven")
    assert "`seven` is not a delivery ID" in reply["content"]["body"]
    assert await _failed_count(bridge, room) == 1

    # `retry all` in the room: now the remote side takes it.
    reply = await command(bot, admin, room, "!bridge retry all")
    assert "1 failed delivery(ies) of this room will be tried again now." in \
        reply["content"]["body"]
    await bridge.connector.wait_for(_body_is("Antrag Nr. 7"), timeout=15)
    await _wait_failed(bridge, room, 0)
    status = (await command(bot, admin, room, "!bridge status"))["content"]["body"]
    assert "Failed deliveries**: 0 in this room, 0 overall" in status
    assert await _metric(homeserver, "bridge_failed_deliveries") == 0
    reply = await command(bot, admin, room, "!bridge failed")
    assert "No failed deliveries in this room." in reply["content"]["body"]


async def test_failed_list_is_newest_first_and_bounded(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    bot = homeserver.bot
    bridge.connector.failures = ["permanent"] * 12
    for n in range(12):
        await admin.send_text(room, f"Nachricht {n}")
    await _wait_failed(bridge, room, 12)
    listed = (await command(bot, admin, room, "!bridge failed"))["content"]["body"]
    ids = [int(i) for i in re.findall(r"^- `(\d+)`", listed, re.MULTILINE)]
    assert len(ids) == 10 and ids == sorted(ids, reverse=True)
    assert "… and 2 more" in listed
    # In a direct chat with the bot the list and `retry all` cover every room.
    direct = await open_room(bot, admin, direct=True)
    status = (await command(bot, admin, direct, "status"))["content"]["body"]
    assert "Failed deliveries**: 12 overall" in status
    reply = await command(bot, admin, direct, "retry all")
    assert "12 failed delivery(ies) will be tried again now." in reply["content"]["body"]
    await bridge.connector.wait_for(_body_is("Nachricht 11"), timeout=20)
    bodies = [e["event"]["content"]["body"] for e in bridge.connector.delivered]
    assert bodies == [f"Nachricht {n}" for n in range(12)]


async def test_a_failure_no_retry_can_fix_fails_for_good_at_once(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    bridge.config.bridge.outbox.retry_base_seconds = 0.1
    attempts = bridge.connector.attempts
    bridge.connector.failures = ["bug"]
    await admin.send_text(room, "kaputte Daten")
    notice = await admin.wait_for_event(room, is_notice_from(homeserver.bot, FAILED_NOTICE),
                                        timeout=15)
    assert "ValueError('cannot encode this message')" in notice["content"]["body"]
    assert bridge.connector.attempts == attempts + 1
    assert await _failed_count(bridge, room) == 1

    # A dropped connection is network trouble: retried, and delivered.
    bridge.connector.failures = ["connection"]
    await admin.send_text(room, "Verbindung weg")
    await bridge.connector.wait_for(_body_is("Verbindung weg"), timeout=15)
    assert await _failed_count(bridge, room) == 1


async def test_a_failing_network_command_is_answered_once_and_not_retried(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    bridge.config.bridge.outbox.retry_base_seconds = 0.1
    room = await open_room(homeserver.bot, admin, direct=True)
    reply = await command(homeserver.bot, admin, room, "test break")
    assert "Something went wrong while running `test break`" in reply["content"]["body"]
    await command(homeserver.bot, admin, room, "ping", expect="Pong")
    await asyncio.sleep(0.5)  # a retry would have run by now (backoff 0.1 s)
    assert bridge.connector.command_runs == 1
    assert len(await _notices(admin, room, "Something went wrong")) == 1
    assert await _failed_count(bridge) == 0


def test_failures_are_classified_by_whether_a_retry_can_fix_them() -> None:
    never = [ValueError("bad"), TypeError("bug"), KeyError("missing"),
             UnicodeEncodeError("ascii", "jürgen", 1, 2, "ordinal not in range")]
    maybe = [ConnectionResetError(), TimeoutError(), OSError("unreachable"),
             aiohttp.ClientConnectionError(), asyncio.IncompleteReadError(b"", 10),
             sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed")),
             RuntimeError("something unknown")]
    assert [cannot_succeed_on_retry(exc) for exc in never] == [True] * len(never)
    assert [cannot_succeed_on_retry(exc) for exc in maybe] == [False] * len(maybe)
