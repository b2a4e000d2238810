"""Walking the MIME tree of a mail (`_walk`) and collecting in a `_Collected` what the mail holds:
the body text (plain and HTML, the right alternatives chosen), attachments and inline images,
calendar invitations, forwarded messages (walked in turn) and the fields of delivery status
reports; signatures and machine-readable report parts are left out.
"""

from __future__ import annotations

import contextlib
import html as html_lib
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser

from bridge.email.parse.automatic import _Dsn, _parse_delivery_status
from bridge.email.parse.calendar import calendar_summary
from bridge.email.parse.flowed import unflow
from bridge.email.parse.headers import _POLICY, _addresses, _date, _header, _msgid, _param
from bridge.email.parse.parts import (
    _children,
    _content_id,
    _content_type,
    _disposition,
    _filename,
    _has_filename,
    _part_bytes,
    _part_text,
    _safe_filename,
)
from bridge.email.parse.raw import _materialize
from bridge.email.parse.results import Attachment, ForwardedMessage
from bridge.email.sanitize import html_to_text

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


def _attach(part: Message, ctx: _Collected, inline: bool | None = None) -> None:
    mimetype = _content_type(part)
    data = _part_bytes(part)
    disposition = _disposition(part)
    content_id = _content_id(part)
    if inline is None:
        inline = disposition == "inline" and content_id is not None
    ctx.attachments.append(Attachment(filename=_filename(part, mimetype), mimetype=mimetype,
                                      data=data, content_id=content_id, inline=inline))


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
    if ctx.forward_depth == 0:
        # The forwarded mail itself as a file too: the rendering above shows its text, the
        # .eml keeps its own headers, its HTML and every attachment as they were. (A
        # forward within a forward is inside that file already.)
        ctx.attachments.append(_forwarded_file(part, inner, _header(inner, "subject") or ""))
    ctx.attachments.extend(sub.attachments)
    ctx.calendars.extend(sub.calendars)


# Headers written exactly as they came (no refolding): the file is the forwarded mail.
_EML_POLICY = _POLICY.clone(refold_source="none", max_line_length=0)


def _forwarded_file(part: Message, inner: Message, subject: str) -> Attachment:
    name = _param(part, "filename", "content-disposition") or _param(part, "name")
    filename = _filename(part, "message/rfc822") if name else \
        (_safe_filename(subject)[:80].strip() or "forwarded message") + ".eml"
    if not filename.lower().endswith(".eml"):
        filename += ".eml"
    _materialize(inner)
    try:
        data = inner.as_bytes(policy=_EML_POLICY)
    except UnicodeEncodeError:
        # A broken multipart (no boundary found) keeps its body as text that the parser
        # already decoded with replacement characters, which the bytes generator cannot
        # write as ASCII. The forwarded mail is still attached: written as text, in UTF-8.
        data = inner.as_string(policy=_EML_POLICY).encode("utf-8", "surrogateescape")
    return Attachment(filename=filename, mimetype="message/rfc822", data=data)


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
