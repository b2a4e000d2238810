"""Self-service identity links (issue 12): anyone of the homeserver, in a direct chat with the
bot, links their own Slack user or address with a one-time code (`me slack …`, `me email …`,
`me confirm <code>`), lists (`me`) and removes (`me unlink …`) their own links.

Real Synapse, the Slack simulator (the code arrives as a direct message from the app, read
from the simulator's IM), real SMTP (the code mail, read from the sink); SQLite and
PostgreSQL.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.admin.audit import entries
from bridge.core.errors import CommandError
from bridge.db import people as people_db
from bridge.people import self_service
from testkit.helpers import command, is_notice_from, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, BEN, SlackBridge, running_slack_and_email_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team

CODE = re.compile(r"me confirm ([0-9]{8})")
CARLA = "U0CARLA"
CARLA_MAIL = "carla.neumann@rathaus.example"


@pytest.fixture
async def bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                 team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    slack_sim.add_user(team, CARLA, name="carla", real_name="Carla Neumann",
                       display_name="Carla", email=CARLA_MAIL)
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as running:
        yield running


@pytest.fixture
async def someone(homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    """A second user of the homeserver who is no admin either."""
    client = await homeserver.user()
    try:
        yield client
    finally:
        await client.close()


def body(reply: dict[str, Any]) -> str:
    return str(reply["content"]["body"])


def slack_code(sim: SlackSimulator, team: Any, user: str, count: int = 1) -> str:
    """The code of the app's latest direct message to the Slack user (the ``count``-th)."""
    messages = sim.im_messages(team, user)
    assert len(messages) == count, messages
    found = CODE.search(messages[-1]["text"])
    assert found, messages[-1]["text"]
    return found.group(1)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**8:08d}"


async def test_a_slack_user_is_linked_with_a_code_sent_by_direct_message(
        homeserver: Homeserver, bridge: SlackBridge, outsider: MatrixTestClient,
        team: Any) -> None:
    bot, sim = homeserver.bot, bridge.sim
    # Not an admin: the bot accepts the direct chat all the same.
    dm = await open_room(bot, outsider, direct=True)
    answer = body(await command(bot, outsider, dm, "me slack rathaus U0ANNA",
                                expect="I sent a code"))
    assert "rathaus:U0ANNA" in answer and "30 minutes" in answer and "me confirm" in answer

    # Slack: a direct message from the app that says who asked, what to do, and what if not.
    (message,) = sim.im_messages(team, ANNA)
    text = message["text"]
    assert outsider.user_id in text and "rathaus:U0ANNA" in text
    assert "If that was you" in text and "If it was not you" in text and bot in text
    assert message["bot_id"] == team.bot_id
    opened = sim.calls_to("conversations.open")
    assert opened and opened[-1]["users"] == ANNA
    code = slack_code(sim, team, ANNA)

    # Waiting: `me` shows the open claim.
    listing = body(await command(bot, outsider, dm, "me", expect="Codes waiting"))
    assert "rathaus:U0ANNA" in listing and "5 tries left" in listing

    answer = body(await command(bot, outsider, dm, f"me confirm {code}", expect="linked"))
    assert "now linked" in answer and "rathaus:U0ANNA" in answer
    listing = body(await command(bot, outsider, dm, "me", expect="Your linked identities"))
    assert "Slack `rathaus:U0ANNA` (proven by you)" in listing and "Codes waiting" not in listing

    async with bridge.hub.db.sessions() as session:
        link = await people_db.identity_for(session, "slack", f"{team.id}_{ANNA}")
        audit = await entries(session)
    assert link is not None and link.matrix_user_id == outsider.user_id
    assert link.proven_by == "self" and link.created_by == outsider.user_id
    assert any(e.action == "people-link" and e.actor == outsider.user_id for e in audit)

    # The same code again: used up.
    answer = body(await command(bot, outsider, dm, f"me confirm {code}", expect="code"))
    assert "can no longer be used" in answer


