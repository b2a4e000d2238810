"""The SMTP server's own DATA command: the same mail and the same answers as aiosmtpd's.

`DataDecoder` takes the mail in chunks instead of line by line (aiosmtpd's way costs five
times a big mail's size in memory and most of the CPU time of a small one). What it must
keep: the terminating line, the removal of stuffed dots (RFC 5321 4.5.2), 552 for a mail
over the size limit and 500 for an overlong line, answered after the terminator, and the
bytes a client sends after the terminator. A big mail goes to a temp file and is handed on
in it (`SpooledMail`, closed once the handler is done): the same bytes and answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import smtplib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.email.aiosmtpd_data as data_module
from bridge.email.aiosmtpd_data import SPOOL_ABOVE, DataDecoder, SmtpProtocol, SpooledMail
from testkit.synapse import free_port


def aiosmtpd_data(stream: bytes, limit: int | None) -> tuple[bytes | str, bytes] | None:
    """What aiosmtpd's smtp_DATA makes of ``stream`` (the bytes after "354"): the mail or
    the error, and what follows the terminator; None if the terminator never comes.

    Lines as aiosmtpd reads them (up to CRLF), with one difference on purpose: a line's
    length counts to the next LF, so a bare LF (not allowed in SMTP anyway) ends a line
    for the length check, which only makes the check more lenient."""
    lines: list[bytes] = []
    pos = size = 0
    error: str | None = None
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            return None
        line, pos = stream[pos:end + 2], end + 2
        if line == b".\r\n":
            break
        size += len(line)
        if error is None and limit and size > limit:
            error = "552"
        if error is None and max(len(piece) for piece in line.split(b"\n")) + 1 > 1001:
            error = "500"
        lines.append(line[1:] if line.startswith(b".") else line)
    if error is not None:
        return error, stream[pos:]
    return b"".join(lines), stream[pos:]


def decode(stream: bytes, limit: int | None, cuts: list[int],
           spool_above: int = SPOOL_ABOVE) -> tuple[bytes | str, bytes]:
    decoder = DataDecoder(limit, spool_above=spool_above)
    pos, rest = 0, b""
    for cut in [*sorted(cuts), len(stream)]:
        if decoder.done:
            break
        rest = decoder.feed(stream[pos:cut])
        pos = cut
    assert decoder.done
    rest += stream[pos:]
    if decoder.error:
        return decoder.error[:3], rest
    spooled = decoder.spooled
    if spooled is None:
        return bytes(decoder.content), rest
    assert not decoder.content
    try:
        return bytes(spooled.read_back()), rest
    finally:
        spooled.close()


PIECES = [b"\r\n", b".", b"..", b"a", b"\r", b"\n", b"\r\n.\r\n", b"x" * 333, b"\r\n.",
          b".\r\n"]


@settings(max_examples=400, deadline=None)
@given(body=st.lists(st.sampled_from(PIECES), max_size=40),
       dot_first=st.booleans(),
       limit=st.sampled_from([None, 5, 40, 700]),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
       spool_above=st.sampled_from([SPOOL_ABOVE, 0, 300]))
def test_decoder_agrees_with_aiosmtpd(body: list[bytes], dot_first: bool, limit: int | None,
                                      cuts: list[int], spool_above: int) -> None:
    stream = b"".join(body) + b"\r\n.\r\nQUIT\r\n"
    if dot_first:
        stream = b".\r\n" + stream
    expected = aiosmtpd_data(stream, limit)
    assert expected is not None
    assert decode(stream, limit, [c for c in cuts if c < len(stream)], spool_above) == expected


def test_decoder_edge_cases() -> None:
    assert decode(b".\r\n", None, []) == (b"", b"")  # an empty mail
    assert decode(b"..\r\n.\r\n", None, [1]) == (b".\r\n", b"")
    assert decode(b"a\r\n..b\r\n.c\r\n.\r\n", None, [3, 4]) == (b"a\r\n.b\r\nc\r\n", b"")
    assert decode(b"x" * 999 + b"\r\n.\r\n", None, [500]) == (b"x" * 999 + b"\r\n", b"")
    assert decode(b"x" * 1000 + b"\r\n.\r\n", None, [500]) == ("500", b"")
    assert decode(b"ab\r\ncd\r\n.\r\n", 8, [2]) == (b"ab\r\ncd\r\n", b"")
    assert decode(b"ab\r\ncd\r\n.\r\n", 7, [2]) == ("552", b"")


class _FailingSpool(io.BytesIO):
    """A temp file that fails after ``fail_after`` bytes were written (a full disk) or when
    it is read back."""

    def __init__(self, fail_after: int | None = None, fail_read: bool = False) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.fail_read = fail_read

    def write(self, data: Any) -> int:
        if self.fail_after is not None and self.tell() + len(data) > self.fail_after:
            room = max(0, self.fail_after - self.tell())
            if room:
                return super().write(bytes(data)[:room])  # a short write, then the error
            raise OSError(28, "No space left on device")
        return super().write(data)

    def readinto(self, buffer: Any) -> int:
        if self.fail_read:
            raise OSError(5, "Input/output error")
        return super().readinto(buffer)


MAIL = b"".join(b"%sline %d of the mail\r\n" % (b"." * (n % 7 == 3), n) for n in range(400))
STREAM = MAIL.replace(b"\r\n.", b"\r\n..") + b".\r\n"  # dot-stuffed, with the terminator


@pytest.mark.parametrize("fail_after", [0, 100, 5000])
def test_a_mail_whose_spool_file_fills_up_goes_on_in_memory(
        monkeypatch: pytest.MonkeyPatch, fail_after: int) -> None:
    spools: list[_FailingSpool] = []
    monkeypatch.setattr(data_module.tempfile, "TemporaryFile",
                        lambda **_: spools.append(_FailingSpool(fail_after)) or spools[-1])
    assert decode(STREAM, None, [700, 3000, 3001, 9000], spool_above=500) == (MAIL, b"")
    assert len(spools) == 1 and spools[0].closed


def test_a_spooled_mail_is_handed_on_unread_and_a_failed_read_is_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder does not read the spooled mail back; where the one who does cannot, the
    failure is kept for the connector (which answers 451: the sending server keeps the
    mail and tries again)."""
    spools: list[_FailingSpool] = []
    monkeypatch.setattr(data_module.tempfile, "TemporaryFile",
                        lambda **_: spools.append(_FailingSpool(fail_read=True)) or spools[-1])
    decoder = DataDecoder(None, spool_above=500)
    assert decoder.feed(STREAM + b"QUIT\r\n") == b"QUIT\r\n"
    spooled = decoder.spooled
    assert decoder.done and decoder.error is None and spooled is not None
    assert len(spooled) == len(MAIL) and spools[0].getvalue() == MAIL
    with pytest.raises(OSError):
        spooled.read(10, 20)
    assert isinstance(spooled.read_error, OSError)
    with pytest.raises(OSError, match="cannot read a spooled mail"):
        spooled.raise_read_error()
    spooled.close()
    assert spools[0].closed and spooled.closed
    with pytest.raises(OSError, match="closed"):
        spooled.read_back()


