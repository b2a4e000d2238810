"""Our own small corpus: one German-flavoured mail per case the parser must handle.

Most mails are built with `email.message.EmailMessage` (`build`), so their MIME structure is
valid and the test shows intent; the broken ones are written out as raw bytes.
`SAMPLES` collects every mail here; the property tests mutate them.
"""

# German mail text has en dashes; they are the test data, not typos.
# ruff: noqa: RUF001

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from bridge.email.parse import (
    MalformedMail,
    ParsedMail,
    detect_auto_reply,
    parse_message,
    split_reply,
    strip_subject_prefixes,
    unflow,
)
from bridge.email.sanitize import sanitize_html

SAMPLES: dict[str, bytes] = {}


def sample(name: str, raw: bytes) -> bytes:
    SAMPLES[name] = raw
    return raw


def build(
    body: str | None = None,
    *,
    subject: str = "Bauantrag Flurstück 12/3",
    sender: str = "Erika Müller <erika.mueller@example.org>",
    to: str = "Bauamt <bauamt@stadt.example>",
    html: str | None = None,
    charset: str = "utf-8",
    cte: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[bytes, str, str]] = (),  # type: ignore[assignment]
) -> EmailMessage:
    """A mail like a client sends it: text, optional HTML alternative, attachments."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 12 Mar 2024 10:15:00 +0100"
    msg["Message-ID"] = "<reply-1@client.example>"
    for name, value in (headers or {}).items():
        msg[name] = value
    if body is not None:
        msg.set_content(body, charset=charset, cte=cte)
    if html is not None:
        if body is None:
            msg.set_content(html, subtype="html")
        else:
            msg.add_alternative(html, subtype="html")
    for data, mimetype, filename in attachments:
        maintype, subtype = mimetype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def raw_mail(text: str, encoding: str = "utf-8") -> bytes:
    """Hand-written raw mail: dedented, CRLF line ends as on the wire.

    "<SP>" stands for a trailing space (format=flowed soft breaks, the "-- " separator),
    which an editor would strip from the source.
    """
    text = textwrap.dedent(text).lstrip("\n").replace("<SP>", " ")
    return text.replace("\n", "\r\n").encode(encoding)


def squash(text: str | None) -> str:
    return " ".join((text or "").split())


# --------------------------------------------------------------------------------------------
# Outlook (German, windows-1252) reply
# --------------------------------------------------------------------------------------------

OUTLOOK_BODY = """\
Hallo Frau Müller,

die Unterlagen für den Bauantrag sind vollständig. Die Gebühr beträgt 120 €.
Bitte überweisen Sie sie bis zum 30.04.

Mit freundlichen Grüßen
Max Mustermann
Stadt Musterstadt – Bauordnungsamt
Tel. 01234 567-89

Von: Erika Müller <erika.mueller@example.org>
Gesendet: Dienstag, 12. März 2024 10:15
An: Max Mustermann <max.mustermann@stadt.example>
Betreff: Bauantrag Flurstück 12/3

Sehr geehrter Herr Mustermann,

sind meine Unterlagen vollständig?

