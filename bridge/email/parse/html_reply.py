"""HTML reply splitting: `split_html_reply` removes the quote containers of Gmail, Outlook,
Thunderbird, Apple Mail and OWA from an HTML body, and cuts it where the plain-text splitter
(reply.py) found the quote or the signature to begin, so that the HTML posted to a room shows
the same new part as the text.
"""

from __future__ import annotations

import html as html_lib
import logging
import re
from collections.abc import Iterator
from typing import Any

import lxml.html

from bridge.email.parse.headers import _CONTROL
from bridge.email.parse.reply.attributions import looks_like_attribution
from bridge.email.parse.reply.quote_headers import FROM_KEY
from bridge.email.sanitize import html_to_text

log = logging.getLogger("bridge.email.parse")  # one logger for the whole parser


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
        return bool(FROM_KEY.match(text))
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
            if looks_like_attribution(attribution):
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
