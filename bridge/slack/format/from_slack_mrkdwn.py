"""Slack -> Matrix: mrkdwn (a message's ``text`` and Block Kit mrkdwn text objects)."""

from __future__ import annotations

import bisect
import re

from bridge.slack.format.common import escape_html
from bridge.slack.format.from_slack_pieces import (
    Conversion,
    Piece,
    format_date,
    join_pieces,
    link,
    list_piece,
    pre_piece,
    quote_piece,
)

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


def _token(content: str, ctx: Conversion, *, plain: bool) -> tuple[str, str]:
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
            return escape_html(shown), shown
        if command == "date":
            shown = label or (format_date(args[0]) if args else "")
            return escape_html(shown), shown
        shown = label or command
        return escape_html(shown), shown
    url = _unescape(head)
    if plain:
        shown = label or url
        return escape_html(shown), shown
    return link(url, label)


def _atom_for(m: re.Match[str], ctx: Conversion, *, plain: bool) -> _Atom | None:
    kind = m.lastgroup
    if kind == "tok":
        return _Atom(*_token(m.group("tok"), ctx, plain=plain))
    if kind == "ent":
        return _Atom(m.group("ent"), _ENTITIES[m.group("ent")])
    if kind == "code":
        code = _plain_mrkdwn(m.group("code"), ctx)
        if plain:
            return _Atom(escape_html(code), code)
        return _Atom(f"<code>{escape_html(code)}</code>", f"`{code}`")
    if kind in ("emoji", "tone"):
        if plain:
            return None
        from bridge.slack.emoji import slack_emoji_to_unicode

        name = m.group("emoji")
        tone = m.group("tone")
        found = slack_emoji_to_unicode(f"{name}::{tone}" if tone else name)
        if found is None:
            return None
        return _Atom(escape_html(found), found)
    literal = m.group(0)
    return _Atom(escape_html(literal), literal)


def _atomize(line: str, ctx: Conversion, *, plain: bool = False) -> tuple[str, list[_Atom]]:
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


def _plain_mrkdwn(text: str, ctx: Conversion) -> str:
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
            html.append(escape_html(chunk))
            text.append(chunk)
            return
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(chunk):
            if m.start() > pos:
                html.append(escape_html(chunk[pos : m.start()]))
                text.append(chunk[pos : m.start()])
            index = ord(m.group(0)) - _PLACEHOLDER_BASE
            atom = self.atoms[index] if index < len(self.atoms) else _Atom("\ufffd", "\ufffd")
            html.append(atom.html)
            text.append(atom.text)
            pos = m.end()
        if pos < len(chunk):
            html.append(escape_html(chunk[pos:]))
            text.append(chunk[pos:])


def _mrkdwn_inline(line: str, ctx: Conversion) -> tuple[str, str]:
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


def _mrkdwn_blocks(items: list[tuple[bool, str]], ctx: Conversion, depth: int) -> list[Piece]:
    pieces: list[Piece] = []
    i = 0
    n = len(items)
    while i < n:
        is_pre, line = items[i]
        if is_pre:
            pieces.append(pre_piece(_plain_mrkdwn(line, ctx)))
            i += 1
            continue
        if depth < _MAX_QUOTE_DEPTH and line.startswith("&gt;&gt;&gt;"):
            # Slack's ">>>" quotes everything after it, code blocks included.
            first = line[12:].lstrip(" ")
            rest = ([(False, first)] if first else []) + items[i + 1 :]
            pieces.append(quote_piece(*join_pieces(_mrkdwn_blocks(rest, ctx, depth + 1))))
            break
        if depth < _MAX_QUOTE_DEPTH and line.startswith("&gt;"):
            group: list[tuple[bool, str]] = []
            while i < n and not items[i][0] and items[i][1].startswith("&gt;"):
                if items[i][1].startswith("&gt;&gt;&gt;"):
                    break
                quoted = items[i][1][4:]
                group.append((False, quoted[1:] if quoted.startswith(" ") else quoted))
                i += 1
            pieces.append(quote_piece(*join_pieces(_mrkdwn_blocks(group, ctx, depth + 1))))
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
            pieces.append(list_piece(entries))
            continue
        if line.startswith("\u200b&gt;"):
            line = line[1:]
        pieces.append((*_mrkdwn_inline(line, ctx), False))
        i += 1
    return pieces


def mrkdwn_pieces(text: str, ctx: Conversion) -> list[Piece]:
    if not text:
        return []
    return _mrkdwn_blocks(_mrkdwn_items(text), ctx, 0)
