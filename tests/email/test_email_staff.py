"""Staff on email hear each other: a subscriber's mail reaches the room's other subscribers
(not its author, not those it was addressed to directly), in the room's mail thread."""

from __future__ import annotations

from email.utils import make_msgid

from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import EmailBridge
from tests.email.test_email_bridge import _body, _email_room, _mail, _send

ERIKA, MAX, OTTO = "erika@stadt.example", "max@stadt.example", "otto@stadt.example"


async def test_a_subscribers_mail_reaches_the_other_subscribers_once(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, ERIKA, MAX, OTTO)

    first_id = make_msgid(domain="stadt.example")
    await _send(email_bridge, _mail(f"Erika <{ERIKA}>", address, "Baustelle Nord",
                                    "Der Kran kommt am Montag.", message_id=first_id))
    copies = await sink.wait_for(lambda r: r.rcpt_tos[0] in (MAX, OTTO), count=2)
    assert sorted(r.rcpt_tos[0] for r in copies) == [MAX, OTTO]
    for copy in copies:
        msg = copy.message
        assert "Der Kran kommt am Montag." in msg.get_body(("plain",)).get_content()
        assert msg["From"].addresses[0].display_name.startswith("Erika")
        assert msg["From"].addresses[0].addr_spec == address
        # In the thread the mail started: the others' mail clients put it there.
        assert msg["In-Reply-To"] == first_id
        assert first_id in msg["References"]

    # Max answers in the thread, with Otto in Cc: Otto has it already and gets no second
    # copy from the bridge; Erika gets it, threaded with the rest.
    reply_to = copies[0].message["Reply-To"].addresses[0].addr_spec
    second_id = make_msgid(domain="stadt.example")
    await _send(email_bridge, _mail(f"Max <{MAX}>", reply_to, "Re: Baustelle Nord",
                                    "Ich sage dem Bauhof Bescheid.", message_id=second_id,
                                    Cc=OTTO, In_Reply_To=copies[0].message["Message-ID"]),
                recipients=[reply_to])
    [to_erika] = await sink.wait_for(
        lambda r: r.rcpt_tos == [ERIKA] and "Bauhof" in r.raw.decode(errors="replace"))
    assert first_id in to_erika.message["References"]

    # A message from Matrix after both, in the thread: every subscriber's lane has it
    # after anything the mails caused, so counting each one's mail is safe now.
    root = await admin.wait_for_event(room, _body("Der Kran kommt"), timeout=20)
    await admin.wait_for_event(room, _body("Bauhof"), timeout=20)
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "Danke euch beiden.",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root["event_id"]}})
    await sink.wait_for(lambda r: "Danke euch" in r.raw.decode(errors="replace"), count=3)

    def subjects(address: str) -> list[str]:
        return [r.message.get_body(("plain",)).get_content().split("\n")[0]
                for r in sink.to(address)]

    assert len(sink.to(ERIKA)) == 2, subjects(ERIKA)  # Max's reply, the Matrix message
    assert len(sink.to(MAX)) == 2, subjects(MAX)  # Erika's mail, the Matrix message
    assert len(sink.to(OTTO)) == 2, subjects(OTTO)  # Erika's mail, the Matrix message
    matrix_reply = next(r for r in sink.to(OTTO) if b"Danke euch" in r.raw)
    assert matrix_reply.message["In-Reply-To"] == first_id  # one thread for all of it

    # Matrix has each mail once.
    history = await admin.messages(room, limit=50)
    assert sum("Der Kran kommt" in (e["content"].get("body") or "") for e in history) == 1
    assert sum("Bauhof" in (e["content"].get("body") or "") for e in history) == 1


async def test_a_room_has_one_email_address(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None)
    reply = await command(homeserver.bot, admin, room, "!bridge link email zweite-adresse")
    body = reply["content"]["body"]
    assert f"already linked to Email `{address.split('@')[0]}`" in body, body
    assert "can have 1 email link" in body
    assert await email_bridge.email.link_for("zweite-adresse") is None
