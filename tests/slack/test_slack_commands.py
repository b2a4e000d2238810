"""The bot's Slack commands end to end: link (with clear errors, joining public channels),
unlink (then nothing is relayed either way), the channel list; admins only.

Real Synapse, the bridge in-process, the Slack simulator; SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from bridge.db import queues, store
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from tests.slack.conftest import ANNA, CHANNEL, OTHER_CHANNEL, SlackBridge, linked_room
from tests.slack.relay_helpers import count_in_slack, has_body, room_events

PRIVATE = "G0PERSONAL"
PRIVATE_WITH_APP = "G0LEITUNG"


async def outbox_idle(bridge: SlackBridge) -> None:
    """Until nothing waits in the inbox or outbox: whatever was going to happen, happened."""

    async def idle() -> bool:
        async with bridge.hub.db.sessions() as session:
            return await queues.count_pending(session) == (0, 0)

    await bridge.sim.wait_for(idle, timeout=15, interval=0.05)


async def test_link_errors_join_and_channel_list(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    sim.add_channel(team, PRIVATE, name="personal", is_private=True, members=[ANNA])
    sim.add_channel(team, PRIVATE_WITH_APP, name="leitung", is_private=True,
                    members=[ANNA, team.bot_user_id])
    room = await open_room(bot, admin, bot_power=100, name="Bauamt")

    reply = await command(bot, admin, room, "!bridge link slack C0GIBTESNICHT")
    body = reply["content"]["body"]
    assert "no channel `C0GIBTESNICHT`" in body and "slack channels" in body
    # A private channel the app was not invited to does not exist for the app: say how to
    # fix that.
    reply = await command(bot, admin, room, f"!bridge link slack {PRIVATE}")
    body = reply["content"]["body"]
    assert f"no channel `{PRIVATE}`" in body and "invite the app" in body
    assert sim.team(team).channels[PRIVATE].members.keys() == {ANNA}

    listing = (await command(bot, admin, room, "!bridge slack channels"))["content"]["body"]
    lines = {line.split("`")[1]: line for line in listing.splitlines() if line.startswith("- ")}
    assert set(lines) == {CHANNEL, OTHER_CHANNEL, PRIVATE_WITH_APP}  # not the hidden one
    assert "#bauamt" in lines[CHANNEL] and "app not in it" in lines[CHANNEL]
    assert "🔒" in lines[PRIVATE_WITH_APP] and "not linked" in lines[PRIVATE_WITH_APP]

    # A public channel the app is not in: it joins, then the link works both ways.
    assert team.bot_user_id not in sim.team(team).channels[CHANNEL].members
    reply = await command(bot, admin, room, f"!bridge link slack {CHANNEL}", expect="Linked")
    assert "#bauamt" in reply["content"]["body"]
    assert team.bot_user_id in sim.team(team).channels[CHANNEL].members
    assert [c["channel"] for c in sim.calls_to("conversations.join")] == [CHANNEL]
    # The private channel the app is in needs no join.
    leitung = await open_room(bot, admin, bot_power=100, name="Leitung")
    await command(bot, admin, leitung, f"!bridge link slack {PRIVATE_WITH_APP}", expect="Linked")
    assert len(sim.calls_to("conversations.join")) == 1

    listing = (await command(bot, admin, room, "!bridge slack channels"))["content"]["body"]
    lines = {line.split("`")[1]: line for line in listing.splitlines() if line.startswith("- ")}
    assert f"linked to {room}" in lines[CHANNEL]
    assert f"linked to {leitung}" in lines[PRIVATE_WITH_APP]
    assert "app not in it" in lines[OTHER_CHANNEL]

    await sim.post_message(team, CHANNEL, ANNA, text="Jetzt verbunden")
    await admin.wait_for_event(room, has_body("Jetzt verbunden"), timeout=15)
    await sim.post_message(team, PRIVATE_WITH_APP, ANNA, text="Nur für die Leitung")
    await admin.wait_for_event(leitung, has_body("Nur für die Leitung"), timeout=15)
    await admin.send_text(room, "Antwort aus Matrix")
    await sim.wait_for(lambda: count_in_slack(sim, team, "Antwort aus Matrix"), timeout=15)


async def test_unlink_stops_relaying_both_ways(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin)
    await sim.post_message(team, CHANNEL, ANNA, text="Noch verbunden")
    await admin.wait_for_event(room, has_body("Noch verbunden"), timeout=15)

    # A second link (the test network) shows when the room's messages have been handled.
    await command(bot, admin, room, "!bridge link test T-unlink", expect="Linked")
    await command(bot, admin, room, "!bridge unlink slack", expect="Unlinked")
    reply = await command(bot, admin, room, "!bridge unlink slack")
    assert "has no `slack` link" in reply["content"]["body"]

    # Slack -> Matrix: the event is received and acknowledged, and changes nothing.
    await sim.post_message(team, CHANNEL, ANNA, text="Nach dem Trennen aus Slack")
    event_id = sim.events(team)[-1]["event_id"]
    await sim.wait_for(lambda: any(p["event_id"] == event_id for p in sim.delivered(team)),
                       timeout=10)
    # Matrix -> Slack: the message is handled, and goes nowhere.
    await admin.send_text(room, "Nach dem Trennen aus Matrix")
    await slack_bridge.connector.wait_for(
        lambda e: e["content"].get("body") == "Nach dem Trennen aus Matrix", timeout=15)
    await outbox_idle(slack_bridge)
    events = await room_events(admin, room)
    assert not [e for e in events if "Nach dem Trennen aus Slack" in
                e["content"].get("body", "")]
    assert count_in_slack(sim, team, "Nach dem Trennen aus Matrix") == 0
    # The room says it is unlinked; the channel can be linked again, elsewhere.
    other = await open_room(bot, admin, bot_power=100, name="Neu")
    await command(bot, admin, other, f"!bridge link slack {CHANNEL}", expect="Linked")
    await sim.post_message(team, CHANNEL, ANNA, text="Im neuen Raum")
    await admin.wait_for_event(other, has_body("Im neuen Raum"), timeout=15)
    await outbox_idle(slack_bridge)
    assert not [e for e in await room_events(admin, room)
                if "Im neuen Raum" in e["content"].get("body", "")]


async def test_only_admins_may_manage_slack_links(
        slack_bridge: SlackBridge, admin: MatrixTestClient, outsider: MatrixTestClient,
        team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    room = await open_room(bot, admin, bot_power=100, name="Bauamt")
    await admin.invite(room, outsider.user_id)
    await outsider.join(room)
    for text in (f"!bridge link slack {CHANNEL}", "!bridge slack channels"):
        reply = await command(bot, outsider, room, text)
        assert reply["content"]["body"].startswith("Sorry, only bridge admins"), reply
    assert not sim.calls_to("conversations.join")
    assert not sim.calls_to("conversations.list")
    await command(bot, admin, room, f"!bridge link slack {CHANNEL}", expect="Linked")
    reply = await command(bot, outsider, room, "!bridge unlink slack")
    assert reply["content"]["body"].startswith("Sorry, only bridge admins")
    # Still linked.
    await sim.post_message(team, CHANNEL, ANNA, text="Weiter verbunden")
    await outsider.wait_for_event(room, has_body("Weiter verbunden"), timeout=15)


async def test_link_by_channel_name_stores_slacks_channel_id(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    """`link slack #name` finds the channel through conversations.list (past its first page)
    and stores the ID Slack gives; a name Slack does not know is refused with a hint to give
    the ID, and nothing is linked."""
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    # More channels than one page of conversations.list holds; the wanted one sorts last.
    for number in range(210):
        sim.add_channel(team, f"C0FILL{number:04d}", name=f"ablage-{number}", members=[ANNA])
    sim.add_channel(team, "CZZPRESSE", name="pressestelle", members=[ANNA])
    room = await open_room(bot, admin, bot_power=100, name="Presse")

    reply = await command(bot, admin, room, "!bridge link slack #nirgends")
    body = reply["content"]["body"]
    assert "no channel #nirgends" in body and "channel ID" in body, body
    reply = await command(bot, admin, room, "!bridge link slack c0bauamt")  # not an ID
    assert "channel ID" in reply["content"]["body"]
    async with slack_bridge.hub.db.sessions() as session:
        assert await store.links_of_room(session, room) == []

    reply = await command(bot, admin, room, "!bridge link slack #pressestelle", expect="Linked")
    assert "#pressestelle" in reply["content"]["body"]
    assert len(sim.calls_to("conversations.list")) >= 2  # it paged
    async with slack_bridge.hub.db.sessions() as session:
        links = await store.links_of_room(session, room)
    assert [(link.remote_id, link.settings["channel"]) for link in links] == [
        (f"{team.id}:CZZPRESSE", "CZZPRESSE")]
    await sim.post_message(team, "CZZPRESSE", ANNA, text="Pressemitteilung")
    await admin.wait_for_event(room, has_body("Pressemitteilung"), timeout=15)

    # A bare name works as well; the link is the channel's ID, not the text upper-cased.
    other = await open_room(bot, admin, bot_power=100, name="Schule")
    await command(bot, admin, other, "!bridge link slack schule", expect="Linked")
    async with slack_bridge.hub.db.sessions() as session:
        links = await store.links_of_room(session, other)
    assert [link.remote_id for link in links] == [f"{team.id}:{OTHER_CHANNEL}"]
    # As `status` shows a link ("TEAM:CHANNEL"), the team choosing the workspace.
    third = await open_room(bot, admin, bot_power=100, name="Bauamt")
    await command(bot, admin, third, f"!bridge link slack {team.id}:{CHANNEL}", expect="Linked")
    async with slack_bridge.hub.db.sessions() as session:
        links = await store.links_of_room(session, third)
    assert [link.remote_id for link in links] == [f"{team.id}:{CHANNEL}"]
