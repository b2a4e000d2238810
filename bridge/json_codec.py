"""JSON for the hot paths: every event and delivery is encoded into the database and back,
and every message to the homeserver is a JSON body. A mail of 50 KB made the standard
library's encoder (escaping each umlaut as ``\\uXXXX``) a visible share of the CPU a mail
costs; orjson writes the same JSON several times faster, as UTF-8.

The standard library stays the fallback for what orjson refuses: integers beyond 64 bits,
which a client may put into an event's content.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON, UTF-8."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: an integer too big, say
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dumps(value: Any) -> str:
    """Compact JSON as text (for a database column)."""
    return dumps_bytes(value).decode()


def loads(data: str | bytes) -> Any:
    """Parse JSON; invalid input raises ``ValueError`` as json.loads does."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits, which json reads; anything else that
        # fails here fails in json too, with its usual ValueError.
        return json.loads(data)
