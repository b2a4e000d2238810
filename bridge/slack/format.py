"""Message formatting between Slack (mrkdwn, Block Kit) and Matrix (HTML).

Pure functions: no I/O, nothing cached per workspace, and no input makes them
raise (Slack and Matrix clients both send odd things; a message that cannot be
formatted well is still delivered as text).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, unquote

import lxml.html
from lxml import etree

from bridge.slack.emoji import SKIN_TONES, slack_emoji_to_unicode, unicode_to_slack_emoji

__all__ = [
    "MatrixResolver",
    "MatrixText",
    "SlackResolver",
    "emote_to_slack",
    "matrix_to_slack",
    "slack_emoji_to_unicode",
    "slack_to_matrix",
    "unicode_to_slack_emoji",
]


@dataclass
class MatrixText:
    body: str
    """Plain text: styles without markers, code in backticks, lists and quotes as typed."""
    html: str | None
    """``org.matrix.custom.html``; None when it would say no more than the body."""
    mentions: list[str] = field(default_factory=list)
    """Matrix user IDs mentioned, for ``m.mentions.user_ids``."""
    room_mention: bool = False
    """Whether ``@room`` was produced, for ``m.mentions.room``."""


class SlackResolver(Protocol):
    """What the connector knows about the Slack side, looked up before formatting."""

    allow_room_mention: bool
    """Whether <!here>/<!channel>/<!everyone> may become @room in this room."""

    via_server: str | None
    """The homeserver a room link names as ``?via=``: room IDs carry no server any more
    (room version 12), and a client needs one to open a room its user is not in yet."""

    def user(self, slack_user_id: str) -> tuple[str, str] | None:
        """(Matrix user ID, display name), or None for a user the bridge does not know."""
        ...

    def channel(self, slack_channel_id: str) -> tuple[str | None, str] | None:
        """(linked Matrix room ID or None, channel name), or None if unknown."""
        ...


class MatrixResolver(Protocol):
    """What the connector knows about the Matrix side, looked up before formatting."""

    def slack_user(self, matrix_user_id: str) -> str | None:
        """The Slack user ID if this Matrix user is a puppet of one in this workspace."""
        ...

    def display_name(self, matrix_user_id: str) -> str | None: ...

    def slack_channel(self, matrix_room_id: str) -> str | None:
        """The Slack channel ID linked to this room in this workspace, if any."""
        ...


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------

_MATRIX_TO = "https://matrix.to/#/"
# Schemes a Matrix client may safely open; anything else (javascript:, data:,
# vbscript:, app-specific schemes) is shown as text, never as a link.
_SAFE_SCHEMES = ("https://", "http://", "mailto:", "ftp://", "tel:", "matrix:")
# Control characters are not allowed in HTML text, and some clients' parsers
# choke on them, so the HTML side drops them.
_CONTROLS: dict[str, str | None] = {
    chr(c): None for c in (*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)
}
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **_CONTROLS})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", **_CONTROLS})


def _esc(text: str) -> str:
    return text.translate(_ESCAPES)


def _attr(text: str) -> str:
    return text.translate(_ATTR_ESCAPES)


def _safe_url(url: str) -> str | None:
    url = url.strip()
    if not url.lower().startswith(_SAFE_SCHEMES):
        return None
    # Whitespace or control characters inside an href are either a mistake or
    # an attempt to smuggle something past a naive scheme check downstream.
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        return None
    return url


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


# A rendered piece: (html, plain text, is it a block-level HTML element).
# Two inline pieces in a row are separate lines; a block element needs no <br>.
_Piece = tuple[str, str, bool]


def _join(pieces: Iterable[_Piece]) -> tuple[str, str]:
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


def _quote_piece(inner_html: str, inner_text: str) -> _Piece:
    text = "\n".join(f"> {line}" if line else ">" for line in inner_text.split("\n"))
    return f"<blockquote>{inner_html}</blockquote>", text, True


def _pre_piece(code: str) -> _Piece:
    return f"<pre><code>{_esc(code)}</code></pre>", f"```\n{code}\n```", True


# The bullets Slack itself writes for list levels in a message's text.
_BULLETS = ("•", "◦", "▪")


def _list_piece(entries: list[tuple[int, bool, int, str, str]]) -> _Piece:
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
        marker = f"{counters[-1]}. " if ordered else _BULLETS[depth % len(_BULLETS)] + " "
        indent = "    " * depth
        text.append(indent + marker + item_text.replace("\n", "\n" + indent + "  "))
    while stack:
        close()
    return "".join(html), "\n".join(text), True


class _Ctx:
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
                return _esc("@" + name), "@" + name
            if mxid not in self.mentions:
                self.mentions.append(mxid)
            href = _attr(_MATRIX_TO + quote(mxid, safe="@:!#$&+,;=?/"))
            return f'<a href="{href}">{_esc(name)}</a>', name
        shown = "@" + (label.lstrip("@") or user_id or "unknown")
        return _esc(shown), shown

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
            href = _attr(_MATRIX_TO + quote(room_id, safe="@:!#$&+,;=/")
                         + (f"?via={quote(via, safe='')}" if via else ""))
            return f'<a href="{href}">{_esc(shown)}</a>', shown
        return _esc(shown), shown

    def broadcast(self, kind: str, *, plain: bool = False) -> tuple[str, str]:
        try:
            allowed = bool(getattr(self.resolver, "allow_room_mention", False))
        except Exception:
            allowed = False
        if allowed and not plain:
            self.room_mention = True
            return "@room", "@room"
        shown = "@" + kind
        return _esc(shown), shown


def _link(url: str, label: str) -> tuple[str, str]:
    safe = _safe_url(url)
    shown_url = url[7:] if url.lower().startswith("mailto:") else url
    label = label or shown_url
    if safe is None:
        return _esc(label), label
    html = f'<a href="{_attr(safe)}">{_esc(label)}</a>'
    if label in (url, shown_url):
        return html, label
    return html, f"{label} ({shown_url})"


def _format_date(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


# --------------------------------------------------------------------------
# Slack -> Matrix: mrkdwn
# --------------------------------------------------------------------------

_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">"}
_PRE_RE = re.compile(r"```(.+?)```", re.DOTALL)
# The pieces of a line that style markers never see inside: Slack's <...>
# tokens, code spans, entities, emoji codes, and characters from the range we
# borrow for placeholders.
_ATOM_RE = re.compile(
    r"<(?P<tok>[^<>\n]*)>"
    r"|`(?P<code>[^`\n]+)`"
    r"|(?P<ent>&(?:amp|lt|gt);)"
    r"|:(?P<emoji>[a-z0-9_+'\-]+):(?::(?P<tone>skin-tone-[2-6](?:-[2-6])?):)?"
    r"|(?P<pua>[\U000f0000-\U0010ffff])"
)
_PLACEHOLDER_BASE = 0xF0000
_PLACEHOLDER_MAX = 0x10FFFD - _PLACEHOLDER_BASE
_PLACEHOLDER_RE = re.compile(r"[\U000f0000-\U0010ffff]")
_STYLE_TAGS = {"*": "strong", "_": "em", "~": "del"}
_MAX_STYLE_DEPTH = 12
_MAX_QUOTE_DEPTH = 4
_LIST_RE = re.compile(r"([ \t]*)([•◦▪▫‣\-*]|\d{1,3}[.)])[ \t]+(\S.*)\Z")
_ENTITY_RE = re.compile(r"&(?:amp|lt|gt);")


def _unescape(text: str) -> str:
    return _ENTITY_RE.sub(lambda m: _ENTITIES[m.group(0)], text)


class _Atom:
    __slots__ = ("html", "text")

    def __init__(self, html: str, text: str) -> None:
        self.html = html
        self.text = text


def _token(content: str, ctx: _Ctx, *, plain: bool) -> tuple[str, str]:
    """One ``<...>`` token: a mention, a broadcast, a date or a link."""
    head, _, label = content.partition("|")
    label = _unescape(label)
    if head.startswith("@"):
        return ctx.user(head[1:], label, plain=plain)
    if head.startswith("#"):
        return ctx.channel(head[1:], label, plain=plain)
    if head.startswith("!"):
        command, *args = head[1:].split("^")
        if command in ("here", "channel", "everyone", "group"):
            return ctx.broadcast("channel" if command == "group" else command, plain=plain)
        if command == "subteam":
            shown = label or "@" + (args[0] if args else "team")
            return _esc(shown), shown
        if command == "date":
            shown = label or (_format_date(args[0]) if args else "")
            return _esc(shown), shown
        shown = label or command
        return _esc(shown), shown
    url = _unescape(head)
    if plain:
        shown = label or url
        return _esc(shown), shown
    return _link(url, label)


def _atom_for(m: re.Match[str], ctx: _Ctx, *, plain: bool) -> _Atom | None:
    kind = m.lastgroup
    if kind == "tok":
        return _Atom(*_token(m.group("tok"), ctx, plain=plain))
    if kind == "ent":
        return _Atom(m.group("ent"), _ENTITIES[m.group("ent")])
    if kind == "code":
        code = _plain_mrkdwn(m.group("code"), ctx)
        if plain:
            return _Atom(_esc(code), code)
        return _Atom(f"<code>{_esc(code)}</code>", f"`{code}`")
    if kind in ("emoji", "tone"):
        if plain:
            return None
        name = m.group("emoji")
        tone = m.group("tone")
        found = slack_emoji_to_unicode(f"{name}::{tone}" if tone else name)
        if found is None:
            return None
        return _Atom(_esc(found), found)
    literal = m.group(0)
    return _Atom(_esc(literal), literal)


def _atomize(line: str, ctx: _Ctx, *, plain: bool = False) -> tuple[str, list[_Atom]]:
    """Replace the opaque pieces of a line by placeholder characters."""
    out: list[str] = []
    atoms: list[_Atom] = []
    pos = 0
    while True:
        m = _ATOM_RE.search(line, pos)
        if m is None or len(atoms) >= _PLACEHOLDER_MAX:
            break
        atom = _atom_for(m, ctx, plain=plain)
        if atom is None:
            # An unknown emoji code (a custom emoji, or "10:30:") stays as
            # text, and its closing colon may open the next code.
            out.append(line[pos : m.start() + 1])
            pos = m.start() + 1
            continue
        out.append(line[pos : m.start()])
        out.append(chr(_PLACEHOLDER_BASE + len(atoms)))
        atoms.append(atom)
        pos = m.end()
    rest = line[pos:]
    if atoms and len(atoms) >= _PLACEHOLDER_MAX:
        # Past the placeholder budget the rest is shown without formatting.
        rest = _PLACEHOLDER_RE.sub("\ufffd", rest)
    out.append(rest)
    return "".join(out), atoms


def _plain_mrkdwn(text: str, ctx: _Ctx) -> str:
    """Inside code: tokens read as text, entities decoded, nothing else."""
    if "<" not in text and "&" not in text:
        return text
    plain, atoms = _atomize(text, ctx, plain=True)
    return _PLACEHOLDER_RE.sub(lambda m: atoms[ord(m.group(0)) - _PLACEHOLDER_BASE].text, plain)


class _Inline:
    """Slack's emphasis rules on one line whose opaque pieces are placeholders."""

    def __init__(self, line: str, atoms: list[_Atom]) -> None:
        self.s = line
        self.atoms = atoms
        self.closers: dict[str, list[int]] = {}
        n = len(line)
        for marker in _STYLE_TAGS:
            positions: list[int] = []
            start = line.find(marker)
            while start != -1:
                # A closing marker follows a non-space and is not glued to a
                # following letter or digit: "a*b*c" is not bold in Slack.
                if (
                    start > 0
                    and not line[start - 1].isspace()
                    and (start + 1 == n or not line[start + 1].isalnum())
                ):
                    positions.append(start)
                start = line.find(marker, start + 1)
            self.closers[marker] = positions

    def _can_open(self, i: int, end: int) -> bool:
        s = self.s
        return i + 1 < end and not s[i + 1].isspace() and (i == 0 or not s[i - 1].isalnum())

    def render(self, start: int, end: int, depth: int = 0) -> tuple[str, str]:
        s = self.s
        html: list[str] = []
        text: list[str] = []
        run_start = start
        i = start
        while i < end:
            c = s[i]
            if c in _STYLE_TAGS and depth < _MAX_STYLE_DEPTH and self._can_open(i, end):
                closers = self.closers[c]
                k = bisect.bisect_left(closers, i + 2)
                if k < len(closers) and closers[k] < end:
                    j = closers[k]
                    self._plain(run_start, i, html, text)
                    inner_html, inner_text = self.render(i + 1, j, depth + 1)
                    tag = _STYLE_TAGS[c]
                    html.append(f"<{tag}>{inner_html}</{tag}>")
                    text.append(inner_text)
                    i = j + 1
                    run_start = i
                    continue
            i += 1
        self._plain(run_start, end, html, text)
        return "".join(html), "".join(text)

    def _plain(self, start: int, end: int, html: list[str], text: list[str]) -> None:
        if start >= end:
            return
        chunk = self.s[start:end]
        if not self.atoms:
            html.append(_esc(chunk))
            text.append(chunk)
            return
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(chunk):
            if m.start() > pos:
                html.append(_esc(chunk[pos : m.start()]))
                text.append(chunk[pos : m.start()])
            index = ord(m.group(0)) - _PLACEHOLDER_BASE
            atom = self.atoms[index] if index < len(self.atoms) else _Atom("\ufffd", "\ufffd")
            html.append(atom.html)
            text.append(atom.text)
            pos = m.end()
        if pos < len(chunk):
            html.append(_esc(chunk[pos:]))
            text.append(chunk[pos:])


