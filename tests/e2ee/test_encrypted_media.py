"""Attachments for encrypted rooms are encrypted before they leave the bridge: a Slack file,
a mail's attachment and inline image, and a long message's full text (``message.html``)
arrive as encrypted attachments (``file``) that a real encrypting client (matrix-nio)
decrypts intact, and the homeserver's media repository never holds a plain copy of them.
On SQLite and PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from mautrix.crypto.attachments import decrypt_attachment

from testkit.matrix_client import MatrixTestClient
from testkit.nio_client import EncryptingUser, Seen
from testkit.slack_sim import SlackSimulator
from testkit.slack_sim.images import solid_png
from testkit.smtp_sink import SmtpSink
from tests.e2ee.test_encrypted_rooms import WAIT, body, encrypted_linked_room
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, linked_room
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.test_slack_to_matrix import download
from tests.test_all_directions import ERIKA


def named(name: str) -> Callable[[Seen], bool]:
    return lambda s: s.type == "m.room.message" and s.content.get("body") == name


def unique(data: bytes) -> bytes:
    """The file with bytes of its own after its end (readers ignore them), so that no other
    test's upload can hold the same bytes."""
    return data + uuid.uuid4().bytes * 4


def check_encrypted(bridge: SlackBridge, seen: Seen, original: bytes) -> None:
    """The event names its file by ``file`` only; what the media repository stores for it
    is ciphertext that decrypts to ``original``; and no stored media holds ``original``."""
    assert seen.decrypted, "the attachment's event was not encrypted"
    content = seen.content
    assert "url" not in content, f"the attachment is named by url: {content}"
    file = content["file"]
    stored = bridge.homeserver.synapse.media_bytes(file["url"])
    assert original not in stored
    assert decrypt_attachment(stored, file["key"]["k"], file["hashes"]["sha256"],
                              file["iv"]) == original
    assert bridge.homeserver.synapse.media_holding(original) == [], \
        "a plain copy of the attachment is in the homeserver's media repository"


async def test_a_slack_file_and_a_long_message_are_uploaded_encrypted_only(
        e2ee_bridge: SlackBridge, nio_users: Callable[..., Any], team: Any) -> None:
    sim: SlackSimulator = e2ee_bridge.sim
    user: EncryptingUser = await nio_users()
    room, _address = await encrypted_linked_room(e2ee_bridge, user)

    pdf = unique(b"%PDF-1.4 Bauantrag " + bytes(range(256)) * 16)
    await sim.share_file(team, CHANNEL, ANNA, "bauantrag.pdf", pdf, "application/pdf")
    shared = await user.wait_for(room, named("bauantrag.pdf"), timeout=WAIT)
    assert shared.sender == f"@slack_{team.id.lower()}_{ANNA.lower()}:bridge.test"
    check_encrypted(e2ee_bridge, shared, pdf)

    # Too long for one event: its beginning, then its whole text as message.html.
    marker = uuid.uuid4().hex
    text = "\n".join(f"*Punkt {n:03d}*: Die Ausschreibung {marker} läuft bis Freitag."
                     for n in range(480))
    assert 35_000 < len(text) < 40_000
    await sim.post_message(team, CHANNEL, ANNA, text)
    attachment = await user.wait_for(room, named("message.html"), timeout=WAIT)
    beginning = await user.wait_for(room, body("(continued in the attached file)"),
                                    timeout=WAIT)
    assert beginning.decrypted
    file = attachment.content["file"]
    full = decrypt_attachment(e2ee_bridge.homeserver.synapse.media_bytes(file["url"]),
                              file["key"]["k"], file["hashes"]["sha256"], file["iv"])
    assert b"<strong>Punkt 479</strong>" in full and marker.encode() in full
    check_encrypted(e2ee_bridge, attachment, full)


async def send_mail_with_files(port: int, to: str, png: bytes, pdf: bytes) -> None:
    msg = EmailMessage()
    msg["From"] = f"Erika Mustermann <{ERIKA}>"
    msg["To"] = to
    msg["Subject"] = "Lageplan"
    msg["Message-ID"] = make_msgid(domain="stadt.example")
    msg.set_content("Siehe Lageplan und Bericht.")
    msg.add_alternative('<p>Siehe <b>Lageplan</b>:</p><img src="cid:plan@stadt" alt="Plan">',
                        subtype="html")
    html_part = msg.get_payload()[1]  # type: ignore[index]
    html_part.add_related(png, maintype="image", subtype="png", cid="<plan@stadt>",
                          filename="plan.png")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="bericht.pdf")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(msg)

    await asyncio.to_thread(send)


