"""From the bytes of a mail to the email package's message tree (`_parse_bytes`). The header
block is repaired where mail clients break it (leading blank lines, an mbox "From " line,
obsolete field syntax, unquoted boundaries, folded lines that lost their indentation), the
mail is fed to the parser in pieces, and the long base64 runs of big attachments are kept out
of the parser and left lazy in the tree (`_Run`, `_materialize`), so that a big attachment is
neither held as thousands of line objects nor copied more often than needed.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import itertools
import re
from collections.abc import Callable, Iterator
from email.message import EmailMessage, Message
from email.parser import BytesFeedParser, BytesParser
from typing import Protocol, runtime_checkable

from bridge.email.parse.headers import _POLICY, _transfer_encoding

_MBOX_FROM = re.compile(rb"^From [^\r\n]*\r?\n")
_OBS_FIELD_NAME = re.compile(rb"(?m)^([!-9;-~]+)[ \t]+:")
_FIELD_LINE = re.compile(rb"^[!-9;-~]+:")
_UNQUOTED_BOUNDARY = re.compile(
    rb"(?im)^((?:content-type:|[ \t])[^\r\n]*?\bboundary[ \t]*=[ \t]*)"
    rb"([^\"\s;]*[=/?:@(),<>\[\]][^\"\s;]*)")


# The parser is fed in pieces of this size: the email package splits what it is fed into
# line objects, and a whole 27 MB mail at once costs some 200 MB on the way.
_FEED_CHUNK = 64 * 1024
# A long run of base64 lines (an attachment) is kept out of the parser, which would hold each
# 76-character line as an object of its own (about 50 bytes of overhead each) and join them
# only at the end of the part. The run goes in as one placeholder line and is put back into
# the payload afterwards. To the parser the two are alike: neither a line of base64
# characters nor the placeholder is a header, boundary or blank line, wherever it stands.
# (Possessive: a plain repeat keeps a backtracking record per line, 70 MB for 20 MB.)
_RUN_LINES = 1024
_BASE64_RUN = re.compile(rb"\n((?:[A-Za-z0-9+/=]++(?:\r\n|\n|\r)){%d,}+)" % _RUN_LINES)
_RUN_SCAN_MIN = 256 * 1024  # bodies smaller than this are fed as they are


_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


@runtime_checkable
class MailFile(Protocol):
    """A mail kept in a file instead of memory (a big one, spooled to a temp file as it
    arrived: aiosmtpd_data.SpooledMail). Reads raise OSError where the file fails."""

    def __len__(self) -> int: ...

    def read(self, offset: int, size: int) -> bytes | bytearray: ...

    def read_into(self, offset: int, buffer: memoryview) -> None: ...

    def read_back(self) -> bytearray: ...


def _parse_bytes(raw: bytes | bytearray | MailFile, lazy_runs: bool = False) -> EmailMessage:
    """The mail as the email package parses it. With ``lazy_runs``, attachments' base64
    payloads may be left as `_Run` (for parse_message, which reads them through
    _part_bytes). A `MailFile` is read in pieces where its attachments' runs can be left in
    the file (`_parse_file`), else read back whole."""
    if isinstance(raw, MailFile):
        spooled = _parse_file(raw, lazy_runs)
        if spooled is not None:
            return spooled
        raw = raw.read_back()
    data, start, end = _header_block(raw)
    header = _repair_header_block(b"".join(_quote_boundaries(data, start, end)))
    single = _parse_single_part(data, header, end, lazy_runs)
    if single is not None:
        return single
    parser = BytesFeedParser(policy=_POLICY)
    parser.feed(header)
    marker = _run_marker(data) if len(data) - end >= _RUN_SCAN_MIN else None
    runs: dict[str, tuple[int, int]] = {}
    pos = end
    if marker is not None:
        for match in _BASE64_RUN.finditer(data, end):
            first, last = match.span(1)
            eol = 2 if data.endswith(b"\r\n", first, last) else 1
            _feed(parser, _quote_boundaries(data, pos, first))
            key = f"{marker}{len(runs)}"
            runs[key] = (first, last - eol)
            parser.feed(key.encode("ascii") + data[last - eol:last])
            pos = last
    _feed(parser, _quote_boundaries(data, pos, len(data)))
    msg = parser.close()
    if marker is not None and runs:
        _restore_runs(msg, marker, runs, _RunsInMemory(data), lazy_runs)
    assert isinstance(msg, EmailMessage)
    return msg


def _header_block(raw: bytes | bytearray) -> tuple[bytes | bytearray, int, int]:
    """(data, start, end): the mail without leading blank space, and where its header block
    starts and ends in it (see _header_block_end)."""
    # Leading blank lines or spaces would end the header block before it starts; an mbox
    # "From " line is not a header either. (No copies of the mail: the rest works with
    # positions in it; lstrip would copy a bytearray even with nothing to strip.)
    skip = _LEADING_SPACE.match(raw)
    data = raw[skip.end():] if skip and skip.end() else raw
    mbox = _MBOX_FROM.match(data)
    start = mbox.end() if mbox else 0
    # Quoting a boundary adds quote marks inside one line (`_quote_boundaries`), so the
    # header block ends in the same place with or without them.
    return data, start, _header_block_end(data, start)


def _header_block_end(data: bytes | bytearray, start: int) -> int:
    """Where the first blank line after `start` begins (its line break before it), or the
    end: the first "\n\n" or "\n\r\n". A CRLF mail has no "\n\n" in it, and looking for
    one would go through the whole mail; it can only be found before the first "\n\r\n"."""
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start, len(data) if crlf < 0 else crlf + 1)
    return lf if lf >= 0 else crlf if crlf >= 0 else len(data)


# A header line to the email package's parser (feedparser.headerRE, in bytes).
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # the parser's (universal newlines)
# Saves parsing the header block twice for most multipart mails (the content type the
# parser reads decides, this is only a guess).
_MAYBE_COMPOUND = re.compile(rb"content-type\s*:\s*\"?(?:multipart|message)", re.IGNORECASE)


def _parse_single_part(data: bytes | bytearray, header: bytes, end: int,
                       lazy: bool = False) -> EmailMessage | None:
    """The mail parsed without putting its body through the parser line by line, where it
    is not a multipart or message/*: the parser then makes the whole rest the payload, as it
    is. None where that is not certain (and for the others).

    `header` is the header block as it is fed, ending where data[end:] begins with its last
    line break and the blank line. The parser's header block ends at that blank line when
    every line before it is a header line to the parser.
    """
    msg = _single_part_headers(data, header, end)
    if msg is None:
        return None
    body = end + (2 if data.startswith(b"\n\n", end) else 3)
    head = getattr(msg, "_payload", None)
    payload: str
    if next(_boundary_matches(data, body, len(data)), None) is None:
        view = memoryview(data)[body:]
        if lazy and not head and view.nbytes >= _RUN_SCAN_MIN and _lazy_leaf(msg) and \
                data.isascii():
            payload = _Run("", view)  # a whole-mail attachment (scanners send them)
        else:
            payload = str(view, "ascii", "surrogateescape")
    else:
        payload = b"".join(_quote_boundaries(data, body, len(data))).decode(
            "ascii", "surrogateescape")
    # After what the parser has put there itself: a last header line "From …" goes back to
    # the body.
    msg.set_payload(head + payload if isinstance(head, str) and head else payload)
    assert isinstance(msg, EmailMessage)
    return msg


def _single_part_headers(data: bytes | bytearray, header: bytes,
                         end: int) -> EmailMessage | None:
    """The headers of a mail that `_parse_single_part` parses, or None. Decided by the
    header block and the blank line after it alone."""
    if end >= len(data) or _MAYBE_COMPOUND.search(header):
        return None
    body = end + (2 if data.startswith(b"\n\n", end) else 3)
    lines = _LINE_BREAK.split(header)
    if header.endswith(b"\r"):
        lines.pop()  # that "\r" and the "\n" at data[end] are one line break
    if not all(_HEADER_LINE.match(line) for line in lines):
        return None
    msg = BytesParser(policy=_POLICY).parsebytes(header + data[end:body], headersonly=True)
    if msg.get_content_maintype() in ("multipart", "message"):
        return None
    assert isinstance(msg, EmailMessage)
    return msg


def _quote_boundaries(data: bytes | bytearray, start: int,
                      end: int) -> Iterator[bytes | bytearray]:
    """data[start:end] in pieces, with unquoted boundaries quoted.

    Unquoted boundaries with "=" in them (Outlook Express: boundary=----=_NextPart_…) defeat
    the email package's new header parser; quoting them is always legal. A match lies within
    one line, so the mail can be done in parts that begin and end at line breaks.
    """
    pos = start
    for match in _boundary_matches(data, start, end):
        yield from _slices(data, pos, match.start())
        yield match.expand(rb'\1"\2"')
        pos = match.end()
    yield from _slices(data, pos, end)


# The lines where _UNQUOTED_BOUNDARY can match: it starts with "content-type:" or blank
# space at a line start (found at the line breaks at C speed; the regex would try every
# position). The whole "content-type:", not just its "c": body lines starting with a "c"
# would each cost a trip through the generator below.
_BOUNDARY_LINE = re.compile(rb"\n(?=(?i:content-type:)|[ \t])")


def _boundary_matches(data: bytes | bytearray, start: int,
                      end: int) -> Iterator[re.Match[bytes]]:
    """``_UNQUOTED_BOUNDARY.finditer(data, start, end)``: each match lies within a line
    that starts with one."""
    pos = start
    starts = itertools.chain((start,), (m.start() + 1 for m in
                                        _BOUNDARY_LINE.finditer(data, start, end)))
    for line_start in starts:
        if line_start < pos:
            continue
        match = _UNQUOTED_BOUNDARY.match(data, line_start, end)
        if match:
            yield match
            pos = match.end()


def _slices(data: bytes | bytearray, start: int, end: int) -> Iterator[bytes | bytearray]:
    for at in range(start, end, _FEED_CHUNK):
        yield data[at:min(at + _FEED_CHUNK, end)]


def _feed(parser: BytesFeedParser, pieces: Iterator[bytes | bytearray]) -> None:
    for piece in pieces:
        parser.feed(piece)


def _run_marker(data: bytes | bytearray) -> str:
    """A placeholder prefix that the mail does not contain."""
    number = 0
    while f"Xb64run{number}X".encode("ascii") in data:
        number += 1
    return f"Xb64run{number}X"


class _Run(str):
    """The base64 payload of an attachment, left in the mail instead of copied out of it.

    Its text is the placeholder the parser saw; :func:`_base64_payload` decodes the run
    straight from the mail (a 20 MB attachment is 27 MB of base64 text, which need not
    exist as a str next to the decoded bytes), and :func:`_materialize` turns it into the
    real payload text wherever the text itself is needed.
    """

    view: memoryview
    # The run decoded (`decode`); the text is gone then where it was decoded into the
    # mail's own bytes, and these say how it was written.
    decoded: memoryview | None
    line_break: str
    ended_with_break: bool
    # False for a run inside a forwarded message (message/*): its text is needed again for
    # the message's file, and base64.encodebytes gives it back as written only where it was
    # written in lines of 76. (A `_SpooledRun`'s text stays in its file.)
    may_overwrite: bool

    def __new__(cls, placeholder: str, view: memoryview) -> _Run:
        run = super().__new__(cls, placeholder)
        run.view = view
        run.decoded = None
        run.may_overwrite = True
        return run

    def encoded(self) -> bytes | bytearray | memoryview:
        """The run's base64 text, line breaks included."""
        return self.view

    def pieces(self) -> Iterator[bytes | bytearray]:
        """The run's text in pieces of _DECODE_PIECE, each read when it is asked for."""
        view = self.view
        for start in range(0, len(view), _DECODE_PIECE):
            yield view[start:start + _DECODE_PIECE].tobytes()

    def decode(self) -> None:
        """Sets `decoded` where that is certain to give binascii's bytes. In the mail's own
        bytes, and only while parse_message(consume=True) runs (the mail may be changed)."""
        if CONSUME.get() and self.may_overwrite:
            decode_in_place(self)

    def text(self) -> str:
        if self.decoded is not None:
            # (Only a forwarded message's file needs the text again: the same data in
            # base64, in lines of 76 with the run's line breaks, ending as it did.)
            text = base64.encodebytes(self.decoded).decode("ascii")
            text = text.replace("\n", self.line_break) if self.line_break != "\n" else text
            return text if self.ended_with_break else text[:-len(self.line_break)]
        return str(self.encoded(), "ascii")


class _SpooledRun(_Run):
    """A run left in the file of a spooled mail (`MailFile`): read from there in pieces,
    and decoded into a buffer of its own, of the decoded size."""

    mail: MailFile
    first: int
    last: int

    def __new__(cls, placeholder: str, mail: MailFile, first: int, last: int) -> _SpooledRun:
        run = str.__new__(cls, placeholder)
        run.mail, run.first, run.last = mail, first, last
        run.decoded = None
        return run

    def encoded(self) -> bytes | bytearray:
        return self.mail.read(self.first, self.last - self.first)

    def pieces(self) -> Iterator[bytes | bytearray]:
        for start in range(self.first, self.last, _DECODE_PIECE):
            yield self.mail.read(start, min(_DECODE_PIECE, self.last - start))

    def decode(self) -> None:
        # (Nothing of the mail changes: whether parse_message may consume it is no matter.)
        _decode(self, lambda size: memoryview(bytearray(size)))

    def text(self) -> str:
        # As written, decoded or not: its lines need not be base64.encodebytes's.
        return str(self.encoded(), "ascii")


# Set while parse_message(consume=True) runs: the mail's bytes may be reused (see
# decode_in_place).
CONSUME: contextvars.ContextVar[bool] = contextvars.ContextVar("consume", default=False)
_DECODE_PIECE = 1 << 18  # (each piece is copied a few times on the way: keep them small)
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def decode_in_place(run: _Run) -> memoryview | None:
    """The run's base64 decoded into the mail's own bytes where the text was (the decoded
    data is shorter, so each piece lands behind what is still to be read): a big
    attachment then costs no memory beyond the mail itself, which holds it until it is
    uploaded. See `_decode`; None (and nothing changed) also for a read-only mail.
    """
    view = run.view
    if view.readonly:
        return None
    return _decode(run, lambda size: view)


def _decode(run: _Run, target: Callable[[int], memoryview]) -> memoryview | None:
    """The run's base64 decoded into ``target(decoded size)``, piece by piece: the same bytes
    as ``binascii.a2b_base64`` of the whole run. None (and nothing written) where that is
    not certain: characters other than base64's and line breaks, padding other than at the
    end, a length that is not whole quads.
    """
    # First look, then write: the text must be certain to decode before any of it is
    # overwritten (in place) or a buffer of its size is taken.
    count, padding = 0, -1
    line_break = ""
    last: bytes | bytearray = b""
    for raw_piece in run.pieces():
        if not line_break:  # (the line breaks of the first piece tell)
            line_break = "\r\n" if b"\r\n" in raw_piece else "\r" if b"\r" in raw_piece \
                and b"\n" not in raw_piece else "\n"
        last = raw_piece[-1:]
        piece = raw_piece.translate(None, b"\r\n")
        if piece.translate(None, _BASE64_ALPHABET):
            return None
        at = piece.find(b"=")
        if padding >= 0 or at >= 0:
            tail = piece if padding >= 0 else piece[at:]
            if tail.strip(b"="):
                return None  # something after the padding
            padding = max(padding, 0) + len(tail)
        count += len(piece)
    if count % 4 or padding > 2:
        return None
    run.line_break = line_break
    run.ended_with_break = last in (b"\r", b"\n")
    output = target(count // 4 * 3 - max(padding, 0))
    written = 0
    carry: bytes | bytearray = b""
    for raw_piece in run.pieces():
        piece = raw_piece.translate(None, b"\r\n")
        del raw_piece
        piece = carry + piece if carry else piece
        usable = len(piece) - len(piece) % 4
        data = binascii.a2b_base64(piece[:usable])
        carry = piece[usable:]
        output[written:written + len(data)] = data
        written += len(data)
    run.decoded = output[:written]
    return run.decoded


def _materialize(msg: Message) -> None:
    """Every lazy payload (`_Run`) in the tree as its text."""
    parts = [msg]
    while parts:
        part = parts.pop()
        payload = getattr(part, "_payload", None)
        if isinstance(payload, list):
            parts.extend(p for p in payload if isinstance(p, Message))
        elif isinstance(payload, _Run):
            part._payload = payload.text()  # type: ignore[attr-defined]


def _lazy_leaf(part: Message) -> bool:
    """Only an attachment's payload is left lazy: base64 as get_payload decodes it, and a
    type that the parser reads only through _part_bytes (no text, no message, no parts)."""
    return (_transfer_encoding(part) == "base64"
            and part.get_content_maintype() not in ("text", "message", "multipart"))


class _RunsInMemory:
    """Where `_restore_runs` finds the runs' text: the mail in memory."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.view = memoryview(data)

    def text(self, first: int, last: int) -> str:
        return str(self.view[first:last], "ascii")

    def follows(self, at: int, rest: bytes) -> bool:
        return self.data[at:at + len(rest)] == rest

    def run(self, placeholder: str, first: int, last: int, forwarded: bool) -> _Run:
        run = _Run(placeholder, self.view[first:last])
        run.may_overwrite = not forwarded
        return run


class _RunsInFile:
    """Where `_restore_runs` finds the runs' text: the file of a spooled mail."""

    def __init__(self, mail: MailFile) -> None:
        self.mail = mail

    def text(self, first: int, last: int) -> str:
        return str(self.mail.read(first, last - first), "ascii")

    def follows(self, at: int, rest: bytes) -> bool:
        return self.mail.read(at, len(rest)) == rest

    def run(self, placeholder: str, first: int, last: int, forwarded: bool) -> _Run:
        # (Forwarded or not: its text stays in the file as written.)
        return _SpooledRun(placeholder, self.mail, first, last)


def _restore_runs(msg: Message, marker: str, runs: dict[str, tuple[int, int]],
                  source: _RunsInMemory | _RunsInFile, lazy: bool = False) -> None:
    """Put the base64 runs (at their positions in ``source``) back in place of their
    placeholders (with ``lazy``, a payload of an attachment that is one run as a `_Run`)."""
    placeholder = re.compile(re.escape(marker) + r"\d+")

    def text(match: re.Match[str]) -> str:
        return source.text(*runs[match.group(0)])

    parts = [(msg, False)]  # msg.walk(), without its recursion; in a forwarded message?
    while parts:
        part, forwarded = parts.pop()
        payload = getattr(part, "_payload", None)
        if isinstance(payload, list):
            inside = forwarded or part.get_content_maintype() == "message"
            parts.extend((p, inside) for p in payload if isinstance(p, Message))
        # The attributes themselves: get_payload() would hand back a converted copy of a
        # payload with raw 8-bit bytes in it.
        for name in ("_payload", "preamble", "epilogue"):
            value = getattr(part, name, None)
            if not isinstance(value, str) or marker not in value:
                continue
            whole = placeholder.match(value)
            if whole and len(value) - whole.end() <= 2:
                # The usual case, a payload that is one run (and its line break): made in
                # one piece, without a second copy for joining.
                first, last = runs[whole.group(0)]
                rest = value[whole.end():].encode("ascii", "surrogateescape")
                if source.follows(last, rest):
                    if lazy and name == "_payload" and _lazy_leaf(part):
                        setattr(part, name,
                                source.run(value, first, last + len(rest), forwarded))
                    else:
                        setattr(part, name, source.text(first, last + len(rest)))
                    continue
            setattr(part, name, placeholder.sub(text, value))


# --------------------------------------------------------------------------------------------
# A mail in a file
# --------------------------------------------------------------------------------------------

_FILE_HEAD = 1 << 18  # the header block must end within this (else: read back whole)
_FILE_WINDOW = 1 << 18  # the file is searched for runs in windows of this size


def _parse_file(mail: MailFile, lazy_runs: bool = True) -> EmailMessage | None:
    """`_parse_bytes(mail, lazy_runs)` without the mail in memory: its runs of base64
    lines are found in the file window by window (`_find_runs`), the rest is read into a
    skeleton of the mail with the runs' placeholders in place, which the parser reads, and
    the runs stay in the file as `_SpooledRun` (read and decoded in pieces). The parser is
    fed what _parse_bytes feeds it and the runs go back where _parse_bytes puts them: the
    same tree. None where the mail must be read whole: a single-part mail, a header block
    that does not end within _FILE_HEAD, a mail without runs.
    """
    size = len(mail)
    head = mail.read(0, min(size, _FILE_HEAD))
    data, start, end = _header_block(head)
    if end >= len(data):
        return None  # (or not seen yet)
    skip = len(head) - len(data)
    header = _repair_header_block(b"".join(_quote_boundaries(data, start, end)))
    if _single_part_headers(data, header, end) is not None or \
            size - skip - end < _RUN_SCAN_MIN:
        return None
    del head, data
    runs = []
    for first, last in _find_runs(mail, skip + end, size):
        eol = 2 if mail.read(last - 2, 2) == b"\r\n" else 1
        runs.append((first, last - eol))
    if not runs:
        return None
    number = 0
    while True:
        # Each run's text but its last line break is a placeholder in the skeleton. The
        # prefix must not be in the rest of the mail: the skeleton has it once per run.
        marker = f"Xb64run{number}X"
        skeleton = _skeleton(mail, skip, runs, marker)
        if skeleton.count(marker.encode("ascii")) == len(runs):
            break
        number += 1
    parser = BytesFeedParser(policy=_POLICY)
    parser.feed(header)
    _feed(parser, _quote_boundaries(skeleton, end, len(skeleton)))
    del skeleton
    msg = parser.close()
    _restore_runs(msg, marker, {f"{marker}{n}": run for n, run in enumerate(runs)},
                  _RunsInFile(mail), lazy_runs)
    assert isinstance(msg, EmailMessage)
    return msg


def _skeleton(mail: MailFile, skip: int, runs: list[tuple[int, int]],
              marker: str) -> bytearray:
    """The mail from ``skip`` on with each run's text (first, last) replaced by its
    placeholder, read into one buffer of its exact size."""
    keys = [f"{marker}{n}".encode("ascii") for n in range(len(runs))]
    size = len(mail) - skip - sum(last - first for first, last in runs) + \
        sum(len(key) for key in keys)
    skeleton = bytearray(size)
    view = memoryview(skeleton)
    at, pos = 0, skip
    for (first, last), key in zip(runs, keys, strict=True):
        mail.read_into(pos, view[at:at + first - pos])
        at += first - pos
        view[at:at + len(key)] = key
        at += len(key)
        pos = last
    mail.read_into(pos, view[at:])
    view.release()
    return skeleton


def _run_pattern(lines: int) -> re.Pattern[bytes]:
    return re.compile(rb"\n((?:[A-Za-z0-9+/=]++(?:\r\n|\n|\r)){%d,}+)" % lines)


# The parts of a run (_BASE64_RUN), to find runs in a file piece by piece. A chain is
# what _BASE64_RUN matches with any number of lines: _BASE64_RUN matches a chain of at
# least _RUN_LINES lines, and no other (from a "\n" inside a chain, the same lines follow,
# fewer of them).
_CHAIN = _run_pattern(1)
_LINES = re.compile(rb"(?:[A-Za-z0-9+/=]++(?:\r\n|\n|\r))*+")
_BASE64_CHARACTERS = re.compile(rb"[A-Za-z0-9+/=]*+")


def _characters_end(buffer: bytes | bytearray, at: int) -> int:
    """Where the base64 characters from ``at`` on end."""
    match = _BASE64_CHARACTERS.match(buffer, at)
    return match.end() if match else at


def _line_count(buffer: bytes | bytearray, start: int, end: int) -> int:
    """Lines of a chain (each ends in CRLF, LF or CR) in buffer[start:end]."""
    return buffer.count(b"\n", start, end) + buffer.count(b"\r", start, end) - \
        buffer.count(b"\r\n", start, end)


def _last_line_start(buffer: bytes | bytearray, start: int, end: int) -> int:
    """Where the chain's last line in buffer[start:end] begins."""
    stop = end - 2 if buffer.endswith(b"\r\n", start, end) else end - 1  # (its line break)
    at = max(buffer.rfind(b"\n", start, stop), buffer.rfind(b"\r", start, stop))
    return at + 1 if at >= 0 else start


def _find_runs(mail: MailFile, start: int, size: int, window: int = _FILE_WINDOW,
               lines: int | None = None) -> Iterator[tuple[int, int]]:
    """``m.span(1) for m in _BASE64_RUN.finditer(whole mail, start)``, for a mail in a file
    read window by window (``lines``: _RUN_LINES, the lines a run needs).

    What is undecided at a window's end is carried into the next one: a "\\n" followed by
    base64 characters only (a chain may begin there), or a chain that reaches the end (kept
    from its last line on, its lines counted: a run is many windows long; its last line
    is kept whole, so that a CR and the LF of the next window are one line break).
    """
    lines = _RUN_LINES if lines is None else lines
    buffer: bytes | bytearray = b""
    base, pos, offset = start, 0, start  # buffer[0] is the mail's byte `base`
    chain: tuple[int, int] | None = None  # a chain's start in the mail and its lines so far
    while True:
        final = offset >= size
        if chain is None:
            match = _CHAIN.search(buffer, pos)
            if match is None:
                line = buffer.rfind(b"\n", pos)
                keep = line if line >= 0 and \
                    _characters_end(buffer, line + 1) == len(buffer) \
                    else len(buffer)
            elif final or _characters_end(buffer, match.end()) < len(buffer):
                if _line_count(buffer, match.start(1), match.end(1)) >= lines:
                    yield base + match.start(1), base + match.end(1)
                pos = match.end()
                continue
            else:
                keep = _last_line_start(buffer, match.start(1), match.end(1))
                chain = (base + match.start(1), _line_count(buffer, match.start(1), keep))
        else:
            lines_match = _LINES.match(buffer)
            end = lines_match.end() if lines_match else 0
            # (Counted only until there are enough: the counting costs as much as the rest.)
            counted = chain[1] >= lines
            if final or _characters_end(buffer, end) < len(buffer):
                if counted or chain[1] + _line_count(buffer, 0, end) >= lines:
                    yield chain[0], base + end
                chain, pos = None, end
                continue
            keep = _last_line_start(buffer, 0, end) if end else 0
            if not counted:
                chain = (chain[0], chain[1] + _line_count(buffer, 0, keep))
        if final:
            return
        piece = mail.read(offset, min(window, size - offset))
        offset += len(piece)
        buffer = buffer[keep:] + piece
        base, pos = base + keep, 0


def _repair_header_block(block: bytes) -> bytes:
    # Obsolete syntax (RFC 5322 section 4.5): "Subject : …" with space before the colon.
    block = _OBS_FIELD_NAME.sub(rb"\1:", block)
    lines = block.split(b"\n")
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip(b"\r") or line[:1] in (b" ", b"\t") or _FIELD_LINE.match(line):
            continue
        # A folded line that lost its indentation (seen from Exchange): without repair it
        # would end the header block and push Content-Type & Co. into the body.
        if any(_FIELD_LINE.match(later) for later in lines[i + 1:i + 30]):
            lines[i] = b" " + line
    return b"\n".join(lines)