def test_a_spooled_mail_is_read_by_position() -> None:
    decoder = DataDecoder(None, spool_above=500)
    decoder.feed(STREAM)
    spooled = decoder.spooled
    assert spooled is not None
    try:
        assert spooled.read(1000, 50) == MAIL[1000:1050]
        assert spooled.read(len(MAIL), 0) == b""
        with pytest.raises(OSError):
            spooled.read(len(MAIL) - 5, 10)
        assert spooled.read_error is not None  # (kept: the parse's result cannot be trusted)
        for needle in (b"line 399", b"line 1 ", b"\r\n.line", b"nowhere"):
            assert spooled.find(needle) == MAIL.find(needle)
        assert spooled.sha256() == hashlib.sha256(MAIL).hexdigest()
    finally:
        spooled.close()


def test_find_in_a_spooled_mail_across_its_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_module, "_FIND_WINDOW", 7)
    decoder = DataDecoder(None, spool_above=0)
    decoder.feed(STREAM)
    spooled = decoder.spooled
    assert spooled is not None
    for start in range(0, 200, 3):
        needle = MAIL[start:start + 4]
        assert spooled.find(needle) == MAIL.find(needle)
    assert spooled.find(b"\r\n\r\n") == -1
    spooled.close()


def test_a_spooled_mail_given_up_on_leaves_no_file() -> None:
    decoder = DataDecoder(None, spool_above=10)
    decoder.feed(b"x" * 100 + b"\r\n")
    spool = decoder._spool
    assert spool is not None and not spool.closed
    decoder.close()
    assert spool.closed and decoder.content == b""


