"""The outbound mail: headers, MIME structure, bodies and encoding, parsed back as a mail client
would; header injection and robustness with hypothesis."""

from __future__ import annotations

import copy
import pickle
import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import lxml.html
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.email.addresses import (
    make_reply_address,
    make_unsubscribe_address,
    message_id_for,
    thread_key_for,
)
from bridge.email.compose import (
    LinkedFile,
    MailTemplate,
    OutgoingAttachment,
    build_email,
    flatten,
    matrix_html_to_text,
)

DOMAIN = "bridge.stadt-musterstadt.de"
SECRET = b"0123456789abcdef-test-secret"
ROOM_ADDRESS = f"bauamt@{DOMAIN}"
RECIPIENT = "Max.Mustermann@stadt-musterstadt.de"
REPLY_TO = make_reply_address("bauamt", DOMAIN, thread_key_for("$root"), SECRET)
UNSUBSCRIBE = make_unsubscribe_address("bauamt", DOMAIN, RECIPIENT, SECRET)
MESSAGE_ID = message_id_for("$event", DOMAIN)
ROOT_ID = message_id_for("$root", DOMAIN)

BASE_HEADERS = {
    "from", "to", "reply-to", "subject", "date", "message-id", "list-id", "list-post",
    "list-unsubscribe", "auto-submitted", "x-auto-response-suppress", "precedence",
    "mime-version", "content-type",
}


def build(**overrides: Any) -> EmailMessage:
    arguments: dict[str, Any] = {
        "room_localpart": "bauamt", "domain": DOMAIN, "room_name": "Bauamt",
        "sender_name": "Erika Musterfrau", "recipient": RECIPIENT,
        "subject": "[Bauamt] Frage zum Antrag", "text": "Hallo zusammen", "html": None,
        "message_id": MESSAGE_ID, "in_reply_to": None, "references": [],
        "reply_to": REPLY_TO, "unsubscribe_address": UNSUBSCRIBE,
        "date": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    }
    arguments.update(overrides)
    return build_email(**arguments)


def parse(msg: EmailMessage) -> EmailMessage:
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def bodies(msg: EmailMessage) -> tuple[str, str]:
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    # The parser keeps the CRLF line ends of the wire format; compare text with "\n".
    return (plain.get_content().replace("\r\n", "\n"),
            html.get_content().replace("\r\n", "\n"))


def header_names(msg: EmailMessage) -> list[str]:
    """All header names, lowercase and sorted; a duplicated header shows up twice."""
    return sorted(name.lower() for name in msg)


def assert_smtp_safe(raw: bytes) -> None:
    assert raw.isascii(), "the message must be 7-bit clean"
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


# --- headers ---------------------------------------------------------------------------------


def test_headers_of_a_new_topic() -> None:
    msg = parse(build())
    assert header_names(msg) == sorted(BASE_HEADERS)
    (sender,) = msg["From"].addresses
    assert sender.display_name == "Erika Musterfrau"
    assert sender.addr_spec == ROOM_ADDRESS
    assert msg["To"].addresses[0].addr_spec == RECIPIENT
    assert msg["Reply-To"].addresses[0].addr_spec == REPLY_TO
    assert msg["Subject"] == "[Bauamt] Frage zum Antrag"
    assert msg["Date"].datetime == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert msg["Message-ID"] == MESSAGE_ID
    assert msg["List-Id"] == f'"Bauamt" <bauamt.{DOMAIN}>'
    assert msg["List-Post"] == f"<mailto:{ROOM_ADDRESS}>"
    assert msg["List-Unsubscribe"] == f"<mailto:{UNSUBSCRIBE}?subject=unsubscribe>"
    assert msg["List-Unsubscribe-Post"] is None
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "list"
    assert msg.get_content_type() == "multipart/alternative"


def test_reply_threading_headers() -> None:
    earlier = "<CAHx9yz@mail.gmail.com>"
    msg = parse(build(in_reply_to=ROOT_ID, references=[earlier, ROOT_ID]))
    assert msg["In-Reply-To"] == ROOT_ID
    assert msg["References"].split() == [earlier, ROOT_ID]

    # In-Reply-To ends the chain even if the caller forgot it or had it elsewhere.
    msg = parse(build(in_reply_to=ROOT_ID, references=[ROOT_ID, earlier]))
    assert msg["References"].split() == [earlier, ROOT_ID]
    msg = parse(build(in_reply_to=ROOT_ID[1:-1], references=[]))
    assert msg["In-Reply-To"] == ROOT_ID
    assert msg["References"] == ROOT_ID


