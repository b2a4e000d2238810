"""Matrix -> Slack: Matrix HTML (or the plain body) as Slack mrkdwn."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from bridge.slack.format.common import LIST_BULLETS, MATRIX_TO, as_str, safe_url
from bridge.slack.format.interface import MatrixResolver

_XML_INVALID_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_HTML_SPACE_RE = re.compile(r"[ \t\n\r\f]+")
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "blockquote", "pre", "ul", "ol", "li", "hr", "table", "thead",
        "tbody", "tfoot", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "details",
        "summary", "section", "article", "header", "footer", "dl", "dt", "dd",
    }
)  # fmt: skip
_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6"})
_MARKERS = {
    "strong": "*", "b": "*", "em": "_", "i": "_", "del": "~", "s": "~", "strike": "~",
}  # fmt: skip
_SKIP_TAGS = frozenset({"mx-reply", "script", "style", "head", "title", "template"})
_MAX_HTML_DEPTH = 64
_NO_QUOTE = "\u200b"


def _slack_escape(text: str) -> str:
    # (Replaced in turn, in C: several times faster than a translation table.)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_url(url: str) -> str:
    # Inside <...> a "|" ends the URL and ">" ends the token, so they are
    # percent-encoded; "&" is written as Slack writes it.
    url = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E").replace(" ", "%20")
    return url.replace("&", "&amp;")


def _matrix_target(href: str) -> tuple[str, str] | None:
    """("user" | "room", id) for a matrix.to or matrix: URI naming one."""
    ident = ""
    if href.startswith(MATRIX_TO):
        ident = unquote(href[len(MATRIX_TO) :].split("?", 1)[0])
    elif href.startswith("matrix:"):
        path = href[7:].split("?", 1)[0]
        kind, _, rest = path.partition("/")
        sigil = {"u": "@", "roomid": "!", "r": "#"}.get(kind)
        if sigil is None or "/" in rest:
            return None
        ident = sigil + unquote(rest)
    if not ident or "/" in ident or ":" not in ident:
        return None
    if ident[0] == "@":
        return "user", ident
    if ident[0] in "!#":
        return "room", ident
    return None


def _wrap_each_line(content: str, marker: str) -> str:
    """Put a style marker around each line, whitespace outside the markers."""
    lines = []
    for line in content.split("\n"):
        core = line.strip(" ")
        if not core:
            lines.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip(" "))]
        trail = line[len(line.rstrip(" ")) :]
        lines.append(f"{lead}{marker}{core}{marker}{trail}")
    return "\n".join(lines)


def _trim_lines(text: str) -> str:
    lines = [line.strip(" ") for line in text.split("\n")]
    # A ">" the Matrix user wrote as text must not turn the line into a Slack
    # quote; an invisible space in front keeps it text (and is removed again
    # when the message comes back from Slack).
    lines = [_NO_QUOTE + line if line.startswith("&gt;") else line for line in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _tag_name(el: Any) -> str | None:
    tag = el.tag
    return tag.lower() if isinstance(tag, str) else None


class _HtmlToMrkdwn:
    def __init__(self, resolver: MatrixResolver) -> None:
        self.resolver = resolver

    # Blocks: lists of (mrkdwn, is paragraph); paragraphs get a blank line
    # around them, everything else a single line break.
    def blocks(self, el: Any, depth: int, list_level: int = 0) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        inline: list[str] = []

        def flush() -> None:
            text = _trim_lines("".join(inline))
            inline.clear()
            if text:
                out.append((text, False))

        if el.text:
            inline.append(self.text(el.text))
        for child in el:
            tag = _tag_name(child)
            if tag is None or tag in _SKIP_TAGS:
                pass
            elif tag in _BLOCK_TAGS:
                flush()
                block = self.block(child, tag, depth + 1, list_level)
                if block[0]:
                    out.append(block)
            else:
                inline.append(self.inline(child, tag, depth + 1, frozenset()))
            if child.tail:
                inline.append(self.text(child.tail))
        flush()
        return out

    @staticmethod
    def join(blocks: list[tuple[str, bool]]) -> str:
        parts: list[str] = []
        prev_para = False
        for i, (text, is_para) in enumerate(blocks):
            if i:
                parts.append("\n\n" if is_para or prev_para else "\n")
            parts.append(text)
            prev_para = is_para
        return "".join(parts)

    def block(self, el: Any, tag: str, depth: int, list_level: int) -> tuple[str, bool]:
        if depth > _MAX_HTML_DEPTH:
            return _trim_lines(self.text(el.text_content())), False
        if tag == "pre":
            code = el.text_content()
            if code.endswith("\n"):
                code = code[:-1]
            return (f"```{_slack_escape(code)}```", False) if code.strip() else ("", False)
        if tag in ("ul", "ol"):
            return self.list(el, tag == "ol", depth, list_level), False
        if tag == "li":
            return self.list_item(el, "• ", depth, list_level), False
        if tag == "blockquote":
            inner = self.join(self.blocks(el, depth))
            if not inner:
                return "", False
            return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n")), False
        if tag == "hr":
            return "---", True
        if tag == "tr":
            cells = [
                _trim_lines(self.inline_children(cell, depth, frozenset())).replace("\n", " ")
                for cell in el
                if _tag_name(cell) in ("td", "th")
            ]
            return " | ".join(cells), False
        inner = self.join(self.blocks(el, depth, list_level))
        if tag in _PARAGRAPH_TAGS and tag != "p":
            inner = _wrap_each_line(inner, "*")
        return inner, tag in _PARAGRAPH_TAGS

    def list(self, el: Any, ordered: bool, depth: int, level: int) -> str:
        number = 1
        if ordered:
            try:
                number = int(el.get("start") or 1)
            except ValueError:
                number = 1
            number = max(0, min(number, 10**9))
        lines: list[str] = []
        for child in el:
            if _tag_name(child) != "li":
                continue
            marker = f"{number}. " if ordered else LIST_BULLETS[level % len(LIST_BULLETS)] + " "
            lines.append(self.list_item(child, marker, depth + 1, level))
            number += 1
        return "\n".join(line for line in lines if line)

    def list_item(self, el: Any, marker: str, depth: int, level: int) -> str:
        content = self.join([(text, False) for text, _ in self.blocks(el, depth, level + 1)])
        lines = content.split("\n")
        # Continuation lines and nested lists are indented under the item.
        rest = [("    " + line) if line else line for line in lines[1:]]
        return "\n".join([marker + lines[0], *rest])

    def text(self, text: str) -> str:
        return _slack_escape(_HTML_SPACE_RE.sub(" ", text))

    def inline_children(self, el: Any, depth: int, active: frozenset[str]) -> str:
        parts: list[str] = []
        if el.text:
            parts.append(self.text(el.text))
        for child in el:
            tag = _tag_name(child)
            if tag is not None and tag not in _SKIP_TAGS:
                if tag in _BLOCK_TAGS:
                    block = self.block(child, tag, depth + 1, 0)[0]
                    if block:
                        parts.append(f"\n{block}\n")
                else:
                    parts.append(self.inline(child, tag, depth + 1, active))
            if child.tail:
                parts.append(self.text(child.tail))
        return "".join(parts)

    def inline(self, el: Any, tag: str, depth: int, active: frozenset[str]) -> str:
        if depth > _MAX_HTML_DEPTH:
            return self.text(el.text_content())
        if tag == "br":
            return "\n"
        if tag in _MARKERS:
            marker = _MARKERS[tag]
            inner = self.inline_children(el, depth, active | {marker})
            return inner if marker in active else _wrap_each_line(inner, marker)
        if tag == "code":
            code = _HTML_SPACE_RE.sub(" ", el.text_content())
            return f"`{_slack_escape(code)}`" if code.strip() else _slack_escape(code)
        if tag == "a":
            return self.link(el, depth, active)
        if tag == "img":
            alt = el.get("alt") or el.get("title") or ""
            if el.get("data-mx-emoticon") is not None and alt and not alt.startswith(":"):
                alt = f":{alt}:"
            return self.text(alt)
        return self.inline_children(el, depth, active)

    def link(self, el: Any, depth: int, active: frozenset[str]) -> str:
        href = (el.get("href") or "").strip()
        label = _HTML_SPACE_RE.sub(" ", el.text_content()).strip()
        target = _matrix_target(href)
        if target is not None:
            kind, ident = target
            if kind == "user":
                slack_id = self._call(self.resolver.slack_user, ident)
                if slack_id:
                    return f"<@{slack_id}>"
                name = self._call(self.resolver.display_name, ident) or label or ident
                return _slack_escape(name if name.startswith("@") else "@" + name)
            slack_channel = self._call(self.resolver.slack_channel, ident)
            if slack_channel:
                return f"<#{slack_channel}>"
            return _slack_escape(label or ident)
        safe = safe_url(href)
        if safe is None:
            return self.inline_children(el, depth, active)
        url = _slack_url(safe)
        shown = safe[7:] if safe.lower().startswith("mailto:") else safe
        if not label or label in (safe, shown):
            return f"<{url}>"
        return f"<{url}|{_slack_escape(label)}>"

    @staticmethod
    def _call(method: Any, arg: str) -> str | None:
        try:
            value = method(arg)
        except Exception:
            return None
        return value if isinstance(value, str) and value else None


def _strip_reply_fallback(body: str) -> str:
    # Only the shape clients generate ("> <@user:server> ...") is removed, so
    # a quote a user typed at the top of a plain message survives.
    if not (body.startswith("> <") or body.startswith("> * <")):
        return body
    lines = body.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if i < len(lines) and not lines[i].strip():
        i += 1
    return "\n".join(lines[i:])


def _parse_html(html: str) -> Any:
    # lxml (4 MB resident, most of it its library) is imported with the first formatted
    # Matrix message, not by every bridge at start (issue 15: idle RSS).
    import lxml.html
    from lxml import etree

    cleaned = _XML_INVALID_RE.sub("", html)
    if not cleaned.strip():
        return None
    try:
        return lxml.html.fragment_fromstring(cleaned, create_parent="div")
    except (etree.LxmlError, ValueError, TypeError):
        return None


def matrix_to_slack(body: str | None, html: str | None, resolver: MatrixResolver) -> str:
    """A Matrix message (``body``, ``formatted_body``) as Slack mrkdwn.

    ``@room`` stays the text "@room": turning it into ``<!channel>`` would let
    any Matrix user ping a whole Slack channel, often without knowing that the
    room is bridged. For the same reason the caller must not post with
    ``link_names``, which would turn a typed "@here" into a ping.
    """
    if html and isinstance(html, str):
        root = _parse_html(html)
        if root is not None:
            try:
                converter = _HtmlToMrkdwn(resolver)
                out = converter.join(converter.blocks(root, 0)).strip("\n")
            except RecursionError:
                out = ""
            if out.strip():
                return out
    text = _strip_reply_fallback(as_str(body))
    return _slack_escape(text)


def emote_to_slack(body: str | None, html: str | None, resolver: MatrixResolver) -> str:
    """An ``m.emote`` as mrkdwn, in italics the way Slack shows ``/me``."""
    text = matrix_to_slack(body, html, resolver)
    return _wrap_each_line(text, "_")