def _mrkdwn_inline(line: str, ctx: _Ctx) -> tuple[str, str]:
    if not line:
        return "", ""
    placeholder_line, atoms = _atomize(line, ctx)
    return _Inline(placeholder_line, atoms).render(0, len(placeholder_line))


def _mrkdwn_items(text: str) -> list[tuple[bool, str]]:
    """Split into (is_pre, content): code blocks first, then lines."""
    items: list[tuple[bool, str]] = []
    pos = 0
    for m in _PRE_RE.finditer(text):
        before = text[pos : m.start()]
        if pos > 0 and before.startswith("\n"):
            before = before[1:]
        if before.endswith("\n"):
            before = before[:-1]
        if before or (pos == 0 and m.start() > 0):
            items.extend((False, line) for line in before.split("\n"))
        code = m.group(1)
        if code.startswith("\n"):
            code = code[1:]
        if code.endswith("\n"):
            code = code[:-1]
        items.append((True, code))
        pos = m.end()
    rest = text[pos:]
    if pos > 0 and rest.startswith("\n"):
        rest = rest[1:]
    if rest or pos == 0:
        items.extend((False, line) for line in rest.split("\n"))
    return items


def _list_entry(m: re.Match[str]) -> tuple[int, bool, int, str]:
    width = len(m.group(1).expandtabs(4))
    marker = m.group(2)
    ordered = marker[0].isdigit()
    return width, ordered, int(marker[:-1]) if ordered else 1, m.group(3)


