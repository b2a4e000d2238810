"""What a clerk reading the room in Element sees when real-world mail arrives.

Every mail goes over SMTP to the running bridge and is read back from Synapse with the
Matrix client API: wrong and missing charsets, encoded headers and RFC 2231 file names,
HTML-only mail, format=flowed, forwards, calendar invitations, the HTML subset Matrix
accepts, attachments as media, quotes of German and English clients, and subject prefixes.

One bridge and one room per database backend for the whole module (starting a bridge costs
more than a dozen mails), so every mail here carries words of its own to find it by. Some
mails are the parser tests' samples (tests/email/test_parse_cases.py), some come from the
public corpus in ../shared/email-samples (read in place; those tests skip without it).
"""

# German mail text has en dashes and typographic quotes; they are the test data.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from testkit.smtp_sink import SmtpSink
from tests.conftest import (
    Homeserver,
    _asyncpg_url,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.email.conftest import EmailBridge, running_email_bridge
from tests.email.test_email_bridge import _email_room, _mail, _smtp_error
from tests.email.test_parse_cases import (
    APPLE_HTML,
    FORWARD_RFC822,
    GMAIL_DE,
    ICS,
    INLINE_FORWARD,
    OUTLOOK,
    OUTLOOK_HTML_ONLY,
    THUNDERBIRD,
    build,
    raw_mail,
)

CORPUS = Path(__file__).parents[2].parent / "shared" / "email-samples"
MEDIA = ("m.image", "m.video", "m.audio", "m.file")
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


@dataclass
class Desk:
    """The room of one bridge, and the clerk who reads it."""

    homeserver: Homeserver
    bridge: EmailBridge
    clerk: MatrixTestClient
    room: str
    address: str

    def puppet(self, address: str) -> str:
        return str(self.bridge.email.puppet_user_id(address.lower()))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def desk(request: pytest.FixtureRequest, homeserver: Homeserver,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Desk]:
    postgres = None
    if request.param == "postgres":
        postgres = await _create_postgres_database()
        url = _asyncpg_url(postgres)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('content') / 'bridge.db'}"
    sink = SmtpSink()
    await sink.start()
    clerk = await homeserver.user(f"admin{uuid.uuid4().hex[:8]}")
    try:
        async with running_email_bridge(homeserver, url, sink,
                                        {"sender_auth": "none"}) as bridge:
            room, address = await _email_room(homeserver, clerk)
            # Citizens and colleagues from anywhere write in; the corpus has all kinds of From.
            await command(homeserver.bot, clerk, room, "!bridge email policy open",
                          expect="anyone may write")
            yield Desk(homeserver, bridge, clerk, room, address)
    finally:
        await clerk.close()
        await sink.stop()
        if postgres is not None:
            await _drop_postgres_database(postgres)


# --- sending and reading ---------------------------------------------------------------------

def _fresh(raw: bytes) -> bytes:
    """A sample with a Message-ID of its own: the room drops a Message-ID it has seen."""
    new = make_msgid(domain="stadt.example").encode()
    raw, found = re.subn(rb"(?im)^Message-ID:[^\r\n]*", b"Message-ID: " + new, raw, count=1)
    return raw if found else b"Message-ID: " + new + b"\r\n" + raw


def _corpus(name: str) -> bytes:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"email sample corpus not found at {CORPUS} (../shared/email-samples)")
    return path.read_bytes()


async def _deliver(desk: Desk, mail: EmailMessage | bytes) -> None:
    if isinstance(mail, bytes):
        # On the wire every line ends in CRLF, whatever a sample file on disk has.
        mail = re.sub(rb"\r?\n", b"\r\n", mail)
    answer = await _smtp_error(desk.bridge, mail, [desk.address])
    assert answer == (250, ""), answer


async def _arrives(desk: Desk, mail: EmailMessage | bytes, words: str) -> dict[str, Any]:
    """Mail it into the room; the text message whose body has `words`."""
    await _deliver(desk, mail)
    return await desk.clerk.wait_for_event(
        desk.room, lambda e: e["type"] == "m.room.message"
        and e["content"].get("msgtype") == "m.text" and words in e["content"]["body"],
        timeout=20)


async def _media(desk: Desk, thread_root: str, count: int) -> list[dict[str, Any]]:
    """The next `count` media messages in the thread of `thread_root`."""
    def in_thread(event: dict[str, Any]) -> bool:
        relates = event["content"].get("m.relates_to", {})
        return (event["content"].get("msgtype") in MEDIA and relates.get("rel_type") == "m.thread"
                and relates.get("event_id") == thread_root)

    return [await desk.clerk.wait_for_event(desk.room, in_thread, timeout=20)
            for _ in range(count)]


async def _settled(desk: Desk) -> list[dict[str, Any]]:
    """The room's latest events once everything mailed so far is in it (a room's mail is
    posted in order, so a last mail's arrival means the earlier ones are all there)."""
    marker = f"Ende {uuid.uuid4().hex[:8]}"
    await _arrives(desk, _mail("Poststelle <post@stadt.example>", desk.address, "Ende", marker),
                   marker)
    return await desk.clerk.messages(desk.room, limit=100)


