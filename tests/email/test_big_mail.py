"""A big mail costs its size and its attachment's once each, from SMTP to the parsed result.

The SMTP server collects the mail in one bytearray (`DataDecoder`), the parser reads that
bytearray without copying it, and decodes an attachment's base64 straight out of it (a
`_Run`), so that the base64 text never exists as a str of its own; the connector lets it
decode a big attachment into that bytearray itself (``consume``). The results must be
exactly those of parsing the same mail as bytes the plain way.
"""

from __future__ import annotations

import base64
import binascii
import os
import tracemalloc
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import pytest

import bridge.email.parse.raw as parse_module
from bridge.email.aiosmtpd_data import DataDecoder
from bridge.email.parse import parse_message


def big_mail(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    msg = EmailMessage()
    msg["From"] = "Erika Mustermann <erika@example.org>"
    msg["To"] = "bauamt@bridge.example"
    msg["Subject"] = "Scan"
    msg.set_content("Hallo,\n\nanbei der Scan.\n\nGrüße\nErika\n", cte="quoted-printable")
    msg.add_attachment(data, maintype="application", subtype="pdf", filename="scan.pdf")
    return msg.as_bytes(policy=SMTP_POLICY), data


def test_a_big_mail_is_received_and_parsed_in_its_size_plus_the_attachment() -> None:
    raw, data = big_mail(8 * 1024 * 1024)
    wire = raw.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    tracemalloc.start()
    try:
        decoder = DataDecoder(None)
        for start in range(0, len(wire), 256 * 1024):
            decoder.feed(wire[start:start + 256 * 1024])
        assert decoder.done and decoder.content == raw
        received, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        mail = parse_message(decoder.content)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received < 1.1 * len(raw)
    # The mail (held) and the decoded attachment; the base64 text as a str would be 1.4x
    # the attachment more.
    assert peak < received + 1.2 * len(data)
    assert [(a.filename, a.data) for a in mail.attachments] == [("scan.pdf", data)]
    assert mail == parse_message(raw)


def _mail_with_a_forwarded_one(pdf_base64: bytes, png_base64: bytes,
                                forward_encoding: bytes = b"") -> bytes:
    """A mail with a PDF and a forwarded message (message/rfc822, optionally sent with
    ``forward_encoding``) that itself carries a PNG."""
    forwarded = (b"From: b@example.org\r\nSubject: inner\r\nContent-Type: multipart/mixed;"
                 b" boundary=in\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\ninnen\r\n"
                 b"--in\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
                 b"Content-Disposition: attachment; filename=b.png\r\n\r\n" + png_base64 +
                 b"--in--\r\n")
    encoding = b"Content-Transfer-Encoding: " + forward_encoding + b"\r\n" \
        if forward_encoding else b""
    return (b"From: a@example.org\r\nSubject: outer\r\nContent-Type: multipart/mixed;"
            b" boundary=out\r\n\r\n--out\r\nContent-Type: text/plain\r\n\r\nsiehe unten\r\n"
            b"--out\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=a.pdf\r\n\r\n" + pdf_base64 +
            b"--out\r\nContent-Type: message/rfc822\r\n" + encoding + b"\r\n" + forwarded +
            b"--out--\r\n")


def test_lazy_payloads_give_what_the_plain_payloads_give() -> None:
    """Where the fast path cannot decode a lazy payload (bad padding, which get_payload
    repairs), or where its text is needed (a forwarded message sent quoted-printable, which
    is parsed again from its text), the text is put back first."""
    b64 = base64.encodebytes(os.urandom(120_000)).replace(b"\n", b"\r\n")
    unpadded = b64[:-3] + b"\r\n"  # one character short: binascii refuses it
    raw = _mail_with_a_forwarded_one(unpadded, b64, forward_encoding=b"quoted-printable")
    lazy = parse_message(bytearray(raw))
    original = parse_module._RUN_SCAN_MIN
    parse_module._RUN_SCAN_MIN = 1 << 40  # no runs: the plain way through the parser
    try:
        plain = parse_message(raw)
    finally:
        parse_module._RUN_SCAN_MIN = original
    assert lazy == plain
    # The forwarded message is a file too, whole: its attachment's base64 as it was.
    assert [a.filename for a in lazy.attachments] == ["a.pdf", "inner.eml", "b.png"]
    assert b64.replace(b"\r\n", b"\n") in lazy.attachments[1].data.replace(b"\r\n", b"\n")
    assert lazy.attachments[2].data == base64.b64decode(b64)


def test_a_consumed_mail_holds_the_attachment_in_its_own_bytes() -> None:
    """parse_message(consume=True), as the connector parses a big mail: the attachment is
    decoded into the mail's bytearray, so parsing needs next to no memory beyond the mail,
    and the result is the plain parse's."""
    raw, data = big_mail(8 * 1024 * 1024)
    buffer = bytearray(raw)
    tracemalloc.start()
    try:
        mail = parse_message(buffer, consume=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.2 * len(data)  # pieces of the run on their way, not a second copy
    assert [(a.filename, bytes(a.data)) for a in mail.attachments] == [("scan.pdf", data)]
    assert mail == parse_message(raw)
    # The header block is still the mail's (sender authentication reads it afterwards).
    end = raw.index(b"\r\n\r\n")
    assert buffer[:end] == raw[:end]


def test_consuming_gives_what_the_plain_parse_gives_forwarded_mail_included() -> None:
    b64 = base64.encodebytes(os.urandom(120_000)).replace(b"\n", b"\r\n")
    raw = _mail_with_a_forwarded_one(b64, b64)
    consumed = parse_message(bytearray(raw), consume=True)
    plain = parse_message(raw)
    assert [(a.filename, bytes(a.data)) for a in consumed.attachments] == \
        [(a.filename, bytes(a.data)) for a in plain.attachments]
    assert consumed.attachments[0].data == base64.b64decode(b64)


@pytest.mark.parametrize("text", [
    base64.encodebytes(bytes(range(256)) * 3000),  # LF, 76 columns, no padding needed
    base64.encodebytes(os.urandom(300_001)).replace(b"\n", b"\r\n"),  # CRLF, "=="
    base64.encodebytes(os.urandom(300_002)).replace(b"\n", b"\r\n"),  # "="
    b"\r\n".join(base64.b64encode(os.urandom(3000))[i:i + 50]
                 for i in range(0, 4000, 50)) + b"\r\n",  # lines not of whole quads
])
def test_decoding_in_place_gives_what_binascii_gives(text: bytes) -> None:
    buffer = bytearray(b"head\r\n" + text + b"tail")
    run = parse_module._Run("X", memoryview(buffer)[6:6 + len(text)])
    decoded = parse_module.decode_in_place(run)
    assert decoded is not None and bytes(decoded) == binascii.a2b_base64(text)
    assert buffer.startswith(b"head\r\n") and buffer.endswith(b"tail")
    assert "".join(run.text().split()) == base64.b64encode(bytes(decoded)).decode()


@pytest.mark.parametrize("text", [
    b"QUJD\r\nRE=F\r\n",  # padding inside
    b"QUJD\r\nREVG\r\nR\r\n",  # not whole quads
    b"QUJD\r\nRE*G\r\n",  # not base64
    b"QUJD\r\nREV=\r\n==\r\n",  # too much padding
])
def test_decoding_in_place_changes_nothing_where_it_is_not_certain(text: bytes) -> None:
    buffer = bytearray(text)
    run = parse_module._Run("X", memoryview(buffer))
    assert parse_module.decode_in_place(run) is None
    assert buffer == text and run.decoded is None
    assert parse_module.decode_in_place(parse_module._Run("X", memoryview(text))) is None
