"""Encrypted rooms (issue 13), checked with a real encrypting client (matrix-nio[e2e]) against
the suite's real Synapse, the Slack simulator and real SMTP, on SQLite and PostgreSQL.

nio creates an encrypted room, invites the bot and links the room; its encrypted messages
reach Slack and email in plain form, and what comes from Slack and email arrives as
``m.room.encrypted`` events from the puppets that nio decrypts.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mautrix.crypto.attachments import decrypt_attachment
from mautrix.types import EventType, RoomID
from sqlalchemy import select

from bridge.admin import rooms
from bridge.admin.audit import Actor
from bridge.db.models import OutboxItem
from testkit.nio_client import EncryptingUser, Seen
from testkit.slack_sim import SlackSimulator
from testkit.slack_sim.images import solid_png
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.e2ee.conftest import encrypted_bridge
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import count_in_slack, posted
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
    await command(user, bot, room, f"!bridge link slack {CHANNEL}", "Linked")
    told = await user.wait_for(room, notice(bot, "leaves end-to-end encryption"), timeout=WAIT)
    assert told.decrypted and "Slack" in told.content["body"]
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


async def test_relations_and_files_in_an_encrypted_room(
        e2ee_bridge: SlackBridge, nio_users: Callable[..., Any], team: Any,
        sink: SmtpSink) -> None:
    """Edits, replies, threads, reactions, redactions and encrypted attachments from the
    encrypting client reach Slack as they would from an unencrypted room; a Slack file
    arrives as an encrypted attachment (``file``, no ``url``) that the client decrypts."""
    sim: SlackSimulator = e2ee_bridge.sim
    user: EncryptingUser = await nio_users()
    room, _address = await encrypted_linked_room(e2ee_bridge, user)

    top_id = await user.send_text(room, "Frage aus dem verschlüsselten Raum")
    top = await posted(sim, team, "Frage aus dem verschlüsselten Raum")
    await user.send(room, {"msgtype": "m.text", "body": "Antwort per Reply",
                           "m.relates_to": {"m.in_reply_to": {"event_id": top_id}}})
    await posted(sim, team, "Antwort per Reply", thread_ts=top["ts"])
    await user.send(room, {"msgtype": "m.text", "body": "Antwort im Thread",
                           "m.relates_to": {"rel_type": "m.thread", "event_id": top_id,
                                            "is_falling_back": True,
                                            "m.in_reply_to": {"event_id": top_id}}})
    in_thread = await posted(sim, team, "Antwort im Thread", thread_ts=top["ts"])
    edit_content = {
        "msgtype": "m.text", "body": "* Frage (korrigiert)",
        "m.new_content": {"msgtype": "m.text", "body": "Frage (korrigiert)", "m.mentions": {}},
        "m.relates_to": {"rel_type": "m.replace", "event_id": top_id}}
    await user.send(room, edit_content)
    await sim.wait_for(lambda: (sim.message(team, CHANNEL, top["ts"]) or {}).get("text")
                       == "Frage (korrigiert)", timeout=WAIT)
    # The edit was relayed as the client wrote it, not as a parser rebuilt it.
    async with e2ee_bridge.hub.db.sessions() as session:
        relayed = [json.loads(row)["event"] for row in await session.scalars(
            select(OutboxItem.payload).where(OutboxItem.room_id == room,
                                             OutboxItem.network == "slack",
                                             # (not what Slack sent in: kind "inbound")
                                             OutboxItem.kind == "relay"))]
    edit = next(e for e in relayed if e["content"].get("body") == "* Frage (korrigiert)")
    assert edit["type"] == "m.room.message" and edit["content"] == edit_content
    assert not [e for e in relayed if e["type"] == "m.room.encrypted"]
    await user.send(room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": top_id,
                                            "key": "👍"}}, event_type="m.reaction")

    def reactions() -> set[str]:
        message = sim.message(team, CHANNEL, top["ts"]) or {}
        return {r["name"] for r in message.get("reactions", [])}

    await sim.wait_for(lambda: reactions() == {"+1"}, timeout=WAIT)

    # An encrypted image (as Element sends it: by "file") arrives in Slack intact.
    png = solid_png("verschluesselt", 48)
    await user.send_encrypted_file(room, png, "plan.png", "image/png")
    await sim.wait_for(lambda: [f for f in sim.uploaded_files(team) if f["name"] == "plan.png"],
                       timeout=WAIT)
    assert [f["data"] for f in sim.uploaded_files(team) if f["name"] == "plan.png"] == [png]

    # A redaction (never encrypted) deletes the Slack copy.
    thread_event = next(s for s in user.events if s.room_id == room
                        and s.content.get("body") == "Antwort im Thread")
    await user.client.room_redact(room, thread_event.event_id)
    await sim.wait_for(lambda: sim.message(team, CHANNEL, in_thread["ts"]) is None
                       and not sim.replies(team, CHANNEL, top["ts"])[1:], timeout=WAIT)

    # Slack -> Matrix: a file arrives encrypted, by "file".
    pdf = b"%PDF-1.4 Lageplan " + bytes(range(256)) * 8
    await sim.share_file(team, CHANNEL, ANNA, "lageplan.pdf", pdf, "application/pdf")
    shared = await user.wait_for(room, lambda s: s.content.get("body") == "lageplan.pdf",
                                 timeout=WAIT)
    assert shared.decrypted
    assert "url" not in shared.content and shared.content["file"]["url"].startswith("mxc://")
    file = shared.content["file"]
    response = await user.client.download(file["url"])
    data = decrypt_attachment(response.body, file["key"]["k"], file["hashes"]["sha256"],
                              file["iv"])
    assert data == pdf


async def test_a_second_device_reads_the_bridge_s_new_messages(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
        nio_users: Callable[..., Any], team: Any, sink: SmtpSink, tmp_path: Path) -> None:
    """A device that logs in later reads the bridge's new messages.

    The homeserver pushes the news of the new device (MSC3202 device lists); Synapse drops
    some of it (while it counts the bridge as down), and then the bridge's periodic re-read
    of devices (encryption.device_refresh_seconds, here a few seconds) finds the device.
    Either way the bridge's next session includes it."""
    async with encrypted_bridge(homeserver, database_url, slack_sim, team, sink,
                                device_refresh_seconds=3) as bridge:
        user: EncryptingUser = await nio_users()
        room, _address = await encrypted_linked_room(bridge, user)
        await slack_sim.post_message(team, CHANNEL, ANNA, text="Vor dem zweiten Gerät")
        await user.wait_for(room, body("Vor dem zweiten Gerät"), timeout=WAIT)

        second = await EncryptingUser.login(homeserver.synapse, user.user_id,
                                            user.password, tmp_path / "second-device")
        try:
            assert second.device_id != user.device_id
            crypto = bridge.bridge.crypto  # type: ignore[union-attr]
            assert crypto is not None
            for _ in range(600):  # (Synapse may hold transactions a while on a busy machine)
                devices = await crypto.store.get_devices(user.user_id) or {}
                if second.device_id in devices:
                    break
                await asyncio.sleep(0.1)
            assert second.device_id in devices, (
                "the bridge never heard of the second device\n"
                + homeserver.appservice_report())
            await slack_sim.post_message(team, CHANNEL, ANNA, text="Nach dem zweiten Gerät")
            seen = await second.wait_for(room, body("Nach dem zweiten Gerät"), timeout=WAIT)
            assert seen.decrypted
            await second.send_text(room, "Vom zweiten Gerät")
            await posted(slack_sim, team, "Vom zweiten Gerät")
        finally:
            await second.close()


