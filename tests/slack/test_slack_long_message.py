"""A Slack message too long for one Matrix event (Slack allows 40 000 characters; with its
HTML rendering beside the text it outgrows Matrix's 64 KiB) still reaches the room."""

from __future__ import annotations

from typing import Any

from testkit.matrix_client import MatrixTestClient
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, linked_room
from tests.slack.test_slack_to_matrix import ANNA_PUPPET, download

CONTINUED = "(continued in the attached file)"


async def test_a_long_slack_message_arrives_with_its_full_text_attached(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    room = await linked_room(slack_bridge, admin)
    paragraphs = [f"*Punkt {n:03d}*: Die Ausschreibung für den Schulneubau läuft bis Freitag."
                  for n in range(520)]
    text = "\n".join(paragraphs)
    assert 35_000 < len(text) < 40_000
    await slack_bridge.sim.post_message(team, CHANNEL, ANNA, text)

    first = await admin.wait_for_event(
        room, lambda e: CONTINUED in e["content"].get("body", ""), timeout=20)
    assert first["sender"] == ANNA_PUPPET
    assert first["content"]["formatted_body"].startswith("<strong>Punkt 000</strong>")
    assert CONTINUED in first["content"]["formatted_body"]
    attachment = await admin.wait_for_event(
        room, lambda e: e["content"].get("msgtype") == "m.file", timeout=20)
    assert attachment["sender"] == ANNA_PUPPET
    assert attachment["content"]["body"] == "message.html"
    data = await download(slack_bridge.homeserver, admin, attachment["content"]["url"])
    assert b"<strong>Punkt 519</strong>" in data