def _mrkdwn_blocks(items: list[tuple[bool, str]], ctx: _Ctx, depth: int) -> list[_Piece]:
    pieces: list[_Piece] = []
    i = 0
    n = len(items)
    while i < n:
        is_pre, line = items[i]
        if is_pre:
            pieces.append(_pre_piece(_plain_mrkdwn(line, ctx)))
            i += 1
            continue
        if depth < _MAX_QUOTE_DEPTH and line.startswith("&gt;&gt;&gt;"):
            # Slack's ">>>" quotes everything after it, code blocks included.
            first = line[12:].lstrip(" ")
            rest = ([(False, first)] if first else []) + items[i + 1 :]
            pieces.append(_quote_piece(*_join(_mrkdwn_blocks(rest, ctx, depth + 1))))
            break
        if depth < _MAX_QUOTE_DEPTH and line.startswith("&gt;"):
            group: list[tuple[bool, str]] = []
            while i < n and not items[i][0] and items[i][1].startswith("&gt;"):
                if items[i][1].startswith("&gt;&gt;&gt;"):
                    break
                quoted = items[i][1][4:]
                group.append((False, quoted[1:] if quoted.startswith(" ") else quoted))
                i += 1
            pieces.append(_quote_piece(*_join(_mrkdwn_blocks(group, ctx, depth + 1))))
            continue
        m = _LIST_RE.match(line)
        if m:
            entries: list[tuple[int, bool, int, str, str]] = []
            widths: list[int] = []
            while i < n and not items[i][0] and (m := _LIST_RE.match(items[i][1])):
                width, ordered, start, content = _list_entry(m)
                while widths and width < widths[-1]:
                    widths.pop()
                if not widths or width > widths[-1]:
                    widths.append(width)
                entries.append((len(widths) - 1, ordered, start, *_mrkdwn_inline(content, ctx)))
                i += 1
            pieces.append(_list_piece(entries))
            continue
        if line.startswith("\u200b&gt;"):
            line = line[1:]
        pieces.append((*_mrkdwn_inline(line, ctx), False))
        i += 1
    return pieces