def test_long_references_are_folded_between_ids_not_encoded() -> None:
    gmail = "<CA" + "x" * 70 + "@mail.gmail.com>"
    outlook = "<AM0PR07MB1234567890ABCDEF1234567890@AM0PR07MB1234.eurprd07.prod.outlook.com>"
    chain = [gmail, outlook, *[f"<id{i}@example.org>" for i in range(30)], ROOT_ID]
    msg = build(in_reply_to=ROOT_ID, references=chain)
    raw = msg.as_bytes()
    assert_smtp_safe(raw)
    header = re.search(rb"\r\nReferences:(.*?)\r\n(?! )", raw, re.DOTALL)
    assert header is not None
    assert b"=?" not in header.group(1)
    ids = parse(msg)["References"].split()
    assert len(ids) == 20  # bounded: the root of the chain plus the latest ones
    assert ids[0] == gmail
    assert ids[-1] == ROOT_ID
    assert all(re.fullmatch(r"<[^<>\s]+@[^<>\s]+>", i) for i in ids)


def test_message_survives_copy_and_pickle() -> None:
    msg = build(in_reply_to=ROOT_ID, references=[ROOT_ID], room_name="Bürgeramt")
    for clone in (copy.deepcopy(msg), pickle.loads(pickle.dumps(msg))):
        assert clone.as_bytes() == msg.as_bytes()


def test_garbled_references_are_dropped_not_fatal() -> None:
    msg = parse(build(in_reply_to="not an id", references=["<ok@example.org>", "a b", "<>"]))
    assert msg["In-Reply-To"] is None
    assert msg["References"] == "<ok@example.org>"


def test_one_click_unsubscribe_only_with_https() -> None:
    msg = parse(build(unsubscribe_url="https://bridge.example.org/unsubscribe?t=abc"))
    assert msg["List-Unsubscribe"] == (
        f"<mailto:{UNSUBSCRIBE}?subject=unsubscribe>, "
        "<https://bridge.example.org/unsubscribe?t=abc>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    msg = parse(build(unsubscribe_url="http://bridge.example.org/unsubscribe?t=abc"))
    assert "<http://bridge.example.org/unsubscribe?t=abc>" in msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] is None

    with pytest.raises(ValueError):
        build(unsubscribe_url="javascript:alert(1)")


def test_umlauts_in_names_subject_and_room_round_trip() -> None:
    msg = build(sender_name="Jürgen Größe-Übel", subject="Grüße aus Köln \u2013 Bauantrag",
                room_name="Bürgeramt (Nord), Abt. 3")
    raw = msg.as_bytes()
    assert_smtp_safe(raw)
    assert b"=?utf-8?" in raw  # RFC 2047 in the headers
    parsed = parse(msg)
    assert parsed["From"].addresses[0].display_name == "Jürgen Größe-Übel"
    assert parsed["From"].addresses[0].addr_spec == ROOM_ADDRESS
    assert parsed["Subject"] == "Grüße aus Köln \u2013 Bauantrag"
    assert parsed["List-Id"] == f"Bürgeramt (Nord), Abt. 3 <bauamt.{DOMAIN}>"


def test_display_name_that_looks_like_an_address_is_quoted() -> None:
    msg = build(sender_name="boss@example.org")
    assert f'From: "boss@example.org" <{ROOM_ADDRESS}>'.encode() in msg.as_bytes()
    (sender,) = parse(msg)["From"].addresses
    assert sender.addr_spec == ROOM_ADDRESS
    assert sender.display_name == "boss@example.org"

    # Even a name that tries to bring its own <address> and quotes cannot take over.
    (sender,) = parse(build(sender_name='"Boss" <boss@example.org>'))["From"].addresses
    assert sender.addr_spec == ROOM_ADDRESS
    assert "<" not in sender.display_name


def test_empty_sender_name_falls_back() -> None:
    assert parse(build(sender_name="\u200b \r\n"))["From"].addresses[0].display_name == "Matrix"


def test_recipient_with_idn_domain() -> None:
    msg = build(recipient="max@münchen.de")
    assert_smtp_safe(msg.as_bytes())
    assert parse(msg)["To"].addresses[0].addr_spec == "max@xn--mnchen-3ya.de"