Viele Grüße
Erika Müller
"""

OUTLOOK = sample("outlook_cp1252", build(
    OUTLOOK_BODY, subject="AW: Bauantrag Flurstück 12/3", charset="windows-1252",
    cte="quoted-printable", sender="Max Mustermann <max.mustermann@stadt.example>",
    headers={"In-Reply-To": "<orig-1@example.org>",
             "References": "<thread-0@example.org> <orig-1@example.org>",
             "Thread-Topic": "Bauantrag Flurstück 12/3",
             "X-Auto-Response-Suppress": "All"}).as_bytes())


def test_outlook_reply_in_windows_1252() -> None:
    assert b"windows-1252" in OUTLOOK and b"=80" in OUTLOOK  # the euro sign as cp1252 0x80
    mail = parse_message(OUTLOOK)
    assert mail.subject == "AW: Bauantrag Flurstück 12/3"
    assert mail.topic == "Bauantrag Flurstück 12/3"
    assert not mail.is_forward
    assert mail.text == ("Hallo Frau Müller,\n\ndie Unterlagen für den Bauantrag sind "
                         "vollständig. Die Gebühr beträgt 120 €.\nBitte überweisen Sie sie bis "
                         "zum 30.04.")
    assert mail.quoted_text is not None
    assert mail.quoted_text.startswith("Mit freundlichen Grüßen\nMax Mustermann")
    assert "Von: Erika Müller <erika.mueller@example.org>" in mail.quoted_text
    assert "sind meine Unterlagen vollständig?" in mail.quoted_text
    assert "sind meine Unterlagen vollständig?" in mail.full_text
    assert mail.from_address == "max.mustermann@stadt.example"
    assert mail.from_name == "Max Mustermann"
    assert mail.message_id == "reply-1@client.example"
    assert mail.in_reply_to == ["orig-1@example.org"]
    assert mail.references == ["thread-0@example.org", "orig-1@example.org"]
    assert mail.date == datetime(2024, 3, 12, 9, 15, tzinfo=UTC)
    assert mail.to == ["bauamt@stadt.example"]
    # X-Auto-Response-Suppress asks others not to auto-reply; it is no auto-reply itself.
    assert mail.auto_reply is None
    assert mail.bounce is None
    assert mail.html is None


def test_outlook_original_message_separator_in_english() -> None:
    mail = parse_message(build(
        "Done, see attachment.\n\n-----Original Message-----\nFrom: Erika Mueller "
        "[mailto:erika@example.org]\nSent: Tuesday, March 12, 2024 10:15 AM\nTo: Max\n"
        "Subject: Report\n\nCould you send the report?\n", subject="RE: Report").as_bytes())
    assert mail.text == "Done, see attachment."
    assert mail.quoted_text is not None
    assert mail.quoted_text.startswith("-----Original Message-----")


def test_ursprungliche_nachricht_separator() -> None:
    mail = parse_message(build(
        "Ja, passt.\n\n-----Ursprüngliche Nachricht-----\nVon: Erika Müller\n"
        "Gesendet: Dienstag, 12. März 2024 10:15\nAn: Max\nBetreff: Termin\n\n"
        "Passt Ihnen Donnerstag?\n", subject="AW: Termin").as_bytes())
    assert mail.text == "Ja, passt."
    assert "Passt Ihnen Donnerstag?" in (mail.quoted_text or "")


# --------------------------------------------------------------------------------------------
# Thunderbird, Gmail, Apple Mail
# --------------------------------------------------------------------------------------------

THUNDERBIRD = sample("thunderbird_flowed", raw_mail("""
    From: Max Mustermann <max@stadt.example>
    To: Erika Mueller <erika@example.org>
    Subject: Re: Termin am Donnerstag
    Date: Tue, 12 Mar 2024 11:02:00 +0100
    Message-ID: <tb-1@stadt.example>
    In-Reply-To: <orig-2@example.org>
    User-Agent: Mozilla Thunderbird
    MIME-Version: 1.0
    Content-Type: text/plain; charset=UTF-8; format=flowed
    Content-Transfer-Encoding: 8bit

    Guten Tag Frau Müller,

    Donnerstag um 10 Uhr passt gut, wir treffen uns im Raum 3.17 im zweiten<SP>
    Obergeschoss des Rathauses.

    Am 12.03.2024 um 10:15 schrieb Erika Müller:
    > Hallo Herr Mustermann,
    >
    > passt Ihnen Donnerstag um 10 Uhr? Ich bringe die Pläne für das<SP>
    > Flurstück mit.
    >
    > Viele Grüße
    > Erika Müller

    --<SP>
    Max Mustermann
    Stadt Musterstadt
    """))


def test_thunderbird_reply_with_format_flowed() -> None:
    mail = parse_message(THUNDERBIRD)
    assert mail.text == ("Guten Tag Frau Müller,\n\nDonnerstag um 10 Uhr passt gut, wir treffen "
                         "uns im Raum 3.17 im zweiten Obergeschoss des Rathauses.")
    quoted = mail.quoted_text or ""
    assert quoted.startswith("Am 12.03.2024 um 10:15 schrieb Erika Müller:")
    # The flowed quote was unwrapped too: one line per paragraph.
    assert "> passt Ihnen Donnerstag um 10 Uhr? Ich bringe die Pläne für das Flurstück mit." \
        in quoted
    assert "Max Mustermann\nStadt Musterstadt" in quoted  # the "-- " signature is kept there
    assert mail.topic == "Termin am Donnerstag"


def test_unflow_handles_delsp_quotes_and_signature() -> None:
    assert unflow("Dies ist ein \nlanger Satz.\n") == "Dies ist ein langer Satz.\n"
    assert unflow("Zusammen-\ngeschrieben\n") == "Zusammen-\ngeschrieben\n"
    # DelSp=yes: the space before the soft break was added by the sender and goes.
    assert unflow("Donau\xaddampf \nschiff\n", delsp=True) == "Donau\xaddampfschiff\n"
    assert unflow("> Zitat \n> weiter\n>> tiefer \n>> Zitat\n") == \
        "> Zitat weiter\n>> tiefer Zitat\n"
    # Space-stuffed lines lose one space; "-- " stays a hard signature separator.
    assert unflow(" From the start\n-- \nMax\n") == "From the start\n-- \nMax\n"


GMAIL_DE_HTML = """\
<div dir="ltr">Hallo Erika,<div><br></div><div>ich schicke dir die Liste morgen.</div></div>
<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">Am Di., 12. März 2024 um
10:15 Uhr schrieb Erika Müller &lt;<a href="mailto:erika@example.org">erika@example.org</a>&gt;:
<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">
<div dir="ltr">Hast du die Teilnehmerliste?</div></blockquote></div>
"""
GMAIL_DE = sample("gmail_de", build(
    "Hallo Erika,\n\nich schicke dir die Liste morgen.\n\nAm Di., 12. März 2024 um 10:15 Uhr "
    "schrieb Erika Müller <erika@example.org>:\n\n> Hast du die Teilnehmerliste?\n>\n",
    subject="Re: Teilnehmerliste", sender="Max <max.mustermann@gmail.example>",
    html=GMAIL_DE_HTML).as_bytes())


def test_gmail_german_reply_plain_and_html() -> None:
    mail = parse_message(GMAIL_DE)
    assert mail.text == "Hallo Erika,\n\nich schicke dir die Liste morgen."
    assert (mail.quoted_text or "").startswith("Am Di., 12. März 2024 um 10:15 Uhr schrieb")
    assert mail.html is not None
    assert "ich schicke dir die Liste morgen." in mail.html
    assert "Teilnehmerliste" not in mail.html
    assert "gmail_quote" not in mail.html
    assert "Teilnehmerliste" in mail.full_text


def test_gmail_english_reply() -> None:
    mail = parse_message(build(
        "Sounds good, thanks!\n\nOn Tue, Mar 12, 2024 at 10:15 AM Erika Mueller <\n"
        "erika@example.org> wrote:\n\n> Shall we meet on Thursday?\n",
        subject="Re: Meeting").as_bytes())
    assert mail.text == "Sounds good, thanks!"
    assert (mail.quoted_text or "").startswith("On Tue, Mar 12, 2024 at 10:15 AM")


APPLE_HTML = """\
<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head>
<body dir="auto"><div>Ist erledigt.</div><div><br><blockquote type="cite">Am 12.03.2024 um
10:15 schrieb Erika Müller &lt;erika@example.org&gt;:<br><br></blockquote></div>
<blockquote type="cite"><div>Können Sie das Formular noch unterschreiben?</div></blockquote>
</body></html>
"""


def test_apple_mail_reply() -> None:
    raw = sample("apple_de", build(
        "Ist erledigt.\n\n> Am 12.03.2024 um 10:15 schrieb Erika Müller <erika@example.org>:\n"
        ">\n> Können Sie das Formular noch unterschreiben?\n", subject="Re: Formular",
        html=APPLE_HTML).as_bytes())
    mail = parse_message(raw)
    assert mail.text == "Ist erledigt."
    assert "Können Sie das Formular" in (mail.quoted_text or "")
    assert mail.html is not None and "Ist erledigt." in mail.html
    assert "Formular" not in mail.html and "cite" not in mail.html


# --------------------------------------------------------------------------------------------
# HTML-only Outlook, multipart/related
# --------------------------------------------------------------------------------------------

OUTLOOK_HTML = """\
<html xmlns:o="urn:schemas-microsoft-com:office:office"><head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<style>p.MsoNormal {margin:0cm;}</style></head>
<body lang="DE"><div class="WordSection1">
<p class="MsoNormal">Sehr geehrte Frau Müller,<o:p></o:p></p>
<p class="MsoNormal">der Termin ist bestätigt.<o:p></o:p></p>
</div>
<div id="appendonsend"></div>
<hr style="display:inline-block;width:98%" tabindex="-1">
<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri" style="font-size:11pt"><b>Von:</b>
Erika Müller &lt;erika@example.org&gt;<br><b>Gesendet:</b> Dienstag, 12. März 2024 10:15<br>
<b>An:</b> Bauamt &lt;bauamt@stadt.example&gt;<br><b>Betreff:</b> Termin</font></div>
<div><p>Ist der Termin bestätigt?</p></div>
</body></html>
"""
OUTLOOK_HTML_ONLY = sample("outlook_html_only", build(
    None, html=OUTLOOK_HTML, subject="AW: Termin").as_bytes())


def test_html_only_outlook_reply() -> None:
    mail = parse_message(OUTLOOK_HTML_ONLY)
    assert mail.text == "Sehr geehrte Frau Müller,\nder Termin ist bestätigt."  # MsoNormal: lines
    assert mail.html is not None
    assert "bestätigt." in mail.html
    assert "divRplyFwdMsg" not in mail.html and "Ist der Termin" not in mail.html
    quoted = mail.quoted_text or ""
    assert "Von:" in quoted and "Ist der Termin bestätigt?" in quoted
    assert "Ist der Termin bestätigt?" in mail.full_text
    assert "p.MsoNormal" not in mail.full_text  # <style> is not text


def test_html_is_cut_where_the_plain_text_quote_starts() -> None:
    plain = ("Passt.\n\nMit freundlichen Grüßen\nMax\n\nVon: Erika <e@example.org>\n"
             "Gesendet: Dienstag, 12. März 2024 10:15\nAn: Max\nBetreff: Termin\n\n"
             "Geht Donnerstag?\n")
    html = ("<div>Passt.</div><div><br></div><div>Mit freundlichen Grüßen<br>Max</div><hr>"
            "<p><b>Von:</b> Erika &lt;e@example.org&gt;<br><b>Gesendet:</b> Dienstag, "
            "12. März 2024 10:15<br><b>An:</b> Max<br><b>Betreff:</b> Termin</p>"
            "<p>Geht Donnerstag?</p>")
    mail = parse_message(build(plain, html=html, subject="AW: Termin").as_bytes())
    assert mail.text == "Passt."
    assert mail.html is not None and "Passt." in mail.html
    assert "Donnerstag" not in mail.html and "Mit freundlichen" not in mail.html
    assert "<hr>" not in mail.html


def test_bottom_posted_reply_with_html() -> None:
    plain = "Am 12.03.2024 um 10:15 schrieb Erika <e@example.org>:\n> Wann genau?\n\nMorgen um 9.\n"
    html = ('<div class="moz-cite-prefix">Am 12.03.2024 um 10:15 schrieb Erika:<br></div>'
            '<blockquote type="cite">Wann genau?</blockquote><p>Morgen um 9.</p>')
    mail = parse_message(build(plain, html=html, subject="Re: Termin").as_bytes())
    assert mail.text == "Morgen um 9."
    assert mail.html is not None and "Morgen um 9." in mail.html
    assert "Wann genau?" not in mail.html


def test_html_that_cannot_be_cut_is_dropped() -> None:
    plain = ("Ok.\n\nAm 12.03.2024 um 10:15 schrieb Erika <e@example.org>:\n"
             "> Kommen Sie zur Sitzung am Donnerstag?\n")
    html = "<p>Ok.</p><p>Erika wrote on Tuesday</p><p>Kommen Sie zur Sitzung am Donnerstag?</p>"
    mail = parse_message(build(plain, html=html, subject="Re: Sitzung").as_bytes())
    assert mail.text == "Ok."
    assert mail.html is None  # the plain text is posted, not the whole history


def test_outlook_separator_div_cuts_the_rest() -> None:
    html = ("<div>Einverstanden.</div><div style=\"border:none;border-top:solid #E1E1E1 1.0pt;"
            "padding:3.0pt 0cm 0cm 0cm\"><p><b>From:</b> Erika</p></div><p>Original text</p>")
    mail = parse_message(build(None, html=html, subject="AW: X").as_bytes())
    assert mail.text == "Einverstanden."
    assert mail.html is not None and "Original text" not in mail.html


def test_multipart_related_with_cid_image() -> None:
    msg = build("Siehe Lageplan unten.\n\n[Lageplan]\n", subject="Lageplan",
                html='<p>Siehe Lageplan unten.</p><p><img src="cid:lageplan@stadt.example" '
                     'alt="Lageplan"></p>')
    html_part = msg.get_payload()[1]
    html_part.add_related(b"\x89PNG\r\n\x1a\nfake", maintype="image", subtype="png",
                          cid="<lageplan@stadt.example>", filename="lageplan.png")
    raw = sample("related_cid", msg.as_bytes())
    mail = parse_message(raw)
    assert mail.text == "Siehe Lageplan unten.\n\n[Lageplan]"
    assert [(a.filename, a.mimetype, a.content_id, a.inline) for a in mail.attachments] == [
        ("lageplan.png", "image/png", "lageplan@stadt.example", True)]
    assert mail.attachments[0].data == b"\x89PNG\r\n\x1a\nfake"
    assert mail.html is not None and "cid:lageplan@stadt.example" in mail.html
    formatted = sanitize_html(mail.html, {"lageplan@stadt.example": "mxc://stadt.example/abc"})
    assert '<img src="mxc://stadt.example/abc" alt="Lageplan">' in formatted
    assert "cid:" not in formatted


def test_inline_means_referenced_from_the_html() -> None:
    msg = build("Logo unten.\n", subject="Logo",
                html='<p>Logo unten.</p><img src="cid:logo@x">')
    msg.add_attachment(b"GIF89a", maintype="image", subtype="gif", cid="<logo@x>",
                       filename="logo.gif", disposition="attachment")
    msg.add_attachment(b"GIF89a", maintype="image", subtype="gif", cid="<other@x>",
                       filename="foto.gif", disposition="inline")
    mail = parse_message(sample("mixed_cid", msg.as_bytes()))
    assert [(a.filename, a.inline) for a in mail.attachments] == [
        ("logo.gif", True), ("foto.gif", False)]


def test_rfc2231_filename_and_generated_names() -> None:
    raw = sample("rfc2231", build(
        "Anbei die Übersicht.\n", subject="Übersicht",
        attachments=[(b"%PDF-1.4 stub", "application/pdf", "Übersicht März.pdf")]).as_bytes())
    assert b"filename*=utf-8''%C3%9Cbersicht%20M%C3%A4rz.pdf" in raw
    mail = parse_message(raw)
    assert mail.attachments[0].filename == "Übersicht März.pdf"
    assert mail.attachments[0].mimetype == "application/pdf"
    assert mail.attachments[0].inline is False
    nameless = parse_message(raw_mail("""
        From: a@example.org
        Subject: Scan
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="b"

        --b
        Content-Type: text/plain

        Scan anbei.
        --b
        Content-Type: image/jpeg
        Content-Transfer-Encoding: base64

        /9j/4AAQ
        --b
        Content-Type: application/pdf; name="../../etc/Bescheid 2024.pdf"
        Content-Transfer-Encoding: base64

        JVBERg==
        --b--
        """))
    assert [a.filename for a in nameless.attachments] == ["image.jpg", "Bescheid 2024.pdf"]


def test_encoded_word_subject_and_sender() -> None:
    mail = parse_message(raw_mail("""
        From: =?iso-8859-1?Q?J=FCrgen_M=FCller?= <juergen@example.org>
        To: bauamt@stadt.example
        Subject: =?iso-8859-1?Q?AW=3A_=C4nderung_der_=D6ffnungszeiten?=
         =?utf-8?B?IOKAkyBEZXplbWJlcg==?=
        Message-ID: <ew@example.org>
        Content-Type: text/plain; charset=utf-8

        Danke.
        """))
    assert mail.subject == "AW: Änderung der Öffnungszeiten – Dezember"
    assert mail.topic == "Änderung der Öffnungszeiten – Dezember"
    assert mail.from_name == "Jürgen Müller"


# --------------------------------------------------------------------------------------------
# Forwards
# --------------------------------------------------------------------------------------------

def _forward_with_attached_message() -> bytes:
    inner = build("Sehr geehrte Damen und Herren,\n\nanbei mein Antrag.\n",
                  subject="Antrag auf Sondernutzung", sender="Bürger <buerger@example.net>",
                  attachments=[(b"%PDF antrag", "application/pdf", "Antrag.pdf")])
    inner.replace_header("Message-ID", "<inner-1@example.net>")
    outer = build("Zur Kenntnis, bitte übernehmen.\n", subject="WG: Antrag auf Sondernutzung",
                  sender="Max Mustermann <max@stadt.example>")
    outer.add_attachment(inner)
    return outer.as_bytes()


FORWARD_RFC822 = sample("forward_rfc822", _forward_with_attached_message())


def test_forward_as_attached_message() -> None:
    mail = parse_message(FORWARD_RFC822)
    assert mail.is_forward and mail.topic == "Antrag auf Sondernutzung"
    assert len(mail.forwarded) == 1
    fwd = mail.forwarded[0]
    assert (fwd.from_address, fwd.from_name, fwd.subject, fwd.message_id) == (
        "buerger@example.net", "Bürger", "Antrag auf Sondernutzung", "inner-1@example.net")
    assert "anbei mein Antrag." in fwd.text
    assert mail.text.startswith("Zur Kenntnis, bitte übernehmen.\n\n")
    assert "From: Bürger <buerger@example.net>" in mail.text
    assert "Subject: Antrag auf Sondernutzung" in mail.text
    assert "Date: Tue, 12 Mar 2024 10:15:00 +0100" in mail.text
    assert "anbei mein Antrag." in mail.text
    # The forwarded mail is a file as well, with its own headers and attachment intact.
    assert [a.filename for a in mail.attachments] == ["Antrag auf Sondernutzung.eml",
                                                      "Antrag.pdf"]
    eml = mail.attachments[0]
    assert eml.mimetype == "message/rfc822" and not eml.inline
    forwarded = message_from_bytes(eml.data, policy=policy.default)
    assert forwarded["Message-ID"] == "<inner-1@example.net>"
    assert forwarded["From"] == "Bürger <buerger@example.net>"
    (pdf,) = forwarded.iter_attachments()
    assert pdf.get_filename() == "Antrag.pdf" and pdf.get_content() == b"%PDF antrag"
    assert mail.quoted_text is None


INLINE_FORWARD = sample("forward_inline", build(
    "Bitte einmal prüfen.\n\n-----Ursprüngliche Nachricht-----\nVon: Bürger <b@example.net>\n"
    "Gesendet: Montag, 11. März 2024 09:00\nAn: Poststelle <post@stadt.example>\n"
    "Betreff: Lärm in der Hauptstraße\n\nSeit Wochen ist es nachts sehr laut.\n",
    subject="WG: Lärm in der Hauptstraße").as_bytes())


def test_inline_forward_is_kept() -> None:
    mail = parse_message(INLINE_FORWARD)
    assert mail.is_forward
    assert mail.topic == "Lärm in der Hauptstraße"
    assert "Seit Wochen ist es nachts sehr laut." in mail.text
    assert "-----Ursprüngliche Nachricht-----" in mail.text
    assert mail.quoted_text is None
    # The same body as a reply is stripped.
    reply = parse_message(INLINE_FORWARD.replace(b"Subject: WG:", b"Subject: AW:"))
    assert reply.text == "Bitte einmal prüfen."


# --------------------------------------------------------------------------------------------
# Calendar
# --------------------------------------------------------------------------------------------

ICS = """\
BEGIN:VCALENDAR
PRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN
VERSION:2.0
METHOD:{method}
BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:STANDARD
DTSTART:16011028T030000
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:16010325T020000
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
ORGANIZER;CN="Müller, Erika":mailto:erika@example.org
ATTENDEE;PARTSTAT=NEEDS-ACTION;CN=Max:mailto:max@stadt.example
SUMMARY:Ortstermin Flurstück 12/3
DTSTART;TZID=Europe/Berlin:20240314T100000
DTEND;TZID=Europe/Berlin:20240314T110000
LOCATION:Rathaus\\, Raum 3.17
UID:040000008200E00074C5B7101A82E008
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""


