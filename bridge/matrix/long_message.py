"""Messages too long for one Matrix event: the beginning in the room, the whole as a file.

A homeserver refuses events over 65536 bytes of canonical JSON (Synapse answers
``M_TOO_LARGE``; see :mod:`bridge.core.event_size`). A remote message that was already
accepted (mail answered 250, a Slack event acknowledged) must still reach the room, so the
Matrix side posts the beginning of its text, cut where a reader sees a clean end (at a line
or word break, never inside an HTML tag, an entity or a character), with a note that the
rest is in the attached file, and then the whole text as that file. One message and one
file read better in Element than a long message chopped into a series of events, and the
file keeps everything (formatting included).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from bridge.core.event_size import CONTENT_LIMIT, content_size, too_large

CONTINUED = "(continued in the attached file)"
_CONTINUED_HTML = f"<p><em>… {CONTINUED}</em></p>"
_CONTINUED_TEXT = f"\n\n… {CONTINUED}"

# Elements that have no end tag.
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"})


def can_shorten(content: dict[str, Any]) -> bool:
    """Is this message content that is long because of its text (which can be cut)?"""
    return isinstance(content.get("body"), str) and content.get("msgtype") in (
        "m.text", "m.notice", "m.emote")


def cut_text(text: str, max_bytes: int) -> str:
    """The beginning of ``text``, at most ``max_bytes`` in UTF-8, ending at a line break or,
    failing that, a space in the last fifth, else at a character boundary."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    # Decoding with "ignore" drops a character cut in half at the end.
    head = encoded[:max_bytes].decode(errors="ignore")
    floor = len(head) * 4 // 5
    for separator in ("\n", " "):
        at = head.rfind(separator)
        if at >= floor:
            return head[:at].rstrip()
    return head


@dataclass(slots=True)
class _Token:
    kind: str  # "start", "end", "startend", "data"
    tag: str
    text: str  # as it goes into the output


class _Tokens(HTMLParser):
    """Matrix HTML as a flat list of tags and text, to cut between them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[_Token] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tokens.append(_Token("start", tag, self.get_starttag_text() or f"<{tag}>"))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tokens.append(_Token("startend", tag, self.get_starttag_text() or f"<{tag}/>"))

    def handle_endtag(self, tag: str) -> None:
        self.tokens.append(_Token("end", tag, f"</{tag}>"))

    def handle_data(self, data: str) -> None:
        self.tokens.append(_Token("data", "", html.escape(data, quote=False)))


def cut_html(markup: str, max_bytes: int) -> str:
    """The beginning of ``markup``, at most ``max_bytes`` in UTF-8 with the end tags of the
    elements still open appended; cut only between tags, and text at a line or word break."""
    if len(markup.encode()) <= max_bytes:
        return markup
    parser = _Tokens()
    parser.feed(markup)
    parser.close()
    out: list[str] = []
    open_tags: list[str] = []
    used = 0

    def closing(tags: list[str]) -> int:
        return sum(len(tag) + 3 for tag in tags)

    for token in parser.tokens:
        size = len(token.text.encode())
        opens = token.kind == "start" and token.tag not in _VOID
        after = [*open_tags, token.tag] if opens else open_tags
        if used + size + closing(after) > max_bytes:
            if token.kind == "data":
                room = max_bytes - used - closing(open_tags)
                piece = _cut_escaped(token.text, room)
                if piece:
                    out.append(piece)
            break
        out.append(token.text)
        used += size
        if opens:
            open_tags.append(token.tag)
        elif token.kind == "end" and token.tag in open_tags:
            # Close up to the matching element (mis-nested input closes what it skips).
            while open_tags:
                if open_tags.pop() == token.tag:
                    break
    out.extend(f"</{tag}>" for tag in reversed(open_tags))
    return "".join(out)


def _cut_escaped(escaped: str, max_bytes: int) -> str:
    """Cut escaped HTML text without splitting an entity such as ``&amp;``."""
    if max_bytes <= 0:
        return ""
    head = cut_text(escaped, max_bytes)
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head


def beginning(content: dict[str, Any], limit: int = CONTENT_LIMIT) -> dict[str, Any]:
    """``content`` with its text cut to fit ``limit`` bytes as JSON, and a note that the
    rest is in the attached file."""
    nested = content.get("m.new_content")  # an edit carries its new text twice
    if isinstance(nested, dict) and can_shorten(nested) and too_large(nested, limit // 2):
        content = {**content, "m.new_content": beginning(nested, limit // 2)}
    text: str = content["body"]
    markup = content.get("formatted_body") if \
        content.get("format") == "org.matrix.custom.html" else None
    rest = {k: v for k, v in content.items() if k not in ("body", "formatted_body")}
    # What is left for the text once everything else is there; JSON escapes (quotes in
    # attributes, control characters) may need more, which the loop below gives back.
    budget = limit - content_size(rest) - 200
    while budget > 0:
        share = budget // 2 if isinstance(markup, str) else budget
        shortened = dict(rest)
        shortened["body"] = cut_text(text, share - len(_CONTINUED_TEXT.encode())) \
            + _CONTINUED_TEXT
        if isinstance(markup, str):
            shortened["formatted_body"] = cut_html(markup, share - len(_CONTINUED_HTML)) \
                + _CONTINUED_HTML
        if content_size(shortened) <= limit:
            return shortened
        budget = budget * 9 // 10
    raise ValueError("the message's other content leaves no room for its text")


def full_text_file(content: dict[str, Any]) -> tuple[bytes, str, str]:
    """The whole message as a file: (data, mimetype, filename). HTML when it is formatted
    (links and tables survive), plain text otherwise."""
    markup = content.get("formatted_body")
    if content.get("format") == "org.matrix.custom.html" and isinstance(markup, str):
        document = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Message'
                    f"</title></head><body>\n{markup}\n</body></html>\n")
        return document.encode(), "text/html", "message.html"
    return str(content["body"]).encode(), "text/plain", "message.txt"