@pytest.mark.parametrize("field,value", [
    ("recipient", "not an address"),
    ("recipient", "a@b.de\r\nBcc: x@y"),
    ("reply_to", "x"),
    ("unsubscribe_address", "x\n@y.de"),
    ("message_id", "no id"),
    ("room_localpart", "bau+amt"),
    ("domain", "bad domain"),
])
def test_bridge_side_values_are_validated(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        build(**{field: value})


def test_naive_and_offset_dates() -> None:
    msg = parse(build(date=datetime(2024, 1, 2, 3, 4, 5)))
    assert msg["Date"].datetime == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    berlin = timezone(timedelta(hours=2))
    msg = parse(build(date=datetime(2024, 7, 1, 14, 0, tzinfo=berlin)))
    assert msg["Date"].datetime == datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
    assert parse(build(date=None))["Date"] is not None


# --- header injection ------------------------------------------------------------------------

INJECTIONS = [
    "Evil\r\nBcc: victim@example.org",
    "Evil\nBcc: victim@example.org",
    "Evil\rBcc: victim@example.org",
    "Evil\r\n\r\nbody takeover",
    "Evil\u2028Bcc: victim@example.org",
    "Evil\x85Bcc: victim@example.org",
    "=?utf-8?b?DQpCY2M6IHZpY3RpbUBleGFtcGxlLm9yZw==?=",  # CRLF Bcc inside an encoded-word
    "=?utf-8?q?=0D=0ABcc:_victim@example.org?=",
    '"Evil" <evil@example.org>, other@example.org',
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_header_injection_is_neutralised(payload: str) -> None:
    msg = build(sender_name=payload, subject=payload, room_name=payload)
    raw = msg.as_bytes()
    assert_smtp_safe(raw)
    assert b"\r\nBcc:" not in raw
    parsed = parse(msg)
    assert header_names(parsed) == sorted(BASE_HEADERS)
    assert [a.addr_spec for a in parsed["From"].addresses] == [ROOM_ADDRESS]
    assert [a.addr_spec for a in parsed["To"].addresses] == [RECIPIENT]
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["Subject"])
    assert not parsed.defects


def test_lone_surrogates_and_nul_are_dropped_everywhere() -> None:
    junk = "a\ud800b\x00c\x7f"
    msg = build(sender_name=junk, subject=junk, room_name=junk, text=junk, html=f"<p>{junk}</p>",
                attachments=[OutgoingAttachment(junk, junk, b"")])
    assert_smtp_safe(msg.as_bytes())
    parsed = parse(msg)
    assert parsed["Subject"] == "abc"
    assert parsed["From"].addresses[0].display_name == "abc"
    text, html = bodies(parsed)
    assert text.startswith("abc\n") and "<p>abc</p>" in html
    with pytest.raises(ValueError):
        build(linked_files=[LinkedFile("x", "https://example.org/\ud800", 1)])


# --- MIME structure and bodies ---------------------------------------------------------------


def test_alternative_parts_and_encodings() -> None:
    msg = build(text="Grüße aus dem Bauamt\nZweite Zeile",
                html="<p>Grüße aus dem <b>Bauamt</b></p>")
    raw = msg.as_bytes()
    assert_smtp_safe(raw)
    parsed = parse(msg)
    plain, html = (parsed.get_body((kind,)) for kind in ("plain", "html"))
    assert plain is not None and html is not None
    for part in (plain, html):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part["MIME-Version"] is None  # only on the top level
    text, html_text = bodies(parsed)
    assert text.startswith("Grüße aus dem Bauamt\nZweite Zeile\n")
    assert "<b>Bauamt</b>" in html_text


def test_ascii_text_with_short_lines_is_7bit() -> None:
    part = parse(build(text="Hello", room_name="Team", sender_name="Bob")).get_body(("plain",))
    assert part is not None
    assert part["Content-Transfer-Encoding"] == "7bit"


def test_policy_smtp_crlf_and_long_lines() -> None:
    long_line = "wort " * 400 + "x" * 1500  # one paragraph of ~3500 characters
    msg = build(text=long_line, html=f"<p>{long_line}</p>")
    raw = msg.as_bytes()
    assert_smtp_safe(raw)
    body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(len(line) for line in body_lines) <= 78  # quoted-printable soft line breaks
    text, html = bodies(parse(msg))
    assert long_line in text
    assert long_line in html


def test_footer_in_text_and_html() -> None:
    text, html = bodies(parse(build(room_name="Bauamt Nord")))
    body, separator, footer = text.partition("\n-- \n")
    assert separator, "the footer starts with the signature separator"
    assert body == "Hallo zusammen\n"
    assert f'"Bauamt Nord" <{ROOM_ADDRESS}>' in footer
    assert "Reply to this email" in footer
    assert UNSUBSCRIBE in footer
    assert "Bauamt Nord" in html
    assert f'href="mailto:{UNSUBSCRIBE}?subject=unsubscribe"' in html


def test_html_generated_from_text_is_escaped() -> None:
    _, html = bodies(parse(build(
        text="<script>alert(1)</script> & more\n  indented\nsee https://example.org/a?b=1&c=2.",
        html=None,
    )))
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more<br>" in html
    assert "&nbsp;&nbsp;indented" in html
    assert '<a href="https://example.org/a?b=1&amp;c=2">https://example.org/a?b=1&amp;c=2</a>.' \
        in html


def test_matrix_html_is_wrapped_well_formed_and_inline_styled() -> None:
    _, html = bodies(parse(build(
        html='<p>Hi <a href="https://matrix.to/#/@bob:example.org">Bob</a></p>'
             '<blockquote>quote</blockquote><table><tr><td>open cell'
             '<script>alert(1)</script><img src="mxc://x/y" alt=":party:" onerror="x()">'
             '<font data-mx-color="#ff0000">red</font><a href="javascript:x()">js</a>'
             "</body></html><!-- hidden -->",
    )))
    assert html.startswith("<!DOCTYPE html>")
    assert "<style" not in html and "<link" not in html and "<script" not in html
    assert "matrix.to" not in html and "Hi Bob</p>" in html
    assert "mxc://" not in html and ":party:" in html
    assert "onerror" not in html and "javascript:" not in html and "hidden" not in html
    assert 'style="color:#ff0000"' in html
    assert "border-left:3px solid" in html
    # The unclosed table is closed before our footer, so the footer is not inside the cell.
    assert html.index("</table>") < html.index("You receive this email")
    assert html.count("<body") == 1 and html.count("</body>") == 1


# Every way HTML can make a mail client fetch a URL (or restyle the mail to hide or fake
# content), all pointing at a tracker a room member controls.
HOSTILE_HTML = (
    '<p style="background:url(https://tracker.example/p1)">styled</p>'
    '<table background="https://tracker.example/p2"><tr>'
    '<td background="https://tracker.example/p3" style="background-image:'
    'url(https://tracker.example/p4)">cell</td></tr></table>'
    '<img src="https://tracker.example/p5.png" srcset="https://tracker.example/p6.png 2x"'
    ' alt="Foto">'
    '<img src="https://tracker.example/p7.png">'
    '<picture><source srcset="https://tracker.example/p8.png"></picture>'
    '<video poster="https://tracker.example/p9.jpg" src="https://tracker.example/p10.mp4">'
    "</video><audio src=\"https://tracker.example/p11.mp3\"></audio>"
    '<link rel="stylesheet" href="https://tracker.example/p12.css">'
    "<style>@import url(https://tracker.example/p13.css);</style>"
    '<svg><image href="https://tracker.example/p14.png"/></svg>'
    '<input type="image" src="https://tracker.example/p15.png">'
    '<object data="https://tracker.example/p16"></object>'
    '<embed src="https://tracker.example/p17"><iframe src="https://tracker.example/p18">'
    '</iframe><base href="https://tracker.example/">'
    '<meta http-equiv="refresh" content="0;url=https://tracker.example/p19">'
    '<div style="behavior:url(https://tracker.example/p20.htc)">behaviour</div>'
    '<span data-mx-color="#00ff00" style="position:fixed;top:0">green</span>'
    '<font color="red" face="x" style="display:none">hidden?</font>'
    '<a href="https://example.org/doc" style="color:red" ping="https://tracker.example/p21"'
    ' onclick="x()">Link</a>'
)


def test_member_html_cannot_make_mail_clients_load_anything() -> None:
    _, html = bodies(parse(build(html=HOSTILE_HTML)))
    tree = lxml.html.document_fromstring(html)
    for element in tree.iter():
        if not isinstance(element.tag, str):
            continue
        assert element.tag not in ("img", "video", "audio", "source", "picture", "link",
                                   "style", "svg", "image", "input", "object", "embed",
                                   "iframe", "base", "script"), element.tag
        assert not set(element.attrib) & {"src", "srcset", "background", "poster", "data",
                                          "ping", "onclick", "face"}, element.attrib
        href = element.get("href")
        assert href is None or element.tag == "a", element.tag
        # The only styles are the bridge's own, which load nothing.
        assert "url(" not in (element.get("style") or "")
    assert "@import" not in html and "refresh" not in html
    # A remote image is a link to it (named by its alt text) that the reader may follow.
    links = {a.text_content(): a.get("href") for a in tree.iter("a")}
    assert links["Foto"] == "https://tracker.example/p5.png"
    assert links["https://tracker.example/p7.png"] == "https://tracker.example/p7.png"
    assert links["Link"] == "https://example.org/doc"
    assert all("tracker" not in (e.get("style") or "") for e in tree.iter())
    # What was said is still there, with the colours Matrix clients show.
    assert "styled" in html and "cell" in html and "behaviour" in html
    assert 'style="color:#00ff00"' in html and "position" not in html
    assert "display:none" not in html and "hidden?" in html


def test_html_without_visible_content_falls_back_to_the_text() -> None:
    _, html = bodies(parse(build(text="Nur Text", html="<mx-reply>old</mx-reply>")))
    assert "Nur Text" in html and "old" not in html


def test_correction_notice() -> None:
    text, html = bodies(parse(build(text="Termin ist am Dienstag", is_correction=True)))
    assert text.startswith("Correction:\nTermin ist am Dienstag\n")
    assert ">Correction:</p>" in html
    assert html.index("Correction:") < html.index("Termin ist am Dienstag")


def test_attachments_with_umlaut_filenames() -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256))
    msg = build(attachments=[
        OutgoingAttachment("Übersicht März.pdf", "application/pdf", pdf),
        OutgoingAttachment("notes.txt", "text/plain; charset=iso-8859-1",
                           "Grüße".encode("latin-1")),
        OutgoingAttachment("../../etc/\u202egpj.exe", "not a type", b"MZ"),
        OutgoingAttachment("mail.eml", "message/rfc822", b"Subject: x\r\n\r\nx"),
    ])
    raw = msg.as_bytes()
    assert_smtp_safe(raw)
    assert b"filename*=utf-8''%C3%9Cbersicht%20M%C3%A4rz.pdf" in raw  # RFC 2231
    parsed = parse(msg)
    assert parsed.get_content_type() == "multipart/mixed"
    first, *files = parsed.iter_parts()
    assert first.get_content_type() == "multipart/alternative"
    assert [f.get_filename() for f in files] == [
        "Übersicht März.pdf", "notes.txt", "gpj.exe", "mail.eml"]
    assert [f.get_content_type() for f in files] == [
        "application/pdf", "text/plain", "application/octet-stream", "application/octet-stream"]
    assert files[0].get_content() == pdf
    assert files[0]["Content-Transfer-Encoding"] == "base64"
    assert files[0].get_param("name") == "Übersicht März.pdf"
    assert files[1].get_content() == "Grüße"  # decoded with its charset
    assert all(f.get_content_disposition() == "attachment" for f in files)
    text, html = bodies(parsed)
    assert "Hallo zusammen" in text and "Hallo zusammen" in html


