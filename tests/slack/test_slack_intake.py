"""The Slack intake under strain: an event the database refuses for good is set aside (and
the room told) instead of blocking the workspace; a full intake leaves events
unacknowledged so Slack sends them again.

Real Synapse, the bridge in-process, the Slack simulator; SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from tests.conftest import Homeserver
from tests.slack.conftest import (
    ANNA,
    BEN,
    CHANNEL,
    SlackBridge,
    add_workspace,
    linked_room,
    running_slack_bridge,
)
from tests.slack.relay_helpers import has_body, room_events
from tests.slack.test_slack_delivery import writes_blocked

# A lone UTF-16 surrogate: Slack cuts texts at UTF-16 boundaries in places, and JSON can
# carry one ("\ud800"), but no database text column can store it.
BROKEN_TEXT = "Kaputt \ud800 Ende"


async def test_an_event_the_database_refuses_is_set_aside_and_the_room_told(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin)
    # Shorter than the tries before an event is set aside (0.2 s, then 0.4 s): Slack sends
    # the broken event again meanwhile, and the copy must not be set aside a second time.
    sim.ack_timeout = 0.2
    sim.max_retries = 50  # and does not give up on it while the tries run, however slowly
    caplog.set_level(logging.ERROR, logger="bridge.slack")
    await sim.post_message(team, CHANNEL, ANNA, text="Vorher")
    broken_ts = await sim.post_message(team, CHANNEL, BEN, text=BROKEN_TEXT)
    await sim.post_message(team, CHANNEL, ANNA, text="Nachher")

    # What came before and after it arrives; the workspace's intake is not stuck.
    await admin.wait_for_event(room, has_body("Vorher"), timeout=15)
    await admin.wait_for_event(room, has_body("Nachher"), timeout=15)
    notice = await admin.wait_for_event(
        room, lambda e: e["sender"] == bot and "could not be bridged" in
        e["content"].get("body", ""), timeout=15)
    assert broken_ts in notice["content"]["body"]
    # Acknowledged (set aside, not left for Slack to give up on), logged whole at ERROR.
    await sim.wait_for(lambda: not sim.pending_envelopes(team), timeout=15)
    assert not sim.dropped(team)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
              and "set aside Slack event" in r.getMessage()]
    assert len(logged) == 1 and "Kaputt \\ud800 Ende" in logged[0], logged
    status = await command(bot, admin, room, "!bridge status")
    assert "1 event(s) set aside" in status["content"]["body"]
    events = await room_events(admin, room)
    assert not [e for e in events
                if "Kaputt" in e["content"].get("body", "") and e["sender"] != bot]
    # Told once, although Slack sent it more than once.
    assert len([e for e in events if e["sender"] == bot
                and "could not be bridged" in e["content"].get("body", "")]) == 1


async def test_a_full_intake_leaves_events_unacknowledged_until_there_is_room(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        admin: MatrixTestClient) -> None:
    sim = slack_sim
    async with running_slack_bridge(homeserver, database_url, sim, [team],
                                    slack__intake_queue_limit=2) as bridge:
        room = await linked_room(bridge, admin)
        intake = bridge.slack._intakes["rathaus"]
        sim.ack_timeout = 0.5
        sim.max_retries = 30
        texts = [f"Stau {number}" for number in range(6)]
        async with writes_blocked(database_url):
            for text in texts:
                await sim.post_message(team, CHANNEL, ANNA, text=text)
            # One batch waits for the database, two events wait in the queue; the rest are
            # not taken, so not acknowledged: Slack sends them again.
            await sim.wait_for(lambda: intake.refused_while_full >= 3, timeout=10)
            assert intake.queued <= 2
            assert not [p for p in sim.delivered(team)
                        if str(p["event"].get("text", "")).startswith("Stau")]
            await sim.wait_for(lambda: [e for e in sim.pending_envelopes(team)
                                        if e["retry_attempt"] >= 1], timeout=10)
        # Once the database is back, everything arrives, each once.
        for text in texts:
            await admin.wait_for_event(room, has_body(text), timeout=20)
        await sim.wait_for(lambda: not sim.pending_envelopes(team), timeout=20)
        assert not sim.dropped(team)
        found = [e["content"]["body"] for e in await room_events(admin, room)
                 if e["type"] == "m.room.message"
                 and e["content"].get("body", "").startswith("Stau")]
        assert sorted(found) == texts


async def test_a_full_intake_answers_the_events_api_503_until_there_is_room(
        homeserver: Homeserver, database_url: str, admin: MatrixTestClient) -> None:
    # Slack sends Events API requests side by side: several at once here.
    async with SlackSimulator(events_concurrency=8) as sim:
        team = add_workspace(sim, socket_mode=False)
        async with running_slack_bridge(homeserver, database_url, sim, [team],
                                        slack__intake_queue_limit=2) as bridge:
            room = await linked_room(bridge, admin)
            intake = bridge.slack._intakes["rathaus"]
            sim.retry_delay = 0.3
            sim.max_retries = 50
            texts = [f"Andrang {number}" for number in range(8)]
            async with writes_blocked(database_url):
                for text in texts:
                    await sim.post_message(team, CHANNEL, ANNA, text=text)

                def refused() -> list[Any]:
                    return [a for a in sim.http_attempts(team) if a[2] == 503]

                # The bridge counts a refusal before its 503 reaches the simulator: wait for
                # both (reading the simulator at once made this test flaky).
                await sim.wait_for(lambda: intake.refused_while_full >= 3 and refused(),
                                   timeout=10)
                assert refused() and intake.queued <= 2
            for text in texts:
                await admin.wait_for_event(room, has_body(text), timeout=30)
            assert not sim.dropped(team)
            found = [e["content"]["body"] for e in await room_events(admin, room)
                     if e["type"] == "m.room.message"
                     and e["content"].get("body", "").startswith("Andrang")]
            assert sorted(found) == texts


async def test_catch_up_sets_aside_what_it_cannot_store_and_brings_the_rest(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bot = slack_bridge.homeserver.bot
    room = await linked_room(slack_bridge, admin)
    await sim.post_message(team, CHANNEL, ANNA, text="Vor der Pause")
    await admin.wait_for_event(room, has_body("Vor der Pause"), timeout=15)
    await slack_bridge.stop()
    await sim.post_message(team, CHANNEL, ANNA, text="Nach der Pause")
    broken_ts = await sim.post_message(team, CHANNEL, BEN, text=BROKEN_TEXT)  # the newest
    sim.dispatcher.teams[team.id].queue.clear()  # Slack gave up: catch-up alone reads them
    await slack_bridge.start()
    await slack_bridge.connected()
    await admin.wait_for_event(room, has_body("Nach der Pause"), timeout=15)
    notice = await admin.wait_for_event(
        room, lambda e: e["sender"] == bot and "could not be bridged" in
        e["content"].get("body", ""), timeout=15)
    assert broken_ts in notice["content"]["body"]
    # Read again by the next catch-up (it is the channel's newest), it is not told twice.
    await slack_bridge.restart()
    await slack_bridge.connected()
    await sim.post_message(team, CHANNEL, ANNA, text="Später")
    await admin.wait_for_event(room, has_body("Später"), timeout=15)
    told = [e for e in await room_events(admin, room)
            if e["sender"] == bot and "could not be bridged" in e["content"].get("body", "")]
    assert len(told) == 1
