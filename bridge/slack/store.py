"""Queries of the Slack connector: how far each linked channel has been bridged."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    bindparam,
    event,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bridge.db.direct import DirectStatement
from bridge.db.models import InboundKey, Link, MessageMapping
from bridge.db.queues import (
    dialect_name,
    direct_upsert,
    insert_ignoring_conflicts,
    upsert_statement,
)
from bridge.slack.models import SlackChannel

if TYPE_CHECKING:
    from bridge.db.engine import Reader


def ts_key(ts: str) -> tuple[int, int]:
    """Slack ts strings ("1700000000.000100") in numeric order; floats would round them."""
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros.ljust(6, "0")[:6] or 0)
    except ValueError:
        return 0, 0


async def cursor(session: AsyncSession, team_id: str, channel_id: str) -> str | None:
    return await session.scalar(
        select(SlackChannel.last_ts).where(SlackChannel.team_id == team_id,
                                           SlackChannel.channel_id == channel_id))


def canonical_ts(ts: str) -> str:
    """A ts as Slack writes it, "seconds.micros" with six digits of micros: two of them
    compare as numbers do when compared by (length, text)."""
    seconds, micros = ts_key(ts)
    return f"{seconds}.{micros:06d}"


_CHANNEL = cast(Table, SlackChannel.__table__)
_INBOUND_KEY = cast(Table, InboundKey.__table__)
_TS: Any = bindparam("new_ts", type_=String)
_TS_LENGTH: Any = bindparam("ts_length", type_=Integer)
# Built once, on the table: run for every bridged message. Moves the cursor forward only;
# cursors are stored canonical, so (length, text) order is numeric order.
_ADVANCE = update(_CHANNEL).where(
    _CHANNEL.c.team_id == bindparam("team"),
    _CHANNEL.c.channel_id == bindparam("channel"),
    or_(func.length(_CHANNEL.c.last_ts) < _TS_LENGTH,
        (func.length(_CHANNEL.c.last_ts) == _TS_LENGTH) & (_CHANNEL.c.last_ts < _TS)),
).values(last_ts=_TS, updated_at=bindparam("now"))


_PENDING_CURSORS = "slack_cursors_pending"


def note_cursor(session: AsyncSession, team_id: str, channel_id: str, ts: str) -> None:
    """:func:`advance_cursor`, written when the transaction commits: the outbox records the
    successes of several channels' messages in one transaction, and their cursors then move
    in one statement instead of one each."""
    canonical = canonical_ts(ts)
    pending: dict[tuple[str, str], str] = session.info.setdefault(_PENDING_CURSORS, {})
    noted = pending.get((team_id, channel_id))
    if noted is None or (len(noted), noted) < (len(canonical), canonical):
        pending[(team_id, channel_id)] = canonical


def _advance_many(dialect: str) -> DirectStatement:
    """INSERT ... ON CONFLICT DO UPDATE that moves each cursor forward only (as _ADVANCE
    does), or creates it (straight on SQLite where that is safe: bridge/db/direct.py)."""
    def build(insert: Callable[[Table], Any]) -> Any:
        new = insert(_CHANNEL)
        now, then = new.excluded.last_ts, _CHANNEL.c.last_ts
        return new.on_conflict_do_update(
            index_elements=[_CHANNEL.c.team_id, _CHANNEL.c.channel_id],
            set_={"last_ts": now, "updated_at": new.excluded.updated_at},
            where=or_(func.length(then) < func.length(now),
                      (func.length(then) == func.length(now)) & (then < now)))

    return direct_upsert(dialect, "slack.advance_cursors", build)


@event.listens_for(Session, "before_commit")
def _write_noted_cursors(session: Session) -> None:
    # Runs inside the commit of an AsyncSession too (in its greenlet), so it may execute.
    pending: dict[tuple[str, str], str] | None = session.info.pop(_PENDING_CURSORS, None)
    if not pending:
        return
    connection = session.connection()
    now = time.time()
    # In key order: two transactions touching the same rows lock them alike.
    _advance_many(connection.dialect.name).execute(connection, [
        {"team_id": team, "channel_id": channel, "last_ts": ts, "updated_at": now}
        for (team, channel), ts in sorted(pending.items())])


async def advance_cursor(session: AsyncSession, team_id: str, channel_id: str, ts: str) -> None:
    """Move the channel's cursor to ``ts`` unless it is already further (one statement for a
    new message; a second one only when the cursor is further already or not there yet)."""
    canonical = canonical_ts(ts)
    now = time.time()
    moved = await session.execute(_ADVANCE, {"team": team_id, "channel": channel_id,
                                             "new_ts": canonical,
                                             "ts_length": len(canonical), "now": now})
    if not moved.rowcount:  # type: ignore[attr-defined]
        await session.execute(insert_ignoring_conflicts(session, SlackChannel), {
            "team_id": team_id, "channel_id": channel_id, "last_ts": canonical,
            "updated_at": now})


async def claim_event_keys(session: AsyncSession, keys: list[str]) -> set[str]:
    """Claim the natural keys of a batch of Slack events (``store.claim_inbound_key`` for
    many, in one statement instead of one per event); returns those seen for the first
    time."""
    if not keys:
        return set()
    claim = upsert_statement(dialect_name(session), "slack.claim_event_keys", lambda insert:
                             insert(_INBOUND_KEY).on_conflict_do_nothing()
                             .returning(_INBOUND_KEY.c.key))
    now = time.time()
    rows = await session.execute(claim, [{"network": "slack", "key": key, "received_at": now}
                                         for key in keys])
    return {row[0] for row in rows}  # (scalars() builds a reduced result type per call)


_LINKED_CHANNELS = select(Link.remote_id, Link.room_id).where(Link.network == "slack")
# Built once (asked for every batch of Slack events): a statement built per call is keyed
# for SQLAlchemy's statement cache afresh each time, which costs more than running it.
_LINKED_CHANNELS_ASKED = _LINKED_CHANNELS.where(
    Link.remote_id.in_(bindparam("remote_ids", expanding=True)))


async def linked_channels(session: Reader,
                          remote_ids: set[str] | None = None) -> dict[str, str]:
    """Linked Slack conversations ("T…:C…") and their rooms; all of them, or those asked."""
    if remote_ids is None:
        rows = await session.execute(_LINKED_CHANNELS)
    elif not remote_ids:
        return {}
    else:
        rows = await session.execute(_LINKED_CHANNELS_ASKED,
                                     {"remote_ids": sorted(remote_ids)})
    return {row.remote_id: row.room_id for row in rows}


_LINK = cast(Table, Link.__table__)
_MAPPING = cast(Table, MessageMapping.__table__)
# Asked for every new Slack message before it goes to the room: is it there already, and
# through which link (its origin marker) does it come? One round trip instead of two: each
# statement costs far more in SQLAlchemy and the driver than in the database.
_ARRIVAL = select(
    select(_LINK.c.id).where(_LINK.c.network == "slack",
                             _LINK.c.remote_id == bindparam("space"))
    .scalar_subquery().label("link_id"),
    exists().where(_MAPPING.c.network == "slack", _MAPPING.c.remote_space == bindparam("space"),
                   _MAPPING.c.remote_id == bindparam("ts")).label("mapped"),
)


# (Run straight on SQLite where that is safe: bridge/db/direct.py.)
_ARRIVAL_DIRECT = DirectStatement(_ARRIVAL)


async def arrival(session: Reader, space: str, ts: str) -> tuple[bool, int | None]:
    """For the message ``ts`` of the channel ``space`` ("T…:C…"): whether the room has it
    already (mapped either way), and the ID of the channel's link (None: not linked)."""
    link_id, mapped = await session.run_sync(_arrival, {"space": space, "ts": ts})
    return bool(mapped), link_id