def _readable(text: str) -> None:
    """No replacement characters, no C1 controls (windows-1252 read as Latin-1), no UTF-8
    read as Latin-1 ("GrÃ¼ÃŸe"), no raw encoded words."""
    assert "\ufffd" not in text
    assert not re.search("[\x80-\x9f]", text), text
    assert not re.search("Ã[\x80-\xbf¼Ÿ¤¶–—]|Â[\xa0-\xbf]", text), text
    assert "=?" not in text and "?=" not in text


def _display_name(members: dict[str, Any], user_id: str) -> str:
    return str(members[user_id]["display_name"])


def _outside_details(html: str) -> str:
    return re.sub(r"(?s)<details>.*?</details>", "", html)


# --- charsets --------------------------------------------------------------------------------

async def test_outlook_windows_1252_declared_as_latin1(desk: Desk) -> None:
    # Outlook writes windows-1252 (€ is 0x80, „“ are 0x84/0x93, – is 0x96) and calls it
    # iso-8859-1, where those bytes are control characters.
    raw = _fresh(raw_mail("""
        From: =?iso-8859-1?Q?Hans_Kr=E4mer_=96_Tiefbauamt?= <hans.kraemer@stadt.example>
        Subject: =?iso-8859-1?Q?Sondernutzung_Stra=DFenfest?=
        Message-ID: <x>
        MIME-Version: 1.0
        Content-Type: text/plain; charset="iso-8859-1"
        Content-Transfer-Encoding: quoted-printable
        X-Mailer: Microsoft Outlook 16.0

        Sehr geehrte Damen und Herren,

        die Geb=FChr f=FCr die Sondernutzung der Stra=DFe betr=E4gt 120 =80 =96 bitte =
        =84rechtzeitig=93 =FCberweisen.

        Freundliche Gr=FC=DFe aus der Rathausstra=DFe
        """))
    event = await _arrives(desk, raw, "Sondernutzung der")
    body = event["content"]["body"]
    assert body.startswith("Sondernutzung Straßenfest\n")
    assert "die Gebühr für die Sondernutzung der Straße beträgt 120 € – bitte „rechtzeitig“ " \
           "überweisen." in body
    assert "Grüße aus der Rathausstraße" in body
    assert "120 € – bitte „rechtzeitig“" in event["content"]["formatted_body"]
    members = await desk.clerk.get_joined_members(desk.room)
    assert _display_name(members, event["sender"]) == "Hans Krämer – Tiefbauamt"
    _readable(body)
    _readable(event["content"]["formatted_body"])


@pytest.mark.parametrize("case", ["no charset", "unknown charset", "unknown, really latin-1",
                                  "no content-type", "us-ascii, really utf-8"])
async def test_missing_or_unknown_charset(desk: Desk, case: str) -> None:
    declared, encoding = {
        "no charset": ("Content-Type: text/plain", "utf-8"),
        "unknown charset": ("Content-Type: text/plain; charset=x-klingonisch", "utf-8"),
        "unknown, really latin-1": ("Content-Type: text/plain; charset=x-klingonisch",
                                    "latin-1"),
        "no content-type": ("X-Mailer: a script", "utf-8"),
        "us-ascii, really utf-8": ('Content-Type: text/plain; charset="us-ascii"', "utf-8"),
    }[case]
    words = f"Fall {case}:"
    raw = raw_mail(f"""
        From: Anna Schulz <anna.schulz@stadt.example>
        Subject: Zeichensatz
        Message-ID: {make_msgid(domain="stadt.example")}
        MIME-Version: 1.0
        {declared}
        Content-Transfer-Encoding: 8bit

        {words} Viele Grüße aus der Hauptstraße, Änderungen folgen.
        """, encoding=encoding)
    event = await _arrives(desk, raw, words)
    assert f"{words} Viele Grüße aus der Hauptstraße, Änderungen folgen." in \
        event["content"]["body"]
    _readable(event["content"]["body"])
    _readable(event["content"]["formatted_body"])


async def test_corpus_charsets(desk: Desk) -> None:
    # Declared iso-8859-1, 8-bit bytes (discourse).
    event = await _arrives(desk, _corpus("discourse/reply_with_8bit_encoding.eml"),
                           "kritische zeichen")
    assert "einzufügen:\näöüÄÖÜß" in event["content"]["body"]
    # Declared us-ascii, the body is UTF-8 (enmime).
    event = await _arrives(desk, _corpus("jhillyerd-enmime/low-quality/incorrect-charset.raw"),
                           "Mathematics and sciences")
    assert "∮ E⋅da = Q,  n → ∞" in event["content"]["body"]
    # A charset nobody knows, and a raw 8-bit name in the To header (mail-mime-parser).
    event = await _arrives(desk, _corpus("zbateson-mail-mime-parser/invalid-charset.txt"),
                           "The Hare and the Tortoise")
    assert "Slow but steady wins the race." in event["content"]["body"]
    for text in (event["content"]["body"], event["content"]["formatted_body"]):
        _readable(text)


# --- encoded headers and file names ------------------------------------------------------------

