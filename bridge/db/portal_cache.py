"""The portals and links of rooms, kept in memory where this process is the only writer.

Every relayed delivery asks whether its room still has its link (an unlinked room's waiting
messages are not sent), and every transaction with the bridge's own puppets' events asks
which links their rooms have. Each answer was a read through aiosqlite's thread, some
0.15 ms of CPU: more than a Matrix -> Slack message's formatting and its HTTP call to Slack
together. Links change rarely (link, unlink, a policy, the bot leaving a room).

The answers are kept only on SQLite, whose file serves a single bridge process
(bridge/db/single_process.py), so every change of these tables goes through this process's
engine and is seen here: any INSERT, UPDATE or DELETE on ``link`` or ``portal`` (a portal's
deletion removes its links by cascade), from the ORM or from Core, empties the cache as it
is sent, and again when its transaction has ended (its connection goes back to the pool,
or the database says so for the connection it keeps for writing).
A read made while such a transaction is open, or that overlapped one, is answered but not
kept, so what is kept is never older than the last commit. On PostgreSQL, which several
processes share, every question is a read as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause

from bridge.db import store
from bridge.db.store import LinkInfo, PortalInfo

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.pool import ConnectionPoolEntry

    from bridge.db.engine import Database, Reader

# The tables whose rows the cache holds.
WATCHED_TABLES = frozenset({"link", "portal"})
# A bridge has a few hundred portals; beyond this many the cache starts again empty.
MAX_ROOMS = 10_000
# Marks a pooled connection whose transaction changed a watched table (in its ``info``,
# which stays with the DBAPI connection until it goes back to the pool).
_CHANGED = "bridge.portal_cache.changed"
# Plain SQL that cannot change a row.
_READS = ("select", "pragma", "begin", "commit", "rollback", "savepoint", "release")

# (None: the room is no portal.)
_Room = tuple[PortalInfo | None, tuple[LinkInfo, ...]]


def _changes_watched(statement: Any) -> bool:
    if isinstance(statement, UpdateBase):
        return getattr(getattr(statement, "table", None), "name", None) in WATCHED_TABLES
    if isinstance(statement, str | TextClause):
        # Plain SQL is not used on these tables; should it ever be, any statement that
        # names one and is not a read counts as a change.
        sql = str(statement).lstrip().lower()
        return not sql.startswith(_READS) and any(t in sql for t in WATCHED_TABLES)
    return False


class PortalCache:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.enabled = not db.postgres
        self._rooms: dict[str, _Room] = {}
        # Bumped by every change: a read that saw it change meanwhile is not kept.
        self._generation = 0
        # Transactions that changed a watched table and have not ended yet.
        self._open_changes = 0
        if self.enabled:
            engine = db.engine.sync_engine
            event.listen(engine, "before_execute", self._before_execute)
            event.listen(engine.pool, "checkin", self._transaction_ended)
            event.listen(engine.pool, "invalidate", self._invalidated)
            db.kept_transaction_ended.append(self._kept_transaction_ended)

    # --- what the per-message paths ask ------------------------------------------------

    async def portals_and_links(
        self, room_ids: set[str], session: Reader | None = None
    ) -> tuple[dict[str, PortalInfo], dict[str, list[LinkInfo]]]:
        """As :func:`store.portals_and_links` (fresh dicts and lists: callers change them).
        What is not known is read in ``session`` when given (a caller's transaction), else
        on a connection of its own."""
        known = {room: self._rooms.get(room) for room in room_ids} if self.enabled else {}
        missing = {room for room, cached in known.items() if cached is None} \
            if self.enabled else room_ids
        if missing:
            generation = self._generation
            if session is not None:
                portals, links = await store.portals_and_links(session, missing)
            else:
                async with self.db.reading() as connection:
                    portals, links = await store.portals_and_links(connection, missing)
            read = {room: (portals.get(room), tuple(links[room])) for room in missing}
            known.update(read)
            if self.enabled and generation == self._generation and not self._open_changes:
                if len(self._rooms) + len(read) > MAX_ROOMS:
                    self._rooms.clear()
                self._rooms.update(read)
        result_portals: dict[str, PortalInfo] = {}
        result_links: dict[str, list[LinkInfo]] = {}
        for room, entry in known.items():
            assert entry is not None
            portal, room_links = entry
            if portal is not None:
                result_portals[room] = portal
            result_links[room] = list(room_links)
        return result_portals, result_links

    async def link_in_room(self, room_id: str, link_id: int) -> LinkInfo | None:
        """As :func:`store.link_in_room`: the room's link ``link_id``, if it still has it."""
        if not self.enabled:
            async with self.db.reading() as connection:
                return await store.link_in_room(connection, room_id, link_id)
        _, links = await self.portals_and_links({room_id})
        return next((link for link in links[room_id] if link.id == link_id), None)

    # --- noticing changes ------------------------------------------------------------------

    def _forget(self) -> None:
        self._generation += 1
        self._rooms.clear()

    def _before_execute(self, connection: Connection, statement: Any, *_: Any) -> None:
        if not _changes_watched(statement):
            return
        info = connection.info
        if not info.get(_CHANGED):
            info[_CHANGED] = True
            self._open_changes += 1
        self._forget()

    def _transaction_ended(self, _dbapi_connection: Any,
                           entry: ConnectionPoolEntry | None) -> None:
        if entry is not None:
            self._kept_transaction_ended(entry.info)

    def _kept_transaction_ended(self, info: dict[Any, Any]) -> None:
        # Also called by the database for the connection it keeps for writing transactions
        # (bridge.db.engine), which does not go back to the pool after each one.
        if info.pop(_CHANGED, False):
            self._open_changes -= 1
            self._forget()

    def _invalidated(self, _dbapi_connection: Any, entry: ConnectionPoolEntry | None,
                     _exception: BaseException | None) -> None:
        # A connection dropped in its transaction: nothing of it was committed.
        self._transaction_ended(_dbapi_connection, entry)
