"""Queries on the activity counts (messages per room, UTC day, side and pseudonymous person)
and the rooms the progress report covers. What counts as a message is decided in
:mod:`bridge.core.activity`; the report is built in :mod:`bridge.admin.report`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bridge.db.direct import DirectStatement
from bridge.db.models import Activity, Link, Portal
from bridge.db.queues import direct_upsert

_ACTIVITY = cast(Table, Activity.__table__)


def _add_statement(dialect: str) -> DirectStatement:
    """INSERT ... ON CONFLICT (the row's key) DO UPDATE SET messages = messages + new: one
    statement, built once per dialect (it runs for every message the bridge relays, straight
    on SQLite where that is safe)."""
    def build(insert: Callable[[Table], Any]) -> Any:
        new = insert(_ACTIVITY)
        return new.on_conflict_do_update(
            index_elements=[_ACTIVITY.c.room_id, _ACTIVITY.c.day, _ACTIVITY.c.side,
                            _ACTIVITY.c.person],
            set_={"messages": _ACTIVITY.c.messages + new.excluded.messages})

    return direct_upsert(dialect, "activity.add", build)


def add_many_now(session: Session, counts: list[dict[str, Any]]) -> None:
    """Count ``messages`` more for each row's person (``room_id``, ``day``, ``side``,
    ``person``, ``messages``) on that side of the room that day, in one statement. On the
    synchronous session under an AsyncSession: for the hook that runs inside its commit
    (bridge.core.activity)."""
    connection = session.connection()
    _add_statement(connection.dialect.name).execute(connection, counts)


@dataclass(slots=True)
class ReportRoom:
    room_id: str
    name: str | None
    alias: str | None
    department: str | None
    # (network, remote_id, remote_name), oldest link first
    links: list[tuple[str, str, str | None]] = field(default_factory=list)


async def linked_rooms(session: AsyncSession) -> list[ReportRoom]:
    """Every portal with at least one link (direct chats with the bot never have one)."""
    portal, link = Portal.__table__, Link.__table__
    rows = await session.execute(
        select(portal.c.room_id, portal.c.name, portal.c.alias, portal.c.department,
               link.c.network, link.c.remote_id, link.c.remote_name)
        .select_from(portal.join(link, link.c.room_id == portal.c.room_id))
        .where(portal.c.is_direct.is_(False))
        .order_by(portal.c.room_id, link.c.id))
    rooms: dict[str, ReportRoom] = {}
    for row in rows:
        room = rooms.get(row.room_id)
        if room is None:
            room = rooms[row.room_id] = ReportRoom(row.room_id, row.name, row.alias,
                                                   row.department)
        room.links.append((row.network, row.remote_id, row.remote_name))
    return list(rooms.values())


async def people_in_window(session: AsyncSession, since_day: str,
                           until_day: str) -> list[tuple[str, str, str, int]]:
    """(room, side, person, messages) over the days ``since_day``..``until_day``
    (inclusive): each person once per room and side, whatever the number of days."""
    query = (select(_ACTIVITY.c.room_id, _ACTIVITY.c.side, _ACTIVITY.c.person,
                    func.sum(_ACTIVITY.c.messages))
             .where(_ACTIVITY.c.day >= since_day, _ACTIVITY.c.day <= until_day)
             .group_by(_ACTIVITY.c.room_id, _ACTIVITY.c.side, _ACTIVITY.c.person))
    return [(r[0], r[1], r[2], int(r[3])) for r in await session.execute(query)]


async def daily_in_window(session: AsyncSession, since_day: str,
                          until_day: str) -> list[tuple[str, str, str, int]]:
    """(room, day, side, messages) over the days ``since_day``..``until_day`` (inclusive)."""
    query = (select(_ACTIVITY.c.room_id, _ACTIVITY.c.day, _ACTIVITY.c.side,
                    func.sum(_ACTIVITY.c.messages))
             .where(_ACTIVITY.c.day >= since_day, _ACTIVITY.c.day <= until_day)
             .group_by(_ACTIVITY.c.room_id, _ACTIVITY.c.day, _ACTIVITY.c.side))
    return [(r[0], r[1], r[2], int(r[3])) for r in await session.execute(query)]
