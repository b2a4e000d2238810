"""aiosmtpd's SMTP server with its DATA command replaced: the mail is read in chunks.

aiosmtpd (1.4) reads DATA line by line and keeps a bytearray per line: five times a big
mail's size in memory and most of the CPU time of a 50 KB mail. `SmtpProtocol.smtp_DATA`
copies the checks and answers of aiosmtpd's own `SMTP.smtp_DATA`, in its order, and reads
the mail with `DataDecoder`; `_getaddr` skips aiosmtpd's general address parser for the
plain ``<local@domain>`` of nearly every command. Both reach into aiosmtpd's internals
(`_reader`, `_writer`, `_set_post_data_state`, `_call_handler_hook`, `_getaddr`), so
aiosmtpd is pinned to the 1.4 series in pyproject.toml, and tests/test_workarounds.py fails,
naming what changed, when the aiosmtpd installed no longer has what this module relies on.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
import tempfile
import threading
from typing import cast

from aiosmtpd.smtp import MISSING, SMTP

log = logging.getLogger("bridge.email.in")

TERMINATOR = b"\r\n.\r\n"
READ_SIZE = 1 << 18
TOO_MUCH = "552 Error: Too much mail data"
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TEMPORARY = "451 4.3.0 Temporary problem on the bridge; please try again later"
# A mail bigger than this goes to a temp file as it arrives and stays there: it is handed on
# as a `SpooledMail`, which the parser reads in pieces (a 20 MB attachment is decoded from
# the file into a buffer of its own; the 27 MB of the mail are never in memory at once). A
# bytearray grown piece by piece to tens of MB would also leave the malloc heap behind it as
# holes that stay resident (each time it outgrows its place, below glibc's mmap threshold,
# which a bridge that has freed a few big buffers has raised to many MB). An ordinary mail
# stays in memory: the file costs syscalls.
SPOOL_ABOVE = 1 << 19
_FIND_WINDOW = 1 << 16


class SpooledMail:
    """A mail that `DataDecoder` collected in a temp file (unnamed: gone with its handle).

    Read by position, from any thread; `close` may come from the event loop while a parse
    in a thread still reads (the SMTP connection went away): the reads and the close take
    turns, and a read after the close fails like a read of a broken file. Every failed read
    is kept in `read_error`, because the parser may take it for a malformed mail: the
    caller asks `raise_read_error` afterwards (the answer is then 451, not 550).
    """

    def __init__(self, file: io.RawIOBase, size: int) -> None:
        self._file: io.RawIOBase | None = file
        self._size = size
        self._lock = threading.Lock()
        self.read_error: OSError | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._file is None

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the mail's bytes from ``offset`` on (OSError: cannot)."""
        with self._lock:
            try:
                if self._file is None:
                    raise OSError("the spooled mail was closed")
                if offset < 0 or offset + len(buffer) > self._size:
                    raise OSError("a read beyond the spooled mail")
                self._file.seek(offset)
                filled = 0
                while filled < len(buffer):
                    read = self._file.readinto(buffer[filled:])
                    if not read:
                        raise OSError("the spool file is shorter than what was written")
                    filled += read
            except OSError as exc:
                self.read_error = self.read_error or exc
                raise

    def read(self, offset: int, size: int) -> bytearray:
        data = bytearray(size)
        with memoryview(data) as view:
            self.read_into(offset, view)
        return data

    def read_back(self) -> bytearray:
        """The whole mail in memory: allocated once, in its exact size."""
        return self.read(0, self._size)

    def find(self, sub: bytes) -> int:
        """``bytes.find`` in the mail, read window by window."""
        offset = 0
        while offset < self._size:
            window = self.read(offset, min(_FIND_WINDOW + len(sub) - 1, self._size - offset))
            at = window.find(sub)
            if at >= 0:
                return offset + at
            offset += _FIND_WINDOW
        return -1

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for offset in range(0, self._size, READ_SIZE):
            digest.update(self.read(offset, min(READ_SIZE, self._size - offset)))
        return digest.hexdigest()

    def raise_read_error(self) -> None:
        if self.read_error is not None:
            raise OSError("cannot read a spooled mail") from self.read_error

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class DataDecoder:
    """The data of one SMTP DATA command, decoded as it arrives (RFC 5321 4.5.2).

    Fed the bytes after "354" in chunks of any size, it finds the terminating line ".",
    removes the dot that the sender added to each line starting with one, checks the size
    limit and the line length, and collects the mail in one bytearray. aiosmtpd's own DATA
    reads the mail line by line and keeps a bytearray per line (five times the mail's size
    in memory for a big one, and most of the CPU time of a 50 KB mail); its answers stay the
    same: 552 for a mail over the size limit and 500 for a line too long, given after the
    terminator and with nothing of the mail kept meanwhile. A mail over ``spool_above``
    bytes is collected in a temp file instead and is `spooled` once `done` (the caller
    closes it), where it could be written; `content` is then empty.
    """

    def __init__(self, size_limit: int | None, line_limit: int = 1001,
                 spool_above: int = SPOOL_ABOVE) -> None:
        """``line_limit``: the longest line allowed, its CRLF included (RFC 5321 4.5.3.1.6:
        1000, plus a stuffed dot; aiosmtpd's limit). Counted from LF to LF (a bare LF, not
        allowed in SMTP, ends a line here too)."""
        self.content = bytearray()
        self.spooled: SpooledMail | None = None
        self._spool_above = spool_above
        self._spool: io.RawIOBase | None = None
        self._spooled = 0  # bytes of the mail in the spool file
        self._unspooled = False  # in memory for good (read back, or no spool possible)
        self.error: str | None = None
        self.done = False
        self._size_limit = size_limit
        self._line_limit = line_limit
        # Received but not decoded yet: up to 4 bytes that may begin the terminator. At
        # first the line break of the DATA command itself, so that a terminator right at
        # the start is found like any other (it is not part of the mail: see _skip).
        self._pending = b"\r\n"
        self._skip = 2
        self._size = -2  # raw bytes of the mail so far (the fake line break not counted)
        self._tail = b""  # the last two raw bytes decoded: where lines start
        self._line = 0  # raw bytes of the unfinished last line, CR included

    def feed(self, chunk: bytes) -> bytes:
        """Decode the next chunk; returns what came after the terminator, if it came."""
        block = self._pending + chunk
        end = block.find(TERMINATOR)
        if end >= 0:
            self._decode(block, end + 2)  # with the line break of the last line
            self._pending = b""
            self.done = True
            if self._spool is not None:
                self.spooled = SpooledMail(self._spool, self._spooled)
                self._spool = None
            return block[end + len(TERMINATOR):]
        if len(block) <= 4:
            self._pending = block
        else:
            self._decode(block, len(block) - 4)
            self._pending = block[-4:]
        return b""

    def _decode(self, raw: bytes, end: int) -> None:
        """Take raw[:end] (no copy of it unless it has dots to remove)."""
        self._size += end
        if self.error is not None:
            return
        if self._size_limit and self._size > self._size_limit:
            self._fail(TOO_MUCH)
            return
        # Every line must end within line_limit bytes of its start. From a line's start,
        # the last LF in the next line_limit bytes starts the next line to check: steps of
        # up to a kilobyte, not a look at every line.
        start = -self._line  # where the unfinished line began (before raw, if carried)
        while start + self._line_limit <= end:
            lf = raw.rfind(b"\n", max(start, 0), start + self._line_limit)
            if lf < 0:
                self._fail(TOO_LONG)
                return
            start = lf + 1
        lf = raw.rfind(b"\n", max(start, 0), end)
        self._line = end - (start if lf < 0 else lf + 1)
        # Transparency: a dot at the start of a line was added by the sender. Lines start
        # after a CRLF, which may end the bytes decoded before.
        tail = self._tail
        self._tail = (tail + raw[max(0, end - 2):end])[-2:]
        if raw.find(b"\r\n.", 0, end) >= 0 or b"\r\n." in tail + raw[:min(2, end)]:
            raw = (tail + raw[:end]).replace(b"\r\n.", b"\r\n")[len(tail):]
            end = len(raw)
        # (The removed dots all come after the fake line break, which stays in place.)
        skip = min(self._skip, end)
        self._append(memoryview(raw)[skip:end])
        self._skip -= skip

    def _append(self, data: memoryview) -> None:
        if self._spool is None and not self._unspooled and \
                len(self.content) + len(data) > self._spool_above:
            self._start_spool()
        if self._spool is not None:
            self._write(data)
        elif self.error is None:
            self.content += data

    def _start_spool(self) -> None:
        try:
            # (Open until the mail is handed on as `spooled`, read back (_unspool) or
            # dropped (close).)
            self._spool = cast(io.RawIOBase, tempfile.TemporaryFile(buffering=0))  # noqa: SIM115
        except OSError:
            log.warning("cannot spool a big mail to a temp file; keeping it in memory",
                        exc_info=True)
            self._unspooled = True
            return
        head, self.content = self.content, bytearray()
        self._write(memoryview(head))

    def _write(self, data: memoryview) -> None:
        """Append to the spool file; where that fails, the mail goes on in memory."""
        assert self._spool is not None
        try:
            while data:
                written = self._spool.write(data)
                if not written:
                    raise OSError("the spool file takes no more bytes")
                self._spooled += written
                data = data[written:]
        except OSError:
            log.warning("cannot spool a big mail to a temp file; keeping it in memory",
                        exc_info=True)
            self._unspool()
            if self.error is None:
                self.content += data

    def _unspool(self) -> None:
        """What was spooled into `content`, to go on in memory (the spool file failed):
        allocated once, in its exact size. (A mail whose spool cannot be read back is
        refused for now, 451: the sender keeps it.)"""
        if self._spool is None:
            return
        spooled = SpooledMail(self._spool, self._spooled)
        self._spool = None
        self._unspooled = True
        try:
            content = spooled.read_back()
        except OSError:
            log.exception("cannot read a spooled mail back")
            self._fail(TEMPORARY)
            return
        finally:
            spooled.close()
        self.content = content

    def close(self) -> None:
        """Drop what was received (a mail given up on before its end, or refused)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self.spooled is not None:
            self.spooled.close()
            self.spooled = None
        self.content = bytearray()

    def _fail(self, error: str) -> None:
        self.error = error
        self.close()  # nothing of a refused mail is kept


class SmtpProtocol(SMTP):
    """aiosmtpd's SMTP server with a DATA command that reads the mail in chunks."""

    async def smtp_DATA(self, arg: str) -> None:
        # The checks and answers of aiosmtpd's smtp_DATA, in its order.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        decoder = DataDecoder(self.data_size_limit, self.line_length_limit)
        try:
            while not decoder.done:
                chunk = await self._reader.read(READ_SIZE)
                if not chunk:  # the client went away (eof_received cancels us too)
                    raise asyncio.CancelledError
                rest = decoder.feed(chunk)
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            decoder.close()
            self._writer.close()
            raise
        if rest:
            self._unread(rest)
        if decoder.error is not None:
            await self.push(decoder.error)
            self._set_post_data_state()
            return
        # A bytearray, not bytes: converting would copy the whole mail. A big one stays in
        # its temp file, which goes when the handler is done with it, however it ends.
        mail = decoder.spooled if decoder.spooled is not None else decoder.content
        self.envelope.content = mail  # type: ignore[assignment]
        self.envelope.original_content = mail  # type: ignore[assignment]
        del decoder
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if isinstance(mail, SpooledMail):
                mail.close()
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _unread(self, data: bytes) -> None:
        """Hand back what a client sent after the terminator without waiting for our
        answer (not allowed without PIPELINING, which is not offered; but not lost)."""
        buffer = getattr(self._reader, "_buffer", None)
        if isinstance(buffer, bytearray):
            buffer[0:0] = data
        else:  # pragma: no cover - asyncio's StreamReader has always had it
            self._reader.feed_data(data)

    # An address in MAIL FROM / RCPT TO: the plain "<local@domain>" of nearly every command
    # without aiosmtpd's general parser, which builds a class per call.
    _PLAIN_ADDRESS = re.compile(
        r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
        r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = self._PLAIN_ADDRESS.match(arg) if arg else None
        if match is None or (self.local_part_limit and
                             len(match.group(1).rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        # The general parser also takes the blank space (and comments) after the ">".
        rest = arg[match.end():].lstrip(" \t")
        if rest.startswith("("):
            return super()._getaddr(arg)
        return match.group(1), rest
