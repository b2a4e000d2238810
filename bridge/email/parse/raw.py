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
from collections.abc import Iterator
from email.message import EmailMessage, Message
from email.parser import BytesFeedParser, BytesParser

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
_BASE64_RUN = re.compile(rb"\n((?:[A-Za-z0-9+/=]++(?:\r\n|\n|\r)){1024,}+)")
_RUN_SCAN_MIN = 256 * 1024  # bodies smaller than this are fed as they are


_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


def _parse_bytes(raw: bytes | bytearray, lazy_runs: bool = False) -> EmailMessage:
    """The mail as the email package parses it. With ``lazy_runs``, attachments' base64
    payloads may be left as `_Run` (for parse_message, which reads them through
    _part_bytes)."""
    # Leading blank lines or spaces would end the header block before it starts; an mbox
    # "From " line is not a header either. (No copies of the mail: the rest works with
    # positions in it; lstrip would copy a bytearray even with nothing to strip.)
    skip = _LEADING_SPACE.match(raw)
    data = raw[skip.end():] if skip and skip.end() else raw
    mbox = _MBOX_FROM.match(data)
    start = mbox.end() if mbox else 0
    # Quoting a boundary adds quote marks inside one line (`_quote_boundaries`), so the
    # header block ends in the same place with or without them.
    end = _header_block_end(data, start)
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
        _restore_runs(msg, data, marker, runs, lazy_runs)
    assert isinstance(msg, EmailMessage)
    return msg


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
    # The run decoded into the mail's own bytes (`decode_in_place`); the text is gone then,
    # and these say how it was written.
    decoded: memoryview | None
    line_break: str
    ended_with_break: bool

    def __new__(cls, placeholder: str, view: memoryview) -> _Run:
        run = super().__new__(cls, placeholder)
        run.view = view
        run.decoded = None
        return run

    def text(self) -> str:
        if self.decoded is not None:
            # (Only a forwarded message's file needs the text again: the same data in
            # base64, in lines of 76 with the run's line breaks, ending as it did.)
            text = base64.encodebytes(self.decoded).decode("ascii")
            text = text.replace("\n", self.line_break) if self.line_break != "\n" else text
            return text if self.ended_with_break else text[:-len(self.line_break)]
        return str(self.view, "ascii")


# Set while parse_message(consume=True) runs: the mail's bytes may be reused (see
# decode_in_place).
CONSUME: contextvars.ContextVar[bool] = contextvars.ContextVar("consume", default=False)
_DECODE_PIECE = 1 << 18  # (each piece is copied a few times on the way: keep them small)
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def decode_in_place(run: _Run) -> memoryview | None:
    """The run's base64 decoded into the mail's own bytes where the text was (the decoded
    data is shorter, so each piece lands behind what is still to be read): a big
    attachment then costs no memory beyond the mail itself, which holds it until it is
    uploaded. The same bytes as ``binascii.a2b_base64`` of the whole run; None (and nothing
    changed) where that is not certain: a read-only mail, characters other than base64's
    and line breaks, padding other than at the end, a length that is not whole quads.
    """
    view = run.view
    if view.readonly:
        return None
    # First look, then change: the text must be certain to decode before any of it is
    # overwritten.
    count, padding = 0, -1
    for start in range(0, len(view), _DECODE_PIECE):
        piece = view[start:start + _DECODE_PIECE].tobytes().translate(None, b"\r\n")
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
    head = view[:_DECODE_PIECE].tobytes()
    run.line_break = "\r\n" if b"\r\n" in head else "\r" if b"\r" in head and \
        b"\n" not in head else "\n"
    run.ended_with_break = view[-1:].tobytes() in (b"\r", b"\n")
    written, carry = 0, b""
    for start in range(0, len(view), _DECODE_PIECE):
        piece = carry + view[start:start + _DECODE_PIECE].tobytes().translate(None, b"\r\n")
        usable = len(piece) - len(piece) % 4
        data = binascii.a2b_base64(piece[:usable])
        carry = piece[usable:]
        view[written:written + len(data)] = data
        written += len(data)
    run.decoded = view[:written]
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


def _restore_runs(msg: Message, data: bytes | bytearray, marker: str,
                  runs: dict[str, tuple[int, int]], lazy: bool = False) -> None:
    """Put the base64 runs back in place of their placeholders (with ``lazy``, a payload
    of an attachment that is one run as a `_Run`)."""
    view = memoryview(data)
    placeholder = re.compile(re.escape(marker) + r"\d+")

    def text(match: re.Match[str]) -> str:
        first, last = runs[match.group(0)]
        return str(view[first:last], "ascii")

    parts = [msg]  # msg.walk(), without its recursion
    while parts:
        part = parts.pop()
        payload = getattr(part, "_payload", None)
        if isinstance(payload, list):
            parts.extend(p for p in payload if isinstance(p, Message))
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
                if data[last:last + len(rest)] == rest:
                    if lazy and name == "_payload" and _lazy_leaf(part):
                        setattr(part, name, _Run(value, view[first:last + len(rest)]))
                    else:
                        setattr(part, name, str(view[first:last + len(rest)], "ascii"))
                    continue
            setattr(part, name, placeholder.sub(text, value))


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