def _arrival(reader: Session | Connection, parameters: dict[str, str]) -> tuple[Any, Any]:
    connection = reader.connection() if isinstance(reader, Session) else reader
    (row,) = _ARRIVAL_DIRECT.execute(connection, parameters)
    return row[0], row[1]


# The state of a linked channel in Slack that stops the bridge from posting there, kept in the
# link's settings: "archived" or "deleted" (no key: usable).
CHANNEL_STATE = "slack_state"


async def set_channel_state(session: AsyncSession, remote_id: str, state: str | None) -> bool:
    """Record (or clear, with None) the state of a linked channel; False if it is not linked
    or already in that state."""
    link = await session.scalar(select(Link).where(Link.network == "slack",
                                                   Link.remote_id == remote_id))
    if link is None:
        return False
    settings = json.loads(link.settings or "{}")
    if settings.get(CHANNEL_STATE) == state:
        return False
    if state is None:
        settings.pop(CHANNEL_STATE, None)
    else:
        settings[CHANNEL_STATE] = state
    link.settings = json.dumps(settings)
    return True


async def channel_states(session: AsyncSession) -> dict[str, str]:
    """Linked channels ("T…:C…") that Slack archived or deleted, and which of the two."""
    rows = await session.execute(select(Link.remote_id, Link.settings)
                                 .where(Link.network == "slack"))
    states = {}
    for remote_id, settings in rows:
        state = json.loads(settings or "{}").get(CHANNEL_STATE)
        if state:
            states[remote_id] = str(state)
    return states


@dataclass
class MappingRow:
    remote_id: str
    event_id: str
    thread_root: str | None
    created_at: float


async def mappings_since(session: AsyncSession, remote_space: str,
                         since: float) -> list[MappingRow]:
    """The mappings of a channel ("T…:C…") made since ``since`` (seconds): what catch-up
    compares with Slack's recent history."""
    rows = await session.execute(
        select(MessageMapping.remote_id, MessageMapping.event_id, MessageMapping.thread_root,
               MessageMapping.created_at)
        .where(MessageMapping.network == "slack", MessageMapping.remote_space == remote_space,
               MessageMapping.created_at >= since))
    return [MappingRow(r.remote_id, r.event_id, r.thread_root, r.created_at) for r in rows]


async def remote_ids_of_events(session: AsyncSession, remote_space: str,
                               event_ids: set[str]) -> dict[str, str]:
    """Matrix event -> the Slack ts it stands for (thread roots of catch-up's replies)."""
    if not event_ids:
        return {}
    rows = await session.execute(
        select(MessageMapping.event_id, MessageMapping.remote_id)
        .where(MessageMapping.network == "slack", MessageMapping.remote_space == remote_space,
               MessageMapping.event_id.in_(event_ids)))
    return {r.event_id: r.remote_id for r in rows}


async def seconds_since_claimed(session: AsyncSession, key: str) -> float | None:
    """How long ago an inbound Slack item's natural key was first seen (None: never)."""
    received = await session.scalar(select(InboundKey.received_at).where(
        InboundKey.network == "slack", InboundKey.key == key))
    return None if received is None else max(0.0, time.time() - received)
