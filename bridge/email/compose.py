"""Turn a Matrix message into the email one subscriber receives (pure, no I/O).

The message is built with the standard ``email`` package under the SMTP policy (CRLF line ends,
lines folded at 78). Everything is 7-bit clean: headers use RFC 2047/2231 for non-ASCII text,
text parts are 7bit when they are short-lined ASCII and quoted-printable otherwise, files are
base64. That way no relay has to down-convert 8-bit content (which breaks DKIM body hashes)
and no 8BITMIME/SMTPUTF8 support is needed anywhere on the way.

Text from Matrix users (sender name, subject, room name, file names) is cleaned before it goes
into a header, so it cannot add header lines or pose as an address; text from the bridge's own
config and database (addresses, Message-IDs, URLs) is validated and raises ValueError when it
is malformed, because sending such a mail would be a bug.
"""

from __future__ import annotations

import base64
import copy
import html as html_lib
import io
import re
import secrets
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime
from typing import Any

import lxml.etree
import lxml.html
import nh3
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_engine import Inscriptis
from inscriptis.model.config import ParserConfig

from bridge.email.addresses import (
    clean_display_name,
    clean_header_text,
    normalize_address,
    normalize_domain,
    normalize_localpart,
)
from bridge.email.html_allow_lists import (
    DROP_WITH_CONTENT_TO_MAIL,
    HEX_COLOR,
    LINK_SCHEMES,
    MAIL_ATTRIBUTES,
    MATRIX_TAGS,
)
from bridge.email.parse.headers import _HeaderClasses
from bridge.email.text import text_to_linked_html, tidy_text

__all__ = ["LinkedFile", "MailTemplate", "OutgoingAttachment", "build_email", "flatten",
           "matrix_html_to_text"]

# SMTP policy: CRLF line ends and folding at 78, so as_bytes() is ready for the wire. Its
# header registry makes each header class and object once, as the parser's does: the email
# package's own builds a class with type() for every header it sets, which was a third of
# the CPU time of a mail to a subscriber. It keeps few header objects (each holds its
# parse tree, kilobytes): those of one message's copies recur (From, Reply-To, Subject), a
# subscriber's own (To) does not.
MAIL_POLICY = email_policy.SMTP.clone(header_factory=_HeaderClasses(max_kept=64))
FALLBACK_SENDER_NAME = "Matrix"
# Keep the References header bounded on long threads: the root plus the most recent ones
# (what RFC 5322 3.6.4 suggests and what mail clients do themselves).
MAX_REFERENCES = 20
MAX_FILENAME_LENGTH = 120


@dataclass
class OutgoingAttachment:
    """A file sent along as a MIME part."""

    filename: str
    mimetype: str
    data: bytes


@dataclass
class LinkedFile:
    """A file above the attachment size limit: the mail carries a link instead."""

    filename: str
    url: str
    size: int | None


# --- small helpers ---------------------------------------------------------------------------

# Characters lxml cannot hold (C0 controls except tab/LF/CR, surrogates, U+FFFE/U+FFFF) and
# the DEL/C1 controls that HTML does not allow either.
_NOT_XML_CHAR_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# In body text: controls other than tab and line feed (NUL, DEL, C1) have no business in a
# mail body (RFC 5322 forbids NUL); lone surrogates cannot even be encoded.
_BODY_JUNK_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_LINE_BREAK_RE = re.compile("\r\n|[\r\x85\u2028\u2029]")


def _clean_body_text(text: str) -> str:
    """Line feeds only, no control characters; the policy writes CRLF itself."""
    text = _LINE_BREAK_RE.sub("\n", text)
    # \x0b, \x0c and \x1c-\x1e count as line breaks for str.splitlines(), which the email
    # package uses on the body: drop them so they cannot split lines unexpectedly.
    return _BODY_JUNK_RE.sub("", text)


def _cte(body: str) -> str:
    # 7bit only when it is already SMTP-clean and within the recommended 78 characters per line;
    # quoted-printable otherwise, which keeps German text readable in the raw source.
    if body.isascii() and all(len(line) <= 78 for line in body.split("\n")):
        return "7bit"
    return "quoted-printable"