def _mrkdwn(text: str, ctx: _Ctx) -> list[_Piece]:
    if not text:
        return []
    return _mrkdwn_blocks(_mrkdwn_items(text), ctx, 0)


# --------------------------------------------------------------------------
# Slack -> Matrix: Block Kit
# --------------------------------------------------------------------------

_EMOJI_CODE_RE = re.compile(r":([a-z0-9_+'\-]+):(?::(skin-tone-[2-6](?:-[2-6])?):)?")


def _plain_text_emoji(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) + (f"::{m.group(2)}" if m.group(2) else "")
        return slack_emoji_to_unicode(name) or m.group(0)

    return _EMOJI_CODE_RE.sub(sub, text) if ":" in text else text


def _text_object(obj: Any, ctx: _Ctx) -> list[_Piece]:
    obj = _d(obj)
    text = _s(obj.get("text"))
    if not text:
        return []
    if obj.get("type") == "mrkdwn":
        return _mrkdwn(text, ctx)
    if obj.get("emoji", True):
        text = _plain_text_emoji(text)
    return [(_esc(line), line, False) for line in text.split("\n")]


def _emoji_element(el: dict[str, Any]) -> str:
    name = _s(el.get("name"))
    tone = el.get("skin_tone")
    tone = tone if isinstance(tone, int) and tone in SKIN_TONES else None
    code = _s(el.get("unicode"))
    if code:
        try:
            char = "".join(chr(int(part, 16)) for part in code.split("-"))
        except (ValueError, OverflowError):
            char = ""
        if char and (tone is None or any(c in char for c in SKIN_TONES.values())):
            return char
    found = slack_emoji_to_unicode(f"{name}::skin-tone-{tone}" if tone else name) if name else None
    return found or (f":{name}:" if name else "")