async def test_a_slack_user_named_by_address_and_the_same_dm_again(
        homeserver: Homeserver, bridge: SlackBridge, outsider: MatrixTestClient,
        team: Any) -> None:
    bot, sim = homeserver.bot, bridge.sim
    dm = await open_room(bot, outsider, direct=True)
    await command(bot, outsider, dm, f"me slack rathaus {CARLA_MAIL}", expect="I sent a code")
    assert sim.calls_to("users.lookupByEmail")[-1]["email"] == CARLA_MAIL
    first = slack_code(sim, team, CARLA)
    # Asked again: the new code replaces the old, in the same direct message.
    await command(bot, outsider, dm, f"me slack rathaus {CARLA_MAIL}", expect="I sent a code")
    second = slack_code(sim, team, CARLA, count=2)
    assert len(team.ims) == 1
    if first != second:
        answer = body(await command(bot, outsider, dm, f"me confirm {first}", expect="code"))
        assert "not right" in answer
    # Typed as it is easiest to read.
    answer = body(await command(bot, outsider, dm, f"me confirm {second[:4]} {second[4:]}",
                                expect="linked"))
    assert f"rathaus:{CARLA}" in answer

    # Nobody with that address, a bot, a deactivated account: a clear answer, nothing sent.
    answer = body(await command(bot, outsider, dm, "me slack rathaus niemand@rathaus.example",
                                expect="no user"))
    assert "users_not_found" in answer
    sim.add_user(team, "U0GONE", name="gone", real_name="Gerd Gone", deleted=True)
    answer = body(await command(bot, outsider, dm, "me slack rathaus U0GONE",
                                expect="No code was sent"))
    assert "deactivated" in answer
    assert sim.im_messages(team, "U0GONE") == []
    answer = body(await command(bot, outsider, dm, "me slack nirgendwo U0ANNA",
                                expect="workspace"))
    assert "`rathaus`" in answer


async def test_without_the_im_write_scope_the_answer_says_what_to_do(
        homeserver: Homeserver, bridge: SlackBridge, outsider: MatrixTestClient,
        team: Any) -> None:
    bot, sim = homeserver.bot, bridge.sim
    team.scopes = {"chat:write", "users:read", "channels:history"}
    dm = await open_room(bot, outsider, direct=True)
    answer = body(await command(bot, outsider, dm, "me slack rathaus U0ANNA",
                                expect="No code was sent"))
    assert "im:write" in answer
    # Nothing waits for a code that never went out.
    listing = body(await command(bot, outsider, dm, "me", expect="No identities"))
    assert "Codes waiting" not in listing
    assert sim.im_messages(team, ANNA) == []


async def test_an_address_is_linked_with_a_code_sent_by_mail(
        homeserver: Homeserver, bridge: SlackBridge, outsider: MatrixTestClient,
        sink: SmtpSink) -> None:
    bot = homeserver.bot
    address = "Erika.Muster@Landkreis.example"
    dm = await open_room(bot, outsider, direct=True)
    answer = body(await command(bot, outsider, dm, f"me email {address}",
                                expect="I sent a code"))
    assert "erika.muster@landkreis.example" in answer
    (mail,) = await sink.wait_for(lambda r: "erika.muster@landkreis.example" in r.rcpt_tos)
    message = mail.message
    assert message["From"].addresses[0].addr_spec == f"noreply@{MAIL_DOMAIN}"
    assert mail.mail_from == f"noreply@{MAIL_DOMAIN}"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "text/plain"
    text = message.get_content()
    assert outsider.user_id in text and "If it was not you" in text and bot in text
    found = CODE.search(text)
    assert found
    answer = body(await command(bot, outsider, dm, f"me confirm {found.group(1)}",
                                expect="linked"))
    assert "Email `erika.muster@landkreis.example`" in answer
    listing = body(await command(bot, outsider, dm, "me", expect="Your linked identities"))
    assert "erika.muster@landkreis.example" in listing

    # A mailbox the mail server refuses: said so, and no code waits for confirmation.
    sink.refuse["niemand@landkreis.example"] = "550 5.1.1 no such user"
    answer = body(await command(bot, outsider, dm, "me email niemand@landkreis.example",
                                expect="refused"))
    assert "niemand@landkreis.example" in answer and "550" in answer
    listing = body(await command(bot, outsider, dm, "me", expect="Your linked identities"))
    assert "Codes waiting" not in listing

    # Not an address, or one of the bridge's rooms: refused, no mail.
    before = len(sink.received)
    answer = body(await command(bot, outsider, dm, "me email kein-adresse",
                                expect="not an email address"))
    answer = body(await command(bot, outsider, dm, f"me email bauamt@{MAIL_DOMAIN}",
                                expect="rooms"))
    assert len(sink.received) == before


