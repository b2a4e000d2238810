"""The Slack connector's memory is bounded, and what it remembers about people goes stale:
a profile change whose user_change event was missed still reaches the room, and a
directory holding only a few people still names everyone right.

Real Synapse, the bridge in-process, the Slack simulator; SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.slack.connector import UserDirectory
from testkit.matrix_client import MatrixTestClient
from tests.slack.conftest import CHANNEL, SlackBridge, linked_room
from tests.slack.relay_helpers import has_body, puppet_of


async def test_stale_people_are_looked_up_again_and_the_directory_stays_small(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    # Small bounds, so the test sees them at work: two people, trusted for half a second.
    slack_bridge.slack.users = UserDirectory(max_items=2, refresh_after_seconds=0.5)
    people = {"U0FRIDA": "Frida", "U0GUSTAV": "Gustav", "U0HANNA": "Hanna", "U0IDA": "Ida"}
    for user_id, name in people.items():
        sim.add_user(team, user_id, name=name.lower(), real_name=f"{name} X",
                     display_name=name)
    room = await linked_room(slack_bridge, admin)
    for user_id, name in people.items():
        await sim.join_channel(team, CHANNEL, user_id)
        await sim.post_message(team, CHANNEL, user_id, f"Hallo von {name}")
    await admin.wait_for_event(room, has_body("Hallo von Ida"), timeout=15)
    members = await admin.get_joined_members(room)
    assert {members[puppet_of(team, u)]["display_name"] for u in people} == set(people.values())
    assert len(slack_bridge.slack.users) <= 2

    # Frida's new name reaches Slack, but its user_change does not reach the bridge (sent
    # while it was away, say). Her next message, once her entry is stale, carries it.
    frida = puppet_of(team, "U0FRIDA")
    await sim.post_message(team, CHANNEL, "U0FRIDA", "Frida noch einmal")  # remembered now
    await admin.wait_for_event(room, has_body("Frida noch einmal"), timeout=15)
    sim.team(team).users["U0FRIDA"].display_name = "Frida Neu"
    await asyncio.sleep(0.6)
    await sim.post_message(team, CHANNEL, "U0FRIDA", "Wieder Frida")
    await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.member" and e["state_key"] == frida
        and e["content"].get("displayname") == "Frida Neu", timeout=15)
    assert len(slack_bridge.slack.users) <= 2