def test_linked_files_listed_in_text_and_html() -> None:
    msg = parse(build(linked_files=[
        LinkedFile("Großes Video.mp4", "https://matrix.to/#/!room:example.org/$event", 12_345_678),
        LinkedFile("plan <1>.pdf", "https://files.example.org/a b", None),
    ]))
    text, html = bodies(msg)
    assert ("Attachment too large to send by mail: Großes Video.mp4 (12.3 MB): "
            "https://matrix.to/#/!room:example.org/$event") in text
    assert "Attachment too large to send by mail: plan <1>.pdf: https://files.example.org/a%20b" \
        in text
    assert text.index("Attachment too large") < text.index("\n-- \n")
    assert "<strong>plan &lt;1&gt;.pdf</strong>" in html
    assert '<a href="https://files.example.org/a%20b">' in html
    assert msg.get_content_type() == "multipart/alternative"  # no files attached
    with pytest.raises(ValueError):
        build(linked_files=[LinkedFile("x", "file:///etc/passwd", 1)])


# --- matrix_html_to_text ---------------------------------------------------------------------


def test_matrix_html_to_text_pills_links_and_formatting() -> None:
    text = matrix_html_to_text(
        '<mx-reply><blockquote><a href="https://matrix.to/#/!r:x/$e">In reply to</a> old'
        "</blockquote></mx-reply>"
        '<p>Hallo <a href="https://matrix.to/#/@anna:example.org">Anna Schmidt</a>, siehe '
        '<a href="https://example.org/doc">das Dokument</a> und https://example.org/x '
        '(<a href="https://example.org/y">https://example.org/y</a>).</p>'
        "<ul><li>eins</li><li>zwei</li></ul>"
        "<pre><code>def f():\n    return 1</code></pre>"
        "<blockquote><p>Zitat</p><blockquote>innen</blockquote></blockquote>"
        '<p>Ende <img src="mxc://x/y" alt=":party:"> &amp; &lt;tag&gt;</p>'
    )
    assert "In reply to" not in text and "old" not in text
    assert "Hallo Anna Schmidt, siehe das Dokument <https://example.org/doc> und" in text
    assert "matrix.to" not in text
    assert "(https://example.org/y)." in text  # no "<url>" when the text is the URL
    assert "* eins" in text and "* zwei" in text
    assert "def f():\n    return 1" in text
    assert "> Zitat" in text and "> > innen" in text
    assert "Ende :party: & <tag>" in text


