"""Delivers outbox items: retried with backoff until the receiving side confirms them.

One item per lane is in flight at a time (order within a lane), lanes run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import aiohttp
import sqlalchemy.exc
from prometheus_client import Counter, Histogram
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from bridge import metrics
from bridge.config import OutboxConfig
from bridge.core.errors import PermanentError, TemporaryError
from bridge.db import queues
from bridge.db.engine import Database
from bridge.db.queues import Delivery

log = logging.getLogger("bridge.outbox")

# Delivers one item; returns the result to store (a remote ID, an event ID) or raises.
Deliver = Callable[[Delivery], Awaitable[str | None]]
# Told when an item is given up, to tell the room.
OnFailed = Callable[[Delivery, str, str | None], Awaitable[None]]

# Failures that a retry cannot fix: a bug, or data the code cannot handle. Checked after
# the network's own errors, some of which derive from ValueError (aiohttp's InvalidURL).
_CANNOT_SUCCEED = (ValueError, TypeError, LookupError, AttributeError, AssertionError,
                   NotImplementedError)
# Trouble on the way: the next attempt may well succeed.
_TRANSIENT = (OSError, TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError,
              asyncio.LimitOverrunError, sqlalchemy.exc.OperationalError,
              sqlalchemy.exc.InterfaceError)


def cannot_succeed_on_retry(exc: BaseException) -> bool:
    """Does ``exc`` (not a Temporary/PermanentError) say that retrying is pointless?"""
    if isinstance(exc, _TRANSIENT):
        return False
    return isinstance(exc, _CANNOT_SUCCEED)


CLAIM_LIMIT = 64
# A transaction that queued deliveries in at most this many lanes (a Slack message's Matrix
# events, a Matrix event for one link) claims those lanes' heads, one statement each; more
# (a transaction of many rooms, a mail to every subscriber) claims whatever is due with the
# claim query, which reads every pending item.
FEW_QUEUED_LANES = 4
# A fan-out: a room with at least this many lanes of one network in flight (a message
# mailed to its subscribers, one lane each). A room linked to two Slack channels, or with
# an encrypted event waiting for its key, has two or three, and is not one.
FAN_OUT_MIN_LANES = 16
# A fan-out's successes are recorded this many per transaction, or whatever has come after
# a short wait: one transaction per mail was most of a mail's CPU. The fan-out's other
# claimed deliveries keep the relay busy meanwhile, so the wait costs it nothing.
FAN_OUT_RECORD_BATCH = 16
FAN_OUT_RECORD_WAIT_SECONDS = 0.02
# A claim older than this is assumed to belong to a crashed worker. The bridge passes its
# heartbeat's expiry instead (seconds) with its process ID as the holder: the heartbeat
# renews the claims of a live process, so only a dead one's run out (bridge/core/heartbeat.py).
LEASE_SECONDS = 300.0


@functools.cache
def _delivered_metrics(network: str) -> tuple[Counter, Histogram, Histogram]:
    """A network's delivered-events counter and handling and latency histograms: looked up
    once (``labels()`` costs several microseconds a call, three per delivery), on first use
    as before (a network that delivers nothing shows no series)."""
    return (metrics.EVENTS.labels(network=network, direction="out"),
            metrics.HANDLING_SECONDS.labels(network=network, direction="out"),
            metrics.END_TO_END_SECONDS.labels(network=network, direction="out"))


@dataclass(slots=True)
class _Finished:
    """A delivered item waiting to be recorded, and where its lane's next item goes."""

    item: Delivery
    result: str | None
    next_item: asyncio.Future[Delivery | None]


def _resolve(done: _Finished, next_item: Delivery | None) -> None:
    if not done.next_item.done():
        done.next_item.set_result(next_item)


