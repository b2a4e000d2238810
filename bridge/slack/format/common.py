"""Escaping and link helpers that both directions of the Slack formatting use."""

from __future__ import annotations

from typing import Any

MATRIX_TO = "https://matrix.to/#/"
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


def escape_html(text: str) -> str:
    return text.translate(_ESCAPES)


def escape_attr(text: str) -> str:
    return text.translate(_ATTR_ESCAPES)


def safe_url(url: str) -> str | None:
    url = url.strip()
    if not url.lower().startswith(_SAFE_SCHEMES):
        return None
    # Whitespace or control characters inside an href are either a mistake or
    # an attempt to smuggle something past a naive scheme check downstream.
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        return None
    return url


# Slack payloads are JSON from outside: a field may be missing or of another type than
# documented. These read one as the type expected, or as its empty value, so that odd
# input renders as less rather than raising.
def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# The bullets Slack itself writes for list levels in a message's text.
LIST_BULLETS = ("•", "◦", "▪")
