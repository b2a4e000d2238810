"""First light: a linked channel carries a message each way."""

from __future__ import annotations

from typing import Any

from testkit.matrix_client import MatrixTestClient
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, linked_room


async def test_message_each_way(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    await sim.post_message(team, CHANNEL, ANNA, text="Guten Morgen *alle*")
    event = await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.message"
        and "Guten Morgen" in e["content"].get("body", ""), timeout=15)
    assert event["sender"] == "@slack_t0rathaus_u0anna:bridge.test"
    assert "<strong>alle</strong>" in event["content"]["formatted_body"]
    await admin.send_text(room, "Hallo aus Matrix")
    await sim.wait_for(lambda: any("Hallo aus Matrix" in (m.get("text") or "")
                                   for m in sim.messages(team, CHANNEL)), timeout=15)


async def test_a_newcomer_joins_under_their_name(slack_bridge: SlackBridge,
                                                 admin: MatrixTestClient, team: Any) -> None:
    """Clients name a sender by the profile at the time of the message: the puppet's first
    appearance in the room must already carry the Slack name, not the bare user ID."""
    room = await linked_room(slack_bridge, admin)
    await slack_bridge.sim.post_message(team, CHANNEL, ANNA, text="Erste Nachricht")
    await admin.wait_for_event(room, lambda e: e["type"] == "m.room.message"
                               and e["content"].get("body") == "Erste Nachricht", timeout=15)
    puppet = "@slack_t0rathaus_u0anna:bridge.test"
    joins = [e for e in await admin.messages(room, limit=50)
             if e["type"] == "m.room.member" and e.get("state_key") == puppet
             and e["content"].get("membership") == "join"]
    first = min(joins, key=lambda e: e["origin_server_ts"])
    assert first["content"].get("displayname") == "Anna"
