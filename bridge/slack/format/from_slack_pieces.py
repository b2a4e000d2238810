"""Slack -> Matrix building blocks: rendered pieces, and the state one conversion keeps."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from bridge.slack.format.common import LIST_BULLETS, MATRIX_TO, escape_attr, escape_html, safe_url
from bridge.slack.format.interface import SlackResolver

# A rendered piece: (html, plain text, is it a block-level HTML element).
# Two inline pieces in a row are separate lines; a block element needs no <br>.
Piece = tuple[str, str, bool]


def join_pieces(pieces: Iterable[Piece]) -> tuple[str, str]:
    html: list[str] = []
    text: list[str] = []
    prev_inline = False
    for p_html, p_text, is_block in pieces:
        if not is_block and prev_inline:
            html.append("<br>")
        html.append(p_html)
        text.append(p_text)
        prev_inline = not is_block
    return "".join(html), "\n".join(text)


def quote_piece(inner_html: str, inner_text: str) -> Piece:
    text = "\n".join(f"> {line}" if line else ">" for line in inner_text.split("\n"))
    return f"<blockquote>{inner_html}</blockquote>", text, True


def pre_piece(code: str) -> Piece:
    return f"<pre><code>{escape_html(code)}</code></pre>", f"```\n{code}\n```", True


def list_piece(entries: list[tuple[int, bool, int, str, str]]) -> Piece:
    """Nested HTML lists from (level, ordered, start, item html, item text) rows."""
    html: list[str] = []
    text: list[str] = []
    stack: list[tuple[int, bool]] = []
    counters: list[int] = []

    def close() -> None:
        html.append("</li></ol>" if stack.pop()[1] else "</li></ul>")
        counters.pop()

    for level, ordered, start, item_html, item_text in entries:
        while stack and (
            stack[-1][0] > level or (stack[-1][0] == level and stack[-1][1] != ordered)
        ):
            close()
        if stack and stack[-1][0] == level:
            html.append("</li>")
            counters[-1] += 1
        else:
            if ordered:
                html.append(f'<ol start="{start}">' if start != 1 else "<ol>")
            else:
                html.append("<ul>")
            stack.append((level, ordered))
            counters.append(start)
        html.append("<li>" + item_html)
        depth = len(stack) - 1
        marker = f"{counters[-1]}. " if ordered else LIST_BULLETS[depth % len(LIST_BULLETS)] + " "
        indent = "    " * depth
        text.append(indent + marker + item_text.replace("\n", "\n" + indent + "  "))
    while stack:
        close()
    return "".join(html), "\n".join(text), True


class Conversion:
    """What one Slack -> Matrix conversion learns on the way."""

    __slots__ = ("mentions", "resolver", "room_mention")

    def __init__(self, resolver: SlackResolver) -> None:
        self.resolver = resolver
        self.mentions: list[str] = []
        self.room_mention = False

    def user(self, user_id: str, label: str = "", *, plain: bool = False) -> tuple[str, str]:
        found = None
        if user_id:
            try:
                found = self.resolver.user(user_id)
            except Exception:
                found = None
        if found:
            mxid, name = found
            name = name or mxid
            if plain:
                return escape_html("@" + name), "@" + name
            if mxid not in self.mentions:
                self.mentions.append(mxid)
            href = escape_attr(MATRIX_TO + quote(mxid, safe="@:!#$&+,;=?/"))
            return f'<a href="{href}">{escape_html(name)}</a>', name
        shown = "@" + (label.lstrip("@") or user_id or "unknown")
        return escape_html(shown), shown

    def channel(self, channel_id: str, label: str = "", *, plain: bool = False) -> tuple[str, str]:
        found = None
        if channel_id:
            try:
                found = self.resolver.channel(channel_id)
            except Exception:
                found = None
        room_id, name = found if found else (None, "")
        shown = "#" + (name or label.lstrip("#") or channel_id or "unknown")
        if room_id and not plain:
            via = getattr(self.resolver, "via_server", None)
            href = escape_attr(
                MATRIX_TO
                + quote(room_id, safe="@:!#$&+,;=/")
                + (f"?via={quote(via, safe='')}" if via else "")
            )
            return f'<a href="{href}">{escape_html(shown)}</a>', shown
        return escape_html(shown), shown

    def broadcast(self, kind: str, *, plain: bool = False) -> tuple[str, str]:
        try:
            allowed = bool(getattr(self.resolver, "allow_room_mention", False))
        except Exception:
            allowed = False
        if allowed and not plain:
            self.room_mention = True
            return "@room", "@room"
        shown = "@" + kind
        return escape_html(shown), shown


def link(url: str, label: str) -> tuple[str, str]:
    safe = safe_url(url)
    shown_url = url[7:] if url.lower().startswith("mailto:") else url
    label = label or shown_url
    if safe is None:
        return escape_html(label), label
    html = f'<a href="{escape_attr(safe)}">{escape_html(label)}</a>'
    if label in (url, shown_url):
        return html, label
    return html, f"{label} ({shown_url})"


def format_date(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
