"""Email <-> Matrix end to end: real SMTP both ways, a real Synapse, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest

from bridge.email.addresses import message_id_for
from testkit.helpers import command, is_notice_from, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN, EmailBridge


async def _email_room(homeserver: Homeserver, admin: MatrixTestClient,
                      localpart: str | None = None, *subscribers: str) -> tuple[str, str]:
    room = await open_room(homeserver.bot, admin, name="Bauamt", bot_power=100)
    localpart = localpart or f"amt-{uuid.uuid4().hex[:6]}"
    reply = await command(homeserver.bot, admin, room, f"!bridge link email {localpart}",
                          expect="Linked")
    address = f"{localpart}@{MAIL_DOMAIN}"
    assert address in reply["content"]["body"]
    for subscriber in subscribers:
        await command(homeserver.bot, admin, room, f"!bridge email subscribe {subscriber}",
                      expect="Subscribed")
    return room, address


def _mail(sender: str, to: str, subject: str, body: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = headers.pop("message_id", make_msgid(domain="stadt.example"))
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


async def _send(bridge: EmailBridge, msg: EmailMessage,
                recipients: list[str] | None = None) -> dict[str, Any]:
    def send() -> dict[str, Any]:
        with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as client:
            return client.send_message(msg, to_addrs=recipients)

    return await asyncio.to_thread(send)


async def _smtp_error(bridge: EmailBridge, msg: EmailMessage | bytes,
                      recipients: list[str], sender: str = "x@stadt.example") -> tuple[int, str]:
    def send() -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as client:
            try:
                if isinstance(msg, bytes):
                    client.sendmail(sender, recipients, msg)
                else:
                    client.send_message(msg, to_addrs=recipients)
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                return code, text.decode()
            except smtplib.SMTPResponseException as exc:
                return exc.smtp_code, exc.smtp_error.decode()
        return 250, ""

    return await asyncio.to_thread(send)


def _body(text: str) -> Any:
    return lambda e: text in e.get("content", {}).get("body", "")


async def test_room_message_reaches_subscribers_by_mail(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example",
                                      "max@stadt.example")
    await admin.send_text(room, "Die Sitzung beginnt um 10 Uhr.")
    mails = await sink.wait_for(lambda r: True, count=2)
    assert sorted(m.rcpt_tos[0] for m in mails) == ["erika@stadt.example", "max@stadt.example"]
    msg = mails[0].message
    assert msg["From"].addresses[0].addr_spec == address
    assert msg["From"].addresses[0].display_name.startswith("admin")
    assert msg["Reply-To"].addresses[0].addr_spec.startswith(address.split("@")[0] + "+")
    assert msg["Message-ID"].endswith(f"@{MAIL_DOMAIN}>")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "list"
    assert "List-Id" in msg and "mailto:" in msg["List-Unsubscribe"]
    assert msg.get_content_type() == "multipart/alternative"
    assert "Die Sitzung beginnt um 10 Uhr." in msg.get_body(("plain",)).get_content()
    assert "Die Sitzung beginnt um 10 Uhr." in msg.get_body(("html",)).get_content()
    assert msg["Subject"] == "Bauamt: Die Sitzung beginnt um 10 Uhr." or \
        "Bauamt" in msg["Subject"]


async def test_mail_from_subscriber_appears_as_puppet_and_replies_thread(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    first = _mail("Erika Mustermann <erika@stadt.example>", address, "Bauantrag Müllerstraße",
                  "Guten Tag,\n\nanbei meine Frage zum Bauantrag.\n\nGruß Erika")
    await _send(email_bridge, first)
    root = await admin.wait_for_event(room, _body("anbei meine Frage"), timeout=20)
    assert root["sender"] == "@email_erika=40stadt.example:bridge.test"
    assert root["content"]["body"].startswith("Bauantrag Müllerstraße\n")
    members = await admin.get_joined_members(room)
    assert members[root["sender"]]["display_name"] == "Erika Mustermann"

    # A Matrix reply in the thread is mailed with In-Reply-To the original mail...
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "Danke, wir prüfen das.",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root["event_id"]}})
    mails = await sink.wait_for(lambda r: "wir pr" in r.raw.decode("utf-8", "replace")
                                or "Danke" in r.message.get_body(("plain",)).get_content())
    answer = mails[0].message
    assert answer["In-Reply-To"] == first["Message-ID"]
    assert answer["Subject"] == "Re: Bauantrag Müllerstraße"

    # ...and Erika's answer to it (to the Reply-To address) lands in the same thread.
    reply = _mail("Erika Mustermann <erika@stadt.example>", str(answer["Reply-To"]),
                  "AW: Bauantrag Müllerstraße",
                  "Vielen Dank!\n\nAm 12.03.2025 um 10:15 schrieb Bauamt:\n> Danke, wir prüfen"
                  " das.\n", In_Reply_To=str(answer["Message-ID"]))
    await _send(email_bridge, reply)
    event = await admin.wait_for_event(room, _body("Vielen Dank!"), timeout=20)
    relates = event["content"]["m.relates_to"]
    assert relates["rel_type"] == "m.thread" and relates["event_id"] == root["event_id"]
    assert "schrieb" not in event["content"]["body"]  # the quote is stripped...
    assert "schrieb" in event["content"]["formatted_body"]  # ...but kept, collapsed
    assert "AW:" not in event["content"]["body"]


async def test_unknown_and_foreign_recipients_are_refused(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    await _email_room(homeserver, admin, None, "erika@stadt.example")
    msg = _mail("erika@stadt.example", "x", "Hallo", "Text")
    code, text = await _smtp_error(email_bridge, msg, [f"nobody@{MAIL_DOMAIN}"])
    assert code == 550 and "5.1.1" in text
    code, text = await _smtp_error(email_bridge, msg, ["someone@elsewhere.example"])
    assert code == 550 and "relay" in text


async def test_only_subscribers_may_write_unless_the_policy_allows(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    stranger = _mail("Fremd <fremd@anders.example>", address, "Werbung", "Kaufen Sie!")
    code, text = await _smtp_error(email_bridge, stranger, [address])
    assert code == 550 and "5.7.1" in text and "subscribe" in text
    await command(homeserver.bot, admin, room, "!bridge email policy domain anders.example",
                  expect="anders.example may write")
    await _send(email_bridge, _mail("Fremd <fremd@anders.example>", address, "Frage",
                                    "Darf ich jetzt?"))
    await admin.wait_for_event(room, _body("Darf ich jetzt?"), timeout=20)
    listing = await command(homeserver.bot, admin, room, "!bridge email list")
    assert "erika@stadt.example" in listing["content"]["body"]
    assert "domain anders.example" in listing["content"]["body"]


async def test_auto_replies_duplicates_and_loops_are_not_posted(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    sender = "Erika <erika@stadt.example>"
    await _send(email_bridge, _mail(sender, address, "Abwesend", "Ich bin im Urlaub.",
                                    Auto_Submitted="auto-replied"))
    await _send(email_bridge, _mail(sender, address, "Abwesend", "Bulk.", Precedence="bulk"))
    # One of our own mails coming back (a forwarding rule pointing at the room, say).
    await _send(email_bridge, _mail(sender, address, "Schleife", "Loop!",
                                    message_id=message_id_for("$loop", MAIL_DOMAIN)))
    twice = _mail(sender, address, "Einmal", "Nur einmal bitte.")
    await _send(email_bridge, twice)
    await _send(email_bridge, twice)
    await _send(email_bridge, _mail(sender, address, "Ende", "Letzte Nachricht."))
    await admin.wait_for_event(room, _body("Letzte Nachricht."), timeout=20)
    bodies = [e["content"].get("body", "") for e in await admin.messages(room, limit=50)]
    assert not any("Urlaub" in b or "Bulk." in b or "Loop!" in b for b in bodies)
    assert sum("Nur einmal bitte." in b for b in bodies) == 1


async def test_mails_arriving_together_are_each_posted_once_and_a_bad_one_fails_alone(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mails that come in over several SMTP connections at once are stored together
    (one transaction); one whose storing fails gets 451 (the sending server keeps it and
    tries again), the others their 250 and their place in the room."""
    senders = ["erika@stadt.example", "max@stadt.example", "anna@stadt.example",
               "ben@stadt.example"]
    room, address = await _email_room(homeserver, admin, None, *senders)
    from bridge.email import store as email_store

    add_thread = email_store.add_thread

    async def failing_for_one(session: Any, **values: Any) -> None:
        if values["topic"] == "Kaputt":
            raise RuntimeError("cannot store this one")
        await add_thread(session, **values)

    monkeypatch.setattr(email_store, "add_thread", failing_for_one)
    mails = [_mail(sender, address, "Kaputt" if n == 1 else f"Antrag {n}", f"Mail Nummer {n}.")
             for n, sender in enumerate(senders)]
    answers = await asyncio.gather(*(_smtp_error(email_bridge, mail, [address])
                                     for mail in mails))
    assert [code for code, _ in answers] == [250, 451, 250, 250]
    assert "4.3.0" in answers[1][1]
    await admin.wait_for_event(room, _body("Mail Nummer 3."), timeout=20)
    await admin.wait_for_event(room, _body("Mail Nummer 0."), timeout=20)
    await admin.wait_for_event(room, _body("Mail Nummer 2."), timeout=20)

    # The sending server tries again later, and the mail comes in once.
    monkeypatch.setattr(email_store, "add_thread", add_thread)
    assert await _smtp_error(email_bridge, mails[1], [address]) == (250, "")
    await admin.wait_for_event(room, _body("Mail Nummer 1."), timeout=20)
    bodies = [e["content"].get("body", "") for e in await admin.messages(room, limit=50)]
    assert sorted(b.rsplit("\n", 1)[-1] for b in bodies if "Mail Nummer" in b) == [
        f"Mail Nummer {n}." for n in range(4)]


