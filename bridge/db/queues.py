"""The durable inbox (Matrix events in) and outbox (deliveries out), and transaction dedup.

Both queues are plain tables so that a restart resumes where the last process stopped, and
so that several bridge processes can share one PostgreSQL: the inbox is drained per room
under a room-scoped advisory lock, the outbox is claimed with ``FOR UPDATE SKIP LOCKED``
plus a lease, so two workers never deliver the same item and a crashed worker's items come
free again when the lease runs out.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Float,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bridge import json_codec
from bridge.db.direct import DirectStatement
from bridge.db.models import AppserviceTransaction, InboxItem, OutboxItem

if TYPE_CHECKING:
    from bridge.db.engine import Reader


def dialect_name(session: Reader | Connection) -> str:
    if not isinstance(session, AsyncSession):
        return session.dialect.name
    bind = session.bind
    assert bind is not None, "sessions are always bound to the bridge's engine"
    return bind.dialect.name


_UPSERTS: dict[tuple[str, Hashable], Any] = {}


def upsert_statement(dialect: str, name: Hashable,
                     build: Callable[[Callable[[Table], Any]], Any]) -> Any:
    """The statement that ``build`` makes from ``dialect``'s INSERT (the one with ON
    CONFLICT), built once per dialect and ``name``.

    Built once: a statement built per call is keyed for SQLAlchemy's statement cache afresh
    each time, which costs more than running it (hot paths pass their rows as execute()'s
    parameters instead of calling .values()). The dialect is imported here, on first use:
    the PostgreSQL dialect costs 2 MB of resident memory that a bridge on SQLite never needs
    (issue 15).
    """
    statement = _UPSERTS.get((dialect, name))
    if statement is None:
        module = "postgresql" if dialect == "postgresql" else "sqlite"
        insert = importlib.import_module(f"sqlalchemy.dialects.{module}").insert
        statement = _UPSERTS[(dialect, name)] = build(insert)
    return statement


_DIRECT_UPSERTS: dict[tuple[str, Hashable], DirectStatement] = {}


def direct_upsert(dialect: str, name: Hashable,
                  build: Callable[[Callable[[Table], Any]], Any]) -> DirectStatement:
    """:func:`upsert_statement` as a :class:`DirectStatement` (built once as well): for the
    upserts that run with every relayed message (bridge/db/direct.py)."""
    direct = _DIRECT_UPSERTS.get((dialect, name))
    if direct is None:
        direct = _DIRECT_UPSERTS[(dialect, name)] = DirectStatement(
            upsert_statement(dialect, name, build))
    return direct


def insert_ignoring_conflicts(session: AsyncSession | Connection, model: type) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING, on the model's table (Core: no ORM bookkeeping)."""
    return upsert_statement(dialect_name(session), ("ignoring", model), _ignoring(model))


def direct_insert_ignoring_conflicts(connection: Connection, model: type) -> DirectStatement:
    """:func:`insert_ignoring_conflicts` as a :class:`DirectStatement` (see direct_upsert)."""
    return direct_upsert(connection.dialect.name, ("ignoring", model), _ignoring(model))


def _ignoring(model: type) -> Callable[[Callable[[Table], Any]], Any]:
    table = cast(Table, model.__table__)  # type: ignore[attr-defined]
    return lambda insert: insert(table).on_conflict_do_nothing()


# --- appservice transactions and the inbox -------------------------------------------------

# Core statements on the table: the hot path needs no ORM identity bookkeeping.
_INBOX = cast(Table, InboxItem.__table__)
_OUTBOX = cast(Table, OutboxItem.__table__)
_ANY_PENDING = select(_INBOX.c.id).where(_INBOX.c.state == "pending").limit(1)


