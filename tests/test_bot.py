"""The bridge bot, driven by real users on a real Synapse."""

from __future__ import annotations

import time

from testkit.helpers import command, is_notice_from, open_room
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver, RunningBridge


async def test_help_in_direct_chat_needs_no_prefix(homeserver: Homeserver, bridge: RunningBridge,
                                                  admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, direct=True)
    started = time.monotonic()
    reply = await command(homeserver.bot, admin, room, "help", expect="Bridge bot commands")
    assert time.monotonic() - started < 2.0
    body = reply["content"]["body"]
    for name in ("help", "ping", "version", "status", "link <network> <remote-id>"):
        assert f"`{name}" in body
    assert "<strong>Bridge bot commands</strong>" in reply["content"]["formatted_body"]


async def test_commands_in_group_room_need_the_prefix(homeserver: Homeserver,
                                                      bridge: RunningBridge,
                                                      admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, name="Bauamt")
    await admin.send_text(room, "ping")  # ordinary chat: the bot keeps quiet
    reply = await command(homeserver.bot, admin, room, "!bridge ping", expect="Pong")
    assert reply["content"]["msgtype"] == "m.notice"
    previous = await admin.messages(room, limit=10)
    pongs = [e for e in previous if e["content"].get("body", "").startswith("Pong")]
    assert len(pongs) == 1


async def test_unknown_command_gets_a_helpful_answer(homeserver: Homeserver,
                                                     bridge: RunningBridge,
                                                     admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, direct=True)
    reply = await command(homeserver.bot, admin, room, "frobnicate", expect="Unknown command")
    assert "`frobnicate`" in reply["content"]["body"]
    assert "`help`" in reply["content"]["body"]


async def test_version(homeserver: Homeserver, bridge: RunningBridge,
                       admin: MatrixTestClient) -> None:
    from bridge import __version__

    room = await open_room(homeserver.bot, admin, direct=True)
    reply = await command(homeserver.bot, admin, room, "version")
    assert __version__ in reply["content"]["body"]


async def test_invite_from_non_admin_is_declined_with_reason(
        homeserver: Homeserver, bridge: RunningBridge, outsider: MatrixTestClient) -> None:
    # (A direct chat is open to everyone of the homeserver: tests/people/.)
    room = await outsider.create_room(invite=[homeserver.bot], name="Arbeitskreis")
    event = await outsider.wait_for_membership(room, homeserver.bot, "leave", timeout=15)
    assert "bridge.admins" in event["content"].get("reason", "")


async def test_non_admin_may_not_manage_links(homeserver: Homeserver, bridge: RunningBridge,
                                              admin: MatrixTestClient,
                                              outsider: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, name="Schulamt")
    await admin.invite(room, outsider.user_id)
    await outsider.join(room)
    reply = await command(homeserver.bot, outsider, room, "!bridge link test C1",
                          expect="only bridge admins")
    assert "`link`" in reply["content"]["body"]
    # and nothing was linked
    status = await command(homeserver.bot, admin, room, "!bridge status")
    assert "not linked" in status["content"]["body"]


