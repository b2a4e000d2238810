"""Inbound mail, parsed: a raw RFC 5322 message becomes what the bridge posts to a room.

Pure functions only (no I/O): `parse_message` takes the bytes an MTA handed us and returns a
`ParsedMail` with the *new* part of the message (quotes and signatures split off into
`quoted_text`, so nothing is lost), the HTML of that new part (not yet sanitised: the
connector first uploads inline images, then calls `sanitize_html` with the ``cid:`` map),
attachments, forwarded messages, calendar invitations, and whether the mail is an automatic
reply or a bounce, which must never be posted as chat.

Mail in the wild is broken in every way a parser can imagine, so the rule here is: parse what
can be parsed, degrade the rest, and never raise anything but `MalformedMail`, which is kept
for input that is not a mail at all.

Quote stripping is heuristic. The plain-text patterns (multi-language "On … wrote:" lines,
Outlook "From:/Sent:" blocks, sign-offs) come from mail-parser-reply; on top of them this
module knows separator lines ("-----Ursprüngliche Nachricht-----"), attribution lines that
open a trailing ``>`` quote block, bottom-posted replies, and the HTML quote containers of
Gmail, Outlook, Thunderbird and Apple Mail.
"""

from __future__ import annotations

import binascii
import bisect
import codecs
import contextlib
import contextvars
import html as html_lib
import itertools
import logging
import mimetypes
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesFeedParser, BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import lxml.html
from mailparser_reply.constants import MAIL_LANGUAGES

from bridge.email.sanitize import html_to_text

log = logging.getLogger(__name__)

__all__ = [
    "Attachment",
    "Bounce",
    "ForwardedMessage",
    "MalformedMail",
    "ParsedMail",
    "ReplySplit",
    "calendar_summary",
    "decode_text",
    "detect_auto_reply",
    "parse_message",
    "split_html_reply",
    "split_reply",
    "strip_subject_prefixes",
    "unflow",
]


class _HeaderClasses(HeaderRegistry):
    """The email package's header registry, making each header class once (it builds a new
    class with type() for every header it parses), and each header object once per name
    and value: the same Content-Type, To or From comes in mail after mail, and parsing one
    takes the email package's header parser tens of microseconds. Header objects are
    immutable (str with read-only attributes), so one can stand in for another of the same
    name and value wherever it is used."""

    _MAX_VALUE = 512  # longer values (rare) are parsed each time
    _MAX_KEPT = 2048  # header objects kept; the cache starts over when it is full

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}
        self._made: dict[tuple[str, str], Any] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls

    def __call__(self, name: str, value: str) -> Any:
        if len(value) > self._MAX_VALUE:
            return super().__call__(name, value)
        key = (name, value)
        header = self._made.get(key)
        if header is None:
            header = super().__call__(name, value)
            if len(self._made) >= self._MAX_KEPT:
                self._made.clear()
            self._made[key] = header
        return header


# policy.default, with the header classes made once.
_POLICY = policy.default.clone(header_factory=_HeaderClasses())


class MalformedMail(ValueError):
    """The input is not a mail at all.

    Raised only when no header block can be found: empty input, binary junk, or text that
    does not start with at least one header field that RFC 5322 or MIME defines (From,
    Subject, Content-Type, Received, …). A mail with a broken or missing From still parses
    (``from_address`` is then empty; the connector decides what to do with it).
    """


@dataclass
class Attachment:
    filename: str
    mimetype: str
    data: bytes
    content_id: str | None = None  # without angle brackets
    inline: bool = False  # referenced from the HTML (``cid:``), not a file of its own


@dataclass
class Bounce:
    permanent: bool  # a hard bounce (5.x.x), not a delay or transient failure (4.x.x)
    recipients: list[str]
    status: str | None  # enhanced status code, e.g. "5.1.1"
    diagnostic: str | None
    original_message_id: str | None


@dataclass
class ForwardedMessage:
    """A message forwarded as an attachment (message/rfc822)."""

    from_address: str
    from_name: str | None
    to: list[str]
    date: datetime | None
    date_header: str | None  # as written, for display
    subject: str
    message_id: str | None
    text: str
    html: str | None


@dataclass
class ParsedMail:
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    subject: str
    topic: str  # subject without Re:/AW:/Fwd:/WG: … prefixes (list tags kept)
    from_address: str
    from_name: str | None
    to: list[str]
    cc: list[str]
    date: datetime | None
    text: str  # the new part only
    html: str | None  # HTML of the new part, NOT sanitised
    quoted_text: str | None  # what was split off text (signature, quoted history)
    full_text: str  # the whole plain text
    attachments: list[Attachment] = field(default_factory=list)
    auto_reply: str | None = None  # reason, when the mail was sent by a machine
    bounce: Bounce | None = None
    calendar: str | None = None  # readable summary of a text/calendar part
    forwarded: list[ForwardedMessage] = field(default_factory=list)
    is_forward: bool = False  # the subject says so (Fwd:/WG:/…); then nothing is stripped
    reply_to: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Charsets
# --------------------------------------------------------------------------------------------

# Labels that Python does not know, or knows as a narrower charset than mail clients mean.
# ASCII and Latin-1 labels decode as windows-1252, as browsers do: the extra characters
# (euro sign, German quotes, dashes) are what Outlook actually sends under those labels,
# and the bytes 0x80-0x9f are never C1 controls in real text.
_CHARSET_ALIASES = {
    "us-ascii": "cp1252", "ascii": "cp1252", "ansi_x3.4-1968": "cp1252", "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252", "iso_8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "cp819": "cp1252", "ibm819": "cp1252", "iso-ir-100": "cp1252",
    "windows-1252": "cp1252", "x-cp1252": "cp1252", "iso-8859-9": "cp1254",
    "unicode-1-1-utf-7": "utf-7", "x-unicode-2-0-utf-7": "utf-7", "utf7": "utf-7",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949", "x-windows-949": "cp949",
    "iso-8859-8-i": "iso-8859-8", "iso-8859-8-e": "iso-8859-8", "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6", "x-mac-cyrillic": "mac-cyrillic", "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman", "x-mac-greek": "mac-greek", "x-mac-turkish": "mac-turkish",
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "euc-cn": "gb18030", "big5": "big5hkscs", "x-big5": "big5hkscs", "shift_jis": "cp932",
    "shift-jis": "cp932", "x-sjis": "cp932", "sjis": "cp932", "windows-31j": "cp932",
    "x-euc-jp": "euc-jp", "iso-2022-jp": "iso2022_jp_ext", "utf8": "utf-8",
}
# Labels that say "we do not know" — treated exactly like a missing charset.
_UNKNOWN_CHARSETS = {
    "unknown-8bit", "x-unknown", "unknown", "x-user-defined", "default", "none", "charset",
    "8bit", "binary", "",
}
# Python codecs that are not character sets and must never be applied to mail.
_NOT_CHARSETS = {
    "unicode-escape", "unicode_escape", "raw-unicode-escape", "raw_unicode_escape", "idna",
    "punycode", "undefined", "mbcs", "oem",
}
# Multi-byte charsets where a few bad bytes should not throw away the whole declaration.
_LENIENT = ("utf-16", "utf-32", "cp932", "euc", "iso2022", "gb18030", "big5", "cp949", "utf-7",
            "hz", "johab", "shift_jis")

# windows-1252 leaves five bytes undefined; mapping them to Latin-1 makes it total.
_CP1252_TABLE = {b: bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(0x80, 0xA0)}
_LATIN1_TO_CP1252 = str.maketrans({chr(b): ch for b, ch in _CP1252_TABLE.items()})


def _codec_for(label: str | None) -> str | None:
    if not label:
        return None
    name = label.strip().strip("\"'").lower()
    if name.startswith("charset="):  # seen in the wild: charset=charset=us-ascii
        name = name[len("charset="):]
    if name in _UNKNOWN_CHARSETS:
        return None
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_CHARSETS:
        return None
    # Only text encodings (not base64_codec, zlib_codec, rot13 …).
    if getattr(info, "_is_text_encoding", True) is False:
        return None
    return info.name


def _decode_cp1252(data: bytes) -> str:
    return data.decode("latin-1").translate(_LATIN1_TO_CP1252)


