"""Slack -> Matrix: Block Kit, and the entry point for a whole Slack message."""

from __future__ import annotations

import re
from typing import Any

from bridge.slack.format.common import as_dict, as_list, as_str, escape_html, safe_url
from bridge.slack.format.from_slack_mrkdwn import mrkdwn_pieces
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
from bridge.slack.format.interface import MatrixText, SlackResolver

_EMOJI_CODE_RE = re.compile(r":([a-z0-9_+'\-]+):(?::(skin-tone-[2-6](?:-[2-6])?):)?")


def _plain_text_emoji(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        from bridge.slack.emoji import slack_emoji_to_unicode

        name = m.group(1) + (f"::{m.group(2)}" if m.group(2) else "")
        return slack_emoji_to_unicode(name) or m.group(0)

    return _EMOJI_CODE_RE.sub(sub, text) if ":" in text else text


def _text_object(obj: Any, ctx: Conversion) -> list[Piece]:
    obj = as_dict(obj)
    text = as_str(obj.get("text"))
    if not text:
        return []
    if obj.get("type") == "mrkdwn":
        return mrkdwn_pieces(text, ctx)
    if obj.get("emoji", True):
        text = _plain_text_emoji(text)
    return [(escape_html(line), line, False) for line in text.split("\n")]


def _emoji_element(el: dict[str, Any]) -> str:
    from bridge.slack.emoji import SKIN_TONES, slack_emoji_to_unicode

    name = as_str(el.get("name"))
    tone = el.get("skin_tone")
    tone = tone if isinstance(tone, int) and tone in SKIN_TONES else None
    code = as_str(el.get("unicode"))
    if code:
        try:
            char = "".join(chr(int(part, 16)) for part in code.split("-"))
        except (ValueError, OverflowError):
            char = ""
        if char and (tone is None or any(c in char for c in SKIN_TONES.values())):
            return char
    found = slack_emoji_to_unicode(f"{name}::skin-tone-{tone}" if tone else name) if name else None
    return found or (f":{name}:" if name else "")


def _rich_inline(elements: Any, ctx: Conversion, *, code_block: bool = False) -> tuple[str, str]:
    html: list[str] = []
    text: list[str] = []
    for raw in as_list(elements):
        el = as_dict(raw)
        kind = el.get("type")
        style = as_dict(el.get("style"))
        h, t = "", ""
        if kind == "text":
            t = as_str(el.get("text"))
            h = escape_html(t)
            if style.get("code") and not code_block:
                h, t = f"<code>{h}</code>", f"`{t}`"
        elif kind == "link":
            url = as_str(el.get("url"))
            label = as_str(el.get("text"))
            if code_block:
                t = label or url
                h = escape_html(t)
            else:
                h, t = link(url, label)
        elif kind == "user":
            h, t = ctx.user(as_str(el.get("user_id")), plain=code_block)
        elif kind == "channel":
            h, t = ctx.channel(as_str(el.get("channel_id")), plain=code_block)
        elif kind == "usergroup":
            t = "@" + (as_str(el.get("usergroup_id")) or "team")
            h = escape_html(t)
        elif kind == "team":
            t = "@" + (as_str(el.get("team_id")) or "team")
            h = escape_html(t)
        elif kind == "broadcast":
            h, t = ctx.broadcast(as_str(el.get("range")) or "here", plain=code_block)
        elif kind == "emoji":
            t = _emoji_element(el)
            h = escape_html(t)
        elif kind == "date":
            t = as_str(el.get("fallback")) or format_date(el.get("timestamp"))
            h = escape_html(t)
        elif kind == "color":
            t = as_str(el.get("value"))
            h = escape_html(t)
        else:
            t = as_str(el.get("text"))
            h = escape_html(t)
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
    if elements and as_dict(elements[-1]).get("type") == "text":
        last = as_dict(elements[-1])
        text = as_str(last.get("text"))
        if text.endswith("\n"):
            return [*elements[:-1], {**last, "text": text[:-1]}]
    return elements


def _rich_text(block: dict[str, Any], ctx: Conversion) -> list[Piece]:
    pieces: list[Piece] = []
    elements = as_list(block.get("elements"))
    i = 0
    n = len(elements)
    while i < n:
        el = as_dict(elements[i])
        kind = el.get("type")
        if kind == "rich_text_list":
            entries: list[tuple[int, bool, int, str, str]] = []
            while i < n and as_dict(elements[i]).get("type") == "rich_text_list":
                lst = as_dict(elements[i])
                indent = lst.get("indent")
                level = indent if isinstance(indent, int) and 0 <= indent < 32 else 0
                ordered = lst.get("style") == "ordered"
                offset = lst.get("offset")
                start = offset + 1 if isinstance(offset, int) and 0 <= offset < 10**6 else 1
                for item in as_list(lst.get("elements")):
                    item_html, item_text = _rich_inline(as_dict(item).get("elements"), ctx)
                    entries.append((level, ordered, start, item_html, item_text))
                i += 1
            if entries:
                pieces.append(list_piece(entries))
            continue
        sub = as_list(el.get("elements"))
        if kind == "rich_text_preformatted":
            pieces.append(pre_piece(_rich_inline(sub, ctx, code_block=True)[1].rstrip("\n")))
        elif kind == "rich_text_quote":
            inner_html, inner_text = _rich_inline(_trim_trailing_newline(sub), ctx)
            pieces.append(quote_piece(inner_html, inner_text))
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


def _image_piece(url: str, label: str) -> list[Piece]:
    label = label or "image"
    if safe_url(url):
        return [(*link(url, label), False)]
    return [(escape_html(label), label, False)]


def _block(block: dict[str, Any], ctx: Conversion) -> list[Piece]:
    kind = block.get("type")
    if kind == "rich_text":
        return _rich_text(block, ctx)
    if kind == "section":
        pieces = _text_object(block.get("text"), ctx)
        for item in as_list(block.get("fields")):
            pieces.extend(_text_object(item, ctx))
        accessory = as_dict(block.get("accessory"))
        if accessory.get("type") == "button":
            pieces.extend(_button(accessory))
        return pieces
    if kind == "header":
        text = _plain_text_emoji(as_str(as_dict(block.get("text")).get("text")))
        return [(f"<strong>{escape_html(text)}</strong>", text, False)] if text else []
    if kind == "context":
        htmls: list[str] = []
        texts: list[str] = []
        for el in as_list(block.get("elements")):
            if as_dict(el).get("type") == "image":
                continue
            h, t = join_pieces(_text_object(el, ctx))
            if t:
                htmls.append(h)
                texts.append(t)
        if not texts:
            return []
        return [(f"<em>{' '.join(htmls)}</em>", " ".join(texts), False)]
    if kind == "divider":
        return [("---", "---", False)]
    if kind == "image":
        title = as_str(as_dict(block.get("title")).get("text")) or as_str(block.get("alt_text"))
        return _image_piece(as_str(block.get("image_url")), title)
    if kind == "video":
        title = as_str(as_dict(block.get("title")).get("text")) or as_str(block.get("alt_text"))
        return _image_piece(as_str(block.get("title_url")) or as_str(block.get("video_url")), title)
    if kind == "actions":
        buttons: list[Piece] = []
        for el in as_list(block.get("elements")):
            if as_dict(el).get("type") == "button":
                buttons.extend(_button(as_dict(el)))
        return buttons
    if kind == "markdown":
        source = as_str(block.get("text"))
        return [(escape_html(line), line, False) for line in source.split("\n")] if source else []
    if kind == "input":
        return _text_object(block.get("label"), ctx)
    return []


def _button(el: dict[str, Any]) -> list[Piece]:
    label = as_str(as_dict(el.get("text")).get("text"))
    url = as_str(el.get("url"))
    if url and safe_url(url):
        return [(*link(url, label), False)]
    return [(escape_html(f"[{label}]"), f"[{label}]", False)] if label else []


def slack_to_matrix(
    text: str | None, blocks: list[dict[str, Any]] | None, resolver: SlackResolver
) -> MatrixText:
    """A Slack message's ``text`` and ``blocks`` as a Matrix message.

    ``rich_text`` blocks are what the sender typed, so when present they win
    over ``text``. Other Block Kit blocks (app and bot messages) are what a
    Slack user sees, ``text`` being only their notification fallback, so they
    win too when they render to anything; otherwise ``text`` is read as mrkdwn.
    """
    ctx = Conversion(resolver)
    pieces: list[Piece] = []
    block_list = [as_dict(b) for b in as_list(blocks)]
    try:
        for block in block_list:
            pieces.extend(_block(block, ctx))
    except RecursionError:
        pieces = []
    if not any(p[1].strip() for p in pieces):
        ctx = Conversion(resolver)
        pieces = mrkdwn_pieces(as_str(text), ctx)
    html, body = join_pieces(pieces)
    if html == escape_html(body).replace("\n", "<br>"):
        return MatrixText(body, None, ctx.mentions, ctx.room_mention)
    return MatrixText(body, html, ctx.mentions, ctx.room_mention)
