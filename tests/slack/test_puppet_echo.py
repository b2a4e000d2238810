"""The puppets' own messages come back from the homeserver (issue 15): where the relay rule
sends them nowhere (a room with one link, their own), the bridge acknowledges them without
writing anything; where another link must hear them, they are stored and relayed as before."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from tests.slack.conftest import BEN, CHANNEL, OTHER_CHANNEL, SlackBridge, linked_room
from tests.slack.relay_helpers import count_in_slack, has_body, posted


async def _in_inbox(bridge: SlackBridge, event_id: str) -> int:
    async with bridge.hub.db.sessions() as session:
        rows = await session.execute(text("SELECT count(*) FROM inbox WHERE event_id = :e"),
                                     {"e": event_id})
        return int(rows.scalar_one())


async def _answered_ping(bridge: SlackBridge, admin: MatrixTestClient, room: str) -> None:
    """A command sent after the event and answered: the homeserver sends an appservice its
    events in order, so the bridge has had every event of the room before the command."""
    await command(bridge.homeserver.bot, admin, room, "!bridge ping")


async def test_a_puppets_message_coming_back_into_a_one_link_room_is_not_stored(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin, CHANNEL)
    await sim.post_message(team, CHANNEL, BEN, text="Nur ein Kanal hier")
    echo = await admin.wait_for_event(room, has_body("Nur ein Kanal hier"), timeout=15)
    await _answered_ping(slack_bridge, admin, room)
    # Not in the inbox (no write at all for it), and of course not posted back to Slack.
    assert await _in_inbox(slack_bridge, echo["event_id"]) == 0
    assert count_in_slack(sim, team, "Nur ein Kanal hier", CHANNEL) == 1

    # A second channel in the room: now the puppet's message must reach it, so it is stored
    # (the inbox keeps it as handled) and relayed, exactly once.
    await command(slack_bridge.homeserver.bot, admin, room,
                  f"!bridge link slack {OTHER_CHANNEL}", expect="Linked")
    await sim.post_message(team, CHANNEL, BEN, text="Jetzt zwei Kanaele")
    relayed = await admin.wait_for_event(room, has_body("Jetzt zwei Kanaele"), timeout=15)
    await posted(sim, team, "Jetzt zwei Kanaele", channel=OTHER_CHANNEL)
    assert await _in_inbox(slack_bridge, relayed["event_id"]) == 1
    await _answered_ping(slack_bridge, admin, room)
    assert count_in_slack(sim, team, "Jetzt zwei Kanaele", OTHER_CHANNEL) == 1
    assert count_in_slack(sim, team, "Jetzt zwei Kanaele", CHANNEL) == 1
