"""JSON for the hot paths: every event and delivery is encoded into the database and back,
and every message to the homeserver is a JSON body. A mail of 50 KB made the standard
library's encoder (escaping each umlaut as ``\\uXXXX``) a visible share of the CPU a mail
costs; orjson writes the same JSON several times faster, as UTF-8.

The standard library stays the fallback for integers beyond 64 bits, which a client may put
into an event's content and which must come back exactly as they were sent. orjson refuses
to write them, and reads them differently from one release to the next: older releases
refuse them, current ones (3.11 and later) silently turn them into floats, which loses
digits. So such payloads never reach orjson's parser at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Any integer with at most 18 digits fits into 64 bits; one with 19 or more may not. A run of
# 19 digits anywhere (also inside a string, or a float's fraction) sends the payload to the
# standard library: exact for every number, only slower, and such runs are rare.
_MAYBE_BEYOND_64_BITS = re.compile(r"\d{19}")
_MAYBE_BEYOND_64_BITS_BYTES = re.compile(rb"\d{19}")


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
    if _may_hold_big_integers(data):
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # Let json report the error in its own words (a ValueError, as callers expect).
        return json.loads(data)


def _may_hold_big_integers(data: str | bytes) -> bool:
    if isinstance(data, str):
        return _MAYBE_BEYOND_64_BITS.search(data) is not None
    return _MAYBE_BEYOND_64_BITS_BYTES.search(data) is not None