@pytest.mark.parametrize("source", ["", "   ", "<!DOCTYPE html>", "<", "</p>", "\x00\x01"])
def test_matrix_html_to_text_degenerate_input(source: str) -> None:
    assert isinstance(matrix_html_to_text(source), str)


# --- properties ------------------------------------------------------------------------------

NASTY_PIECES = ["\r", "\n", "\r\n", "\x00", "\x0b", "\x85", "\u2028", '"', "<", ">", "@", ",",
                ";", ":", "\\", "(", ")", "=?", "?=", "=?utf-8?b?DQpCY2M6IHhAeQ==?=",
                "Bcc: x@y", "\u202e", "\u200b", "\ud7ff", "ä", "日本", "😀", " " * 80, "x" * 90]
nasty_text = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(NASTY_PIECES)),
                      max_size=10).map("".join)


@settings(max_examples=150, deadline=None)
@given(sender=nasty_text, subject=nasty_text, room=nasty_text, text=nasty_text,
       html=st.none() | nasty_text, filename=nasty_text)
def test_build_email_never_raises_or_adds_headers(sender: str, subject: str, room: str,
                                                 text: str, html: str | None,
                                                 filename: str) -> None:
    msg = build(sender_name=sender, subject=subject, room_name=room, text=text, html=html,
                attachments=[OutgoingAttachment(filename, "application/pdf", b"x")],
                linked_files=[LinkedFile(filename, "https://example.org/f", 5)],
                in_reply_to=ROOT_ID, references=[ROOT_ID])
    raw = msg.as_bytes()
    assert_smtp_safe(raw)
    parsed = parse(msg)
    assert header_names(parsed) == sorted(BASE_HEADERS | {"in-reply-to", "references"})
    assert [a.addr_spec for a in parsed["From"].addresses] == [ROOM_ADDRESS]
    assert [a.addr_spec for a in parsed["To"].addresses] == [RECIPIENT]
    assert [a.addr_spec for a in parsed["Reply-To"].addresses] == [REPLY_TO]
    assert parsed["Message-ID"] == MESSAGE_ID
    part_types = [p.get_content_type() for p in parsed.walk()]
    assert part_types == ["multipart/mixed", "multipart/alternative", "text/plain", "text/html",
                          "application/pdf"]