def _format_size(size: int) -> str:
    """Decimal units, as mail programs and file managers mostly show them: "12.3 MB"."""
    if size < 1000:
        return f"{size} bytes"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _clean_filename(name: str) -> str:
    """A file name safe to show and to put in Content-Disposition.

    Drops any path, control and bidi characters (an RLO can make "invoice\u202egpj.exe" look
    like "invoiceexe.jpg") and defuses encoded-word openers; keeps the extension when cutting.
    """
    name = re.split(r"[/\\]", name)[-1]
    # Trailing dots and spaces are dropped by Windows when saving; better not to rely on it.
    name = clean_header_text(name, 10_000).rstrip(" .")
    if not name:
        return "attachment"
    if len(name) > MAX_FILENAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: MAX_FILENAME_LENGTH - len(ext) - 2].rstrip() + "…." + ext
        else:
            name = name[: MAX_FILENAME_LENGTH - 1].rstrip() + "…"
    return name


_MIME_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_MIME_TYPE_RE = re.compile(rf"({_MIME_TOKEN})/({_MIME_TOKEN})")
_CHARSET_RE = re.compile(r"""charset\s*=\s*"?([A-Za-z0-9._:+-]{1,40})"?""", re.IGNORECASE)


def _mime_type(mimetype: str) -> tuple[str, str, dict[str, str]]:
    """(maintype, subtype, params) for an attachment; octet-stream when unusable.

    multipart/* and message/* cannot be sent as opaque base64 bytes (RFC 2046 forbids base64
    for them), so they go out as application/octet-stream with their file name.
    """
    essence, _, rest = mimetype.partition(";")
    match = _MIME_TYPE_RE.fullmatch(essence.strip().lower())
    if not match or match.group(1) in ("multipart", "message"):
        return "application", "octet-stream", {}
    params: dict[str, str] = {}
    charset = _CHARSET_RE.search(rest)
    if match.group(1) == "text" and charset:
        params["charset"] = charset.group(1)
    return match.group(1), match.group(2), params


_MSG_ID_RE = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")


def _msg_id(value: str | None) -> str | None:
    """A msg-id in angle brackets, or None if ``value`` is not one (brackets are added)."""
    if not value:
        return None
    value = value.strip()
    if not value.startswith("<"):
        value = f"<{value}>"
    return value if _MSG_ID_RE.fullmatch(value) and value.count("@") == 1 else None


def _header_address(address: str, what: str) -> Address:
    """An Address for To/Reply-To from a bare addr-spec; ValueError if it is not one.

    The local part keeps its case (only the receiving system may interpret it); a non-ASCII
    domain is written in IDNA form, which the email package would otherwise mangle into an
    encoded-word.
    """
    try:
        normalize_address(address)  # validation only
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    value = address.strip().removeprefix("<").removesuffix(">").strip()
    local, _, domain = value.rpartition("@")
    return Address(username=local, domain=normalize_domain(domain))


_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"


def _web_url(url: str, what: str) -> str:
    """An http(s) URL with anything unsafe in a header or <...> percent-encoded."""
    url = url.strip()
    if not re.match(r"https?://[^\s/]", url, re.IGNORECASE):
        raise ValueError(f"{what} must be an http(s) URL: {url!r}")
    try:
        return urllib.parse.quote(url, safe=_URL_SAFE)
    except UnicodeEncodeError:  # lone surrogates
        raise ValueError(f"{what} is not valid text: {url!r}") from None


# --- headers the email package cannot fold ---------------------------------------------------


