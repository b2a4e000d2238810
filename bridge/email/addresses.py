"""Addresses, tokens, Message-IDs and header text for the email connector (pure, no I/O).

Address scheme (all lowercase, because some MTAs lowercase local parts):

* room:         ``<localpart>@<domain>``                          post a new topic to the room
* reply:        ``<localpart>+<thread key><tag>@<domain>``         answer in one Matrix thread
* unsubscribe:  ``<localpart>+unsubscribe-<tag>@<domain>``         unsubscribe one subscriber

``tag`` is an HMAC-SHA256 over the room localpart and the thread key (reply) or the subscriber
address (unsubscribe), truncated to 10 bytes and written as 16 lowercase base32 characters. The
localpart is part of the MAC, so a token taken from one room's mail is worthless for another
room; a purpose label is part of it too, so a reply tag can never pass as an unsubscribe tag.

Header text that comes from Matrix users (display names, room names, subjects) is cleaned here
so that it can neither add header lines nor make a name look like something it is not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_ROOM_LOCALPART_LENGTH",
    "THREAD_KEY_LENGTH",
    "ForgedAddress",
    "Recipient",
    "clean_display_name",
    "clean_header_text",
    "is_our_message_id",
    "is_valid_room_localpart",
    "make_reply_address",
    "make_unsubscribe_address",
    "message_id_for",
    "new_topic_subject",
    "normalize_address",
    "normalize_domain",
    "normalize_localpart",
    "parse_recipient",
    "reply_subject",
    "room_address",
    "thread_key_for",
    "verify_unsubscribe",
]

# RFC 5321 4.5.3.1.1: a local part has at most 64 octets.
MAX_LOCALPART_OCTETS = 64
# 10 bytes of HMAC = 80 bits: far beyond guessing over SMTP, and exactly 16 base32 characters.
TAG_BYTES = 10
TAG_CHARS = 16
THREAD_KEY_LENGTH = 12
UNSUBSCRIBE_MARKER = "unsubscribe-"
# The longest suffix we add is "+" + 12-char thread key + 16-char tag = 29 characters, the same
# as "+unsubscribe-" + 16-char tag; what is left of the 64 octets belongs to the room.
MAX_ROOM_LOCALPART_LENGTH = MAX_LOCALPART_OCTETS - max(
    1 + THREAD_KEY_LENGTH + TAG_CHARS, 1 + len(UNSUBSCRIBE_MARKER) + TAG_CHARS
)
MIN_SECRET_BYTES = 16
DISPLAY_NAME_MAX = 64
SUBJECT_MAX = 200

# A dot-atom (RFC 5322) without "+", which we reserve as the tag separator.
_ROOM_LOCALPART_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_THREAD_KEY_RE = re.compile(rf"[a-z0-9]{{1,{THREAD_KEY_LENGTH}}}")
_TAG_RE = re.compile(rf"[a-z2-7]{{{TAG_CHARS}}}")
_DOMAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*")
# Printable ASCII without specials that would end or break an addr-spec, and (RFC 6531,
# sent with SMTPUTF8) any non-ASCII character, checked further by _is_utf8_atext.
_SUBSCRIBER_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\u0080-\U0010ffff-]+")
_MESSAGE_ID_PREFIX = "matrix-"
_MESSAGE_ID_HASH_CHARS = 26  # 130 bits: collisions are not a concern


class ForgedAddress(Exception):
    """An address at our domain carries a tag that our secret did not produce."""


@dataclass(frozen=True)
class Recipient:
    """What an address at the bridge's mail domain means.

    ``localpart`` is the room's (lowercase) localpart. ``thread_key`` is the verified thread key
    for kind "reply"; for kind "unsubscribe" it carries the unsubscribe token instead, which is
    checked with :func:`verify_unsubscribe` against the mail's From address (the subscriber is
    not in the address, so ``subscriber`` stays None; the connector may fill it in with
    ``dataclasses.replace`` once verified). For kind "room" both are None.
    """

    localpart: str
    thread_key: str | None
    kind: Literal["room", "reply", "unsubscribe"]
    subscriber: str | None


# --- header text -----------------------------------------------------------------------------

# Quote marks that delimit (or visually fake) an RFC 5322 quoted-string: " and the typographic
# double quotes, guillemets, and the opening single quotes. Apostrophes (' and U+2019) stay:
# they are part of many names (O'Brien) and cannot end a quoted-string.
_DOUBLE_QUOTES = frozenset(
    '"'
    "\u201c\u201d\u201e\u201f"  # left/right/low-9/reversed double quotation marks
    "\u00ab\u00bb\u2039\u203a"  # double and single guillemets
    "\u301d\u301e\u301f"  # CJK double prime quotation marks
    "\u2018\u201a\u201b"  # left, low-9 and reversed single quotation marks
    "\uff02"  # fullwidth quotation mark
)
# Angle brackets and their lookalikes, which could make a name look like "<someone@else>".
_ANGLE_BRACKETS = frozenset(
    "<>"
    "\u2329\u232a\u3008\u3009\u27e8\u27e9"  # angle brackets (technical, CJK, math)
    "\u300a\u300b\u276e\u276f"  # double angle brackets, heavy angle quotation ornaments
    "\uff1c\uff1e\ufe64\ufe65"  # fullwidth and small less-than/greater-than signs
)
# Invisible characters that are not in category Cf (which we drop wholesale): fillers that
# render as nothing and would let a name look empty or pad it.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u3164\uffa0")
# Cc: controls (CR, LF, NUL, ...); Cf: format characters, i.e. bidi controls (U+202A-202E,
# U+2066-2069, U+200E/200F, U+061C), zero-width characters, soft hyphen, BOM, tag characters;
# Cs: lone surrogates, which cannot even be encoded.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})
# An RFC 2047 encoded-word starts with "=?". The email package decodes encoded-words it finds in
# header values it is given (CPython turns "=?utf-8?b?DQpCY2M6IHhAeQ==?=" into a real
# "\r\nBcc: x@y" line), so user text must never contain that opener.
_ENCODED_WORD_OPENER = "=?"


def _strip_invisible(text: str, *, drop: frozenset[str] = frozenset()) -> str:
    """Whitespace of any kind becomes one space; controls, format and invisible chars go."""
    out: list[str] = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif (
            unicodedata.category(ch) in _DROPPED_CATEGORIES
            or ch in _INVISIBLE
            or ch in drop
        ):
            continue
        else:
            out.append(ch)
    # Collapsing only after the removal, so "a\u200b\nb" ends up as "a b", not "a  b".
    collapsed = " ".join("".join(out).split())
    # Replace after removal and collapsing: "=\u200b?" must not become an opener afterwards.
    return collapsed.replace(_ENCODED_WORD_OPENER, "= ?")


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"


def clean_header_text(text: str | None, max_length: int = SUBJECT_MAX) -> str:
    """Make user text (subject, room name) safe for one header line.

    Line breaks and other whitespace become single spaces, control/bidi/zero-width characters
    are dropped, RFC 2047 encoded-word openers are defused, and the result is cut to
    ``max_length`` characters (ending in "…"). Non-ASCII text stays: the email package encodes
    it as RFC 2047 encoded-words when it writes the header.
    """
    if not text:
        return ""
    return _truncate(_strip_invisible(unicodedata.normalize("NFC", text)), max_length)


def clean_display_name(name: str | None, fallback: str) -> str:
    """Make a Matrix display name safe and honest as the display name of a From header.

    Besides what :func:`clean_header_text` does, this drops double quotes and angle brackets
    together with their typographic and fullwidth lookalikes, and limits the name to 64
    characters. An empty result falls back to ``fallback`` (cleaned the same way; "" if that
    is empty too). Cleaning is idempotent, so cleaning twice (connector, then build_email)
    changes nothing. (No NFKC: it would rewrite names, e.g. the "…" we append becomes "...".)

    A name that looks like an address ("boss@example.org") is kept: the email package quotes
    any display name with specials ('"boss@example.org" <room@bridge>'), and since quotes and
    angle brackets are gone, the name can neither close the quoted-string nor show a second
    "<address>". Whether a mail client shows the real address next to it is up to the client.
    """
    for candidate in (name, fallback):
        if candidate:
            cleaned = _strip_invisible(
                unicodedata.normalize("NFC", candidate), drop=_DOUBLE_QUOTES | _ANGLE_BRACKETS
            )
            if cleaned:
                return _truncate(cleaned, DISPLAY_NAME_MAX)
    return ""


# --- subjects --------------------------------------------------------------------------------

# Reply and forward prefixes of English and German mail clients: Re, AW (Antwort), Antw,
# WG (Weitergeleitet), Fw, Fwd, Wtrlt; with counters some clients add ("Re[2]:", "Re(2):",
# "Re^2:") and the space before the colon that French-style clients put there.
_PREFIX_RE = re.compile(
    r"^(?:\s*(?:re|aw|antw|antwort|wg|wtr|wtrlt|fw|fwd|weitergeleitet)"
    r"\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:\uff1a]\s*)+",  # ":" or fullwidth colon
    re.IGNORECASE,
)
# A list tag such as our own "[Room]" in front of the topic.
_TAG_PREFIX_RE = re.compile(r"^(\[[^\[\]]{1,80}\])\s*(.*)$")


def _strip_reply_prefixes(subject: str) -> str:
    subject = _PREFIX_RE.sub("", subject)
    # "AW: [Bauamt] AW: Frage": prefixes may also sit behind the list tag.
    match = _TAG_PREFIX_RE.match(subject)
    if match:
        rest = _PREFIX_RE.sub("", match.group(2))
        subject = f"{match.group(1)} {rest}".rstrip()
    return subject.strip()


def reply_subject(topic: str) -> str:
    """Return "Re: <topic>", with any existing Re/AW/WG/Fwd/... prefixes removed first."""
    topic = _strip_reply_prefixes(clean_header_text(topic))
    return f"Re: {topic or '(no subject)'}"


def new_topic_subject(room_name: str, first_line: str | None) -> str:
    """Subject for the first mail of a thread: "[Room] first line of the message".

    The room tag lets mail users sort and filter by room even in clients that ignore List-Id.
    The first line is cut at a word boundary to keep the subject readable in mail lists.
    """
    # Brackets inside the room name would end the tag early.
    room = clean_header_text(room_name, 60).replace("[", "(").replace("]", ")")
    line = ""
    if first_line:
        for candidate in first_line.splitlines():
            line = clean_header_text(candidate, 10_000)
            if line:
                break
    if len(line) > 70:
        cut = line[:69]
        space = cut.rfind(" ")
        line = (cut[:space] if space > 40 else cut).rstrip() + "…"
    if not line:
        line = "New message"
    return f"[{room}] {line}" if room else line


# --- room addresses and tokens ---------------------------------------------------------------


def normalize_domain(domain: str) -> str:
    """Lowercase, without trailing dot, IDNA (punycode) for non-ASCII; ValueError if invalid."""
    value = domain.strip().rstrip(".").lower()
    if not value.isascii():
        try:
            value = value.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"invalid mail domain: {domain!r}") from exc
    if len(value) > 253 or not _DOMAIN_RE.fullmatch(value):
        raise ValueError(f"invalid mail domain: {domain!r}")
    return value


def is_valid_room_localpart(localpart: str) -> bool:
    """Whether ``localpart`` (any case) can name a room: a dot-atom of [a-z0-9_-] without "+",
    short enough that reply and unsubscribe addresses still fit in 64 octets."""
    value = localpart.lower()
    return (
        value.isascii()
        and len(value) <= MAX_ROOM_LOCALPART_LENGTH
        and _ROOM_LOCALPART_RE.fullmatch(value) is not None
    )


def normalize_localpart(localpart: str) -> str:
    """The room localpart as used in addresses and MACs: lowercase. ValueError if invalid.

    Room localparts are case-insensitive (MTAs may lowercase them); store them lowercase.
    """
    if not is_valid_room_localpart(localpart):
        raise ValueError(
            f"invalid room localpart {localpart!r}: use 1-{MAX_ROOM_LOCALPART_LENGTH} "
            "characters a-z 0-9 . _ - (no '+', no leading/trailing/double dots)"
        )
    return localpart.lower()


def _is_utf8_atext(char: str) -> bool:
    """A non-ASCII character that may stand in a UTF-8 local part: no control, format,
    separator (spaces) or unassigned character."""
    return unicodedata.category(char)[0] not in ("C", "Z")


def normalize_address(address: str) -> str:
    """A subscriber's address in the form used for MACs: lowercase, IDNA domain.

    Accepts "user@example.org" or "<user@example.org>". Local parts are compared
    case-insensitively (as every mail system in practice does). A non-ASCII local part
    ("jürgen@…", RFC 6531) is valid (NFC); mail to it needs a relay offering SMTPUTF8.
    ValueError if malformed.
    """
    value = address.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    local, at, domain = value.rpartition("@")
    local = unicodedata.normalize("NFC", local)
    if (
        not at
        or not local
        or len(local.encode("utf-8")) > MAX_LOCALPART_OCTETS
        or not _SUBSCRIBER_LOCAL_RE.fullmatch(local)
        or not all(char.isascii() or _is_utf8_atext(char) for char in local)
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
    ):
        raise ValueError(f"invalid mail address: {address!r}")
    return f"{local.lower()}@{normalize_domain(domain)}"


def room_address(localpart: str, domain: str) -> str:
    """The room's own address, ``<localpart>@<domain>``."""
    return f"{normalize_localpart(localpart)}@{normalize_domain(domain)}"


