"""How much of a Matrix event a message's content may take.

A homeserver refuses events over 65536 bytes of canonical JSON (Synapse answers
``M_TOO_LARGE``). Connectors ask before they shape a message (a plain-text mail can leave out
its HTML copy rather than be cut); the Matrix side cuts what is still too large
(:mod:`bridge.matrix.long_message`).
"""

from __future__ import annotations

from typing import Any

from bridge import json_codec

# What the content may take of the 65536 bytes a homeserver allows a whole event: the
# envelope (sender, room, auth and previous events, hashes, signatures) of a Synapse event
# is well under 2 KB; the rest is kept free for it with a wide margin. (Should it not
# suffice, the homeserver's M_TOO_LARGE makes the Matrix side cut deeper.)
CONTENT_LIMIT = 60_000
# In an encrypted room the content travels as Megolm ciphertext, in base64 (4 bytes for every
# 3, with the event's type and room), inside an m.room.encrypted content beside the session's
# keys: plain content of at most this size still makes an event under the limit.
ENCRYPTED_CONTENT_LIMIT = CONTENT_LIMIT * 3 // 4 - 1_000


def content_size(content: dict[str, Any]) -> int:
    """Bytes of ``content`` as JSON in UTF-8 (canonical JSON writes non-ASCII as UTF-8 too)."""
    return len(json_codec.dumps_bytes(content))


def too_large(content: dict[str, Any], limit: int = CONTENT_LIMIT) -> bool:
    return content_size(content) > limit
