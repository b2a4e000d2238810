"""The audit log: every administrative action, with who did it and from where.

An action records itself in its own transaction (:func:`record`), so the log holds exactly
what was done: an action that failed part way left neither its change nor its entry.
``bridge audit`` and ``GET /_bridge/api/v1/audit`` read it back (:func:`entries`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.models import AuditEntry

OPERATOR = "operator"

#: Where an action came from: a bot command typed in a room, the provisioning API, a
#: migration plan applied with ``bridge plan apply``, the admin web page, a ``bridge``
#: command run by the operator on the host (``bridge erase``).
VIA = ("command", "api", "plan", "admin-page", "cli")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who takes an administrative action: a Matrix user (a bridge admin), or the operator
    holding the provisioning API's shared secret (``user_id`` None)."""

    user_id: str | None
    via: str

    @property
    def name(self) -> str:
        """As the audit log and ``created_by`` columns show it."""
        return self.user_id or OPERATOR

    @classmethod
    def command(cls, user_id: str) -> Actor:
        return cls(user_id, "command")


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    at: float
    actor: str
    via: str
    room_id: str | None
    action: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        from datetime import UTC, datetime

        return {"id": self.id, "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
                "actor": self.actor, "via": self.via, "room_id": self.room_id,
                "action": self.action, "details": self.details}


def parse_time(text: str) -> float:
    """``since`` as people write it: an ISO 8601 date (its midnight) or time; a time without
    a zone is UTC. ValueError names the forms that are understood."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or time (like 2026-12-01 or "
                         "2026-12-01T08:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def record(session: AsyncSession, actor: Actor, room_id: str | None, action: str,
                 **details: Any) -> None:
    """Write one entry in the caller's transaction."""
    await session.execute(insert(AuditEntry).values(
        at=time.time(), actor=actor.name, via=actor.via, room_id=room_id, action=action,
        details=json.dumps(details, sort_keys=True, ensure_ascii=False)))


async def entries(session: AsyncSession, *, since: float | None = None,
                  room_id: str | None = None, limit: int | None = None) -> list[Entry]:
    """Entries oldest first (the newest ``limit`` of them, if given)."""
    query = select(AuditEntry)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if room_id is not None:
        query = query.where(AuditEntry.room_id == room_id)
    if limit is not None:
        query = query.order_by(AuditEntry.id.desc()).limit(limit)
        rows = list(reversed(list(await session.scalars(query))))
    else:
        rows = list(await session.scalars(query.order_by(AuditEntry.id)))
    return [Entry(id=r.id, at=r.at, actor=r.actor, via=r.via, room_id=r.room_id,
                  action=r.action, details=json.loads(r.details or "{}")) for r in rows]
