"""What the progress report counts: messages written in a linked room, per side.

A message is counted once, where it was written: on Matrix (a real Matrix user, not a
puppet, not the bot, not a command to the bot) when the hub routes it, and on a remote
network when its connector posts it to the room (:meth:`bridge.core.hub.Hub.post_parts`,
once per remote message, however many events it becomes). Edits, reactions and redactions
are not messages. The person is kept only as a pseudonym, enough to count distinct people.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bridge.db import activity as activity_store

MATRIX_SIDE = "matrix"
MESSAGE = "m.room.message"
# 128 bits of sha256: no collisions between the people of one room in practice, and the
# column's width (models.Activity.person).
PSEUDONYM_HEX_DIGITS = 32


def pseudonym(user_id: str) -> str:
    """Who wrote, as a hash of the Matrix user ID (for a remote person: their puppet's)."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:PSEUDONYM_HEX_DIGITS]


def utc_day(seconds: float) -> str:
    """The UTC day (YYYY-MM-DD) of a UNIX time."""
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def is_new_message(event_type: str, content: dict[str, Any]) -> bool:
    """A message someone wrote: not an edit of one, not a reaction, redaction or state."""
    if event_type != MESSAGE or "m.new_content" in content:
        return False
    relates = content.get("m.relates_to")
    return not (isinstance(relates, dict) and relates.get("rel_type") == "m.replace")


_PENDING = "activity_pending"


def note_message(session: AsyncSession, *, room_id: str, side: str, user_id: str,
                 timestamp_ms: Any = None) -> None:
    """Count one message in the caller's transaction, on the day it was written (the
    event's or remote message's own time when given: imported history counts on its day).

    Written when the transaction commits, with whatever else it counted, in one statement:
    a batch of Matrix events (50 in a busy room's transaction), or the successes of several
    remote messages that the outbox records together."""
    seconds = timestamp_ms / 1000 if isinstance(timestamp_ms, int | float) else time.time()
    pending: Counter[tuple[str, str, str, str]] = session.info.setdefault(_PENDING, Counter())
    pending[(room_id, utc_day(seconds), side, pseudonym(user_id))] += 1


def _rows(pending: Counter[tuple[str, str, str, str]]) -> list[dict[str, Any]]:
    return [{"room_id": room, "day": day, "side": side, "person": person, "messages": n}
            # In key order: two transactions touching the same rows lock them alike.
            for (room, day, side, person), n in sorted(pending.items())]


@event.listens_for(Session, "before_commit")
def _write_noted(session: Session) -> None:
    # Runs inside the commit of an AsyncSession too (in its greenlet), so it may execute.
    pending: Counter[tuple[str, str, str, str]] | None = session.info.pop(_PENDING, None)
    if pending:
        activity_store.add_many_now(session, _rows(pending))
