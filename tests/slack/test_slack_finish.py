"""The cutover of a Slack channel, `!bridge slack finish` and
`POST /_bridge/api/v1/rooms/{room_id}/links/slack/finish`: Slack is told where the
conversation went (a pinned message with the room's matrix.to link and alias), the link ends
(nothing is bridged either way any more), the channel is archived only when
`slack.archive_on_finish` says so, the room is told and the audit log has it. Refusals change
nothing; a Slack failure before the link ends leaves the link, and a second run does not post
the message twice.

Real Synapse, the bridge in-process, the Slack simulator; SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from typing import Any

from bridge.admin import audit
from bridge.db import store
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from tests.admin.api_client import ApiClient
from tests.conftest import SERVER_NAME, Homeserver
from tests.slack.conftest import (
    ANNA,
    CHANNEL,
    OTHER_CHANNEL,
    SlackBridge,
    linked_room,
    running_slack_bridge,
)
from tests.slack.relay_helpers import count_in_slack, has_body, room_events
from tests.slack.test_slack_commands import outbox_idle

MOVED = "This conversation has moved to Matrix"


async def slack_links(bridge: SlackBridge, room: str) -> list[str]:
    async with bridge.hub.db.sessions() as session:
        return [lk.remote_id for lk in await store.links_of_room(session, room)
                if lk.network == "slack"]


async def audit_actions(bridge: SlackBridge, room: str) -> list[tuple[str, dict[str, Any]]]:
    async with bridge.hub.db.sessions() as session:
        return [(e.action, e.as_json()) for e in await audit.entries(session, room_id=room)]


async def assert_not_bridged(bridge: SlackBridge, admin: MatrixTestClient, room: str,
                             team: Any, channel: str, suffix: str) -> None:
    """A later Slack message does not reach the room; a room message does not reach Slack."""
    sim = bridge.sim
    # A link of the test network shows when the room's messages have been handled.
    await command(bridge.homeserver.bot, admin, room, f"!bridge link test T-{suffix}",
                  expect="Linked")
    await sim.post_message(team, channel, ANNA, text=f"Aus Slack danach {suffix}")
    event_id = sim.events(team)[-1]["event_id"]
    await sim.wait_for(lambda: any(p["event_id"] == event_id for p in sim.delivered(team)),
                       timeout=10)
    await admin.send_text(room, f"Aus Matrix danach {suffix}")
    await bridge.connector.wait_for(
        lambda e: e["content"].get("body") == f"Aus Matrix danach {suffix}", timeout=15)
    await outbox_idle(bridge)
    assert not [e for e in await room_events(admin, room)
                if f"Aus Slack danach {suffix}" in e["content"].get("body", "")]
    assert count_in_slack(sim, team, f"Aus Matrix danach {suffix}", channel=channel) == 0


async def test_finish_by_command_pins_archives_and_unlinks(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        admin: MatrixTestClient) -> None:
    sim = slack_sim
    async with running_slack_bridge(homeserver, database_url, sim, [team],
                                    slack__archive_on_finish=True) as bridge:
        bot = homeserver.bot
        localpart = f"bauamt-{uuid.uuid4().hex[:8]}"
        alias = f"#{localpart}:{SERVER_NAME}"
        room = await open_room(bot, admin, bot_power=100, name="Bauamt",
                               extra={"room_alias_name": localpart})
        await command(bot, admin, room, f"!bridge link slack {CHANNEL}", expect="Linked")
        await command(bot, admin, room, f"!bridge link slack {OTHER_CHANNEL}", expect="Linked")

        # Two links, none named: refused, and nothing happened in Slack.
        body = (await command(bot, admin, room, "!bridge slack finish"))["content"]["body"]
        assert "2 Slack links" in body and "slack finish <channel>" in body, body
        assert not sim.calls_to("chat.postMessage") and not sim.calls_to("pins.add")

        # Slack refuses the pin: the answer says so, the link stays (and still bridges).
        sim.fail("pins.add", status=200, error="permission_denied")
        body = (await command(bot, admin, room, f"!bridge slack finish {CHANNEL}")
                )["content"]["body"]
        assert "refused to pin" in body and "permission_denied" in body, body
        assert "still linked" in body
        assert sorted(await slack_links(bridge, room)) == sorted(
            [f"{team.id}:{CHANNEL}", f"{team.id}:{OTHER_CHANNEL}"])
        await sim.post_message(team, CHANNEL, ANNA, text="Noch verbunden")
        await admin.wait_for_event(room, has_body("Noch verbunden"), timeout=15)

        # Again: the message posted before is pinned, not posted a second time.
        reply = await command(bot, admin, room, f"!bridge slack finish {CHANNEL}",
                              expect="Finished")
        body = reply["content"]["body"]
        assert "#bauamt" in body and "is archived" in body and "history stays" in body, body
        moved = [m for m in sim.messages(team, CHANNEL) if MOVED in m.get("text", "")]
        assert len(moved) == 1
        link = "https://matrix.to/#/" + alias.replace("#", "%23").replace(":", "%3A")
        assert link in moved[0]["text"] and alias in moved[0]["text"], moved[0]["text"]
        assert [m["ts"] for m in sim.pinned(team, CHANNEL)] == [moved[0]["ts"]]
        assert sim.team(team).channels[CHANNEL].is_archived
        assert await slack_links(bridge, room) == [f"{team.id}:{OTHER_CHANNEL}"]
        entries = await audit_actions(bridge, room)
        finish = [details for action, details in entries if action == "finish"]
        assert len(finish) == 1 and finish[0]["details"]["remote_id"] == f"{team.id}:{CHANNEL}"
        assert finish[0]["actor"] == admin.user_id and finish[0]["via"] == "command"
        # The room's history stays.
        assert [e for e in await room_events(admin, room)
                if "Noch verbunden" in e["content"].get("body", "")]

        # A workspace that keeps apps from archiving: said in the answer, the link ends.
        sim.team(team).archiving_restricted = True
        reply = await command(bot, admin, room, "!bridge slack finish", expect="Finished")
        body = reply["content"]["body"]
        assert "was not archived" in body and "workspace setting" in body, body
        assert not sim.team(team).channels[OTHER_CHANNEL].is_archived
        assert [m for m in sim.pinned(team, OTHER_CHANNEL) if MOVED in m.get("text", "")]
        assert await slack_links(bridge, room) == []
        await assert_not_bridged(bridge, admin, room, team, OTHER_CHANNEL, "schule")


async def test_finish_through_the_api(slack_bridge: SlackBridge, admin: MatrixTestClient,
                                      team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    api = ApiClient(slack_bridge.homeserver.bridge_port,
                    slack_bridge.config.provisioning.shared_secret)
    bare = await open_room(bot, admin, bot_power=100, name="Ohne Slack")
    status, body = await api.post(f"/rooms/{bare}/links/slack/finish")
    assert status == 404 and "no `slack` link" in body["error"], body
    room = await linked_room(slack_bridge, admin)
    status, body = await api.post(f"/rooms/{room}/links/slack/finish",
                                  {"channel": OTHER_CHANNEL})
    assert status == 404 and OTHER_CHANNEL in body["error"], body
    assert not sim.calls_to("chat.postMessage")

    status, body = await api.post(f"/rooms/{room}/links/slack/finish", {})
    assert status == 200, body
    assert body["changed"] and body["remote_id"] == f"{team.id}:{CHANNEL}"
    assert body["channel"] == CHANNEL and "is archived" not in body["message"]
    # No alias: matrix.to points at the room ID.
    moved = [m for m in sim.messages(team, CHANNEL) if "moved to Matrix" in m.get("text", "")]
    assert len(moved) == 1
    link = f"https://matrix.to/#/{room.replace(':', '%3A')}?via={SERVER_NAME}"
    assert link in moved[0]["text"], moved[0]["text"]
    assert [m["ts"] for m in sim.pinned(team, CHANNEL)] == [moved[0]["ts"]]
    assert not sim.team(team).channels[CHANNEL].is_archived  # not configured
    assert not sim.calls_to("conversations.archive")
    await admin.wait_for_event(
        room, lambda e: e["sender"] == bot and "Finished the Slack channel #bauamt"
        in e["content"].get("body", ""), timeout=15)
    assert await slack_links(slack_bridge, room) == []
    finish = [d for action, d in await audit_actions(slack_bridge, room) if action == "finish"]
    assert len(finish) == 1 and finish[0]["via"] == "api"
    status, body = await api.post(f"/rooms/{room}/links/slack/finish")
    assert status == 404
    await assert_not_bridged(slack_bridge, admin, room, team, CHANNEL, "bauamt")