class _PrefoldedHeader(str):
    """A header the email package writes exactly as folded here, at the given word boundaries.

    The policy treats a value with a ``name`` attribute as a finished header object and calls
    its ``fold`` (documented for EmailPolicy.header_store_parse/fold). We need that for headers
    it does not know: it folds those as unstructured text, turning a long Message-ID in
    References into an RFC 2047 encoded-word or encoding the opening quote of a List-Id phrase,
    both of which break the header for every reader.
    """

    name: str
    words: tuple[str, ...]

    def __new__(cls, name: str, words: Sequence[str]) -> _PrefoldedHeader:
        self = super().__new__(cls, " ".join(words))
        self.name = name
        self.words = tuple(words)
        return self

    def __getnewargs__(self) -> tuple[str, tuple[str, ...]]:  # type: ignore[override]
        # copy.deepcopy and pickle (a queue or a relay may do either) recreate it through
        # __new__, which needs the name and the words, not the joined string.
        return self.name, self.words

    def fold(self, *, policy: Policy) -> str:
        limit = policy.max_line_length or 78
        lines: list[str] = []
        line = f"{self.name}:"
        for index, word in enumerate(self.words):
            # Never split a word (a msg-id, an encoded-word); each is far below 998 octets.
            if index and len(line) + 1 + len(word) > limit:
                lines.append(line)
                line = ""
            line += " " + word
        lines.append(line)
        return policy.linesep.join(lines) + policy.linesep


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 base64 encoded-words of at most 72 characters, split between characters."""
    chunks: list[bytes] = []
    chunk = b""
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > 45:  # 45 bytes -> 60 base64 chars + 12 = 72 <= 75
            chunks.append(chunk)
            chunk = b""
        chunk += data
    if chunk:
        chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(c).decode('ascii')}?=" for c in chunks]


def _phrase_words(name: str) -> list[str]:
    """A display-name phrase: a quoted-string when ASCII, encoded-words otherwise.

    (An encoded-word may not appear inside a quoted-string, RFC 2047 5(3).)
    """
    if name.isascii():
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _encoded_words(name)


# --- Matrix HTML -----------------------------------------------------------------------------

_SAFE_LINK_RE = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
# Mentions ("pills") and permalinks: matrix.to links mean nothing to mail readers, their text
# (the display name) is what they should see.
_MATRIX_TO_RE = re.compile(r"https://matrix\.to/", re.IGNORECASE)


def _remove_keep_tail(node: Any) -> None:
    """Remove a node (element, comment, PI) but keep the text that follows it."""
    parent = node.getparent()
    if parent is None:
        return
    tail = node.tail
    previous = node.getprevious()
    parent.remove(node)
    if tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail


def _replace_with_text(node: Any, text: str) -> None:
    node.tail = text + (node.tail or "")
    _remove_keep_tail(node)


def _parse_matrix_html(source: str) -> Any:
    """Parse a formatted_body into a <div>, cleaned of what must not reach a mail."""
    source = _NOT_XML_CHAR_RE.sub("", source)
    try:
        root = lxml.html.fragment_fromstring(source, create_parent="div")
    except (lxml.etree.ParserError, lxml.etree.LxmlError, ValueError):
        # Only a doctype or similar: nothing to show.
        root = lxml.html.Element("div")
    for node in list(root.iter()):
        if node is root:
            continue
        if not isinstance(node.tag, str):  # comments (also Outlook's <!--[if mso]>), PIs
            _remove_keep_tail(node)
            continue
        tag = node.tag.lower()
        if tag in DROP_WITH_CONTENT_TO_MAIL:
            _remove_keep_tail(node)
            continue
        for attribute in list(node.attrib):
            if attribute.lower().startswith("on"):  # event handlers
                del node.attrib[attribute]
        if tag == "img":
            # Matrix images are mxc:// URLs no mail client can load: show the alt text, which
            # for custom emoji is ":shortcode:". A remote image becomes a link to it: a mail
            # client shown <img src=...> would fetch it for every subscriber (a tracker).
            alt = (node.get("alt") or node.get("title") or "").strip()
            src = (node.get("src") or "").strip()
            if re.match(r"https?://", src, re.IGNORECASE):
                link = lxml.html.Element("a", href=src)
                link.text = alt or src
                link.tail = node.tail
                node.getparent().replace(node, link)
            else:
                _replace_with_text(node, alt or "[image]")
        elif tag == "a":
            href = (node.get("href") or "").strip()
            if _MATRIX_TO_RE.match(href):
                node.drop_tag()
            elif href and not _SAFE_LINK_RE.match(href):
                del node.attrib["href"]
    return root


_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"].copy(), display_links=False)


def _render_text(element: Any) -> str:
    return str(Inscriptis(element, _TEXT_CONFIG).get_text())


def _same_link(label: str, href: str) -> bool:
    def bare(value: str) -> str:
        value = re.sub(r"^(?:https?://|mailto:)", "", value.strip(), flags=re.IGNORECASE)
        return value.split("?")[0].rstrip("/").lower() if value else value

    return bare(label) == bare(href)


def matrix_html_to_text(html: str) -> str:
    """A Matrix formatted_body as readable plain text (inscriptis, plus mail conventions).

    Mentions/pills and other matrix.to links become their text ("Name"); other links whose
    text is not the URL itself become "text <url>"; blockquotes become "> " quoted lines;
    code blocks keep their layout; images become their alt text; the reply fallback
    (<mx-reply>) is dropped.
    """
    root = _parse_matrix_html(html)
    for link in root.iter("a"):
        href = link.get("href")
        if href and not _same_link(link.text_content(), href):
            link.tail = f" <{href}>" + (link.tail or "")
    for pre in root.iter("pre"):
        # inscriptis does not pass white-space:pre on to children such as <code>, so flatten
        # code blocks to plain text.
        content = pre.text_content()
        for child in list(pre):
            pre.remove(child)
        pre.text = content
    # Innermost quotes first: a nested quote is already a "> " block when its parent is done.
    for quote in reversed(list(root.iter("blockquote"))):
        inner = _render_text(quote).strip("\n")
        block = lxml.html.Element("pre")
        block.text = "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
        block.tail = quote.tail
        quote.getparent().replace(quote, block)
    return tidy_text(_render_text(root))


# Inline styles only: Outlook (Word engine), Gmail and others drop <style> blocks or parts of
# them, and external stylesheets are not loaded at all.
_ELEMENT_STYLES = {
    "blockquote": "margin:0 0 0 4px;padding:0 0 0 10px;border-left:3px solid #cccccc;"
                  "color:#555555",
    "pre": "font-family:Consolas,'Courier New',monospace;font-size:13px;"
           "background-color:#f5f5f5;padding:8px;white-space:pre-wrap",
    "code": "font-family:Consolas,'Courier New',monospace;font-size:13px;"
            "background-color:#f5f5f5",
    "table": "border-collapse:collapse",
    "td": "border:1px solid #dddddd;padding:4px",
    "th": "border:1px solid #dddddd;padding:4px",
}


def _mail_attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if attribute in ("data-mx-color", "data-mx-bg-color"):
        return value if HEX_COLOR.fullmatch(value) else None
    if attribute in ("start", "colspan", "rowspan"):
        return value if value.strip().isdigit() and len(value.strip()) <= 4 else None
    if attribute == "href":
        return value if value.strip().lower().startswith(LINK_SCHEMES) else None
    if attribute == "src":  # kept only to become a link; mxc:// means nothing in a mail
        return value if value.strip().lower().startswith(("http:", "https:")) else None
    return value


def _allowed_html(html: str) -> str:
    return str(nh3.clean(
        _NOT_XML_CHAR_RE.sub("", html),
        tags=set(MATRIX_TAGS),
        clean_content_tags=set(DROP_WITH_CONTENT_TO_MAIL),
        attributes=MAIL_ATTRIBUTES,
        attribute_filter=_mail_attribute_filter,
        strip_comments=True,
        link_rel="noopener noreferrer",
        url_schemes={"http", "https", "mailto"},
        url_relative="deny",
    ))


def _matrix_html_for_email(html: str) -> str | None:
    """The Matrix HTML through the allow-list, re-serialised (so unbalanced tags cannot
    swallow our footer) and with Matrix-only attributes turned into inline styles mail
    clients understand (the only styles in it are ours); None when nothing visible is left
    (then the HTML part is made from the plain text)."""
    root = _parse_matrix_html(_allowed_html(html))
    if not root.text_content().strip():
        return None
    for node in root.iter():
        if node is root or not isinstance(node.tag, str):
            continue
        styles: list[str] = []
        color, background = node.get("data-mx-color"), node.get("data-mx-bg-color")
        if color and HEX_COLOR.fullmatch(color):
            styles.append(f"color:{color}")
        if background and HEX_COLOR.fullmatch(background):
            styles.append(f"background-color:{background}")
        element_style = _ELEMENT_STYLES.get(node.tag.lower())
        in_pre = node.tag.lower() == "code" and any(
            ancestor.tag == "pre" for ancestor in node.iterancestors()
        )
        if element_style and not in_pre:
            styles.append(element_style)
        if styles:
            existing = node.get("style")
            node.set("style", ";".join([*styles, existing] if existing else styles))
    return str(lxml.html.tostring(root, encoding="unicode", method="html"))


_BODY_STYLE = (
    "margin:0;padding:16px;font-family:Arial,Helvetica,sans-serif;font-size:14px;"
    "line-height:1.5;color:#1a1a1a;background-color:#ffffff"
)
_NOTE_STYLE = "margin:0 0 8px 0;font-weight:bold"
_FILES_STYLE = "margin:16px 0 0 0"
_FOOTER_STYLE = (
    "margin:24px 0 0 0;padding:8px 0 0 0;border-top:1px solid #dddddd;font-size:12px;"
    "line-height:1.4;color:#666666"
)
CORRECTION_LABEL = "Correction:"
TOO_LARGE_LABEL = "Attachment too large to send by mail:"


def _footer_lines(room_name: str, room_addr: str, unsubscribe_address: str) -> list[str]:
    # Addresses on lines of their own: short lines, and nothing (like a full stop) glued to
    # them that a client's auto-linking could take as part of the address.
    return [
        "You receive this email as a subscriber of the Matrix room",
        f'"{room_name}" <{room_addr}>',
        "Reply to this email to answer in the room.",
        "To unsubscribe, send an email to",
        unsubscribe_address,
    ]


def _footer_html(room_name: str, room_addr: str, unsubscribe_address: str) -> str:
    e = html_lib.escape
    mailto = e(f"mailto:{unsubscribe_address}?subject=unsubscribe")
    return (
        f'<div style="{_FOOTER_STYLE}">'
        f"You receive this email as a subscriber of the Matrix room "
        f"<strong>{e(room_name)}</strong> ({e(room_addr)}).<br>\n"
        "Reply to this email to answer in the room.<br>\n"
        f'To unsubscribe, send an email to <a href="{mailto}" style="color:#666666">'
        f"{e(unsubscribe_address)}</a>.</div>"
    )


def _linked_file_parts(linked_files: Sequence[LinkedFile]) -> tuple[list[str], str]:
    """The "too large" notes as text lines and as HTML."""
    text_lines: list[str] = []
    html_lines: list[str] = []
    for file in linked_files:
        name = _clean_filename(file.filename)
        url = _web_url(file.url, "LinkedFile.url")
        size = f" ({_format_size(file.size)})" if file.size is not None and file.size >= 0 else ""
        text_lines.append(f"{TOO_LARGE_LABEL} {name}{size}: {url}")
        html_lines.append(
            f'<p style="margin:0 0 4px 0">{html_lib.escape(TOO_LARGE_LABEL)} '
            f"<strong>{html_lib.escape(name)}</strong>{html_lib.escape(size)}: "
            f'<a href="{html_lib.escape(url)}">{html_lib.escape(url)}</a></p>'
        )
    html = f'<div style="{_FILES_STYLE}">{"".join(html_lines)}</div>' if html_lines else ""
    return text_lines, html


def _references(references: Sequence[str], in_reply_to: str | None) -> list[str]:
    """The References chain: valid, without repeats, ending with In-Reply-To, bounded."""
    chain: list[str] = []
    for value in [*references, in_reply_to]:
        msg_id = _msg_id(value)
        if msg_id is None:  # a garbled ID from some mail client is only a threading hint
            continue
        if msg_id in chain:
            chain.remove(msg_id)  # keep the later position, so In-Reply-To ends the chain
        chain.append(msg_id)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1):]]
    return chain


def build_email(
    *,
    room_localpart: str,
    domain: str,
    room_name: str,
    sender_name: str,
    recipient: str,
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    in_reply_to: str | None,
    references: list[str],
    reply_to: str,
    unsubscribe_address: str,
    unsubscribe_url: str | None = None,
    attachments: Sequence[OutgoingAttachment] = (),
    linked_files: Sequence[LinkedFile] = (),
    date: datetime | None = None,
    is_correction: bool = False,
) -> EmailMessage:
    """The mail for one subscriber (see the module docstring for the encoding choices).

    ``text`` is the plain-text body (Matrix ``body``), ``html`` the sanitised Matrix
    ``formatted_body`` or None (then HTML is made from the text). ``message_id`` and the IDs in
    ``in_reply_to``/``references`` are msg-ids with or without angle brackets. Raises
    ValueError for malformed bridge-side values (addresses, Message-ID, URLs); never for
    anything a Matrix user controls.
    """
    localpart = normalize_localpart(room_localpart)
    mail_domain = normalize_domain(domain)
    room_addr = f"{localpart}@{mail_domain}"
    own_id = _msg_id(message_id)
    if own_id is None:
        raise ValueError(f"invalid Message-ID: {message_id!r}")
    unsubscribe = _header_address(unsubscribe_address, "unsubscribe_address").addr_spec
    url = _web_url(unsubscribe_url, "unsubscribe_url") if unsubscribe_url else None

    name = clean_display_name(sender_name, FALLBACK_SENDER_NAME)
    room = clean_display_name(room_name, localpart)
    body = _clean_body_text(text)

    msg = EmailMessage(policy=MAIL_POLICY)
    # Addresses go in as their text, which the header is parsed from either way: From and
    # Reply-To are the same in every subscriber's copy, and the policy's registry then
    # parses them once.
    msg["From"] = str(Address(display_name=name, username=localpart, domain=mail_domain))
    msg["To"] = str(_header_address(recipient, "recipient"))
    msg["Reply-To"] = str(_header_address(reply_to, "reply_to"))
    msg["Subject"] = clean_header_text(subject) or "(no subject)"
    when = date or datetime.now(UTC)
    msg["Date"] = format_datetime(when if when.tzinfo else when.replace(tzinfo=UTC))
    msg["Message-ID"] = _PrefoldedHeader("Message-ID", [own_id])
    parent = _msg_id(in_reply_to)
    if parent:
        msg["In-Reply-To"] = _PrefoldedHeader("In-Reply-To", [parent])
    chain = _references(references, in_reply_to)
    if chain:
        msg["References"] = _PrefoldedHeader("References", chain)
    # RFC 2919: the list identifier is a dot-atom under a domain we control; the phrase is the
    # room name for humans.
    msg["List-Id"] = _PrefoldedHeader("List-Id", [*_phrase_words(room),
                                                  f"<{localpart}.{mail_domain}>"])
    msg["List-Post"] = f"<mailto:{room_addr}>"
    unsubscribe_links = [f"<mailto:{unsubscribe}?subject=unsubscribe>"]
    if url:
        unsubscribe_links = [unsubscribe_links[0] + ",", f"<{url}>"]
    msg["List-Unsubscribe"] = _PrefoldedHeader("List-Unsubscribe", unsubscribe_links)
    if url and url.lower().startswith("https://"):
        # RFC 8058 one-click: only for an https URI, and the POST must do the unsubscribing.
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # No vacation replies or read receipts to the room (RFC 3834; the X- header for Exchange).
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["Precedence"] = "list"

    file_lines, files_html = _linked_file_parts(linked_files)
    text_sections = [f"{CORRECTION_LABEL}\n{body}" if is_correction else body]
    if file_lines:
        text_sections.append("\n".join(file_lines))
    # "-- " is the signature separator: mail clients leave the footer out when quoting.
    text_sections.append("-- \n" + "\n".join(_footer_lines(room, room_addr, unsubscribe)))
    text_part = "\n\n".join(text_sections) + "\n"

    content = _matrix_html_for_email(html) if html else None
    if content is None:
        content = f"<div>{text_to_linked_html(body)}</div>"
    correction = (
        f'<p style="{_NOTE_STYLE}">{html_lib.escape(CORRECTION_LABEL)}</p>\n'
        if is_correction else ""
    )
    html_part = (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "</head>\n"
        f'<body style="{_BODY_STYLE}">\n'
        f"{correction}{content}\n{files_html}\n"
        f"{_footer_html(room, room_addr, unsubscribe)}\n"
        "</body>\n</html>\n"
    )

    msg.set_content(text_part, subtype="plain", charset="utf-8", cte=_cte(text_part))
    msg.add_alternative(html_part, subtype="html", charset="utf-8", cte=_cte(html_part))
    for attachment in attachments:
        maintype, subtype, params = _mime_type(attachment.mimetype)
        filename = _clean_filename(attachment.filename)
        # filename goes to Content-Disposition (RFC 2231-encoded when non-ASCII); the same as
        # Content-Type "name" helps older Outlook versions that only look there.
        msg.add_attachment(attachment.data, maintype=maintype, subtype=subtype,
                           filename=filename, params={**params, "name": filename})
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the email package adds it to sub-parts too
        if part.is_multipart():
            # Fixed now rather than at the first flattening, so every copy of the message
            # (deepcopy, pickle, a DKIM signer's as_bytes) has the same bytes. "=_" cannot occur
            # in quoted-printable or base64 content, and 128 random bits not in 7bit text.
            part.set_boundary(f"=_{secrets.token_hex(16)}")
    return msg


# --- one fan-out, many subscribers -----------------------------------------------------------


def flatten(message: EmailMessage) -> bytes:
    """The bytes aiosmtplib's ``send_message`` puts on the wire for ``message`` when neither
    address needs SMTPUTF8: a copy flattened under ``policy.SMTP`` (what compose writes is
    7-bit clean, so the relay's 8BITMIME or its absence changes nothing)."""
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=email_policy.SMTP).flatten(copy.copy(message))
    return buffer.getvalue()