def _check_secret(secret: bytes) -> None:
    # An empty or short secret would make every token forgeable; fail loudly instead.
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the address secret must have at least {MIN_SECRET_BYTES} bytes")


def _tag(secret: bytes, purpose: str, *fields: str) -> str:
    """Truncated HMAC-SHA256 over length-prefixed fields, as lowercase base32 (16 chars)."""
    _check_secret(secret)
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    # Length prefixes make the encoding unambiguous ("ab"+"c" differs from "a"+"bc").
    for field in (purpose, *fields):
        data = field.encode("utf-8")
        mac.update(len(data).to_bytes(4, "big"))
        mac.update(data)
    return base64.b32encode(mac.digest()[:TAG_BYTES]).decode("ascii").lower()


def thread_key_for(event_id: str) -> str:
    """A short, stable key for a Matrix thread root: 12 lowercase base32 chars of a SHA-256.

    60 bits: unique enough for the threads of a room. Not secret - the reply address's HMAC
    is what makes it unforgeable.
    """
    digest = hashlib.sha256(b"thread-key\x00" + event_id.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:THREAD_KEY_LENGTH]


def make_reply_address(localpart: str, domain: str, thread_key: str, secret: bytes) -> str:
    """``<localpart>+<thread key><tag>@<domain>``: mail to it goes to that thread of the room.

    ``thread_key`` must be 1-12 characters [a-z0-9] (what :func:`thread_key_for` returns), so
    the tag can be found as the last 16 characters and case changes by MTAs do no harm.
    """
    local = normalize_localpart(localpart)
    if not _THREAD_KEY_RE.fullmatch(thread_key):
        raise ValueError(f"invalid thread key {thread_key!r}: use 1-12 characters a-z 0-9")
    tag = _tag(secret, "reply", local, thread_key)
    return f"{local}+{thread_key}{tag}@{normalize_domain(domain)}"


