"""A transaction whose predecessor never arrived is answered 503 once, so that Synapse sends
the one it holds back first (its appservice recovery race: bridge/matrix/transaction_gaps.py).

Against Synapses of this module's own, registered with the bridge alone: the session's
also loads the double-puppet registration, which takes transaction numbers from the same
sequence, so there gaps are the rule and a bridge stops checking them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.db import queues
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.synapse import SynapseServer, free_port
from tests.conftest import (
    SERVER_NAME,
    Homeserver,
    RunningBridge,
    _asyncpg_url,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.test_high_availability import HAPROXY, _healthy, _start_haproxy
from tests.test_transactions import _command_event, _replies_to

REPOSITORY = Path(__file__).resolve().parents[1]
RECOVERY_DELAY = 2.0


def _own_homeserver(homeserver: Homeserver, work: Path,
                    extra_config: dict[str, Any] | None = None) -> SynapseServer:
    """A Synapse with only this bridge's registration (the session's config and
    registration at other ports), not started; the Homeserver for it is made from
    ``work / "config.yaml"``."""
    bridge_port, synapse_port = free_port(), free_port()
    config = yaml.safe_load(homeserver.config_path.read_text())
    config["homeserver"]["address"] = f"http://127.0.0.1:{synapse_port}"
    config["appservice"].update(address=f"http://127.0.0.1:{bridge_port}", port=bridge_port)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    registration = yaml.safe_load(
        (homeserver.config_path.parent / "registration.yaml").read_text())
    registration["url"] = f"http://127.0.0.1:{bridge_port}"
    registration_path = work / "registration.yaml"
    registration_path.write_text(yaml.safe_dump(registration))
    return SynapseServer(work / "synapse", port=synapse_port, server_name=SERVER_NAME,
                         registration_files=[registration_path], python_path=[REPOSITORY],
                         extra_config=extra_config)


def _serving(homeserver: Homeserver, work: Path,
             extra_config: dict[str, Any] | None = None) -> Iterator[Homeserver]:
    synapse = _own_homeserver(homeserver, work, extra_config)
    synapse.start()
    try:
        config = yaml.safe_load((work / "config.yaml").read_text())
        yield Homeserver(synapse, work / "config.yaml", int(config["appservice"]["port"]))
    finally:
        synapse.stop()


@pytest.fixture(scope="module")
def gap_homeserver(homeserver: Homeserver,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    yield from _serving(homeserver, tmp_path_factory.mktemp("gaps"))


@pytest.fixture(scope="module")
def racy_homeserver(homeserver: Homeserver,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    """One whose recoveries wait RECOVERY_DELAY seconds before they mark the bridge up
    (testkit/synapse_slow_recovery.py): the race's window, a few milliseconds in Synapse,
    made wide enough to hit."""
    yield from _serving(homeserver, tmp_path_factory.mktemp("race"), {"modules": [
        {"module": "testkit.synapse_slow_recovery.SlowRecovery",
         "config": {"delay_seconds": RECOVERY_DELAY}}]})


@pytest.fixture
async def admin_of_gaps(gap_homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    client = await gap_homeserver.user(f"admin{uuid.uuid4().hex[:8]}")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def admin_of_race(racy_homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    client = await racy_homeserver.user(f"admin{uuid.uuid4().hex[:8]}")
    try:
        yield client
    finally:
        await client.close()


async def _put(port: int, token: str, txn_id: str,
               events: list[dict[str, Any]]) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{port}/_matrix/app/v1/transactions/{txn_id}"
    async with aiohttp.ClientSession() as session, session.put(
            url, headers={"Authorization": f"Bearer {token}"},
            json={"events": events}) as response:
        return response.status, await response.json(content_type=None)


async def _replied_in_order(admin: MatrixTestClient, room: str,
                            events: list[dict[str, Any]]) -> list[str]:
    """The IDs of these events in the order the bot's replies to them are in the room, once
    the last one is answered (events of a room are handled in order)."""
    await admin.wait_for_event(room, _replies_to(events[-1]["event_id"]), timeout=20)
    wanted = {e["event_id"] for e in events}
    replied = [e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
               for e in reversed(await admin.messages(room, limit=100))
               if e["content"].get("m.relates_to", {}).get("m.in_reply_to", {}).get(
                   "event_id") in wanted]
    return replied


async def _first_free_base(bridge: RunningBridge) -> int:
    """Transaction numbers far above Synapse's own, which keep arriving beside them; the
    one before the first is recorded as handled (by another process, as it were)."""
    base = 10**9 + uuid.uuid4().int % 10**6 * 100
    assert bridge.bridge is not None
    async with bridge.bridge.db.transaction() as session:
        await queues.record_transaction_id(session, str(base))
    return base


async def test_a_transaction_after_a_gap_waits_once_for_the_one_before(
        gap_homeserver: Homeserver, database_url: str, admin_of_gaps: MatrixTestClient,
        caplog: pytest.LogCaptureFixture) -> None:
    hs, admin = gap_homeserver, admin_of_gaps
    bridge = RunningBridge(hs, hs.config(database_url))
    await bridge.start()
    try:
        token = bridge.config.appservice.hs_token
        port = hs.bridge_port
        room = await open_room(hs.bot, admin, direct=True)
        # Synapse's own transactions first (consecutive numbers, far below the test's own).
        await command(hs.bot, admin, room, "ping", expect="Pong")
        base = await _first_free_base(bridge)
        pings = [_command_event(room, admin.user_id, "ping") for _ in range(4)]

        async def put(number: int | str, event: dict[str, Any]) -> tuple[int, Any]:
            return await _put(port, token, str(number), [event])

        caplog.clear()
        with caplog.at_level("WARNING", logger="bridge.appservice"):
            assert await put(base + 1, pings[0]) == (200, {})
            assert await put(base + 2, pings[1]) == (200, {})
            status, body = await put(base + 4, pings[3])
            assert status == 503 and body == {
                "errcode": "M_UNKNOWN", "error": f"transaction {base + 3} not received yet"}
            assert await put(base + 3, pings[2]) == (200, {})
            assert await put(base + 4, pings[3]) == (200, {})
        assert await _replied_in_order(admin, room, pings) == [p["event_id"] for p in pings]
        refusals = [r.getMessage() for r in caplog.records if "answered 503" in r.getMessage()]
        assert refusals == [f"transaction {base + 4} arrived before {base + 3}, which this "
                            "bridge has not received; answered 503 once so that the "
                            "homeserver sends the one it holds first"]
        assert "ping" not in refusals[0]  # no message content in the log

        # Synapse on SQLite counts from 1 again after a restart; other forms of ID are not
        # numbers at all: neither is ever held back.
        others = [_command_event(room, admin.user_id, "ping") for _ in range(3)]
        assert await put(1, others[0]) == (200, {})
        assert await put(f"txn-{uuid.uuid4().hex}", others[1]) == (200, {})
        assert await put(f"{base + 10}a", others[2]) == (200, {})
        assert await _replied_in_order(admin, room, others) == [e["event_id"] for e in others]

        # A permanent gap (a number consumed without a transaction): refused once, handled
        # the second time, once, and then the process stops checking (the numbers are not
        # this bridge's alone).
        lasting = [_command_event(room, admin.user_id, "ping") for _ in range(3)]
        assert await put(base + 5, lasting[0]) == (200, {})
        assert (await put(base + 7, lasting[1]))[0] == 503
        with caplog.at_level("WARNING", logger="bridge.appservice"):
            assert await put(base + 7, lasting[1]) == (200, {})
        assert any(f"transaction {base + 7} came again without {base + 6}" in r.getMessage()
                   for r in caplog.records)
        assert await put(base + 9, lasting[2]) == (200, {})
        assert await _replied_in_order(admin, room, lasting) == [e["event_id"] for e in lasting]
        await command(hs.bot, admin, room, "ping", expect="Pong")
        assert sum(1 for e in await admin.messages(room, limit=100)
                   if _replies_to(lasting[1]["event_id"])(e)) == 1
    finally:
        await bridge.stop()


@contextlib.asynccontextmanager
async def _two_processes(hs: Homeserver) -> AsyncIterator[tuple[RunningBridge, RunningBridge]]:
    """Two bridges on one new PostgreSQL database (the first at the registration's port),
    each knowing the other."""
    name = await _create_postgres_database()
    url = _asyncpg_url(name)
    first = RunningBridge(hs, hs.config(url))
    second = RunningBridge(hs, hs.config(url, appservice__port=free_port()))
    await first.start()
    try:
        await second.start()
        assert first.bridge is not None and second.bridge is not None
        for running in (first.bridge, second.bridge):
            await running.heartbeat.beat()  # each knows the other now
        assert first.bridge.heartbeat.peers and second.bridge.heartbeat.peers
        yield first, second
    finally:
        await second.stop()
        await first.stop()
        await _drop_postgres_database(name)


async def test_a_peer_process_sees_no_gap_for_the_others_transactions(
        gap_homeserver: Homeserver, admin_of_gaps: MatrixTestClient) -> None:
    """Two processes on one PostgreSQL: a transaction handled by one, also one that needed
    nothing (written nowhere by a process alone), is known to the other."""
    hs, admin = gap_homeserver, admin_of_gaps
    async with _two_processes(hs) as (first, second):
        token = first.config.appservice.hs_token
        other_port = second.config.appservice.port
        room = await open_room(hs.bot, admin, direct=True)
        await command(hs.bot, admin, room, "ping", expect="Pong")
        base = await _first_free_base(first)
        # The bot's own notice coming back needs nothing: the fast path.
        notice = {"type": "m.room.message", "room_id": room, "sender": hs.bot,
                  "event_id": f"$test-{uuid.uuid4().hex}",
                  "origin_server_ts": int(time.time() * 1000),
                  "content": {"msgtype": "m.notice", "body": "Pong"}}
        pings = [_command_event(room, admin.user_id, "ping") for _ in range(3)]
        assert await _put(hs.bridge_port, token, str(base + 1), [pings[0]]) == (200, {})
        assert await _put(other_port, token, str(base + 2), [pings[1]]) == (200, {})
        assert await _put(hs.bridge_port, token, str(base + 3), [notice]) == (200, {})
        assert await _put(other_port, token, str(base + 4), [pings[2]]) == (200, {})
        assert await _replied_in_order(admin, room, pings) == [p["event_id"] for p in pings]


@pytest.mark.skipif(HAPROXY is None, reason="HAProxy is not installed (Debian: apt install "
                    "haproxy)")
async def test_the_gap_answer_reaches_the_homeserver_through_haproxy(
        gap_homeserver: Homeserver, admin_of_gaps: MatrixTestClient, tmp_path: Path) -> None:
    """Behind the sample HAProxy config, the 503 is not retried on the other process (which
    would refuse once too, and then the first would handle it): the homeserver gets it."""
    hs, admin = gap_homeserver, admin_of_gaps
    async with _two_processes(hs) as (first, second):
        front = free_port()
        haproxy = _start_haproxy(tmp_path, {
            "APPSERVICE_BIND": f"127.0.0.1:{front}", "EVENTS_BIND": f"127.0.0.1:{free_port()}",
            "BRIDGE_A_APPSERVICE": f"127.0.0.1:{first.config.appservice.port}",
            "BRIDGE_B_APPSERVICE": f"127.0.0.1:{second.config.appservice.port}",
            "BRIDGE_A_EVENTS": f"127.0.0.1:{free_port()}",
            "BRIDGE_B_EVENTS": f"127.0.0.1:{free_port()}"})
        try:
            await _healthy(f"http://127.0.0.1:{front}/_bridge/health", haproxy, "HAProxy")
            token = first.config.appservice.hs_token
            room = await open_room(hs.bot, admin, direct=True)
            base = await _first_free_base(first)
            pings = [_command_event(room, admin.user_id, "ping") for _ in range(3)]
            assert await _put(front, token, str(base + 1), [pings[0]]) == (200, {})
            status, _ = await _put(front, token, str(base + 3), [pings[2]])
            assert status == 503
            assert await _put(front, token, str(base + 2), [pings[1]]) == (200, {})
            assert await _put(front, token, str(base + 3), [pings[2]]) == (200, {})
            assert await _replied_in_order(admin, room, pings) == [p["event_id"] for p in pings]
        finally:
            haproxy.terminate()
            haproxy.wait(timeout=10)


def _recoveries_finished(synapse: SynapseServer) -> int:
    return len(re.findall(r"slow recovery: marking \S+ up now", synapse.log_path.read_text()))


async def test_messages_sent_while_synapse_recovers_arrive_once_and_in_order(
        racy_homeserver: Homeserver, sqlite_url: str, admin_of_race: MatrixTestClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """The race itself: the bridge is away, Synapse recovers when it is back and, meanwhile,
    stores messages it does not send, while newer ones go out. Each arrives once, in order."""
    hs, admin = racy_homeserver, admin_of_race
    synapse = hs.synapse
    bridge = RunningBridge(hs, hs.config(sqlite_url))
    await bridge.start()
    sender: asyncio.Task[None] | None = None
    try:
        room = await open_room(hs.bot, admin, name="Standesamt", bot_power=100)
        await command(hs.bot, admin, room, "!bridge link test C-race", expect="Linked")
        sent: list[str] = []

        async def send(text: str) -> None:
            await admin.send_text(room, text)
            sent.append(text)

        await bridge.stop()
        await send("Nachricht 0")  # Synapse cannot deliver it: the bridge is "down"
        deadline = time.monotonic() + 30
        while synapse.appservice_state(hs.as_id) != "down":
            assert time.monotonic() < deadline, "Synapse never marked the bridge down"
            await asyncio.sleep(0.1)
        recoveries = _recoveries_finished(synapse)

        async def keep_sending() -> None:
            # Through the recovery and its slow end, and a little after it: some messages
            # are created while Synapse still reads "down" after the last re-send.
            number, after = 1, 0
            while after < 8:
                await send(f"Nachricht {number}")
                number += 1
                if _recoveries_finished(synapse) > recoveries:
                    after += 1
                await asyncio.sleep(0.25)

        caplog.set_level("WARNING", logger="bridge.appservice")
        sender = asyncio.create_task(keep_sending())
        await bridge.start()
        await sender
        # Nothing goes to the bridge while Synapse recovers; then one more message (a held
        # transaction shows only when a newer one arrives).
        await synapse.wait_appservice_up(hs.as_id, timeout=60)
        await send("Ende")
        await bridge.connector.wait_for(lambda e: e["content"].get("body") == "Ende",
                                        timeout=60)
        for text in sent:
            await bridge.connector.wait_for(lambda e, text=text: e["content"].get("body")
                                            == text, timeout=30)
        relayed = [d["event"]["content"]["body"] for d in bridge.connector.delivered
                   if d["link"] == "C-race"]
        assert relayed == sent
        # The race was met: a recovery's slow end, and a transaction sent past a held one.
        assert _recoveries_finished(synapse) > recoveries
        assert any("answered 503 once" in r.getMessage() for r in caplog.records)
    finally:
        if sender is not None and not sender.done():
            sender.cancel()
        await bridge.stop()
