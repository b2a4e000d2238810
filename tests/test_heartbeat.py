"""Heartbeats, claims kept alive, leases and held events, on SQLite and PostgreSQL.

Two "processes" here are two Heartbeats (and outbox workers) on two engines of one
database; a process "dies" when its heartbeat stops without its clean stop (its row, claims
and leases stay behind, as after a SIGKILL). Nothing waits for a clock: each test waits for
states (beats counted, rows seen)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.config import OutboxConfig
from bridge.core.heartbeat import HOUSEKEEPING, Heartbeat
from bridge.core.outbox import OutboxWorker
from bridge.db import leases as db_leases
from bridge.db import queues
from bridge.db.engine import Database
from bridge.db.leases import ProcessRow
from bridge.db.queues import Delivery, NewDelivery

INTERVAL, EXPIRY = 0.1, 0.6


async def _database(url: str) -> Database:
    db = Database(url)
    await db.upgrade()
    return db


async def _until(condition: Callable[[], bool], what: str, tries: int = 600) -> None:
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def _kill(heartbeat: Heartbeat) -> None:
    """As SIGKILL leaves it: no more beats, and nothing cleaned up."""
    assert heartbeat._task is not None
    heartbeat._task.cancel()


async def test_a_slow_delivery_stays_claimed_while_its_process_beats_and_moves_when_it_dies(
        database_url: str) -> None:
    db_a, db_b = await _database(database_url), Database(database_url)
    beat_a = Heartbeat(db_a, INTERVAL, EXPIRY)
    beat_b = Heartbeat(db_b, INTERVAL, EXPIRY)
    delivered_by: list[str] = []
    started = asyncio.Event()
    hang = asyncio.Event()  # never set: A's delivery hangs, as on a slow remote side

    def deliverer(name: str):  # type: ignore[no-untyped-def]
        async def deliver(item: Delivery) -> str:
            if name == "a":
                started.set()
                await hang.wait()
            delivered_by.append(name)
            return "ok"
        return deliver

    async def never_fails(item: Delivery, error: str, hint: str | None) -> None:
        raise AssertionError(error)

    worker_a = OutboxWorker(db_a, deliverer("a"), never_fails, OutboxConfig(),
                            holder=beat_a.process_id, lease_seconds=EXPIRY)
    worker_b = OutboxWorker(db_b, deliverer("b"), never_fails, OutboxConfig(),
                            holder=beat_b.process_id, lease_seconds=EXPIRY)
    try:
        await beat_a.start()
        await beat_b.start()
        async with db_a.transaction() as session:
            await queues.enqueue(session, [NewDelivery(network="test", room_id="!r:x",
                                                       kind="relay", payload={})])
        await worker_a.start()
        await asyncio.wait_for(started.wait(), 10)
        await worker_b.start()
        # Well past the claim's first expiry, with A beating all along: B must not take it.
        claimed_at = time.time()
        await _until(lambda: beat_a.last_beat > claimed_at + 3 * EXPIRY, "A beats on")
        worker_b.wake()
        async with db_b.transaction() as session:
            assert await queues.claim_deliveries(session, 10, EXPIRY,
                                                 beat_b.process_id) == []
        assert delivered_by == []
        # A dies mid-delivery: B delivers the item once A's claim has run out.
        _kill(beat_a)
        assert worker_a._task is not None
        for task in (worker_a._task, *worker_a._in_flight):
            task.cancel()  # (and the claim is left as it was)
        died = time.time()
        await _until(lambda: delivered_by == ["b"], "B takes the item over")
        taken_over = time.time() - died
        assert taken_over < EXPIRY + 5 * INTERVAL + 2.0, taken_over
    finally:
        hang.set()
        await worker_b.stop()
        await beat_b.stop()
        await db_a.close()
        await db_b.close()


async def test_a_lease_is_held_by_one_process_and_moves_when_its_holder_dies(
        database_url: str) -> None:
    db_a, db_b = await _database(database_url), Database(database_url)
    beat_a = Heartbeat(db_a, INTERVAL, EXPIRY)
    beat_b = Heartbeat(db_b, INTERVAL, EXPIRY)
    runs: list[str] = []
    try:
        await beat_a.start()
        await beat_b.start()
        async with beat_a.leases.exclusive("retention") as held_a:
            assert held_a
            ran, _ = await beat_b.leases.run_exclusive("retention",
                                                       lambda: _note(runs, "b"))
            assert not ran and runs == []
            since = time.time()
            await _until(lambda: beat_a.last_beat > since + 2 * EXPIRY, "A beats on")
            async with db_b.sessions() as session:
                holder = await db_leases.lease_holder(session, "retention", time.time())
            assert holder is not None and holder[0] == beat_a.process_id
            # Released at the end of the block: B gets it at once.
        ran, _ = await beat_b.leases.run_exclusive("retention", lambda: _note(runs, "b"))
        assert ran and runs == ["b"]
        # A takes it again and dies holding it: B, waiting, gets it after the expiry.
        assert await beat_a.leases.try_acquire("retention")
        beat_a.leases._held["retention"] = 1  # (held as `exclusive` holds it)
        _kill(beat_a)
        died = time.time()
        ran, _ = await beat_b.leases.run_exclusive("retention", lambda: _note(runs, "b"),
                                                   wait=True)
        assert ran and runs == ["b", "b"]
        assert time.time() - died < EXPIRY + 2.0
    finally:
        await beat_b.stop()
        await db_a.close()
        await db_b.close()


async def _note(runs: list[str], name: str) -> None:
    runs.append(name)


def _held(n: int, ts: float) -> tuple[NewDelivery, float]:
    return (NewDelivery(network="slack", room_id="!r:x", kind="inbound", payload={"n": n},
                        lane="slack-in:T:C"), ts)


async def _lane(db: Database) -> list[int]:
    async with db.transaction() as session:
        items = []
        while claimed := await queues.claim_deliveries(session, 10, 60.0):
            for item in claimed:
                items.append(item.payload["n"])
                await queues.finish_delivery(session, item.id, None)
        return items


async def test_held_events_wait_for_every_intake_and_go_out_in_ts_order(
        database_url: str) -> None:
    """B received ts 5 and 3, A received ts 4 while its intake was still storing something
    received earlier: nothing goes out until A's intake has stored everything received
    before them, then 3, 4, 5. When A dies, B's events wait until the gap is read."""
    db_a, db_b = await _database(database_url), Database(database_url)
    beat_a = Heartbeat(db_a, INTERVAL, EXPIRY)
    beat_b = Heartbeat(db_b, INTERVAL, EXPIRY)
    a_waiting: list[float] = [time.time() - 60]  # A's intake holds an event unstored
    beat_a.watermarks.append(lambda: a_waiting[0] if a_waiting else None)
    buried: list[str] = []

    async def bury(process: ProcessRow) -> None:
        buried.append(process.id)
        # (The Slack connector reads the gap from history here; it is held like the rest.)
        async with db_b.transaction() as session:
            await db_leases.hold(session, [_held(6, 6.0)], time.time())

    beat_b.on_peer_dead.append(bury)
    try:
        await beat_a.start()
        await beat_b.start()
        await beat_a.beat()
        assert beat_a.holding and beat_b.holding
        now = time.time()
        async with db_b.transaction() as session:
            await db_leases.hold(session, [_held(5, 5.0), _held(3, 3.0)], now)
        async with db_a.transaction() as session:
            await db_leases.hold(session, [_held(4, 4.0)], now)
        since = time.time()
        await _until(lambda: beat_b.last_beat > since + 3 * INTERVAL, "B beats")
        assert await _lane(db_b) == []  # A's intake may still store an earlier one
        a_waiting.clear()  # stored
        await _until(lambda: beat_a.last_beat > since + 2 * INTERVAL and
                     beat_b.last_beat > since + 2 * INTERVAL + 1.0, "both beat on")
        assert await _lane(db_b) == [3, 4, 5]
        # A dies with its intake behind: B holds its events until it has read the gap
        # (bury), then sends them after it, in order.
        a_waiting.append(time.time())
        await beat_a.beat()
        _kill(beat_a)
        async with db_b.transaction() as session:
            await db_leases.hold(session, [_held(8, 8.0), _held(7, 7.0)], time.time())
        await _until(lambda: buried == [beat_a.process_id], "B buries A")
        await _until(lambda: not beat_b.holding, "B is alone")
        assert await _lane(db_b) == [6, 7, 8]
        async with db_b.sessions() as session:
            assert [p.id for p in await db_leases.processes(session)] == [beat_b.process_id]
            holder = await db_leases.lease_holder(session, HOUSEKEEPING, time.time())
        assert holder is not None and holder[0] == beat_b.process_id  # taken over from A
    finally:
        await beat_b.stop()
        await db_a.close()
        await db_b.close()


async def test_scheduled_jobs_run_in_one_process_and_move_when_it_dies(
        database_url: str) -> None:
    db_a, db_b = await _database(database_url), Database(database_url)
    beat_a = Heartbeat(db_a, INTERVAL, EXPIRY)
    beat_b = Heartbeat(db_b, INTERVAL, EXPIRY)
    runs: list[str] = []
    beat_a.schedule("retention", 3600, lambda: _note(runs, "a"))
    beat_b.schedule("retention", 3600, lambda: _note(runs, "b"))
    try:
        await beat_a.start()
        await beat_b.start()
        await _until(lambda: runs == ["a"], "A runs the job at start")
        since = time.time()
        await _until(lambda: beat_b.last_beat > since + 3 * INTERVAL, "B beats on")
        assert runs == ["a"] and beat_a.housekeeper and not beat_b.housekeeper
        _kill(beat_a)
        await _until(lambda: runs == ["a", "b"], "B takes over and runs it")
        assert beat_b.housekeeper
    finally:
        await beat_b.stop()
        await db_a.close()
        await db_b.close()