def make_unsubscribe_address(localpart: str, domain: str, subscriber: str, secret: bytes) -> str:
    """``<localpart>+unsubscribe-<tag>@<domain>``, valid only for mail from ``subscriber``."""
    local = normalize_localpart(localpart)
    tag = _tag(secret, "unsubscribe", local, normalize_address(subscriber))
    return f"{local}+{UNSUBSCRIBE_MARKER}{tag}@{normalize_domain(domain)}"


def verify_unsubscribe(localpart: str, subscriber: str, token: str, secret: bytes) -> bool:
    """Whether ``token`` (``Recipient.thread_key`` of an "unsubscribe" recipient) was made for
    ``subscriber`` in this room.

    ``subscriber`` is the From address of the unsubscribe mail; a mail forwarded to someone
    else therefore cannot unsubscribe the original recipient. Malformed input gives False.
    """
    _check_secret(secret)
    try:
        local, address = normalize_localpart(localpart), normalize_address(subscriber)
    except ValueError:
        return False
    expected = _tag(secret, "unsubscribe", local, address)
    # compare_digest needs ASCII str; a non-ASCII token cannot be ours anyway.
    return token.isascii() and hmac.compare_digest(expected, token.lower())


def parse_recipient(address: str, domain: str, secret: bytes) -> Recipient | None:
    """What an envelope/header recipient address means for the bridge.

    Returns None when the address is not one of ours at all (other domain, not a valid room
    localpart, quoted local part, ...). Raises :class:`ForgedAddress` when it has a tag that
    does not verify (tampered, made up, or taken from another room). The comparison is
    case-insensitive throughout; ``address`` is a bare addr-spec, optionally in <...>.
    """
    _check_secret(secret)
    value = address.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    local, at, rcpt_domain = value.rpartition("@")
    if not at:
        return None
    ours = normalize_domain(domain)  # a bad configured domain is an error, not "not ours"
    try:
        if normalize_domain(rcpt_domain) != ours:
            return None
    except ValueError:
        return None
    local = local.lower()
    base, plus, detail = local.partition("+")
    if not is_valid_room_localpart(base):
        return None
    if not plus:
        return Recipient(localpart=base, thread_key=None, kind="room", subscriber=None)

    if detail.startswith(UNSUBSCRIBE_MARKER):
        token = detail[len(UNSUBSCRIBE_MARKER):]
        # Only the form can be checked here: the tag is bound to the sender's address.
        if not _TAG_RE.fullmatch(token):
            raise ForgedAddress(f"malformed unsubscribe token in {address!r}")
        return Recipient(localpart=base, thread_key=token, kind="unsubscribe", subscriber=None)

    thread_key, tag = detail[:-TAG_CHARS], detail[-TAG_CHARS:]
    if not _THREAD_KEY_RE.fullmatch(thread_key) or not _TAG_RE.fullmatch(tag):
        raise ForgedAddress(f"malformed reply token in {address!r}")
    if not hmac.compare_digest(_tag(secret, "reply", base, thread_key), tag):
        raise ForgedAddress(f"reply token in {address!r} does not verify")
    return Recipient(localpart=base, thread_key=thread_key, kind="reply", subscriber=None)