@settings(max_examples=150, deadline=None)
@given(source=nasty_text | st.text())
def test_matrix_html_to_text_never_raises(source: str) -> None:
    assert isinstance(matrix_html_to_text(source), str)


# --- one template per fan-out ----------------------------------------------------------------

_BOUNDARY_RE = re.compile(rb"=_[0-9a-f]{32}")
_DATE = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def _same_boundaries(raw: bytes) -> bytes:
    """Each mail has its own random MIME boundaries; a template's copies share theirs."""
    return _BOUNDARY_RE.sub(b"=_boundary", raw)


def _unsubscribe_url(recipient: str) -> str:
    return f"https://bridge.example/_bridge/email/unsubscribe?room=bauamt&address={recipient}"


FAN_OUT_RECIPIENTS = [RECIPIENT, "a@b.de", "anna.schmidt+newsletter@stadt-musterstadt.de",
                      "x" * 60 + "@" + "sehr-lange-domain." * 6 + "example",
                      "joerg@bücher.example", "o'brien@example.org"]


@pytest.mark.parametrize("with_url", ["https", "http", None])
@pytest.mark.parametrize("text", [
    "Hallo zusammen",
    "Grüße aus dem Bauamt: " + "Straßenbau und Müllabfuhr " * 40,  # quoted-printable
    "\n".join(["kurz"] * 3 + ["y" * 200]),
])
def test_template_copies_are_the_mails_build_email_writes(with_url: str | None,
                                                          text: str) -> None:
    common: dict[str, Any] = {
        "room_localpart": "bauamt", "domain": DOMAIN, "room_name": "Bauamt Süd",
        "sender_name": "Erika Musterfrau", "subject": "[Bauamt] Frage zum Antrag", "text": text,
        "html": "<p>Hallo <b>zusammen</b></p>" if with_url == "https" else None,
        "message_id": MESSAGE_ID, "in_reply_to": ROOT_ID, "references": [ROOT_ID],
        "reply_to": REPLY_TO, "date": _DATE,
        "attachments": [OutgoingAttachment("Plan ä.pdf", "application/pdf", b"%PDF" * 500)],
        "linked_files": [LinkedFile("big.zip", "https://example.org/big.zip", 50_000_000)],
    }

    def url(recipient: str) -> str | None:
        if with_url is None:
            return None
        return _unsubscribe_url(recipient).replace("https:", f"{with_url}:")

    first = FAN_OUT_RECIPIENTS[0]
    template = MailTemplate(unsubscribe_address=make_unsubscribe_address(
        "bauamt", DOMAIN, first, SECRET), unsubscribe_url=url(first), **common)
    for recipient in FAN_OUT_RECIPIENTS:
        _assert_copy_is_the_mail_alone(template, recipient, url(recipient), common)


