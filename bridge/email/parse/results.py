"""What the parser hands back: `ParsedMail` with its `Attachment`, `Bounce` and
`ForwardedMessage` parts, and `MalformedMail`, the only exception `parse_message` raises (for
input that is not a mail at all). Plain data classes that every other module of the parser may
import; they import nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


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
    # (A memoryview where a big attachment was decoded in pieces: into the mail itself
    # (parse_message(consume=True) of a bytearray), keeping the mail's buffer alive, or from
    # a spooled mail's file into a buffer of its own. Bytes-like.)
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
