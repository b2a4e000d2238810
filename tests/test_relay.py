"""The hub's relay rule and the durable outbox, through a real connector for a test network."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from bridge.core.hub import MATRIX
from bridge.core.origin import ORIGIN_KEY, Origin
from bridge.db import store
from bridge.db.queues import NewDelivery
from testkit.helpers import command, is_notice_from, open_room
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver, RunningBridge


async def _linked_room(homeserver: Homeserver, admin: MatrixTestClient,
                       remote: str | None = None) -> str:
    room = await open_room(homeserver.bot, admin, name="Jugendamt", bot_power=100)
    remote = remote or f"C{uuid.uuid4().hex[:6]}"
    await command(homeserver.bot, admin, room, f"!bridge link test {remote}", expect="Linked")
    return room


def _body_is(text: str) -> Any:
    return lambda event: event.get("content", {}).get("body") == text


async def test_matrix_message_is_relayed_to_the_link(homeserver: Homeserver,
                                                     bridge: RunningBridge,
                                                     admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin, remote="C100")
    await admin.send_text(room, "Guten Morgen!")
    item = await bridge.connector.wait_for(_body_is("Guten Morgen!"))
    assert item["link"] == "C100"
    assert item["event"]["sender"] == admin.user_id
    # Commands to the bot are for the bot, not for the remote side.
    assert not any(e["event"]["content"].get("body", "").startswith("!bridge")
                   for e in bridge.connector.delivered)


async def test_remote_message_appears_once_as_puppet_and_is_not_echoed(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin, remote="C200")
    hub = bridge.hub
    puppet = await hub.ensure_puppet("test", "U.Müller@example", "Ute Müller")
    assert puppet == "@test_u.m=c3=bcller=40example:bridge.test"
    for _ in range(2):  # the remote side delivers the same message twice
        await hub.post_to_room(network="test", dedup_key="C200/msg-1", room_id=room,
                               sender=puppet, content={"msgtype": "m.text", "body": "Hallo"},
                               remote_space="C200", remote_id="msg-1")
    event = await admin.wait_for_event(room, _body_is("Hallo"), timeout=15)
    assert event["sender"] == puppet
    members = await admin.get_joined_members(room)
    assert members[puppet]["display_name"] == "Ute Müller"

    # A Matrix message afterwards reaches the link; the puppet's own message never does.
    await admin.send_text(room, "Danke")
    await bridge.connector.wait_for(_body_is("Danke"))
    assert not any(e["event"]["sender"] == puppet for e in bridge.connector.delivered)
    hallos = [e for e in await admin.messages(room) if e["content"].get("body") == "Hallo"]
    assert len(hallos) == 1
    async with bridge.bridge.db.sessions() as session:  # type: ignore[union-attr]
        mapped = await store.mappings_for_remote(session, "test", "C200", "msg-1")
    assert [m.event_id for m in mapped] == [event["event_id"]]


async def test_puppet_profile_follows_remote_changes(homeserver: Homeserver,
                                                     bridge: RunningBridge,
                                                     admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    hub = bridge.hub
    puppet = await hub.ensure_puppet("test", "u7", "Old Name")
    await hub.post_to_room(network="test", dedup_key=None, room_id=room, sender=puppet,
                           content={"msgtype": "m.text", "body": "one"})
    await admin.wait_for_event(room, _body_is("one"), timeout=15)
    await hub.ensure_puppet("test", "u7", "New Name")
    for _ in range(50):
        members = await admin.get_joined_members(room)
        if members[puppet]["display_name"] == "New Name":
            break
        await asyncio.sleep(0.1)
    assert members[puppet]["display_name"] == "New Name"


async def test_temporary_failures_are_retried_until_delivered(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    bridge.connector.failures = ["temporary", "temporary"]
    attempts_before = bridge.connector.attempts
    await admin.send_text(room, "bitte zustellen")
    await admin.send_text(room, "und danach das")
    await bridge.connector.wait_for(_body_is("und danach das"), timeout=20)
    bodies = [e["event"]["content"]["body"] for e in bridge.connector.delivered]
    # Still in order, each once, after two failed attempts.
    assert bodies == ["bitte zustellen", "und danach das"]
    assert bridge.connector.attempts - attempts_before == 4


async def test_permanent_failure_is_reported_in_the_room(homeserver: Homeserver,
                                                         bridge: RunningBridge,
                                                         admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    bridge.connector.failures = ["permanent"]
    await admin.send_text(room, "wird abgelehnt")
    notice = await admin.wait_for_event(
        room, is_notice_from(homeserver.bot, "Could not deliver to Test network"), timeout=15)
    assert "remote side refused the message" in notice["content"]["body"]
    assert "The test network said no." in notice["content"]["body"]


async def test_pending_delivery_survives_a_restart(homeserver: Homeserver,
                                                   bridge: RunningBridge,
                                                   admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    bridge.config.bridge.outbox.retry_base_seconds = 1.0
    bridge.connector.failures = ["temporary"]
    await admin.send_text(room, "über Neustart hinweg")
    for _ in range(100):
        if bridge.connector.attempts and not bridge.connector.failures:
            break
        await asyncio.sleep(0.05)
    await bridge.restart()  # the retry is still waiting in the outbox
    item = await bridge.connector.wait_for(_body_is("über Neustart hinweg"), timeout=20)
    assert item["event"]["sender"] == admin.user_id
    assert [e["event"]["content"]["body"] for e in bridge.connector.delivered].count(
        "über Neustart hinweg") == 1


async def test_room_of_two_links_relays_between_them(homeserver: Homeserver,
                                                     bridge: RunningBridge,
                                                     admin: MatrixTestClient) -> None:
    """One room, two networks: each link gets what the other sent, never its own."""
    from tests.support.recording import RecordingConnector

    other = RecordingConnector("bridge.test")
    other.network, other.display_name, other.puppet_prefix = "other", "Other network", "test_o_"
    bridge.hub.connectors["other"] = other
    await other.start(bridge.hub)
    room = await _linked_room(homeserver, admin, remote="T1")
    await command(homeserver.bot, admin, room, "!bridge link other O1", expect="Linked")

    hub = bridge.hub
    from_test = await hub.ensure_puppet("test", "alice", "Alice (test)")
    from_other = await hub.ensure_puppet("other", "bob", "Bob (other)")
    assert hub.network_of(from_other) == "other" and hub.network_of(from_test) == "test"
    await hub.post_to_room(network="test", dedup_key="t-1", room_id=room, sender=from_test,
                           content={"msgtype": "m.text", "body": "von test"})
    await hub.post_to_room(network="other", dedup_key="o-1", room_id=room, sender=from_other,
                           content={"msgtype": "m.text", "body": "von other"})
    await other.wait_for(_body_is("von test"), timeout=15)
    await bridge.connector.wait_for(_body_is("von other"), timeout=15)
    await admin.send_text(room, "von matrix")
    await other.wait_for(_body_is("von matrix"))
    await bridge.connector.wait_for(_body_is("von matrix"))
    test_bodies = [e["event"]["content"].get("body") for e in bridge.connector.delivered]
    other_bodies = [e["event"]["content"].get("body") for e in other.delivered]
    assert "von test" not in test_bodies and test_bodies.count("von other") == 1
    assert "von other" not in other_bodies and other_bodies.count("von test") == 1


async def test_puppet_avatar_is_uploaded_and_set(homeserver: Homeserver, bridge: RunningBridge,
                                                 admin: MatrixTestClient) -> None:
    room = await _linked_room(homeserver, admin)
    hub = bridge.hub
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
    puppet = hub.connectors["test"].puppet_user_id("u-avatar")
    mxc = await hub.upload_media(png, "image/png", "avatar.png", user_id=puppet)
    assert mxc.startswith("mxc://bridge.test/")
    await hub.ensure_puppet("test", "u-avatar", "Anna Bild", avatar_source="hash-1",
                            avatar_mxc=mxc)
    await hub.post_to_room(network="test", dedup_key=None, room_id=room, sender=puppet,
                           content={"msgtype": "m.text", "body": "mit Bild"})
    await admin.wait_for_event(room, _body_is("mit Bild"), timeout=15)
    for _ in range(50):
        members = await admin.get_joined_members(room)
        if members[puppet].get("avatar_url") == mxc:
            break
        await asyncio.sleep(0.1)
    assert members[puppet]["avatar_url"] == mxc
    assert members[puppet]["display_name"] == "Anna Bild"


async def test_bot_without_invite_power_says_so_when_a_puppet_cannot_join(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    room = await admin.create_room(invite=[homeserver.bot], name="Bürgeramt",
                                   power_level_content_override={"invite": 50})
    await admin.wait_for_event(room, is_notice_from(homeserver.bot, "Hello"), timeout=15)
    await command(homeserver.bot, admin, room, "!bridge link test C-noinvite", expect="Linked")
    hub = bridge.hub
    puppet = await hub.ensure_puppet("test", "kein-zutritt", "Kim Zutritt")
    await hub.post_to_room(network="test", dedup_key=None, room_id=room, sender=puppet,
                           content={"msgtype": "m.text", "body": "darf nicht rein"})
    notice = await admin.wait_for_event(
        room, is_notice_from(homeserver.bot, "Could not deliver to Matrix"), timeout=15)
    assert "invite remote users (puppets) into the room: needs power level 50 (invite)" in \
        notice["content"]["body"]


async def test_a_remote_message_reaches_every_link_but_its_own(
        homeserver: Homeserver, bridge: RunningBridge, admin: MatrixTestClient) -> None:
    """Two links of one network in a room: what comes in through one goes to the other
    (the origin marker), edits and deletions too; a Matrix user cannot forge the marker."""
    room = await _linked_room(homeserver, admin, remote="C-one")
    await command(homeserver.bot, admin, room, "!bridge link test C-two", expect="Linked")
    hub = bridge.hub
    async with hub.db.sessions() as session:
        one, two = await store.links_of_room(session, room)
    puppet = await hub.ensure_puppet("test", "u-origin", "Olga Origin")
    from_one = Origin(network="test", link_id=one.id)
    await hub.post_to_room(network="test", dedup_key=None, room_id=room, sender=puppet,
                           content={"msgtype": "m.text", "body": "aus eins"}, origin=from_one)
    posted = await admin.wait_for_event(room, _body_is("aus eins"), timeout=15)
    # Deleted on the remote side: the puppet's redaction carries the marker through the
    # homeserver (it keeps extra keys of the redaction's content).
    await hub.enqueue([NewDelivery(network=MATRIX, room_id=room, kind="redact", payload={
        "sender": puppet, "event_id": posted["event_id"], "origin": from_one.marker()})])
    # Without a marker (older events), and with one for another network's link: all that
    # is known is the sender's network, so none of its links gets it.
    await hub.post_to_room(network="test", dedup_key=None, room_id=room, sender=puppet,
                           content={"msgtype": "m.text", "body": "ohne Marke"})
    await hub.post_to_room(network="test", dedup_key=None, room_id=room, sender=puppet,
                           content={"msgtype": "m.text", "body": "fremde Marke"},
                           origin=Origin(network="email", link_id=two.id))
    # (In the room before the admin writes: then the homeserver hands them to us first.)
    await admin.wait_for_event(room, _body_is("fremde Marke"), timeout=15)
    # A Matrix user copying the marker into a message does not stop its relay.
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "gefälscht", ORIGIN_KEY: from_one.marker()})
    await admin.send_text(room, "Ende")  # after everything above in the links' lanes
    await _delivered_to(bridge, "Ende", {"C-one", "C-two"})

    def links_of(predicate: Any) -> list[str]:
        return sorted(item["link"] for item in bridge.connector.delivered
                      if predicate(item["event"]))

    assert links_of(_body_is("aus eins")) == ["C-two"]
    redactions = [item for item in bridge.connector.delivered
                  if item["event"]["type"] == "m.room.redaction"]
    assert [item["link"] for item in redactions] == ["C-two"]
    assert redactions[0]["event"]["content"][ORIGIN_KEY] == from_one.marker()
    assert links_of(_body_is("ohne Marke")) == []
    assert links_of(_body_is("fremde Marke")) == []
    assert links_of(_body_is("gefälscht")) == ["C-one", "C-two"]


async def _delivered_to(bridge: RunningBridge, body: str, links: set[str]) -> None:
    for _ in range(150):
        if {item["link"] for item in bridge.connector.delivered
                if item["event"].get("content", {}).get("body") == body} == links:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{body!r} did not reach {links}")