def _assert_copy_is_the_mail_alone(template: MailTemplate, recipient: str, url: str | None,
                                   common: dict[str, Any]) -> None:
    """The template's copy for ``recipient`` is the mail build_email writes for them."""
    unsubscribe = make_unsubscribe_address("bauamt", DOMAIN, recipient, SECRET)
    copy_ = template.render(recipient, unsubscribe, url)
    assert copy_ is not None
    alone = flatten(build_email(recipient=recipient, unsubscribe_address=unsubscribe,
                                unsubscribe_url=url, **common))
    assert _same_boundaries(copy_) == _same_boundaries(alone)


def test_template_refuses_what_does_not_fit() -> None:
    template = MailTemplate(unsubscribe_address=UNSUBSCRIBE, unsubscribe_url=None,
                            room_localpart="bauamt", domain=DOMAIN, room_name="Bauamt",
                            sender_name="Erika", subject="s", text="t", html=None,
                            message_id=MESSAGE_ID, in_reply_to=None, references=[],
                            reply_to=REPLY_TO, date=_DATE)
    assert template.render(RECIPIENT, UNSUBSCRIBE, None) is not None
    # Another length, a URL where the template has none: built on its own instead.
    assert template.render(RECIPIENT, "x" + UNSUBSCRIBE, None) is None
    assert template.render(RECIPIENT, UNSUBSCRIBE, _unsubscribe_url(RECIPIENT)) is None
    with pytest.raises(ValueError):
        template.render("not an address", UNSUBSCRIBE, None)


@settings(max_examples=60, deadline=None)
@given(text=nasty_text, html=st.none() | nasty_text, local=st.from_regex(
    r"[a-z0-9][a-z0-9._+-]{0,40}", fullmatch=True))
def test_template_copies_match_for_any_message(text: str, html: str | None, local: str) -> None:
    common: dict[str, Any] = {
        "room_localpart": "bauamt", "domain": DOMAIN, "room_name": "Bauamt",
        "sender_name": "Erika", "subject": "s", "text": text, "html": html,
        "message_id": MESSAGE_ID, "in_reply_to": None, "references": [],
        "reply_to": REPLY_TO, "date": _DATE}
    template = MailTemplate(unsubscribe_address=UNSUBSCRIBE,
                            unsubscribe_url=_unsubscribe_url(RECIPIENT), **common)
    recipient = f"{local.strip('.') or 'a'}@example.org".replace("..", ".")
    _assert_copy_is_the_mail_alone(template, recipient, _unsubscribe_url(recipient), common)
