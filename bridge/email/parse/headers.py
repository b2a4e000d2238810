"""Header fields as clean text, never raising: RFC 2047 encoded words (with our own decoder where
the email package gets them wrong), raw 8-bit bytes, addresses, message ids, dates,
parameters such as charset= and filename=, and the stacks of Re:/AW:/Fwd:/WG: prefixes in
subjects (`strip_subject_prefixes`). The readers called most keep what they found in `_MEMO`
while `parse_message` runs, and `_POLICY` is the email package's policy the parser works with,
making header classes and header objects once.
"""

from __future__ import annotations

import binascii
import contextlib
import contextvars
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email import policy
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.utils import format_datetime, getaddresses, parsedate_to_datetime, unquote
from typing import Any, TypeVar

from bridge.email.parse.charsets import (
    _LATIN1_TO_CP1252,
    _SURROGATES,
    _codec_for,
    _fix_surrogates,
    decode_text,
)


class _HeaderClasses(HeaderRegistry):
    """The email package's header registry, making each header class once (it builds a new
    class with type() for every header it parses), and each header object once per name
    and value: the same Content-Type, To or From comes in mail after mail, and parsing one
    takes the email package's header parser tens of microseconds. Header objects are
    immutable (str with read-only attributes), so one can stand in for another of the same
    name and value wherever it is used."""

    _MAX_VALUE = 512  # longer values (rare) are parsed each time
    _MAX_KEPT = 2048  # header objects kept; the cache starts over when it is full

    def __init__(self, max_kept: int = _MAX_KEPT) -> None:
        super().__init__()
        self._max_kept = max_kept
        self._classes: dict[str, type] = {}
        self._made: dict[tuple[str, str], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Without the caches: a message keeps its policy, and a copied or pickled message
        # (a DKIM signer's, a test's) takes the policy along; the classes made here cannot
        # be pickled, and the cache need not be copied.
        return self.__dict__ | {"_classes": {}, "_made": {}}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls

    def __call__(self, name: str, value: Any) -> Any:
        # (Only plain text is kept: a value may also be an Address or Group object, which
        # the mail composer sets and which cannot be a dictionary key.)
        if type(value) is not str or len(value) > self._MAX_VALUE:
            return super().__call__(name, value)
        key = (name, value)
        header = self._made.get(key)
        if header is None:
            header = super().__call__(name, value)
            if len(self._made) >= self._max_kept:
                self._made.clear()
            self._made[key] = header
        return header


# policy.default, with the header classes made once.
_POLICY = policy.default.clone(header_factory=_HeaderClasses())


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


def _raw_values(msg: Message, name: str) -> Sequence[str]:
    """The raw values of the `name` fields, in order. (Shared while parse_message runs, which
    looks up a message's fields a few dozen times: from one index of them per message.)"""
    memo = _MEMO.get()
    if memo is None:
        return _raw_index(msg).get(name.lower(), ())
    key = ("raw", msg)
    index = memo.get(key)
    if index is None:
        index = memo[key] = _raw_index(msg)
    values: Sequence[str] = index.get(name.lower(), ())
    return values


def _raw_index(msg: Message) -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for key, value in msg.raw_items():
        index.setdefault(key.lower(), []).append(value if isinstance(value, str) else str(value))
    return {name: tuple(values) for name, values in index.items()}


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


def _params(part: Message, header: str) -> list[tuple[str, Any]] | None:
    """The parameters of the first `header` field as the old (compat32) parser reads them,
    not unquoted (``Message.get_params(unquote=False)``); None where there is none or the
    parser fails. Once per message and field while parse_message runs: a mail's charset,
    format, name and filename are all asked for."""
    return _memoized("params", part, header, _read_params)


def _read_params(part: Message, header: str) -> list[tuple[str, Any]] | None:
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
        params = holder.get_params(header=header, unquote=False)
    except Exception:
        return None
    return params if isinstance(params, list) else None


def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    """A header parameter, parsed leniently; never raises.

    The old (compat32) parameter parser reads the raw header: unlike the new one it keeps
    unquoted values with "=" or spaces in them (Outlook Express boundaries, filenames).
    """
    params = _params(part, header)
    if not params:
        return None
    # Message.get_param's choice: the first of that name, unquoted.
    lname = name.lower()
    value: Any = next((v for k, v in params if k.lower() == lname), None)
    if value is None:
        return None
    value = (value[0], value[1], unquote(value[2])) if isinstance(value, tuple) \
        else unquote(value)
    if isinstance(value, tuple):  # RFC 2231: (charset, language, text)
        try:
            # The parser has %-decoded the value into one character per byte already.
            charset, _, decoded = value
            return decode_text(str(decoded).encode("latin-1", "replace"), charset or None)
        except Exception:
            return str(value[2])
    return str(value).strip().strip('"')


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
_Found = TypeVar("_Found")


def _memoized(kind: str, msg: Message, name: str,
              read: Callable[[Message, str], _Found]) -> _Found:
    """``read(msg, name)``, read once per message and name while parse_message runs."""
    memo = _MEMO.get()
    if memo is None:
        return read(msg, name)
    key = (kind, msg, name)
    if key not in memo:
        memo[key] = read(msg, name)
    found: _Found = memo[key]
    return found


def _header(msg: Message, name: str) -> str | None:
    """The first `name` header as clean text, or None; never raises."""
    return _memoized("header", msg, name, _read_header)


def _get(msg: Message, name: str) -> Any:
    """``msg.get(name)``: the parsed header object (the same one each time while
    parse_message runs), or None."""
    return _memoized("get", msg, name, lambda m, n: m.get(n))


def _transfer_encoding(part: Message) -> str:
    """``str(part.get("content-transfer-encoding", "")).lower()``, get_payload's test."""
    value = _get(part, "content-transfer-encoding")
    return "" if value is None else str(value).lower()


# The fields whose values of this form the email package's header object gives back as
# they are (tests/email/test_fast_paths.py): a Message-ID of letters, digits, dots and the
# other characters of an atom, without blank space or comments. Read without making the
# header object (some 25 us for a Message-ID, different in every mail).
_ATOM_OR_DOT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_KEPT_AS_THEY_ARE = {"message-id": re.compile(f"<{_ATOM_OR_DOT}@{_ATOM_OR_DOT}>")}


# How the email package's policy takes the line breaks out of a header value it hands out
# (email.policy.linesep_splitter).
_LINE_BREAKS = re.compile(r"\n|\r")
# A Subject of UTF-8 "Q" encoded words ("_" for a space, "=XX" for a byte), as most mail
# clients write one with an umlaut in it, and of plain words (printable ASCII without "=?"),
# with blank space between them.
_Q_WORD = r"=\?(?i:utf-8)\?[qQ]\?((?:[!-<>@-~]|=[0-9A-Fa-f]{2})*)\?="
_PLAIN_WORD = r"((?:(?!=\?)[!-~])+)"
_WORD = rf"(?:{_Q_WORD}(?![!-~])|{_PLAIN_WORD})"
_Q_WORDS = re.compile(rf"{_WORD}(?:[ \t]+{_WORD})*")
_Q_PIECE = re.compile(rf"{_Q_WORD}(?![!-~])|{_PLAIN_WORD}|([ \t]+)")
_Q_BYTE = re.compile(rb"=([0-9A-Fa-f]{2})")


def _q_words_text(value: str) -> str | None:
    """The text of a Subject of UTF-8 "Q" encoded words and plain words as the email
    package's header object gives it (tests/email/test_fast_paths.py), decoded without
    making that object (some 25 us, for a Subject new in almost every mail): each encoded
    word decoded alone, the blank space between two of them dropped, the rest as it is.
    None where the object's answer could be another (a word that is not whole UTF-8
    characters, other syntax) or is not taken as it is (`_read_header` decodes the raw
    field itself where the text shows "=?" or U+FFFD)."""
    value = "".join(_LINE_BREAKS.split(value))
    if not _Q_WORDS.fullmatch(value):
        return None
    pieces: list[str] = []
    after_encoded = False  # the last word was an encoded one
    pending_space = ""  # blank space after it, dropped if another encoded word follows
    for piece in _Q_PIECE.finditer(value):
        encoded, plain, space = piece.groups()
        if space is not None:
            if after_encoded:
                pending_space = space
            else:
                pieces.append(space)
            continue
        if encoded is not None:
            data = _Q_BYTE.sub(lambda m: bytes.fromhex(m.group(1).decode()),
                               encoded.replace("_", " ").encode("ascii"))
            try:
                word = data.decode("utf-8")
            except UnicodeDecodeError:
                return None
        else:
            word = plain
            pieces.append(pending_space)
        pending_space = ""
        pieces.append(word)
        after_encoded = encoded is not None
    text = "".join(pieces)  # (no blank space at the end: the value ends with a word)
    return None if "=?" in text or "\ufffd" in text else text


def _read_header(msg: Message, name: str) -> str | None:
    raw = _raw_values(msg, name)
    if not raw:
        return None
    if len(raw[0]) > _MAX_HEADER:
        return _decode_raw_header(msg, raw[0][:_MAX_HEADER])
    if _SURROGATES.search(raw[0]):
        return _decode_raw_header(msg, raw[0])  # raw 8-bit bytes in the header
    lname = name.lower()
    kept = _KEPT_AS_THEY_ARE.get(lname)
    if kept is not None and kept.fullmatch(raw[0]):
        return _clean_header_text(raw[0])
    if lname == "subject" and "=?" in raw[0] and (text := _q_words_text(raw[0])) is not None:
        return _clean_header_text(text)
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
    return _memoized("addresses", msg, name, _read_addresses)


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
    """(when, the Date field as text), as the email package's header object gives them."""
    quick = _readable_date(msg)
    if quick is not None:
        return quick
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


def _readable_date(msg: Message) -> tuple[datetime, str] | None:
    """`_date` of a Date field that parsedate reads, without the header object: its
    datetime is parsedate's, and its text that datetime formatted again, which the header
    object then parses once more into a token tree that nothing here reads (most of the
    30 us it costs, for a Date different in every mail). None where the header object's
    answer could be another: no Date, raw 8-bit bytes, a date parsedate cannot read."""
    raw = _raw_values(msg, "date")
    if not raw or len(raw[0]) > _MAX_HEADER or _SURROGATES.search(raw[0]):
        return None
    try:
        value = parsedate_to_datetime("".join(_LINE_BREAKS.split(raw[0])))
        text = _clean_header_text(format_datetime(value))
    except Exception:
        return None
    if not text:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # "-0000": UTC, origin unknown
    return value, text


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
