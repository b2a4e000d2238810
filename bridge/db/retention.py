"""What each table holds and how long it is kept: the declarations that the retention job,
``bridge data-report`` and ``bridge erase`` share, and their SQL.

The core declares its own tables here (:data:`CORE_TABLES`); each network declares its own
through its registry entry (``Network.stored_data``), so the core never names a network's
tables. A table nobody declares shows in ``bridge data-report`` as undeclared (and a test
fails), so a new table cannot slip past the record of processing activities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True)
class StoredData:
    """One table as the data-protection officer sees it."""

    #: The table's name (as in ``Base.metadata``).
    table: str
    #: What it stores, in plain words (``bridge data-report`` prints it).
    what: str
    #: The column holding when a row was made (UNIX seconds): its age for the retention job
    #: and "the oldest" of the report. None: the table has no such time.
    age_column: str | None = None
    #: The ``retention.*`` key that limits how long rows are kept (``delivered_days``), or
    #: None when rows are kept as long as they are in use (see ``kept``).
    retention: str | None = None
    #: When ``retention`` is None: how long rows live instead, in words.
    kept: str = "as long as it is in use"
    #: Only rows for which this holds may be deleted for age (finished queue rows).
    deletable: Callable[[Table], ColumnElement[bool]] | None = None


def _finished(table: Table) -> ColumnElement[bool]:
    # A pending row is work accepted and not yet done: never deleted for its age.
    return table.c.state.in_(("done", "failed"))


CORE_TABLES: tuple[StoredData, ...] = (
    StoredData("portal", "the Matrix rooms the bot is in, with their name, alias and "
               "department", "created_at", kept="until the bot leaves the room"),
    StoredData("link", "which room is linked to which remote conversation (a channel, a "
               "room's mail address), who linked it and when", "created_at",
               kept="until the room is unlinked"),
    StoredData("puppet", "the profile cache of each remote person's Matrix puppet: remote "
               "ID, display name, avatar", "created_at",
               kept="until the person is erased (`bridge erase`)"),
    StoredData("message_mapping", "which Matrix event each remote message became or came "
               "from (IDs only, no content)", "created_at", "message_mappings_days"),
    StoredData("inbound_key", "keys of remote messages already taken in (event IDs, a "
               "room and a message ID), so a repeat is not posted twice",
               "received_at", "message_mappings_days"),
    StoredData("inbox", "Matrix events waiting to be relayed, and finished ones (the whole "
               "event, content included)", "received_at", "delivered_days",
               deletable=_finished),
    StoredData("outbox", "deliveries to Matrix and the other networks, waiting and "
               "finished (the message content included)", "created_at", "delivered_days",
               deletable=_finished),
    StoredData("outbox_held", "remote messages held a moment while several bridge "
               "processes receive, until they can go in their conversation's order (the "
               "message content included)",
               "received_at", kept="seconds: until every process has stored what came before"),
    StoredData("bridge_process", "the running bridge processes: host name, process ID and "
               "their last heartbeat (no personal data)", "started_at",
               kept="while the process runs; removed when it stops or is found dead"),
    StoredData("bridge_lease", "which process runs a once-at-a-time job (catch-up, "
               "retention) and until when (no personal data)", "acquired_at",
               kept="while the job's process holds it"),
    StoredData("appservice_transaction", "IDs of the homeserver's transactions already "
               "handled", "received_at", "delivered_days"),
    StoredData("audit_log", "administrative actions: who linked, subscribed, erased what, "
               "when and how (no message content)", "at", "audit_days"),
    StoredData("activity", "messages per room, day and side, with people as a hash of "
               "their Matrix or puppet ID (the progress report)", None,
               kept="for ever (counts; a person's rows go with `bridge erase`)"),
    StoredData("identity_link", "which remote identity (a user, an address) is whose Matrix "
               "account, who linked it and when", "created_at",
               kept="until unlinked or erased"),
    StoredData("identity_claim", "pending self-service links: the Matrix account, the "
               "identity and a hash of the one-time code", "created_at",
               kept="until confirmed; an hour after it expired (minutes) at the latest"),
)


def _primary_key(table: Table) -> ColumnElement[Any]:
    columns = list(table.primary_key.columns)
    return columns[0] if len(columns) == 1 else tuple_(*columns)


async def delete_older_batch(session: AsyncSession, table: Table, data: StoredData,
                             cutoff: float, batch: int) -> int:
    """Delete up to ``batch`` rows of ``table`` made before ``cutoff``; how many went.

    On PostgreSQL the rows are chosen ``FOR UPDATE SKIP LOCKED``: two processes running the
    job at once take different rows instead of waiting on each other (SQLite has a single
    writer anyway and renders no such clause)."""
    assert data.age_column is not None
    key = _primary_key(table)
    chosen = select(*table.primary_key.columns).where(table.c[data.age_column] < cutoff)
    if data.deletable is not None:
        chosen = chosen.where(data.deletable(table))
    chosen = chosen.limit(batch).with_for_update(skip_locked=True)
    result = await session.execute(delete(table).where(key.in_(chosen)))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def table_summary(session: AsyncSession, table: Table,
                        age_column: str | None) -> tuple[int, float | None]:
    """(rows, the oldest row's time or None)."""
    if age_column is None:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0), None
    row = (await session.execute(select(func.count(), func.min(table.c[age_column]))
                                 .select_from(table))).one()
    return int(row[0] or 0), (float(row[1]) if row[1] is not None else None)
