"""The outbox worker going on with a lane: claiming the lane's next item together with the
previous one's outcome, and writes recorded with that outcome (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.config import OutboxConfig
from bridge.core.errors import TemporaryError
from bridge.core.outbox import OutboxWorker
from bridge.db import queues, store
from bridge.db.engine import Database
from bridge.db.queues import Delivery, NewDelivery


async def _database(url: str) -> Database:
    db = Database(url)
    await db.upgrade()
    return db


async def _enqueue(db: Database, lane_items: int, room: str = "!r:x") -> None:
    async with db.transaction() as session:
        await queues.enqueue(session, [NewDelivery(network="test", room_id=room, kind="relay",
                                                   payload={"n": n})
                                       for n in range(lane_items)])


async def _work_until(worker: OutboxWorker, db: Database, done: Callable[[], bool],
                      seconds: float) -> tuple[int, int]:
    """Start the worker, wait until ``done()`` (at most ``seconds``), let it finish what it
    holds, stop it and close the database; the queues' pending counts at the end."""
    await worker.start()
    try:
        for _ in range(int(seconds / 0.02)):
            if done():
                break
            await asyncio.sleep(0.02)
        await worker.drain()
        async with db.sessions() as session:
            return await queues.count_pending(session)
    finally:
        await worker.stop()
        await db.close()


async def test_claim_lane_head_takes_only_a_due_free_head(database_url: str) -> None:
    db = await _database(database_url)
    lane = "test:!r:x"
    try:
        await _enqueue(db, 3)
        await _enqueue(db, 1, room="!other:x")
        async with db.transaction() as session:
            head = await queues.claim_lane_head(session, lane, 60)
        assert head is not None and head.payload == {"n": 0} and head.lane == lane
        async with db.transaction() as session:  # claimed: not again, and nothing behind it
            assert await queues.claim_lane_head(session, lane, 60) is None
        async with db.transaction() as session:  # waiting for a retry: not due
            await queues.retry_delivery(session, head.id, time.time() + 60, "down")
            assert await queues.claim_lane_head(session, lane, 60) is None
        async with db.transaction() as session:
            await queues.finish_delivery(session, head.id, "ok")
            second = await queues.claim_lane_head(session, lane, 60)
        assert second is not None and second.payload == {"n": 1}
        async with db.sessions() as session:
            claimed_until = await session.scalar(
                select(queues._OUTBOX.c.claimed_until).where(queues._OUTBOX.c.id == second.id))
        assert claimed_until is not None and claimed_until > time.time() + 30
    finally:
        await db.close()