async def test_link_status_unlink_and_bridge_info(homeserver: Homeserver,
                                                  bridge: RunningBridge,
                                                  admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, name="Ordnungsamt", bot_power=100)
    reply = await command(homeserver.bot, admin, room, "!bridge link test C42")
    assert "Linked this room to Test network `C42`" in reply["content"]["body"]
    key = "hub-bridge://test/C42"
    for event_type in ("m.bridge", "uk.half-shot.bridge"):
        info = await _wait_state(admin, room, event_type, key)
        assert info["bridgebot"] == homeserver.bot
        assert info["creator"] == admin.user_id
        assert info["protocol"] == {"id": "test", "displayname": "Test network"}
        assert info["channel"]["id"] == "C42"
        assert info["channel"]["displayname"] == "Conversation C42"

    status = await command(homeserver.bot, admin, room, "!bridge status")
    body = status["content"]["body"]
    assert "Test network: C42 (Conversation C42)" in body
    assert "connected to the test network" in body
    assert "slack: disabled" in body and "email: disabled" in body

    # (The test network allows several links per room, like Slack; the same one twice,
    # never.)
    again = await command(homeserver.bot, admin, room, "!bridge link test C42")
    assert "This room is already linked to Test network `C42`" in again["content"]["body"]

    reply = await command(homeserver.bot, admin, room, "!bridge unlink test")
    assert "Unlinked this room from Test network `C42`" in reply["content"]["body"]
    for event_type in ("m.bridge", "uk.half-shot.bridge"):
        assert await _wait_state(admin, room, event_type, key, want_empty=True) == {}
    status = await command(homeserver.bot, admin, room, "!bridge status")
    assert "not linked" in status["content"]["body"]


async def test_link_errors_are_explained(homeserver: Homeserver, bridge: RunningBridge,
                                         admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, name="Kämmerei")
    reply = await command(homeserver.bot, admin, room, "!bridge link slack C1")
    assert "Unknown or disabled network `slack`" in reply["content"]["body"]
    assert "`test`" in reply["content"]["body"]
    reply = await command(homeserver.bot, admin, room, "!bridge link test missing-1")
    assert "no conversation `missing-1`" in reply["content"]["body"]
    reply = await command(homeserver.bot, admin, room, "!bridge link")
    assert "Usage" in reply["content"]["body"]
    reply = await command(homeserver.bot, admin, room, "!bridge unlink test")
    assert "has no `test` link" in reply["content"]["body"]


async def test_missing_power_for_bridge_info_is_reported(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, name="Gesundheitsamt")
    reply = await command(homeserver.bot, admin, room, "!bridge link test C7")
    assert "(m.bridge)" in reply["content"]["body"]
    notice = await admin.wait_for_event(room, is_notice_from(homeserver.bot, "Could not deliver"),
                                        timeout=15)
    assert "needs power level 50 (m.bridge)" in notice["content"]["body"]


async def test_bot_says_which_power_level_it_lacks(homeserver: Homeserver,
                                                   bridge: RunningBridge,
                                                   admin: MatrixTestClient) -> None:
    # A room version 12 room (room ID without server name) where the bot stays at level 0.
    room = await admin.create_room(invite=[homeserver.bot], name="Standesamt",
                                   room_version="12",
                                   power_level_content_override={"invite": 50})
    assert ":" not in room
    greeting = await admin.wait_for_event(room, is_notice_from(homeserver.bot, "Hello"),
                                          timeout=15)
    body = greeting["content"]["body"]
    assert "My power level here is 0" in body
    assert "invite remote users" in body and "(invite)" in body
    assert "rename the room" in body and "(m.room.name)" in body
    assert "remove messages" in body and "(redact)" in body

    # With enough power the warning is gone from the status.
    await admin.send_state(room, "m.room.power_levels", "", {
        "users": {homeserver.bot: 100}, "state_default": 50, "invite": 0, "redact": 50,
        "events_default": 0, "users_default": 0,
    })
    status = await command(homeserver.bot, admin, room, "!bridge status")
    assert "power level" not in status["content"]["body"]


async def _wait_state(client: MatrixTestClient, room: str, event_type: str, key: str,
                      want_empty: bool = False) -> dict:
    import asyncio

    for _ in range(100):
        state = await client.get_state(room, event_type, key)
        if state is not None and (state == {}) == want_empty:
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{event_type}/{key} never became {'empty' if want_empty else 'set'}")


async def test_rooms_of_older_versions_work_too(homeserver: Homeserver, bridge: RunningBridge,
                                                admin: MatrixTestClient) -> None:
    for version in ("10", "11"):
        room = await open_room(homeserver.bot, admin, direct=True, room_version=version)
        await command(homeserver.bot, admin, room, "ping", expect="Pong")