# Characters that every encoding on the way writes as themselves: header folding, HTML
# escaping, quoted-printable (which may break a line between any two of them, with "=").
_LITERAL_RE = re.compile(r"[A-Za-z0-9.+_@-]+")
_PLACEHOLDER_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class MailTemplate:
    """One room message, flattened once, for every subscriber of a fan-out.

    What differs between two subscribers' copies of :func:`build_email` is the To header,
    the List-Unsubscribe header and the unsubscribe address in the footer of both text
    parts; the rest (body, attachments, MIME structure) is the same text, so it is built and
    flattened once here and each subscriber's mail is spliced from those bytes. A mail made
    by :meth:`render` is byte for byte what ``flatten(build_email(...))`` gives with the same
    arguments, except that all copies share the random MIME boundaries (and, without a
    ``date``, the Date) of the template.

    The footer's unsubscribe address is found through a random placeholder of the same
    length (nobody can write it into a message). An address of another length, or with
    characters some encoding would change, does not fit: :meth:`render` returns None then,
    and the caller builds that mail on its own.
    """

    def __init__(self, *, unsubscribe_address: str, unsubscribe_url: str | None,
                 **common: Any) -> None:
        """``common``: the arguments of :func:`build_email` that are the same for every
        subscriber; ``unsubscribe_address`` and ``unsubscribe_url`` are one subscriber's,
        for their shape (length, whether there is a URL). ValueError as build_email."""
        self._common = common
        self._url_kind = _url_kind(unsubscribe_url)
        shape = _header_address(unsubscribe_address, "unsubscribe_address").addr_spec
        local, _, domain = shape.rpartition("@")
        self._placeholder = "".join(secrets.choice(_PLACEHOLDER_ALPHABET)
                                    for _ in local) + "@" + domain
        placeholder_to = f"{secrets.token_hex(8)}@{domain}"
        raw = flatten(build_email(recipient=placeholder_to, unsubscribe_address=self._placeholder,
                                  unsubscribe_url=unsubscribe_url, **common))
        header_end = raw.index(b"\r\n\r\n") + 2
        header, body = raw[:header_end], raw[header_end:]
        to_line = _to_line(str(_header_address(placeholder_to, "recipient")))
        unsubscribe_line = self._unsubscribe_line(self._placeholder, unsubscribe_url)
        before_to, found, rest = header.partition(to_line)
        between, found_too, after = rest.partition(unsubscribe_line)
        if not found or not found_too:
            raise AssertionError("the template's To or List-Unsubscribe line is not where "
                                 "build_email writes it")
        self._header = (before_to, between, after)
        # The body around each occurrence of the placeholder, and where quoted-printable
        # broke each occurrence across lines (offsets into the address).
        pattern = re.compile(b"(?:=\r\n)?".join(re.escape(bytes([c]))
                                                for c in self._placeholder.encode()))
        self._body_pieces: list[bytes] = []
        self._breaks: list[list[int]] = []
        position = 0
        for match in pattern.finditer(body):
            self._body_pieces.append(body[position:match.start()])
            breaks, offset = [], 0
            for part in match.group().split(b"=\r\n")[:-1]:
                offset += len(part)
                breaks.append(offset)
            self._breaks.append(breaks)
            position = match.end()
        self._body_pieces.append(body[position:])

    @staticmethod
    def _unsubscribe_line(address: str, url: str | None) -> bytes:
        links = [f"<mailto:{address}?subject=unsubscribe>"]
        if url:
            links = [links[0] + ",", f"<{_web_url(url, 'unsubscribe_url')}>"]
        return _PrefoldedHeader("List-Unsubscribe", links).fold(
            policy=email_policy.SMTP).encode("ascii")

    def render(self, recipient: str, unsubscribe_address: str,
               unsubscribe_url: str | None) -> bytes | None:
        """This subscriber's mail as flattened bytes; None when they do not fit the template
        (see the class). ValueError for a malformed recipient, as build_email."""
        to_line = _to_line(str(_header_address(recipient, "recipient")))
        address = _header_address(unsubscribe_address, "unsubscribe_address").addr_spec
        if _url_kind(unsubscribe_url) != self._url_kind \
                or len(address) != len(self._placeholder) \
                or not _LITERAL_RE.fullmatch(address) or not to_line.isascii():
            return None
        before_to, between, after = self._header
        pieces = [before_to, to_line, between,
                  self._unsubscribe_line(address, unsubscribe_url), after]
        encoded = address.encode("ascii")
        for piece, breaks in zip(self._body_pieces, self._breaks, strict=False):
            pieces.append(piece)
            start = 0
            for offset in breaks:
                pieces += (encoded[start:offset], b"=\r\n")
                start = offset
            pieces.append(encoded[start:])
        pieces.append(self._body_pieces[-1])
        return b"".join(pieces)


def _url_kind(url: str | None) -> str | None:
    """What of the unsubscribe URL shapes the headers: none, or one with(out) one-click."""
    if not url:  # (build_email treats "" as no URL)
        return None
    return "one-click" if url.strip().lower().startswith("https://") else "link"


# A plain address the header registry writes unchanged on one line: parsing it into a
# header object (a few tenths of a millisecond) is skipped for the usual subscriber.
_PLAIN_ADDRESS_RE = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
                               r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def _to_line(address: str) -> bytes:
    if len(address) <= 70 and _PLAIN_ADDRESS_RE.fullmatch(address):
        return f"To: {address}\r\n".encode("ascii")
    return _fold("To", address)


def _fold(name: str, value: str) -> bytes:
    """A header line as the generator writes it under the SMTP policy."""
    return email_policy.SMTP.fold_binary(*MAIL_POLICY.header_store_parse(name, value))
