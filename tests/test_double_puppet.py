"""Double puppeting: a linked person's Slack messages and mails appear as their own Matrix
account where it is a member of the room (else from the puppet), never come back to where
they came from, still reach everyone else; edits, deletions and reactions follow; mentions
follow the person; the retired puppet leaves and points to the account, and is restored on
unlink. Real Synapse (with the second registration loaded), the Slack simulator, real SMTP;
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.core.origin import ORIGIN_KEY
from bridge.db import people as people_db
from bridge.db.people import Identity
from bridge.people.changes import Change, after_change
from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import (
    ANNA,
    BEN,
    CHANNEL,
    OTHER_CHANNEL,
    SlackBridge,
    linked_room,
    running_slack_and_email_bridge,
)
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import count_in_slack, has_body, posted, puppet_of, room_events
from tests.test_all_directions import mails_with, plain, send_mail

ERIKA = "erika@stadt.example"
ANNA_MAIL = "anna.schmidt@stadt.example"


@pytest.fixture
async def dp_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                    team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team, sink,
                                              double_puppet__enabled=True) as running:
        yield running


@pytest.fixture
async def anna(homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    client = await homeserver.user(f"anna{uuid.uuid4().hex[:6]}")
    try:
        yield client
    finally:
        await client.close()


async def link(bridge: SlackBridge, account: str, network: str, remote_id: str,
               label: str) -> Identity:
    """An identity link written as the people actions write it, then the hook they call
    after their commit."""
    hub = bridge.hub

    async def write(session: Any) -> None:
        await people_db.add_identity(session, matrix_user_id=account, network=network,
                                     remote_id=remote_id, label=label, proven_by="admin",
                                     created_by="@admin:bridge.test")

    await hub.enqueue([], also=write)
    async with hub.db.sessions() as session:
        identity = await people_db.identity_for(session, network, remote_id)
    assert identity is not None
    await after_change(hub, Change(linked=[identity]))
    return identity


async def joined(admin: MatrixTestClient, room: str, user: MatrixTestClient) -> None:
    await admin.invite(room, user.user_id)
    await user.join(room)
    await admin.wait_for_membership(room, user.user_id, "join")


async def members(client: MatrixTestClient, room: str) -> set[str]:
    return set(await client.get_joined_members(room))


async def until(predicate: Any, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def displayname(client: MatrixTestClient, user_id: str) -> str | None:
    from urllib.parse import quote

    answer = await client.request("GET", f"/profile/{quote(user_id, safe='')}/displayname")
    return answer.get("displayname") if isinstance(answer, dict) else None


def team_remote(team: Any, user: str) -> str:
    return f"{team.id}_{user}"


async def test_linked_slack_person_posts_as_their_account_where_they_are_a_member(
        dp_bridge: SlackBridge, admin: MatrixTestClient, anna: MatrixTestClient,
        team: Any, sink: SmtpSink) -> None:
    sim, bot = dp_bridge.sim, dp_bridge.homeserver.bot
    puppet = puppet_of(team, ANNA)
    room = await linked_room(dp_bridge, admin)
    elsewhere = await linked_room(dp_bridge, admin, OTHER_CHANNEL)
    localpart = f"bauamt-{uuid.uuid4().hex[:6]}"
    await command(bot, admin, room, f"!bridge link email {localpart}", expect="Linked")
    await command(bot, admin, room, f"!bridge email subscribe {ERIKA}", expect="Subscribed")
    # Before the link, Anna's puppet writes in both rooms (and so is a member of both).
    await sim.post_message(team, CHANNEL, ANNA, text="Vorher hier")
    assert (await admin.wait_for_event(room, has_body("Vorher hier"), 15))["sender"] == puppet
    await sim.post_message(team, OTHER_CHANNEL, ANNA, text="Vorher dort")
    assert (await admin.wait_for_event(elsewhere, has_body("Vorher dort"), 15))["sender"] \
        == puppet
    await joined(admin, room, anna)

    # Linked by an admin with the bot command (its hook retires the puppet).
    await command(bot, admin, room, f"!bridge people link slack rathaus:{ANNA} {anna.user_id}",
                  expect="Linked")

    # Retired: the puppet leaves the room where Anna's account is, stays in the other,
    # and its name points to her account.
    await admin.wait_for_membership(room, puppet, "leave", timeout=15)
    assert puppet in await members(admin, elsewhere)
    await until(lambda: _name_is(admin, puppet, f"Anna (now {anna.user_id})"))

    # Slack -> Matrix as Anna herself where she is a member, as the puppet where not.
    ts = await sim.post_message(team, CHANNEL, ANNA, text="Gruss von Anna")
    mine = await admin.wait_for_event(room, has_body("Gruss von Anna"), timeout=15)
    assert mine["sender"] == anna.user_id
    await sim.post_message(team, OTHER_CHANNEL, ANNA, text="Gruss in die Schule")
    other = await admin.wait_for_event(elsewhere, has_body("Gruss in die Schule"), timeout=15)
    assert other["sender"] == puppet
    # ... it reaches the email subscribers, from Anna's name.
    mail = (await sink.wait_for(lambda r: "Gruss von Anna" in plain(r)))[0]
    assert mail.rcpt_tos == [ERIKA]

    # A thread reply, an edit, a reaction and its removal, a deletion: all from Anna.
    await sim.post_message(team, CHANNEL, ANNA, text="Antwort im Faden", thread_ts=ts)
    reply = await admin.wait_for_event(room, has_body("Antwort im Faden"), timeout=15)
    assert reply["sender"] == anna.user_id
    assert reply["content"]["m.relates_to"]["event_id"] == mine["event_id"]
    await sim.edit_message(team, CHANNEL, ts, text="Gruss von Anna, korrigiert")
    edit = await admin.wait_for_event(
        room, lambda e: e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace",
        timeout=15)
    assert edit["sender"] == anna.user_id
    assert edit["content"]["m.relates_to"]["event_id"] == mine["event_id"]
    await sim.add_reaction(team, CHANNEL, ts, ANNA, "tada")
    reaction = await admin.wait_for_event(room, lambda e: e["type"] == "m.reaction",
                                          timeout=15)
    assert reaction["sender"] == anna.user_id
    await sim.remove_reaction(team, CHANNEL, ts, ANNA, "tada")
    unreacted = await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.redaction"
        and e.get("redacts", e["content"].get("redacts")) == reaction["event_id"], timeout=15)
    assert unreacted["sender"] == anna.user_id
    await sim.delete_message(team, CHANNEL, ts)
    deleted = await admin.wait_for_event(
        room, lambda e: e["type"] == "m.room.redaction"
        and e.get("redacts", e["content"].get("redacts")) == mine["event_id"], timeout=15)
    assert deleted["sender"] == anna.user_id

    # Nothing came back to Slack: a last message from Ben, once mailed, means every echo
    # that could have happened has happened.
    await sim.post_message(team, CHANNEL, BEN, text="Schlusswort von Ben")
    await admin.wait_for_event(room, has_body("Schlusswort von Ben"), timeout=15)
    await sink.wait_for(lambda r: "Schlusswort von Ben" in plain(r))
    assert count_in_slack(sim, team, "Antwort im Faden") == 1
    assert not [m for m in sim.messages(team, CHANNEL) if m.get("bot_id")], \
        "the app posted Anna's own messages back into Slack"
    assert not sim.calls_to("reactions.add") and not sim.calls_to("chat.delete")
    # Mailed once, and its correction once.
    assert len(mails_with(sink, "Gruss von Anna")) == 2
    assert len(mails_with(sink, "korrigiert")) == 1

    # Unlinked: the puppet gets its name back and posts again (joining the room again).
    await command(bot, admin, room, f"!bridge people unlink slack rathaus:{ANNA}",
                  expect="Unlinked")
    await until(lambda: _name_is(admin, puppet, "Anna"))
    await sim.post_message(team, CHANNEL, ANNA, text="Wieder als Puppe")
    again = await admin.wait_for_event(room, has_body("Wieder als Puppe"), timeout=15)
    assert again["sender"] == puppet


async def _name_is(client: MatrixTestClient, user_id: str, name: str) -> bool:
    return await displayname(client, user_id) == name


async def test_a_later_join_retires_the_puppet_and_a_leave_brings_it_back_to_post(
        dp_bridge: SlackBridge, admin: MatrixTestClient, anna: MatrixTestClient,
        team: Any) -> None:
    sim = dp_bridge.sim
    puppet = puppet_of(team, ANNA)
    room = await linked_room(dp_bridge, admin)
    await link(dp_bridge, anna.user_id, "slack", team_remote(team, ANNA), f"rathaus:{ANNA}")
    # Not a member: the puppet posts (and joins for it).
    await sim.post_message(team, CHANNEL, ANNA, text="Noch als Puppe")
    assert (await admin.wait_for_event(room, has_body("Noch als Puppe"), 15))["sender"] == puppet
    # Anna's account joins the portal: the hub sees it, the puppet leaves.
    await joined(admin, room, anna)
    await admin.wait_for_membership(room, puppet, "leave", timeout=15)
    await sim.post_message(team, CHANNEL, ANNA, text="Jetzt als Anna")
    assert (await admin.wait_for_event(room, has_body("Jetzt als Anna"), 15))["sender"] \
        == anna.user_id
    # She leaves: the puppet posts again; the bridge never joins her back.
    await anna.leave(room)
    await admin.wait_for_membership(room, anna.user_id, "leave")
    await sim.post_message(team, CHANNEL, ANNA, text="Wieder die Puppe")
    assert (await admin.wait_for_event(room, has_body("Wieder die Puppe"), 15))["sender"] \
        == puppet
    assert anna.user_id not in await members(admin, room)


async def test_mentions_follow_the_person_both_ways(
        dp_bridge: SlackBridge, admin: MatrixTestClient, anna: MatrixTestClient,
        team: Any) -> None:
    sim = dp_bridge.sim
    room = await linked_room(dp_bridge, admin)
    await link(dp_bridge, anna.user_id, "slack", team_remote(team, ANNA), f"rathaus:{ANNA}")

    await sim.post_message(team, CHANNEL, BEN, text=f"<@{ANNA}> bitte ansehen")
    event = await admin.wait_for_event(room, has_body("bitte ansehen"), timeout=15)
    assert event["content"]["m.mentions"]["user_ids"] == [anna.user_id]
    assert f"https://matrix.to/#/{anna.user_id}" in event["content"]["formatted_body"]
    assert puppet_of(team, ANNA) not in event["content"]["formatted_body"]

    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "Anna: kannst du das machen?",
        "format": "org.matrix.custom.html",
        "formatted_body": f'<a href="https://matrix.to/#/{anna.user_id}">Anna</a>: kannst du '
                          "das machen?",
        "m.mentions": {"user_ids": [anna.user_id]}})
    in_slack = await posted(sim, team, "kannst du das machen?")
    assert in_slack["text"].startswith(f"<@{ANNA}>"), in_slack["text"]


async def test_mail_of_a_linked_address_comes_from_the_account_and_not_back_to_it(
        dp_bridge: SlackBridge, admin: MatrixTestClient, anna: MatrixTestClient,
        team: Any, sink: SmtpSink) -> None:
    sim, bot = dp_bridge.sim, dp_bridge.homeserver.bot
    room = await linked_room(dp_bridge, admin)
    localpart = f"bauamt-{uuid.uuid4().hex[:6]}"
    await command(bot, admin, room, f"!bridge link email {localpart}", expect="Linked")
    for address in (ERIKA, ANNA_MAIL):
        await command(bot, admin, room, f"!bridge email subscribe {address}",
                      expect="Subscribed")
    await joined(admin, room, anna)
    await link(dp_bridge, anna.user_id, "email", ANNA_MAIL, ANNA_MAIL)

    await send_mail(dp_bridge.smtp_port, f"Anna Schmidt <{ANNA_MAIL}>",  # type: ignore[attr-defined]
                    f"{localpart}@{MAIL_DOMAIN}", "Frage", "Gruss aus Annas Mail")
    event = await admin.wait_for_event(room, has_body("Gruss aus Annas Mail"), timeout=20)
    assert event["sender"] == anna.user_id
    await posted(sim, team, "Gruss aus Annas Mail")
    await sink.wait_for(lambda r: "Gruss aus Annas Mail" in plain(r) and ERIKA in r.rcpt_tos)

    # Her own Matrix message reaches Erika and Slack, not her own address.
    await anna.send_text(room, "Gruss aus Annas Matrix")
    await posted(sim, team, "Gruss aus Annas Matrix")
    await sink.wait_for(lambda r: "Gruss aus Annas Matrix" in plain(r))
    await sim.post_message(team, CHANNEL, BEN, text="Schluss")
    await sink.wait_for(lambda r: "Schluss" in plain(r), count=2)
    assert [r.rcpt_tos for r in mails_with(sink, "Gruss aus Annas Matrix")] == [[ERIKA]]
    assert [r.rcpt_tos for r in mails_with(sink, "Gruss aus Annas Mail")] == [[ERIKA]]
    assert count_in_slack(sim, team, "Gruss aus Annas Mail") == 1
    events = await room_events(admin, room)
    assert len([e for e in events if has_body("Gruss aus Annas Mail")(e)]) == 1


async def test_a_copied_origin_marker_does_not_stop_a_persons_own_message(
        dp_bridge: SlackBridge, admin: MatrixTestClient, anna: MatrixTestClient,
        team: Any) -> None:
    sim = dp_bridge.sim
    room = await linked_room(dp_bridge, admin)
    await joined(admin, room, anna)
    await link(dp_bridge, anna.user_id, "slack", team_remote(team, ANNA), f"rathaus:{ANNA}")
    await sim.post_message(team, CHANNEL, ANNA, text="Signiert")
    signed = await admin.wait_for_event(room, has_body("Signiert"), timeout=15)
    assert signed["sender"] == anna.user_id and "proof" in signed["content"][ORIGIN_KEY]

    # Anna copies the marker, proof and all, into a message of her own: it is hers, so it
    # is relayed to Slack like any other (and is no command either).
    await anna.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "Selbst geschrieben",
        ORIGIN_KEY: signed["content"][ORIGIN_KEY]})
    await posted(sim, team, "Selbst geschrieben")


async def test_with_double_puppeting_off_the_puppet_posts_as_before_until_switched_on(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink, admin: MatrixTestClient, anna: MatrixTestClient) -> None:
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as bridge:
        puppet = puppet_of(team, ANNA)
        room = await linked_room(bridge, admin)
        await slack_sim.post_message(team, CHANNEL, ANNA, text="Erstes Wort")
        await admin.wait_for_event(room, has_body("Erstes Wort"), timeout=15)
        await joined(admin, room, anna)
        await link(bridge, anna.user_id, "slack", team_remote(team, ANNA), f"rathaus:{ANNA}")
        await slack_sim.post_message(team, CHANNEL, ANNA, text="Als Puppe")
        event = await admin.wait_for_event(room, has_body("Als Puppe"), timeout=15)
        assert event["sender"] == puppet
        assert puppet in await members(admin, room)
        assert await displayname(admin, puppet) == "Anna"

    # Switched on later (links made while it was off): the first message sent as Anna
    # finishes the retirement in that room.
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team, sink,
                                              double_puppet__enabled=True):
        await slack_sim.post_message(team, CHANNEL, ANNA, text="Jetzt mit Doppelpuppe")
        event = await admin.wait_for_event(room, has_body("Jetzt mit Doppelpuppe"), 15)
        assert event["sender"] == anna.user_id
        await admin.wait_for_membership(room, puppet, "leave", timeout=15)
        await until(lambda: _name_is(admin, puppet, f"Anna (now {anna.user_id})"))


async def test_links_are_read_once_and_read_again_when_they_change(
        dp_bridge: SlackBridge, anna: MatrixTestClient, team: Any) -> None:
    people = dp_bridge.hub.people
    puppet = puppet_of(team, ANNA)
    assert await people.account_of(puppet) is None

    # Written behind the cache's back, as another bridge process would: not asked again
    # on every message (until the cached links age out) ...
    async def write(session: Any) -> None:
        await people_db.add_identity(session, matrix_user_id=anna.user_id, network="slack",
                                     remote_id=team_remote(team, ANNA), label=f"rathaus:{ANNA}",
                                     proven_by="admin", created_by="@admin:bridge.test")

    await dp_bridge.hub.enqueue([], also=write)
    assert await people.account_of(puppet) is None
    # ... while a change made here (the people actions' hook) is seen at once.
    async with dp_bridge.hub.db.sessions() as session:
        identity = await people_db.identity_for(session, "slack", team_remote(team, ANNA))
    assert identity is not None
    await after_change(dp_bridge.hub, Change(linked=[identity]))
    assert await people.account_of(puppet) == anna.user_id
    assert [i.remote_id for i in people.current.identities(anna.user_id, "slack")] == \
        [team_remote(team, ANNA)]
