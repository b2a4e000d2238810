"""Escaping and link helpers that both directions of the Slack formatting use."""

from __future__ import annotations

import re
from typing import Any

MATRIX_TO = "https://matrix.to/#/"
# Schemes a Matrix client may safely open; anything else (javascript:, data:,
# vbscript:, app-specific schemes) is shown as text, never as a link.
_SAFE_SCHEMES = ("https://", "http://", "mailto:", "ftp://", "tel:", "matrix:")
# Control characters are not allowed in HTML text, and some clients' parsers
# choke on them, so the HTML side drops them.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape_html(text: str) -> str:
    """&, < and > escaped, control characters dropped. (Replaced in turn, in C: a
    translation table is looked up character by character in Python's dict, several times
    slower on every text run of every message.)"""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _CONTROLS.sub("", text) if _CONTROLS.search(text) else text


def escape_attr(text: str) -> str:
    """:func:`escape_html`, and " too (for an attribute's value)."""
    return escape_html(text).replace('"', "&quot;")


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
