"""A homeserver restart does not make the bridge deaf: a real Synapse on SQLite, which
numbers its appservice transactions from 1 again after each restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from testkit.helpers import command, open_room
from testkit.synapse import SynapseServer, free_port
from tests.conftest import SERVER_NAME, Homeserver, RunningBridge


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