def _invite(method: str) -> bytes:
    msg = build("Einladung zum Ortstermin.\n", subject="Ortstermin Flurstück 12/3",
                html="<p>Einladung zum Ortstermin.</p>")
    msg.add_alternative(ICS.format(method=method).replace("\n", "\r\n"), subtype="calendar",
                        params={"method": method})
    return msg.as_bytes()


INVITE = sample("calendar_request", _invite("REQUEST"))


def test_calendar_invitation_summary() -> None:
    mail = parse_message(INVITE)
    assert mail.calendar == (
        "Invitation: Ortstermin Flurstück 12/3\n"
        "When: 2024-03-14 10:00\u201311:00 (Europe/Berlin)\n"
        "Where: Rathaus, Raum 3.17\n"
        "Organizer: Müller, Erika <erika@example.org>")
    assert mail.text == "Einladung zum Ortstermin."
    assert [(a.filename, a.mimetype) for a in mail.attachments] == [("invite.ics", "text/calendar")]


def test_calendar_cancellation() -> None:
    mail = parse_message(_invite("CANCEL"))
    assert (mail.calendar or "").startswith("Cancelled: Ortstermin Flurstück 12/3")


# --------------------------------------------------------------------------------------------
# Charsets
# --------------------------------------------------------------------------------------------

