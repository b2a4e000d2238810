"""The Database's connections on SQLite: the writing transactions and the reads each go
through a connection kept open between uses (bridge/db/engine.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from bridge.db import queues
from bridge.db.engine import Database
from bridge.db.queues import NewDelivery


def _committed_items(path: Path) -> list[str]:
    """The outbox's items as another process sees them (committed ones only)."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return list(connection.scalars(
                select(queues._OUTBOX.c.kind).order_by(queues._OUTBOX.c.id)))
    finally:
        engine.dispose()


def _item(kind: str) -> NewDelivery:
    return NewDelivery(network="test", room_id="!r:x", kind=kind, payload={})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "bridge.db"


@pytest.fixture
async def db(path: Path) -> AsyncIterator[Database]:
    """On SQLite only: PostgreSQL keeps no connections (each use takes one from the pool)."""
    database = Database(f"sqlite+aiosqlite:///{path}")
    await database.upgrade()
    try:
        yield database
    finally:
        await database.close()


async def test_a_transaction_commits_even_after_one_was_left_open(db: Database, path: Path) -> None:
    """A transaction cut short in its commit or rollback (a cancellation) can leave the kept
    connection inside it: the next transaction must not join it (its writes would never be
    committed), but start afresh on a new connection."""
    async with db.transaction() as session:
        await queues.enqueue(session, [_item("first")])
    kept = db._kept_writer
    assert kept is not None
    # What a commit cut short leaves behind: the connection still in its transaction.
    await kept.begin()
    # (Through run_sync: the kept connection's statements run without the switch that
    # AsyncConnection.execute insists on, see sqlite_driver.through_sessions_only.)
    await kept.run_sync(lambda connection: connection.execute(
        queues._OUTBOX.insert(), _item("never committed").row(0.0)))
    async with db.transaction() as session:
        await queues.enqueue(session, [_item("second")])
    assert kept.closed and db._kept_writer is not kept
    assert _committed_items(path) == ["first", "second"]


async def test_a_transaction_that_fails_writes_nothing(db: Database, path: Path) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await queues.enqueue(session, [_item("rolled back")])
            raise RuntimeError("the caller failed")
    async with db.transaction() as session:
        await queues.enqueue(session, [_item("committed")])
    assert _committed_items(path) == ["committed"]


async def test_reads_see_the_latest_commit_and_may_overlap(db: Database, path: Path) -> None:
    count = select(func.count()).select_from(queues._OUTBOX)
    async with db.reading() as connection:
        assert await connection.scalar(count) == 0
    async with db.transaction() as session:
        await queues.enqueue(session, [_item("new")])
    async with db.reading() as connection:  # the kept connection, used again
        assert await connection.scalar(count) == 1
        # A read inside another (a reader that awaits something else meanwhile) gets a
        # connection of its own.
        async with db.reading() as inner:
            assert inner is not connection
            assert await inner.scalar(count) == 1
        assert await connection.scalar(count) == 1