async def test_five_wrong_codes_end_the_claim(homeserver: Homeserver, bridge: SlackBridge,
                                              outsider: MatrixTestClient, team: Any) -> None:
    bot, sim = homeserver.bot, bridge.sim
    dm = await open_room(bot, outsider, direct=True)
    await command(bot, outsider, dm, "me slack rathaus U0ANNA", expect="I sent a code")
    code = slack_code(sim, team, ANNA)
    # Only a keyed hash of the code is kept.
    async with bridge.hub.db.sessions() as session:
        claim = await people_db.latest_claim(session, outsider.user_id)
    assert claim is not None and claim.tries_left == 5 and code not in claim.code_hash
    assert claim.expires_at - time.time() == pytest.approx(30 * 60, abs=60)
    for left in (4, 3, 2, 1):
        answer = body(await command(bot, outsider, dm, f"me confirm {wrong(code)}",
                                    expect="not right"))
        assert f"{left} {'try' if left == 1 else 'tries'} left" in answer
    answer = body(await command(bot, outsider, dm, f"me confirm {wrong(code)}",
                                expect="not right"))
    assert "last try" in answer and "Ask for a new one" in answer
    # Dead: not even the right code works now.
    answer = body(await command(bot, outsider, dm, f"me confirm {code}", expect="code"))
    assert "can no longer be used" in answer and "me slack" in answer
    # Not a code at all: said so, and it costs nothing.
    answer = body(await command(bot, outsider, dm, "me confirm abc", expect="not a code"))
    async with bridge.hub.db.sessions() as session:
        assert await people_db.identity_for(session, "slack", f"{team.id}_{ANNA}") is None

    # A new code works.
    await command(bot, outsider, dm, "me slack rathaus U0ANNA", expect="I sent a code")
    code = slack_code(sim, team, ANNA, count=2)
    await command(bot, outsider, dm, f"me confirm {code}", expect="now linked")


async def test_a_code_expires_after_thirty_minutes(homeserver: Homeserver,
                                                   bridge: SlackBridge,
                                                   outsider: MatrixTestClient,
                                                   team: Any) -> None:
    bot, sim = homeserver.bot, bridge.sim
    dm = await open_room(bot, outsider, direct=True)
    await command(bot, outsider, dm, "me slack rathaus U0ANNA", expect="I sent a code")
    code = slack_code(sim, team, ANNA)
    bridge.hub.clock = lambda: time.time() + 29 * 60
    await command(bot, outsider, dm, "me", expect="Codes waiting")
    bridge.hub.clock = lambda: time.time() + 31 * 60
    answer = body(await command(bot, outsider, dm, f"me confirm {code}", expect="expired"))
    assert "30 minutes" in answer and "me slack" in answer
    listing = body(await command(bot, outsider, dm, "me", expect="No identities"))
    assert "Codes waiting" not in listing


async def test_own_links_only_are_unlinked_and_others_are_refused(
        homeserver: Homeserver, bridge: SlackBridge, outsider: MatrixTestClient,
        someone: MatrixTestClient, team: Any) -> None:
    bot, sim = homeserver.bot, bridge.sim
    dm = await open_room(bot, outsider, direct=True)
    await command(bot, outsider, dm, "me slack rathaus U0ANNA", expect="I sent a code")
    await command(bot, outsider, dm, f"me confirm {slack_code(sim, team, ANNA)}",
                  expect="now linked")

    # Someone else cannot have a code sent to Anna, nor remove her link.
    other = await open_room(bot, someone, direct=True)
    answer = body(await command(bot, someone, other, "me slack rathaus U0ANNA",
                                expect="already linked"))
    assert "no code was sent" in answer and outsider.user_id not in answer
    assert len(sim.im_messages(team, ANNA)) == 1
    answer = body(await command(bot, someone, other, "me unlink slack rathaus:U0ANNA",
                                expect="not linked to your account"))
    async with bridge.hub.db.sessions() as session:
        assert await people_db.identity_for(session, "slack", f"{team.id}_{ANNA}")

    # Asking again for one's own: already linked, nothing sent.
    await command(bot, outsider, dm, "me slack rathaus U0ANNA", expect="already linked to "
                  "your account")
    assert len(sim.im_messages(team, ANNA)) == 1

    # Unlinked by its owner, written either way.
    answer = body(await command(bot, outsider, dm, "me unlink slack rathaus U0ANNA",
                                expect="Unlinked"))
    assert "rathaus:U0ANNA" in answer
    await command(bot, outsider, dm, "me", expect="No identities")
    async with bridge.hub.db.sessions() as session:
        assert await people_db.identity_for(session, "slack", f"{team.id}_{ANNA}") is None
        audit = await entries(session)
    assert any(e.action == "people-unlink" and e.actor == outsider.user_id for e in audit)