async def record_transaction_id(session: AsyncSession, txn_id: str) -> bool:
    """True the first time the homeserver sends this transaction ID, False for a repeat.

    A repeated ID is only a hint: Synapse on SQLite numbers transactions from 1 again after
    each restart, so whether a repeat is a retry is decided by its events
    (:func:`unknown_event_ids`)."""
    result = await session.execute(insert_ignoring_conflicts(session, AppserviceTransaction),
                                   {"txn_id": txn_id, "received_at": time.time()})
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def known_transaction_ids(session: AsyncSession, txn_ids: list[str]) -> set[str]:
    """Those of these transaction IDs that were handled (by any process on this database)."""
    return set(await session.scalars(
        select(AppserviceTransaction.txn_id).where(AppserviceTransaction.txn_id.in_(txn_ids))))


async def unknown_event_ids(session: AsyncSession, events: list[dict[str, Any]]) -> list[str]:
    """The IDs of these (room) events that the inbox has never seen."""
    wanted = [e["event_id"] for e in events]
    known: set[str] = set()
    for start in range(0, len(wanted), 500):  # (bounded IN lists)
        chunk = wanted[start:start + 500]
        known.update(await session.scalars(
            select(_INBOX.c.event_id).where(_INBOX.c.event_id.in_(chunk))))
    return [event_id for event_id in wanted if event_id not in known]


