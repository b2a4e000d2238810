"""Drains the durable inbox: events of one room in order, different rooms in parallel."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from bridge import metrics
from bridge.db import queues
from bridge.db.engine import Database
from bridge.db.queues import InboxEntry, NewDelivery

log = logging.getLogger("bridge.inbox")

# Turns one event into outbox deliveries, possibly changing DB state with the session it is
# given. It must not talk to the network: everything outward goes through the outbox, so
# that a crash between "handled" and "delivered" loses nothing and repeats nothing.
Router = Callable[[AsyncSession, InboxEntry], Awaitable[list[NewDelivery]]]

BATCH = 200
# Handled events and transaction IDs are kept this long as duplicate guards: homeservers
# retry within minutes, so a week is ample and keeps the tables small.
KEEP_HISTORY = 7 * 24 * 3600.0
PRUNE_EVERY = 3600.0


class InboxWorker:
    def __init__(self, db: Database, route: Router, on_enqueued: Callable[[], None]) -> None:
        self.db = db
        self.route = route
        self.on_enqueued = on_enqueued
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Work left by a previous run (or another process that died) resumes now.
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="inbox-sweeper")

    def notify(self, room_ids: Iterable[str]) -> None:
        """New events for these rooms are committed; make sure a drainer runs for each."""
        if self._closing:
            return
        for room_id in room_ids:
            if room_id in self._tasks:
                self._again.add(room_id)
                continue
            task = asyncio.create_task(self._drain(room_id), name=f"inbox:{room_id}")
            self._tasks[room_id] = task
            task.add_done_callback(functools.partial(self._finished, room_id))

    def _finished(self, room_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(room_id, None)
        if room_id in self._again:
            self._again.discard(room_id)
            self.notify([room_id])

    async def _drain(self, room_id: str) -> None:
        delay = 0.5
        while not self._closing:
            try:
                more = await self._handle_batch(room_id)
            except Exception:
                # The database is away or a query failed: nothing was committed, so the
                # batch is still pending. Try again with backoff, never drop it.
                log.exception("inbox batch for %s failed; retrying in %.1fs", room_id, delay)
                metrics.FAILURES.labels(network="matrix", direction="in", stage="inbox").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            if not more:
                return

    async def _handle_batch(self, room_id: str) -> bool:
        """Handle up to BATCH events of the room in one DB transaction; True if more remain."""
        enqueued = 0
        async with self.db.transaction() as session:
            if not await queues.lock_room(session, room_id):
                return False  # another bridge process is draining this room
            batch = await queues.next_inbox_batch(session, room_id, BATCH)
            done: list[int] = []
            for entry in batch:
                started = time.perf_counter()
                try:
                    deliveries = await self.route(session, entry)
                except Exception as exc:
                    # A routing bug must not block the room forever: record it and go on.
                    log.exception("could not handle event %s in %s",
                                  entry.event.get("event_id"), room_id)
                    metrics.FAILURES.labels(network="matrix", direction="in",
                                            stage="handle").inc()
                    await queues.mark_inbox_failed(session, entry.id, repr(exc))
                    continue
                enqueued += await queues.enqueue(session, deliveries)
                done.append(entry.id)
                metrics.HANDLING_SECONDS.labels(network="matrix", direction="in").observe(
                    time.perf_counter() - started
                )
            await queues.mark_inbox_done(session, done)
        now = time.time()
        for entry in batch:
            metrics.EVENTS.labels(network="matrix", direction="in").inc()
            metrics.END_TO_END_SECONDS.labels(network="matrix", direction="in").observe(
                max(0.0, now - entry.received_at)
            )
        if enqueued:
            self.on_enqueued()
        return len(batch) == BATCH

    async def _sweep_forever(self) -> None:
        last_prune = 0.0
        while not self._closing:
            try:
                async with self.db.sessions() as session:
                    rooms = await queues.inbox_rooms_with_work(session)
                self.notify(rooms)
                if time.time() - last_prune > PRUNE_EVERY:
                    async with self.db.transaction() as session:
                        await queues.prune_history(session, time.time() - KEEP_HISTORY)
                    last_prune = time.time()
            except Exception:
                log.warning("inbox sweep failed (database unavailable?)", exc_info=True)
            await asyncio.sleep(30)

    async def drain_all(self) -> None:
        """Wait until every running drainer is idle (used by shutdown and tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def stop(self) -> None:
        """Finish the batches in flight; unhandled events stay in the inbox for next time."""
        self._closing = True
        if self._sweeper:
            self._sweeper.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