def test_wrong_charset_declared() -> None:
    raw = sample("wrong_charset", raw_mail("""
        From: a@example.org
        Subject: Gruesse
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: 8bit

        Grüße aus Köln – Gebühr 5 €.
        """, encoding="cp1252"))
    assert parse_message(raw).text == "Grüße aus Köln – Gebühr 5 €."


@pytest.mark.parametrize("declared", ["unknown-8bit", "x-user-defined", "fakescii", ""])
def test_missing_or_unknown_charset_with_8bit_bytes(declared: str) -> None:
    ctype = f"text/plain; charset={declared}" if declared else "text/plain"
    for encoding in ("latin-1", "utf-8"):
        raw = raw_mail(f"""
            From: a@example.org
            Subject: Strasse
            Content-Type: {ctype}
            Content-Transfer-Encoding: 8bit

            Hauptstraße 5, Zimmer Öst
            """, encoding=encoding)
        assert parse_message(raw).text == "Hauptstraße 5, Zimmer Öst"


def test_correct_legacy_declarations_are_respected() -> None:
    # koi8-r bytes that happen to be valid in no other reading; cp1252 must not win.
    text = "Привет, коллеги"
    raw = raw_mail(f"""
        From: a@example.org
        Subject: Gruss
        Content-Type: text/plain; charset=koi8-r
        Content-Transfer-Encoding: 8bit

        {text}
        """, encoding="koi8-r")
    assert parse_message(raw).text == text
    latin1 = raw_mail("""
        From: a@example.org
        Subject: Gruss
        Content-Type: text/plain; charset=iso-8859-1
        Content-Transfer-Encoding: 8bit

        Grüße, Jürgen
        """, encoding="latin-1")
    assert parse_message(latin1).text == "Grüße, Jürgen"


