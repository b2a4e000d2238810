"""`parse_message`, the top of the parser: the bytes of a mail parsed into a message tree, its
headers read, its MIME tree walked, automatic replies and bounces recognised, and the new
part of a reply split from quotes and signature in plain text and HTML alike, all of it put
together as a `ParsedMail`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from email.message import EmailMessage, Message

from bridge.email.parse.automatic import (
    _ADDRESS,
    _BOUNCE_SUBJECT,
    _DAEMON_LOCALPART,
    _DELAY_WORDS,
    _RETURNED_MARKER,
    _SMTP_REPLY,
    _STATUS_CODE,
    _is_daemon,
    _is_null_return_path,
    detect_auto_reply,
)
from bridge.email.parse.headers import (
    _MEMO,
    _addresses,
    _all_headers,
    _date,
    _header,
    _msgid,
    _msgid_list,
    _param,
    strip_subject_prefixes,
)
from bridge.email.parse.html_reply import _squash, split_html_reply
from bridge.email.parse.mime import _append_forwards, _append_forwards_html, _Collected, _walk
from bridge.email.parse.parts import _content_type
from bridge.email.parse.raw import CONSUME, MailFile, _parse_bytes
from bridge.email.parse.reply import ReplySplit, split_reply
from bridge.email.parse.results import Attachment, Bounce, MalformedMail, ParsedMail
from bridge.email.sanitize import html_to_text

log = logging.getLogger("bridge.email.parse")  # one logger for the whole parser


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


def parse_message(raw: bytes | bytearray | MailFile, consume: bool = False) -> ParsedMail:
    """Parse a raw RFC 5322 message; raises only `MalformedMail`.

    With ``consume``, the caller gives up ``raw`` (a bytearray) to the parse: big base64
    attachments are decoded into its own bytes (raw.decode_in_place), so a 20 MB attachment
    costs no memory next to the mail, and their ``data`` are views into it. ``raw`` is
    not a copy of the mail any more afterwards (its header block still is).

    A `MailFile` (a big mail in a temp file) is read in pieces: its big attachments are
    decoded from the file into buffers of their own size, and the mail is not read into
    memory whole (raw._parse_file). Where the file cannot be read, the result may be a
    `MalformedMail` too: the caller must ask the file whether a read failed.
    """
    if not isinstance(raw, bytes | bytearray | memoryview | MailFile):
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
    consuming = CONSUME.set(consume)
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
        CONSUME.reset(consuming)


def _parse(msg: EmailMessage) -> ParsedMail:
    subject = _header(msg, "subject") or ""
    topic, is_forward = strip_subject_prefixes(subject)
    senders = _addresses(msg, "from") or _addresses(msg, "sender")
    from_name, from_address = senders[0] if senders else ("", "")
    when, _ = _date(msg)

    ctx = _Collected()
    _walk(msg, ctx, frozenset({"plain", "html"}))

    # (A part counts when it is not all blank space: isspace() stops at the first other
    # character, where strip() copies the whole text.)
    plain = "\n\n".join(t.strip("\n") for t in ctx.plain if t and not t.isspace()) \
        if ctx.plain else None
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
        source = html_to_text(structural_html or "")
        split = split_reply(source)
        if split.signature and _is_short_closing(split.signature):
            split = _with_closing(split, source)
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


_CLOSING_MAX_CHARS = 40
_NAME_LINE = re.compile(r"[^\W\d_][\w.'\u2019 -]{0,38}")


def _is_short_closing(signature: str) -> bool:
    """Whether what the splitter took for a signature is only a closing greeting ending the
    text: "Gruß, Bob", "Viele Grüße", "Best, Ann", or such a line and a name below it. An
    HTML-only mail has no "-- " to mark a real signature block (name, office, phone), and
    a greeting is part of what its writer said."""
    lines = [line.strip() for line in signature.split("\n") if line.strip()]
    if not lines or len(lines) > 2 or lines[0].lstrip("> ") in ("--", "__"):
        return False
    if any(len(line) > _CLOSING_MAX_CHARS for line in lines):
        return False
    # A second line is a name (at most four words, no digits, addresses or "Tel.:").
    return len(lines) == 1 or (_NAME_LINE.fullmatch(lines[1]) is not None
                               and len(lines[1].split()) <= 4)


def _with_closing(split: ReplySplit, source: str) -> ReplySplit:
    """`split` with its closing greeting back in the text, spaced as written."""
    assert split.signature is not None
    start = source.find(split.text)
    end = source.find(split.signature, start + len(split.text)) if start >= 0 else -1
    if end >= 0:
        text = source[start:end + len(split.signature)]
    else:
        text = f"{split.text}\n\n{split.signature}"
    return dataclasses.replace(split, text=text, signature=None)


def _last_line(text: str | None) -> str | None:
    return _first_line("\n".join(reversed((text or "").split("\n"))))


def _shows_line(html: str, line: str | None) -> bool:
    needle = _squash(line or "")[:24]
    return len(needle) >= 8 and needle in _squash(html_to_text(html))
