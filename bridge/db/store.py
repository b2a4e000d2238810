"""Queries on portals, links, puppets, message mappings and inbound dedup keys."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.models import InboundKey, Link, MessageMapping, Portal, Puppet
from bridge.db.queues import direct_insert_ignoring_conflicts, insert_ignoring_conflicts

if TYPE_CHECKING:
    from bridge.db.engine import Reader

# --- portals and links -------------------------------------------------------------------


@dataclass(slots=True)
class LinkInfo:
    id: int
    room_id: str
    network: str
    remote_id: str
    remote_name: str | None
    settings: dict[str, Any] = field(default_factory=dict)


def _link_info(row: Link | Row[Any]) -> LinkInfo:
    return LinkInfo(id=row.id, room_id=row.room_id, network=row.network,
                    remote_id=row.remote_id, remote_name=row.remote_name,
                    settings=json.loads(row.settings or "{}"))


@dataclass(slots=True)
class PortalInfo:
    room_id: str
    is_direct: bool


_PORTAL, _LINK = Portal.__table__, Link.__table__
# Built once: asked for every batch of Matrix events (and the puppets' events coming back),
# and a statement built per call is keyed for SQLAlchemy's cache afresh each time.
_PORTALS_AND_LINKS = select(
    _PORTAL.c.room_id, _PORTAL.c.is_direct, _LINK.c.id, _LINK.c.network, _LINK.c.remote_id,
    _LINK.c.remote_name, _LINK.c.settings,
).select_from(_PORTAL.outerjoin(_LINK, _LINK.c.room_id == _PORTAL.c.room_id)) \
    .where(_PORTAL.c.room_id.in_(bindparam("room_ids", expanding=True))) \
    .order_by(_LINK.c.id)


async def portals_and_links(
    session: Reader, room_ids: set[str]
) -> tuple[dict[str, PortalInfo], dict[str, list[LinkInfo]]]:
    """Portals and their links for many rooms at once (one query, whatever the count)."""
    rows: Any = await session.execute(_PORTALS_AND_LINKS, {"room_ids": sorted(room_ids)}) \
        if room_ids else ()
    portals: dict[str, PortalInfo] = {}
    links: dict[str, list[LinkInfo]] = {room: [] for room in room_ids}
    for row in rows:
        portals[row.room_id] = PortalInfo(row.room_id, row.is_direct)
        if row.id is not None:
            links[row.room_id].append(LinkInfo(
                id=row.id, room_id=row.room_id, network=row.network, remote_id=row.remote_id,
                remote_name=row.remote_name, settings=json.loads(row.settings or "{}")))
    return portals, links


# (Built once: asked for every appservice transaction.)
_EXISTING_PORTALS = select(_PORTAL.c.room_id).where(
    _PORTAL.c.room_id.in_(bindparam("room_ids", expanding=True)))


async def existing_portals(session: AsyncSession, room_ids: set[str]) -> set[str]:
    """Which of these rooms are portals (rooms the bot is in)."""
    if not room_ids:
        return set()
    rows = await session.execute(_EXISTING_PORTALS, {"room_ids": sorted(room_ids)})
    return {row.room_id for row in rows}


async def ensure_portal(session: AsyncSession, room_id: str, *, is_direct: bool = False) -> None:
    await session.execute(
        insert_ignoring_conflicts(session, Portal).values(
            room_id=room_id, is_direct=is_direct, created_at=time.time()
        )
    )
    if is_direct:
        await session.execute(
            update(Portal).where(Portal.room_id == room_id).values(is_direct=True)
        )


async def forget_portal(session: AsyncSession, room_id: str) -> None:
    """The bot left or was removed: links of the room end with it."""
    await session.execute(delete(Link).where(Link.room_id == room_id))
    await session.execute(delete(Portal).where(Portal.room_id == room_id))


@dataclass(slots=True)
class RoomListing:
    """A portal as listings show it (the provisioning API's /rooms), with its links."""

    room_id: str
    is_direct: bool
    name: str | None
    alias: str | None
    department: str | None
    links: list[LinkInfo] = field(default_factory=list)


async def room_listings(session: AsyncSession, room_id: str | None = None,
                        *, direct: bool = False) -> list[RoomListing]:
    """Every portal (or the one ``room_id`` names) with its links, in two queries whatever
    the count; direct chats with the bot only when ``direct``."""
    query = select(Portal)
    if room_id is not None:
        query = query.where(Portal.room_id == room_id)
    if not direct:
        query = query.where(Portal.is_direct.is_(False))
    rooms = {row.room_id: RoomListing(row.room_id, row.is_direct, row.name, row.alias,
                                      row.department)
             for row in await session.scalars(query.order_by(Portal.room_id))}
    links = select(Link).order_by(Link.id)
    if room_id is not None:
        links = links.where(Link.room_id == room_id)
    for row in await session.scalars(links):
        if row.room_id in rooms:
            rooms[row.room_id].links.append(_link_info(row))
    return list(rooms.values())


async def set_portal_naming(session: AsyncSession, room_id: str, column: str,
                            value: str | None) -> None:
    """Remember the portal's ``name`` or ``alias`` as its state says (no portal: nothing)."""
    if column not in ("name", "alias"):
        raise ValueError(f"a portal is not named by {column!r}")
    await session.execute(update(Portal).where(Portal.room_id == room_id)
                          .values({column: value}))


async def links_of_room(session: AsyncSession, room_id: str) -> list[LinkInfo]:
    rows = await session.scalars(select(Link).where(Link.room_id == room_id).order_by(Link.id))
    return [_link_info(r) for r in rows]


_LINK_BY_REMOTE = select(
    *(Link.__table__.c[name] for name in ("id", "room_id", "network", "remote_id",
                                          "remote_name", "settings"))
).where(Link.__table__.c.network == bindparam("network"),
        Link.__table__.c.remote_id == bindparam("remote_id"))


_LINK_IN_ROOM = select(
    *(Link.__table__.c[name] for name in ("id", "room_id", "network", "remote_id",
                                          "remote_name", "settings"))
).where(Link.__table__.c.id == bindparam("link_id"),
        Link.__table__.c.room_id == bindparam("room_id"))


async def link_in_room(session: Reader, room_id: str, link_id: int) -> LinkInfo | None:
    """The room's link ``link_id``, if it still has it: what every relay delivery asks (one
    row by its key, through Core: no ORM objects on this path)."""
    row = (await session.execute(_LINK_IN_ROOM, {"link_id": link_id,
                                                 "room_id": room_id})).first()
    return _link_info(row) if row else None


async def rooms_linked_to(session: AsyncSession, network: str) -> list[str]:
    """The portals with at least one link of ``network``."""
    return list(await session.scalars(select(Link.room_id).where(Link.network == network)
                                      .distinct().order_by(Link.room_id)))


async def link_by_remote(session: Reader, network: str, remote_id: str) -> LinkInfo | None:
    # Built once, on the table: looked up for every mail's recipient (SMTP RCPT).
    row = (await session.execute(_LINK_BY_REMOTE, {"network": network,
                                                   "remote_id": remote_id})).first()
    return _link_info(row) if row else None


async def link_created_at(session: AsyncSession, network: str, remote_id: str) -> float | None:
    """When the remote conversation was linked (None: it is not)."""
    value = await session.scalar(select(Link.created_at).where(Link.network == network,
                                                               Link.remote_id == remote_id))
    return float(value) if value is not None else None


async def add_link(
    session: AsyncSession,
    *,
    room_id: str,
    network: str,
    remote_id: str,
    remote_name: str | None,
    created_by: str,
    settings: dict[str, Any] | None = None,
) -> LinkInfo:
    await ensure_portal(session, room_id)
    row = Link(room_id=room_id, network=network, remote_id=remote_id, remote_name=remote_name,
               settings=json.dumps(settings or {}), created_by=created_by,
               created_at=time.time())
    session.add(row)
    await session.flush()
    return _link_info(row)


async def remove_link(session: AsyncSession, room_id: str, network: str,
                      remote_id: str | None = None) -> LinkInfo | None:
    """Remove the room's link of ``network`` (the one to ``remote_id``, if given: a room may
    have several links of one network); returns what was removed, or None."""
    query = select(Link).where(Link.room_id == room_id, Link.network == network)
    if remote_id is not None:
        query = query.where(Link.remote_id == remote_id)
    row = await session.scalar(query.order_by(Link.id).limit(1))
    if row is None:
        return None
    info = _link_info(row)
    await session.delete(row)
    return info


# --- puppets -----------------------------------------------------------------------------


async def get_puppet(session: AsyncSession, user_id: str) -> Puppet | None:
    return await session.get(Puppet, user_id)


async def upsert_puppet(
    session: AsyncSession,
    *,
    user_id: str,
    network: str,
    remote_id: str,
    displayname: str | None,
    avatar_source: str | None,
    avatar_mxc: str | None,
) -> tuple[bool, bool]:
    """Store the puppet's profile; returns (displayname changed, avatar changed)."""
    now = time.time()
    row = await session.get(Puppet, user_id)
    if row is None:
        # Insert-or-nothing: two lanes meeting the same new person at once (one Slack user
        # writing in two channels) must not fail on the key and go round a retry.
        result = await session.execute(insert_ignoring_conflicts(session, Puppet), {
            "user_id": user_id, "network": network, "remote_id": remote_id,
            "displayname": displayname, "avatar_source": avatar_source,
            "avatar_mxc": avatar_mxc, "created_at": now, "updated_at": now})
        if result.rowcount:  # type: ignore[attr-defined]
            return displayname is not None, avatar_mxc is not None
        row = await session.get(Puppet, user_id, populate_existing=True)
        if row is None:
            raise RuntimeError(f"puppet {user_id} neither inserted nor found")
    name_changed = row.displayname != displayname
    avatar_changed = row.avatar_source != avatar_source
    if name_changed or avatar_changed:
        row.displayname = displayname
        row.avatar_source = avatar_source
        row.avatar_mxc = avatar_mxc
        row.updated_at = now
    return name_changed, avatar_changed


# --- message mappings --------------------------------------------------------------------


@dataclass(slots=True)
class MappingInfo:
    room_id: str
    event_id: str
    network: str
    remote_space: str
    remote_id: str
    part: int
    thread_root: str | None


def _mapping_info(row: MessageMapping) -> MappingInfo:
    return MappingInfo(room_id=row.room_id, event_id=row.event_id, network=row.network,
                       remote_space=row.remote_space, remote_id=row.remote_id, part=row.part,
                       thread_root=row.thread_root)


async def add_mapping(
    session: AsyncSession,
    *,
    room_id: str,
    event_id: str,
    network: str,
    remote_space: str,
    remote_id: str,
    part: int = 0,
    thread_root: str | None = None,
) -> None:
    await session.execute(insert_ignoring_conflicts(session, MessageMapping), _mapping_row(
        room_id, event_id, network, remote_space, remote_id, part, thread_root))


def add_mapping_sync(
    connection: Connection,
    *,
    room_id: str,
    event_id: str,
    network: str,
    remote_space: str,
    remote_id: str,
    part: int = 0,
    thread_root: str | None = None,
) -> None:
    """:func:`add_mapping` on a synchronous connection: a write that goes with a delivery's
    success (``Delivery.with_outcome_sync``), run straight on SQLite where that is safe
    (bridge/db/direct.py)."""
    direct_insert_ignoring_conflicts(connection, MessageMapping).execute(
        connection, _mapping_row(room_id, event_id, network, remote_space, remote_id, part,
                                 thread_root))


def _mapping_row(room_id: str, event_id: str, network: str, remote_space: str, remote_id: str,
                 part: int, thread_root: str | None) -> dict[str, Any]:
    return {"room_id": room_id, "event_id": event_id, "network": network,
            "remote_space": remote_space, "remote_id": remote_id, "part": part,
            "thread_root": thread_root, "created_at": time.time()}


_MAPPING_COLUMNS = tuple(MessageMapping.__table__.c[name] for name in (
    "room_id", "event_id", "network", "remote_space", "remote_id", "part", "thread_root"))
_MAPPINGS_FOR_REMOTE = select(*_MAPPING_COLUMNS).where(
    MessageMapping.__table__.c.network == bindparam("network"),
    MessageMapping.__table__.c.remote_space == bindparam("remote_space"),
    MessageMapping.__table__.c.remote_id == bindparam("remote_id"),
).order_by(MessageMapping.__table__.c.part)


async def mappings_for_remote(
    session: Reader, network: str, remote_space: str, remote_id: str
) -> list[MappingInfo]:
    # Built once, on the table: asked for every mail (and every part sent in a thread).
    rows = await session.execute(_MAPPINGS_FOR_REMOTE, {
        "network": network, "remote_space": remote_space, "remote_id": remote_id})
    return [MappingInfo(room_id=r.room_id, event_id=r.event_id, network=r.network,
                        remote_space=r.remote_space, remote_id=r.remote_id, part=r.part,
                        thread_root=r.thread_root) for r in rows]


async def mappings_for_remote_any_space(session: AsyncSession, network: str,
                                        remote_id: str) -> list[MappingInfo]:
    rows = await session.scalars(
        select(MessageMapping)
        .where(MessageMapping.network == network, MessageMapping.remote_id == remote_id)
        .order_by(MessageMapping.id)
    )
    return [_mapping_info(r) for r in rows]


async def mappings_for_event(
    session: AsyncSession, event_id: str, network: str | None = None
) -> list[MappingInfo]:
    query = select(MessageMapping).where(MessageMapping.event_id == event_id)
    if network is not None:
        query = query.where(MessageMapping.network == network)
    rows = await session.scalars(query.order_by(MessageMapping.id))
    return [_mapping_info(r) for r in rows]


# --- inbound dedup -----------------------------------------------------------------------


async def claim_inbound_key(session: AsyncSession, network: str, key: str) -> bool:
    """True the first time a remote item's natural key is seen; False for a repeat."""
    result = await session.execute(insert_ignoring_conflicts(session, InboundKey), {
        "network": network, "key": key, "received_at": time.time()})
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def delete_mappings_for_remote(session: AsyncSession, network: str, remote_space: str,
                                     remote_id: str) -> None:
    """Forget a remote item that is gone (a removed reaction can be added again later)."""
    await session.execute(
        delete(MessageMapping).where(MessageMapping.network == network,
                                     MessageMapping.remote_space == remote_space,
                                     MessageMapping.remote_id == remote_id))


async def delete_mappings_for_event(session: AsyncSession, event_id: str, network: str) -> None:
    await session.execute(
        delete(MessageMapping).where(MessageMapping.event_id == event_id,
                                     MessageMapping.network == network))