async def test_encoded_names_subject_and_rfc2231_file_names(desk: Desk) -> None:
    raw = _fresh(raw_mail("""
        From: =?UTF-8?B?SsO8cmdlbiBCw6Ry?= <juergen.baer@stadt.example>
        Subject: =?UTF-8?Q?=C3=9Cbersicht_der_F=C3=B6rderantr=C3=A4ge?=
         =?iso-8859-1?Q?_=96_M=E4rz?=
        Message-ID: <x>
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="b1"

        --b1
        Content-Type: text/plain; charset=utf-8

        Anbei die Übersicht der Förderanträge.
        --b1
        Content-Type: application/pdf; name="=?iso-8859-1?Q?=DCbersicht_F=F6rderantr=E4ge.pdf?="
        Content-Disposition: attachment;
         filename*0*=iso-8859-1''%DCbersicht%20F%F6rder;
         filename*1*=antr%E4ge.pdf
        Content-Transfer-Encoding: base64

        JVBERi0xLjQK
        --b1
        Content-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet
        Content-Disposition: attachment; filename*=UTF-8''Kosten%C3%BCbersicht%202025.xlsx
        Content-Transfer-Encoding: base64

        UEsDBA==
        --b1
        Content-Type: image/png; name="=?iso-8859-1?Q?Baustelle_M=E4rz.png?="
        Content-Disposition: attachment; filename="=?iso-8859-1?Q?Baustelle_M=E4rz.png?="
        Content-Transfer-Encoding: base64

        iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAAAAgAB4iG8MwAAAABJRU5ErkJggg==
        --b1--
        """))
    event = await _arrives(desk, raw, "Anbei die Übersicht der Förderanträge.")
    assert event["content"]["body"].startswith("Übersicht der Förderanträge – März\n")
    puppet = desk.puppet("juergen.baer@stadt.example")
    assert event["sender"] == puppet
    members = await desk.clerk.get_joined_members(desk.room)
    assert _display_name(members, puppet) == "Jürgen Bär"
    _readable(event["content"]["body"])
    files = await _media(desk, event["event_id"], 3)
    assert [(f["content"]["msgtype"], f["content"]["body"]) for f in files] == [
        ("m.file", "Übersicht Förderanträge.pdf"), ("m.file", "Kostenübersicht 2025.xlsx"),
        ("m.image", "Baustelle März.png")]


async def test_corpus_rfc2231_continuations(desk: Desk) -> None:
    # Apple Mail: a Japanese name in filename*0*/filename*1*, subject in four encoded words.
    event = await _arrives(desk, _corpus("mikel-mail/japanese_attachment_long_name.eml"),
                           "まみむめも")
    assert event["content"]["body"] == "まみむめも" * 10
    members = await desk.clerk.get_joined_members(desk.room)
    assert _display_name(members, event["sender"]) == "Mikel Lindsaar"
    (file,) = await _media(desk, event["event_id"], 1)
    assert file["content"]["body"] == "かきくけこ" * 5 + ".txt"
    assert file["content"]["info"] == {"mimetype": "text/plain", "size": 18}


# --- HTML-only mail and the HTML that Matrix accepts -------------------------------------------

NEWSLETTER_HTML = """\
<html><head><title>Rundbrief</title>
<style>p { color: red; } .hinweis { font-weight: bold }</style>
<script>document.write("tracking")</script></head>
<body onload="track()">
<h2>Sitzung des Bauausschusses</h2>
<p onclick="steal()" style="font-family: Arial">Die Sitzung am <b>Donnerstag</b> f&auml;llt aus.</p>
<ul><li>Punkt eins</li><li>Punkt zwei</li></ul>
<p><a href="javascript:alert(2)">Hier klicken</a> oder
<a href="https://stadt.example/termine" onmouseover="x()">Termine ansehen</a></p>
<p><img src="https://cdn.stadt.example/logo.png" alt="Stadtlogo" width="120" height="40"></p>
<p>Lageplan: <img src="cid:lageplan@stadt.example" alt="Lageplan"></p>
<img src="https://tracker.example/open.gif" width="1" height="1">
<iframe src="https://evil.example/"></iframe>
<script>alert(1)</script>
</body></html>
"""


async def test_html_only_mail_is_readable_and_matrix_safe(desk: Desk) -> None:
    msg = _mail("Rundbrief <rundbrief@stadt.example>", desk.address, "Bauausschuss", "x")
    msg.set_content(NEWSLETTER_HTML, subtype="html")
    msg.make_related()
    msg.add_related(PNG, maintype="image", subtype="png", cid="<lageplan@stadt.example>",
                    filename="lageplan.png")
    event = await _arrives(desk, msg, "Sitzung des Bauausschusses")
    body, html = event["content"]["body"], event["content"]["formatted_body"]
    # The plain body reads like the mail, without markup, styles or scripts.
    assert "Die Sitzung am Donnerstag fällt aus." in body
    assert "Punkt eins" in body and "Punkt zwei" in body
    assert "Termine ansehen" in body and "Hier klicken" in body
    for junk in ("<", "color: red", "font-weight", "tracking", "alert(", "javascript:",
                 "Rundbrief"):
        assert junk not in body, junk
    # The formatted body keeps the structure...
    assert "<h2>Sitzung des Bauausschusses</h2>" in html
    assert "<b>Donnerstag</b> fällt aus." in html
    assert "<li>Punkt eins</li>" in html
    assert 'href="https://stadt.example/termine"' in html
    # ...but only what Matrix clients accept: no scripts, styles, handlers or frames...
    for banned in ("<script", "alert(", "tracking", "<style", "color: red", "onclick",
                   "onload", "onmouseover", "javascript:", "<iframe", "evil.example",
                   "style=", "<title"):
        assert banned not in html, banned
    # ...remote images are links (the tracking pixel is gone), cid: images are mxc: images.
    assert re.search(r'<a href="https://cdn\.stadt\.example/logo\.png"[^>]*>Stadtlogo</a>', html)
    assert "tracker.example" not in html and 'src="http' not in html
    assert re.search(r'<img src="mxc://bridge\.test/\w+" alt="Lageplan"', html)
    assert "cid:" not in html
    # The inline image is in the message, not posted a second time as a file.
    events = await _settled(desk)
    assert not [e for e in events if e["content"].get("m.relates_to", {}).get("event_id")
                == event["event_id"]]


