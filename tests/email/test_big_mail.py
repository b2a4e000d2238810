"""A big mail costs its attachment's size once, from SMTP to the parsed result.

The SMTP server collects a big mail in a temp file (`DataDecoder`, `SpooledMail`), and the
parser reads it from there in pieces: the base64 runs of its attachments are found in the
file and left there (`_find_runs`, `_SpooledRun`), the rest is parsed from a small skeleton,
and an attachment is decoded from the file into a buffer of its own size. A mail in memory
is read without copying it, and an attachment's base64 decoded straight out of it (a
`_Run`), so that the base64 text never exists as a str of its own; the connector lets it
decode a big attachment into that bytearray itself (``consume``). The results must be
exactly those of parsing the same mail as bytes the plain way.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
import tracemalloc
from email.message import EmailMessage, Message
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.email.aiosmtpd_data as data_module
import bridge.email.parse.raw as parse_module
from bridge.email.aiosmtpd_data import SPOOL_ABOVE, DataDecoder, SpooledMail
from bridge.email.parse import MalformedMail, parse_message
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver
from tests.email.conftest import EmailBridge
from tests.email.test_email_bridge import _email_room, _mail, _smtp_error
from tests.email.test_parse_speed import TRICKY_MAILS, corpus_mails, tree


def big_mail(size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    msg = EmailMessage()
    msg["From"] = "Erika Mustermann <erika@example.org>"
    msg["To"] = "bauamt@bridge.example"
    msg["Subject"] = "Scan"
    msg.set_content("Hallo,\n\nanbei der Scan.\n\nGrüße\nErika\n", cte="quoted-printable")
    msg.add_attachment(data, maintype="application", subtype="pdf", filename="scan.pdf")
    return msg.as_bytes(policy=SMTP_POLICY), data


def test_a_big_mail_is_received_and_parsed_in_its_attachments_size() -> None:
    """Received into a temp file and parsed from there: the mail (11 MB) is never in
    memory, only its attachment (8 MB) once, decoded."""
    raw, data = big_mail(8 * 1024 * 1024)
    wire = raw.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    tracemalloc.start()
    try:
        decoder = DataDecoder(None)
        for start in range(0, len(wire), 256 * 1024):
            decoder.feed(wire[start:start + 256 * 1024])
        spooled = decoder.spooled
        assert decoder.done and spooled is not None and not decoder.content
        received, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        mail = parse_message(spooled)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received < 0.1 * len(raw)
    # The decoded attachment and pieces on their way; the mail read back would be 1.4x the
    # attachment more.
    assert peak < 1.15 * len(data)
    assert spooled.read_error is None
    assert [(a.filename, a.data) for a in mail.attachments] == [("scan.pdf", data)]
    assert mail == parse_message(raw)
    assert bytes(spooled.read_back()) == raw
    spooled.close()
    assert spooled.closed


def in_a_file(raw: bytes) -> SpooledMail:
    """The mail as the SMTP server hands on a big one: in an unnamed temp file."""
    file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 (closed with the SpooledMail)
    file.write(raw)
    return SpooledMail(file, len(raw))


def materialized(msg: Message) -> Message:
    parse_module._materialize(msg)
    return msg


@pytest.fixture
def every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs however short, in mails however small: the small mails of the tests and the
    corpus take the paths of big ones."""
    monkeypatch.setattr(parse_module, "_RUN_SCAN_MIN", 0)
    monkeypatch.setattr(parse_module, "_RUN_LINES", 1)
    monkeypatch.setattr(parse_module, "_BASE64_RUN", parse_module._run_pattern(1))


def test_a_mail_in_a_file_parses_as_in_memory(every_run: None) -> None:
    """The same message tree and the same parse result from the file as from memory, for
    the tricky mails of the parser's tests and the corpus; most of them multipart mails
    with runs, which are read from the file without reading the mail whole."""
    from_the_file = 0
    for raw in TRICKY_MAILS + corpus_mails():
        mail = in_a_file(raw)
        try:
            if parse_module._parse_file(mail) is not None:
                from_the_file += 1
            assert tree(materialized(parse_module._parse_bytes(mail, lazy_runs=True))) == \
                tree(parse_module._parse_bytes(raw)), raw[:300]
            try:
                expected: object = parse_message(raw)
            except MalformedMail as exc:
                expected = str(exc)
            try:
                got: object = parse_message(in_a_file(raw), consume=True)
            except MalformedMail as exc:
                got = str(exc)
            assert got == expected, raw[:300]
            assert mail.read_error is None
        finally:
            mail.close()
    assert from_the_file > 100


def test_a_mail_in_a_file_with_base64_binascii_must_repair(every_run: None) -> None:
    """Runs whose decoding is not certain (padding missing, so get_payload repairs it) and
    a forwarded message that is parsed again from its text: as from memory."""
    b64 = base64.encodebytes(os.urandom(120_000)).replace(b"\n", b"\r\n")
    unpadded = b64[:-3] + b"\r\n"
    raw = _mail_with_a_forwarded_one(unpadded, b64, forward_encoding=b"quoted-printable")
    mail = in_a_file(raw)
    assert parse_module._parse_file(mail) is not None
    assert parse_message(mail) == parse_message(raw)
    assert parse_message(in_a_file(_mail_with_a_forwarded_one(b64, b64))) == \
        parse_message(_mail_with_a_forwarded_one(b64, b64))


