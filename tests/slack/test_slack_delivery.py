"""Slack delivery guarantees end to end: nothing lost, nothing doubled, in order.

Socket Mode acknowledges an envelope only once its event is stored; reconnects (asked for
by Slack, or a lost connection) lose nothing; the Events API refuses forged and stale
requests, answers url_verification and takes retries as the same event; a channel's messages
keep their order while channels proceed side by side; the app's posts wait out 429, 5xx and
Slack being away, across a restart too; several workspaces work at once.

Real Synapse, the bridge in-process, the Slack simulator; SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import OperationalError

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.slack_sim import events as ev
from tests.conftest import Homeserver
from tests.slack.conftest import (
    ANNA,
    BEN,
    CHANNEL,
    OTHER_CHANNEL,
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
from tests.support.crash import dies_after_delivering, lease_runs_out, outbox_done


@asynccontextmanager
async def writes_blocked(database_url: str) -> AsyncIterator[None]:
    """Another client holds the database so the bridge cannot store anything new (SQLite:
    the write lock; PostgreSQL: a lock on the table of remote keys, which every inbound
    Slack event is written to) until the block ends."""
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(database_url.split(":///", 1)[1], isolation_level=None,
                                 check_same_thread=False, timeout=30)
        # Off the event loop: the bridge may be inside a write that needs the loop to end.
        await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE inbound_key IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


def bodies(events: list[dict[str, Any]], prefix: str) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message"
            and e["content"].get("body", "").startswith(prefix)]


async def in_room_once(admin: MatrixTestClient, room: str, texts: list[str],
                       timeout: float = 15) -> list[dict[str, Any]]:
    """Wait for each text (in this order), then check the room holds each exactly once,
    in this order."""
    for text in texts:
        await admin.wait_for_event(room, has_body(text), timeout=timeout)
    events = await room_events(admin, room)
    found = [e for e in events if e["type"] == "m.room.message"
             and e["content"].get("body") in texts]
    assert [e["content"]["body"] for e in found] == texts
    return found


# --- Socket Mode --------------------------------------------------------------------------

async def test_socket_mode_acks_only_after_the_event_is_stored(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any,
        database_url: str) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    sim.ack_timeout = 1.0  # Slack re-sends what is not acked in time
    async with writes_blocked(database_url):
        await sim.post_message(team, CHANNEL, ANNA, text="Während die Datenbank hängt")
        # The bridge has the envelope but cannot store it: no ack, so Slack sends it again.
        retried = await sim.wait_for(lambda: [e for e in sim.pending_envelopes(team)
                                              if e["retry_attempt"] >= 1], timeout=10)
        assert retried[0]["payload"]["event"]["text"] == "Während die Datenbank hängt"
        assert not [p for p in sim.delivered(team)
                    if p["event"].get("text") == "Während die Datenbank hängt"]
    # Stored once the database is back: acked, posted exactly once although received twice.
    await sim.wait_for(lambda: not sim.pending_envelopes(team), timeout=15)
    await in_room_once(admin, room, ["Während die Datenbank hängt"])
    await marker_from_slack(sim, team, admin, room, "danach")
    assert bodies(await room_events(admin, room), "Während") == ["Während die Datenbank hängt"]
    assert not sim.dropped(team)


async def test_envelopes_sent_again_while_others_wait_are_posted_once_in_order(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any,
        database_url: str) -> None:
    """While the intake is stuck on the first message, the second arrives and is sent
    again: both of its copies are then stored in one batch, beside the first's copy."""
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    sim.ack_timeout = 1.0
    texts = ["Erste wartet", "Zweite doppelt"]
    async with writes_blocked(database_url):
        for text in texts:  # the second once the first is sent again: the intake holds it
            await sim.post_message(team, CHANNEL, ANNA, text=text)
            await sim.wait_for(lambda text=text: [
                e for e in sim.pending_envelopes(team)
                if e["retry_attempt"] >= 1 and e["payload"]["event"]["text"] == text],
                timeout=10)
    await sim.wait_for(lambda: not sim.pending_envelopes(team), timeout=15)
    await in_room_once(admin, room, texts)
    await marker_from_slack(sim, team, admin, room, "danach")
    events = await room_events(admin, room)
    assert bodies(events, "Erste") + bodies(events, "Zweite") == texts
    assert not sim.dropped(team)