def test_raw_8bit_subject() -> None:
    raw = raw_mail("""
        From: Jürgen <j@example.org>
        Subject: AW: Öffnungszeiten
        Content-Type: text/plain; charset=iso-8859-1

        Ok.
        """, encoding="latin-1")
    mail = parse_message(raw)
    assert mail.subject == "AW: Öffnungszeiten"
    assert mail.from_name == "Jürgen"


# --------------------------------------------------------------------------------------------
# Automatic replies and bounces
# --------------------------------------------------------------------------------------------

OOO = sample("out_of_office", build(
    "Ich bin bis zum 20.03. nicht im Büro. In dringenden Fällen wenden Sie sich bitte an "
    "poststelle@stadt.example.\n", subject="Automatische Antwort: Bauantrag Flurstück 12/3",
    headers={"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"}).as_bytes())


def test_out_of_office_is_auto_reply() -> None:
    mail = parse_message(OOO)
    assert mail.auto_reply == "Auto-Submitted: auto-replied"
    assert mail.bounce is None


def test_exchange_ooo_by_subject_alone() -> None:
    mail = parse_message(build("Nicht im Haus.\n", subject="Automatische Antwort: Termin",
                               headers={"X-MS-Exchange-Inbox-Rules-Loop": "x@stadt.example"}
                               ).as_bytes())
    assert (mail.auto_reply or "").startswith("subject: Automatische Antwort")


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Precedence": "bulk"}, "Precedence: bulk"),
    ({"Precedence": "junk"}, "Precedence: junk"),
    ({"Return-Path": "<>"}, "null return path (Return-Path: <>)"),
    ({"Auto-Submitted": "auto-generated"}, "Auto-Submitted: auto-generated"),
    ({"X-Autoreply": "yes"}, "x-autoreply: yes"),
    ({"Auto-Submitted": "no"}, None),
    ({"Precedence": "list", "List-Id": "<abt3.stadt.example>"}, None),
    ({"X-Auto-Response-Suppress": "DR, RN, NRN, OOF, AutoReply"}, None),
])
def test_auto_reply_signs(headers: dict[str, str], expected: str | None) -> None:
    msg = build("Text.\n", subject="Newsletter", headers=headers)
    assert detect_auto_reply(msg) == expected
    sample(f"auto_{'_'.join(headers)}_{expected}", msg.as_bytes())


