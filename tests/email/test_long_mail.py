"""A mail too long for one Matrix event still reaches the room: its beginning, and the whole
text as a file from the same puppet."""

from __future__ import annotations

from testkit.matrix_client import MatrixTestClient
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import EmailBridge
from tests.email.test_email_bridge import _email_room, _mail, _send

CONTINUED = "(continued in the attached file)"


async def test_a_200_kb_mail_reaches_the_room_with_the_full_text_attached(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    lines = [f"Zeile {n:05d}: Stellungnahme zum Bebauungsplan, Abschnitt Grünflächen."
             for n in range(3000)]
    text = "\n".join(lines)
    assert len(text.encode()) > 200_000
    mail = _mail("Erika Mustermann <erika@stadt.example>", address, "Stellungnahme", text)
    await _send(email_bridge, mail)

    first = await admin.wait_for_event(
        room, lambda e: CONTINUED in e.get("content", {}).get("body", ""), timeout=30)
    assert first["sender"] == "@email_erika=40stadt.example:bridge.test"
    body = first["content"]["body"]
    assert body.startswith("Stellungnahme\n") and "Zeile 00000:" in body
    assert "Zeile 02999" not in body
    attachment = await admin.wait_for_event(
        room, lambda e: e.get("content", {}).get("msgtype") == "m.file", timeout=30)
    assert attachment["sender"] == first["sender"]
    assert attachment["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == \
        first["event_id"]
    data = await email_bridge.hub.download_media(attachment["content"]["url"])
    assert lines[-1].encode() in data and lines[0].encode() in data
    assert attachment["content"]["info"]["size"] == len(data)

    # The mapping points at the first part: a reply from Matrix is threaded to the mail.
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "Eingang bestätigt.",
        "m.relates_to": {"rel_type": "m.thread", "event_id": first["event_id"]}})
    answers = await sink.wait_for(
        lambda r: "Eingang bestätigt" in r.message.get_body(("plain",)).get_content())
    assert answers[0].message["In-Reply-To"] == mail["Message-ID"]


async def test_a_long_plain_text_mail_that_fits_as_text_arrives_whole_in_one_message(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    # 50 KB of text: with an HTML copy beside it the event would pass the homeserver's
    # limit; the text alone fits, so nothing is cut and no file is attached.
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    lines = [f"Absatz {n:04d}: Die Stellungnahme des Bauamts zum Bebauungsplan folgt."
             for n in range(700)]
    text = "\n".join(lines)
    assert 45_000 < len(text.encode()) < 55_000
    await _send(email_bridge, _mail("Erika Mustermann <erika@stadt.example>", address,
                                    "Stellungnahme", text))
    message = await admin.wait_for_event(
        room, lambda e: "Absatz 0699" in e.get("content", {}).get("body", ""), timeout=30)
    assert message["content"]["body"].startswith("Stellungnahme\n\nAbsatz 0000:")
    assert CONTINUED not in message["content"]["body"]
    timeline = [e for e in await admin.messages(room) if e.get("type") == "m.room.message"]
    assert not [e for e in timeline if e["content"].get("msgtype") == "m.file"]