def room_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that belong in the inbox: those of a room, with an ID."""
    return [e for e in events
            if isinstance(e.get("room_id"), str) and isinstance(e.get("event_id"), str)]


async def store_pending(session: AsyncSession, events: list[dict[str, Any]]) -> set[str]:
    now = time.time()
    rows = [
        {
            "room_id": event["room_id"],
            "event_id": event["event_id"],
            "event": json_codec.dumps(event),
            "received_at": now,
            "state": "pending",
            "attempts": 0,
        }
        for event in events
    ]
    if rows:
        await session.execute(insert_ignoring_conflicts(session, InboxItem), rows)
    return {row["room_id"] for row in rows}


async def inbox_has_pending(session: AsyncSession) -> bool:
    return await session.scalar(_ANY_PENDING) is not None


async def record_handled(session: AsyncSession,
                         events: list[dict[str, Any]]) -> list[InboxEntry]:
    """Record events that are handled right now (no backlog to wait behind); returns the
    ones not seen before, in order, for routing. The row is the event-ID dedup record."""
    if not events:
        return []
    now = time.time()
    rows = [{"room_id": e["room_id"], "event_id": e["event_id"], "event": "{}",
             "received_at": now, "state": "done", "attempts": 0} for e in events]
    insert = insert_ignoring_conflicts(session, InboxItem)
    if dialect_name(session) == "postgresql":
        # Concurrent transactions are possible here: let the unique index decide who
        # records (and so handles) an event, and learn the answer from RETURNING.
        result = await session.execute(
            insert.returning(_INBOX.c.event_id, sort_by_parameter_order=True), rows)
        new = {row.event_id for row in result}
    else:
        # One writer at a time (the write lock is held), and a plain multi-row INSERT is
        # far cheaper than RETURNING, which SQLite runs row by row.
        result = await session.execute(insert, rows)
        if result.rowcount == len(rows):  # type: ignore[attr-defined]
            new = {r["event_id"] for r in rows}  # the usual case: all of them are new
        else:  # some were known: ours are the rows stamped with this very moment
            new = set(await session.scalars(select(_INBOX.c.event_id).where(
                _INBOX.c.event_id.in_([e["event_id"] for e in events]),
                _INBOX.c.received_at == now)))
    # The inbox row ID is not needed for handled events (only failures refer to it, by
    # event ID below); 0 marks "recorded as done".
    return [InboxEntry(id=0, room_id=e["room_id"], event=e, received_at=now, attempts=0)
            for e in events if e["event_id"] in new]


async def lock_rooms(session: AsyncSession, room_ids: set[str]) -> set[str]:
    """Take these rooms' inbox for this DB transaction; returns those we got.

    On PostgreSQL another bridge process may be draining some of them right now (a
    room-scoped advisory lock says who). SQLite has one writer at a time anyway.
    """
    if dialect_name(session) != "postgresql" or not room_ids:
        return room_ids
    rooms = sorted(room_ids)  # a fixed order, so two processes cannot deadlock
    result = await session.execute(
        text("SELECT r FROM unnest(CAST(:rooms AS text[])) AS r "
             "WHERE pg_try_advisory_xact_lock(hashtextextended(r, 0))"),
        {"rooms": rooms},
    )
    return {row[0] for row in result}


@dataclass(slots=True)
class InboxEntry:
    id: int
    room_id: str
    event: dict[str, Any]
    received_at: float
    attempts: int




async def next_inbox_batch(session: AsyncSession, limit: int,
                           room_id: str | None = None) -> list[InboxEntry]:
    """The oldest pending events (of one room, if given), in arrival order."""
    query = (
        select(_INBOX.c.id, _INBOX.c.room_id, _INBOX.c.event, _INBOX.c.received_at,
               _INBOX.c.attempts)
        .where(_INBOX.c.state == "pending")
        .order_by(_INBOX.c.id)
        .limit(limit)
    )
    if room_id is not None:
        query = query.where(_INBOX.c.room_id == room_id)
    rows = await session.execute(query)
    return [
        InboxEntry(id=r.id, room_id=r.room_id, event=json_codec.loads(r.event),
                   received_at=r.received_at, attempts=r.attempts)
        for r in rows
    ]


async def mark_inbox_done(session: AsyncSession, ids: Iterable[int]) -> None:
    ids = list(ids)
    if ids:
        # The event body is no longer needed; the row stays as the event-ID dedup record.
        await session.execute(
            update(_INBOX).where(_INBOX.c.id.in_(ids)).values(state="done", event="{}")
        )


async def mark_inbox_failed(session: AsyncSession, entry: InboxEntry, error: str) -> None:
    await session.execute(
        update(_INBOX)
        .where(_INBOX.c.event_id == entry.event["event_id"])
        .values(state="failed", last_error=error[:4000], attempts=_INBOX.c.attempts + 1)
    )


# Built once: health checks and metrics scrapes ask for them (a benchmark every 50 ms).
_COUNT_INBOX_PENDING = select(func.count()).select_from(_INBOX).where(_INBOX.c.state == "pending")
_COUNT_OUTBOX_PENDING = select(func.count()).select_from(_OUTBOX) \
    .where(_OUTBOX.c.state == "pending")


async def count_pending(session: Reader) -> tuple[int, int]:
    """(inbox pending, outbox pending), for health and metrics."""
    inbox = await session.scalar(_COUNT_INBOX_PENDING)
    outbox = await session.scalar(_COUNT_OUTBOX_PENDING)
    return int(inbox or 0), int(outbox or 0)


async def prune_history(session: AsyncSession, older_than: float) -> None:
    """Forget handled items and old transaction IDs; homeservers retry within minutes."""
    await session.execute(
        delete(AppserviceTransaction).where(AppserviceTransaction.received_at < older_than)
    )
    await session.execute(
        delete(InboxItem).where(InboxItem.state == "done", InboxItem.received_at < older_than)
    )
    await session.execute(
        delete(OutboxItem).where(OutboxItem.state == "done", OutboxItem.created_at < older_than)
    )


# --- the outbox ------------------------------------------------------------------------


@dataclass(slots=True)
class NewDelivery:
    """What to enqueue: one delivery to one side of one room."""

    network: str
    room_id: str
    kind: str
    payload: dict[str, Any]
    # Deliveries of one lane go out in order; by default one lane per network and room.
    lane: str | None = None

    def row(self, now: float) -> dict[str, Any]:
        return {
            "lane": self.lane or f"{self.network}:{self.room_id}",
            "network": self.network,
            "room_id": self.room_id,
            "kind": self.kind,
            "payload": json_codec.dumps(self.payload),
            "created_at": now,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "claimed_until": 0.0,
        }


@dataclass(slots=True)
class Delivery:
    """A claimed outbox item."""

    id: int
    lane: str
    network: str
    room_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int
    created_at: float
    # When the item last failed for good, if it did and an admin put it back since.
    failed_at: float | None = None
    # Claimed before by another process that is gone (its claim ran out): it may have
    # delivered the item and died before recording that, so a side that can look (the
    # Slack channel's history) checks before delivering again.
    taken_over: bool = False
    # Set by the outbox worker while it delivers the item: writes that belong with the
    # success (a message mapping, say) go here, and are made in the transaction that
    # records it, instead of one transaction each. None: nobody records it, write now.
    with_outcome: list[Callable[[AsyncSession], Awaitable[None]]] | None = None
    # The same for writes that are plain functions of the recording transaction's
    # connection: made in the greenlet of the outbox's own statements of the record, without
    # a greenlet (and an ORM session's execution) of their own per statement. None likewise.
    with_outcome_sync: list[Callable[[Connection], None]] | None = None


async def enqueue(session: AsyncSession, deliveries: Iterable[NewDelivery]) -> int:
    now = time.time()
    rows = [d.row(now) for d in deliveries]
    if rows:
        await session.execute(insert(_OUTBOX), rows)
        session.info.setdefault(_ENQUEUED_LANES, set()).update(r["lane"] for r in rows)
    return len(rows)


_ENQUEUED_LANES = "bridge.enqueued_lanes"


def enqueued_lanes(session: AsyncSession | Session) -> set[str]:
    """The lanes that ``session`` has enqueued deliveries in (to wake the outbox for)."""
    lanes: set[str] = session.info.get(_ENQUEUED_LANES, set())
    return lanes


def _claimable() -> Any:
    """Items that may go out now: pending, due, unclaimed, and the oldest of their lane.

    Built once: constructing this statement costs more than running it. (Core, on the table:
    claiming needs no ORM objects.)
    """
    now = bindparam("now", type_=Float)
    earlier = _OUTBOX.alias("earlier")
    return (
        _OUTBOX.c.state == "pending",
        _OUTBOX.c.next_attempt_at <= now,
        _OUTBOX.c.claimed_until <= now,
        ~exists().where(
            earlier.c.lane == _OUTBOX.c.lane,
            earlier.c.state == "pending",
            earlier.c.id < _OUTBOX.c.id,
        ),
    )


_DELIVERY_COLUMNS = (_OUTBOX.c.id, _OUTBOX.c.lane, _OUTBOX.c.network, _OUTBOX.c.room_id,
                     _OUTBOX.c.kind, _OUTBOX.c.payload, _OUTBOX.c.attempts,
                     _OUTBOX.c.created_at, _OUTBOX.c.failed_at)
# Deliveries of one room to one network in flight at once (claimed, not yet finished), by
# all workers together. A room message fans out to one lane per mail subscriber: claiming
# all 5,000 at once kept them all in memory until the relay had sent them; a cap on all
# deliveries instead held every other room back behind the big one. So each room gets its
# share, and the rest of the big one is claimed as its deliveries finish.
IN_FLIGHT_PER_ROOM = 64


def _claim(for_update: bool) -> Any:
    """The claimable items, oldest first, at most ``per_room`` in flight per room and
    network (counting those claimed already)."""
    now = bindparam("now", type_=Float)
    in_flight = select(_OUTBOX.c.room_id, _OUTBOX.c.network, func.count().label("n")).where(
        _OUTBOX.c.state == "pending", _OUTBOX.c.claimed_until > now,
    ).group_by(_OUTBOX.c.room_id, _OUTBOX.c.network).subquery("in_flight")
    slot = func.row_number().over(partition_by=(_OUTBOX.c.room_id, _OUTBOX.c.network),
                                  order_by=_OUTBOX.c.id) + func.coalesce(in_flight.c.n, 0)
    candidates = select(_OUTBOX.c.id, slot.label("slot")).select_from(_OUTBOX.outerjoin(
        in_flight, and_(in_flight.c.room_id == _OUTBOX.c.room_id,
                        in_flight.c.network == _OUTBOX.c.network)),
    ).where(*_claimable()).subquery("candidates")
    query = select(*_DELIVERY_COLUMNS, _OUTBOX.c.claimed_by).where(_OUTBOX.c.id.in_(
        select(candidates.c.id).where(candidates.c.slot <= bindparam("per_room"))),
    ).order_by(_OUTBOX.c.id).limit(bindparam("limit"))
    if not for_update:
        return query  # (SQLite: one writer at a time, nobody claims meanwhile)
    # The conditions again on the rows themselves: PostgreSQL re-checks those (not the
    # candidates' list) on a row another process claimed while this one waited for it.
    return query.where(*_claimable()).with_for_update(skip_locked=True)


_CLAIM = _claim(for_update=False)
_CLAIM_FOR_UPDATE = _claim(for_update=True)
# Claim the head of one lane if it is due and free, in one statement: the head is found
# through ix_outbox_lane however long the lane's backlog (_claimable's form walks every
# pending item of every lane), and the conditions are re-checked under the row's lock.
_CLAIM_LANE_HEAD = update(_OUTBOX).where(
    _OUTBOX.c.id == select(_OUTBOX.c.id).where(
        _OUTBOX.c.lane == bindparam("head_lane"), _OUTBOX.c.state == "pending",
    ).order_by(_OUTBOX.c.id).limit(1).scalar_subquery(),
    _OUTBOX.c.state == "pending",
    _OUTBOX.c.next_attempt_at <= bindparam("now"), _OUTBOX.c.claimed_until <= bindparam("now"),
).values(claimed_until=bindparam("until"), claimed_by=bindparam("holder")) \
    .returning(*_DELIVERY_COLUMNS)


def _room_in_flight() -> Any:
    """The items of the updated row's room and network in flight (claimed, not finished)."""
    in_flight = _OUTBOX.alias("in_flight")
    return select(func.count()).where(
        in_flight.c.room_id == _OUTBOX.c.room_id, in_flight.c.network == _OUTBOX.c.network,
        in_flight.c.state == "pending", in_flight.c.claimed_until > bindparam("now"),
    ).scalar_subquery()