def dsn(status: str, action: str, subject: str) -> bytes:
    return raw_mail(f"""
        Return-Path: <>
        From: Mail Delivery System <MAILER-DAEMON@mx.stadt.example>
        To: bauamt@stadt.example
        Subject: {subject}
        Auto-Submitted: auto-replied
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"

        --dsn
        Content-Type: text/plain; charset=us-ascii

        This is the mail system at host mx.stadt.example.
        I'm sorry to have to inform you that your message could not be delivered.

        --dsn
        Content-Type: message/delivery-status

        Reporting-MTA: dns; mx.stadt.example
        Arrival-Date: Tue, 12 Mar 2024 10:15:00 +0100

        Final-Recipient: rfc822; nobody@example.org
        Original-Recipient: rfc822;nobody@example.org
        Action: {action}
        Status: {status}
        Diagnostic-Code: smtp; 550 {status} <nobody@example.org>: Recipient address rejected

        --dsn
        Content-Type: text/rfc822-headers

        From: bauamt@stadt.example
        To: nobody@example.org
        Subject: Ihr Antrag
        Message-ID: <sent-42@stadt.example>

        --dsn--
        """)


HARD_BOUNCE = sample("dsn_5_1_1", dsn("5.1.1", "failed", "Undelivered Mail Returned to Sender"))
DELAY = sample("dsn_4_4_1", dsn("4.4.1", "delayed", "Delayed Mail (still being retried)"))


