"""Slack takes a linked channel (or the whole app) away: archived, deleted, uninstalled,
token revoked. The bridge hears it from Slack's events, tells the linked room and
`!bridge status`, and a post to an archived channel fails once, for good, with a reason.

Real Synapse, the bridge in-process, the Slack simulator; SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from bridge.slack.inbound import CHANNEL_STATE_EVENTS
from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, linked_room
from tests.slack.relay_helpers import count_in_slack

MANIFEST = Path(__file__).parents[2] / "slack-app-manifest.yaml"


def notice_from(bot: str, text: str) -> Any:
    return lambda e: e["sender"] == bot and text in e["content"].get("body", "")


async def status_of(bridge: SlackBridge, admin: MatrixTestClient, room: str) -> str:
    reply = await command(bridge.homeserver.bot, admin, room, "!bridge status")
    return str(reply["content"]["body"])


def test_manifest_subscribes_to_what_takes_a_channel_or_the_app_away() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"app_uninstalled", "tokens_revoked"} <= events  # need no scope
    assert set(CHANNEL_STATE_EVENTS) <= events
    assert {"channels:read", "groups:read"} <= scopes  # channel_* and group_* events


async def test_archived_channel_is_told_to_the_room_and_status_and_posts_fail_for_good(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin)
    assert "archived" not in await status_of(slack_bridge, admin, room)

    await sim.archive_channel(team, CHANNEL, ANNA)
    notice = await admin.wait_for_event(room, notice_from(bot, "was archived"), timeout=15)
    assert "#bauamt" in notice["content"]["body"] and "by Anna" in notice["content"]["body"]
    assert f"{team.id}:{CHANNEL} is archived" in await status_of(slack_bridge, admin, room)

    # A message from Matrix: one attempt, answered is_archived, then a notice; no retries.
    await admin.send_text(room, "Nach dem Archivieren")
    failed = await admin.wait_for_event(room, notice_from(bot, "Could not deliver to Slack"),
                                        timeout=15)
    assert "archived" in failed["content"]["body"]
    await asyncio.sleep(1.5)  # retries would come every 0.2-1 s
    attempts = [c for c in sim.calls_to("chat.postMessage")
                if c.get("text") == "Nach dem Archivieren"]
    assert len(attempts) == 1 and count_in_slack(sim, team, "Nach dem Archivieren") == 0

    # Unarchived: the room hears it, status is clean, messages flow again.
    await sim.unarchive_channel(team, CHANNEL, ANNA)
    await admin.wait_for_event(room, notice_from(bot, "was unarchived"), timeout=15)
    assert "archived" not in await status_of(slack_bridge, admin, room)
    await admin.send_text(room, "Wieder offen")
    await sim.wait_for(lambda: count_in_slack(sim, team, "Wieder offen"), timeout=15)


async def test_deleted_channel_and_uninstalled_app_are_told(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin)
    await sim.delete_channel(team, CHANNEL, ANNA)
    notice = await admin.wait_for_event(room, notice_from(bot, "was deleted"), timeout=15)
    assert "unlink slack" in notice["content"]["body"]
    assert f"{team.id}:{CHANNEL} is deleted" in await status_of(slack_bridge, admin, room)

    await sim.uninstall_app(team)
    notice = await admin.wait_for_event(room, notice_from(bot, "Slack app was uninstalled"),
                                        timeout=15)
    assert "reinstall" in notice["content"]["body"]
    status = await status_of(slack_bridge, admin, room)
    assert "the Slack app was uninstalled in workspace rathaus" in status, status
    # Slack sends tokens_revoked along: the room is told once, not twice.
    await asyncio.sleep(0.5)
    told = [e for e in await admin.messages(room, limit=50)
            if e["sender"] == bot and "nothing is bridged" in e["content"].get("body", "")]
    assert len(told) == 1, [e["content"]["body"] for e in told]


async def test_an_archive_while_the_bridge_was_away_is_found_by_catch_up(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin)
    await slack_bridge.stop()
    await sim.archive_channel(team, CHANNEL, ANNA)
    sim.dispatcher.teams[team.id].queue.clear()  # Slack gave up on the event
    await slack_bridge.start()
    await slack_bridge.connected()
    await admin.wait_for_event(room, notice_from(bot, "was archived"), timeout=15)
    assert f"{team.id}:{CHANNEL} is archived" in await status_of(slack_bridge, admin, room)
    await slack_bridge.stop()
    await sim.unarchive_channel(team, CHANNEL, ANNA)
    sim.dispatcher.teams[team.id].queue.clear()
    await slack_bridge.start()
    await slack_bridge.connected()
    await admin.wait_for_event(room, notice_from(bot, "was unarchived"), timeout=15)
    assert "archived" not in await status_of(slack_bridge, admin, room)