@pytest.mark.parametrize("form", ["coroutine", "plain"])
async def test_a_lane_is_delivered_in_order_with_its_outcome_writes(database_url: str,
                                                                     form: str) -> None:
    """Each success is recorded with the writes its delivery asked for (here a message
    mapping, as the Matrix side does), given as a coroutine function of the session
    (``with_outcome``) or a plain function of its connection (``with_outcome_sync``); a
    failed attempt's writes are dropped."""
    db = await _database(database_url)
    seen: list[int] = []
    fail_once = {1}

    async def deliver(item: Delivery) -> str:
        n = item.payload["n"]
        mapping = {"room_id": item.room_id, "event_id": f"$e{n}-{item.attempts}",
                   "network": "test", "remote_space": "s", "remote_id": f"m{n}"}
        if form == "coroutine":
            async def record(session: AsyncSession) -> None:
                await store.add_mapping(session, **mapping)

            assert item.with_outcome is not None
            item.with_outcome.append(record)
        else:
            assert item.with_outcome_sync is not None
            item.with_outcome_sync.append(
                lambda connection: store.add_mapping_sync(connection, **mapping))
        if n in fail_once:
            fail_once.discard(n)
            raise TemporaryError("down", retry_after=0.05)
        seen.append(n)
        return f"$e{n}"

    async def on_failed(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    await _enqueue(db, 5)
    worker = OutboxWorker(db, deliver, on_failed, OutboxConfig())
    await worker.start()
    try:
        for _ in range(300):
            if len(seen) == 5:
                break
            await asyncio.sleep(0.02)
        await worker.drain()
    finally:
        await worker.stop()
    try:
        assert seen == [0, 1, 2, 3, 4]
        mapped = []
        async with db.sessions() as session:
            for n in range(5):
                mapped += [(m.remote_id, m.event_id) for m in
                           await store.mappings_for_remote(session, "test", "s", f"m{n}")]
            pending = await queues.count_pending(session)
        # One mapping per delivered item; the failed attempt's (attempts 0 of item 1) is not.
        assert mapped == [("m0", "$e0-0"), ("m1", "$e1-1"), ("m2", "$e2-0"), ("m3", "$e3-0"),
                          ("m4", "$e4-0")]
        assert pending == (0, 0)
    finally:
        await db.close()


async def test_an_item_taken_meanwhile_is_not_claimed_again(database_url: str) -> None:
    db = await _database(database_url)
    lane = "test:!r:x"
    try:
        await _enqueue(db, 1)
        async with db.transaction() as session:  # as if another process holds it
            await session.execute(update(queues._OUTBOX).values(claimed_until=time.time() + 60))
            assert await queues.claim_lane_head(session, lane, 60) is None
    finally:
        await db.close()


async def test_lanes_finishing_together_are_recorded_together_and_isolated(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Successes of many lanes at once are recorded in shared transactions, and each lane
    then goes on with its next item. A success whose write fails is retried on its own
    while the other lanes go on, and its own lane waits for it: order before speed."""
    db = await _database(database_url)
    rooms = [f"!r{n}:x" for n in range(12)]
    delivered: list[tuple[str, int]] = []
    broken_writes = 3
    batches: list[int] = []
    finish_deliveries = queues.finish_deliveries_sync

    def counting(connection: Connection, outcomes: Any) -> None:
        batches.append(len(outcomes))
        finish_deliveries(connection, outcomes)

    monkeypatch.setattr(queues, "finish_deliveries_sync", counting)

    async def deliver(item: Delivery) -> str:
        n = item.payload["n"]
        assert item.with_outcome is not None
        if item.room_id == "!r3:x" and n == 0:
            async def flaky(session: AsyncSession) -> None:
                nonlocal broken_writes
                if broken_writes:
                    broken_writes -= 1
                    raise RuntimeError("this delivery's own write failed")

            item.with_outcome.append(flaky)
        await asyncio.sleep(0.01)  # the lanes' deliveries overlap, as HTTP calls do
        delivered.append((item.room_id, n))
        return f"${item.room_id}{n}"

    async def on_failed(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    for room in rooms:
        await _enqueue(db, 3, room=room)
    worker = OutboxWorker(db, deliver, on_failed, OutboxConfig())
    pending = await _work_until(worker, db, lambda: len(delivered) >= 36, 10)

    for room in rooms:  # every lane in order, each item once
        assert [n for r, n in delivered if r == room] == [0, 1, 2], room
    assert pending == (0, 0)
    # The other lanes did not wait for the failing write's retries (its lane did).
    waited = delivered.index(("!r3:x", 1))
    assert all(delivered.index((r, 2)) < waited for r in rooms if r != "!r3:x")
    # Shared transactions: fewer finishing statements than successes.
    assert max(batches) > 1 and len(batches) < 36, batches


async def _enqueue_fan_out(db: Database, room: str, subscribers: int) -> None:
    """As the email connector queues a room message: one lane per subscriber."""
    async with db.transaction() as session:
        await queues.enqueue(session, [
            NewDelivery(network="email", room_id=room, kind="mail", payload={"n": n},
                        lane=f"email:{room}:s{n}@example.org") for n in range(subscribers)])


async def test_a_big_fan_out_keeps_to_its_share_and_holds_no_other_room_back(
        database_url: str) -> None:
    """A fan-out to many subscribers has at most IN_FLIGHT_PER_ROOM deliveries in flight
    (so memory does not grow with the subscribers), and a small room's message, queued
    behind all of them, goes out while the fan-out's first deliveries still wait for it."""
    db = await _database(database_url)
    subscribers = 3 * queues.IN_FLIGHT_PER_ROOM + 10
    small_delivered = asyncio.Event()
    delivered: list[tuple[str, int]] = []
    in_flight = 0
    most_in_flight = 0

    async def deliver(item: Delivery) -> str:
        nonlocal in_flight, most_in_flight
        if item.room_id == "!small:x":
            delivered.append((item.room_id, item.payload["n"]))
            small_delivered.set()
            return "ok"
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            # Held back, the small room would never come: fail the test instead of hanging.
            await asyncio.wait_for(small_delivered.wait(), 30)
            await asyncio.sleep(0.001)
        finally:
            in_flight -= 1
        delivered.append((item.room_id, item.payload["n"]))
        return "ok"

    async def on_failed(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    await _enqueue_fan_out(db, "!big:x", subscribers)
    await _enqueue(db, 1, room="!small:x")
    worker = OutboxWorker(db, deliver, on_failed, OutboxConfig())
    pending = await _work_until(worker, db, lambda: len(delivered) >= subscribers + 1, 30)

    assert delivered[0] == ("!small:x", 0)
    assert sorted(n for room, n in delivered if room == "!big:x") == list(range(subscribers))
    assert most_in_flight == queues.IN_FLIGHT_PER_ROOM
    assert pending == (0, 0)


async def test_a_fan_out_stopped_midway_goes_on_after_a_restart_each_mail_once(
        database_url: str) -> None:
    """The bridge stops in the middle of a fan-out: what was sent is recorded, the next
    process sends the rest, nobody gets the message twice or not at all."""
    db = await _database(database_url)
    # Past halfway the first worker still finishes what it holds (the room's share in flight,
    # and what batches being recorded claimed): enough subscribers that some are left.
    subscribers = 4 * queues.IN_FLIGHT_PER_ROOM + 30
    delivered: list[int] = []
    halfway = asyncio.Event()

    async def deliver(item: Delivery) -> str:
        await asyncio.sleep(0.002)
        delivered.append(item.payload["n"])
        if len(delivered) >= subscribers // 2:
            halfway.set()
        return "ok"

    async def on_failed(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    await _enqueue_fan_out(db, "!big:x", subscribers)
    first = OutboxWorker(db, deliver, on_failed, OutboxConfig(), holder="first",
                         lease_seconds=300)
    await first.start()
    await asyncio.wait_for(halfway.wait(), 60)
    await first.stop()
    sent_before = len(delivered)
    assert sent_before < subscribers
    second = OutboxWorker(db, deliver, on_failed, OutboxConfig(), holder="second",
                          lease_seconds=300)
    pending = await _work_until(second, db, lambda: len(delivered) >= subscribers, 30)
    assert sorted(delivered) == list(range(subscribers))
    assert pending == (0, 0)


async def _queue_and_claim(db: Database, worker: OutboxWorker,
                           deliveries: list[NewDelivery]) -> list[Delivery]:
    """As Hub.enqueue does: queue, and claim in the same transaction what may go out."""
    async with db.transaction() as session:
        await queues.enqueue(session, deliveries)
        return await worker.claim_queued(session)


async def test_a_transaction_claims_the_heads_of_the_few_lanes_it_queued_in(
        database_url: str) -> None:
    """Queued in a lane or two, the transaction claims their heads itself: due, free, and
    under the room's cap of deliveries in flight. A head that a gone process had claimed is
    left to the claim loop, which delivers it as taken over (the side then looks whether
    the first attempt arrived) before the item queued behind it."""
    db = await _database(database_url)
    delivered: list[tuple[int, bool]] = []

    async def deliver(item: Delivery) -> str:
        delivered.append((item.payload["n"], item.taken_over))
        return "ok"

    async def on_failed(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    worker = OutboxWorker(db, deliver, on_failed, OutboxConfig(), holder="live")
    try:
        # Two new lanes: both heads claimed, by this process, leased.
        claimed = await _queue_and_claim(db, worker, [
            NewDelivery(network="test", room_id="!a:x", kind="relay", payload={"n": 1}),
            NewDelivery(network="test", room_id="!b:x", kind="relay", payload={"n": 2})])
        assert [item.payload["n"] for item in claimed] == [1, 2]
        assert not any(item.taken_over for item in claimed)
        async with db.sessions() as session:
            holders = set(await session.scalars(select(queues._OUTBOX.c.claimed_by)))
        assert holders == {"live"}
        # Behind a head in flight: nothing to claim (the lane's worker goes on with it).
        assert await _queue_and_claim(db, worker, [
            NewDelivery(network="test", room_id="!a:x", kind="relay", payload={"n": 3})]) == []
        async with db.transaction() as session:
            await queues.release_claims(session, [item.id for item in claimed])
            await session.execute(update(queues._OUTBOX).values(state="done"))

        # A head claimed by a process that is gone (its lease ran out).
        await _enqueue(db, 1, room="!c:x")
        async with db.transaction() as session:
            assert len(await queues.claim_deliveries(session, 10, -1, "gone")) == 1
        assert await _queue_and_claim(db, worker, [
            NewDelivery(network="test", room_id="!c:x", kind="relay", payload={"n": 4})]) == []
        pending = await _work_until(worker, db, lambda: len(delivered) >= 2, 10)
        assert delivered == [(0, True), (4, False)]
        assert pending == (0, 0)
    finally:
        await worker.stop()
        await db.close()


async def test_a_lane_queued_in_a_room_at_its_cap_waits_for_the_claim_loop(
        database_url: str) -> None:
    """A room with its share of deliveries in flight (a fan-out): a lane queued there is not
    claimed with its transaction, another room's is."""
    db = await _database(database_url)

    async def deliver(item: Delivery) -> str:
        return "ok"

    async def on_failed(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    worker = OutboxWorker(db, deliver, on_failed, OutboxConfig(), holder="live")
    try:
        await _enqueue_fan_out(db, "!big:x", queues.IN_FLIGHT_PER_ROOM)
        async with db.transaction() as session:
            in_flight = await queues.claim_deliveries(session, 1000, 60, "live")
        assert len(in_flight) == queues.IN_FLIGHT_PER_ROOM
        claimed = await _queue_and_claim(db, worker, [
            NewDelivery(network="email", room_id="!big:x", kind="mail", payload={"n": -1},
                        lane="email:!big:x:late@example.org"),
            NewDelivery(network="email", room_id="!small:x", kind="mail", payload={"n": 0},
                        lane="email:!small:x:s0@example.org")])
        assert [item.room_id for item in claimed] == ["!small:x"]
    finally:
        await db.close()
