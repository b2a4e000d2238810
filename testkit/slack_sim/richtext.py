"""What a Slack client does with what a person types: the wire `text` and its `rich_text` block.

A person's message reaches apps with `text` in Slack's markup (`<@U123>`, `<https://x|label>`,
`&lt;`/`&gt;`/`&amp;` escapes) and a `rich_text` block in `blocks` built from the same input
(styles, links, mentions, emoji, quotes, code blocks, lists). The simulator takes `text` as
the wire format; bare `<`, `>` and `&` that are not part of markup are escaped the way the
client would have escaped them, so a test can write "a < b".
"""

from __future__ import annotations

import html
import random
import re
import string
from typing import Any

JsonDict = dict[str, Any]

# <@U123>, <@U123|name>, <#C123|name>, <!here>, <!subteam^S1|@team>, <https://..|label>, <mailto:..>
_TOKEN = re.compile(r"<([@#!][^<>\s][^<>]*|(?:https?|mailto|ftp|tel):[^<>\s|]+(?:\|[^<>]*)?)>")
_ENTITY = re.compile(r"&(?:amp|lt|gt);")
_STYLE = re.compile(
    r"(?<![\w`])(`)([^`\n]+)`(?![\w`])"          # `code`
    r"|(?<![\w*])(\*)(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])"   # *bold*
    r"|(?<![\w_])(_)(?!\s)([^_\n]+?)(?<!\s)_(?![\w_])"     # _italic_
    r"|(?<![\w~])(~)(?!\s)([^~\n]+?)(?<!\s)~(?![\w~])"     # ~strike~
)
_EMOJI = re.compile(r":([a-z0-9_+'-]+(?:::skin-tone-[2-6])?):")
_STYLE_NAME = {"`": "code", "*": "bold", "_": "italic", "~": "strike"}


def escape_client_text(text: str) -> str:
    """Escape what the Slack client escapes, leaving markup and existing entities alone."""
    out: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        out.append(_escape_plain(text[pos:match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_escape_plain(text[pos:]))
    return "".join(out)


def _escape_plain(text: str) -> str:
    parts: list[str] = []
    pos = 0
    for match in _ENTITY.finditer(text):
        parts.append(text[pos:match.start()].replace("&", "&amp;").replace("<", "&lt;")
                     .replace(">", "&gt;"))
        parts.append(match.group(0))
        pos = match.end()
    parts.append(text[pos:].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    return "".join(parts)


def block_id() -> str:
    return "".join(random.choices(string.ascii_letters + string.digits + "+/=", k=5))


def rich_text_blocks(text: str) -> list[JsonDict]:
    """The rich_text block a Slack client sends along with `text` (wire format)."""
    elements: list[JsonDict] = []
    for kind, chunk in _split_blocks(text):
        if kind == "pre":
            elements.append({"type": "rich_text_preformatted",
                             "elements": [{"type": "text", "text": html.unescape(chunk)}],
                             "border": 0})
        elif kind == "quote":
            elements.append({"type": "rich_text_quote", "elements": _inline(chunk)})
        elif kind in ("bullet", "ordered"):
            items = [{"type": "rich_text_section", "elements": _inline(line)}
                     for line in chunk.split("\n")]
            elements.append({"type": "rich_text_list", "style": kind, "indent": 0,
                             "border": 0, "elements": items})
        elif chunk:
            elements.append({"type": "rich_text_section", "elements": _inline(chunk)})
    if not elements:
        elements.append({"type": "rich_text_section", "elements": []})
    return [{"type": "rich_text", "block_id": block_id(), "elements": elements}]


_BULLET = re.compile(r"^(?:•|-|\*) (.*)$")
_ORDERED = re.compile(r"^\d+\. (.*)$")


def _split_blocks(text: str) -> list[tuple[str, str]]:
    """Cut text into code blocks, quotes, lists and plain sections."""
    chunks: list[tuple[str, str]] = []
    parts = re.split(r"```\n?(.*?)\n?```", text, flags=re.DOTALL)
    for index, part in enumerate(parts):
        if index % 2 == 1:
            chunks.append(("pre", part))
            continue
        current_kind = ""
        current: list[str] = []
        for line in part.split("\n"):
            if line.startswith("&gt; ") or line == "&gt;":
                kind, content = "quote", line[5:]
            elif (match := _BULLET.match(line)) is not None:
                kind, content = "bullet", match.group(1)
            elif (match := _ORDERED.match(line)) is not None:
                kind, content = "ordered", match.group(1)
            else:
                kind, content = "section", line
            if kind != current_kind and current:
                chunks.append(_close(current_kind, current))
                current = []
            current_kind = kind
            current.append(content)
        if current:
            chunks.append(_close(current_kind, current))
    return [(kind, chunk) for kind, chunk in chunks if kind != "section" or chunk]


def _close(kind: str, lines: list[str]) -> tuple[str, str]:
    text = "\n".join(lines)
    if kind == "section" and text.strip() == "":
        return kind, ""
    return kind, text


def _inline(text: str) -> list[JsonDict]:
    out: list[JsonDict] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        out.extend(_styled(text[pos:match.start()]))
        out.append(_token_element(match.group(1)))
        pos = match.end()
    out.extend(_styled(text[pos:]))
    return out


def _token_element(body: str) -> JsonDict:
    target, _, label = body.partition("|")
    if target.startswith("@"):
        return {"type": "user", "user_id": target[1:]}
    if target.startswith("#"):
        return {"type": "channel", "channel_id": target[1:]}
    if target.startswith("!subteam^"):
        return {"type": "usergroup", "usergroup_id": target[len("!subteam^"):]}
    if target.startswith("!date^"):
        return {"type": "text", "text": html.unescape(label or target)}
    if target.startswith("!"):
        return {"type": "broadcast", "range": target[1:]}
    element: JsonDict = {"type": "link", "url": html.unescape(target)}
    if label:
        element["text"] = html.unescape(label)
    return element


def _styled(text: str) -> list[JsonDict]:
    out: list[JsonDict] = []
    pos = 0
    for match in _STYLE.finditer(text):
        out.extend(_plain(text[pos:match.start()]))
        groups = match.groups()
        marker = next(g for g in groups[0::2] if g is not None)
        inner = next(g for g in groups[1::2] if g is not None)
        style_name = _STYLE_NAME[marker]
        elements: list[JsonDict] = (_plain(inner) if marker != "`" else
                                    [{"type": "text", "text": html.unescape(inner)}])
        for element in elements:
            styles: dict[str, bool] = dict(element.get("style") or {})
            styles[style_name] = True
            element["style"] = styles
            out.append(element)
        pos = match.end()
    out.extend(_plain(text[pos:]))
    return out


def _plain(text: str) -> list[JsonDict]:
    out: list[JsonDict] = []
    pos = 0
    for match in _EMOJI.finditer(text):
        if match.start() > pos:
            out.append({"type": "text", "text": html.unescape(text[pos:match.start()])})
        out.append({"type": "emoji", "name": match.group(1)})
        pos = match.end()
    if pos < len(text):
        out.append({"type": "text", "text": html.unescape(text[pos:])})
    return out