# The head of a lane, claimed in the transaction that just queued in it (see
# claim_queued_lane_heads_sync): the head the claim query would take, without reading every
# pending item. Under the room's cap as there, and never claimed before: a head that a gone
# process had claimed is left to the claim query, which tells its delivery it was taken over.
_CLAIM_QUEUED_LANE_HEAD = _CLAIM_LANE_HEAD.where(
    _OUTBOX.c.claimed_by.is_(None), _room_in_flight() < bindparam("per_room"))


# The next free lane heads of a room and network, for the worker of a fan-out (one lane per
# mail subscriber): the next subscribers take the finished ones' places under the per-room
# cap, without a round through the claim loop (whose query reads every pending item).
# Looked for among the room's next items after the finished ones (a fan-out's items are
# queued together), read through the primary key: the conditions on the state and due
# time are written so that no index can serve them ("|| ''", "+ 0"), or the database would
# walk every pending item of every room through ix_outbox_pending instead.
_ROOM_NEXT_WINDOW = 4 * IN_FLIGHT_PER_ROOM


def _claim_room_next() -> Any:
    now = bindparam("now", type_=Float)
    earlier = _OUTBOX.alias("earlier")
    window = select(_OUTBOX.c.id).where(
        _OUTBOX.c.id > bindparam("after"), _OUTBOX.c.room_id == bindparam("next_room"),
        _OUTBOX.c.network == bindparam("next_network"),
    ).order_by(_OUTBOX.c.id).limit(_ROOM_NEXT_WINDOW)
    head = select(_OUTBOX.c.id).where(
        _OUTBOX.c.id.in_(window),
        _OUTBOX.c.state.concat("") == "pending",
        _OUTBOX.c.next_attempt_at + 0 <= now,
        _OUTBOX.c.claimed_until <= now,
        ~exists().where(earlier.c.lane == _OUTBOX.c.lane, earlier.c.state == "pending",
                        earlier.c.id < _OUTBOX.c.id),
    ).order_by(_OUTBOX.c.id).limit(bindparam("count"))
    # The conditions again under the row's lock (PostgreSQL: another process may have
    # claimed it meanwhile).
    return update(_OUTBOX).where(
        _OUTBOX.c.id.in_(head), _OUTBOX.c.state.concat("") == "pending",
        _OUTBOX.c.next_attempt_at + 0 <= now, _OUTBOX.c.claimed_until <= now,
    ).values(claimed_until=bindparam("until"), claimed_by=bindparam("holder")) \
        .returning(*_DELIVERY_COLUMNS)