def _rich_inline(elements: Any, ctx: _Ctx, *, code_block: bool = False) -> tuple[str, str]:
    html: list[str] = []
    text: list[str] = []
    for raw in _l(elements):
        el = _d(raw)
        kind = el.get("type")
        style = _d(el.get("style"))
        h, t = "", ""
        if kind == "text":
            t = _s(el.get("text"))
            h = _esc(t)
            if style.get("code") and not code_block:
                h, t = f"<code>{h}</code>", f"`{t}`"
        elif kind == "link":
            url = _s(el.get("url"))
            label = _s(el.get("text"))
            if code_block:
                t = label or url
                h = _esc(t)
            else:
                h, t = _link(url, label)
        elif kind == "user":
            h, t = ctx.user(_s(el.get("user_id")), plain=code_block)
        elif kind == "channel":
            h, t = ctx.channel(_s(el.get("channel_id")), plain=code_block)
        elif kind == "usergroup":
            t = "@" + (_s(el.get("usergroup_id")) or "team")
            h = _esc(t)
        elif kind == "team":
            t = "@" + (_s(el.get("team_id")) or "team")
            h = _esc(t)
        elif kind == "broadcast":
            h, t = ctx.broadcast(_s(el.get("range")) or "here", plain=code_block)
        elif kind == "emoji":
            t = _emoji_element(el)
            h = _esc(t)
        elif kind == "date":
            t = _s(el.get("fallback")) or _format_date(el.get("timestamp"))
            h = _esc(t)
        elif kind == "color":
            t = _s(el.get("value"))
            h = _esc(t)
        else:
            t = _s(el.get("text"))
            h = _esc(t)
        if not code_block and h:
            if style.get("strike"):
                h = f"<del>{h}</del>"
            if style.get("italic"):
                h = f"<em>{h}</em>"
            if style.get("bold"):
                h = f"<strong>{h}</strong>"
        html.append(h)
        text.append(t)
    out_html = "".join(html)
    if not code_block:
        out_html = out_html.replace("\n", "<br>")
    return out_html, "".join(text)


def _trim_trailing_newline(elements: list[Any]) -> list[Any]:
    if elements and _d(elements[-1]).get("type") == "text":
        last = _d(elements[-1])
        text = _s(last.get("text"))
        if text.endswith("\n"):
            return [*elements[:-1], {**last, "text": text[:-1]}]
    return elements


