"""Plain-text helpers of the email connector, shared by both directions."""

from __future__ import annotations

import html
import re

__all__ = ["text_to_html", "text_to_linked_html", "tidy_text"]


def tidy_text(text: str) -> str:
    """Line breaks as "\\n", trailing spaces dropped, at most one blank line in a row, no
    blank lines at either end. Leading spaces of the first line stay (indented code)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


# Line breaks str.splitlines knows besides "\n".
_OTHER_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def text_to_html(text: str) -> str:
    """Each line escaped, joined with <br> (a mail's text as a Matrix formatted_body).

    On the whole text at once where "\\n" is its only kind of line break (the parser's
    text), which is the same and five times faster on a long mail than line by line.
    (Looking for the other breaks one by one with `in` is a fast scan each; a
    character-class regex takes longer than the escaping.)"""
    if not any(brk in text for brk in _OTHER_LINE_BREAKS):
        return html.escape(text).replace("\n", "<br>")
    return "<br>".join(html.escape(line) for line in text.splitlines())


_URL_IN_TEXT_RE = re.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)\]'}]", re.IGNORECASE)


def text_to_linked_html(text: str) -> str:
    """Escaped text with line breaks, runs of spaces and clickable http(s) links kept (a
    Matrix message's plain body as a mail's HTML part)."""
    lines = []
    for line in text.split("\n"):
        parts: list[str] = []
        position = 0
        for match in _URL_IN_TEXT_RE.finditer(line):
            parts.append(_escape_spaces(html.escape(line[position:match.start()])))
            url = html.escape(match.group(0))
            parts.append(f'<a href="{url}">{url}</a>')
            position = match.end()
        parts.append(_escape_spaces(html.escape(line[position:])))
        lines.append("".join(parts))
    return "<br>\n".join(lines)


def _escape_spaces(text: str) -> str:
    # HTML collapses spaces; indentation and aligned text in a message should survive.
    text = re.sub(r"^ +", lambda m: "&nbsp;" * len(m.group(0)), text)
    return re.sub(r" {2,}", lambda m: " " + "&nbsp;" * (len(m.group(0)) - 1), text)