_CLAIM_ROOM_NEXT = _claim_room_next()
# The claims that go with a relayed message's record (the outbox worker's), run straight on
# SQLite where that is safe (bridge/db/direct.py).
_CLAIM_LANE_HEAD_DIRECT = DirectStatement(_CLAIM_LANE_HEAD)
_CLAIM_QUEUED_LANE_HEAD_DIRECT = DirectStatement(_CLAIM_QUEUED_LANE_HEAD)
_SET_CLAIMED = update(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True))) \
    .values(claimed_until=bindparam("until"), claimed_by=bindparam("holder"))


def _deliveries(rows: Any) -> list[Delivery]:
    """The rows of a statement that selects _DELIVERY_COLUMNS first, as deliveries. (Read
    by position: a row's attribute lookup by name costs several times as much.)"""
    return [Delivery(id=item_id, lane=lane, network=network, room_id=room_id, kind=kind,
                     payload=json_codec.loads(payload), attempts=attempts,
                     created_at=created_at, failed_at=failed_at)
            for item_id, lane, network, room_id, kind, payload, attempts, created_at, failed_at,
            *_ in rows]


# The outbox worker's claims and successes come in the ``_sync`` form as well: functions of a
# synchronous Connection, which the worker runs together in one greenlet
# (``AsyncSession.run_sync``). Each ``await session.execute`` is a greenlet of its own plus the
# ORM session's bookkeeping, some 0.04 ms per statement more than SQLite's own work.


