"""A homeserver restart does not make the bridge deaf: a real Synapse on SQLite, which
numbers its appservice transactions from 1 again after each restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from testkit.helpers import command, open_room
from testkit.synapse import SynapseServer, free_port
from tests.conftest import SERVER_NAME, Homeserver, RunningBridge
from tests.support.crash import dies_after_delivering, lease_runs_out, outbox_done


@pytest.fixture
async def own_homeserver(homeserver: Homeserver, tmp_path: Path) -> AsyncIterator[Homeserver]:
    """A Synapse of this test's own (SQLite, like the session's), registered with the same
    bridge registration at another port, so restarting it disturbs no other test."""
    bridge_port, synapse_port = free_port(), free_port()
    config = yaml.safe_load(homeserver.config_path.read_text())
    config["homeserver"]["address"] = f"http://127.0.0.1:{synapse_port}"
    config["appservice"].update(address=f"http://127.0.0.1:{bridge_port}", port=bridge_port)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    registration = yaml.safe_load(
        (homeserver.config_path.parent / "registration.yaml").read_text())
    registration["url"] = f"http://127.0.0.1:{bridge_port}"
    registration_path = tmp_path / "registration.yaml"
    registration_path.write_text(yaml.safe_dump(registration))
    synapse = SynapseServer(tmp_path / "synapse", port=synapse_port, server_name=SERVER_NAME,
                            registration_files=[registration_path])
    synapse.start()
    try:
        yield Homeserver(synapse, config_path, bridge_port)
    finally:
        synapse.stop()


async def test_bridge_hears_the_homeserver_after_it_restarts(own_homeserver: Homeserver,
                                                             sqlite_url: str) -> None:
    hs = own_homeserver
    bridge = RunningBridge(hs, hs.config(sqlite_url))
    await bridge.start()
    admin = await hs.user(f"admin{uuid.uuid4().hex[:8]}")
    try:
        direct = await open_room(hs.bot, admin, direct=True)
        await command(hs.bot, admin, direct, "ping", expect="Pong")
        room = await open_room(hs.bot, admin, name="Bürgeramt", bot_power=100)
        await command(hs.bot, admin, room, "!bridge link test C-restart", expect="Linked")
        await admin.send_text(room, "vor dem Neustart")
        await bridge.connector.wait_for(lambda e: e["content"].get("body") == "vor dem Neustart")

        # Once every transaction is acknowledged, Synapse on SQLite forgets its transaction
        # counter: after the restart its IDs start from 1 again.
        for _ in range(200):
            if hs.synapse.unsent_appservice_transactions(bridge.config.appservice.id) == 0:
                break
            await asyncio.sleep(0.05)
        hs.synapse.restart()

        reply = await command(hs.bot, admin, direct, "ping", expect="Pong")
        assert reply["sender"] == hs.bot
        await admin.send_text(room, "nach dem Neustart")
        item = await bridge.connector.wait_for(
            lambda e: e["content"].get("body") == "nach dem Neustart", timeout=20)
        assert item["link"] == "C-restart"
    finally:
        await admin.close()
        await bridge.stop()

async def test_puppet_message_is_not_posted_again_after_a_crash_and_a_homeserver_restart(
        own_homeserver: Homeserver, sqlite_url: str) -> None:
    hs = own_homeserver
    bridge = RunningBridge(hs, hs.config(sqlite_url))
    await bridge.start()
    admin = await hs.user(f"admin{uuid.uuid4().hex[:8]}")
    body = f"Bescheid {uuid.uuid4().hex[:6]} ist raus"
    try:
        room = await open_room(hs.bot, admin, name="Bauamt", bot_power=100)
        await command(hs.bot, admin, room, "!bridge link test C-doubt", expect="Linked")
        assert bridge.bridge is not None
        delivered = asyncio.Event()
        dies_after_delivering(bridge.bridge.outbox, body, delivered)
        puppet = await bridge.hub.ensure_puppet("test", "u-doubt", "Dora Zweifel")
        await bridge.hub.post_to_room(network="test", dedup_key=None, room_id=room,
                                      sender=puppet, content={"msgtype": "m.text",
                                                              "body": body})
        await asyncio.wait_for(delivered.wait(), 30)
        await admin.wait_for_event(room, lambda e: e["content"].get("body") == body,
                                   timeout=30)
        await bridge.stop()

        # Synapse remembers an appservice's transaction IDs only in memory.
        hs.synapse.restart()
        second = RunningBridge(hs, hs.config(sqlite_url))
        await second.start()
        try:
            await lease_runs_out(second.hub, "matrix")
            await outbox_done(second.hub)
            events: list[dict[str, Any]] = await admin.messages(room, limit=100)
            copies = [e for e in events if e.get("content", {}).get("body") == body]
            assert len(copies) == 1, f"posted {len(copies)} times"
            assert copies[0]["sender"] == puppet
        finally:
            await second.stop()
    finally:
        await admin.close()
        await bridge.stop()


async def test_puppet_message_is_not_posted_again_when_the_answer_was_lost_in_a_restart(
        own_homeserver: Homeserver, sqlite_url: str) -> None:
    # Synapse took the event, then went down before its answer arrived: the attempt fails
    # with a connection error and is retried once Synapse is back, which has forgotten the
    # transaction ID by then.
    hs = own_homeserver
    bridge = RunningBridge(hs, hs.config(sqlite_url))
    await bridge.start()
    admin = await hs.user(f"admin{uuid.uuid4().hex[:8]}")
    body = f"Antwort {uuid.uuid4().hex[:6]} verloren"
    try:
        room = await open_room(hs.bot, admin, name="Ordnungsamt", bot_power=100)
        await command(hs.bot, admin, room, "!bridge link test C-lost", expect="Linked")
        matrix = bridge.hub.matrix
        deliver = matrix.deliver
        attempts = 0

        async def answer_lost(delivery: Any) -> Any:
            nonlocal attempts
            result = await deliver(delivery)
            if (delivery.payload.get("content") or {}).get("body") == body:
                attempts += 1
                if attempts == 1:
                    await asyncio.to_thread(hs.synapse.restart)
                    raise aiohttp.ServerDisconnectedError()
            return result

        matrix.deliver = answer_lost
        puppet = await bridge.hub.ensure_puppet("test", "u-lost", "Lutz Verloren")
        await bridge.hub.post_to_room(network="test", dedup_key=None, room_id=room,
                                      sender=puppet, content={"msgtype": "m.text",
                                                              "body": body})
        await outbox_done(bridge.hub, tries=600)
        assert attempts == 2
        events: list[dict[str, Any]] = await admin.messages(room, limit=100)
        copies = [e for e in events if e.get("content", {}).get("body") == body]
        assert len(copies) == 1, f"posted {len(copies)} times"
    finally:
        await admin.close()
        await bridge.stop()