def decode_text(data: bytes, charset: str | None) -> str:
    """Decode mail bytes: the declared charset if it fits, else UTF-8, else windows-1252.

    Never raises. A correct declaration always wins; a wrong one (UTF-8 declared, cp1252
    bytes sent) or a missing/unknown one falls back without producing mojibake for the
    usual German umlauts, because windows-1252 is tried only after strict UTF-8 failed.
    Bytes that are valid UTF-8 are read as UTF-8 even under a single-byte label (koi8-r,
    x-mac-cyrillic, windows-1252 …): mislabelled UTF-8 is common, while 8-bit text that
    happens to be valid UTF-8 is not.
    """
    codec = _codec_for(charset)
    if codec and not codec.startswith("utf") and not codec.startswith(_LENIENT) \
            and not data.isascii():
        # A single-byte label on bytes that are valid UTF-8 is a wrong label: real 8-bit
        # text (German umlauts next to ASCII letters) is practically never valid UTF-8.
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode("utf-8")
    if codec:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            pass
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec and codec.startswith(_LENIENT):
        with contextlib.suppress(UnicodeDecodeError, LookupError, ValueError):
            return data.decode(codec, "replace")
    return _decode_cp1252(data)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _fix_surrogates(text: str, hint: str | None = None) -> str:
    """Undo the email package's surrogateescape of raw 8-bit header bytes.

    UTF-8 first (RFC 6532 allows it in headers), then `hint` (the charset the sender
    declared for its text), then windows-1252.
    """
    if not _SURROGATES.search(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates: not from bytes, just drop them
        return text.encode("utf-8", "replace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return decode_text(raw, hint)


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# RFC 2047 encoded words; adjacent ones are decoded together, because clients split
# multi-byte characters (and ISO-2022-JP escape sequences) across words.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ENCODED_RUN = re.compile(r"(?:=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=[ \t\r\n]*)+")


def _word_bytes(match: re.Match[str]) -> bytes:
    import base64

    data = match.group(3)
    if match.group(2).lower() == "b":
        try:
            return base64.b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError):
            return data.encode("ascii", "replace")
    import quopri

    return quopri.decodestring(data.replace("_", " ").encode("ascii", "replace"))


def _decode_rfc2047(text: str) -> str:
    """Our own RFC 2047 decoder, for the headers the email package gets wrong.

    Unlike the email package it knows the charset aliases of `decode_text` (iso-8859-8-i,
    ks_c_5601-1987, unknown-8bit …) and decodes adjacent words of one charset as one run.
    """
    def run(match: re.Match[str]) -> str:
        words = list(_ENCODED_WORD.finditer(match.group(0)))
        out: list[str] = []
        charset: str | None = None
        chunk = b""
        for word in words:
            label = word.group(1).split("*", 1)[0]  # RFC 2231 language suffix
            if charset is not None and label.lower() != charset.lower():
                out.append(decode_text(chunk, charset))
                chunk = b""
            charset = label
            chunk += _word_bytes(word)
        if charset is not None:
            out.append(decode_text(chunk, charset))
        trailing = match.group(0)[len(match.group(0).rstrip()):]
        return "".join(out) + (" " if trailing else "")

    return _ENCODED_RUN.sub(run, text)


def _clean_header_text(text: str, hint: str | None = None) -> str:
    text = _fix_surrogates(text, hint)
    text = re.sub(r"\r?\n[ \t]*", " ", text)  # unfold
    # C1 controls are windows-1252 read as Latin-1 (the email package decodes an
    # "=?iso-8859-1?Q?=96?=" from Outlook strictly): the same rule as for bodies.
    text = text.translate(_LATIN1_TO_CP1252)
    return _CONTROL.sub("", text).strip()


def _raw_values(msg: Message, name: str) -> list[str]:
    lname = name.lower()
    values = []
    for key, value in msg.raw_items():
        if key.lower() == lname:
            values.append(value if isinstance(value, str) else str(value))
    return values


def _charset_hint(msg: Message) -> str | None:
    """The first charset the message declares for a text part (for raw 8-bit headers)."""
    parts: list[Message] = [msg]
    for _ in range(50):
        if not parts:
            break
        part = parts.pop(0)
        payload = getattr(part, "_payload", None)
        if not isinstance(payload, str) or not payload.isascii():
            # get_payload() copies a text payload to look for raw 8-bit bytes: only called
            # where there can be some (or where it is a list of parts anyway).
            payload = part.get_payload()
        if isinstance(payload, list):
            parts.extend(p for p in payload if isinstance(p, Message))
            continue
        charset = _param(part, "charset")
        if charset and _codec_for(charset):
            return charset
    return None


def _decode_raw_header(msg: Message, raw: str) -> str:
    hint = _charset_hint(msg) if _SURROGATES.search(raw) else None
    return _clean_header_text(_decode_rfc2047(_fix_surrogates(raw, hint)))


_MAX_HEADER = 16_384  # the email package needs seconds for a 200 kB encoded-word subject


# What `_header`, `_addresses` and `_content_type` found, by (function, message, name),
# while parse_message runs: the email package parses a header anew on every access, and one
# mail needs its From, Subject and Content-Type many times. (The messages are parse_message's
# own and never change; keys hold them, so no object id is reused meanwhile.)
_MEMO: contextvars.ContextVar[dict[tuple[Any, ...], Any] | None] = contextvars.ContextVar(
    "bridge_email_parse_memo", default=None)


def _header(msg: Message, name: str) -> str | None:
    """The first `name` header as clean text, or None; never raises."""
    memo = _MEMO.get()
    if memo is None:
        return _read_header(msg, name)
    key = ("header", msg, name)
    if key not in memo:
        memo[key] = _read_header(msg, name)
    value: str | None = memo[key]
    return value


def _get(msg: Message, name: str) -> Any:
    """``msg.get(name)``: the parsed header object (the same one each time while
    parse_message runs), or None."""
    memo = _MEMO.get()
    if memo is None:
        return msg.get(name)
    key = ("get", msg, name)
    if key not in memo:
        memo[key] = msg.get(name)
    return memo[key]


def _transfer_encoding(part: Message) -> str:
    """``str(part.get("content-transfer-encoding", "")).lower()``, get_payload's test."""
    value = _get(part, "content-transfer-encoding")
    return "" if value is None else str(value).lower()


def _read_header(msg: Message, name: str) -> str | None:
    raw = _raw_values(msg, name)
    if not raw:
        return None
    if len(raw[0]) > _MAX_HEADER:
        return _decode_raw_header(msg, raw[0][:_MAX_HEADER])
    if _SURROGATES.search(raw[0]):
        return _decode_raw_header(msg, raw[0])  # raw 8-bit bytes in the header
    try:
        value = str(_get(msg, name))
    except Exception:
        return _decode_raw_header(msg, raw[0])
    if "\ufffd" in value or "=?" in value:
        # An encoded word the email package could not decode (unknown charset, split
        # multi-byte sequence): try our decoder on the raw text.
        return _decode_raw_header(msg, raw[0])
    return _clean_header_text(value)


def _all_headers(msg: Message, name: str) -> list[str]:
    return [_decode_raw_header(msg, v) for v in _raw_values(msg, name)]


def _addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address header; never raises. (Shared: do not
    change the list.)"""
    memo = _MEMO.get()
    if memo is None:
        return _read_addresses(msg, name)
    key = ("addresses", msg, name)
    if key not in memo:
        memo[key] = _read_addresses(msg, name)
    value: list[tuple[str, str]] = memo[key]
    return value


def _read_addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    raw = _raw_values(msg, name)
    if not raw:
        return []
    pairs: list[tuple[str, str]] = []
    if not any(_SURROGATES.search(v) for v in raw):
        try:
            for header in msg.get_all(name) or []:
                for addr in getattr(header, "addresses", ()):
                    pairs.append((addr.display_name or "", addr.addr_spec or ""))
        except Exception:
            pairs = []
    angled = {a.lower() for v in raw for a in re.findall(r"<([^<>\s@]+@[^<>\s]+)>", v)}
    if angled - {a.lower() for _, a in pairs}:
        pairs = []  # 'a@b <a@b.example>': the new parser took the name for the address
    if not pairs or any("\ufffd" in d for d, _ in pairs):
        # Raw 8-bit names, or syntax the new parser gives up on: the lenient old parser.
        with contextlib.suppress(Exception):
            pairs = [(_decode_raw_header(msg, d), a)
                     for d, a in getaddresses([_fix_surrogates(v, _charset_hint(msg))
                                               for v in raw])]
    cleaned = []
    for display, addr in pairs:
        display = _clean_header_text(display)
        addr = _clean_header_text(addr).strip("<>").strip()
        if display or addr:
            cleaned.append((display, addr))
    return cleaned


_MSGID = re.compile(r"<([^<>\s]+)>")


def _msgid(value: str | None) -> str | None:
    if not value:
        return None
    match = _MSGID.search(value)
    if match:
        return match.group(1)
    token = value.strip().strip("<>").split()
    return token[0] if token else None


def _msgid_list(value: str | None) -> list[str]:
    if not value:
        return []
    ids = _MSGID.findall(value)
    if not ids:
        ids = [token.strip("<>,") for token in value.split() if "@" in token]
    seen: dict[str, None] = {}
    for mid in ids:
        if mid:
            seen.setdefault(mid, None)
    return list(seen)


def _date(msg: Message) -> tuple[datetime | None, str | None]:
    raw = _header(msg, "date")
    if not raw:
        return None, None
    value: datetime | None = None
    with contextlib.suppress(Exception):
        header = _get(msg, "date")
        value = getattr(header, "datetime", None)
    if value is None:
        with contextlib.suppress(Exception):
            value = parsedate_to_datetime(raw)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # "-0000": UTC, origin unknown
    return value, raw


# Reply and forward prefixes of the mail clients in use around us. "WG" is German Outlook's
# forward, "AW" its reply; "R"/"RIF" Italian, "SV"/"VS" Nordic, "TR" French forward …
_REPLY_WORDS = ("re", "aw", "antw", "antwort", "sv", "vs", "odp", "ynt", "res", "r", "rif",
                "réf", "ref", "atb", "vá", "回复", "回覆", "答复", "رد", "השב", "תגובה")
_FORWARD_WORDS = ("fwd", "fw", "wg", "tr", "rv", "enc", "pd", "vb", "vl", "doorst", "i",
                  "továbbítás", "İlt", "ilt", "转发", "轉寄", "轉發", "הועבר")
_PREFIX = re.compile(
    r"^\s*(?:(?P<word>" + "|".join(sorted(map(re.escape, _REPLY_WORDS + _FORWARD_WORDS),
                                          key=len, reverse=True))
    + r")\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:\uff1a]|(?P<tag>\[[^\[\]\n]{1,60}\]))\s*",
    re.IGNORECASE,
)


def strip_subject_prefixes(subject: str) -> tuple[str, bool]:
    """(topic, is_forward): `subject` without any stack of Re:/AW:/Fwd:/WG: prefixes.

    List tags like "[Abt-3]" are kept (once, in front): they name the list or team.
    `is_forward` says whether the outermost prefix is a forward prefix.
    """
    rest = subject
    tags: list[str] = []
    is_forward: bool | None = None
    for _ in range(50):
        match = _PREFIX.match(rest)
        if not match or match.end() == 0:
            break
        if match.group("tag"):
            tag = match.group("tag")
            if tag.lower() not in (t.lower() for t in tags):
                tags.append(tag)
        elif is_forward is None:
            is_forward = match.group("word").lower() in {w.lower() for w in _FORWARD_WORDS}
        rest = rest[match.end():]
    topic = " ".join([*tags, rest.strip()]).strip()
    return topic, bool(is_forward)


# --------------------------------------------------------------------------------------------
# Automatic replies and bounces
# --------------------------------------------------------------------------------------------

_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|automatische antwort|auto(?:matic)?[ -]?reply|autoreply|"
    r"out of (?:the )?office|abwesenheitsnotiz|abwesenheit|r[ée]ponse automatique|"
    r"risposta automatica|respuesta autom[áa]tica|automatisch antwoord|autosvar|"
    r"automatyczna odpowied[źz]|automaattinen vastaus|automatick[áa] odpov[ěe]ď|"
    r"autorespon[sd]e?)\s*[:\uff1a]",
    re.IGNORECASE,
)
_DAEMON_LOCALPART = re.compile(r"^(?:mailer[-_]?daemon|postmaster|mail[-_]?daemon)$", re.I)
_DAEMON_NAME = re.compile(r"mail delivery (?:system|subsystem|service)|mailer[- ]daemon|"
                          r"^postmaster$|mail administrator", re.I)


def _is_null_return_path(msg: Message) -> bool:
    return any(value.strip() in ("<>", "", "< >") for value in _raw_values(msg, "return-path"))


def _is_daemon(name: str | None, address: str) -> bool:
    local = address.rsplit("@", 1)[0] if address else ""
    return bool(_DAEMON_LOCALPART.match(local) or (name and _DAEMON_NAME.search(name)))


def detect_auto_reply(msg: Message) -> str | None:
    """Why `msg` was sent by a machine (RFC 3834 and practice), or None for a person.

    X-Auto-Response-Suppress is deliberately ignored: Outlook sets it on ordinary mail to
    ask *others* not to auto-reply. Precedence: list is a mailing list post, not automatic.
    """
    try:
        return _detect_auto_reply(msg)
    except Exception:  # pragma: no cover - every access below is guarded already
        log.exception("auto-reply detection failed")
        return None


def _detect_auto_reply(msg: Message) -> str | None:
    auto_submitted = _header(msg, "auto-submitted")
    if auto_submitted and auto_submitted.split(";")[0].strip().lower() not in ("no", ""):
        return f"Auto-Submitted: {auto_submitted}"
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from",
                 "x-mail-autoreply", "x-autogenerated"):
        value = _header(msg, name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return f"{name}: {value}".strip()
    apple = _header(msg, "x-apple-action")
    if apple and apple.strip().upper() == "VACATION":
        return "X-Apple-Action: VACATION"
    precedence = (_header(msg, "precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "auto_reply", "auto-reply"):
        return f"Precedence: {precedence}"
    if _is_null_return_path(msg):
        return "null return path (Return-Path: <>)"
    with contextlib.suppress(Exception):
        if msg.get_content_type() == "multipart/report":
            report_type = msg.get_param("report-type") or "report"
            return f"multipart/report ({report_type})"
    subject = _header(msg, "subject") or ""
    match = _AUTO_SUBJECT.match(subject)
    if match:
        return f"subject: {match.group(0).strip()}"
    senders = _addresses(msg, "from")
    if senders and _is_daemon(*senders[0]) and _BOUNCE_SUBJECT.search(subject):
        return f"delivery report from {senders[0][1] or senders[0][0]}"
    if _header(msg, "x-failed-recipients"):
        return "X-Failed-Recipients"
    return None


_BOUNCE_SUBJECT = re.compile(
    r"undeliver|unzustellbar|nicht zustellbar|delivery status notification|delivery fail|"
    r"delivery notification|mail delivery failed|returned mail|failure notice|"
    r"undelivered mail|non remis|non recapitabile|delayed mail|message delayed|"
    r"could not send message|mail system error|delivery error|delivery failure|"
    r"zustellung fehlgeschlagen|fehler bei der zustellung|returned to sender|"
    r"nondeliverable|not delivered|delivery problem|rückläufer|delivery delayed",
    re.IGNORECASE,
)
_DELAY_WORDS = re.compile(r"delay|verzögert|will be retried|still being retried|"
                          r"warning|temporar|not yet been delivered", re.IGNORECASE)
_STATUS_CODE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_REPLY = re.compile(r"(?<!\d)[45]\d\d[ -]")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_RETURNED_MARKER = re.compile(
    r"^.*(?:original message|copy of the message|message follows|below this line|"
    r"returned message|headers of the original|message header follows|"
    r"undelivered message|ursprüngliche nachricht|kopie der nachricht).*$",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass
class _Dsn:
    recipients: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)


def _strip_type(value: str) -> str:
    # "rfc822; user@example.org" -> "user@example.org"; "smtp; 550 …" -> "550 …"
    return value.split(";", 1)[1].strip() if ";" in value else value.strip()


def _read_dsn_fields(fields: list[tuple[str, str]], dsn: _Dsn) -> None:
    for key, value in fields:
        key = key.strip().lower()
        value = _clean_header_text(str(value))
        if key == "final-recipient" or (key == "original-recipient" and not dsn.recipients):
            address = _strip_type(value).strip("<>")
            if address and address not in dsn.recipients:
                dsn.recipients.append(address)
        elif key == "action":
            dsn.actions.append(value.lower().split()[0] if value.split() else "")
        elif key == "status":
            match = _STATUS_CODE.search(value)
            if match:
                dsn.statuses.append(match.group(0))
        elif key == "diagnostic-code":
            dsn.diagnostics.append(_strip_type(value))


def _parse_delivery_status(part: Message, dsn: _Dsn) -> None:
    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                with contextlib.suppress(Exception):
                    _read_dsn_fields([(k, str(v)) for k, v in block.raw_items()], dsn)
        if dsn.actions or dsn.recipients:
            return
    # Unparsed (odd encoding, missing blank lines): read "Field: value" lines ourselves.
    raw = _part_bytes(part)
    text = decode_text(raw, None) if raw else (payload if isinstance(payload, str) else "")
    text = re.sub(r"\r?\n[ \t]+", " ", text)
    fields = re.findall(r"^([A-Za-z-]+)[ \t]*:[ \t]*(.*)$", text, re.MULTILINE)
    _read_dsn_fields(fields, dsn)


# --------------------------------------------------------------------------------------------
# format=flowed (RFC 3676)
# --------------------------------------------------------------------------------------------

def unflow(text: str, delsp: bool = False) -> str:
    """Join the soft line breaks of a format=flowed body (RFC 3676, including DelSp=yes)."""
    out: list[str] = []
    current: str | None = None
    current_depth = 0

    def emit(depth: int, line: str) -> None:
        out.append((">" * depth + " " + line) if depth else line)

    for raw_line in text.replace("\r\n", "\n").split("\n"):
        depth = len(raw_line) - len(raw_line.lstrip(">"))
        content = raw_line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        is_signature = content == "-- "
        flowed = content.endswith(" ") and not is_signature
        if flowed and delsp:
            content = content[:-1]
        if current is not None and depth != current_depth:
            emit(current_depth, current)  # a flowed line must not join across quote depths
            current = None
        current = content if current is None else current + content
        current_depth = depth
        if not flowed:
            emit(current_depth, current)
            current = None
    if current is not None:
        emit(current_depth, current)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Plain-text reply splitting
# --------------------------------------------------------------------------------------------

@dataclass
class ReplySplit:
    text: str  # the new part
    signature: str | None  # the sender's signature below it
    quote: str | None  # the quoted history (attribution line included)
    bottom_posted: bool = False  # the quote stood above the new part

    @property
    def quoted(self) -> str | None:
        """Everything split off `text`, as one string."""
        parts = [p for p in (self.signature, self.quote) if p]
        return "\n\n".join(parts) if parts else None


# Languages whose quote headers we look for (mail-parser-reply's patterns). Polish is left out
# on purpose: its header pattern accepts a single "Do: …" line, and "Do:" is the German
# abbreviation for Thursday in every second appointment list.
_HEADER_LANGUAGES = ("de", "en", "fr", "it", "es", "nl", "da", "sv", "cs", "ja", "ko", "zh")
# Sign-off words only for languages whose lists cannot hit ordinary German or English lines
# (the Danish list contains "Tak", which starts "Take …").
_SIGNATURE_LANGUAGES = ("de", "en", "fr", "it", "es", "nl")
_MAX_LINE = 400  # longer lines cannot be attribution lines; keeps the regexes linear
_MAX_SPLIT_CHARS = 200_000
_MAX_SIGNATURE_LINES = 20  # an administration's signature block with address and disclaimer

_FROM_KEY = re.compile(
    r"^(?:>\s?)*[*\s]*(?:from|von|de|da|fra|från|van|od|от|發件人|发件人|보낸\s?사람|sender|"
    r"absender)[*\s]*[:\uff1a]", re.IGNORECASE)
_KEY_LINE = re.compile(r"^(?:>\s?)*[*\s]*[^\W\d_][\w .'-]{0,25}[*\s]*[:\uff1a]", re.IGNORECASE)
_SEPARATOR = re.compile(
    r"^(?:>\s?)*[-=_*\s]{2,}\s*(?:original message|ursprüngliche nachricht|originalnachricht|"
    r"original-nachricht|forwarded message|weitergeleitete nachricht|message d'origine|"
    r"message transféré|messaggio originale|messaggio inoltrato|mensaje original|"
    r"mensaje reenviado|oorspronkelijk bericht|doorgestuurd bericht|oprindelig meddelelse|"
    r"ursprungligt meddelande|alkuperäinen viesti|wiadomość oryginalna|původní zpráva|"
    r"исходное сообщение|пересылаемое сообщение)\s*[-=_*\s]{2,}$"
    r"|^(?:>\s?)*(?:begin forwarded message|anfang der weitergeleiteten nachricht|"
    r"début du message réexpédié|inizio messaggio inoltrato)\s*:$",
    re.IGNORECASE,
)
_UNDERSCORE_LINE = re.compile(r"^_{20,}$")
_WROTE_WORD = re.compile(
    r"wrote|schrieb|a écrit|ha scritto|escribió|escreveu|schreef|skrev|napisał|написал|"
    r"пише|kirjoitti|napsal|geschreven|写道|寫道|작성", re.IGNORECASE)


class _Patterns:
    """mail-parser-reply's regexes, compiled once and per language (so one language's loose
    pattern cannot hide another's match at the same position).

    Searching them as they are is slow: every quote-header pattern starts with an optional
    group, so the regex engine tries each of them at every position of the text (about 1 ms
    per kB for all of them), and the signature regex ends in ``(.|\\s)*``, which walks the
    rest of the text a character at a time. So next to each pattern this keeps a *probe*: a
    cheap regex that must match at the start of the line where a match of the pattern can
    start. One pass over the line starts finds the lines any probe accepts, and the patterns
    themselves only run there. The probes are taken from the library's own pattern text
    (`_header_probe`, `_signature_head`); a pattern of a shape they do not understand is
    searched the slow way, so the result is the same either way.
    """

    def __init__(self) -> None:
        from mailparser_reply import EmailMessage as ReplyMessage

        flags = re.MULTILINE | re.IGNORECASE
        self.headers: list[re.Pattern[str]] = []
        # Per header pattern: a probe for the line a match starts on (None: search the whole
        # text), and a guard, a regex that finds every text where the probe is not enough.
        self.header_probes: list[re.Pattern[str] | None] = []
        self.header_guards: list[re.Pattern[str] | None] = []
        line_probes: list[str] = []  # tried on every line
        char_probes: dict[str, list[str]] = {}  # tried on the lines that hold the character
        for lang in _HEADER_LANGUAGES:
            spec = MAIL_LANGUAGES.get(lang, {})
            for key in ("wrote_header", "from_header"):
                pattern = spec.get(key)
                if isinstance(pattern, str) and pattern:
                    self.headers.append(re.compile(pattern, flags))
                    probe = _header_probe(pattern)
                    self.header_probes.append(re.compile(probe[0], flags) if probe else None)
                    self.header_guards.append(
                        re.compile(probe[1], flags) if probe and probe[1] else None)
                    if probe:
                        char = _probe_char(probe[0])
                        if char:
                            char_probes.setdefault(char, []).append(probe[0])
                        else:
                            line_probes.append(probe[0])
        alternatives = _any_of(line_probes)
        # A line start where some probe matches: the first line, and each line after a "\n".
        self.header_first_line = re.compile(alternatives, flags)
        self.header_lines = re.compile(rf"\n(?=(?:{alternatives}))", flags)
        # Probes that match only on a line with a certain character ("From:" needs a ":"):
        # lines without one (most lines of prose) need not be tried.
        self.header_char_probes = [
            (char, re.compile(_any_of(probes), flags))
            for char, probes in char_probes.items()]

        # keep_hyphen_lists: a "- item" list is content, not the "-Name" signature style.
        self.signature = ReplyMessage(text="", languages=list(_SIGNATURE_LANGUAGES),
                                      keep_hyphen_lists=True).SIGNATURE_REGEX
        # "Sent from my iPhone" lines of every language, in the library's own form.
        sent_from = "|".join(
            str(MAIL_LANGUAGES[lang]["sent_from"]) for lang in _HEADER_LANGUAGES
            if MAIL_LANGUAGES.get(lang, {}).get("sent_from"))
        self.sent_from = re.compile(
            rf"^(?:> ?)*(?:{sent_from}) ?(?:(?:[\w.<>:// ]+)|(?:\w+ ){{1,3}})$", flags)
        # The signature regex without its tail (a match starts where the whole one does),
        # and probes for the lines where it can match; None: search with the whole regex.
        # When nothing in them can match a line break, "Sent from" lines are probed for in
        # the same pass (`sent_from_probed`).
        self.signature_head: re.Pattern[str] | None = None
        self.signature_first_line: re.Pattern[str] | None = None
        self.signature_lines: re.Pattern[str] | None = None
        self.sent_from_probed = False
        found = _signature_head(self.signature.pattern)
        if found:
            head, signature_probes = found
            if _stays_on_line(sent_from):
                signature_probes.append(rf"(?:> ?)*(?:{sent_from})")
                self.sent_from_probed = True
            self.signature_head = re.compile(head, self.signature.flags)
            alternatives = _any_of(signature_probes)
            self.signature_first_line = re.compile(alternatives, self.signature.flags)
            self.signature_lines = re.compile(rf"\n(?=(?:{alternatives}))",
                                              self.signature.flags)


def _any_of(regexes: list[str]) -> str:
    """One regex (for re.IGNORECASE) that matches where any of these does, built so that the
    regex engine tries it fast at each line start: the quote marks they all start with are
    taken out in front, alternatives inside them are spread out into one list, and a letter
    at the start of an alternative is written as a case-sensitive class (the engine skips an
    alternative by its first character only when that is a plain literal or class)."""
    if not regexes:
        return "(?!)"
    prefix = _QUOTE_PREFIX if all(r.startswith(_QUOTE_PREFIX) for r in regexes) else ""
    by_letter: dict[str, list[str]] = {}  # alternatives by their first letter's class
    others: list[str] = []
    for regex in regexes:
        for alternative in _spread(regex.removeprefix(prefix)):
            letter, rest = _first_letter(alternative)
            if letter:
                by_letter.setdefault(letter, []).append(rest)
            else:
                others.append(f"(?:{alternative})")
    branches = [f"{letter}(?:{'|'.join(dict.fromkeys(rests))})"
                for letter, rests in by_letter.items()]
    return prefix + "(?:" + "|".join(branches + list(dict.fromkeys(others))) + ")"


def _spread(src: str, depth: int = 0) -> list[str]:
    """`src` as a list of alternatives: (?:a|b)c becomes ac, bc, and (?:a)?b becomes ab, b
    (a leading group only). The same matches, as far as where one exists goes."""
    atoms = _regex_atoms(src)
    if atoms is None:
        alternatives = _regex_alternatives(src)
        if depth > 3 or not alternatives or len(alternatives) < 2:
            return [src]
        return [x for alt in alternatives for x in _spread(alt, depth + 1)]
    if depth > 3 or not atoms or atoms[0][1] not in ("", "?", "??") \
            or not atoms[0][0].startswith("(?:"):
        return [src]
    rest = "".join(a + q for a, q in atoms[1:])
    alternatives = _regex_alternatives(atoms[0][0][3:-1])
    if not alternatives or len(alternatives) > 64:
        return [src]
    if atoms[0][1]:  # (?:a)?b: ab, b
        alternatives.append("")
    return [x for alt in alternatives for x in _spread(alt + rest, depth + 1)]


# The characters that an ASCII letter matches under re.IGNORECASE are ASCII letters and
# these four (the re module's documentation names them).
_CASE_CANDIDATES = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\u0130\u0131\u017f\u212a"


def _first_letter(src: str) -> tuple[str | None, str]:
    """(case-sensitive class for the letter `src` starts with, the rest), or (None, src)."""
    atoms = _regex_atoms(src)
    if not atoms or atoms[0][1] or not re.fullmatch(r"[A-Za-z]|\[[A-Za-z]+\]", atoms[0][0]):
        return None, src
    chars = "".join(c for c in _CASE_CANDIDATES if re.fullmatch(atoms[0][0], c, re.IGNORECASE))
    return f"(?-i:[{chars}])", "".join(a + q for a, q in atoms[1:])


def _stays_on_line(src: str) -> bool:
    """Whether a regex can neither match a line break nor look across one."""
    return not any(token in src for token in
                   ("\n", "\\s", "\\W", "\\D", "\\n", "\\x0", "\\A", "\\Z", "[^", "(?s",
                    "(?<"))


# Reading mail-parser-reply's regex source, just enough to take the probes from it. Anything
# unexpected makes these return None, and the pattern is then searched as it is.

def _class_end(src: str, start: int) -> int:
    """Index just past the character class that opens at ``src[start]``, or -1."""
    i = start + 1
    if src.startswith("^", i):
        i += 1
    if src.startswith("]", i):
        i += 1  # a "]" right at the start is a literal
    while i < len(src):
        if src[i] == "\\":
            i += 2
        elif src[i] == "]":
            return i + 1
        else:
            i += 1
    return -1


def _group_end(src: str, start: int) -> int:
    """Index just past the group that opens at ``src[start]``, or -1."""
    depth = 0
    i = start
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i = _class_end(src, i)
            if i < 0:
                return -1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


_QUANTIFIER = re.compile(r"(?:[*+?]|\{\d*,?\d*\})[?+]?")


def _regex_atoms(src: str) -> list[tuple[str, str]] | None:
    """The top-level (atom, quantifier) sequence of a regex; None if it has a top-level "|"
    or syntax this reader does not know (backreferences, named characters)."""
    atoms: list[tuple[str, str]] = []
    i = 0
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            nxt = src[i + 1:i + 2]
            if not nxt or nxt.isdigit() or nxt in "Ngk":
                return None
            end = i + {"x": 4, "u": 6, "U": 10}.get(nxt, 2)
        elif ch == "[":
            end = _class_end(src, i)
        elif ch == "(":
            end = _group_end(src, i)
        elif ch in "|)*+?{":
            return None
        else:
            end = i + 1
        if end < 0 or end > len(src):
            return None
        quantifier = _QUANTIFIER.match(src, end)
        stop = quantifier.end() if quantifier else end
        atoms.append((src[i:end], src[end:stop]))
        i = stop
    return atoms


def _regex_alternatives(src: str) -> list[str] | None:
    """A regex split at its top-level "|"."""
    parts: list[str] = []
    depth = last = i = 0
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i = _class_end(src, i)
            if i < 0:
                return None
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(src[last:i])
            last = i + 1
        i += 1
    parts.append(src[last:])
    return parts


def _min_repeat(quantifier: str) -> int:
    if quantifier in ("", "+", "+?", "++"):
        return 1
    match = re.match(r"\{(\d+)", quantifier)
    return int(match.group(1)) if match else 0


_QUOTE_PREFIX = r"(?:> ?)*"
_BLOCK_LINE_START = r"(?:^|\n|\n(?:> ?)*)"


def _header_probe(src: str) -> tuple[str, str | None] | None:
    """(probe, guard) for a quote-header pattern of mail-parser-reply, or None.

    The probe matches at the start of the line where a match of the pattern begins (the
    pattern may begin at that line's start or at the line break just before it): it is the
    pattern's first few elements, and a regex that matches implies that every prefix of it
    matches. The guard, if any, finds texts where a match may begin elsewhere.
    """
    if src.startswith("^(?!"):
        # "On … wrote:" lines: ^(?!…)((?:> ?)*On\s…)$ — a line that starts with the keyword.
        lookahead_end = _group_end(src, 1)
        if lookahead_end < 0 or not src.startswith("(", lookahead_end) \
                or src.startswith("(?", lookahead_end):
            return None
        body_end = _group_end(src, lookahead_end)
        atoms = _regex_atoms(src[lookahead_end + 1:body_end - 1]) if body_end > 0 else None
        if not atoms or len(atoms) < 2 or atoms[0] != (_QUOTE_PREFIX[:-1], "*"):
            return None
        return "".join(a + q for a, q in atoms[:4]), None
    if not src.startswith("(") or src.startswith("(?") or _group_end(src, 0) != len(src):
        return None
    # "From: … / Sent: …" blocks: ((?:(?:^|\n|\n(?:> ?)*)[* ]*(?:From|Sent|…):…){2,}…)
    atoms = _regex_atoms(src[1:-1])
    if not atoms:
        return None
    guard = None
    if _min_repeat(atoms[0][1]) == 0:
        # An optional lead-in (Danish: "-----Oprindelig meddelelse-----"). Where it is
        # missing from the text, the match starts with the block; elsewhere search it all.
        head, quantifier = atoms.pop(0)
        inner = _regex_atoms(head[3:-1]) if head.startswith("(?:") and quantifier == "?" \
            else None
        while inner and _min_repeat(inner[0][1]) == 0:
            inner.pop(0)
        if not inner or not atoms:
            return None
        guard = "".join(a + q for a, q in inner)
    block, quantifier = atoms[0]
    if not block.startswith("(?:") or _min_repeat(quantifier) < 1:
        return None
    line = _regex_atoms(block[3:-1])
    if not line or len(line) < 2 or line[0] != (_BLOCK_LINE_START, ""):
        return None
    return _QUOTE_PREFIX + "".join(a + q for a, q in line[1:4]), guard


def _probe_char(probe: str) -> str | None:
    """A character that every line where `probe` matches (at its start) contains: a
    punctuation character the probe must match before anything that could cross a line
    break."""
    for atom, quantifier in _regex_atoms(probe) or []:
        if len(atom) == 1 and not quantifier and not atom.isalnum() and not atom.isspace() \
                and atom not in ".^$":
            return atom
        if not _stays_on_line(atom):
            return None
    return None


# The signature regex's alternatives each start at a line start, after blank space before
# one, or (the long ruler) on the line breaks before it.
_SIGNATURE_RULER = r"(\n{2,} ?[_-]{32,})"
_RULER_LINE = re.compile(r"\n\n(?= ?[_-]{32})")


def _signature_head(src: str) -> tuple[str, list[str]] | None:
    """mail-parser-reply's signature regex without the ``(.|\\s)*`` tail that takes in the
    rest of the text (it matches anything, so a match starts where the head's does), and
    probes: what its alternatives other than the long ruler must match at a line start."""
    if not src.startswith("(") or _group_end(src, 0) != len(src):
        return None
    atoms = _regex_atoms(src[1:-1])
    if not atoms or len(atoms) != 2 or atoms[1] != ("(.|\\s)", "*") or atoms[0][1] \
            or not atoms[0][0].startswith("("):
        return None
    head = atoms[0][0]
    probes = []
    for alternative in _regex_alternatives(head[1:-1]) or []:
        if alternative == _SIGNATURE_RULER:
            continue
        anchor = next((a for a in ("\\s*^", "(?<!\\A)^", "^") if alternative.startswith(a)),
                      None)
        rest = _regex_atoms(alternative[len(anchor):]) if anchor else None
        if not rest:
            return None
        probes.append("".join(a + q for a, q in rest[:2]))
    return (head, probes) if probes else None


_patterns: _Patterns | None = None


def _get_patterns() -> _Patterns:
    global _patterns
    if _patterns is None:
        _patterns = _Patterns()
    return _patterns


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _looks_like_attribution(text: str) -> bool:
    text = text.strip()
    return (text.endswith((":", "\uff1a")) and len(text) <= 2 * _MAX_LINE
            and bool(re.search(r"\d|@", text) or _WROTE_WORD.search(text)))


def _attribution_start(work: list[str], first_quoted: int) -> int:
    """Start of the attribution line(s) ("On … wrote:") right above a quote block."""
    k = first_quoted - 1
    while k >= 0 and not work[k]:
        k -= 1
    if (k >= 0 and first_quoted < len(work) and re.fullmatch(r">\s*[:\uff1a]", work[first_quoted])
            and "@" in work[k]):
        return k  # "... <someone@example.org" / ">:": the address wrapped before its colon
    if k < 0 or not work[k].endswith((":", "\uff1a")):
        return first_quoted
    # The attribution may be wrapped: "… <someone@example.org>" / "wrote:".
    if k >= 1 and work[k - 1] and not _is_quoted(work[k - 1]) and (
            len(work[k]) < 40 or work[k - 1].endswith("<")):
        joined = work[k - 1] + " " + work[k]
        if _looks_like_attribution(joined) and len(work[k - 1]) < 300:
            return k - 1
    return k if _looks_like_attribution(work[k]) else first_quoted


def _probe_lines(norm: str) -> list[int]:
    """Starts of the lines of `norm` where some quote-header pattern's probe matches."""
    patterns = _get_patterns()
    starts = {match.start() + 1 for match in patterns.header_lines.finditer(norm)}
    if patterns.header_first_line.match(norm):
        starts.add(0)
    for char, probe in patterns.header_char_probes:
        at = norm.find(char)
        while at >= 0:
            start = norm.rfind("\n", 0, at) + 1
            if probe.match(norm, start):
                starts.add(start)
            end = norm.find("\n", at)
            at = norm.find(char, end) if end >= 0 else -1
    return sorted(starts)


def _header_matches(index: int, norm: str, lines: list[int]) -> Iterator[re.Match[str]]:
    """The matches that ``headers[index].finditer(norm)`` yields, found by trying the pattern
    only at the line starts in `lines` (and the line breaks just before them) that its
    probe accepts."""
    patterns = _get_patterns()
    pattern = patterns.headers[index]
    probe = patterns.header_probes[index]
    guard = patterns.header_guards[index]
    if probe is None or (guard is not None and guard.search(norm)):
        yield from pattern.finditer(norm)
        return
    positions: set[int] = set()
    for start in lines:
        if probe.match(norm, start):
            positions.update((start - 1, start) if start else (start,))
    pos = 0  # where finditer would search on from
    for candidate in sorted(positions):
        if candidate < pos:
            continue
        match = pattern.match(norm, candidate)
        if match is None:
            continue
        if match.end() == candidate:
            # An empty match (none of the library's patterns has one): finditer's rules for
            # what may follow it are its own, so let it go on from here.
            yield from pattern.finditer(norm, pos)
            return
        yield match
        pos = match.end()


def _header_candidate(work: list[str], norm: str) -> int | None:
    """First line where mail-parser-reply's quote-header patterns match, after our checks."""
    best: int | None = None
    lines = _probe_lines(norm)
    for index in range(len(_get_patterns().headers)):
        for count, match in enumerate(_header_matches(index, norm, lines)):
            if count >= 20:
                break
            start = match.start()
            while start < match.end() and norm[start] in "\n \t":
                start += 1
            line = norm.count("\n", 0, start)
            if best is not None and line >= best:
                break
            block = [ln for ln in match.group(0).split("\n") if ln.strip()]
            key_lines = [ln for ln in block if _KEY_LINE.match(ln)]
            if len(key_lines) >= 2:
                # An Outlook-style header block: it must name a sender, or "Datum:/Betreff:"
                # lines of a form letter would count as a quote. The sender may stand just
                # above the part the pattern matched ("From:" / "Reply-To:" / "Date:" …).
                if not any(_FROM_KEY.match(ln) for ln in key_lines):
                    above = next((j for j in range(line - 1, max(line - 4, -1), -1)
                                  if _FROM_KEY.match(work[j])), None)
                    if above is None:
                        continue
                    line = above
                    if best is not None and line >= best:
                        break
            elif not re.search(r"\d|@", match.group(0)):
                # A one-line "On … wrote:" without date or address is ordinary prose.
                continue
            best = line
            break
    return best


# Both separator patterns need a line that starts with ">", a ruler character or a space,
# or one that ends with ":": found at the line breaks next to them, all lines at once.
_SEPARATOR_HINT = re.compile(r"\n(?:(?=[>\-=_*]|[^\S\n])|(?<=:\n))")


def _separator_candidate(work: list[str], norm: str) -> int | None:
    hinted = {0, len(work) - 1}  # the first and last line have a break on one side only
    number = last = 0
    for match in _SEPARATOR_HINT.finditer(norm):
        number += norm.count("\n", last, match.start())
        last = match.start()
        hinted.update((number, number + 1))
    for i in sorted(hinted):
        line = work[i] if 0 <= i < len(work) else ""
        if not line or not (line[0] in ">-=_*" or line[0].isspace() or line[-1] == ":"):
            continue
        if _SEPARATOR.match(line):
            return i
        if _UNDERSCORE_LINE.match(line):
            # Outlook's line above "From: …"; alone it is just a ruler.
            following = [ln for ln in work[i + 1:i + 4] if ln]
            if following and _FROM_KEY.match(following[0]):
                return i
    return None


_ADDRESS_END = re.compile(r"<[^<>\s@]+@[^<>\s]+>\s*[:\uff1a]$")
_TIME = re.compile(r"\d{1,2}[:.]\d{2}")
_DASHED_ATTRIBUTION = re.compile(r"^[-=]{2,}.*[-=]{2,}$")


def _is_strong_attribution(text: str) -> bool:
    """An attribution line that needs no ``>`` quote below it to be believed.

    Either a "wrote" word of some language with an address and a number ("Le 15 nov. 2021
    à 19:42, John <john@example.org> a écrit :"), or Gmail's wordless form ending in
    "<address>:" with a time (Russian Gmail: "<weekday>, 30 <month> 2025 <year> <at> 15:19,
    John <john@example.com>:").
    """
    if len(text) > 2 * _MAX_LINE:
        return False
    if _DASHED_ATTRIBUTION.match(text):  # Zoho: "---- On … wrote ----"
        return bool(_WROTE_WORD.search(text) and re.search(r"\d", text))
    if not text.endswith((":", "\uff1a")):
        return False
    if _WROTE_WORD.search(text) and "@" in text and re.search(r"\d", text):
        return True
    return bool(_ADDRESS_END.search(text) and _TIME.search(text))


# How a strong attribution ends (with a colon, or dashed): lines that end otherwise, and
# whose next line does too, cannot be one (nor start one that is wrapped).
_ATTRIBUTION_ENDS = (":", "\uff1a", "--", "-=", "=-", "==")
_ATTRIBUTION_END = re.compile(r"\n(?:(?<=[:\uff1a]\n)|(?<=[-=][-=]\n))")  # before a break


def _attribution_candidate(work: list[str], norm: str) -> int | None:
    ends: set[int] = set()  # numbers of the lines that end like an attribution
    number = last = 0
    for match in _ATTRIBUTION_END.finditer(norm):
        number += norm.count("\n", last, match.start())
        last = match.start()
        ends.update((number - 1, number))
    if work and work[-1].endswith(_ATTRIBUTION_ENDS):
        ends.update((len(work) - 2, len(work) - 1))
    for i in sorted(ends):
        line = work[i] if 0 <= i < len(work) else ""
        if not line or _is_quoted(line):
            continue
        if _is_strong_attribution(line):
            return i
        if (i + 1 < len(work) and work[i + 1] and not line.endswith((".", "!", "?"))
                and not _is_strong_attribution(work[i + 1])
                and _is_strong_attribution(line + " " + work[i + 1])):
            return i
    return None


def _trailing_quote_candidate(work: list[str]) -> int | None:
    """Start of a ``>`` block that runs to the end (a trailing ``-- `` signature allowed)."""
    last_quoted = None
    for i in range(len(work) - 1, -1, -1):
        if ">" in work[i] and _is_quoted(work[i]):
            last_quoted = i
            break
    if last_quoted is None:
        return None
    after = [ln for ln in work[last_quoted + 1:] if ln]
    if after and after[0] not in ("--", "-- ", "__"):
        return None  # text follows the quote: inline or bottom-posted reply
    first = last_quoted
    while first > 0 and (_is_quoted(work[first - 1]) or not work[first - 1]):
        first -= 1
    while first < last_quoted and not work[first]:
        first += 1
    return _attribution_start(work, first)


def _bottom_posted(lines: list[str], work: list[str]) -> ReplySplit | None:
    """Quote first, answer below: "Le … a écrit :" / "> …" / "my answer"."""
    first = next((i for i, ln in enumerate(work) if ln), None)
    if first is None:
        return None
    quoted_at = _next_quoted(work, first)
    if quoted_at >= len(work):
        return None
    if quoted_at != first and _attribution_start(work, quoted_at) != first:
        return None  # text above the quote: a normal top-posted reply
    end = quoted_at
    while end < len(work) and (not work[end] or _is_quoted(work[end])):
        end += 1
    rest = [j for j in range(end, len(work)) if work[j]]
    if not rest or any(_is_quoted(work[j]) for j in rest):
        return None  # nothing after the quote, or interleaved answers: keep everything
    quote = "\n".join(lines[:end]).strip("\n")
    return ReplySplit(text="\n".join(lines[end:]).strip("\n"), signature=None, quote=quote,
                      bottom_posted=True)


def _next_quoted(work: list[str], start: int) -> int:
    for j in range(start, len(work)):
        if ">" in work[j] and _is_quoted(work[j]):
            return j
    return len(work)


def _signature_start(work: list[str], end: int, norm: str | None = None) -> int | None:
    """Line where the sender's signature begins in work[:end] (`norm`: those lines joined,
    if at hand), per mail-parser-reply."""
    patterns = _get_patterns()
    first_text = next((i for i, line in enumerate(work) if line), len(work))
    if norm is None:
        norm = "\n".join(work[:end])
    anchors = _signoff_anchors(norm)
    lines_from = max(1, first_text + 1)  # a "Sent from" line needs text above it
    candidates: Iterable[int] = range(lines_from, end)
    if anchors is not None and patterns.sent_from_probed:
        candidates = _line_numbers(norm, anchors)
    sent_from = next((i for i in candidates if lines_from <= i < end
                      and patterns.sent_from.match(work[i])), None)
    if sent_from is not None:
        norm = "\n".join(work[:sent_from])
        anchors = _signoff_anchors(norm)
    found = _signoff_start(work, sent_from if sent_from is not None else end, first_text, norm,
                           anchors)
    return found if found is not None else sent_from


def _line_numbers(norm: str, positions: list[int]) -> Iterator[int]:
    """The line numbers of ascending positions in `norm`."""
    line = last = 0
    for pos in positions:
        line += norm.count("\n", last, pos)
        last = pos
        yield line


def _signoff_start(work: list[str], end: int, first_text: int, norm: str,
                   anchors: list[int] | None) -> int | None:
    """First sign-off line in work[:end] (`norm`: those lines joined, `anchors`: their
    `_signoff_anchors`) that counts as the start of a signature. Only the first 20 places
    where the signature regex matches are looked at; `first_text` is the index of the first
    non-empty line."""
    patterns = _get_patterns()
    pos = 0
    for _ in range(20):
        if anchors is None:
            match = patterns.signature.search(norm, pos)
            found = match.start() if match else None
        else:
            found = _signoff_search(norm, pos, anchors)
        if found is None:
            return None
        start = found
        while start < len(norm) and norm[start] in "\n \t":
            start += 1
        line_no = norm.count("\n", 0, start)
        line = work[line_no] if line_no < len(work) else ""
        line_end = norm.find("\n", start)
        pos = len(norm) if line_end < 0 else line_end + 1
        if line_no <= first_text:
            continue  # nothing above it: this is the message, not its signature
        bare = line.lstrip("> ")
        if bare in ("--", "__") or re.fullmatch(r"[-_]{20,}", bare):
            return line_no
        # A sign-off ("Mit freundlichen Grüßen", "Thanks,") is only a signature when it
        # stands as a short line of its own ("Thanks, that works. Next step: …" is content)
        # and only a signature block follows, not half the message.
        if (len(bare) <= 48 and len(bare.split()) <= 7 and not bare.endswith("?")
                and _few_lines(work, line_no + 1, end, _MAX_SIGNATURE_LINES)):
            return line_no
    return None


def _few_lines(work: list[str], start: int, end: int, most: int) -> bool:
    """Whether work[start:end] has at most `most` non-empty lines."""
    count = 0
    for i in range(start, end):
        if work[i]:
            count += 1
            if count > most:
                return False
    return True


def _signoff_anchors(norm: str) -> list[int] | None:
    """Starts of the lines where a match of the signature regex can end its leading blank
    space, in order (None: the regex is not of the shape `_signature_head` knows). Every
    line that `sent_from` matches is among them too, when `sent_from_probed`.

    A match begins on such a line or in the blank space right before it: the regex's
    alternatives start with ``\\s*^`` or ``^`` (then the regex matches at the line start
    too) or are the long ruler after an empty line. The probes may pick more lines than
    that; `_signoff_search` tries the regex itself.
    """
    patterns = _get_patterns()
    first, lines = patterns.signature_first_line, patterns.signature_lines
    if first is None or lines is None:
        return None
    anchors = {match.start() + 1 for match in lines.finditer(norm)}
    anchors.update(match.end() for match in _RULER_LINE.finditer(norm))
    if first.match(norm):
        anchors.add(0)
    return sorted(anchors)


def _signoff_search(norm: str, pos: int, anchors: list[int]) -> int | None:
    """Where ``signature.search(norm, pos)`` would match, trying only the blank space before
    each anchor line and its start."""
    head = _get_patterns().signature_head
    assert head is not None
    tried = pos  # positions below this one are known not to match
    for anchor in anchors[bisect.bisect_left(anchors, pos):]:
        first = anchor
        while first > tried and norm[first - 1].isspace():
            first -= 1
        for candidate in range(first, anchor + 1):
            if head.match(norm, candidate):
                return candidate
        tried = anchor + 1
    return None


def split_reply(text: str) -> ReplySplit:
    """Split a plain-text body into the new part, the signature and the quoted history.

    When in doubt the text is kept: if stripping would leave nothing, nothing is stripped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    head, tail = text, ""
    if len(text) > _MAX_SPLIT_CHARS:
        cut = text.rfind("\n", 0, _MAX_SPLIT_CHARS)
        cut = cut if cut > 0 else _MAX_SPLIT_CHARS
        head, tail = text[:cut], text[cut:]
    lines = head.split("\n")
    # A stripped, length-capped copy, one entry per line, so that matches map back to lines.
    if "\ufeff" in head or "\u200b" in head:
        work = [line.strip().lstrip("\ufeff\u200b")[:_MAX_LINE] for line in lines]
    else:
        work = [line.strip()[:_MAX_LINE] for line in lines]
    # Without a ">" there are no quoted lines: no bottom-posted quote, no trailing quote.
    quoted = ">" in head

    bottom = _bottom_posted(lines, work) if not tail and quoted else None
    if bottom is not None:
        lines = bottom.text.split("\n")
        work = [line.strip()[:_MAX_LINE] for line in lines]
        sig = _signature_start(work, len(work))
        if sig is not None and any(work[:sig]):
            return ReplySplit("\n".join(lines[:sig]).strip("\n"),
                              "\n".join(lines[sig:]).strip("\n") or None, bottom.quote,
                              bottom_posted=True)
        return bottom

    norm = "\n".join(work)
    candidates = [c for c in (_header_candidate(work, norm), _separator_candidate(work, norm),
                              _attribution_candidate(work, norm),
                              _trailing_quote_candidate(work) if quoted else None)
                  if c is not None]
    quote_start = min(candidates) if candidates else None
    if quote_start is not None:
        # A ruler line right above the quote header ("-----…", "_____…") belongs to it.
        above = quote_start - 1
        while above >= 0 and (not work[above] or re.fullmatch(r"[-_=*]{5,}", work[above])):
            above -= 1
        if above + 1 < quote_start and any(re.fullmatch(r"[-_=*]{5,}", w)
                                           for w in work[above + 1:quote_start]):
            quote_start = next(j for j in range(above + 1, quote_start)
                               if re.fullmatch(r"[-_=*]{5,}", work[j]))
    if quote_start is not None and not any(work[:quote_start]):
        quote_start = None  # the quote is all there is (a forward, or a misdetection)
    end = quote_start if quote_start is not None else len(lines)
    sig_start = _signature_start(work, end, norm if end == len(work) else None)

    new_end = sig_start if sig_start is not None else end
    new_text = "\n".join(lines[:new_end]).strip("\n")
    if not new_text.strip():
        return ReplySplit(text.strip("\n"), None, None)
    signature = "\n".join(lines[new_end:end]).strip("\n") or None
    quote = None
    if quote_start is not None:
        quote = ("\n".join(lines[quote_start:]) + tail).strip("\n") or None
    elif tail:
        new_text = (new_text + tail).strip("\n") if signature is None else new_text
        if signature is not None:
            signature = (signature + tail).strip("\n")
    return ReplySplit(new_text, signature, quote)


# --------------------------------------------------------------------------------------------
# HTML reply splitting
# --------------------------------------------------------------------------------------------

_SKIP_TEXT_TAGS = {"script", "style", "head", "title", "xml"}
# Class names whose element is a quote (or a signature) and goes as a whole.
_QUOTE_CLASSES = {"gmail_quote", "gmail_quote_container", "gmail_extra_quote", "yahoo_quoted",
                  "moz-cite-prefix", "gmail_signature", "gmail_signature_prefix",
                  "protonmail_quote", "zmail_extra"}
# Elements that start the quoted part: they and everything after them go.
_CUT_IDS = {"divrplyfwdmsg", "appendonsend", "olk_src_body_section",
            "mail-editor-reference-message-container", "stopspelling", "reply-intro"}


def _classes(el: Any) -> set[str]:
    return set((el.get("class") or "").split())


def _is_outlook_separator(el: Any) -> bool:
    style = (el.get("style") or "").lower().replace(" ", "")
    if "border-top:solid#e1e1e1" in style or "border-top:solid#b5c4df" in style:
        return True
    if "border-top:solid" in style or "border-top-style:solid" in style:
        # Generic border: only when a From:/Von: header follows right away.
        text = (el.text_content() or "").strip()[:300]
        if not text:
            nxt = el.getnext()
            text = (nxt.text_content() or "").strip()[:300] if nxt is not None else ""
        return bool(_FROM_KEY.match(text))
    return False


def _iter_text(root: Any) -> Iterator[tuple[Any, str, str]]:
    """(element, "text"|"tail", string) in document order, without recursion."""
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        el, leaving = stack.pop()
        if leaving:
            if el is not root and el.tail:
                yield el, "tail", el.tail
            continue
        stack.append((el, True))
        if isinstance(el.tag, str) and el.tag.lower() not in _SKIP_TEXT_TAGS:
            if el.text:
                yield el, "text", el.text
            for child in reversed(el):
                stack.append((child, False))


def _serialize(el: Any) -> str:
    return lxml.html.tostring(el, encoding="unicode", with_tail=False)


def _remove_after(el: Any, root: Any, removed: list[str]) -> None:
    """Remove everything that follows `el` (and its tail) in document order."""
    node = el
    while node is not None and node is not root:
        parent = node.getparent()
        if parent is None:
            break
        for sibling in list(node.itersiblings()):
            removed.append(_serialize(sibling) + html_lib.escape(sibling.tail or ""))
            parent.remove(sibling)  # lxml removes the tail with it
        node = parent
        if node is not root and node.tail:
            removed.append(html_lib.escape(node.tail))
            node.tail = None


def _truncate_at(el: Any, kind: str, offset: int, root: Any, removed: list[str]) -> None:
    if kind == "text":
        removed.append(html_lib.escape(el.text[offset:]))
        el.text = el.text[:offset]
        for child in list(el):
            removed.append(_serialize(child) + html_lib.escape(child.tail or ""))
            el.remove(child)
        if el.tail:
            removed.append(html_lib.escape(el.tail))
            el.tail = None
    else:
        removed.append(html_lib.escape(el.tail[offset:]))
        el.tail = el.tail[:offset]
    _remove_after(el, root, removed)


def _cut_element(el: Any, root: Any, removed: list[str]) -> None:
    """Remove `el` and everything after it."""
    if el.getparent() is None:
        return
    _remove_after(el, root, removed)
    removed.insert(0, _serialize(el) + html_lib.escape(el.tail or ""))
    el.tail = None
    el.drop_tree()


_MAX_HTML_TEXT = 1_000_000


def _squash(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace() and ch not in "*>")


def _find_text(root: Any, needle: str, last: bool) -> tuple[Any, str, int] | None:
    """Locate `needle` (whitespace-insensitive) in the document's text."""
    target = _squash(needle)[:24]
    if len(target) < 2:
        return None
    chars: list[str] = []
    where: list[tuple[int, int]] = []
    segments: list[tuple[Any, str, str]] = []
    starts: set[int] = set()  # positions where a text node's first character landed
    for seg_no, (el, kind, string) in enumerate(_iter_text(root)):
        segments.append((el, kind, string))
        first = True
        for offset, ch in enumerate(string):
            if not ch.isspace() and ch not in "*>":
                if first:
                    starts.add(len(chars))
                    first = False
                chars.append(ch)
                where.append((seg_no, offset))
        if len(chars) > _MAX_HTML_TEXT:
            return None  # a newsletter-sized document: not worth the memory
    joined = "".join(chars)
    positions = [m.start() for m in re.finditer(re.escape(target), joined)]
    if len(target) < 8:
        # "--" or "Gruß" could be anywhere; only where a line (text node) starts.
        positions = [p for p in positions if p in starts]
    if not positions:
        return None
    pos = positions[-1] if last else positions[0]
    seg_no, offset = where[pos]
    el, kind, _ = segments[seg_no]
    return el, kind, offset


def _trim_trailing(body: Any) -> None:
    """Drop empty elements (<br>, <hr>, empty <div>s) left at the end after cutting."""
    for _ in range(500):
        node = body
        while len(node):
            last = node[-1]
            if last.tail and last.tail.strip():
                break
            node = last
        if node is body or not isinstance(node.tag, str):
            if node is not body and node.getparent() is not None:
                node.drop_tree()
                continue
            return
        if node.tag.lower() in ("img", "td", "th") or (node.text or "").strip():
            return
        if node.xpath(".//img"):
            return
        if node.text_content().strip():
            return
        node.drop_tree()


def _parse_html(html: str) -> Any:
    source = re.sub(r"^\s*<\?xml[^>]*\?>", "", html)
    source = _CONTROL.sub("", source).encode("utf-8", "replace").decode("utf-8")
    if not source.strip():
        return None
    return lxml.html.document_fromstring(source)


def _body(doc: Any) -> Any:
    bodies = doc.xpath("//body")
    return bodies[0] if bodies else doc


def split_html_reply(html: str, quote_line: str | None = None,
                     signature_line: str | None = None) -> tuple[str, str | None]:
    """(new HTML, removed HTML or None): the quoted part of a reply cut out of `html`.

    Known quote containers (Gmail, Outlook, Thunderbird, Apple Mail, OWA) are removed; then,
    if given, the document is cut where `quote_line` (the first line of the quote found in
    the plain text) first appears and where `signature_line` last appears. Never raises: on
    any trouble the HTML comes back unchanged.
    """
    try:
        doc = _parse_html(html)
        if doc is None:
            return html, None
        removed: list[str] = []
        changed = _strip_html_structure(doc, removed)
        root = _body(doc)
        if quote_line:
            found = _find_text(root, quote_line.lstrip("> "), last=False)
            if found is not None:
                _truncate_at(*found, root, removed)
                changed = True
        if signature_line:
            found = _find_text(root, signature_line.lstrip("> "), last=True)
            if found is not None:
                _truncate_at(*found, root, removed)
                changed = True
        if not changed:
            return html, None
        _trim_trailing(root)
        new_html = lxml.html.tostring(doc, encoding="unicode")
        return new_html, "".join(removed) or None
    except Exception:
        log.debug("HTML quote stripping failed; keeping the HTML", exc_info=True)
        return html, None


def _strip_html_structure(doc: Any, removed: list[str]) -> bool:
    changed = False
    # 1. Cut points: the first one in document order wins, everything after it goes.
    for el in doc.iter():
        if not isinstance(el.tag, str):
            continue
        if ((el.get("id") or "").lower() in _CUT_IDS
                or "OutlookMessageHeader" in _classes(el)
                or (el.tag.lower() == "div" and _is_outlook_separator(el))):
            _cut_element(el, _body(doc), removed)
            changed = True
            break
    # 2. Quote containers that go as a whole.
    for el in list(doc.iter()):
        if not isinstance(el.tag, str) or el.getparent() is None:
            continue
        tag = el.tag.lower()
        if (_classes(el) & _QUOTE_CLASSES
                or (tag == "blockquote" and (el.get("type") or "").lower() == "cite")
                or (el.get("name") or "") == "messageReplySection"):
            # Skip elements already inside a removed subtree.
            if any(a.getparent() is None for a in el.iterancestors() if a is not doc):
                continue
            removed.append(_serialize(el))
            el.drop_tree()
            changed = True
    # 3. A last top-level <blockquote> after an attribution ("… wrote:"), with nothing
    #    after it: Yandex, Mail.ru and many webmails quote like that.
    body = _body(doc)
    quotes = [bq for bq in body.iter("blockquote")
              if not any(a.tag == "blockquote" for a in bq.iterancestors())]
    if quotes:
        last = quotes[-1]
        if not _text_after(last, body).strip():
            before = html_to_text(_serialize_before(last, body))
            attribution = before.rstrip().rsplit("\n", 1)[-1] if before.strip() else ""
            if _looks_like_attribution(attribution):
                quote_html = _serialize(last)
                last.drop_tree()
                found = _find_text(body, attribution, last=True)
                if found is not None:
                    _truncate_at(*found, body, removed)
                removed.append(quote_html)
                changed = True
    return changed


def _text_after(el: Any, root: Any) -> str:
    """All text that follows `el`'s subtree in document order."""
    parts = [el.tail or ""]
    node = el
    while node is not None and node is not root:
        for sibling in node.itersiblings():
            if isinstance(sibling.tag, str):
                parts.append(sibling.text_content())
            parts.append(sibling.tail or "")
        node = node.getparent()
        if node is not None and node is not root:
            parts.append(node.tail or "")
    return "".join(parts)


def _serialize_before(el: Any, root: Any) -> str:
    """The document's text before `el`, as escaped HTML-ish text with line breaks."""
    parts: list[str] = []
    block = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if node is el:
            break
        if leaving:
            if node is not root and node.tail:
                parts.append(html_lib.escape(node.tail))
            continue
        stack.append((node, True))
        if isinstance(node.tag, str):
            if node.tag.lower() in block:
                parts.append("<br>")
            if node.tag.lower() not in _SKIP_TEXT_TAGS:
                if node.text:
                    parts.append(html_lib.escape(node.text))
                for child in reversed(node):
                    stack.append((child, False))
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Calendar
# --------------------------------------------------------------------------------------------

_METHOD_LABEL = {"REQUEST": "Invitation", "CANCEL": "Cancelled", "REPLY": "Reply",
                 "PUBLISH": "Event", "COUNTER": "Counter proposal", "REFRESH": "Refresh request",
                 "ADD": "Added occurrence", "DECLINECOUNTER": "Counter proposal declined"}


def _format_when(start: Any, end: Any, tzid: str | None) -> str:
    if isinstance(start, datetime):
        text = start.strftime("%Y-%m-%d %H:%M")
        if isinstance(end, datetime):
            text += "\u2013" + (end.strftime("%H:%M") if end.date() == start.date()
                           else end.strftime("%Y-%m-%d %H:%M"))
        zone = tzid or (str(start.tzinfo) if start.tzinfo is not None else None)
        if start.tzinfo is not None and getattr(start.tzinfo, "key", None):
            zone = tzid or start.tzinfo.key  # type: ignore[attr-defined]
        return f"{text} ({zone})" if zone else text
    if isinstance(start, date):
        text = start.isoformat()
        if isinstance(end, date) and not isinstance(end, datetime):
            last = end - timedelta(days=1)  # DTEND of an all-day event is exclusive
            if last > start:
                text += "\u2013" + last.isoformat()
        return text + " (all day)"
    return str(start)


def _cal_address(prop: Any) -> str:
    address = str(prop)
    if address.lower().startswith("mailto:"):
        address = address[7:]
    name = None
    with contextlib.suppress(Exception):
        name = prop.params.get("CN")
    return f"{name} <{address}>" if name else address


def calendar_summary(data: bytes | str) -> str | None:
    """A readable summary of an iCalendar object (invitation, cancellation, reply)."""
    try:
        import icalendar

        cal = icalendar.Calendar.from_ical(data)
        method = str(cal.get("method", "") or "").upper()
        lines: list[str] = []
        for event in list(cal.walk("VEVENT"))[:5]:
            label = _METHOD_LABEL.get(method, "Event")
            status = str(event.get("status", "") or "").upper()
            if status == "CANCELLED":
                label = "Cancelled"
            title = str(event.get("summary", "") or "").strip() or "(no title)"
            lines.append(f"{label}: {title}")
            start = end = None
            with contextlib.suppress(Exception):
                start = event.start  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                end = event.end  # type: ignore[attr-defined]
            if start is not None:
                tzid = None
                with contextlib.suppress(Exception):
                    tzid = event.get("dtstart").params.get("TZID")
                lines.append(f"When: {_format_when(start, end, tzid)}")
            location = str(event.get("location", "") or "").strip()
            if location:
                lines.append(f"Where: {location}")
            organizer = event.get("organizer")
            if organizer:
                lines.append(f"Organizer: {_cal_address(organizer)}")
            if method == "REPLY":
                attendees = event.get("attendee") or []
                if not isinstance(attendees, list):
                    attendees = [attendees]
                for attendee in attendees[:10]:
                    partstat = str(attendee.params.get("PARTSTAT", "")).lower()
                    lines.append(f"Attendee: {_cal_address(attendee)}"
                                 + (f" ({partstat})" if partstat else ""))
            lines.append("")
        summary = "\n".join(lines).strip()
        return summary or None
    except Exception:
        log.debug("unreadable text/calendar part", exc_info=True)
        return None


# --------------------------------------------------------------------------------------------
# The MIME tree
# --------------------------------------------------------------------------------------------

_MAX_DEPTH = 20
_MAX_FORWARD_DEPTH = 5
_SIGNATURE_TYPES = {"application/pgp-signature", "application/pkcs7-signature",
                    "application/x-pkcs7-signature"}
_RETURNED_HEADER_TYPES = {"text/rfc822-headers", "message/rfc822-headers"}


@dataclass
class _Collected:
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    calendars: list[str] = field(default_factory=list)
    forwarded: list[ForwardedMessage] = field(default_factory=list)
    dsn: _Dsn | None = None
    returned_message_id: str | None = None
    forward_depth: int = 0


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


def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    """A header parameter, parsed leniently; never raises.

    The old (compat32) parameter parser reads the raw header: unlike the new one it keeps
    unquoted values with "=" or spaces in them (Outlook Express boundaries, filenames).
    """
    raw = _raw_values(part, header)
    if not raw:
        return None
    text = raw[0]
    if _SURROGATES.search(text):  # raw 8-bit bytes, e.g. a filename straight from Outlook
        declared = re.search(r"charset\s*=\s*\"?([\w.:-]+)", "".join(_raw_values(part,
                                                                              "content-type")))
        text = _fix_surrogates(text, declared.group(1) if declared else None)
    try:
        holder = Message()  # compat32 policy
        holder[header] = text
        value = holder.get_param(name, header=header)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):  # RFC 2231: (charset, language, text)
        try:
            # The parser has %-decoded the value into one character per byte already.
            charset, _, decoded = value
            return decode_text(str(decoded).encode("latin-1", "replace"), charset or None)
        except Exception:
            return str(value[2])
    return str(value).strip().strip('"')


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
    if isinstance(data, bytes):
        return data
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
    try:
        # A lazy payload is decoded from the mail itself (the same ASCII text).
        return binascii.a2b_base64(payload.view if isinstance(payload, _Run) else payload)
    except (binascii.Error, ValueError):
        if isinstance(payload, _Run):
            part._payload = payload.text()  # type: ignore[attr-defined]  # for get_payload
        return None


def _part_text(part: Message) -> str:
    data = _part_bytes(part)
    text = decode_text(data, _param(part, "charset"))
    return text.replace("\r\n", "\n").replace("\r", "\n")


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


def _attach(part: Message, ctx: _Collected, inline: bool | None = None) -> None:
    mimetype = _content_type(part)
    data = _part_bytes(part)
    disposition = _disposition(part)
    content_id = _content_id(part)
    if inline is None:
        inline = disposition == "inline" and content_id is not None
    ctx.attachments.append(Attachment(filename=_filename(part, mimetype), mimetype=mimetype,
                                      data=data, content_id=content_id, inline=inline))


def _children(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []


def _contains(part: Message, ctype: str, depth: int = 0) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if _content_type(part) == ctype:
        return True
    return part.is_multipart() and any(_contains(c, ctype, depth + 1) for c in _children(part))


def _is_body_text(part: Message) -> bool:
    return (_content_type(part) in ("text/plain", "text/html")
            and _disposition(part) != "attachment" and not _has_filename(part))


def _walk(part: Message, ctx: _Collected, want: frozenset[str], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        return
    ctype = _content_type(part)
    maintype, _, subtype = ctype.partition("/")
    if part.is_multipart():
        children = _children(part)
        if subtype == "alternative":
            _walk_alternative(children, ctx, want, depth)
        elif subtype == "related":
            _walk_related(part, children, ctx, want, depth)
        elif subtype == "signed":
            for child in children[:1]:
                _walk(child, ctx, want, depth + 1)
            for child in children[1:]:
                if _content_type(child) not in _SIGNATURE_TYPES:
                    _walk(child, ctx, want, depth + 1)
        elif subtype == "report":
            _walk_report(children, ctx, want, depth)
        elif ctype in ("message/delivery-status", "message/global-delivery-status"):
            ctx.dsn = ctx.dsn or _Dsn()
            _parse_delivery_status(part, ctx.dsn)
        elif maintype == "message":
            _walk_message(part, ctx)
        else:  # mixed, digest, parallel, and unknown subtypes (RFC 2046: treat as mixed)
            for child in children:
                _walk(child, ctx, want, depth + 1)
        return
    if maintype == "multipart":
        # Declared multipart without a usable boundary: the email package left the body
        # as text. Show it rather than lose it.
        if "plain" in want:
            ctx.plain.append(_part_text(part))
        return
    if ctype in ("text/calendar", "application/ics"):
        summary = calendar_summary(_part_bytes(part))
        if summary and summary in ctx.calendars:
            return  # Google Calendar sends the invitation twice: an alternative and a file
        if summary:
            ctx.calendars.append(summary)
        _attach(part, ctx, inline=False)
        return
    if ctype in _SIGNATURE_TYPES:
        return
    if _is_body_text(part):
        if ctype == "text/plain":
            if "plain" in want:
                text = _part_text(part)
                if (_param(part, "format") or "").lower() == "flowed":
                    text = unflow(text, (_param(part, "delsp") or "").lower() == "yes")
                ctx.plain.append(text)
        elif "html" in want:
            ctx.html.append(_part_text(part))
        return
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        ctx.dsn = ctx.dsn or _Dsn()
        _parse_delivery_status(part, ctx.dsn)
        return
    if ctype in ("message/disposition-notification", "message/feedback-report",
                 "message/external-body") or ctype in _RETURNED_HEADER_TYPES:
        return
    _attach(part, ctx)


def _walk_alternative(children: list[Message], ctx: _Collected, want: frozenset[str],
                      depth: int) -> None:
    plain = next((c for c in children if _content_type(c) == "text/plain"), None)
    if plain is None:
        plain = next((c for c in children if c.is_multipart() and _contains(c, "text/plain")
                      and not _contains(c, "text/html")), None)
    html = None
    for child in children:  # the last HTML alternative is the richest
        if _content_type(child) == "text/html" or (child.is_multipart()
                                                   and _contains(child, "text/html")):
            html = child
    for child in children:
        if _content_type(child) in ("text/calendar", "application/ics"):
            _walk(child, ctx, want, depth + 1)
    if plain is None and html is None:
        if children:
            _walk(children[-1], ctx, want, depth + 1)
        return
    if plain is not None and "plain" in want:
        _walk(plain, ctx, frozenset({"plain"}), depth + 1)
    if html is not None:
        _walk(html, ctx, want & frozenset({"html"}), depth + 1)
    elif plain is not None and "plain" not in want:
        _walk(plain, ctx, frozenset(), depth + 1)


def _walk_related(part: Message, children: list[Message], ctx: _Collected,
                  want: frozenset[str], depth: int) -> None:
    if not children:
        return
    start = _msgid(_param(part, "start"))
    root = next((c for c in children if start and _content_id(c) == start), None)
    if root is None:
        # RFC 2387: the first part, unless "type" names another one (MHTML puts images
        # first and the HTML last).
        root_type = (_param(part, "type") or "").lower()
        root = children[0]
        if root_type and _content_type(root) != root_type:
            root = next((c for c in children if _content_type(c) == root_type), root)
    _walk(root, ctx, want, depth + 1)
    for child in children:
        if child is root:
            continue
        if child.is_multipart():
            _walk(child, ctx, want, depth + 1)
        else:
            _attach(child, ctx, inline=True)


def _walk_report(children: list[Message], ctx: _Collected, want: frozenset[str],
                 depth: int) -> None:
    for index, child in enumerate(children):
        ctype = _content_type(child)
        if index == 0:
            _walk(child, ctx, want, depth + 1)
        elif ctype in ("message/delivery-status", "message/global-delivery-status"):
            ctx.dsn = ctx.dsn or _Dsn()
            _parse_delivery_status(child, ctx.dsn)
        elif ctype in ("message/rfc822", "message/global"):
            inner = _children(child)
            if inner and not ctx.returned_message_id:
                ctx.returned_message_id = _msgid(_header(inner[0], "message-id"))
        elif (ctype in _RETURNED_HEADER_TYPES or ctype == "message/global-headers") \
                and not ctx.returned_message_id:
            headers = _part_text(child) if not child.is_multipart() else ""
            match = re.search(r"^message-id:\s*(.+)$", headers, re.I | re.M)
            if match:
                ctx.returned_message_id = _msgid(match.group(1))
            elif child.is_multipart() and _children(child):
                ctx.returned_message_id = _msgid(_header(_children(child)[0], "message-id"))
        # Machine-readable MDN/ARF parts and anything else of a report is not for people.


def _inner_message(part: Message) -> Message | None:
    inner = _children(part)
    if not inner:
        return None
    message = inner[0]
    cte = (_header(part, "content-transfer-encoding") or "").lower()
    if cte in ("base64", "quoted-printable"):
        # Not allowed for message/rfc822, but sent anyway: decode and parse again.
        with contextlib.suppress(Exception):
            import base64
            import quopri

            _materialize(message)
            encoded = message.as_bytes()
            raw = (base64.b64decode(encoded, validate=False) if cte == "base64"
                   else quopri.decodestring(encoded))
            return BytesParser(policy=_POLICY).parsebytes(raw)
    return message


def _walk_message(part: Message, ctx: _Collected) -> None:
    ctype = _content_type(part)
    if ctype not in ("message/rfc822", "message/global", "message/news") or \
            ctx.forward_depth >= _MAX_FORWARD_DEPTH:
        if ctype == "message/partial":
            _attach(part, ctx, inline=False)
        return
    inner = _inner_message(part)
    if inner is None:
        return
    sub = _Collected(forward_depth=ctx.forward_depth + 1)
    _walk(inner, sub, frozenset({"plain", "html"}), 0)
    senders = _addresses(inner, "from")
    from_name, from_address = (senders[0] if senders else ("", ""))
    when, when_raw = _date(inner)
    plain = "\n\n".join(t.strip("\n") for t in sub.plain if t.strip())
    html = "".join(sub.html) or None
    text = plain or (html_to_text(html) if html else "")
    if sub.forwarded:
        text = _append_forwards(text, sub.forwarded)
    ctx.forwarded.append(ForwardedMessage(
        from_address=from_address, from_name=from_name or None,
        to=[a for _, a in _addresses(inner, "to") if a], date=when, date_header=when_raw,
        subject=_header(inner, "subject") or "", message_id=_msgid(_header(inner, "message-id")),
        text=text, html=html))
    ctx.attachments.extend(sub.attachments)
    ctx.calendars.extend(sub.calendars)


def _forward_header_lines(fwd: ForwardedMessage) -> list[str]:
    sender = f"{fwd.from_name} <{fwd.from_address}>" if fwd.from_name else fwd.from_address
    lines = ["---------- Forwarded message ----------"]
    if sender:
        lines.append(f"From: {sender}")
    if fwd.date_header:
        lines.append(f"Date: {fwd.date_header}")
    if fwd.subject:
        lines.append(f"Subject: {fwd.subject}")
    if fwd.to:
        lines.append(f"To: {', '.join(fwd.to)}")
    return lines


def _append_forwards(text: str, forwarded: list[ForwardedMessage]) -> str:
    blocks = [text.strip("\n")] if text.strip() else []
    for fwd in forwarded:
        blocks.append("\n".join(_forward_header_lines(fwd)) + "\n\n" + fwd.text.strip("\n"))
    return "\n\n".join(blocks)


def _append_forwards_html(html: str, forwarded: list[ForwardedMessage]) -> str:
    parts = [html]
    for fwd in forwarded:
        header = "<br>".join(html_lib.escape(line) for line in _forward_header_lines(fwd))
        body = fwd.html if fwd.html else (
            "<pre>" + html_lib.escape(fwd.text) + "</pre>" if fwd.text else "")
        parts.append(f"<div><hr><p>{header}</p>{body}</div>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Bounces
# --------------------------------------------------------------------------------------------

def _bounce(msg: Message, ctx: _Collected, from_name: str | None, from_address: str,
            subject: str, text: str) -> Bounce | None:
    dsn = ctx.dsn
    original = ctx.returned_message_id
    if original is None and ctx.forwarded:
        original = ctx.forwarded[0].message_id
    if dsn is not None and (dsn.actions or dsn.recipients or dsn.statuses):
        failing = [a for a in dsn.actions if a in ("failed", "delayed")]
        if dsn.actions and not failing:
            return None  # a success notice (delivered/relayed/expanded)
        # The enhanced status code decides (5.x.x hard, 4.x.x transient, even when the MTA
        # gave up: a full mailbox is no reason to drop a subscriber); without one, the
        # Action and the SMTP reply code in the diagnostic.
        codes = dsn.statuses or [m.group(0)[0] for d in dsn.diagnostics
                                 if (m := _SMTP_REPLY.search(d))]
        if codes:
            permanent = any(c.startswith("5") for c in codes)
        elif dsn.actions:
            permanent = "failed" in dsn.actions
        else:
            permanent = not _DELAY_WORDS.search(subject)
        status = next((s for s in dsn.statuses if s[0] in "45"), None) or (
            dsn.statuses[0] if dsn.statuses else None)
        return Bounce(permanent=permanent, recipients=dsn.recipients, status=status,
                      diagnostic=dsn.diagnostics[0] if dsn.diagnostics else None,
                      original_message_id=original or _returned_id_in_text(text))

    failed_header = _header(msg, "x-failed-recipients")
    daemon = _is_daemon(from_name, from_address)
    bounce_subject = bool(_BOUNCE_SUBJECT.search(subject))
    null_path = _is_null_return_path(msg)
    declared_dsn = (_content_type(msg) == "multipart/report"
                    and (_param(msg, "report-type") or "").lower() == "delivery-status")
    if not (failed_header or declared_dsn or (daemon and (bounce_subject or null_path))
            or (null_path and bounce_subject)):
        return None
    # A non-standard bounce (qmail, Exim, Exchange 2003, Domino …): best effort from text.
    report = text
    marker = _RETURNED_MARKER.search(report)
    human = report[:marker.start()] if marker else report
    status_match = _STATUS_CODE.search(human)  # not below: "Lotus SMTP MTA v4.6.1"
    status = status_match.group(0) if status_match else None
    recipients: list[str] = []
    if failed_header:
        recipients = [a.strip() for a in failed_header.split(",") if a.strip()]
    if not recipients:
        # Addresses in the report, but not the bounce's own sender and addressee (the
        # latter is us, the original sender, named in "Your message to … from …").
        ours = {a.lower() for _, a in _addresses(msg, "to")} | {from_address.lower()}
        for address in _ADDRESS.findall(human):
            local = address.rsplit("@", 1)[0]
            if (address.lower() not in ours and not _DAEMON_LOCALPART.match(local)
                    and address not in recipients):
                recipients.append(address)
            if len(recipients) >= 10:
                break
    diagnostic = None
    for line in human.split("\n"):
        if _SMTP_REPLY.search(line) or (status and status in line):
            diagnostic = line.strip()[:500]
            break
    if status:
        permanent = status.startswith("5")
    else:
        permanent = not (_DELAY_WORDS.search(subject) or _DELAY_WORDS.search(human[:2000]))
    return Bounce(permanent=permanent, recipients=recipients, status=status,
                  diagnostic=diagnostic, original_message_id=original or
                  _returned_id_in_text(report[marker.start():] if marker else ""))


def _returned_id_in_text(text: str) -> str | None:
    match = re.search(r"^\s*message-id:\s*(<[^>\s]+>)", text, re.IGNORECASE | re.MULTILINE)
    return _msgid(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------
# parse_message
# --------------------------------------------------------------------------------------------

# Header fields that make a header block a mail's (RFC 5322, MIME, and trace fields).
_KNOWN_FIELDS = {
    "from", "sender", "reply-to", "to", "cc", "bcc", "subject", "date", "message-id",
    "in-reply-to", "references", "mime-version", "content-type", "content-transfer-encoding",
    "received", "return-path", "delivered-to", "x-original-to", "resent-from", "resent-to",
    "resent-date", "comments", "keywords", "dkim-signature", "authentication-results",
    "x-mailer", "user-agent", "content-disposition", "auto-submitted", "precedence",
    "list-id", "x-sender", "envelope-to", "arc-seal", "thread-topic", "thread-index",
}
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
    end = min((i for i in (data.find(b"\n\n", start), data.find(b"\n\r\n", start)) if i >= 0),
              default=len(data))
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
# position).
_BOUNDARY_LINE = re.compile(rb"\n(?=[cC \t])")


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

    def __new__(cls, placeholder: str, view: memoryview) -> _Run:
        run = super().__new__(cls, placeholder)
        run.view = view
        return run

    def text(self) -> str:
        return str(self.view, "ascii")


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


def parse_message(raw: bytes | bytearray) -> ParsedMail:
    """Parse a raw RFC 5322 message; raises only `MalformedMail`."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MalformedMail("a mail is bytes")
    if isinstance(raw, memoryview):
        raw = bytes(raw)  # (a bytearray is read as it is: copying a big mail costs its size)
    try:
        msg = _parse_bytes(raw, lazy_runs=True)
        names = {str(key).lower() for key in msg}
    except Exception as exc:
        raise MalformedMail(f"unparseable: {exc}") from exc
    if not names & _KNOWN_FIELDS:
        raise MalformedMail("no header block: not a mail")
    memo = _MEMO.set({})
    try:
        return _parse(msg)
    except RecursionError as exc:
        raise MalformedMail("nested too deeply") from exc
    except Exception as exc:
        # A bug of ours, not the sender's fault; the connector must still not crash.
        log.exception("internal error while parsing a mail")
        raise MalformedMail(f"internal error: {exc!r}") from exc
    finally:
        _MEMO.reset(memo)


def _parse(msg: EmailMessage) -> ParsedMail:
    subject = _header(msg, "subject") or ""
    topic, is_forward = strip_subject_prefixes(subject)
    senders = _addresses(msg, "from") or _addresses(msg, "sender")
    from_name, from_address = senders[0] if senders else ("", "")
    when, _ = _date(msg)

    ctx = _Collected()
    _walk(msg, ctx, frozenset({"plain", "html"}))

    plain = "\n\n".join(t.strip("\n") for t in ctx.plain if t.strip()) if ctx.plain else None
    html = "".join(ctx.html) if ctx.html and any(h.strip() for h in ctx.html) else None
    full_text = plain if plain is not None else (html_to_text(html) if html else "")

    auto_reply = detect_auto_reply(msg)
    bounce = _bounce(msg, ctx, from_name or None, from_address, subject, full_text)
    if bounce is not None and auto_reply is None:
        auto_reply = "delivery status notification (bounce)"

    text, new_html, quoted = full_text, html, None
    if not is_forward and bounce is None:
        text, new_html, quoted = _split_body(plain, html)

    _mark_inline(ctx.attachments, "".join(
        [html or "", *(fwd.html or "" for fwd in ctx.forwarded)]))

    if ctx.forwarded:
        text = _append_forwards(text, ctx.forwarded)
        full_text = _append_forwards(full_text, ctx.forwarded)
        if new_html is not None:
            new_html = _append_forwards_html(new_html, ctx.forwarded)

    return ParsedMail(
        message_id=_msgid(_header(msg, "message-id")),
        in_reply_to=_msgid_list(_header(msg, "in-reply-to")),
        references=_msgid_list(" ".join(_all_headers(msg, "references"))),
        subject=subject,
        topic=topic,
        from_address=from_address,
        from_name=from_name or None,
        to=[a for _, a in _addresses(msg, "to") if a],
        cc=[a for _, a in _addresses(msg, "cc") if a],
        date=when,
        text=text.strip("\n"),
        html=new_html,
        quoted_text=quoted,
        full_text=full_text.strip("\n"),
        attachments=ctx.attachments,
        auto_reply=auto_reply,
        bounce=bounce,
        calendar="\n\n".join(ctx.calendars) or None,
        forwarded=ctx.forwarded,
        is_forward=is_forward,
        reply_to=[a for _, a in _addresses(msg, "reply-to") if a],
    )


_CID_REF = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)


def _mark_inline(attachments: list[Attachment], html: str) -> None:
    """inline = the mail's HTML shows the part through a ``cid:`` reference.

    Decided by use rather than by MIME structure: Outlook puts referenced images in
    multipart/mixed, Apple Mail puts unreferenced PDFs in multipart/related. Images that
    only the quoted history references (old signature logos) count as inline too, so the
    connector does not post them as files.
    """
    from urllib.parse import unquote

    refs = {unquote(ref).strip("<>").lower() for ref in _CID_REF.findall(html)}
    for attachment in attachments:
        attachment.inline = bool(attachment.content_id
                                 and attachment.content_id.lower() in refs)


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    for line in text.split("\n"):
        if line.strip().lstrip("> ").strip():
            return line.strip()
    return None


def _split_body(plain: str | None, html: str | None) -> tuple[str, str | None, str | None]:
    """(text, html, quoted_text) of the new part of a reply."""
    removed_html = None
    structural_html = html
    if html is not None:
        structural_html, removed_html = split_html_reply(html)
    if plain is not None:
        split = split_reply(plain)
    else:
        split = split_reply(html_to_text(structural_html or ""))
    new_html = structural_html
    if new_html is not None and (split.quote or split.signature):
        # Cut the HTML where the plain text's quote (and signature) begins. For HTML-only
        # mail split.quoted already holds that part's text. A bottom-posted quote stands
        # above the answer, so cutting "from there on" would cut the answer.
        quote_line = None if split.bottom_posted else _first_line(split.quote)
        new_html, _ = split_html_reply(new_html, quote_line, _first_line(split.signature))
        if split.quote and (_shows_line(new_html, _first_line(split.quote))
                            or _shows_line(new_html, _last_line(split.quote))):
            # The HTML could not be cut where the text was: rather no HTML (the connector
            # posts the plain text) than the whole quoted history in the room.
            new_html = None
    quoted_parts = []
    if plain is None and removed_html:
        quoted_parts.append(html_to_text(removed_html))
    if split.quoted:
        quoted_parts.append(split.quoted)
    quoted = "\n\n".join(p for p in quoted_parts if p.strip()) or None
    text = split.text
    if new_html is not None and not html_to_text(new_html).strip():
        # Everything was a quote in HTML terms (OWA's messageReplySection alone, say):
        # keep the original rather than post nothing.
        new_html = html
        if plain is None:
            text, quoted = html_to_text(html or ""), None
    return text, new_html, quoted


def _last_line(text: str | None) -> str | None:
    return _first_line("\n".join(reversed((text or "").split("\n"))))


def _shows_line(html: str, line: str | None) -> bool:
    needle = _squash(line or "")[:24]
    return len(needle) >= 8 and needle in _squash(html_to_text(html))
