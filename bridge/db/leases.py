"""Live processes, leases and held deliveries: the tables behind several bridge processes.

``bridge_process``: one row per running process, written by its heartbeat. ``bridge_lease``:
work that runs in one process at a time. ``outbox_held``: remote events stored but held back
until no other live process can still be storing earlier ones (bridge/core/heartbeat.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.models import BridgeLease, BridgeProcess, HeldDelivery, OutboxItem
from bridge.db.queues import NewDelivery, dialect_name, insert_ignoring_conflicts

_PROCESS = cast(Table, BridgeProcess.__table__)
_LEASE = cast(Table, BridgeLease.__table__)
_HELD = cast(Table, HeldDelivery.__table__)
_OUTBOX = cast(Table, OutboxItem.__table__)


@dataclass(slots=True, frozen=True)
class ProcessRow:
    id: str
    host: str
    pid: int
    heartbeat_at: float
    expires_at: float
    intake_watermark: float


# --- processes ---------------------------------------------------------------------------


async def beat(session: AsyncSession, *, process_id: str, host: str, pid: int,
               started_at: float, now: float, expires_at: float, watermark: float) -> None:
    """Write this process's liveness row (created on the first beat)."""
    updated = await session.execute(
        update(_PROCESS).where(_PROCESS.c.id == process_id).values(
            heartbeat_at=now, expires_at=expires_at, intake_watermark=watermark))
    if not updated.rowcount:  # type: ignore[attr-defined]
        await session.execute(insert_ignoring_conflicts(session, BridgeProcess), {
            "id": process_id, "host": host, "pid": pid, "started_at": started_at,
            "heartbeat_at": now, "expires_at": expires_at, "intake_watermark": watermark})


async def processes(session: AsyncSession) -> list[ProcessRow]:
    rows = await session.execute(select(
        _PROCESS.c.id, _PROCESS.c.host, _PROCESS.c.pid, _PROCESS.c.heartbeat_at,
        _PROCESS.c.expires_at, _PROCESS.c.intake_watermark).order_by(_PROCESS.c.started_at))
    return [ProcessRow(r.id, r.host, r.pid, r.heartbeat_at, r.expires_at, r.intake_watermark)
            for r in rows]


async def forget_process(session: AsyncSession, process_id: str,
                         expired_before: float | None = None) -> bool:
    """Remove a process's row (at its clean stop, or once its death is dealt with: then
    only if it is still expired, since a slow process may have come back)."""
    query = delete(_PROCESS).where(_PROCESS.c.id == process_id)
    if expired_before is not None:
        query = query.where(_PROCESS.c.expires_at <= expired_before)
    result = await session.execute(query)
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- claims ------------------------------------------------------------------------------


async def renew_claims(session: AsyncSession, holder: str, until: float) -> int:
    """Keep the outbox items this process delivers claimed (their holder is alive)."""
    result = await session.execute(
        update(_OUTBOX).where(_OUTBOX.c.claimed_by == holder, _OUTBOX.c.state == "pending",
                              _OUTBOX.c.claimed_until > 0).values(claimed_until=until))
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- leases ------------------------------------------------------------------------------


async def acquire_lease(session: AsyncSession, name: str, holder: str, now: float,
                        until: float) -> bool:
    """Take the lease if it is free, expired, or already ours; True if we hold it now."""
    await session.execute(insert_ignoring_conflicts(session, BridgeLease), {
        "name": name, "holder": holder, "acquired_at": now, "expires_at": 0.0})
    # One statement decides, under the row's lock: two processes cannot both win.
    result = await session.execute(
        update(_LEASE).where(_LEASE.c.name == name,
                             or_(_LEASE.c.holder == holder, _LEASE.c.expires_at <= now))
        .values(holder=holder, expires_at=until,
                acquired_at=case((and_(_LEASE.c.holder == holder, _LEASE.c.expires_at > now),
                                  _LEASE.c.acquired_at), else_=now)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def renew_leases(session: AsyncSession, holder: str, names: Sequence[str],
                       until: float) -> int:
    """Renew the leases this process holds (a released one keeps its holder's name, so only
    the names still held are renewed)."""
    if not names:
        return 0
    result = await session.execute(update(_LEASE).where(
        _LEASE.c.holder == holder, _LEASE.c.name.in_(list(names)), _LEASE.c.expires_at > 0)
        .values(expires_at=until))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def release_lease(session: AsyncSession, name: str, holder: str) -> None:
    await session.execute(update(_LEASE).where(_LEASE.c.name == name,
                                               _LEASE.c.holder == holder)
                          .values(expires_at=0.0))


async def release_all_leases(session: AsyncSession, holder: str) -> None:
    await session.execute(update(_LEASE).where(_LEASE.c.holder == holder)
                          .values(expires_at=0.0))


async def lease_holder(session: AsyncSession, name: str, now: float) -> tuple[str, float] | None:
    """Who holds the lease now, and since when (None: nobody)."""
    row = (await session.execute(select(_LEASE.c.holder, _LEASE.c.acquired_at).where(
        _LEASE.c.name == name, _LEASE.c.expires_at > now))).first()
    return (row.holder, row.acquired_at) if row else None


# --- held deliveries ---------------------------------------------------------------------


async def hold(session: AsyncSession, deliveries: Sequence[tuple[NewDelivery, float]],
               now: float) -> None:
    """Store deliveries held back, each with its sort key (the remote side's timestamp)."""
    rows = []
    for delivery, sort_key in deliveries:
        row = delivery.row(now)
        rows.append({"lane": row["lane"], "network": row["network"],
                     "room_id": row["room_id"], "kind": row["kind"],
                     "payload": row["payload"], "sort_key": sort_key, "received_at": now})
    if rows:
        await session.execute(insert(_HELD), rows)


async def release_held(session: AsyncSession, received_before: float, now: float) -> set[str]:
    """Move the held deliveries received before ``received_before`` into the outbox, each
    lane's in sort-key order; returns their lanes (to wake the outbox for).

    A lane with held items received later keeps those back, and what is released of it goes
    out first: they were received later, so they are meant to come after (the hold waits
    for the intakes that could still be storing earlier ones, not for later ones)."""
    query = select(_HELD).where(_HELD.c.received_at < received_before)
    if dialect_name(session) == "postgresql":
        query = query.with_for_update(skip_locked=True)  # two releasers never move one row
    rows = list(await session.execute(query))
    if not rows:
        return set()
    rows.sort(key=lambda r: (r.lane, r.sort_key, r.id))
    await session.execute(delete(_HELD).where(_HELD.c.id.in_([r.id for r in rows])))
    await session.execute(insert(_OUTBOX), [{
        "lane": r.lane, "network": r.network, "room_id": r.room_id, "kind": r.kind,
        "payload": r.payload, "created_at": r.received_at, "state": "pending", "attempts": 0,
        "next_attempt_at": now, "claimed_until": 0.0} for r in rows])
    return {r.lane for r in rows}


async def count_held(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(_HELD)) or 0)
