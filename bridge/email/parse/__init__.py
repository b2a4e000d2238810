"""Inbound mail, parsed: a raw RFC 5322 message becomes what the bridge posts to a room.

Pure functions only (no I/O but reading a big mail from the temp file it was spooled to):
`parse_message` takes the bytes an MTA handed us and returns a `ParsedMail` with the *new*
part of the message (quotes and signatures split off into
`quoted_text`, so nothing is lost), the HTML of that new part (not yet sanitised: the
connector first uploads inline images, then calls `sanitize_html` with the ``cid:`` map),
attachments, forwarded messages, calendar invitations, and whether the mail is an automatic
reply or a bounce, which must never be posted as chat.

Mail in the wild is broken in every way a parser can imagine, so the rule here is: parse what
can be parsed, degrade the rest, and never raise anything but `MalformedMail`, which is kept
for input that is not a mail at all.

Quote stripping is heuristic. The plain-text patterns (multi-language "On … wrote:" lines,
Outlook "From:/Sent:" blocks, sign-offs) come from mail-parser-reply; on top of them the
parser knows separator lines ("-----Ursprüngliche Nachricht-----"), attribution lines that
open a trailing ``>`` quote block, bottom-posted replies, and the HTML quote containers of
Gmail, Outlook, Thunderbird and Apple Mail.

The modules, each importing only modules further down this list: message.py
(`parse_message`, which puts it all together), mime.py (walking the MIME tree), automatic.py
(auto-replies and delivery status notifications), parts.py (reading one MIME part), raw.py
(from bytes to the email package's message tree), html_reply.py and reply.py (quotes and
signatures split off), calendar.py (invitations), flowed.py (format=flowed), headers.py
(header fields), charsets.py (decoding text) and results.py (what the parser returns).
"""

from bridge.email.parse.automatic import detect_auto_reply
from bridge.email.parse.calendar import calendar_summary
from bridge.email.parse.charsets import decode_text
from bridge.email.parse.flowed import unflow
from bridge.email.parse.headers import strip_subject_prefixes
from bridge.email.parse.html_reply import split_html_reply
from bridge.email.parse.message import parse_message
from bridge.email.parse.reply import ReplySplit, split_reply
from bridge.email.parse.results import (
    Attachment,
    Bounce,
    ForwardedMessage,
    MalformedMail,
    ParsedMail,
)

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
