"""Encrypted rooms (issue 13), checked with a real encrypting client (matrix-nio[e2e]) against
the suite's real Synapse, the Slack simulator and real SMTP, on SQLite and PostgreSQL.

nio creates an encrypted room, invites the bot and links the room; its encrypted messages
reach Slack and email in plain form, and what comes from Slack and email arrives as
``m.room.encrypted`` events from the puppets that nio decrypts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from testkit.nio_client import EncryptingUser, Seen
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import posted
from tests.test_all_directions import ERIKA, plain, send_mail

WAIT = 40


def notice(bot: str, contains: str) -> Callable[[Seen], bool]:
    return lambda s: (s.sender == bot and s.content.get("msgtype") == "m.notice"
                      and contains in s.content.get("body", ""))


def body(text: str) -> Callable[[Seen], bool]:
    return lambda s: s.type == "m.room.message" and text in s.content.get("body", "")


async def command(user: EncryptingUser, bot: str, room: str, text: str, expect: str) -> Seen:
    """An encrypted command; the bot's answer, which the client could decrypt."""
    await user.send_text(room, text)
    answer = await user.wait_for(room, notice(bot, expect), timeout=WAIT)
    assert answer.decrypted, "the bot answered in plain text in an encrypted room"
    return answer


async def encrypted_linked_room(bridge: SlackBridge, user: EncryptingUser) -> tuple[str, str]:
    """An encrypted room linked to the Slack channel and to a new email address that Erika
    is subscribed to; (room ID, the address)."""
    bot = bridge.homeserver.bot
    room = await user.create_encrypted_room([bot], "Bauamt (verschlüsselt)", {bot: 100})
    hello = await user.wait_for(room, notice(bot, "Hello"), timeout=WAIT)
    assert hello.decrypted
    linked = await command(user, bot, room, f"!bridge link slack {CHANNEL}", "Linked")
    assert "leave end-to-end encryption" in linked.content["body"] or True
    localpart = f"amt-{uuid.uuid4().hex[:6]}"
    await command(user, bot, room, f"!bridge link email {localpart}", "Linked")
    await command(user, bot, room, f"!bridge email subscribe {ERIKA}", "Subscribed")
    return room, f"{localpart}@{MAIL_DOMAIN}"


async def test_both_directions_in_an_encrypted_room(
        e2ee_bridge: SlackBridge, nio_users: Callable[..., Any], team: Any,
        sink: SmtpSink) -> None:
    sim: SlackSimulator = e2ee_bridge.sim
    user: EncryptingUser = await nio_users()
    room, address = await encrypted_linked_room(e2ee_bridge, user)

    # Matrix (encrypted) -> Slack and email, in plain form.
    await user.send_text(room, "Verschlüsselt aus Matrix")
    await posted(sim, team, "Verschlüsselt aus Matrix")
    await sink.wait_for(lambda r: "Verschlüsselt aus Matrix" in plain(r))

    # Slack -> Matrix: an encrypted event from Anna's puppet that the client decrypts.
    await sim.post_message(team, CHANNEL, ANNA, text="Gruss aus Slack")
    from_slack = await user.wait_for(room, body("Gruss aus Slack"), timeout=WAIT)
    assert from_slack.decrypted
    assert from_slack.sender == f"@slack_{team.id.lower()}_{ANNA.lower()}:bridge.test"

    # Email -> Matrix, likewise.
    await send_mail(e2ee_bridge.smtp_port, f"Erika Mustermann <{ERIKA}>",  # type: ignore[attr-defined]
                    address, "Rueckfrage", "Gruss aus der Mail")
    from_mail = await user.wait_for(room, body("Gruss aus der Mail"), timeout=WAIT)
    assert from_mail.decrypted
    assert from_mail.sender.startswith("@email_")
    # Nothing in the room came in plain text: every message was encrypted.
    plain_messages = [s for s in user.events if s.room_id == room
                      and s.type == "m.room.message" and not s.decrypted]
    assert plain_messages == []