def test_a_mail_whose_file_cannot_be_read_says_so() -> None:
    """A read that fails is kept, whatever the parser makes of it (the connector answers
    451 then: the sending server tries again)."""
    raw, _ = big_mail(1024 * 1024)
    mail = in_a_file(raw)
    mail.close()  # (as when the SMTP connection went away during the parse)
    with pytest.raises(MalformedMail):
        parse_message(mail)
    assert isinstance(mail.read_error, OSError)
    with pytest.raises(OSError, match="cannot read a spooled mail"):
        mail.raise_read_error()


class WholeFile:
    """A mail in memory, read as a `MailFile` (with a counter of the bytes read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.bytes_read = 0

    def __len__(self) -> int:
        return len(self.data)

    def read(self, offset: int, size: int) -> bytes:
        self.bytes_read += size
        return self.data[offset:offset + size]

    def read_into(self, offset: int, buffer: memoryview) -> None:
        buffer[:] = self.read(offset, len(buffer))

    def read_back(self) -> bytearray:
        return bytearray(self.read(0, len(self.data)))


RUN_PIECES = [b"A", b"Bz", b"=", b"\r", b"\n", b"\r\n", b"-", b" ", b"AAAA\n", b"AB\r"]


@settings(max_examples=3000, deadline=None)
@given(pieces=st.lists(st.sampled_from(RUN_PIECES), max_size=50),
       lines=st.integers(min_value=1, max_value=4), start=st.integers(min_value=0),
       window=st.integers(min_value=1, max_value=9))
def test_runs_are_found_in_a_file_as_in_memory(pieces: list[bytes], lines: int, start: int,
                                               window: int) -> None:
    """Window by window, with chains of lines across windows, a CR at a window's end and
    the LF at the next one's start: the runs `_BASE64_RUN` finds in the whole mail."""
    data = b"".join(pieces)
    start = min(start, len(data))
    expected = [m.span(1) for m in parse_module._run_pattern(lines).finditer(data, start)]
    assert list(parse_module._find_runs(WholeFile(data), start, len(data), window,
                                        lines)) == expected


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


def test_a_forwarded_message_keeps_its_attachments_text_as_written() -> None:
    """Its file (.eml) has its attachment's base64 as written, here in lines of 72: not
    decoded into the mail's bytes (encoding it again gives lines of 76), neither in memory
    nor from a file."""
    data = os.urandom(200_000)
    b64 = base64.b64encode(data)
    lines = b"\r\n".join(b64[at:at + 72] for at in range(0, len(b64), 72)) + b"\r\n"
    raw = _mail_with_a_forwarded_one(lines, lines)
    plain = parse_message(raw)
    assert [a.filename for a in plain.attachments] == ["a.pdf", "inner.eml", "b.png"]
    assert lines.replace(b"\r\n", b"\n") in plain.attachments[1].data
    buffer = bytearray(raw)
    assert parse_message(buffer, consume=True) == plain
    assert buffer.count(lines) == 1  # the forwarded one; the outer one was decoded in place
    assert parse_message(in_a_file(raw)) == plain


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


class _UnreadableWhile(io.BytesIO):
    """A temp file that cannot be read back while ``unreadable[0]`` (a failing disk)."""

    def __init__(self, unreadable: list[bool]) -> None:
        super().__init__()
        self.unreadable = unreadable

    def readinto(self, buffer: Any) -> int:
        if self.unreadable[0]:
            raise OSError(5, "Input/output error")
        return super().readinto(buffer)


async def test_a_big_mail_reaches_the_room_from_its_temp_file(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Over SMTP into the room, read from its temp file: the attachment arrives whole. Where
    the temp file cannot be read, the answer is 451 (the sending server keeps the mail and
    tries again), nothing is posted, and the retry is posted once. Every temp file is
    closed once the mail is answered."""
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    data = os.urandom(1200 * 1024)
    msg = _mail("Erika Mustermann <erika@stadt.example>", address, "Scan", "Anbei der Scan.")
    msg.add_attachment(data, maintype="application", subtype="pdf", filename="scan.pdf")
    assert len(msg.as_bytes()) > SPOOL_ABOVE
    unreadable = [True]
    files: list[_UnreadableWhile] = []
    monkeypatch.setattr(data_module.tempfile, "TemporaryFile",
                        lambda **_: files.append(_UnreadableWhile(unreadable)) or files[-1])

    code, text = await _smtp_error(email_bridge, msg, [address])
    assert code == 451 and "4.3.0" in text
    assert len(files) == 1 and files[0].closed

    unreadable[0] = False
    assert await _smtp_error(email_bridge, msg, [address]) == (250, "")
    assert len(files) == 2 and files[1].closed
    pdf = await admin.wait_for_event(room, lambda e: e["content"].get("msgtype") == "m.file",
                                     timeout=30)
    assert pdf["content"]["info"] == {"mimetype": "application/pdf", "size": len(data)}
    assert await email_bridge.hub.download_media(pdf["content"]["url"]) == data
    texts = [e for e in await admin.messages(room, limit=50)
             if "Anbei der Scan." in e.get("content", {}).get("body", "")]
    assert len(texts) == 1