async def test_after_a_restart_the_bridge_still_decrypts_and_encrypts(
        e2ee_bridge: SlackBridge, nio_users: Callable[..., Any], team: Any,
        sink: SmtpSink) -> None:
    """Its sessions are in the database: after a restart the session the client already
    shared still decrypts, and what the bridge posts is still encrypted."""
    sim: SlackSimulator = e2ee_bridge.sim
    user: EncryptingUser = await nio_users()
    room, _address = await encrypted_linked_room(e2ee_bridge, user)
    await user.send_text(room, "Vor dem Neustart aus Matrix")
    await posted(sim, team, "Vor dem Neustart aus Matrix")
    await sim.post_message(team, CHANNEL, ANNA, text="Vor dem Neustart aus Slack")
    await user.wait_for(room, body("Vor dem Neustart aus Slack"), timeout=WAIT)

    await e2ee_bridge.restart()
    await e2ee_bridge.connected()
    # The session the client already shared with the bridge is still known to it.
    await user.send_text(room, "Nach dem Neustart aus Matrix")
    await posted(sim, team, "Nach dem Neustart aus Matrix")
    await sim.post_message(team, CHANNEL, ANNA, text="Nach dem Neustart aus Slack")
    after = await user.wait_for(room, body("Nach dem Neustart aus Slack"), timeout=WAIT)
    assert after.decrypted
    # Nothing was left undecryptable on either side.
    assert not [s for s in user.events if s.room_id == room and s.type == "m.room.encrypted"]
    assert not [m for m in sim.messages(team, CHANNEL) if "could not be bridged"
                in str(m.get("text"))]