def claim_deliveries_sync(connection: Connection, limit: int, lease: float,
                          holder: str | None = None,
                          per_room: int = IN_FLIGHT_PER_ROOM) -> list[Delivery]:
    """Claim the due head item of up to ``limit`` lanes, for ``lease`` seconds; the heartbeat
    of ``holder`` (a process ID, see bridge/core/heartbeat.py) renews the claim while it lives.
    No room has more than ``per_room`` items of one network in flight.

    Only a lane's oldest pending item is eligible, so a lane whose head waits for a retry
    holds back everything behind it: order within a lane is never broken.
    """
    now = time.time()
    query = _CLAIM_FOR_UPDATE if connection.dialect.name == "postgresql" else _CLAIM
    rows = list(connection.execute(query, {"now": now, "limit": limit, "per_room": per_room}))
    items = _deliveries(rows)
    for item, row in zip(items, rows, strict=True):
        # Finishing, retrying or releasing an item clears its holder: one still named is
        # one whose holder's claim ran out.
        claimed_by = row[-1]  # (after _DELIVERY_COLUMNS, see _claim)
        item.taken_over = claimed_by is not None and claimed_by != holder
    if items:
        connection.execute(_SET_CLAIMED, {"ids": [i.id for i in items], "until": now + lease,
                                          "holder": holder})
    return items


async def claim_deliveries(session: AsyncSession, limit: int, lease: float,
                           holder: str | None = None,
                           per_room: int = IN_FLIGHT_PER_ROOM) -> list[Delivery]:
    """:func:`claim_deliveries_sync` in the session's transaction."""
    return await session.run_sync(lambda s: claim_deliveries_sync(
        s.connection(), limit, lease, holder, per_room))


