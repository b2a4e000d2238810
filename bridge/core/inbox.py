"""Drains the durable inbox in arrival order, many events per database transaction.

Arrival order is room order, so events of one room are handled in order. Handling is pure
database work (everything outward goes through the outbox), which makes one drainer that
commits hundreds of events at a time both the simplest and the fastest design; several
bridge processes on one PostgreSQL split the work by room (a room-scoped advisory lock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bridge import metrics
from bridge.db import queues
from bridge.db.engine import Database
from bridge.db.queues import InboxEntry, NewDelivery

log = logging.getLogger("bridge.inbox")

# Turns the events of one batch into outbox deliveries, possibly changing DB state with the
# session it is given. It must not talk to the network: everything outward goes through
# the outbox, so that a crash between "handled" and "delivered" loses nothing and repeats
# nothing.
BatchRouter = Callable[[AsyncSession, list[InboxEntry]],
                       Awaitable[tuple[list[NewDelivery], list[tuple[InboxEntry, str]]]]]

BATCH = 500
# Handled events and transaction IDs are kept this long as duplicate guards: homeservers
# retry within minutes, so a week is ample and keeps the tables small.
KEEP_HISTORY = 7 * 24 * 3600.0
PRUNE_EVERY = 3600.0

_IN_EVENTS = metrics.EVENTS.labels(network="matrix", direction="in")
_IN_LATENCY = metrics.END_TO_END_SECONDS.labels(network="matrix", direction="in")
_IN_HANDLING = metrics.HANDLING_SECONDS.labels(network="matrix", direction="in")
_IN_FAILED = metrics.FAILURES.labels(network="matrix", direction="in", stage="handle")
_IN_DB_FAILED = metrics.FAILURES.labels(network="matrix", direction="in", stage="inbox")


@dataclass(slots=True)
class BatchOutcome:
    handled: int
    more: bool  # a full batch: more may be waiting
    enqueued: bool  # deliveries were queued: wake the outbox
    # Events of rooms that another transaction was handling at that moment: look again
    # shortly (its commit does not know about our events).
    skipped: bool = False


class InboxWorker:
    def __init__(self, db: Database, route: BatchRouter, on_enqueued: Callable[[], None]) -> None:
        self.db = db
        self.route = route
        self.on_enqueued = on_enqueued
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._skipped_delay = 0.005
        # SQLite only: whether events may be waiting in the inbox (None: not known yet).
        self._backlog: bool | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Work left by a previous run (or another process that died) is picked up at once.
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="inbox")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="inbox-sweeper")

    def notify(self) -> None:
        """New events are committed; the drainer takes them in arrival order."""
        if not self._closing:
            self._wake.set()

    async def _run(self) -> None:
        delay = 0.5
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while not self._closing:
                try:
                    more = await self._handle_batch()
                except Exception:
                    # The database is away or a query failed: nothing was committed, so
                    # the batch is still pending. Try again with backoff, never drop it.
                    self.transaction_failed()
                    log.exception("inbox batch failed; retrying in %.1fs", delay)
                    _IN_DB_FAILED.inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 0.5
                if not more:
                    break

    async def _handle_batch(self) -> bool:
        """Handle up to BATCH pending events in one DB transaction; True if more remain."""
        async with self.db.transaction() as session:
            outcome = await self.handle_pending(session)
        if outcome.enqueued:
            self.on_enqueued()
        if outcome.skipped:
            # Someone else holds a room of ours; give them a moment, then look again.
            self._skipped_delay = min(self._skipped_delay * 2, 1.0)
            await asyncio.sleep(self._skipped_delay)
            return True
        self._skipped_delay = 0.005
        return outcome.more

    async def handle_pending(self, session: AsyncSession) -> BatchOutcome:
        """Route the oldest pending events inside the caller's transaction.

        The transaction endpoint calls this right after storing a transaction, so an event
        is usually handled before the homeserver even gets its answer; the drainer only
        takes what is left (a backlog, rooms another process held, a failed attempt).
        """
        batch = await queues.next_inbox_batch(session, BATCH)
        if not batch:
            self._backlog = False
            return BatchOutcome(0, False, False)
        mine = await queues.lock_rooms(session, {e.room_id for e in batch})
        handled = [e for e in batch if e.room_id in mine]
        outcome = await self._route(session, handled, mark_done=True)
        outcome.more = len(batch) >= BATCH
        outcome.skipped = len(handled) < len(batch)
        if not outcome.more and not outcome.skipped:
            self._backlog = False  # everything that was pending is handled by this commit
        return outcome

    async def handle_transaction(self, session: AsyncSession,
                                 events: list[dict[str, Any]]) -> BatchOutcome:
        """Store and handle a new transaction's events inside the caller's transaction.

        With nothing pending before them (the usual case) they are routed straight away and
        recorded as handled; otherwise they queue up behind the backlog, in order.
        """
        rooms = {e["room_id"] for e in events}
        if not await self._has_backlog(session) and \
                await queues.lock_rooms(session, rooms) == rooms:
            entries = await queues.record_handled(session, events)
            return await self._route(session, entries, mark_done=False)
        await queues.store_pending(session, events)
        self._backlog = True
        return await self.handle_pending(session)

    async def _has_backlog(self, session: AsyncSession) -> bool:
        if self.db.postgres:
            return await queues.inbox_has_pending(session)  # other processes add to it
        # SQLite has this one process as its only writer, so it knows when the inbox was
        # last seen empty and whether anything was left pending since; until the first
        # look (after a start, say) it asks the database.
        if self._backlog is None:
            self._backlog = await queues.inbox_has_pending(session)
        return self._backlog

    async def _route(self, session: AsyncSession, handled: list[InboxEntry],
                     mark_done: bool) -> BatchOutcome:
        started = time.perf_counter()
        deliveries, failed = await self.route(session, handled)
        for entry, error in failed:
            _IN_FAILED.inc()
            await queues.mark_inbox_failed(session, entry, error)
        if mark_done:
            failed_ids = {entry.id for entry, _ in failed}
            await queues.mark_inbox_done(session, [e.id for e in handled
                                                   if e.id not in failed_ids])
        await queues.enqueue(session, deliveries)
        now = time.time()
        if handled:
            _IN_EVENTS.inc(len(handled))
            _IN_HANDLING.observe((time.perf_counter() - started) / len(handled))
            for entry in handled:
                _IN_LATENCY.observe(max(0.0, now - entry.received_at))
        return BatchOutcome(len(handled), False, bool(deliveries))

    def transaction_failed(self) -> None:
        """A transaction that handled events rolled back: what this process believed about
        the backlog may be wrong now, so ask the database next time."""
        self._backlog = None

    def after_commit(self, outcome: BatchOutcome) -> None:
        if outcome.enqueued:
            self.on_enqueued()
        if outcome.more or outcome.skipped:
            self.notify()

    async def _sweep_forever(self) -> None:
        last_prune = 0.0
        while not self._closing:
            await asyncio.sleep(30)
            self._wake.set()  # rooms another process gave up on, or a missed wake-up
            if time.time() - last_prune > PRUNE_EVERY:
                try:
                    async with self.db.transaction() as session:
                        await queues.prune_history(session, time.time() - KEEP_HISTORY)
                    last_prune = time.time()
                except Exception:
                    log.warning("pruning old queue history failed", exc_info=True)

    async def stop(self) -> None:
        """Finish the batch in flight; unhandled events stay in the inbox for next time."""
        self._closing = True
        self._wake.set()
        for task in (self._task, self._sweeper):
            if task is None:
                continue
            if task is self._task:
                await asyncio.wait([task], timeout=10)
            task.cancel()