async def test_outlook_html_only_reply(desk: Desk) -> None:
    event = await _arrives(desk, _fresh(OUTLOOK_HTML_ONLY), "der Termin ist bestätigt.")
    body, html = event["content"]["body"], event["content"]["formatted_body"]
    assert body == "Termin\n\nSehr geehrte Frau Müller,\nder Termin ist bestätigt."
    assert "MsoNormal" not in html and "divRplyFwdMsg" not in html and "<o:p>" not in html
    assert "Ist der Termin bestätigt?" in html.split("<details>")[1]


@pytest.mark.parametrize("closing", ["Gruß, Bob", "Viele Grüße", "Best, Ann",
                                     "Viele Grüße<br>Bob"])
async def test_a_closing_greeting_ending_an_html_only_mail_is_kept(
        desk: Desk, closing: str) -> None:
    words = f"Der Termin passt {uuid.uuid4().hex[:6]}."
    msg = _mail("Bob <bob@stadt.example>", desk.address, "Termin", "x")
    msg.set_content(f"<p>Hallo,</p><p>{words}</p><p>{closing}</p>", subtype="html")
    event = await _arrives(desk, msg, words)
    body, html = event["content"]["body"], event["content"]["formatted_body"]
    greeting = closing.replace("<br>", "\n")
    # Part of the message, as written, not folded away as a signature.
    assert body.endswith(f"{words}\n\n{greeting}"), body
    assert closing in html and "<details>" not in html


async def test_a_signature_block_of_an_html_only_mail_is_still_folded_away(
        desk: Desk) -> None:
    words = f"Die Unterlagen sind vollständig {uuid.uuid4().hex[:6]}."
    msg = _mail("Max <max@stadt.example>", desk.address, "Unterlagen", "x")
    msg.set_content(f"<p>Hallo,</p><p>{words}</p><p>Mit freundlichen Grüßen<br>Max Mustermann"
                    "<br>Bauordnungsamt<br>Tel. 01234 567-89</p>", subtype="html")
    event = await _arrives(desk, msg, words)
    assert event["content"]["body"].endswith(words)
    assert "Tel. 01234" in event["content"]["formatted_body"].split("<details>")[1]


async def test_corpus_gmail_html_only(desk: Desk) -> None:
    event = await _arrives(desk, _corpus("discourse/gmail_html_reply.eml"), "GMAIL")
    assert event["content"]["body"] == "This is a GMAIL reply ;)"
    assert "<b>GMAIL</b>" in event["content"]["formatted_body"]


# --- format=flowed ---------------------------------------------------------------------------

@pytest.mark.parametrize("delsp", ["yes", "no"])
async def test_format_flowed_soft_breaks_are_joined(desk: Desk, delsp: str) -> None:
    # A line ending in a space is a soft break. With DelSp=yes that space was added by the
    # sender and goes (the word's own space is a second one), so a word can be split:
    # "Bauge \r\nnehmigung" is one word again.
    space, split = ("<SP><SP>", "Bauge<SP>\n        nehmigung liegt") if delsp == "yes" \
        else ("<SP>", "Baugenehmigung<SP>\n        liegt")
    raw = raw_mail(f"""
        From: Tom Berger <tom.berger@stadt.example>
        Subject: Fließtext
        Message-ID: {make_msgid(domain="stadt.example")}
        MIME-Version: 1.0
        Content-Type: text/plain; charset=utf-8; format=flowed; delsp={delsp}
        Content-Transfer-Encoding: 8bit

        DelSp={delsp}: Die Genehmigung für den Umbau des Gebäudes in der{space}
        Schillerstraße 12 wurde heute erteilt; die Unterlagen gehen Ihnen per{space}
        Post zu. Die {split} bei.

        Zweiter Absatz.
        """)
    event = await _arrives(desk, raw, f"DelSp={delsp}:")
    assert (f"DelSp={delsp}: Die Genehmigung für den Umbau des Gebäudes in der Schillerstraße "
            "12 wurde heute erteilt; die Unterlagen gehen Ihnen per Post zu. Die "
            "Baugenehmigung liegt bei.\n\nZweiter Absatz.") in event["content"]["body"]


