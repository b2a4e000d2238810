"""Property tests: no input makes the parser raise anything but MalformedMail.

`parse_message` turns its own bugs into ``MalformedMail("internal error: …")`` so that the
connector never crashes; these tests fail on that message, so such bugs still show here.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.email.parse import (
    MalformedMail,
    ParsedMail,
    decode_text,
    parse_message,
    split_html_reply,
    split_reply,
)
from tests.email.test_parse_cases import SAMPLES

# Moderate budgets: the whole module runs in a few seconds. database=None keeps hypothesis
# from writing its example database into the work tree.
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(raw: bytes) -> None:
    try:
        mail = parse_message(raw)
    except MalformedMail as exc:
        assert not str(exc).startswith("internal error"), exc
        return
    assert isinstance(mail, ParsedMail)
    assert isinstance(mail.text, str) and isinstance(mail.full_text, str)
    for attachment in mail.attachments:
        assert isinstance(attachment.data, bytes)
        assert attachment.filename and "/" not in attachment.filename


@PROPERTY
@given(st.binary(max_size=3000))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


HEADER_LINES = [
    b"From: Erika <erika@example.org>", b"From: =?utf-8?B?w4RybWVs?= <a@b>", b"From: <>",
    b"Subject: =?iso-8859-1?Q?AW=3A_=C4?=", b"Subject: AW: WG: Re:", b"To: a@b, c@d",
    b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: multipart/alternative",
    b"Content-Type: multipart/related; boundary=\"b\"; type=text/html",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b",
    b"Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes",
    b"Content-Type: text/html; charset=x-unknown", b"Content-Type: message/rfc822",
    b"Content-Type: message/delivery-status", b"Content-Type: text/calendar; method=REQUEST",
    b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: quoted printable", b"Content-Disposition: attachment; "
    b"filename*=utf-8''%C3%9Cbersicht.pdf", b"Content-ID: <x@y>", b"Auto-Submitted: no",
    b"Return-Path: <>", b"Date: Tue, 12 Mar 2024 10:15:00 +0100", b"Date: 99 Foo 0000",
    b"Message-ID: <<>>", b"References: <a@b> <c@d", b" folded continuation", b"\tfolded",
    b"--b", b"--b--", b"", b"Final-Recipient: rfc822; x@y", b"Action: failed",
    b"Status: 5.1.1", b"BEGIN:VCALENDAR", b"DTSTART;TZID=Europe/Berlin:20240314T100000",
    b"END:VCALENDAR", b"> quoted", b"Am 12.03.2024 um 10:15 schrieb X <x@y>:", b"-- ",
    b"-----Urspr\xfcngliche Nachricht-----", b"Von: X", b"Gesendet: heute", b"=C3=A4=",
    b"<html><body><div class=gmail_quote><blockquote type=cite>x</blockquote></div>",
    b"<div id=divRplyFwdMsg>x</div><img src=cid:x@y>", b"SGFsbG8=", b"\xff\xfe\x00",
]


# Found by this test: a forwarded multipart without its boundary, with bytes that are not ASCII
# (its .eml could not be written back as bytes: "internal error").
BROKEN_FORWARD = [b"From: a@b.de", b"Content-Type: message/rfc822", b"",
                  b"Content-Type: multipart/mixed; boundary=b", b"\xff\xfe\x00"]


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(HEADER_LINES), st.binary(max_size=40)), max_size=60),
       st.sampled_from([b"\r\n", b"\n", b"\r"]))
@example(BROKEN_FORWARD, b"\r\n")
def test_mail_shaped_junk(lines: list[bytes], newline: bytes) -> None:
    check(newline.join(lines))


def test_a_broken_forwarded_multipart_is_still_attached_as_its_eml() -> None:
    mail = parse_message(b"\r\n".join(BROKEN_FORWARD))
    [eml] = mail.attachments
    assert eml.filename == "forwarded message.eml"
    assert eml.data.startswith(b"Content-Type: multipart/mixed; boundary=b")


MUTATIONS = ["delete", "insert", "flip", "truncate", "duplicate", "swap_lines"]


@PROPERTY
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_mutated_valid_messages(name: str, data: st.DataObject) -> None:
    raw = bytearray(SAMPLES[name])
    for _ in range(data.draw(st.integers(1, 6))):
        if not raw:
            break
        op = data.draw(st.sampled_from(MUTATIONS))
        at = data.draw(st.integers(0, len(raw) - 1))
        size = data.draw(st.integers(1, 64))
        if op == "delete":
            del raw[at:at + size]
        elif op == "insert":
            raw[at:at] = data.draw(st.one_of(st.binary(min_size=1, max_size=size),
                                             st.sampled_from(HEADER_LINES)))
        elif op == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[at:]
        elif op == "duplicate":
            raw[at:at] = raw[at:at + size] * data.draw(st.integers(1, 3))
        else:
            lines = bytes(raw).split(b"\n")
            i, j = data.draw(st.integers(0, len(lines) - 1)), data.draw(
                st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            raw = bytearray(b"\n".join(lines))
    check(bytes(raw))


def _visible(text: str) -> list[str]:
    return sorted(ch for ch in text.replace("\r\n", "\n").replace("\r", "\n")
                  if not ch.isspace())


REPLY_LINES = st.sampled_from([
    "Hallo,", "Danke!", "> zitiert", ">> tiefer", "Am 12.03.2024 um 10:15 schrieb X <x@y.de>:",
    "On Tue, Mar 12, 2024 at 10:15 AM X <x@y.com> wrote:", "-- ", "--", "Mit freundlichen Grüßen",
    "Von: X <x@y.de>", "Gesendet: Dienstag", "An: Y", "Betreff: Z", "_" * 32,
    "-----Ursprüngliche Nachricht-----", "Gesendet von Outlook für Android", "- Punkt", "",
])


@PROPERTY
@given(st.lists(st.one_of(REPLY_LINES, st.text(max_size=80)), max_size=40))
def test_split_reply_loses_nothing(lines: list[str]) -> None:
    text = "\n".join(lines)
    split = split_reply(text)
    assert _visible(split.text + (split.signature or "") + (split.quote or "")) == \
        _visible(text)
    if text.strip():
        assert split.text.strip()


@PROPERTY
@given(st.text(max_size=500), st.one_of(st.none(), st.text(max_size=30)),
       st.one_of(st.none(), st.text(max_size=30)))
def test_split_html_reply_never_raises(html: str, quote: str | None, sig: str | None) -> None:
    new, removed = split_html_reply(html, quote, sig)
    assert isinstance(new, str)
    assert removed is None or isinstance(removed, str)


@PROPERTY
@given(st.binary(max_size=200), st.one_of(st.none(), st.sampled_from([
    "utf-8", "windows-1252", "iso-8859-1", "us-ascii", "utf-16", "utf-7", "iso-2022-jp",
    "shift_jis", "gb2312", "koi8-r", "base64", "rot13", "zlib", "unicode_escape", "idna",
    "unknown-8bit", "x-user-defined", "charset=charset=us-askey", "", "\x00",
]), st.text(max_size=20)))
def test_decode_text_never_raises(data: bytes, charset: str | None) -> None:
    text = decode_text(data, charset)
    assert isinstance(text, str)
    text.encode("utf-8")  # no lone surrogates
