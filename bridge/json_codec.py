"""JSON for the hot paths: every event and delivery is encoded into the database and back,
and every message to the homeserver is a JSON body. A mail of 50 KB made the standard
library's encoder (escaping each umlaut as ``\\uXXXX``) a visible share of the CPU a mail
costs; orjson writes the same JSON several times faster, as UTF-8.

The standard library stays the fallback for integers beyond 64 bits, which a client may put
into an event's content and which must come back exactly as they were sent. orjson refuses
to write them, and reads them differently from one release to the next: older releases
refuse them, current ones (3.11 and later) silently turn them into floats, which loses
digits. So a parse whose result holds a float that large is done again by the standard
library (exact, and as rare as such numbers are).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# orjson reads integers from -2**63 to 2**64 - 1 as ints; anything it made a float of at
# this size or beyond may have been an integer literal.
_BEYOND_64_BITS = float(2**63)


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
    """Parse JSON; invalid input raises ``ValueError`` as json.loads does. Integers of any
    size come back as the same ``int``."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # Older orjson refuses big integers, which json reads; anything else that fails
        # here fails in json too, with its usual ValueError.
        return json.loads(data)
    if _holds_a_huge_float(value):
        return json.loads(data)
    return value


def _holds_a_huge_float(value: Any) -> bool:
    # Walks containers only: a 50 KB mail is a handful of nodes, so this costs about a
    # microsecond, where scanning the text for long digit runs cost a millisecond.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif item.__class__ is float and not -_BEYOND_64_BITS < item < _BEYOND_64_BITS:
            return True
    return False