async def test_a_message_whose_key_the_bridge_never_got(
        e2ee_bridge: SlackBridge, nio_users: Callable[..., Any], team: Any,
        sink: SmtpSink) -> None:
    """Not relayed as garbage: the bridge asks the sender's device for the key, relays the
    message once it is shared; one whose key never comes is announced once, naming the
    sender, and not relayed."""
    sim: SlackSimulator = e2ee_bridge.sim
    bot = e2ee_bridge.homeserver.bot
    user: EncryptingUser = await nio_users()
    room, _address = await encrypted_linked_room(e2ee_bridge, user)

    user.withhold_from(room, bot)
    await user.send_text(room, "Ohne Schlüssel gesendet")
    request = await _key_request(user, room)
    await asyncio.sleep(1)
    assert count_in_slack(sim, team, "Ohne Schlüssel") == 0  # nothing relayed meanwhile
    await user.answer_key_request(request)
    await posted(sim, team, "Ohne Schlüssel gesendet")
    # By mail too, once.
    await sink.wait_for(lambda r: "Ohne Schlüssel gesendet" in plain(r), timeout=WAIT)
    await asyncio.sleep(1)
    assert len([r for r in sink.received if "Ohne Schlüssel gesendet" in plain(r)]) == 1
    assert count_in_slack(sim, team, "Ohne Schlüssel gesendet") == 1

    # A second session that the bridge never gets: after encryption.key_wait_seconds (8 s
    # here) the room is told once, naming the sender; nothing reaches Slack.
    user.withhold_from(room, bot)
    await user.send_text(room, "Nie entschlüsselbar")
    told = await user.wait_for(room, notice(bot, "could not be bridged"), timeout=WAIT)
    assert told.decrypted and user.user_id in told.content["body"]
    await user.send_text(room, "Danach wieder normal")  # (a new session, again withheld)
    await asyncio.sleep(1)
    assert count_in_slack(sim, team, "Nie entschlüsselbar") == 0
    assert len([s for s in user.events if s.room_id == room
                and notice(bot, "could not be bridged")(s)]) <= 2


async def _key_request(user: EncryptingUser, room: str, timeout: float = WAIT) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for request in user.key_requests:
            if request.room_id == room:
                return request
        assert loop.time() < deadline, "the bridge never asked for the missing key"
        await asyncio.sleep(0.1)


async def test_commands_in_an_encrypted_direct_chat_and_encrypted_new_rooms(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink, nio_users: Callable[..., Any]) -> None:
    """The bot answers commands in an encrypted direct chat, encrypted; with
    encryption.default the rooms the bridge creates are encrypted."""
    async with encrypted_bridge(homeserver, database_url, slack_sim, team, sink,
                                default=True) as bridge:
        bot = homeserver.bot
        user: EncryptingUser = await nio_users()
        dm = await user.create_encrypted_room([bot], None, is_direct=True)
        hello = await user.wait_for(dm, notice(bot, "Hello"), timeout=WAIT)
        assert hello.decrypted
        await command(user, bot, dm, "help", "Bridge bot commands")
        await command(user, bot, dm, "ping", "Pong")

        localpart = f"neu-{uuid.uuid4().hex[:6]}"
        created = await rooms.find_or_create_room(bridge.hub, Actor(None, "test"), localpart,
                                                  "Neuer Raum", admins=[user.user_id])
        assert bridge.bridge is not None
        state = await bridge.bridge.matrix.bot_intent.get_state_event(
            RoomID(created.room_id), EventType.ROOM_ENCRYPTION)
        assert str(state.algorithm) == "m.megolm.v1.aes-sha2"


async def test_a_double_puppet_writes_encrypted(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink, nio_users: Callable[..., Any]) -> None:
    """A linked person's Slack message, sent as their own Matrix account (double puppeting),
    is encrypted in an encrypted room like the puppets' are, and is not relayed back."""
    from tests.test_double_puppet import link, team_remote

    async with encrypted_bridge(homeserver, database_url, slack_sim, team, sink,
                                double_puppet=True) as bridge:
        admin: EncryptingUser = await nio_users()
        anna: EncryptingUser = await nio_users(admin=False)
        room, _address = await encrypted_linked_room(bridge, admin)
        await admin.client.room_invite(room, anna.user_id)
        await anna.client.join(room)
        await admin.wait_for(room, lambda s: s.type == "m.room.member"
                             and s.sender == anna.user_id, timeout=WAIT)
        await link(bridge, anna.user_id, "slack", team_remote(team, ANNA), "Anna")

        await slack_sim.post_message(team, CHANNEL, ANNA, text="Als Anna selbst")
        seen = await admin.wait_for(room, body("Als Anna selbst"), timeout=WAIT)
        assert seen.sender == anna.user_id and seen.decrypted
        await sink.wait_for(lambda r: "Als Anna selbst" in plain(r))
        # A message after it from Matrix: once it is in Slack, an echo would be there too.
        await admin.send_text(room, "Danach aus Matrix")
        await posted(slack_sim, team, "Danach aus Matrix")
        assert count_in_slack(slack_sim, team, "Als Anna selbst") == 1
