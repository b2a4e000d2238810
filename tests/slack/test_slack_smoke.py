"""First light: a linked channel carries a message each way."""

from __future__ import annotations

from typing import Any

from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, linked_room
from tests.support.matrix_client import MatrixTestClient


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