# --- forwards --------------------------------------------------------------------------------

async def test_forward_as_attached_message(desk: Desk) -> None:
    event = await _arrives(desk, _fresh(FORWARD_RFC822), "Zur Kenntnis, bitte übernehmen.")
    body, html = event["content"]["body"], event["content"]["formatted_body"]
    assert body.startswith("Antrag auf Sondernutzung\n\nZur Kenntnis, bitte übernehmen.")
    for text in (body, html):
        assert "Bürger" in text and "buerger@example.net" in text
        assert "anbei mein Antrag." in text
    assert "<details>" not in html  # a forward is content, not a quote to fold away
    # The forwarded mail as an .eml file (its own headers and attachments kept), then its PDF.
    eml, pdf = await _media(desk, event["event_id"], 2)
    assert (eml["content"]["msgtype"], eml["content"]["body"]) == (
        "m.file", "Antrag auf Sondernutzung.eml")
    assert eml["content"]["info"]["mimetype"] == "message/rfc822"
    forwarded = message_from_bytes(await desk.bridge.hub.download_media(eml["content"]["url"]),
                                   policy=policy.default)
    assert forwarded["Message-ID"] == "<inner-1@example.net>"
    assert [a.get_filename() for a in forwarded.iter_attachments()] == ["Antrag.pdf"]
    assert pdf["content"]["body"] == "Antrag.pdf"


async def test_corpus_forwards_as_attached_messages(desk: Desk) -> None:
    # Apple Mail 2005: a flowed text part and a forwarded message with a PDF (mikel/mail).
    event = await _arrives(desk, _corpus("mikel-mail/attachment_message_rfc822.eml"),
                           "This is the first part.")
    body = event["content"]["body"]
    assert "Subject: Another PDF" in body and "Test Tester" in body
    assert "Just attaching another PDF" in body
    eml, pdf = await _media(desk, event["event_id"], 2)
    assert eml["content"]["body"] == "ForwardedMessage.eml"
    assert (pdf["content"]["msgtype"], pdf["content"]["body"]) == ("m.file", "broken.pdf")
    # Thunderbird, with Cyrillic in the forwarded message (flanker).
    event = await _arrives(desk, _corpus("mailgun-flanker/enclosed.eml"), "kicking ass")
    assert "чтобы я без вас делал, дорогие мои!!!" in event["content"]["body"]
    assert "Kirk Douglas" in event["content"]["formatted_body"]


OUTLOOK_FORWARD_HTML = """\
<html><body lang="DE"><div class="WordSection1">
<p class="MsoNormal">Bitte einmal prüfen.<o:p></o:p></p>
<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">
<p class="MsoNormal"><b>Von:</b> Bürger &lt;b@example.net&gt;<br><b>Gesendet:</b> Montag,
11. März 2024 09:00<br><b>An:</b> Poststelle &lt;post@stadt.example&gt;<br><b>Betreff:</b>
Lärm in der Hauptstraße</p></div>
<p class="MsoNormal">Seit Wochen ist es nachts sehr laut.<o:p></o:p></p></div></body></html>
"""
OWA_FORWARD_HTML = """\
<html><body><div>Zur Info an die Kollegen.</div>
<hr style="display:inline-block;width:98%" tabindex="-1">
<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif"><b>Von:</b> Bürger
&lt;b@example.net&gt;<br><b>Gesendet:</b> Montag, 11. März 2024 09:00<br><b>An:</b>
Poststelle<br><b>Betreff:</b> Baum vor Haus Nr. 7</font><div>&nbsp;</div></div>
<div>Der Baum vor Haus Nr. 7 droht umzustürzen.</div></body></html>
"""


async def test_inline_outlook_forward_is_not_stripped_as_a_quote(desk: Desk) -> None:
    # Plain text only (the parser tests' sample): "-----Ursprüngliche Nachricht-----".
    event = await _arrives(desk, _fresh(INLINE_FORWARD), "Bitte einmal prüfen.")
    body = event["content"]["body"]
    assert body.startswith("Lärm in der Hauptstraße\n\nBitte einmal prüfen.")
    assert "-----Ursprüngliche Nachricht-----\nVon: Bürger <b@example.net>" in body
    assert "Seit Wochen ist es nachts sehr laut." in body
    assert "Seit Wochen" in _outside_details(event["content"]["formatted_body"])
    # Outlook desktop, text and HTML: "Von:/Gesendet:/An:/Betreff:" below a border line.
    msg = build("Bitte prüfen, Kollegen.\n\nVon: Bürger <b@example.net>\nGesendet: Montag, "
                "11. März 2024 09:00\nAn: Poststelle <post@stadt.example>\nBetreff: Lärm in "
                "der Hauptstraße\n\nSeit Wochen ist es nachts sehr laut.\n",
                subject="WG: Lärm in der Hauptstraße", html=OUTLOOK_FORWARD_HTML,
                sender="Max Mustermann <max@stadt.example>")
    event = await _arrives(desk, _fresh(msg.as_bytes()), "Bitte prüfen, Kollegen.")
    assert "Seit Wochen ist es nachts sehr laut." in event["content"]["body"]
    html = event["content"]["formatted_body"]
    assert "Seit Wochen ist es nachts sehr laut." in _outside_details(html)
    assert "<b>Betreff:</b>" in html
    # Outlook on the web, HTML only.
    msg = build(None, html=OWA_FORWARD_HTML, subject="WG: Baum vor Haus Nr. 7",
                sender="Max Mustermann <max@stadt.example>")
    event = await _arrives(desk, _fresh(msg.as_bytes()), "Zur Info an die Kollegen.")
    assert "Der Baum vor Haus Nr. 7 droht umzustürzen." in event["content"]["body"]
    assert "droht umzustürzen" in _outside_details(event["content"]["formatted_body"])