class OutboxWorker:
    def __init__(self, db: Database, deliver: Deliver, on_failed: OnFailed,
                 settings: OutboxConfig, *, holder: str | None = None,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.db = db
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.deliver = deliver
        self.on_failed = on_failed
        self.settings = settings
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy_lanes: set[str] = set()
        # The same lanes by room and network: a room with many lanes in flight (a mail
        # fan-out, one lane per subscriber) hands a finished lane's place to its next lane.
        self._room_lanes: dict[tuple[str, str], set[str]] = {}
        # Successes waiting to be recorded, and the task that records them: deliveries of
        # other lanes that finish while a record is being written are recorded together in
        # the next transaction (one commit for many under load, no wait when it is quiet).
        self._finished: list[_Finished] = []
        self._recorders: set[asyncio.Task[None]] = set()
        # Recorders started that have not taken their batch yet: they will take what is
        # waiting, so no other needs starting for it.
        self._recorders_to_take = 0
        self._fan_out_batch_full = asyncio.Event()
        # SQLite has one writer at a time anyway; PostgreSQL commits several in parallel,
        # which hides its round trips.
        self._max_recorders = 4 if db.postgres else 1
        self._recording_alone: set[asyncio.Task[None]] = set()

    def wake(self, lanes: Collection[str] | None = None) -> None:
        """Something was queued (in ``lanes``, if known). Lanes being delivered need no
        wake-up: their worker claims the lane's next item with the outcome of the one in
        flight, or wakes the claim loop when it finds none (see _deliver_item). A burst
        into one room then costs no claim-loop look at the whole outbox per item."""
        if lanes and all(lane in self._busy_lanes for lane in lanes):
            return
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    async def _run(self) -> None:
        db_delay = 0.5
        while not self._closing:
            self._wake.clear()
            try:
                # Look before taking the write lock: most wake-ups find nothing due.
                async with self.db.reading() as connection:
                    due_at = await queues.next_due_time(connection)
                items = []
                if due_at is not None and due_at <= time.time():
                    async with self.db.transaction() as session:
                        items = await queues.claim_deliveries(
                            session, CLAIM_LIMIT, self.lease_seconds, self.holder)
                db_delay = 0.5
            except Exception:
                log.exception("could not claim outbox items; retrying in %.1fs", db_delay)
                await asyncio.sleep(db_delay)
                db_delay = min(db_delay * 2, 30.0)
                continue
            await self.dispatch(items)
            if items:
                continue  # more may be due right away (the next item of each lane)
            if due_at is not None and due_at <= time.time():
                # Due, yet nothing to claim: its room has its share in flight (the per-room
                # cap of the claim). Those deliveries' ends take the next, or wake us.
                due_at = None
            await self._sleep_until(due_at)

    async def claim_within(self, session: AsyncSession) -> list[Delivery]:
        """Claim due items inside the caller's transaction (the one that queued them), to
        be passed to :meth:`dispatch` after it commits: saves a transaction per event."""
        return await session.run_sync(self._claim_due)

    def _claim_due(self, session: Session) -> list[Delivery]:
        lanes = queues.enqueued_lanes(session)
        if lanes and len(lanes) <= FEW_QUEUED_LANES:
            return queues.claim_queued_lane_heads_sync(
                session.connection(), sorted(lanes), self.lease_seconds, self.holder)
        return queues.claim_deliveries_sync(session.connection(), CLAIM_LIMIT,
                                            self.lease_seconds, self.holder)

    async def claim_queued(self, session: AsyncSession) -> list[Delivery]:
        """:meth:`claim_within` for a transaction that queued deliveries (nothing if it
        queued none): the items go to :meth:`start_claimed` after the commit, instead of the
        claim loop looking for them and claiming them in a transaction of its own."""
        if self._closing or not queues.enqueued_lanes(session):
            return []
        return await self.claim_within(session)

    async def start_claimed(self, items: list[Delivery], lanes: Collection[str]) -> None:
        """After the commit of a transaction that queued in ``lanes`` and claimed ``items``:
        deliver them, and wake the claim loop for any lane of those left unstarted."""
        await self.dispatch(items)
        self.wake(lanes or None)  # (started lanes are busy now: they need no wake-up)

    async def dispatch(self, items: list[Delivery]) -> None:
        """Start delivering claimed items, one task per lane."""
        skipped = [item.id for item in items if item.lane in self._busy_lanes]
        if skipped:
            # Only after a lease ran out while its delivery still hangs: never run one
            # lane twice, and hand the claim back rather than sit on it.
            await self._settle(lambda s, ids=skipped: queues.release_claims(s, ids))
        for item in items:
            if item.lane in self._busy_lanes:
                continue
            self._take_lane(item)
            task = asyncio.create_task(self._deliver_one(item), name=f"deliver:{item.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _sleep_until(self, due_at: float | None) -> None:
        """Until the next retry is due, or until woken: new items, or a delivery finished
        (then its lane's next item is due), so there is no polling."""
        timeout = 5.0 if due_at is None else min(5.0, max(0.0, due_at - time.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _backoff(self, attempts: int) -> float:
        base = self.settings.retry_base_seconds * (2 ** min(attempts, 20))
        delay = min(base, self.settings.retry_max_seconds)
        return delay * random.uniform(0.8, 1.2)  # jitter: don't retry a whole room at once

    async def _deliver_one(self, item: Delivery) -> None:
        """Deliver the item, then the lane's next ones as long as each is due when the one
        before is recorded: a busy lane (a mail burst into one room) goes on without a
        round through the claim loop per item."""
        next_item: Delivery | None = item
        while next_item is not None:
            next_item = await self._deliver_item(next_item)

    async def _deliver_item(self, item: Delivery) -> Delivery | None:
        """One attempt; returns the lane's next item if it was claimed with the outcome."""
        started = time.perf_counter()
        # Exactly one of these is set by the attempt below.
        result: str | None = None
        retry: tuple[str, float | None] | None = None
        give_up: tuple[str, str | None] | None = None
        next_item: Delivery | None = None
        item.with_outcome = []
        item.with_outcome_sync = []
        try:
            result = await self.deliver(item)
        except TemporaryError as exc:
            retry = (str(exc), exc.retry_after)
        except PermanentError as exc:
            give_up = (str(exc), exc.hint)
        except Exception as exc:
            if cannot_succeed_on_retry(exc):
                # A bug or data the code cannot handle: the same attempt fails the same way
                # every time, so waiting days for it only hides it. It fails for good now,
                # visibly, and an admin can retry it once the cause is fixed.
                log.error("delivery %s (%s %s) cannot succeed: %r", item.id, item.network,
                          item.kind, exc, exc_info=exc)
                give_up = (f"internal error: {exc!r}", None)
            else:
                # Connection resets, timeouts, anything unknown: temporary; the give-up
                # deadline still bounds how long it is tried.
                log.warning("delivery %s (%s %s) failed: %r", item.id, item.network,
                            item.kind, exc)
                retry = (repr(exc), None)
        finally:
            if retry is not None or give_up is not None or self._closing:
                # Free the lane before recording the outcome: until that commit nothing
                # else in the lane is claimable anyway, and right after it the next item
                # must be.
                self._free_lane(item)
        try:
            if retry is not None:
                await self._retry(item, *retry)
            elif give_up is not None:
                await self._give_up(item, *give_up)
            else:
                next_item = await self._finish(item, result)
                delivered, handling, end_to_end = _delivered_metrics(item.network)
                delivered.inc()
                handling.observe(time.perf_counter() - started)
                end_to_end.observe(max(0.0, time.time() - item.created_at))
        finally:
            if next_item is not None and next_item.lane != item.lane:
                # The room's next lane (see _write_finished) instead of this one's next item.
                self._free_lane(item)
                if next_item.lane in self._busy_lanes:
                    # Only after a lease ran out while that lane's delivery still hangs (as
                    # in dispatch): never run one lane twice; hand the claim back.
                    await self._settle(lambda s, ids=[next_item.id]:
                                       queues.release_claims(s, ids))
                    next_item = None
                else:
                    self._take_lane(next_item)
            if next_item is None:
                self._free_lane(item)
                self._wake.set()
        return next_item

    def _take_lane(self, item: Delivery) -> None:
        self._busy_lanes.add(item.lane)
        self._room_lanes.setdefault((item.room_id, item.network), set()).add(item.lane)

    def _free_lane(self, item: Delivery) -> None:
        self._busy_lanes.discard(item.lane)
        key = (item.room_id, item.network)
        lanes = self._room_lanes.get(key)
        if lanes is not None:
            lanes.discard(item.lane)
            if not lanes:
                del self._room_lanes[key]

    async def _finish(self, item: Delivery, result: str | None) -> Delivery | None:
        """Record the success and, in the same transaction, claim the lane's next item
        if it is due (the lane is still ours: nobody else may deliver in it meanwhile)."""
        done = _Finished(item, result, asyncio.get_running_loop().create_future())
        self._finished.append(done)
        if len(self._finished) >= FAN_OUT_RECORD_BATCH or not self._in_fan_out(item):
            self._fan_out_batch_full.set()  # (anything else is recorded without a wait)
        # (A recorder that is done may still be in the set until its callback runs.)
        running = sum(not task.done() for task in self._recorders)
        if not self._recorders_to_take and running < self._max_recorders:
            self._recorders_to_take += 1
            task = asyncio.create_task(self._record_finished(), name="outbox-record")
            self._recorders.add(task)
            task.add_done_callback(self._recorders.discard)
        return await done.next_item

    async def _record_finished(self) -> None:
        # (Counted as "to take" while it waits for a fan-out's batch: no other starts.)
        await self._gather_fan_out()
        self._recorders_to_take -= 1  # it takes what is waiting right now
        while self._finished:
            await self._gather_fan_out()
            batch, self._finished = self._finished, []
            heads = None
            try:
                heads = await self._write_finished(batch, attempts=1)
            finally:
                if heads is not None:
                    for done, head in zip(batch, heads, strict=True):
                        _resolve(done, head)
                elif not self._closing:
                    # Each on its own, with retries, and beside the next batches: one
                    # item's failing write must hold back neither the others nor later
                    # successes while it backs off.
                    for done in batch:
                        task = asyncio.create_task(self._record_alone(done),
                                                   name=f"record:{done.item.id}")
                        self._recording_alone.add(task)
                        task.add_done_callback(self._recording_alone.discard)
                else:
                    for done in batch:
                        _resolve(done, None)

    def _in_fan_out(self, item: Delivery) -> bool:
        return len(self._room_lanes.get((item.room_id, item.network), ())) >= FAN_OUT_MIN_LANES

    async def _gather_fan_out(self) -> None:
        """Wait for a fan-out's batch (see FAN_OUT_RECORD_BATCH), if only fan-outs' successes
        wait to be recorded: any other goes at once."""
        if self._closing or len(self._finished) >= FAN_OUT_RECORD_BATCH or not all(
                self._in_fan_out(done.item) for done in self._finished):
            return
        self._fan_out_batch_full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._fan_out_batch_full.wait(),
                                   FAN_OUT_RECORD_WAIT_SECONDS)

    async def _record_alone(self, done: _Finished) -> None:
        heads = None
        try:
            heads = await self._write_finished([done], attempts=8)
        finally:
            # Not recorded (or cancelled at shutdown) reads as "no next item": the lease
            # runs out and the item is delivered again.
            _resolve(done, heads[0] if heads else None)

    async def _write_finished(self, batch: list[_Finished],
                              attempts: int) -> list[Delivery | None] | None:
        heads: list[Delivery | None] = []
        lanes: set[str] = set()
        claimed: list[Delivery] = []

        async def write(session: AsyncSession) -> None:
            for done in batch:
                for also in done.item.with_outcome or ():
                    await also(session)
            # (A retried write claims afresh.)
            heads[:], claimed[:] = await session.run_sync(self._record, batch)
            lanes.update(queues.enqueued_lanes(session))

        if not await self._settle(write, attempts):
            return None
        if lanes:
            await self.start_claimed(claimed, lanes)
        return heads

    def _record(self, session: Session,
                batch: list[_Finished]) -> tuple[list[Delivery | None], list[Delivery]]:
        """The outbox's own statements of a batch's record, in one greenlet: the deliveries'
        own writes that come as plain functions (``with_outcome_sync``), the successes,
        each one's successor (see _claim_next), and the due items among those the
        successes' writes queued (Hub.post_parts: a Slack message's Matrix events), claimed
        right here, after the lanes' own next items."""
        connection = session.connection()
        for done in batch:
            for write in done.item.with_outcome_sync or ():
                write(connection)
        queues.finish_deliveries_sync(connection, [(d.item.id, d.result) for d in batch])
        heads: list[Delivery | None] = [None] * len(batch)
        if self._closing:
            return heads, []
        self._claim_next(connection, batch, heads)
        return heads, self._claim_due(session) if queues.enqueued_lanes(session) else []

    def _claim_next(self, connection: Connection, batch: list[_Finished],
                    heads: list[Delivery | None]) -> None:
        """Each finished item's successor: its lane's next item, or for a fan-out the
        next of its room (several claimed in one statement)."""
        fan_outs: dict[tuple[str, str], list[int]] = {}
        for index, done in enumerate(batch):
            item = done.item
            if self._in_fan_out(item):
                # A fan-out, whose next subscribers (or this lane's next item, whichever
                # is older) wait under the per-room cap of the claim and take these ones'
                # places.
                fan_outs.setdefault((item.room_id, item.network), []).append(index)
            else:
                heads[index] = queues.claim_lane_head_sync(
                    connection, item.lane, self.lease_seconds, self.holder)
        for indexes in fan_outs.values():
            oldest = min((batch[index].item for index in indexes), key=lambda i: i.id)
            claimed = queues.claim_room_next_sync(connection, oldest, len(indexes),
                                                  self.lease_seconds, self.holder)
            for index, head in zip(indexes, claimed, strict=False):
                heads[index] = head

    async def _retry(self, item: Delivery, error: str, retry_after: float | None) -> None:
        metrics.FAILURES.labels(network=item.network, direction="out", stage="deliver").inc()
        # An item an admin put back after it failed gets a full deadline again.
        trying_since = max(item.created_at, item.failed_at or 0.0)
        if time.time() - trying_since > self.settings.give_up_after_hours * 3600:
            await self._give_up(item, f"still failing after {self.settings.give_up_after_hours}"
                                      f" hours: {error}", None)
            return
        delay = retry_after if retry_after is not None else self._backoff(item.attempts)
        log.info("delivery %s to %s will be retried in %.1fs: %s", item.id, item.network,
                 delay, error)
        await self._settle(lambda s: queues.retry_delivery(s, item.id, time.time() + delay,
                                                           error))

    async def _give_up(self, item: Delivery, error: str, hint: str | None) -> None:
        metrics.FAILURES.labels(network=item.network, direction="out", stage="gave_up").inc()
        log.warning("delivery %s to %s failed for good: %s", item.id, item.network, error)
        untold: list[bool] = []

        async def fail(session: AsyncSession) -> None:
            untold[:] = [await queues.fail_delivery(session, item.id, error)]

        await self._settle(fail)
        if untold != [True]:
            # Told when it first failed (this is a retry by an admin), or the failure was
            # not recorded: then it is delivered again when its lease runs out.
            return
        try:
            await self.on_failed(item, error, hint)
        except Exception:
            log.exception("could not report failed delivery %s", item.id)

    async def _settle(self, write: Callable[..., Awaitable[None]], attempts: int = 8) -> bool:
        """Record an outcome (True when it was); if the DB is away, the lease expiry makes
        the item due again."""
        delay = 0.2
        for _ in range(attempts):
            try:
                async with self.db.transaction() as session:
                    await write(session)
                return True
            except Exception:
                if attempts == 1:  # a first try; each item is tried again on its own
                    log.info("could not record delivery outcomes at once; retrying each",
                             exc_info=True)
                    return False
                log.warning("could not record a delivery outcome; retrying", exc_info=True)
                await asyncio.sleep(delay)
                delay *= 2
        log.error("gave up recording a delivery outcome; the item becomes due again when its "
                  "lease runs out (%.0f s)", self.lease_seconds)
        return False

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until nothing is in flight (for shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.wait(list(self._in_flight), timeout=deadline - time.monotonic())

    async def stop(self) -> None:
        """Let in-flight deliveries finish; everything else stays queued for next time."""
        self._closing = True
        self._wake.set()
        if self._task:
            await asyncio.wait([self._task], timeout=5)
            self._task.cancel()
        await self.drain(timeout=20)
        for task in list(self._in_flight):
            task.cancel()
        recording = [*self._recording_alone, *self._recorders]
        if recording:
            await asyncio.wait(recording, timeout=5)
        for task in recording:
            task.cancel()
