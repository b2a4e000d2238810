"""One room, two links: a Slack channel and an email address. Every message reaches every
other side exactly once, and never comes back to where it came from.

Slack -> Matrix -> email, email -> Matrix -> Slack, Matrix -> both; real Synapse, the Slack
simulator, real SMTP both ways; SQLite and PostgreSQL.

The fixtures of both networks' folders are imported below to be used together.
"""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest

from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import Received, SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import (
    ANNA,
    CHANNEL,
    SlackBridge,
    linked_room,
    running_slack_and_email_bridge,
)
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import count_in_slack, has_body, posted, room_events

ERIKA = "erika@stadt.example"


@pytest.fixture
async def both_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                      team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as running:
        yield running


def plain(received: Received) -> str:
    body = received.message.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


def mails_with(sink: SmtpSink, text: str) -> list[Received]:
    return [r for r in sink.received if text in plain(r)]


async def send_mail(port: int, sender: str, to: str, subject: str, text: str) -> None:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="stadt.example")
    msg.set_content(text)

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(msg)

    await asyncio.to_thread(send)


async def test_slack_email_and_matrix_each_reach_the_others_once(
        both_bridge: SlackBridge, admin: MatrixTestClient, team: Any, sink: SmtpSink) -> None:
    sim = both_bridge.sim
    bot = both_bridge.homeserver.bot
    room = await linked_room(both_bridge, admin)
    localpart = f"bauamt-{uuid.uuid4().hex[:6]}"
    await command(bot, admin, room, f"!bridge link email {localpart}", expect="Linked")
    await command(bot, admin, room, f"!bridge email subscribe {ERIKA}", expect="Subscribed")
    address = f"{localpart}@{MAIL_DOMAIN}"

    # Slack -> Matrix -> email.
    await sim.post_message(team, CHANNEL, ANNA, text="Gruss aus Slack")
    from_slack = await admin.wait_for_event(room, has_body("Gruss aus Slack"), timeout=15)
    assert from_slack["sender"] == f"@slack_{team.id.lower()}_{ANNA.lower()}:bridge.test"
    mail = (await sink.wait_for(lambda r: "Gruss aus Slack" in plain(r)))[0]
    assert mail.rcpt_tos == [ERIKA]
    assert mail.message["From"].addresses[0].display_name == "Anna"

    # Email -> Matrix -> Slack.
    await send_mail(both_bridge.smtp_port, f"Erika Mustermann <{ERIKA}>",  # type: ignore[attr-defined]
                    address, "Rueckfrage", "Gruss aus der Mail")
    from_mail = await admin.wait_for_event(room, has_body("Gruss aus der Mail"), timeout=20)
    assert from_mail["sender"].startswith("@email_")
    in_slack = await posted(sim, team, "Gruss aus der Mail")
    assert in_slack["username"] == "Erika Mustermann"

    # Matrix -> both.
    await admin.send_text(room, "Gruss aus Matrix")
    await posted(sim, team, "Gruss aus Matrix")
    await sink.wait_for(lambda r: "Gruss aus Matrix" in plain(r))

    # A last message from Slack, relayed after everything before it: once it is mailed and
    # in the room, every echo that could have happened has happened.
    await sim.post_message(team, CHANNEL, ANNA, text="Schlusswort aus Slack")
    await admin.wait_for_event(room, has_body("Schlusswort aus Slack"), timeout=15)
    await sink.wait_for(lambda r: "Schlusswort aus Slack" in plain(r))
    await admin.send_text(room, "Schlusswort aus Matrix")
    await posted(sim, team, "Schlusswort aus Matrix")
    await sink.wait_for(lambda r: "Schlusswort aus Matrix" in plain(r))

    events = await room_events(admin, room)
    for text in ("Gruss aus Slack", "Gruss aus der Mail", "Gruss aus Matrix"):
        copies = [e for e in events if e["type"] == "m.room.message"
                  and text in e["content"].get("body", "")]
        assert len(copies) == 1, (text, [e["sender"] for e in copies])
        # Slack has it once: the original or the app's post of it.
        assert count_in_slack(sim, team, text) == 1, text
    # Erika gets what Slack and Matrix said, once each, and not her own mail back.
    assert len(mails_with(sink, "Gruss aus Slack")) == 1
    assert len(mails_with(sink, "Gruss aus Matrix")) == 1
    assert mails_with(sink, "Gruss aus der Mail") == []
    # Anna's own message was not posted back by the app.
    assert not [m for m in sim.messages(team, CHANNEL)
                if m.get("bot_id") and "Gruss aus Slack" in str(m.get("text"))]