def claim_queued_lane_heads_sync(connection: Connection, lanes: Iterable[str], lease: float,
                                 holder: str | None = None,
                                 per_room: int = IN_FLIGHT_PER_ROOM) -> list[Delivery]:
    """:func:`claim_deliveries_sync` for a transaction that queued in a few ``lanes``: their
    heads, one statement each, instead of reading every pending item of every lane. Other
    due items are the claim loop's, as ever (woken for the lanes not taken here)."""
    now = time.time()
    claimed: list[Delivery] = []
    for lane in lanes:
        claimed += _deliveries(_CLAIM_QUEUED_LANE_HEAD_DIRECT.execute(connection, {
            "head_lane": lane, "now": now, "until": now + lease, "holder": holder,
            "per_room": per_room}))
    return sorted(claimed, key=lambda item: item.id)


def claim_lane_head_sync(connection: Connection, lane: str, lease: float,
                         holder: str | None = None) -> Delivery | None:
    """Claim the head item of one lane if it may go out now (the worker that just finished
    the item before it goes on with the lane, without a round through the claim loop)."""
    now = time.time()
    claimed = _deliveries(_CLAIM_LANE_HEAD_DIRECT.execute(connection, {
        "head_lane": lane, "now": now, "until": now + lease, "holder": holder}))
    return claimed[0] if claimed else None  # none: empty, waiting, or taken meanwhile


async def claim_lane_head(session: AsyncSession, lane: str, lease: float,
                          holder: str | None = None) -> Delivery | None:
    """:func:`claim_lane_head_sync` in the session's transaction."""
    return await session.run_sync(lambda s: claim_lane_head_sync(s.connection(), lane, lease,
                                                                 holder))


def claim_room_next_sync(connection: Connection, after: Delivery, count: int, lease: float,
                         holder: str | None = None) -> list[Delivery]:
    """Claim the first ``count`` free, due lane heads of ``after``'s room and network queued
    after it (see _CLAIM_ROOM_NEXT), oldest first; fewer when there are not as many."""
    now = time.time()
    claimed = _deliveries(connection.execute(_CLAIM_ROOM_NEXT, {
        "after": after.id, "next_room": after.room_id, "next_network": after.network,
        "count": count, "now": now, "until": now + lease, "holder": holder}))
    return sorted(claimed, key=lambda item: item.id)


_RELEASE = update(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True))) \
    .values(claimed_until=0.0, claimed_by=None)


async def release_claims(session: AsyncSession, ids: list[int]) -> None:
    await session.execute(_RELEASE, {"ids": ids})


def _next_due(greatest: Any) -> Any:
    # Only lane heads count: an item queued behind one in flight is not "due" however old it
    # is (counting it made the worker spin until the head was delivered); the head's
    # completion wakes the worker instead.
    earlier = _OUTBOX.alias("earlier")
    return select(func.min(greatest(_OUTBOX.c.next_attempt_at, _OUTBOX.c.claimed_until))) \
        .where(_OUTBOX.c.state == "pending",
               ~exists().where(earlier.c.lane == _OUTBOX.c.lane, earlier.c.state == "pending",
                               earlier.c.id < _OUTBOX.c.id))


# SQLite spells GREATEST as the two-argument MAX.
_NEXT_DUE = {"sqlite": _next_due(func.max), "postgresql": _next_due(func.greatest)}


async def next_due_time(session: Reader) -> float | None:
    """When the earliest waiting delivery becomes due (None: nothing is waiting)."""
    value = await session.scalar(_NEXT_DUE[dialect_name(session)])
    return float(value) if value is not None else None


_FINISH = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("item_id")).values(
    state="done", result=bindparam("result"), claimed_until=0.0, claimed_by=None,
    attempts=_OUTBOX.c.attempts + 1)
_RETRY = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("item_id")).values(
    next_attempt_at=bindparam("at"), claimed_until=0.0, claimed_by=None,
    last_error=bindparam("error"),
    attempts=_OUTBOX.c.attempts + 1)
_FAIL = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("item_id")).values(
    state="failed", claimed_until=0.0, claimed_by=None, last_error=bindparam("error"),
    attempts=_OUTBOX.c.attempts + 1, failed_at=bindparam("now"), failure_reported=True)