async def test_attachments_become_media_in_the_same_thread(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    msg = _mail("Erika <erika@stadt.example>", address, "Pläne", "Siehe Anhang.")
    msg.add_attachment(b"%PDF-1.4 plan", maintype="application", subtype="pdf",
                       filename="Übersicht März.pdf")
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
    msg.add_attachment(png, maintype="image", subtype="png", filename="foto.png")
    await _send(email_bridge, msg)
    text = await admin.wait_for_event(room, _body("Siehe Anhang."), timeout=20)
    pdf = await admin.wait_for_event(room, lambda e: e["content"].get("msgtype") == "m.file",
                                     timeout=20)
    image = await admin.wait_for_event(room, lambda e: e["content"].get("msgtype") == "m.image",
                                       timeout=20)
    assert pdf["content"]["body"] == "Übersicht März.pdf"
    assert pdf["content"]["info"] == {"mimetype": "application/pdf", "size": 13}
    assert image["content"]["info"]["mimetype"] == "image/png"
    for media in (pdf, image):
        assert media["sender"] == text["sender"]
        assert media["content"]["url"].startswith("mxc://")
        assert media["content"]["m.relates_to"]["event_id"] == text["event_id"]


async def test_oversized_mail_is_refused_with_552(homeserver: Homeserver,
                                                  email_bridge: EmailBridge,
                                                  admin: MatrixTestClient) -> None:
    _, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    big = _mail("erika@stadt.example", address, "Groß", "x" * (3 * 1024 * 1024))
    code, _ = await _smtp_error(email_bridge, big, [address])
    assert code == 552


async def test_relay_down_delays_mail_but_loses_none(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await sink.stop()
    await admin.send_text(room, "Während der Relay schläft.")
    await asyncio.sleep(1.0)
    await email_bridge.restart()  # also across a restart of the bridge
    await sink.start()
    mails = await sink.wait_for(lambda r: True, timeout=30)
    assert "Während der Relay schläft." in mails[0].message.get_body(("plain",)).get_content()
    assert len(sink.to("erika@stadt.example")) == 1


async def test_hard_bounces_pause_the_subscriber_and_tell_the_room_once(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "weg@stadt.example",
                                "da@stadt.example")
    sink.refuse["weg@stadt.example"] = "550 5.1.1 User unknown"
    for n in range(4):
        await admin.send_text(room, f"Nachricht {n}")
    await sink.wait_for(lambda r: True, count=4)
    notice = await admin.wait_for_event(room, is_notice_from(homeserver.bot, "paused"),
                                        timeout=20)
    assert "weg@stadt.example" in notice["content"]["body"]
    listing = await command(homeserver.bot, admin, room, "!bridge email list",
                            expect="paused")
    assert "weg@stadt.example" in listing["content"]["body"]
    bodies = [e["content"].get("body", "") for e in await admin.messages(room, limit=50)]
    assert sum("paused" in b and "weg@" in b and "keeps failing" in b for b in bodies) == 1


async def test_unsubscribe_by_mail(homeserver: Homeserver, email_bridge: EmailBridge,
                                   sink: SmtpSink, admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await admin.send_text(room, "Erste Nachricht")
    mail = (await sink.wait_for(lambda r: True))[0].message
    unsubscribe = str(mail["List-Unsubscribe"]).split("mailto:")[1].split("?")[0].rstrip(">")
    await _send(email_bridge, _mail("erika@stadt.example", unsubscribe, "unsubscribe", ""))
    await admin.wait_for_event(room, is_notice_from(homeserver.bot, "unsubscribed by mail"),
                               timeout=20)
    await admin.send_text(room, "Zweite Nachricht")
    await command(homeserver.bot, admin, room, "!bridge email list", expect="no subscribers")
    assert len(sink.received) == 1


async def test_edits_are_mailed_as_corrections_reactions_are_not(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    original = await admin.send_text(room, "Treffen um 9")
    first = (await sink.wait_for(lambda r: True))[0].message
    await admin.send_event(room, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": original, "key": "👍"}})
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "* Treffen um 10",
        "m.new_content": {"msgtype": "m.text", "body": "Treffen um 10"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original}})
    mails = await sink.wait_for(lambda r: True, count=2)
    correction = mails[1].message
    assert "Treffen um 10" in correction.get_body(("plain",)).get_content()
    assert "Correction" in correction.get_body(("plain",)).get_content()
    assert correction["In-Reply-To"] == first["Message-ID"]
    await asyncio.sleep(1)
    assert len(sink.received) == 2  # the reaction was not mailed


async def test_email_and_other_link_relay_through_the_room(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    """A room with an email link and a second link: each message reaches every other side
    exactly once, never its own."""
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await command(homeserver.bot, admin, room, "!bridge link test T-mail", expect="Linked")
    hub = email_bridge.hub
    colleague = await hub.ensure_puppet("test", "kollege", "Kollege vom Test-Netz")
    await hub.post_to_room(network="test", dedup_key="t-1", room_id=room, sender=colleague,
                           content={"msgtype": "m.text", "body": "Hallo aus dem Test-Netz"})
    mail = (await sink.wait_for(lambda r: "Test-Netz" in r.raw.decode("utf-8", "replace")
                                or "Test-Netz" in str(r.message["From"])))[0].message
    assert mail["From"].addresses[0].display_name == "Kollege vom Test-Netz"

    await _send(email_bridge, _mail("Erika <erika@stadt.example>", address, "Antwort",
                                    "Hallo zurück per Mail"))
    await email_bridge.connector.wait_for(_body("Hallo zurück per Mail"), timeout=20)
    await admin.wait_for_event(room, _body("Hallo zurück per Mail"), timeout=20)
    await asyncio.sleep(1)
    # Erika does not get her own mail back; the test network not its own message.
    assert all("Hallo zurück" not in r.raw.decode("utf-8", "replace") for r in sink.received)
    assert not any("Hallo aus dem Test-Netz" in str(d["event"]["content"].get("body"))
                   for d in email_bridge.connector.delivered)


async def test_database_down_answers_451(homeserver: Homeserver, email_bridge: EmailBridge,
                                         admin: MatrixTestClient) -> None:
    url = email_bridge.config.database.url
    if not url.startswith("postgresql"):
        pytest.skip("an SQLite file cannot be taken away from an open connection; "
                    "the PostgreSQL run covers this")
    _, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    from tests.conftest import _drop_postgres_database

    await _drop_postgres_database(url.rsplit("/", 1)[1])
    code, text = await _smtp_error(email_bridge, _mail("erika@stadt.example", address, "x",
                                                       "y"), [address])
    assert code == 451 and "4.3.0" in text


def _dsn(original: EmailMessage, recipient: str, status: str, address: str) -> bytes:
    """A delivery status notification (RFC 3464) as an MTA sends it back to the room."""
    boundary = "dsn-boundary-42"
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@stadt.example>\r\n"
        f"To: {address}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='stadt.example')}\r\nAuto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
        f'boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nYour message could not be "
        f"delivered.\r\n\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.stadt.example\r\n\r\nFinal-Recipient: rfc822; {recipient}\r\n"
        f"Action: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; 550 {status} "
        f"mailbox unknown\r\n\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {original['From']}\r\nTo: {recipient}\r\nMessage-ID: {original['Message-ID']}\r\n"
        f"Subject: x\r\n\r\n--{boundary}--\r\n"
    ).encode()


async def test_delivery_status_notifications_count_as_bounces(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "alt@stadt.example")
    bounced_before = await _bounces_metric(homeserver)
    for n in range(3):  # email.max_bounces is 3
        await admin.send_text(room, f"Rundschreiben {n}")
        mail = (await sink.wait_for(lambda r, n=n: f"Rundschreiben {n}" in
                                    r.message.get_body(("plain",)).get_content()))[0].message
        # The relay accepted it; the recipient's server bounces it later.
        code, _ = await _smtp_error(email_bridge, _dsn(mail, "alt@stadt.example", "5.1.1",
                                                       address), [address], sender="")
        assert code == 250
    notice = await admin.wait_for_event(room, is_notice_from(homeserver.bot, "paused"),
                                        timeout=20)
    assert "alt@stadt.example" in notice["content"]["body"]
    bodies = [e["content"].get("body", "") for e in await admin.messages(room, limit=30)]
    assert not any("could not be delivered" in b for b in bodies)  # never posted as chat
    # What contrib/prometheus/alerts.yml watches ("mail bouncing"): one per bounce report.
    assert await _bounces_metric(homeserver) == bounced_before + 3


async def _bounces_metric(homeserver: Homeserver) -> float:
    import aiohttp

    url = f"http://127.0.0.1:{homeserver.bridge_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    sample = 'bridge_bounces_total{network="email"} '
    # Not there until the first bounce of this process: zero so far.
    return next((float(line.removeprefix(sample)) for line in text.splitlines()
                 if line.startswith(sample)), 0.0)


async def test_inline_images_are_shown_in_the_message(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    msg = _mail("Erika <erika@stadt.example>", address, "Lageplan", "Siehe Lageplan.")
    msg.add_alternative('<p>Siehe <b>Lageplan</b>:</p><img src="cid:plan@stadt" alt="Plan">'
                        '<script>alert(1)</script>', subtype="html")
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
    html_part = msg.get_payload()[1]
    html_part.add_related(png, maintype="image", subtype="png", cid="<plan@stadt>",
                          filename="plan.png")
    await _send(email_bridge, msg)
    event = await admin.wait_for_event(room, _body("Siehe Lageplan"), timeout=20)
    html = event["content"]["formatted_body"]
    assert "<b>Lageplan</b>" in html or "<strong>Lageplan</strong>" in html
    assert 'src="mxc://bridge.test/' in html
    assert "<script" not in html and "alert(1)" not in html


async def _upload(client: MatrixTestClient, data: bytes, mimetype: str, name: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            f"{client.base_url}/_matrix/media/v3/upload", params={"filename": name},
            data=data, headers={"Authorization": f"Bearer {client.access_token}",
                                "Content-Type": mimetype}) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["content_uri"])


async def test_matrix_files_are_attached_or_linked_and_redactions_not_mailed(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    small = b"Protokoll der Sitzung\n" * 100
    mxc = await _upload(admin, small, "text/plain", "Protokoll März.txt")
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.file", "body": "Protokoll März.txt", "url": mxc,
        "info": {"mimetype": "text/plain", "size": len(small)}})
    big = b"x" * 150_000  # above email.max_attachment_size in the tests (100 kB)
    big_mxc = await _upload(admin, big, "application/octet-stream", "gross.bin")
    big_event = await admin.send_event(room, "m.room.message", {
        "msgtype": "m.file", "body": "gross.bin", "url": big_mxc,
        "info": {"mimetype": "application/octet-stream", "size": len(big)}})
    mails = await sink.wait_for(lambda r: True, count=2)
    attached = [p for p in mails[0].message.iter_attachments()]
    assert [a.get_filename() for a in attached] == ["Protokoll März.txt"]
    assert attached[0].get_content().encode() == small
    linked = mails[1].message
    assert not list(linked.iter_attachments())
    assert "gross.bin" in linked.get_body(("plain",)).get_content()
    assert big_event in linked.get_body(("plain",)).get_content() or \
        "matrix.to" in linked.get_body(("plain",)).get_content()

    await admin.redact(room, big_event)
    await admin.send_text(room, "Nach der Löschung")
    await sink.wait_for(lambda r: "Nach der L" in r.message.get_body(("plain",)).get_content())
    assert len(sink.received) == 3  # the redaction itself was not mailed


async def test_one_click_unsubscribe_link(homeserver: Homeserver, email_bridge: EmailBridge,
                                          sink: SmtpSink, admin: MatrixTestClient) -> None:
    import aiohttp

    from tests.email.conftest import PUBLIC_URL

    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await admin.send_text(room, "Newsletter")
    mail = (await sink.wait_for(lambda r: True))[0].message
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = str(mail["List-Unsubscribe"]).split(f"<{PUBLIC_URL}")[1].split(">")[0]
    local = f"http://127.0.0.1:{homeserver.bridge_port}{url}"
    async with aiohttp.ClientSession() as http:
        async with http.get(local) as response:  # a link scanner opening the URL
            assert response.status == 200 and "<form method=post>" in await response.text()
        async with http.post(local.replace("token=", "token=x")) as response:
            assert response.status == 400
        await command(homeserver.bot, admin, room, "!bridge email list",
                      expect="erika@stadt.example")
        async with http.post(local, data={"List-Unsubscribe": "One-Click"}) as response:
            assert response.status == 200
    await admin.wait_for_event(room, is_notice_from(homeserver.bot, "one-click"), timeout=20)
    await command(homeserver.bot, admin, room, "!bridge email list", expect="no subscribers")


async def test_room_addresses_are_checked_by_the_address_code(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room = await open_room(homeserver.bot, admin, name="Bauamt", bot_power=100)
    # Refused, not shortened to "bad"; and not longer than reply addresses leave room for.
    for typed in ("Bad Name!", "a" * 36, "amt+x", "amt..x", "straße"):
        reply = await command(homeserver.bot, admin, room, f"!bridge link email {typed}",
                              expect="cannot be a room address")
        assert f"`{typed}`" in reply["content"]["body"]
    status = await command(homeserver.bot, admin, room, "!bridge status", expect="email")
    assert "@" + MAIL_DOMAIN not in status["content"]["body"]  # nothing was linked
    # The longest address the link accepts is one mail reaches.
    localpart = "a" * 34 + uuid.uuid4().hex[:1]
    await command(homeserver.bot, admin, room, f"!bridge link email {localpart.upper()}",
                  expect="Linked")
    await command(homeserver.bot, admin, room, "!bridge email subscribe erika@stadt.example",
                  expect="Subscribed")
    await _send(email_bridge, _mail("erika@stadt.example", f"{localpart}@{MAIL_DOMAIN}",
                                    "Lang", "Eine lange Adresse."))
    await admin.wait_for_event(room, _body("Eine lange Adresse."), timeout=20)


async def test_a_member_cannot_make_subscribers_mail_clients_fetch_a_url(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: SmtpSink,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await admin.send_event(room, "m.room.message", {
        "msgtype": "m.text", "body": "Schaut mal", "format": "org.matrix.custom.html",
        "formatted_body": '<p style="background:url(https://tracker.example/bg)">Schaut mal'
                          ' <img src="https://tracker.example/pixel.png" alt="Bild"></p>'
                          '<table background="https://tracker.example/t"><tr><td>Zelle</td>'
                          "</tr></table>"})
    (mail,) = await sink.wait_for(lambda r: True)
    html = mail.message.get_body(("html",)).get_content()
    assert "Schaut mal" in html and "Zelle" in html
    # The image is a link the reader may follow; nothing in the mail loads by itself.
    assert '<a href="https://tracker.example/pixel.png">Bild</a>' in html
    assert "<img" not in html and "url(" not in html and "background=" not in html
    assert html.count("tracker.example") == 1