# --- calendar invitations ----------------------------------------------------------------------

async def test_calendar_invitation_is_a_readable_summary(desk: Desk) -> None:
    msg = _mail("=?utf-8?q?Erika_M=C3=BCller?= <erika.mueller@stadt.example>", desk.address,
                "Einladung: Ortstermin Flurstück 12/3", "Einladung zum Ortstermin.\n")
    msg.add_alternative("<p>Einladung zum <b>Ortstermin</b>.</p>", subtype="html")
    msg.add_alternative(ICS.format(method="REQUEST").replace("\n", "\r\n"), subtype="calendar",
                        params={"method": "REQUEST"})
    event = await _arrives(desk, msg, "Einladung zum Ortstermin.")
    summary = ("Invitation: Ortstermin Flurstück 12/3\n"
               "When: 2024-03-14 10:00–11:00 (Europe/Berlin)\n"
               "Where: Rathaus, Raum 3.17\n"
               "Organizer: Müller, Erika <erika@example.org>")
    assert summary in event["content"]["body"]
    html = event["content"]["formatted_body"]
    assert "When: 2024-03-14 10:00–11:00 (Europe/Berlin)" in html
    assert "Organizer: Müller, Erika &lt;erika@example.org&gt;" in html
    for text in (event["content"]["body"], html):
        assert "BEGIN:VCALENDAR" not in text and "DTSTART" not in text

    # Google Calendar sends the invitation twice, as an alternative and as invite.ics.
    msg = _mail("Erika <erika.google@gmail.example>", desk.address,
                "Einladung: Ortstermin @ Do 14. März 2024 10:00 - 11:00 (MEZ)",
                "Sie wurden zu einem Termin eingeladen.\n")
    msg.add_alternative("<p>Sie wurden zu einem <b>Termin</b> eingeladen.</p>", subtype="html")
    ics = ICS.format(method="REQUEST").replace("\n", "\r\n")
    msg.add_alternative(ics, subtype="calendar", params={"method": "REQUEST"})
    msg.make_mixed()
    msg.add_attachment(ics.encode(), maintype="application", subtype="ics",
                       filename="invite.ics")
    event = await _arrives(desk, msg, "Sie wurden zu einem Termin eingeladen.")
    assert event["content"]["body"].count("Invitation: Ortstermin Flurstück 12/3") == 1
    assert event["content"]["formatted_body"].count("Where: Rathaus, Raum 3.17") == 1
    events = await _settled(desk)
    files = [e["content"]["body"] for e in events
             if e["content"].get("m.relates_to", {}).get("event_id") == event["event_id"]]
    assert files == ["invite.ics"]


async def test_corpus_exchange_meeting_request(desk: Desk) -> None:
    event = await _arrives(desk, _corpus("php-mime-mail-parser/m0020"), "Invitation: 1")
    body = event["content"]["body"]
    assert "When: 2014-03-28 11:03–11:33" in body and "Where: Meeting Room" in body
    assert "Organizer: Finntack Newsletter <newsletter@finntack.com>" in body


# --- attachments -----------------------------------------------------------------------------