async def test_a_mails_attachment_and_inline_image_are_uploaded_encrypted_only(
        e2ee_bridge: SlackBridge, nio_users: Callable[..., Any], sink: SmtpSink,
        team: Any) -> None:
    user: EncryptingUser = await nio_users()
    room, address = await encrypted_linked_room(e2ee_bridge, user)
    png = unique(solid_png(uuid.uuid4().hex, 24))
    pdf = unique(b"%PDF-1.4 Bericht " + bytes(range(256)) * 8)
    await send_mail_with_files(e2ee_bridge.smtp_port, address, png, pdf)  # type: ignore[attr-defined]

    text = await user.wait_for(room, body("Siehe Lageplan"), timeout=WAIT)
    assert text.decrypted and text.sender.startswith("@email_")
    # An inline image cannot be shown inside the text of an encrypted message (an <img>
    # names unencrypted media only): its alt text stands there, the image follows.
    html = text.content.get("formatted_body", "")
    assert "mxc://" not in html and "Plan" in html
    image = await user.wait_for(room, named("plan.png"), timeout=WAIT)
    assert image.content["msgtype"] == "m.image" and image.sender == text.sender
    check_encrypted(e2ee_bridge, image, png)
    report = await user.wait_for(room, named("bericht.pdf"), timeout=WAIT)
    assert report.content["msgtype"] == "m.file"
    check_encrypted(e2ee_bridge, report, pdf)
    # The room's other link gets the mail's files intact (decrypted by the bridge).
    sim: SlackSimulator = e2ee_bridge.sim
    await sim.wait_for(lambda: {f["name"] for f in sim.uploaded_files(team)}
                       >= {"plan.png", "bericht.pdf"}, timeout=WAIT)
    assert {f["name"]: f["data"] for f in sim.uploaded_files(team)
            if f["name"] in ("plan.png", "bericht.pdf")} == {"plan.png": png,
                                                             "bericht.pdf": pdf}


async def test_a_queued_file_by_url_is_still_encrypted_for_the_room(
        e2ee_bridge: SlackBridge, nio_users: Callable[..., Any]) -> None:
    """An outbox item stored before the room turned encrypted names its file by ``url``:
    the Matrix side still sends it as an encrypted attachment (uploaded again, encrypted)."""
    user: EncryptingUser = await nio_users()
    room, _address = await encrypted_linked_room(e2ee_bridge, user)
    hub = e2ee_bridge.hub
    data = unique(b"%PDF-1.4 vorher " + bytes(range(256)) * 4)
    mxc = await hub.upload_media(data, "application/pdf", "vorher.pdf")
    await hub.post_to_room(network="slack", dedup_key=f"test:{uuid.uuid4().hex}",
                           room_id=room, sender=hub.bot_mxid,
                           content={"msgtype": "m.file", "body": "vorher.pdf", "url": mxc,
                                    "info": {"mimetype": "application/pdf",
                                             "size": len(data)}})
    seen = await user.wait_for(room, named("vorher.pdf"), timeout=WAIT)
    assert seen.decrypted and "url" not in seen.content
    file = seen.content["file"]
    assert file["url"] != mxc
    assert decrypt_attachment(e2ee_bridge.homeserver.synapse.media_bytes(file["url"]),
                              file["key"]["k"], file["hashes"]["sha256"], file["iv"]) == data


async def test_an_unencrypted_room_gets_its_files_by_url_as_before(
        e2ee_bridge: SlackBridge, admin: MatrixTestClient, team: Any) -> None:
    """With encryption allowed, a room that is not encrypted gets a Slack file as it always
    did: uploaded once, as it is, named by ``url``."""
    room = await linked_room(e2ee_bridge, admin)
    pdf = unique(b"%PDF-1.4 offen " + bytes(range(256)) * 4)
    await e2ee_bridge.sim.share_file(team, CHANNEL, ANNA, "offen.pdf", pdf, "application/pdf")
    event = await admin.wait_for_event(room, lambda e: e["content"].get("body") == "offen.pdf",
                                       timeout=WAIT)
    assert event["type"] == "m.room.message" and "file" not in event["content"]
    mxc = event["content"]["url"]
    assert await download(e2ee_bridge.homeserver, admin, mxc) == pdf
    assert e2ee_bridge.homeserver.synapse.media_holding(pdf) == [mxc.rpartition("/")[2]]