_FINISH_DIRECT = DirectStatement(_FINISH)


async def finish_delivery(session: AsyncSession, item_id: int, result: str | None) -> None:
    await session.execute(_FINISH, {"item_id": item_id, "result": result})


def finish_deliveries_sync(connection: Connection,
                           outcomes: Sequence[tuple[int, str | None]]) -> None:
    """Several successes, one statement (executemany)."""
    if len(outcomes) == 1:
        item_id, result = outcomes[0]
        _FINISH_DIRECT.execute(connection, {"item_id": item_id, "result": result})
    elif outcomes:
        _FINISH_DIRECT.execute(connection, [{"item_id": item_id, "result": result}
                                            for item_id, result in outcomes])


async def retry_delivery(session: AsyncSession, item_id: int, at: float, error: str) -> None:
    await session.execute(_RETRY, {"item_id": item_id, "at": at, "error": error[:4000]})


async def fail_delivery(session: AsyncSession, item_id: int, error: str) -> bool:
    """Mark the item failed for good; True when its room is yet to be told (False for an
    item that failed before, was put back by ``!bridge retry``, and failed again)."""
    reported = await session.scalar(select(_OUTBOX.c.failure_reported).where(
        _OUTBOX.c.id == item_id))
    await session.execute(_FAIL, {"item_id": item_id, "error": error[:4000],
                                  "now": time.time()})
    return not reported


# --- failed deliveries: seen and retried by admins -------------------------------------


@dataclass(slots=True)
class FailedDelivery:
    id: int
    network: str
    room_id: str
    kind: str
    error: str
    failed_at: float


def _failed(room_id: str | None) -> Any:
    condition = _OUTBOX.c.state == "failed"
    return condition if room_id is None else condition & (_OUTBOX.c.room_id == room_id)


_COUNT_FAILED = select(func.count()).select_from(_OUTBOX).where(_failed(None))


async def count_failed(session: Reader, room_id: str | None = None) -> int:
    """Deliveries that failed for good (of one room, if given) and wait for a retry."""
    query = _COUNT_FAILED if room_id is None else \
        select(func.count()).select_from(_OUTBOX).where(_failed(room_id))
    return int(await session.scalar(query) or 0)


async def list_failed(session: AsyncSession, room_id: str | None,
                      limit: int) -> list[FailedDelivery]:
    """The newest failed deliveries first (of one room, if given)."""
    rows = await session.execute(
        select(_OUTBOX.c.id, _OUTBOX.c.network, _OUTBOX.c.room_id, _OUTBOX.c.kind,
               _OUTBOX.c.last_error, _OUTBOX.c.failed_at, _OUTBOX.c.created_at)
        .where(_failed(room_id))
        .order_by(_OUTBOX.c.failed_at.desc(), _OUTBOX.c.id.desc())
        .limit(limit))
    return [FailedDelivery(id=r.id, network=r.network, room_id=r.room_id, kind=r.kind,
                           error=r.last_error or "",
                           failed_at=r.failed_at if r.failed_at is not None else r.created_at)
            for r in rows]


async def retry_failed(session: AsyncSession, *, item_id: int | None = None,
                       room_id: str | None = None) -> list[tuple[str, str]]:
    """Put failed deliveries back: pending, attempts reset, due now (the outbox's give-up
    deadline counts from the failure, see ``Delivery.failed_at``). One item, a room's, or
    all (neither given). Returns their lanes (to wake the outbox for) and rooms."""
    condition = _failed(room_id)
    if item_id is not None:
        condition = condition & (_OUTBOX.c.id == item_id)
    now = time.time()
    result = await session.execute(
        update(_OUTBOX).where(condition).values(
            state="pending", attempts=0, next_attempt_at=now, claimed_until=0.0,
        ).returning(_OUTBOX.c.lane, _OUTBOX.c.room_id))
    put_back = [(row.lane, row.room_id) for row in result]
    session.info.setdefault(_ENQUEUED_LANES, set()).update(lane for lane, _ in put_back)
    return put_back