class Recorder:
    def __init__(self) -> None:
        self.mails: list[bytes] = []
        self.spooled: list[SpooledMail] = []
        self.fail = False

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content
        if isinstance(content, SpooledMail):  # a big mail, in its temp file
            self.spooled.append(content)
            content = content.read_back()
        assert isinstance(content, bytearray)  # handed over as collected, not copied
        self.mails.append(bytes(content))
        if self.fail:
            raise RuntimeError("the handler failed")
        return "250 2.0.0 taken"


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder()
    port = free_port()
    loop = asyncio.get_running_loop()
    limit = getattr(request, "param", 100_000)
    listener = await loop.create_server(
        lambda: SmtpProtocol(recorder, hostname="bridge.example", data_size_limit=limit),
        "127.0.0.1", port)
    yield port, recorder
    listener.close()
    await listener.wait_closed()


@pytest.mark.integration  # a real aiosmtpd server on a local port
async def test_mails_over_smtp(server: tuple[int, Recorder]) -> None:
    port, recorder = server
    mail = (b"From: a@b.example\r\nSubject: Punkte\r\n\r\n.beginnt mit Punkt\r\n..zwei\r\n"
            b".\r\nEnde\r\n")

    def send() -> list[tuple[int, bytes | str]]:
        answers: list[tuple[int, bytes | str]] = []
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo("mta.example")
            # smtplib stuffs the dots (and the line "." in the middle); the server must
            # take them out again.
            assert client.sendmail("a@b.example", ["r@bridge.example"], mail) == {}
            long_line = b"Subject: x\r\n\r\n" + b"y" * 1200 + b"\r\n"
            try:
                client.sendmail("a@b.example", ["r@bridge.example"], long_line)
            except smtplib.SMTPDataError as exc:
                answers.append((exc.smtp_code, exc.smtp_error))
            # Without SIZE in MAIL FROM (which smtplib gives, and which is refused there):
            # the size is found out at DATA.
            too_big = b"Subject: x\r\n\r\n" + (b"z" * 70 + b"\r\n") * 2000
            client.mail("a@b.example")
            client.rcpt("r@bridge.example")
            answers.append(client.data(too_big))
            # Still in step after the refusals: another mail goes through.
            client.sendmail("a@b.example", ["r@bridge.example"], b"Subject: y\r\n\r\nok\r\n")
        return answers

    answers = await asyncio.to_thread(send)
    assert answers[0][0] == 500 and b"Line too long" in answers[0][1]
    assert answers[1][0] == 552
    assert recorder.mails == [mail, b"Subject: y\r\n\r\nok\r\n"]


@pytest.mark.integration  # a real aiosmtpd server on a local port
async def test_commands_right_after_the_terminator_are_not_lost(
        server: tuple[int, Recorder]) -> None:
    """A client that does not wait for the answer to DATA (no PIPELINING is offered, but
    some send QUIT along): the command after the terminator is still read."""
    port, recorder = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    for command in (b"EHLO mta.example\r\n", b"MAIL FROM:<a@b.example>\r\n",
                    b"RCPT TO:<r@bridge.example>\r\n", b"DATA\r\n"):
        writer.write(command)
        line = await reader.readline()
        while line[3:4] == b"-":
            line = await reader.readline()
    writer.write(b"Subject: z\r\n\r\n..x\r\n.\r\nQUIT\r\n")
    assert (await reader.readline()).startswith(b"250 2.0.0 taken")
    assert (await reader.readline()).startswith(b"221")
    writer.close()
    assert recorder.mails == [b"Subject: z\r\n\r\n.x\r\n"]


@pytest.mark.integration  # a real aiosmtpd server on a local port
@pytest.mark.parametrize("server", [4 * SPOOL_ABOVE], indirect=True)
async def test_a_big_mail_is_handed_on_in_its_temp_file_which_goes_afterwards(
        server: tuple[int, Recorder]) -> None:
    """Over SPOOL_ABOVE, the handler gets the mail in its temp file; the file is closed
    (and with it gone) once the handler is done, also when the handler fails."""
    port, recorder = server
    big = b"Subject: gross\r\n\r\n" + b"".join(
        b"%s%d Zeile\r\n" % (b"." * (n % 5 == 0), n) for n in range(SPOOL_ABOVE // 10))

    def send(count: int) -> list[tuple[int, bytes]]:
        answers = []
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo("mta.example")
            for _ in range(count):
                client.mail("a@b.example")
                client.rcpt("r@bridge.example")
                answers.append(client.data(big))
        return answers

    assert [code for code, _ in await asyncio.to_thread(send, 1)] == [250]
    recorder.fail = True
    assert [code for code, _ in await asyncio.to_thread(send, 1)] != [250]
    assert recorder.mails == [big, big]
    assert len(recorder.spooled) == 2 and all(mail.closed for mail in recorder.spooled)