async def test_attachments_become_media_messages_in_the_thread(desk: Desk) -> None:
    msg = _mail("Petra Lang <petra.lang@stadt.example>", desk.address, "Baustellenbegehung",
                "Fotos, Video, Sprachnotiz und Protokoll der Begehung.")
    files = [(PNG, "image/png", "Baugrube.png"), (b"\x00\x00\x00\x18ftypmp42" + b"\0" * 40,
                                                  "video/mp4", "Rundgang.mp4"),
             (b"ID3\x03\x00" + b"\0" * 60, "audio/mpeg", "Sprachnotiz.mp3"),
             (b"%PDF-1.4 Protokoll", "application/pdf", "Protokoll Begehung.pdf")]
    for data, mimetype, name in files:
        maintype, subtype = mimetype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    text = await _arrives(desk, msg, "Sprachnotiz und Protokoll")
    media = await _media(desk, text["event_id"], 4)
    assert [(m["content"]["msgtype"], m["content"]["body"]) for m in media] == [
        ("m.image", "Baugrube.png"), ("m.video", "Rundgang.mp4"),
        ("m.audio", "Sprachnotiz.mp3"), ("m.file", "Protokoll Begehung.pdf")]
    for event, (data, mimetype, _) in zip(media, files, strict=True):
        assert event["content"]["info"]["mimetype"] == mimetype
        assert event["content"]["info"]["size"] == len(data)
        assert event["content"]["url"].startswith("mxc://")
        assert event["sender"] == text["sender"] == desk.puppet("petra.lang@stadt.example")

    # A reply with an attachment: text and file both land in the first mail's thread.
    reply = _mail("Petra Lang <petra.lang@stadt.example>", desk.address,
                  "AW: Baustellenbegehung", "Nachtrag: das fehlende Foto.",
                  In_Reply_To=msg["Message-ID"])
    reply.add_attachment(PNG, maintype="image", subtype="png", filename="Nachtrag.png")
    answer = await _arrives(desk, reply, "Nachtrag: das fehlende Foto.")
    assert answer["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert answer["content"]["m.relates_to"]["event_id"] == text["event_id"]
    (photo,) = await _media(desk, text["event_id"], 1)
    assert photo["content"]["body"] == "Nachtrag.png"


async def test_mail_without_words_is_never_an_empty_message(desk: Desk) -> None:
    # A photo sent from a phone: no subject, no text.
    photo = EmailMessage()
    photo["From"] = "Karl Ernst <karl.ernst@stadt.example>"
    photo["To"] = desk.address
    photo["Message-ID"] = make_msgid(domain="stadt.example")
    photo.add_attachment(PNG, maintype="image", subtype="png", filename="IMG_0001.png")
    await _deliver(desk, photo)
    puppet = desk.puppet("karl.ernst@stadt.example")
    text = await desk.clerk.wait_for_event(
        desk.room, lambda e: e["sender"] == puppet and e["content"]["msgtype"] == "m.text",
        timeout=20)
    assert text["content"]["body"] == "(empty message)"
    assert text["content"].get("formatted_body", "(no HTML)").strip()  # Element shows this
    (image,) = await _media(desk, text["event_id"], 1)
    assert image["content"]["body"] == "IMG_0001.png"
    # Text, and an HTML alternative of which nothing may be shown in Matrix.
    msg = _mail("Karl Ernst <karl.ernst@stadt.example>", desk.address, "Rückruf",
                "Bitte um Rückruf unter 0123 4567.")
    msg.add_alternative("<html><head><style>p {margin: 0}</style></head><body><script>"
                        "track()</script></body></html>", subtype="html")
    event = await _arrives(desk, msg, "Bitte um Rückruf")
    assert "Bitte um Rückruf unter 0123 4567." in event["content"]["formatted_body"]


# --- quotes of German and English clients ------------------------------------------------------

GMAIL_EN_HTML = """\
<div dir="ltr">Yes, Thursday works for me.</div><br><div class="gmail_quote">
<div dir="ltr" class="gmail_attr">On Tue, Mar 12, 2024 at 10:15 AM Max Mustermann
&lt;max@stadt.example&gt; wrote:<br></div><blockquote class="gmail_quote"
style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204)">Does Thursday work
for the site visit?<br>Max</blockquote></div>
"""
THUNDERBIRD_HTML = """\
<html><body><p>Gern, ich bringe die Pläne mit.</p>
<div class="moz-cite-prefix">Am 12.03.2024 um 10:15 schrieb Erika Müller:<br></div>
<blockquote type="cite">Bringen Sie die Pläne für das Flurstück mit?</blockquote>
<pre class="moz-signature" cols="72">--&nbsp;
Jan Vogel
Bauordnungsamt</pre></body></html>
"""


def _quote_cases() -> dict[str, tuple[bytes, str, str, str]]:
    """client: (mail, topic, new text, a line of the quote)."""
    return {
        "Outlook de (Von:/Gesendet:)": (
            OUTLOOK, "Bauantrag Flurstück 12/3",
            "Hallo Frau Müller,\n\ndie Unterlagen für den Bauantrag sind vollständig. Die "
            "Gebühr beträgt 120 €.\nBitte überweisen Sie sie bis zum 30.04.",
            "sind meine Unterlagen vollständig?"),
        "Thunderbird de flowed (Am ... schrieb ...:)": (
            THUNDERBIRD, "Termin am Donnerstag",
            "Guten Tag Frau Müller,\n\nDonnerstag um 10 Uhr passt gut, wir treffen uns im Raum "
            "3.17 im zweiten Obergeschoss des Rathauses.",
            "Ich bringe die Pläne für das Flurstück mit."),
        "Thunderbird de HTML (moz-cite-prefix)": (
            build("Gern, ich bringe die Pläne mit.\n\nAm 12.03.2024 um 10:15 schrieb Erika "
                  "Müller:\n> Bringen Sie die Pläne für das Flurstück mit?\n\n-- \nJan Vogel\n"
                  "Bauordnungsamt\n", subject="Re: Pläne", html=THUNDERBIRD_HTML,
                  sender="Jan Vogel <jan.vogel@stadt.example>").as_bytes(),
            "Pläne", "Gern, ich bringe die Pläne mit.",
            "Bringen Sie die Pläne für das Flurstück mit?"),
        "Gmail de (Am ... um ... Uhr schrieb ...:)": (
            GMAIL_DE, "Teilnehmerliste", "Hallo Erika,\n\nich schicke dir die Liste morgen.",
            "Hast du die Teilnehmerliste?"),
        "Gmail en (On ... wrote:)": (
            build("Yes, Thursday works for me.\n\nOn Tue, Mar 12, 2024 at 10:15 AM Max "
                  "Mustermann <max@stadt.example> wrote:\n> Does Thursday work for the site "
                  "visit?\n> Max\n", subject="Re: Site visit", html=GMAIL_EN_HTML,
                  sender="Erika <erika@gmail.example>").as_bytes(),
            "Site visit", "Yes, Thursday works for me.", "Does Thursday work for the site"),
        "Apple Mail de (Am ... um ... schrieb ...:)": (
            build("Ist erledigt.\n\n> Am 12.03.2024 um 10:15 schrieb Erika Müller "
                  "<erika@example.org>:\n>\n> Können Sie das Formular noch unterschreiben?\n",
                  subject="Re: Formular", html=APPLE_HTML,
                  sender="Lena Koch <lena.koch@icloud.example>").as_bytes(),
            "Formular", "Ist erledigt.", "Können Sie das Formular noch unterschreiben?"),
    }


@pytest.mark.parametrize("client", list(_quote_cases()))
async def test_quotes_are_folded_away_but_kept(desk: Desk, client: str) -> None:
    raw, topic, new_text, quoted = _quote_cases()[client]
    event = await _arrives(desk, _fresh(raw), new_text.split("\n")[0])
    assert event["content"]["body"] == f"{topic}\n\n{new_text}"
    html = event["content"]["formatted_body"]
    assert new_text.split("\n")[-1] in _outside_details(html)
    assert quoted not in _outside_details(html)
    # The original is one click away, collapsed.
    assert "<details>" in html and quoted in html.split("<details>", 1)[1]


@pytest.mark.parametrize("number", [1, 3, 4, 5, 6])
async def test_corpus_german_quotes(desk: Desk, number: int) -> None:
    """German replies from the discourse reply trimmer, with its expected trimmed text:
    K-9 Mail "… schrieb:", "-----Ursprüngliche Nachricht-----", Google Inbox and Gmail
    "schrieb am … um … Uhr:", "Am … schrieb" with the address wrapped."""
    body = _corpus(f"discourse-email_reply_trimmer/emails/embedded_email_german_{number}.txt")
    expected = _corpus(f"discourse-email_reply_trimmer/trimmed/embedded_email_german_{number}"
                       ".txt").decode().strip()
    msg = _mail(f"Leser {number} <leser{number}@example.org>", desk.address,
                f"Re: Rückfrage {number}", body.decode())
    event = await _arrives(desk, msg, expected.split("\n")[0])
    assert event["content"]["body"] == f"Rückfrage {number}\n\n{expected}"
    assert "<details>" in event["content"]["formatted_body"]


# --- subjects --------------------------------------------------------------------------------

async def test_subject_shown_once_and_prefixes_never(desk: Desk) -> None:
    # A forwarded mail starts a topic: the cleaned subject once, as its first line.
    fwd = _mail("Max Mustermann <max@stadt.example>", desk.address,
                "Fwd: Sperrung der Brückenstraße",
                "Zur Info für alle.\n\n---------- Forwarded message ---------\n"
                "From: Tiefbauamt <tiefbau@stadt.example>\nDate: Mon, 10 Mar 2025 08:00\n"
                "Subject: Sperrung der Brückenstraße\nTo: Poststelle <post@stadt.example>\n\n"
                "Die Brückenstraße ist ab Montag gesperrt.\n")
    root = await _arrives(desk, fwd, "Zur Info für alle.")
    body, html = root["content"]["body"], root["content"]["formatted_body"]
    assert body.split("\n")[:3] == ["Sperrung der Brückenstraße", "", "Zur Info für alle."]
    assert "Fwd:" not in body and "Fwd:" not in html
    assert html.count("<strong>Sperrung der Brückenstraße</strong>") == 1
    assert "Die Brückenstraße ist ab Montag gesperrt." in body
    assert "m.relates_to" not in root["content"]

    # Replies into that thread, however many prefixes Outlook stacked up: no subject line.
    reply = _mail("Anna Schulz <anna.schulz@stadt.example>", desk.address,
                  "AW: WG: Re: Sperrung der Brückenstraße", "Gilt das auch für Radfahrer?",
                  In_Reply_To=fwd["Message-ID"], References=fwd["Message-ID"])
    answer = await _arrives(desk, reply, "Gilt das auch für Radfahrer?")
    assert answer["content"]["body"] == "Gilt das auch für Radfahrer?"
    assert "Sperrung" not in answer["content"]["formatted_body"]
    assert answer["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert answer["content"]["m.relates_to"]["event_id"] == root["event_id"]
    again = _mail("Max Mustermann <max@stadt.example>", desk.address,
                  "WG: AW: WG: Re: Sperrung der Brückenstraße", "Ja, auch für Radfahrer.",
                  In_Reply_To=reply["Message-ID"],
                  References=f"{fwd['Message-ID']} {reply['Message-ID']}")
    answer = await _arrives(desk, again, "Ja, auch für Radfahrer.")
    assert answer["content"]["body"] == "Ja, auch für Radfahrer."
    assert answer["content"]["m.relates_to"]["event_id"] == root["event_id"]
