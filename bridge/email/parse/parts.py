"""Reading one MIME part, leniently and without ever raising: its content type and disposition,
its payload bytes (misspelt transfer encodings included, lazy base64 runs decoded straight
from the mail), its text in the right charset, its Content-ID and a filename that is safe to
use.
"""

from __future__ import annotations

import binascii
import contextlib
import mimetypes
import re
from email.message import Message
from typing import Any

from bridge.email.parse.charsets import _fix_surrogates, decode_text
from bridge.email.parse.headers import (
    _MEMO,
    _clean_header_text,
    _decode_rfc2047,
    _header,
    _msgid,
    _param,
    _transfer_encoding,
)
from bridge.email.parse.raw import _materialize, _Run

_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")


def _content_type(part: Message) -> str:
    memo = _MEMO.get()
    if memo is None:
        return _read_content_type(part)
    key = ("content-type", part)
    if key not in memo:
        memo[key] = _read_content_type(part)
    value: str = memo[key]
    return value


def _read_content_type(part: Message) -> str:
    try:
        ctype = part.get_content_type().lower()
    except Exception:
        return "application/octet-stream"
    # 'application/pdf name="x.pdf"' (a missing semicolon) -> 'application/pdf'
    match = _MIME_TYPE.match(ctype)
    return match.group(0) if match else "application/octet-stream"


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _part_bytes(part: Message) -> bytes:
    cte = re.sub(r"[^a-z0-9]", "", (_header(part, "content-transfer-encoding") or "").lower())
    if cte not in ("", "7bit", "8bit", "binary", "base64", "quotedprintable"):
        # Misspelt encodings ("quoted printable", "base64;"): the email package would hand
        # back the encoded text, so decode what is recognisable ourselves.
        _materialize(part)
        payload = part.get_payload()
        if isinstance(payload, str):
            encoded = payload.encode("utf-8", "surrogateescape")
            with contextlib.suppress(Exception):
                if "base64" in cte:
                    import base64

                    return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", encoded) + b"==")
                if "quoted" in cte or "printable" in cte:
                    import quopri

                    return quopri.decodestring(encoded)
    data: Any
    try:
        data = _base64_payload(part)
        if data is None:
            data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes | memoryview):
        return data  # type: ignore[return-value]  # (decoded in place: a bytes-like view)
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def _base64_payload(part: Message) -> bytes | None:
    """``part.get_payload(decode=True)`` of a base64 part, decoded straight from the payload
    text; None where only get_payload knows the answer.

    get_payload takes the text through three copies on the way (bytes, a list of lines, the
    lines joined): 120 MB for a 20 MB attachment. Where binascii's lenient decoder accepts
    the text, its result is the one get_payload returns: get_payload drops the line breaks,
    which the lenient decoder skips anyway, tries the strict decoder (which agrees with the
    lenient one on all it accepts) and falls back to the lenient one. Padding it would add,
    raw 8-bit bytes and the like make the lenient decoder fail here.
    """
    payload = getattr(part, "_payload", None)  # get_payload() copies a big one to check it
    if part.is_multipart() or not isinstance(payload, str):
        return None
    if _transfer_encoding(part) != "base64":
        return None  # exactly get_payload's test
    if isinstance(payload, _Run):
        # Decoded once; when the mail may be reused (parse_message's consume), into its
        # own bytes, without a copy of the attachment beside it; from a spooled mail's
        # file, piece by piece into a buffer of its own.
        if payload.decoded is None:
            payload.decode()
        if payload.decoded is not None:
            return payload.decoded  # type: ignore[return-value]  # (bytes-like)
    try:
        # A lazy payload is decoded from the mail itself (the same ASCII text).
        return binascii.a2b_base64(payload.encoded() if isinstance(payload, _Run) else payload)
    except (binascii.Error, ValueError):
        if isinstance(payload, _Run):
            part._payload = payload.text()  # type: ignore[attr-defined]  # for get_payload
        return None


_LONE_CR = re.compile("\r(?!\n)")


def _part_text(part: Message) -> str:
    data = _part_bytes(part)
    text = decode_text(data, _param(part, "charset"))
    if "\r" not in text:  # (a search for one character is fast, one for "\r\n" is not)
        return text
    if _LONE_CR.search(text) is None:
        # Every "\r" is that of a "\r\n" (a CRLF mail): dropping them all is replacing
        # each "\r\n" with "\n", in a third less time than a replace or split per line.
        return text.replace("\r", "")
    # (Split and joined: the same as replace("\r\n", "\n"), a fifth faster on a long text.)
    text = "\n".join(text.split("\r\n"))
    return text.replace("\r", "\n") if "\r" in text else text


def _safe_filename(name: str) -> str:
    name = _clean_header_text(name)
    name = re.split(r"[/\\]", name)[-1]  # never a path: "../../1234.txt" -> "1234.txt"
    name = name.strip().lstrip(".").strip()
    if len(name.encode("utf-8")) > 200:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:20] if dot else ""
        name = stem.encode("utf-8")[:180].decode("utf-8", "ignore") + (f".{ext}" if ext else "")
    return name


def _filename(part: Message, mimetype: str) -> str:
    name = _param(part, "filename", "content-disposition") or _param(part, "name")
    if name:
        name = _decode_rfc2047(_fix_surrogates(name, _param(part, "charset")))
        name = _safe_filename(name)
    if name:
        return name
    maintype = mimetype.split("/")[0]
    stem = {"image": "image", "message": "message", "audio": "audio", "video": "video"}.get(
        maintype, "attachment")
    if mimetype == "text/calendar":
        stem, ext = "invite", ".ics"
    elif maintype == "message":
        ext = ".eml"
    else:
        ext = mimetypes.guess_extension(mimetype, strict=False) or ".bin"
    return stem + ext


def _content_id(part: Message) -> str | None:
    value = _header(part, "content-id")
    if not value:
        return None
    return _msgid(value) or None


def _has_filename(part: Message) -> bool:
    return bool(_param(part, "filename", "content-disposition") or _param(part, "name"))


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []
