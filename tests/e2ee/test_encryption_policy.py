"""What the bridge refuses and says about encrypted rooms (issue 13): encryption.allow off
refuses to link an encrypted room and reports one that turned encryption on after it was
linked (in the room, in `!bridge status` and in `bridge check`); encryption.require refuses
an unencrypted room; a linked room that turns encryption on is told that relayed messages
leave end-to-end encryption, and its bridge-info state says so.

These use the suite's plain test client (it does not encrypt, so the bot can read its
commands even with encryption.allow off); tests/e2ee/test_encrypted_rooms.py uses nio.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from bridge.checks import run_checks
from bridge.config import ConfigError, parse_config
from bridge.db import store
from bridge.matrix.bridge_info import state_key
from bridge.registration import build_registration
from testkit.helpers import SLOW_STEP, command, is_notice_from, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.e2ee.conftest import encrypted_bridge
from tests.email.conftest import sink as sink
from tests.slack.conftest import CHANNEL, SlackBridge, linked_room
from tests.slack.conftest import slack_bridge as slack_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team

ENCRYPTION_STATE = {"type": "m.room.encryption", "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


async def links(bridge: SlackBridge, room: str) -> list[Any]:
    async with bridge.hub.db.sessions() as session:
        return await store.links_of_room(session, room)


async def test_without_allow_an_encrypted_room_is_not_linked(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    bot = slack_bridge.homeserver.bot
    room = await open_room(bot, admin, bot_power=100, name="Verschlüsselt",
                           extra={"initial_state": [ENCRYPTION_STATE]})
    answer = await command(bot, admin, room, f"!bridge link slack {CHANNEL}",
                           expect="end-to-end encrypted")
    text = answer["content"]["body"]
    assert "encryption.allow: true" in text and "Nothing was linked" in text
    assert await links(slack_bridge, room) == []
    # Slack was not even asked: the app did not join the channel for this.
    assert not slack_bridge.sim.calls_to("conversations.join")


async def test_without_allow_a_linked_room_that_turns_encryption_on_is_reported(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    bot = slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin)
    await admin.send_state(room, "m.room.encryption", "", ENCRYPTION_STATE["content"])
    told = await admin.wait_for_event(
        room, is_notice_from(bot, "turned on end-to-end encryption"), timeout=SLOW_STEP)
    assert "encryption.allow: true" in told["content"]["body"]
    status = await command(bot, admin, room, "!bridge status", expect="Links of this room")
    assert "end-to-end encrypted" in status["content"]["body"]
    assert "encryption.allow" in status["content"]["body"]
    results = {r.name: r for r in await run_checks(slack_bridge.config)}
    item = results["encrypted rooms"]
    assert not item.ok and room in item.detail and "encryption.allow" in item.detail


async def test_require_refuses_an_unencrypted_room(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink, admin: MatrixTestClient) -> None:
    async with encrypted_bridge(homeserver, database_url, slack_sim, team, sink,
                                require=True) as bridge:
        bot = homeserver.bot
        room = await open_room(bot, admin, bot_power=100, name="Offen")
        answer = await command(bot, admin, room, f"!bridge link slack {CHANNEL}",
                               expect="not end-to-end encrypted")
        assert "encryption.require: true" in answer["content"]["body"]
        assert await links(bridge, room) == []


async def test_a_linked_room_turning_encryption_on_is_told_it_leaves_encryption(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink, admin: MatrixTestClient) -> None:
    async with encrypted_bridge(homeserver, database_url, slack_sim, team, sink) as bridge:
        bot = homeserver.bot
        room = await linked_room(bridge, admin)
        await admin.send_state(room, "m.room.encryption", "", ENCRYPTION_STATE["content"])
        told = await admin.wait_for_event(
            room, lambda e: e["sender"] == bot and e["type"] == "m.room.encrypted",
            timeout=SLOW_STEP)
        # (The notice itself is encrypted; tests/e2ee/test_encrypted_rooms.py reads it.)
        assert told["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
        key = state_key(bridge.config.appservice.id, "slack",
                        (await links(bridge, room))[0].remote_id)
        info = await admin.get_state(room, "m.bridge", key)
        assert info is not None
        for _ in range(100):  # the state follows the notice in the room's lane
            info = await admin.get_state(room, "m.bridge", key)
            if info and "encryption" in info:
                break
            await asyncio.sleep(0.1)
        assert info is not None and info["encryption"]["leaves_end_to_end_encryption"] is True
        assert "leaves end-to-end encryption" in info["encryption"]["note"]
        results = {r.name: r for r in await run_checks(bridge.config)}
        item = results["encrypted rooms"]
        assert item.ok and "sends the keys' news (MSC3202)" in item.detail, item.detail


async def test_check_tells_when_the_homeserver_sends_no_keys_news(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink) -> None:
    """A homeserver without MSC3202 sends transactions without one-time-key counts (this
    suite's Synapse has it on, so such a transaction is sent to the bridge by hand)."""
    async with encrypted_bridge(homeserver, database_url, slack_sim, team, sink) as bridge:
        config = bridge.config
        async with aiohttp.ClientSession() as http:
            # (Three in a row: one queued before the bridge's device existed has none either.)
            for n in range(3):
                async with http.put(
                        f"{config.appservice.address}/_matrix/app/v1/transactions/no-3202-{n}",
                        json={"events": []},
                        headers={"Authorization": f"Bearer {config.appservice.hs_token}"}) as r:
                    assert r.status == 200
        results = {r.name: r for r in await run_checks(config)}
        item = results["encrypted rooms"]
        assert not item.ok and "MSC3202" in item.detail and "msc3202_transaction_extensions" \
            in item.detail, item.detail


def _config(**encryption: Any) -> Any:
    return parse_config({"homeserver": {"domain": "stadt.example"},
                         "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
                         "encryption": encryption}, environ={})


def test_the_registration_asks_for_the_keys_news_only_with_encryption_allowed() -> None:
    plain = build_registration(_config())
    assert "org.matrix.msc3202" not in plain
    allowed = build_registration(_config(allow=True))
    assert allowed["org.matrix.msc3202"] is True
    # To-device messages come with the ephemeral events (MSC2409), asked for either way.
    assert allowed["receive_ephemeral"] is True
    assert allowed["de.sorunome.msc2409.push_ephemeral"] is True


@pytest.mark.parametrize("key", ["default", "require"])
def test_default_and_require_need_allow(key: str) -> None:
    with pytest.raises(ConfigError, match=f"encryption.{key}: needs encryption.allow: true"):
        _config(**{key: True})
    assert getattr(_config(allow=True, **{key: True}).encryption, key) is True


def test_encryption_keys_come_from_the_environment_too() -> None:
    config = parse_config({"homeserver": {"domain": "stadt.example"},
                           "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32}},
                          environ={"BRIDGE_ENCRYPTION__ALLOW": "true",
                                   "BRIDGE_ENCRYPTION__KEY_WAIT_SECONDS": "5"})
    assert config.encryption.allow is True and config.encryption.key_wait_seconds == 5