def test_hard_bounce() -> None:
    mail = parse_message(HARD_BOUNCE)
    assert mail.bounce is not None
    assert mail.bounce.permanent is True
    assert mail.bounce.recipients == ["nobody@example.org"]
    assert mail.bounce.status == "5.1.1"
    assert mail.bounce.diagnostic == ("550 5.1.1 <nobody@example.org>: Recipient address "
                                      "rejected")
    assert mail.bounce.original_message_id == "sent-42@stadt.example"
    assert mail.auto_reply is not None
    assert mail.text.startswith("This is the mail system")


def test_delayed_dsn_is_not_permanent() -> None:
    mail = parse_message(DELAY)
    assert mail.bounce is not None
    assert mail.bounce.permanent is False
    assert mail.bounce.status == "4.4.1"


def test_success_dsn_is_no_bounce() -> None:
    mail = parse_message(dsn("2.0.0", "delivered", "Delivery Status Notification (Success)"))
    assert mail.bounce is None
    assert mail.auto_reply is not None


def test_non_standard_bounce_from_mailer_daemon() -> None:
    mail = parse_message(raw_mail("""
        Return-Path: <>
        From: MAILER-DAEMON@mx.example.org
        To: bauamt@stadt.example
        Subject: failure notice

        Hi. This is the qmail-send program at mx.example.org.
        I'm afraid I wasn't able to deliver your message to the following addresses.

        <weg@example.org>:
        Sorry, no mailbox here by that name. (#5.1.1)

        --- Below this line is a copy of the message.

        Message-ID: <sent-7@stadt.example>
        From: bauamt@stadt.example
        """))
    assert mail.bounce is not None
    assert mail.bounce.permanent and mail.bounce.status == "5.1.1"
    assert mail.bounce.recipients == ["weg@example.org"]
    assert mail.bounce.original_message_id == "sent-7@stadt.example"


# --------------------------------------------------------------------------------------------
# Reply splitting details
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected_text"), [
    # A hyphen list is content, not a "-Name" signature.
    ("Bitte mitbringen:\n- Personalausweis\n- Meldebescheinigung\n",
     "Bitte mitbringen:\n- Personalausweis\n- Meldebescheinigung"),
    # "Grüße" starting a real sentence is not a sign-off.
    ("Hallo,\nGrüße aus Berlin und eine Frage: wann ist die Sitzung nächste Woche genau?\n",
     "Hallo,\nGrüße aus Berlin und eine Frage: wann ist die Sitzung nächste Woche genau?"),
    # A form with "Datum:/Betreff:" lines is not an Outlook quote header.
    ("Meldung:\nDatum: 12.03.2024\nBetreff: Straßenlaterne defekt\nOrt: Hauptstraße 5\n",
     "Meldung:\nDatum: 12.03.2024\nBetreff: Straßenlaterne defekt\nOrt: Hauptstraße 5"),
    # A sign-off-like line early in a long message is not where the signature starts.
    ("Hi,\nThanks,\n" + "".join(f"item {i} is done.\n" for i in range(25)),
     "Hi,\nThanks,\n" + "\n".join(f"item {i} is done." for i in range(25))),
    # "am … schrieb" in prose without date or address.
    ("Wie besprochen:\nam Montag schrieb der Kollege Folgendes:\nDie Frist läuft.\n",
     "Wie besprochen:\nam Montag schrieb der Kollege Folgendes:\nDie Frist läuft."),
    # Interleaved answers keep their quotes: they are the context.
    ("> Kommen Sie am Montag?\nJa.\n> Mit Auto?\nNein, mit dem Bus.\n",
     "> Kommen Sie am Montag?\nJa.\n> Mit Auto?\nNein, mit dem Bus."),
    # Only a quote: nothing is stripped rather than posting nothing.
    ("> nur ein Zitat\n", "> nur ein Zitat"),
    # RFC 3676 signature delimiter.
    ("Kurze Antwort.\n\n-- \nMax Mustermann\nReferat 3\n", "Kurze Antwort."),
    # Mobile sign-off line.
    ("Passt!\n\nVon meinem iPhone gesendet\n", "Passt!\n\nVon meinem iPhone gesendet"),
    ("Passt!\n\nGesendet von Outlook für Android\n", "Passt!"),
    # Bottom-posting: quote first, answer below.
    ("Am 12.03.2024 um 10:15 schrieb Erika <e@example.org>:\n> Wann?\n\nMorgen um 9.\n",
     "Morgen um 9."),
])
def test_split_reply_cases(body: str, expected_text: str) -> None:
    assert split_reply(body).text == expected_text


