"""The outbox's hot statements run straight on SQLite (bridge/db/direct.py): the same rows
written and returned as through SQLAlchemy, on SQLite and PostgreSQL alike, SQLAlchemy's
errors, and SQLAlchemy's way wherever the direct one is not safe."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.core import activity
from bridge.db import queues, store
from bridge.db.direct import DirectStatement
from bridge.db.engine import Database
from bridge.db.models import Activity
from bridge.db.queues import Delivery, NewDelivery
from bridge.slack import store as slack_store

LANE = "test:!r:x"
activity_table = Activity.__table__


async def _enqueue(session: AsyncSession, count: int) -> None:
    await queues.enqueue(session, [NewDelivery(network="test", room_id="!r:x", kind="relay",
                                               payload={"n": n, "text": "Grüße"})
                                   for n in range(count)])


def _record(connection: Connection, done: list[tuple[int, str | None]]) -> Delivery | None:
    """What the outbox worker's record does: successes, a mapping, the lane's next head."""
    queues.finish_deliveries_sync(connection, done)
    for item_id, _ in done:
        store.add_mapping_sync(connection, room_id="!r:x", event_id=f"$e{item_id}",
                               network="test", remote_space="s", remote_id=f"m{item_id}")
    return queues.claim_lane_head_sync(connection, LANE, 60.0, "holder")


async def test_the_records_statements_write_and_return_what_sqlalchemy_does(
        db: Database) -> None:
    async with db.transaction() as session:
        await _enqueue(session, 4)
    async with db.transaction() as session:
        first = await session.run_sync(lambda s: queues.claim_lane_head_sync(
            s.connection(), LANE, 60.0, "holder"))
    assert first is not None and first.payload == {"n": 0, "text": "Grüße"}
    async with db.transaction() as session:
        second = await session.run_sync(lambda s: _record(s.connection(), [(first.id, "$a")]))
    assert second is not None and second.payload["n"] == 1 and second.attempts == 0
    assert second.lane == LANE and second.failed_at is None
    assert isinstance(second.created_at, float)
    # Several successes in one statement, a mapping written again (ignored), and a head
    # that is not free (claimed) is not taken.
    async with db.transaction() as session:
        third = await session.run_sync(lambda s: _record(
            s.connection(), [(second.id, None), (first.id, "$again")]))
    assert third is not None and third.payload["n"] == 2
    async with db.transaction() as session:
        assert await session.run_sync(lambda s: queues.claim_lane_head_sync(
            s.connection(), LANE, 60.0, "other")) is None
    outbox = queues._OUTBOX
    async with db.reading() as connection:
        rows = (await connection.execute(
            select(outbox.c.state, outbox.c.result, outbox.c.attempts, outbox.c.claimed_until,
                   outbox.c.claimed_by).order_by(outbox.c.id))).all()
        mapped = [m.event_id for n in range(4) for m in await store.mappings_for_remote(
            connection, "test", "s", f"m{first.id + n}")]
    now = time.time()
    assert [(r.state, r.result, r.attempts, r.claimed_by) for r in rows] == [
        ("done", "$again", 2, None), ("done", None, 1, None), ("pending", None, 0, "holder"),
        ("pending", None, 0, None)]
    assert rows[0].claimed_until == 0.0 and now + 50 < rows[2].claimed_until < now + 61
    assert mapped == [f"$e{first.id}", f"$e{second.id}"]


async def test_the_lane_heads_a_transaction_queued_are_claimed_with_their_times(
        db: Database) -> None:
    """The claim at the end of a transaction that queued (the appservice's, the Slack
    intake's): its RETURNING has float columns, whose conversion only SQLite's direct form
    reads from the dialect (on PostgreSQL it goes through SQLAlchemy)."""
    async with db.transaction() as session:
        await _enqueue(session, 2)
    async with db.transaction() as session:
        claimed = await session.run_sync(lambda s: queues.claim_queued_lane_heads_sync(
            s.connection(), [LANE], 60.0, "holder"))
    [head] = claimed
    assert head.payload == {"n": 0, "text": "Grüße"} and head.lane == LANE
    assert isinstance(head.created_at, float) and head.created_at <= time.time()


async def test_an_error_is_sqlalchemys(db: Database) -> None:
    statement = DirectStatement(insert(queues._OUTBOX))
    row = NewDelivery(network="test", room_id="!r:x", kind="relay", payload={}).row(0.0)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        async with db.transaction() as session:
            await session.run_sync(lambda s: [statement.execute(s.connection(), {
                **row, "id": 7}) for _ in range(2)])
    async with db.reading() as connection:
        assert await queues.count_pending(connection) == (0, 0)  # all rolled back


async def test_a_read_converts_as_sqlalchemy_does(db: Database) -> None:
    """A Slack message's arrival check: the channel's link and whether the message is in
    the room already (a boolean, which SQLite stores as 0 or 1)."""
    async with db.transaction() as session:
        link = await store.add_link(session, room_id="!r:x", network="slack",
                                    remote_id="T1:C1", remote_name="general",
                                    created_by="@admin:x")
        await store.add_mapping(session, room_id="!r:x", event_id="$e", network="slack",
                                remote_space="T1:C1", remote_id="1700000000.000100")
    async with db.reading() as connection:
        assert await slack_store.arrival(connection, "T1:C1", "1700000000.000100") == \
            (True, link.id)
        assert await slack_store.arrival(connection, "T1:C1", "1700000000.000200") == \
            (False, link.id)
        assert await slack_store.arrival(connection, "T1:C2", "1700000000.000100") == \
            (False, None)
    async with db.sessions() as session:
        mapped, _ = await slack_store.arrival(session, "T1:C1", "1700000000.000100")
    assert mapped is True


async def test_on_sqlite_they_bypass_sqlalchemy_where_the_driver_runs_them_in_the_loop(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(sqlite_url)
    await db.upgrade()
    through_sqlalchemy: list[str] = []
    execute = Connection.execute

    def noted(self: Connection, statement: Any, *args: Any, **kwargs: Any) -> Any:
        through_sqlalchemy.append(str(statement).split()[0])
        return execute(self, statement, *args, **kwargs)

    try:
        async with db.transaction() as session:
            await _enqueue(session, 2)
        monkeypatch.setattr(Connection, "execute", noted)
        async with db.transaction() as session:
            head = await session.run_sync(lambda s: queues.claim_lane_head_sync(
                s.connection(), LANE, 60.0, "holder"))
            assert head is not None
            await session.run_sync(lambda s: _record(s.connection(), [(head.id, "$a")]))
            # What a Slack message's success notes, written at the commit.
            slack_store.note_cursor(session, "T1", "C1", "1700000000.000100")
            activity.note_message(session, room_id="!r:x", side="slack", user_id="@u:x")
        async with db.reading() as connection:
            await slack_store.arrival(connection, "T1:C1", "1")
        assert through_sqlalchemy == []
        async with db.reading() as connection:  # (written all the same)
            assert (await connection.execute(select(activity_table.c.messages))).scalar() == 1
        async with db.sessions() as session:
            assert await slack_store.cursor(session, "T1", "C1") == "1700000000.000100"
        through_sqlalchemy.clear()  # (those reads)
        # A write outside a writing transaction, which the driver hands to aiosqlite's
        # thread: through SQLAlchemy.
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: queues.claim_lane_head_sync(
                c, LANE, 60.0, "holder"))
        assert through_sqlalchemy == ["UPDATE"]
    finally:
        await db.close()