# --- Message-IDs -----------------------------------------------------------------------------


def message_id_for(event_id: str, domain: str) -> str:
    """``<matrix-<26 base32 chars of SHA-256(event id)>@<domain>>``.

    The same event always gets the same Message-ID, so a retried delivery (or the same message
    sent to several subscribers) is recognisably one message, and replies can be mapped back to
    the event by recomputing or storing the ID.
    """
    digest = hashlib.sha256(b"message-id\x00" + event_id.encode("utf-8")).digest()
    token = base64.b32encode(digest).decode("ascii").lower()[:_MESSAGE_ID_HASH_CHARS]
    return f"<{_MESSAGE_ID_PREFIX}{token}@{normalize_domain(domain)}>"


_OUR_MESSAGE_ID_RE = re.compile(
    rf"{re.escape(_MESSAGE_ID_PREFIX)}[a-z2-7]{{{_MESSAGE_ID_HASH_CHARS}}}@([^<>@\s]+)"
)


def is_our_message_id(message_id: str, domain: str) -> bool:
    """Whether ``message_id`` has the form :func:`message_id_for` makes, at ``domain``.

    For loop detection: a mail whose own Message-ID is ours is one of our mails coming back
    (auto-forward, bounce-as-new-mail), not something a person wrote.
    """
    value = message_id.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    match = _OUR_MESSAGE_ID_RE.fullmatch(value)
    if not match:
        return False
    try:
        return normalize_domain(match.group(1)) == normalize_domain(domain)
    except ValueError:
        return False