@pytest.mark.parametrize(("subject", "topic", "is_forward"), [
    ("AW: WG: Re: Antrag", "Antrag", False),
    ("WG: AW: Antrag", "Antrag", True),
    ("Fwd: FW: Antrag", "Antrag", True),
    ("aw:antrag", "antrag", False),
    ("RE[2]: Antrag", "Antrag", False),
    ("Antw: Antrag", "Antrag", False),
    ("[Abt-3] AW: Antrag", "[Abt-3] Antrag", False),
    ("AW: [Abt-3] AW: [Abt-3] Antrag", "[Abt-3] Antrag", False),
    ("SV: VS: TR: Réf: Antrag", "Antrag", False),
    ("Antrag: AW vom Amt", "Antrag: AW vom Amt", False),
    ("Re:", "", False),
    ("", "", False),
])
def test_subject_prefixes(subject: str, topic: str, is_forward: bool) -> None:
    assert strip_subject_prefixes(subject) == (topic, is_forward)


# --------------------------------------------------------------------------------------------
# Broken input
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"",
    b"   \r\n\r\n",
    b"\x00\x01\x02\xff\xfe",
    b"Dies ist nur Text ohne Kopfzeilen.\r\nZweite Zeile.\r\n",
    b"Foo: bar\r\n\r\nbody",  # a header block, but no field a mail would have
])
def test_not_a_mail(raw: bytes) -> None:
    with pytest.raises(MalformedMail):
        parse_message(raw)


BROKEN = {
    "truncated_multipart": raw_mail("""
        From: a@example.org
        Subject: abgeschnitten
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="xyz"

        --xyz
        Content-Type: text/plain; charset=utf-8

        Der Anfang ist da.
        --xyz
        Content-Type: application/pdf; name="a.pdf"
        Content-Transfer-Encoding: base64

        JVBERi0xLjQK
        """),
    "no_boundary": raw_mail("""
        From: a@example.org
        Subject: ohne Grenze
        Content-Type: multipart/alternative

        Nur Text.
        """),
    "unquoted_boundary": raw_mail("""
        From: a@example.org
        Subject: Outlook Express
        Content-Type: multipart/alternative; boundary=----=_NextPart_000_0001

        ------=_NextPart_000_0001
        Content-Type: text/plain; charset=iso-8859-1

        Hallo Welt
        ------=_NextPart_000_0001--
        """),
    "bad_base64": raw_mail("""
        From: a@example.org
        Subject: kaputt
        Content-Type: text/plain; charset=utf-8
        Content-Transfer-Encoding: base64

        SGFsbG8gV2VsdA=!!==
        """),
    "headers_only": b"From: a@example.org\r\nSubject: nur Kopf",
    "mbox_and_blank_lines": b"\r\n\r\nFrom a@example.org Tue Mar 12 10:15:00 2024\r\n"
                            b"From: a@example.org\r\nSubject: mbox\r\n\r\nInhalt\r\n",
    "unfolded_header_line": raw_mail("""
        From: a@example.org
        Subject: gefaltet
        X-Long: erste Zeile
        zweite Zeile ohne Einrueckung
        Content-Type: text/plain; charset=utf-8

        Inhalt
        """),
}
for _name, _raw in BROKEN.items():
    sample(_name, _raw)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_mail_parses_best_effort(name: str) -> None:
    mail = parse_message(BROKEN[name])
    assert isinstance(mail, ParsedMail)
    assert mail.from_address == "a@example.org"


def test_broken_mail_details() -> None:
    assert parse_message(BROKEN["truncated_multipart"]).text == "Der Anfang ist da."
    assert parse_message(BROKEN["no_boundary"]).text == "Nur Text."
    assert parse_message(BROKEN["unquoted_boundary"]).text == "Hallo Welt"
    assert parse_message(BROKEN["mbox_and_blank_lines"]).text == "Inhalt"
    unfolded = parse_message(BROKEN["unfolded_header_line"])
    assert unfolded.text == "Inhalt"
    assert squash(parse_message(BROKEN["bad_base64"]).text) != ""


def test_every_sample_parses() -> None:
    for name, raw in SAMPLES.items():
        assert isinstance(parse_message(raw), ParsedMail), name
