"""The durable queues on their own, on SQLite and PostgreSQL (no homeserver needed)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from bridge.config import OutboxConfig
from bridge.core.errors import TemporaryError
from bridge.core.outbox import OutboxWorker
from bridge.db import queues
from bridge.db.engine import Database
from bridge.db.queues import Delivery, NewDelivery


async def _database(url: str) -> Database:
    db = Database(url)
    await db.upgrade()
    return db


async def _store(session: object, txn_id: str, events: list[dict]) -> set[str] | None:
    """What the transaction endpoint does when events must wait behind a backlog."""
    if not await queues.record_transaction_id(session, txn_id):  # type: ignore[arg-type]
        return None
    return await queues.store_pending(session, queues.room_events(events))  # type: ignore[arg-type]


async def test_transaction_and_event_ids_are_deduplicated(database_url: str) -> None:
    db = await _database(database_url)
    try:
        events = [{"room_id": "!a:x", "event_id": f"$e{i}", "type": "m.room.message"}
                  for i in range(3)]
        async with db.transaction() as session:
            assert await _store(session, "t1", events) == {"!a:x"}
        async with db.transaction() as session:
            assert await _store(session, "t1", events) is None
        async with db.transaction() as session:  # same events, new transaction ID
            more = [
                *events,
                {"room_id": "!b:x", "event_id": "$new", "type": "m.room.message"},
                {"type": "m.presence"},  # no room: not for the inbox
            ]
            assert await _store(session, "t2", more) == {"!a:x", "!b:x"}
        async with db.sessions() as session:
            assert await queues.count_pending(session) == (4, 0)
            batch = await queues.next_inbox_batch(session, 10, room_id="!a:x")
        assert [e.event["event_id"] for e in batch] == ["$e0", "$e1", "$e2"]
    finally:
        await db.close()


async def test_two_workers_on_one_database_deliver_each_item_once_and_in_lane_order(
        database_url: str) -> None:
    """Two bridge processes sharing the database (here: two workers on two engines)."""
    db_a, db_b = await _database(database_url), Database(database_url)
    delivered: dict[str, list[int]] = defaultdict(list)
    in_flight: set[str] = set()
    doubled: list[str] = []

    async def deliver(item: Delivery) -> str:
        if item.lane in in_flight:
            doubled.append(item.lane)
        in_flight.add(item.lane)
        await asyncio.sleep(0.002)
        delivered[item.lane].append(item.payload["n"])
        in_flight.discard(item.lane)
        return "ok"

    async def never_fails(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    lanes, per_lane = 6, 25
    async with db_a.transaction() as session:
        await queues.enqueue(session, [
            NewDelivery(network="test", room_id=f"!r{lane}:x", kind="relay", payload={"n": n})
            for n in range(per_lane) for lane in range(lanes)
        ])
    workers = [OutboxWorker(db, deliver, never_fails, OutboxConfig()) for db in (db_a, db_b)]
    try:
        for worker in workers:
            await worker.start()
        for _ in range(400):
            if sum(len(v) for v in delivered.values()) >= lanes * per_lane:
                break
            await asyncio.sleep(0.05)
    finally:
        for worker in workers:
            await worker.stop()
        await db_a.close()
        await db_b.close()
    assert doubled == []
    assert sorted(delivered) == [f"test:!r{lane}:x" for lane in range(lanes)]
    for lane, numbers in delivered.items():
        assert numbers == list(range(per_lane)), lane


async def test_retry_waits_and_keeps_the_lane_in_order(database_url: str) -> None:
    db = await _database(database_url)
    seen: list[int] = []
    failures = {0: 2}  # item 0 fails twice

    async def deliver(item: Delivery) -> None:
        n = item.payload["n"]
        if failures.get(n):
            failures[n] -= 1
            raise TemporaryError("down", retry_after=0.05)
        seen.append(n)

    async def on_failed(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    async with db.transaction() as session:
        await queues.enqueue(session, [NewDelivery(network="test", room_id="!r:x",
                                                   kind="relay", payload={"n": n})
                                       for n in range(3)])
    worker = OutboxWorker(db, deliver, on_failed, OutboxConfig())
    await worker.start()
    try:
        for _ in range(200):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.02)
    finally:
        await worker.stop()
        await db.close()
    assert seen == [0, 1, 2]


async def test_old_history_is_pruned_but_pending_work_is_kept(database_url: str) -> None:
    import time

    db = await _database(database_url)
    try:
        async with db.transaction() as session:
            await _store(session, "old", [
                {"room_id": "!a:x", "event_id": "$done"}, {"room_id": "!a:x", "event_id": "$p"}])
        async with db.transaction() as session:
            batch = await queues.next_inbox_batch(session, 1, room_id="!a:x")
            await queues.mark_inbox_done(session, [batch[0].id])
        async with db.transaction() as session:
            await queues.prune_history(session, time.time() + 1)
        async with db.transaction() as session:
            # The transaction ID and the handled event are forgotten, the pending one is not.
            assert await _store(session, "old", [
                {"room_id": "!a:x", "event_id": "$done"}]) == {"!a:x"}
        async with db.sessions() as session:
            pending = await queues.next_inbox_batch(session, 10, room_id="!a:x")
        assert [e.event["event_id"] for e in pending] == ["$p", "$done"]
    finally:
        await db.close()