def _rich_text(block: dict[str, Any], ctx: _Ctx) -> list[_Piece]:
    pieces: list[_Piece] = []
    elements = _l(block.get("elements"))
    i = 0
    n = len(elements)
    while i < n:
        el = _d(elements[i])
        kind = el.get("type")
        if kind == "rich_text_list":
            entries: list[tuple[int, bool, int, str, str]] = []
            while i < n and _d(elements[i]).get("type") == "rich_text_list":
                lst = _d(elements[i])
                indent = lst.get("indent")
                level = indent if isinstance(indent, int) and 0 <= indent < 32 else 0
                ordered = lst.get("style") == "ordered"
                offset = lst.get("offset")
                start = offset + 1 if isinstance(offset, int) and 0 <= offset < 10**6 else 1
                for item in _l(lst.get("elements")):
                    item_html, item_text = _rich_inline(_d(item).get("elements"), ctx)
                    entries.append((level, ordered, start, item_html, item_text))
                i += 1
            if entries:
                pieces.append(_list_piece(entries))
            continue
        sub = _l(el.get("elements"))
        if kind == "rich_text_preformatted":
            pieces.append(_pre_piece(_rich_inline(sub, ctx, code_block=True)[1].rstrip("\n")))
        elif kind == "rich_text_quote":
            inner_html, inner_text = _rich_inline(_trim_trailing_newline(sub), ctx)
            pieces.append(_quote_piece(inner_html, inner_text))
        else:
            # A section (or an element type newer than this code): inline
            # text; a newline before a following list or quote is implied by
            # that block, so it is not doubled.
            if i + 1 < n:
                sub = _trim_trailing_newline(sub)
            h, t = _rich_inline(sub, ctx)
            if h or t or kind == "rich_text_section":
                pieces.append((h, t, False))
        i += 1
    return pieces


def _image_piece(url: str, label: str) -> list[_Piece]:
    label = label or "image"
    if _safe_url(url):
        return [(*_link(url, label), False)]
    return [(_esc(label), label, False)]


def _block(block: dict[str, Any], ctx: _Ctx) -> list[_Piece]:
    kind = block.get("type")
    if kind == "rich_text":
        return _rich_text(block, ctx)
    if kind == "section":
        pieces = _text_object(block.get("text"), ctx)
        for item in _l(block.get("fields")):
            pieces.extend(_text_object(item, ctx))
        accessory = _d(block.get("accessory"))
        if accessory.get("type") == "button":
            pieces.extend(_button(accessory))
        return pieces
    if kind == "header":
        text = _plain_text_emoji(_s(_d(block.get("text")).get("text")))
        return [(f"<strong>{_esc(text)}</strong>", text, False)] if text else []
    if kind == "context":
        htmls: list[str] = []
        texts: list[str] = []
        for el in _l(block.get("elements")):
            if _d(el).get("type") == "image":
                continue
            h, t = _join(_text_object(el, ctx))
            if t:
                htmls.append(h)
                texts.append(t)
        if not texts:
            return []
        return [(f"<em>{' '.join(htmls)}</em>", " ".join(texts), False)]
    if kind == "divider":
        return [("---", "---", False)]
    if kind == "image":
        title = _s(_d(block.get("title")).get("text")) or _s(block.get("alt_text"))
        return _image_piece(_s(block.get("image_url")), title)
    if kind == "video":
        title = _s(_d(block.get("title")).get("text")) or _s(block.get("alt_text"))
        return _image_piece(_s(block.get("title_url")) or _s(block.get("video_url")), title)
    if kind == "actions":
        buttons: list[_Piece] = []
        for el in _l(block.get("elements")):
            if _d(el).get("type") == "button":
                buttons.extend(_button(_d(el)))
        return buttons
    if kind == "markdown":
        source = _s(block.get("text"))
        return [(_esc(line), line, False) for line in source.split("\n")] if source else []
    if kind == "input":
        return _text_object(block.get("label"), ctx)
    return []


def _button(el: dict[str, Any]) -> list[_Piece]:
    label = _s(_d(el.get("text")).get("text"))
    url = _s(el.get("url"))
    if url and _safe_url(url):
        return [(*_link(url, label), False)]
    return [(_esc(f"[{label}]"), f"[{label}]", False)] if label else []