async def test_a_failed_store_is_retried_before_anything_later_of_the_workspace(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    """The database refuses a batch (a connection reset, a failover): the bridge neither
    acks it nor lets later events overtake it, so the channel keeps its order."""
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    intake = slack_bridge.slack._intakes["rathaus"]
    store = intake._store
    gate = asyncio.Event()
    failed: list[list[dict[str, Any]]] = []

    async def flaky(ws: Any, payloads: list[dict[str, Any]]) -> None:
        if not failed:
            failed.append(payloads)
            await gate.wait()
            raise OperationalError("INSERT INTO inbound_key ...", {},
                                   ConnectionResetError("the database went away"))
        await store(ws, payloads)

    intake._store = flaky
    await sim.post_message(team, CHANNEL, ANNA, text="Erste Nachricht")
    await sim.wait_for(lambda: failed, timeout=10)
    await sim.post_message(team, CHANNEL, BEN, text="Zweite Nachricht")
    await sim.wait_for(lambda: len(sim.pending_envelopes(team)) == 2, timeout=10)
    gate.set()
    await in_room_once(admin, room, ["Erste Nachricht", "Zweite Nachricht"])
    await sim.wait_for(lambda: not sim.pending_envelopes(team), timeout=15)


async def test_bridge_stopped_between_delivery_and_ack_loses_and_doubles_nothing(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any,
        database_url: str) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    async with writes_blocked(database_url):
        await sim.post_message(team, CHANNEL, ANNA, text="Kurz vor dem Neustart")
        await sim.wait_for(lambda: sim.pending_envelopes(team), timeout=10)
        stopping = asyncio.create_task(slack_bridge.stop())
        await asyncio.sleep(0.2)  # the stop is under way while the write still waits
    await stopping
    await slack_bridge.start()
    await slack_bridge.connected()
    await in_room_once(admin, room, ["Kurz vor dem Neustart"])
    await sim.wait_for(lambda: not sim.pending_envelopes(team), timeout=15)
    await marker_from_slack(sim, team, admin, room, "nach dem Neustart")
    assert bodies(await room_events(admin, room), "Kurz vor") == ["Kurz vor dem Neustart"]


async def test_refresh_disconnect_reconnects_and_loses_nothing(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    opened = len(sim.calls_to("apps.connections.open"))
    texts = [f"Refresh {i}" for i in range(12)]
    for text in texts[:4]:
        await sim.post_message(team, CHANNEL, ANNA, text=text)
    # Slack asks the app to reconnect (as it does every few hours); people go on writing.
    disconnect = asyncio.create_task(sim.disconnect_socket(team, "refresh_requested"))
    for text in texts[4:8]:
        await sim.post_message(team, CHANNEL, ANNA, text=text)
        await asyncio.sleep(0)
    await disconnect
    for text in texts[8:]:
        await sim.post_message(team, CHANNEL, ANNA, text=text)
    await in_room_once(admin, room, texts)
    await sim.wait_for(lambda: sim.socket_count(team) == 1 and not sim.pending_envelopes(team),
                       timeout=15)
    assert len(sim.calls_to("apps.connections.open")) > opened  # a fresh URL was fetched
    assert not sim.dropped(team)
    # What Slack sent twice (unacked on the old socket) was still posted once.
    await marker_from_slack(sim, team, admin, room, "nach dem Refresh")
    assert bodies(await room_events(admin, room), "Refresh") == texts


async def test_dropped_socket_reconnects_and_catches_up(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    root_ts = await sim.post_message(team, CHANNEL, ANNA, text="Vor dem Abbruch")
    root = await admin.wait_for_event(room, has_body("Vor dem Abbruch"), timeout=15)
    # Events Slack never gets through (the connection was already dead without anyone
    # knowing): only the channel's history has these messages.
    subscribed, team.event_types = team.event_types, {"app_mention"}
    await sim.post_message(team, CHANNEL, ANNA, text="Verpasst 1")
    await sim.post_message(team, CHANNEL, BEN, text="Verpasst 2")
    await sim.post_message(team, CHANNEL, ANNA, text="Verpasst im Thread", thread_ts=root_ts)
    await sim.post_message(team, CHANNEL, ANNA, text="Verpasst 3")
    team.event_types = subscribed
    await sim.drop_sockets(team)
    # The bridge reconnects and reads the channel from the last bridged message on.
    missed = await in_room_once(admin, room, ["Verpasst 1", "Verpasst 2",
                                              "Verpasst im Thread", "Verpasst 3"])
    assert missed[1]["sender"] == puppet_of(team, BEN)
    relates = missed[2]["content"].get("m.relates_to") or {}
    assert relates.get("rel_type") == "m.thread" and relates["event_id"] == root["event_id"]
    # Original timestamps are kept.
    slack_ts = {m["text"]: m["ts"] for m in sim.messages(team, CHANNEL)}
    assert abs(missed[0]["origin_server_ts"] / 1000 - float(slack_ts["Verpasst 1"])) < 0.01
    await sim.wait_for(lambda: sim.socket_count(team) == 1, timeout=15)
    await sim.post_message(team, CHANNEL, ANNA, text="Wieder live")
    await admin.wait_for_event(room, has_body("Wieder live"), timeout=15)
    assert bodies(await room_events(admin, room), "Verpasst") == [
        "Verpasst 1", "Verpasst 2", "Verpasst im Thread", "Verpasst 3"]


# --- Events API ---------------------------------------------------------------------------

@pytest.fixture
def http_team(slack_sim: SlackSimulator) -> Any:
    return add_workspace(slack_sim, socket_mode=False)


@pytest.fixture
async def http_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                      http_team: Any) -> AsyncIterator[SlackBridge]:
    async with running_slack_bridge(homeserver, database_url, slack_sim,
                                    [http_team]) as running:
        yield running


def forged_message(sim: SlackSimulator, team: Any, text: str) -> bytes:
    event = {"type": "message", "channel": CHANNEL, "user": ANNA, "text": text,
             "ts": sim.clock.next(), "team": team.id, "channel_type": "channel"}
    event["event_ts"] = event["ts"]
    payload = ev.event_callback(team, event, event_id=ev.new_event_id(),
                                event_time=int(time.time()))
    return json.dumps(payload).encode()


async def test_events_api_refuses_bad_and_stale_signatures_and_answers_url_verification(
        http_bridge: SlackBridge, admin: MatrixTestClient, http_team: Any) -> None:
    sim = http_bridge.sim
    team = http_team
    room = await linked_room(http_bridge, admin)
    verification = await sim.send_url_verification(team)
    assert verification.ok, (verification.status, verification.text)

    forged = forged_message(sim, team, "Gefälscht")
    wrong = sim.signed_headers(team, forged)
    wrong["X-Slack-Signature"] = sim.sign(forged, "not-the-signing-secret",
                                          wrong["X-Slack-Request-Timestamp"])
    assert (await sim.post_raw_event(team, forged, wrong)).status == 401
    stale = sim.signed_headers(team, forged, timestamp=int(time.time()) - 6 * 60)
    assert (await sim.post_raw_event(team, forged, stale)).status == 401
    unsigned = {"Content-Type": "application/json"}
    assert (await sim.post_raw_event(team, forged, unsigned)).status == 401
    tampered = forged_message(sim, team, "Auch gefälscht")
    signed_other = sim.signed_headers(team, forged)  # the signature of another body
    assert (await sim.post_raw_event(team, tampered, signed_other)).status == 401
    # A stale url_verification is refused too: the check comes before anything else.
    challenge = json.dumps({"type": "url_verification", "challenge": "abc",
                            "token": "x"}).encode()
    old = sim.signed_headers(team, challenge, timestamp=int(time.time()) - 6 * 60)
    assert (await sim.post_raw_event(team, challenge, old)).status == 401

    await marker_from_slack(sim, team, admin, room, "Echt")
    events = await room_events(admin, room)
    assert not [e for e in events if "gefälscht" in e["content"].get("body", "").lower()]


async def test_events_api_refuses_a_signed_body_that_is_not_a_json_object(
        http_bridge: SlackBridge, admin: MatrixTestClient, http_team: Any) -> None:
    sim = http_bridge.sim
    room = await linked_room(http_bridge, admin)
    for body, error in [(b"not json {", "body is not JSON"),
                        ("{\"text\": \"Gr\u00fc\u00dfe\"".encode(), "body is not JSON"),
                        (b'["event_callback"]', "body is not a JSON object"),
                        ('{"text": "Gr\u00fc\u00dfe"}'.encode("latin-1"), "body is not UTF-8")]:
        answer = await sim.post_raw_event(http_team, body)
        assert (answer.status, json.loads(answer.body)) == (400, {"error": error})
    # Nothing was taken in; the next event is.
    await marker_from_slack(sim, http_team, admin, room, "Danach")


async def test_events_api_retries_are_posted_once(
        http_bridge: SlackBridge, admin: MatrixTestClient, http_team: Any,
        database_url: str) -> None:
    sim = http_bridge.sim
    team = http_team
    room = await linked_room(http_bridge, admin)
    # Slack times out waiting for the answer (the bridge cannot store yet) and retries.
    sim.http_timeout = 0.5
    sim.retry_delay = 0.2
    async with writes_blocked(database_url):
        await sim.post_message(team, CHANNEL, ANNA, text="Langsam gespeichert")
        await sim.wait_for(lambda: [a for a in sim.http_attempts(team) if a[1] >= 1],
                           timeout=10)
    sim.http_timeout = 3.0
    await in_room_once(admin, room, ["Langsam gespeichert"])
    event_id = sim.events(team)[-1]["event_id"]
    await sim.wait_for(lambda: [a for a in sim.http_attempts(team)
                                if a[0] == event_id and a[2] == 200], timeout=10)

    # A retry of something delivered long ago (X-Slack-Retry-Num, the same event_id):
    # a reaction, known by its event_id only.
    ts = next(m["ts"] for m in sim.messages(team, CHANNEL) if m["text"] == "Langsam gespeichert")
    await sim.add_reaction(team, CHANNEL, ts, BEN, "eyes")
    reaction = await admin.wait_for_event(room, lambda e: e["type"] == "m.reaction", timeout=15)
    payload = next(p for p in sim.events(team) if p["event"]["type"] == "reaction_added")
    body = json.dumps(payload).encode()
    headers = {**sim.signed_headers(team, body), "X-Slack-Retry-Num": "1",
               "X-Slack-Retry-Reason": "http_timeout"}
    assert (await sim.post_raw_event(team, body, headers)).status == 200
    await marker_from_slack(sim, team, admin, room, "Schluss")
    events = await room_events(admin, room)
    assert bodies(events, "Langsam") == ["Langsam gespeichert"]
    reactions = [e for e in events if e["type"] == "m.reaction"]
    assert [e["event_id"] for e in reactions] == [reaction["event_id"]]


# --- order and parallelism ----------------------------------------------------------------

async def test_fifty_quick_messages_arrive_in_order(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    texts = [f"Nachricht {i:02d}" for i in range(50)]
    for i, text in enumerate(texts):
        await sim.post_message(team, CHANNEL, ANNA if i % 3 else BEN, text=text)
    # Each message gets its own time to arrive: a single 30 s deadline for all fifty is what
    # a busy machine can miss while nothing is wrong. The order is checked once all are
    # there (and each is there once), so a message that overtook another still fails.
    await in_room_once(admin, room, texts, timeout=30)
    assert bodies(await room_events(admin, room), "Nachricht ") == texts


async def test_channels_proceed_in_parallel_each_in_order(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bauamt = await linked_room(slack_bridge, admin)
    schule = await linked_room(slack_bridge, admin, OTHER_CHANNEL)
    # Interleaved in Slack, each channel in its own order in its own room.
    for i in range(8):
        await sim.post_message(team, CHANNEL, ANNA, text=f"Bauamt {i}")
        await sim.post_message(team, OTHER_CHANNEL, ANNA, text=f"Schule {i}")
    await admin.wait_for_event(bauamt, has_body("Bauamt 7"), timeout=20)
    await admin.wait_for_event(schule, has_body("Schule 7"), timeout=20)
    assert bodies(await room_events(admin, bauamt), "Bauamt ") == [
        f"Bauamt {i}" for i in range(8)]
    assert bodies(await room_events(admin, schule), "Schule ") == [
        f"Schule {i}" for i in range(8)]

    # A channel that is stuck (Slack cannot tell who the new colleague is) holds up only
    # itself: the other channel goes on meanwhile, and the stuck one resumes in order.
    sim.add_user(team, "U0CARLA", name="carla", real_name="Carla Neu")
    await sim.join_channel(team, CHANNEL, "U0CARLA")
    sim.fail("users.info", status=500, times=None)
    await sim.post_message(team, CHANNEL, "U0CARLA", text="Carla stellt sich vor")
    await sim.post_message(team, CHANNEL, ANNA, text="Willkommen Carla")
    await sim.wait_for(lambda: [c for c in sim.calls_to("users.info")
                                if c.get("user") == "U0CARLA"], timeout=10)
    await sim.post_message(team, OTHER_CHANNEL, ANNA, text="Schule läuft weiter")
    await admin.wait_for_event(schule, has_body("Schule läuft weiter"), timeout=10)
    assert not bodies(await room_events(admin, bauamt), "Carla")
    sim.clear_faults()
    await in_room_once(admin, bauamt, ["Carla stellt sich vor", "Willkommen Carla"])


# --- the app's posts: rate limits, errors, Slack away --------------------------------------

async def test_rate_limit_honours_retry_after_per_channel(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    bauamt = await linked_room(slack_bridge, admin)
    schule = await linked_room(slack_bridge, admin, OTHER_CHANNEL)
    before = len(sim.calls_to("chat.postMessage"))
    sim.rate_limit("chat.postMessage", retry_after=2, times=1)
    await admin.send_text(bauamt, "Gedrosselt")
    await sim.wait_for(lambda: len(sim.calls_to("chat.postMessage")) > before, timeout=10)
    limited_at = time.monotonic()
    # Another channel is not held up by this channel's limit.
    await admin.send_text(schule, "Nicht gedrosselt")
    await posted(sim, team, "Nicht gedrosselt", channel=OTHER_CHANNEL)
    assert count_in_slack(sim, team, "Gedrosselt") == 0  # still waiting out Retry-After
    await posted(sim, team, "Gedrosselt")
    waited = time.monotonic() - limited_at
    assert 1.8 <= waited < 4, waited
    bauamt_posts = [c for c in sim.calls_to("chat.postMessage")[before:]
                    if c["channel"] == CHANNEL]
    assert len(bauamt_posts) == 2  # the refused one and the one after Retry-After
    await marker_from_slack(sim, team, admin, bauamt, "Ende")
    assert count_in_slack(sim, team, "Gedrosselt") == 1


async def test_server_errors_are_retried_with_backoff(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    before = len(sim.calls_to("chat.postMessage"))
    sim.fail("chat.postMessage", status=500, times=1)
    sim.fail("chat.postMessage", status=503, times=1, error="service_unavailable")
    await admin.send_text(room, "Trotz Serverfehlern")
    seen: list[float] = []

    def attempts() -> bool:
        count = len(sim.calls_to("chat.postMessage")) - before
        while len(seen) < count:
            seen.append(time.monotonic())
        return count >= 3

    await sim.wait_for(attempts, timeout=15, interval=0.005)
    await posted(sim, team, "Trotz Serverfehlern")
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    # Backoff (0.2 s, then 0.4 s in the test config, each ±20 %): no hammering, and growing.
    assert len(gaps) == 2 and gaps[0] >= 0.12 and gaps[1] >= 0.25, gaps
    await marker_from_slack(sim, team, admin, room, "Ende")
    assert count_in_slack(sim, team, "Trotz Serverfehlern") == 1


async def test_slack_offline_delays_messages_also_across_a_restart(
        slack_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    sim = slack_bridge.sim
    room = await linked_room(slack_bridge, admin)
    sim.set_online(False)
    # The lost connection shows in the health report while slack-sdk tries to reconnect.
    await sim.wait_for(lambda: "not connected" in slack_bridge.slack.health().detail,
                       timeout=10)
    before = len(sim.calls_to("chat.postMessage"))
    await admin.send_text(room, "Slack ist weg 1")
    await admin.send_text(room, "Slack ist weg 2")
    # Tried and refused (503) while Slack is away, and kept.
    await sim.wait_for(lambda: len(sim.calls_to("chat.postMessage")) >= before + 2,
                       timeout=10)
    assert not count_in_slack(sim, team, "Slack ist weg")
    await slack_bridge.stop()
    auth_calls = len(sim.calls_to("auth.test"))
    await slack_bridge.start()
    await sim.wait_for(lambda: len(sim.calls_to("auth.test")) > auth_calls, timeout=10)
    assert not count_in_slack(sim, team, "Slack ist weg")
    sim.set_online(True)
    await posted(sim, team, "Slack ist weg 2", timeout=20)
    texts = [m["text"] for m in sim.messages(team, CHANNEL) if "Slack ist weg" in m["text"]]
    assert texts == ["Slack ist weg 1", "Slack ist weg 2"]
    # And the way back in works again (Socket Mode reconnected).
    await sim.wait_for(lambda: slack_bridge.slack.health().ok, timeout=15)
    await marker_from_slack(sim, team, admin, room, "Wieder da")
    assert count_in_slack(sim, team, "Slack ist weg 1") == 1


# --- several workspaces -------------------------------------------------------------------

async def test_several_workspaces_at_once(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        admin: MatrixTestClient) -> None:
    sim = slack_sim
    # The same channel and user IDs in both: only the team tells them apart.
    schulamt = add_workspace(sim, team_id="T0SCHULAMT", name="schulamt", socket_mode=False)
    async with running_slack_bridge(homeserver, database_url, sim,
                                    [team, schulamt]) as bridge:
        bot = homeserver.bot
        rathaus_room = await open_room(bot, admin, bot_power=100, name="Rathaus")
        reply = await command(bot, admin, rathaus_room, f"!bridge link slack {CHANNEL}")
        body = reply["content"]["body"]
        assert "Several Slack workspaces" in body and "rathaus" in body and "schulamt" in body
        reply = await command(bot, admin, rathaus_room, f"!bridge link slack {CHANNEL} nirgendwo")
        assert "No Slack workspace `nirgendwo`" in reply["content"]["body"]
        await command(bot, admin, rathaus_room, f"!bridge link slack {CHANNEL} rathaus",
                      expect="Linked")
        schul_room = await linked_room(bridge, admin, CHANNEL, "schulamt")

        await sim.post_message(team, CHANNEL, ANNA, text="Aus dem Rathaus")
        await sim.post_message(schulamt, CHANNEL, ANNA, text="Aus dem Schulamt")
        rathaus_msg = await admin.wait_for_event(rathaus_room, has_body("Aus dem Rathaus"),
                                                 timeout=15)
        schul_msg = await admin.wait_for_event(schul_room, has_body("Aus dem Schulamt"),
                                               timeout=15)
        assert rathaus_msg["sender"] == puppet_of(team, ANNA)
        assert schul_msg["sender"] == puppet_of(schulamt, ANNA)

        await admin.send_text(rathaus_room, "Antwort ans Rathaus")
        await admin.send_text(schul_room, "Antwort ans Schulamt")
        await posted(sim, team, "Antwort ans Rathaus")
        await posted(sim, schulamt, "Antwort ans Schulamt")
        await marker_from_slack(sim, team, admin, rathaus_room, "Ende Rathaus")
        await marker_from_slack(sim, schulamt, admin, schul_room, "Ende Schulamt")
        assert not bodies(await room_events(admin, rathaus_room), "Aus dem Schulamt")
        assert not bodies(await room_events(admin, schul_room), "Aus dem Rathaus")
        assert count_in_slack(sim, team, "Antwort ans Schulamt") == 0
        assert count_in_slack(sim, schulamt, "Antwort ans Rathaus") == 0
        assert count_in_slack(sim, team, "Antwort ans Rathaus") == 1
        assert count_in_slack(sim, schulamt, "Antwort ans Schulamt") == 1


# --- a post Slack took just before the process died ------------------------------------


async def test_post_slack_took_before_the_process_died_is_not_posted_again(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        admin: MatrixTestClient) -> None:
    # Slack has no idempotency key for chat.postMessage: taken up again after the lease
    # ran out, the delivery looks for its post (by its metadata) before posting.
    text = "Bescheid geht heute raus"
    async with running_slack_bridge(homeserver, database_url, slack_sim, [team]) as first:
        room = await linked_room(first, admin)
        assert first.bridge is not None
        delivered = asyncio.Event()
        dies_after_delivering(first.bridge.outbox, text, delivered)
        event_id = await admin.send_text(room, text)
        await asyncio.wait_for(delivered.wait(), 30)
        assert count_in_slack(slack_sim, team, text) == 1
    async with running_slack_bridge(homeserver, database_url, slack_sim, [team]) as second:
        await lease_runs_out(second.hub, "slack")
        await outbox_done(second.hub)
        assert count_in_slack(slack_sim, team, text) == 1
        # The mapping was recorded with the post it found: an edit reaches that post.
        await admin.send_event(room, "m.room.message", {
            "msgtype": "m.text", "body": "* Bescheid geht morgen raus",
            "m.new_content": {"msgtype": "m.text", "body": "Bescheid geht morgen raus"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}})
        await posted(slack_sim, team, "Bescheid geht morgen raus")
        assert count_in_slack(slack_sim, team, "Bescheid geht") == 1