async def test_codes_are_limited_per_person_and_per_identity(
        homeserver: Homeserver, bridge: SlackBridge, outsider: MatrixTestClient,
        team: Any) -> None:
    bot, sim = homeserver.bot, bridge.sim
    dm = await open_room(bot, outsider, direct=True)
    for _ in range(3):
        await command(bot, outsider, dm, "me slack rathaus U0ANNA", expect="I sent a code")
    answer = body(await command(bot, outsider, dm, "me slack rathaus U0ANNA",
                                expect="no code was sent"))
    assert "3 codes within the last hour" in answer and "ask again at" in answer
    assert len(sim.im_messages(team, ANNA)) == 3
    for _ in range(2):
        await command(bot, outsider, dm, "me slack rathaus U0BEN", expect="I sent a code")
    answer = body(await command(bot, outsider, dm, "me slack rathaus U0BEN",
                                expect="no code was sent"))
    assert "You have asked for 5 codes" in answer
    assert len(sim.im_messages(team, BEN)) == 2
    # An hour later one may ask again.
    bridge.hub.clock = lambda: time.time() + 61 * 60
    await command(bot, outsider, dm, "me slack rathaus U0BEN", expect="I sent a code")


async def test_non_admins_get_a_direct_chat_and_nothing_more(
        homeserver: Homeserver, bridge: SlackBridge, admin: MatrixTestClient,
        outsider: MatrixTestClient, someone: MatrixTestClient) -> None:
    bot = homeserver.bot
    dm = await outsider.create_room(invite=[bot], is_direct=True)
    greeting = await outsider.wait_for_event(dm, is_notice_from(bot, "Hello"), timeout=40)
    assert "`help me`" in greeting["content"]["body"]
    answer = body(await command(bot, outsider, dm, "status", expect="only bridge admins"))
    assert "bridge.admins" in answer
    await command(bot, outsider, dm, "people list", expect="only bridge admins")
    await command(bot, outsider, dm, "link slack C0BAUAMT", expect="only bridge admins")
    listing = body(await command(bot, outsider, dm, "help", expect="Bridge bot commands"))
    assert "`me confirm <code>`" in listing and "`status`" not in listing

    # A room that is not a direct chat: declined, with the reason.
    room = await outsider.create_room(invite=[bot], name="Arbeitsgruppe")
    event = await outsider.wait_for_membership(room, bot, "leave", timeout=15)
    assert "bridge.admins" in event["content"].get("reason", "")
    # Flagged as direct, but with someone else in it: the bot leaves again, saying why.
    room = await outsider.create_room(invite=[bot, someone.user_id], is_direct=True)
    event = await outsider.wait_for_membership(room, bot, "leave", timeout=15)
    assert "with others" in event["content"].get("reason", "")

    # In a room an admin opened, `me` is not answered there: codes are private.
    shared = await open_room(bot, admin, name="Bauamt")
    await admin.invite(shared, outsider.user_id)
    await outsider.join(shared)
    await command(bot, outsider, shared, "!bridge me slack rathaus U0ANNA",
                  expect="direct chat")

    # Users of other homeservers: refused.
    invite = await bridge.hub._bot_membership(
        None, "!elsewhere:bridge.test", "@eve:elsewhere.example",
        {"membership": "invite", "is_direct": True})
    assert [d.kind for d in invite] == ["reject_invite"]
    with pytest.raises(CommandError, match="Only users of"):
        await self_service.own_links(bridge.hub, "@eve:elsewhere.example")
