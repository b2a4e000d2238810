"""One room, several Slack channels (two channels folded into one room, two workspaces
during a merger): each channel hears the others, as from a Matrix user, and nothing echoes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from bridge.db import store
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from tests.conftest import Homeserver
from tests.slack.conftest import (
    ANNA,
    BEN,
    CHANNEL,
    OTHER_CHANNEL,
    PUBLIC_URL,
    TEAM_ID,
    SlackBridge,
    add_workspace,
    linked_room,
    running_slack_bridge,
)
from tests.slack.relay_helpers import (
    count_in_slack,
    has_body,
    marker_from_slack,
    posted,
    puppet_of,
    room_events,
)


def _copies(events: list[dict[str, Any]], body: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "m.room.message"
            and body in e["content"].get("body", "") and "m.new_content" not in e["content"]]


async def test_two_channels_of_one_workspace_hear_each_other(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim, bot = slack_bridge.sim, slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin, CHANNEL)
    await command(bot, admin, room, f"!bridge link slack {OTHER_CHANNEL}", expect="Linked")
    status = (await command(bot, admin, room, "!bridge status"))["content"]["body"]
    assert f"{TEAM_ID}:{CHANNEL} (#bauamt)" in status
    assert f"{TEAM_ID}:{OTHER_CHANNEL} (#schule)" in status

    # #bauamt -> #schule, under Ben's name, and into Matrix once.
    ts = await sim.post_message(team, CHANNEL, BEN, text="Die Turnhalle ist gesperrt")
    copy = await posted(sim, team, "Die Turnhalle ist gesperrt", channel=OTHER_CHANNEL)
    assert copy["username"] == "Ben Weber"
    assert copy.get("bot_id")  # posted by the app, as for a Matrix user
    # With Ben's picture, served by the bridge as for a Matrix user's.
    assert copy["icons"]["image_48"].startswith(f"{PUBLIC_URL}/_bridge/slack/avatar/")
    # ... and #schule -> #bauamt the same way.
    await sim.post_message(team, OTHER_CHANNEL, ANNA, text="Dann turnen wir draussen")
    back = await posted(sim, team, "Dann turnen wir draussen", channel=CHANNEL)
    assert back["username"] == "Anna"

    # An edit and a deletion in #bauamt follow in #schule (the deletion is a redaction in
    # Matrix: its origin marker must survive the homeserver, or #schule would keep it).
    await sim.edit_message(team, CHANNEL, ts, text="Die Turnhalle ist wieder offen")
    await sim.wait_for(lambda: count_in_slack(sim, team, "wieder offen", OTHER_CHANNEL) == 1,
                       timeout=15)
    await sim.delete_message(team, CHANNEL, ts)
    await sim.wait_for(lambda: count_in_slack(sim, team, "Turnhalle", OTHER_CHANNEL) == 0,
                       timeout=15)

    # Matrix -> both channels.
    await admin.send_text(room, "Gilt fuer beide Kanaele")
    await posted(sim, team, "Gilt fuer beide Kanaele", channel=CHANNEL)
    await posted(sim, team, "Gilt fuer beide Kanaele", channel=OTHER_CHANNEL)

    # Nothing came back: markers from both channels, then count everything once.
    await marker_from_slack(sim, team, admin, room, "Ende Bauamt", CHANNEL)
    await marker_from_slack(sim, team, admin, room, "Ende Schule", OTHER_CHANNEL)
    await posted(sim, team, "Ende Bauamt", channel=OTHER_CHANNEL)
    await posted(sim, team, "Ende Schule", channel=CHANNEL)
    events = await room_events(admin, room)
    for body in ("Dann turnen wir draussen", "Gilt fuer beide Kanaele", "Ende Bauamt"):
        assert len(_copies(events, body)) == 1, body
    assert [e["sender"] for e in _copies(events, "Dann turnen")] == [puppet_of(team, ANNA)]
    for channel in (CHANNEL, OTHER_CHANNEL):
        for body in ("Dann turnen wir draussen", "Gilt fuer beide Kanaele", "Ende Bauamt",
                     "Ende Schule"):
            assert count_in_slack(sim, team, body, channel) == 1, (channel, body)

    # Unlinking: with two links the channel must be named.
    reply = (await command(bot, admin, room, "!bridge unlink slack"))["content"]["body"]
    assert "2 Slack links" in reply and CHANNEL in reply and OTHER_CHANNEL in reply
    reply = (await command(bot, admin, room, "!bridge unlink slack C0NIRGENDS"))
    assert "no Slack link `C0NIRGENDS`" in reply["content"]["body"]
    await command(bot, admin, room, f"!bridge unlink slack {OTHER_CHANNEL}",
                  expect=f"Unlinked this room from Slack `{TEAM_ID}:{OTHER_CHANNEL}`")
    await sim.post_message(team, CHANNEL, ANNA, text="Nur noch das Bauamt")
    await admin.wait_for_event(room, has_body("Nur noch das Bauamt"), timeout=15)
    # One link left: no channel needed.
    await command(bot, admin, room, "!bridge unlink slack",
                  expect=f"Unlinked this room from Slack `{TEAM_ID}:{CHANNEL}`")
    assert count_in_slack(sim, team, "Nur noch das Bauamt", OTHER_CHANNEL) == 0


async def test_channels_of_two_workspaces_in_one_room(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        admin: MatrixTestClient) -> None:
    sim = slack_sim
    # The same channel ID in both workspaces: only the team tells the links apart.
    schulamt = add_workspace(sim, team_id="T0SCHULAMT", name="schulamt", socket_mode=False)
    async with running_slack_bridge(homeserver, database_url, sim,
                                    [team, schulamt]) as bridge:
        bot = homeserver.bot
        room = await linked_room(bridge, admin, CHANNEL, "rathaus")
        await command(bot, admin, room, f"!bridge link slack {CHANNEL} schulamt",
                      expect="Linked")

        await sim.post_message(team, CHANNEL, ANNA, text="Gruss aus dem Rathaus")
        copy = await posted(sim, schulamt, "Gruss aus dem Rathaus")
        assert copy["username"] == "Anna"
        await sim.post_message(schulamt, CHANNEL, BEN, text="Gruss aus dem Schulamt")
        assert (await posted(sim, team, "Gruss aus dem Schulamt"))["username"] == "Ben Weber"
        await admin.send_text(room, "Gruss aus Matrix")
        await posted(sim, team, "Gruss aus Matrix")
        await posted(sim, schulamt, "Gruss aus Matrix")

        await marker_from_slack(sim, team, admin, room, "Ende Rathaus")
        await marker_from_slack(sim, schulamt, admin, room, "Ende Schulamt")
        await posted(sim, schulamt, "Ende Rathaus")
        await posted(sim, team, "Ende Schulamt")
        events = await room_events(admin, room)
        for body in ("Gruss aus dem Rathaus", "Gruss aus dem Schulamt", "Gruss aus Matrix"):
            assert len(_copies(events, body)) == 1, body
            assert count_in_slack(sim, team, body) == 1, body
            assert count_in_slack(sim, schulamt, body) == 1, body

        # The channel ID alone is ambiguous here; the stored TEAM:CHANNEL is not.
        reply = await command(bot, admin, room, f"!bridge unlink slack {CHANNEL}")
        assert "more than one Slack link" in reply["content"]["body"]
        await command(bot, admin, room, f"!bridge unlink slack T0SCHULAMT:{CHANNEL}",
                      expect="Unlinked this room from Slack `T0SCHULAMT:")
        async with bridge.hub.db.sessions() as session:
            links = await store.links_of_room(session, room)
        assert [lk.remote_id for lk in links] == [f"{TEAM_ID}:{CHANNEL}"]


async def test_a_channel_linked_elsewhere_is_named_with_its_room(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    bot = slack_bridge.homeserver.bot
    first = await linked_room(slack_bridge, admin, CHANNEL)
    second = await open_room(bot, admin, bot_power=100, name="Zweiter Raum")
    # Typed as the channel ID, stored as TEAM:CHANNEL: still recognised.
    reply = await command(bot, admin, second, f"!bridge link slack {CHANNEL}")
    body = reply["content"]["body"]
    assert "already linked to another room" in body and first in body, body
    again = await command(bot, admin, first, f"!bridge link slack {CHANNEL}")
    assert "This room is already linked to Slack" in again["content"]["body"]
    async with slack_bridge.hub.db.sessions() as session:
        assert await store.links_of_room(session, second) == []


async def test_a_link_whose_cursor_cannot_be_written_is_not_made(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    bot = slack_bridge.homeserver.bot
    db = slack_bridge.hub.db
    # The database refuses the channel's catch-up cursor (a trigger stands in for any
    # failure of that write).
    async with db.transaction() as session:
        if session.bind.dialect.name == "sqlite":
            await session.execute(text(
                "CREATE TRIGGER refuse_cursor BEFORE INSERT ON slack_channel "
                "BEGIN SELECT RAISE(ABORT, 'cursor refused'); END"))
        else:
            await session.execute(text(
                "CREATE FUNCTION refuse_cursor() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'cursor refused'; END $$"))
            await session.execute(text(
                "CREATE TRIGGER refuse_cursor BEFORE INSERT ON slack_channel "
                "FOR EACH ROW EXECUTE FUNCTION refuse_cursor()"))
    room = await open_room(bot, admin, bot_power=100, name="Ohne Cursor")
    reply = await command(bot, admin, room, f"!bridge link slack {CHANNEL}")
    assert "Could not link this room to Slack" in reply["content"]["body"]
    assert "Nothing was linked" in reply["content"]["body"]
    async with db.sessions() as session:
        assert await store.links_of_room(session, room) == []
        assert await store.link_by_remote(session, "slack", f"{TEAM_ID}:{CHANNEL}") is None
    status = (await command(bot, admin, room, "!bridge status"))["content"]["body"]
    assert "none: this room is not linked" in status

    # Once the cursor can be written, linking works, and the cursor is there.
    async with db.transaction() as session:
        await session.execute(text("DROP TRIGGER refuse_cursor" + (
            "" if session.bind.dialect.name == "sqlite" else " ON slack_channel")))
    await command(bot, admin, room, f"!bridge link slack {CHANNEL}", expect="Linked")
    async with db.sessions() as session:
        cursor = (await session.execute(text(
            "SELECT last_ts FROM slack_channel WHERE channel_id = :c"), {"c": CHANNEL})).first()
    assert cursor is not None