def slack_to_matrix(
    text: str | None, blocks: list[dict[str, Any]] | None, resolver: SlackResolver
) -> MatrixText:
    """A Slack message's ``text`` and ``blocks`` as a Matrix message.

    ``rich_text`` blocks are what the sender typed, so when present they win
    over ``text``. Other Block Kit blocks (app and bot messages) are what a
    Slack user sees, ``text`` being only their notification fallback, so they
    win too when they render to anything; otherwise ``text`` is read as mrkdwn.
    """
    ctx = _Ctx(resolver)
    pieces: list[_Piece] = []
    block_list = [_d(b) for b in _l(blocks)]
    try:
        for block in block_list:
            pieces.extend(_block(block, ctx))
    except RecursionError:
        pieces = []
    if not any(p[1].strip() for p in pieces):
        ctx = _Ctx(resolver)
        pieces = _mrkdwn(_s(text), ctx)
    html, body = _join(pieces)
    if html == _esc(body).replace("\n", "<br>"):
        return MatrixText(body, None, ctx.mentions, ctx.room_mention)
    return MatrixText(body, html, ctx.mentions, ctx.room_mention)


# --------------------------------------------------------------------------
# Matrix -> Slack
# --------------------------------------------------------------------------

_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
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
    return text.translate(_SLACK_ESCAPES)


def _slack_url(url: str) -> str:
    # Inside <...> a "|" ends the URL and ">" ends the token, so they are
    # percent-encoded; "&" is written as Slack writes it.
    url = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E").replace(" ", "%20")
    return url.replace("&", "&amp;")


def _matrix_target(href: str) -> tuple[str, str] | None:
    """("user" | "room", id) for a matrix.to or matrix: URI naming one."""
    ident = ""
    if href.startswith(_MATRIX_TO):
        ident = unquote(href[len(_MATRIX_TO) :].split("?", 1)[0])
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


def _wrap(content: str, marker: str) -> str:
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


def _tidy(text: str) -> str:
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


def _tag(el: Any) -> str | None:
    tag = el.tag
    return tag.lower() if isinstance(tag, str) else None


class _ToSlack:
    def __init__(self, resolver: MatrixResolver) -> None:
        self.resolver = resolver

    # Blocks: lists of (mrkdwn, is paragraph); paragraphs get a blank line
    # around them, everything else a single line break.
    def blocks(self, el: Any, depth: int, list_level: int = 0) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        inline: list[str] = []

        def flush() -> None:
            text = _tidy("".join(inline))
            inline.clear()
            if text:
                out.append((text, False))

        if el.text:
            inline.append(self.text(el.text))
        for child in el:
            tag = _tag(child)
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
            return _tidy(self.text(el.text_content())), False
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
                _tidy(self.inline_children(cell, depth, frozenset())).replace("\n", " ")
                for cell in el
                if _tag(cell) in ("td", "th")
            ]
            return " | ".join(cells), False
        inner = self.join(self.blocks(el, depth, list_level))
        if tag in _PARAGRAPH_TAGS and tag != "p":
            inner = _wrap(inner, "*")
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
            if _tag(child) != "li":
                continue
            marker = f"{number}. " if ordered else _BULLETS[level % len(_BULLETS)] + " "
            lines.append(self.list_item(child, marker, depth + 1, level))
            number += 1
        return "\n".join(line for line in lines if line)

    def list_item(self, el: Any, marker: str, depth: int, level: int) -> str:
        content = self.join(
            [(text, False) for text, _ in self.blocks(el, depth, level + 1)]
        )
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
            tag = _tag(child)
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
            return inner if marker in active else _wrap(inner, marker)
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
        safe = _safe_url(href)
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
                converter = _ToSlack(resolver)
                out = converter.join(converter.blocks(root, 0)).strip("\n")
            except RecursionError:
                out = ""
            if out.strip():
                return out
    text = _strip_reply_fallback(_s(body))
    return _slack_escape(text)


def emote_to_slack(body: str | None, html: str | None, resolver: MatrixResolver) -> str:
    """An ``m.emote`` as mrkdwn, in italics the way Slack shows ``/me``."""
    text = matrix_to_slack(body, html, resolver)
    return _wrap(text, "_")
