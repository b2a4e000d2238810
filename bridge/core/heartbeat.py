"""Each bridge process's heartbeat: its liveness row, its claims and leases kept alive, and
remote events held in order while several processes receive them.

Several ``bridge run`` processes may share one PostgreSQL (README "High availability").
Every ``bridge.heartbeat.interval_seconds`` each one, in one transaction:

- writes its row in ``bridge_process`` (expiring ``expiry_seconds`` later);
- renews the outbox items it has claimed and the leases it holds to the same expiry, so a
  slow delivery is never taken over while its process lives, and a SIGKILLed process's
  claims and leases are free for the others within ``expiry_seconds``;
- releases held remote events (below).

One process holds the ``housekeeping`` lease (the first to ask, then the next when its
holder dies). It deals with dead processes: a row that expired is handed to the
``on_peer_dead`` callbacks (the Slack connector reads the gap from history) and then
removed. And it runs the scheduled jobs (:meth:`Heartbeat.schedule`): each once at take-over
(so at start) and then every so often, each under a lease of its own name.

**Order across connections.** Slack spreads an app's events over its Socket Mode
connections (and HAProxy spreads Events API requests over the processes). When a process
dies, the events its socket received but never acknowledged come again about 5 s later
through another connection, after newer ones of the same channel. Holding every channel's
intake for a fixed time would cost that delay even with one process; so instead, while
other processes are alive, a remote event is stored *held* (``outbox_held``, with Slack's
``ts`` as sort key) and moves into its outbox lane, in ``ts`` order, only once every
process's *intake watermark* (everything it received before that moment is stored) has
passed the moment it was received. An earlier event that another process received is then
stored already, and sorts before it. A process that dies stops its watermark: its row
stays, so nothing is released, until the housekeeper has read the gap from history
(catch-up from the channel's cursor: exactly what the dead socket had not stored), then
removes the row; Slack's later re-sends are dropped as duplicates by their natural key.
With one process there is no other row: events go straight to the outbox, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.core.leases import Leases
from bridge.db import leases as db
from bridge.db.engine import Database
from bridge.db.leases import ProcessRow

log = logging.getLogger("bridge.heartbeat")

T = TypeVar("T")

HOUSEKEEPING = "housekeeping"
# A held event waits until every intake's watermark is this far past its receipt: Slack
# sends the events of one channel in order, but two connections (two hosts' clocks) do not
# see them at quite the same moment.
ORDER_MARGIN_SECONDS = 0.5

OnPeerDead = Callable[[ProcessRow], Awaitable[None]]


@dataclass
class Scheduled:
    name: str
    every_seconds: float
    job: Callable[[], Awaitable[object]]
    next_run: float = 0.0  # (monotonic) 0: at once, when this process becomes housekeeper
    task: asyncio.Task[None] | None = None
# The oldest moment at which an intake received an event it has not stored yet (None: it
# has nothing waiting).
Watermark = Callable[[], float | None]


class Heartbeat:
    def __init__(self, database: Database, interval_seconds: float,
                 expiry_seconds: float) -> None:
        self.db = database
        self.interval = interval_seconds
        self.expiry = expiry_seconds
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.process_id = f"{self.host[:40]}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self.leases = Leases(database, self.process_id, expiry_seconds, interval_seconds)
        self.on_peer_dead: list[OnPeerDead] = []
        self.watermarks: list[Watermark] = []
        # Told which outbox lanes got released held deliveries.
        self.on_released: Callable[[set[str]], None] = lambda lanes: None
        # Other processes (alive or not yet dealt with) at the last beat.
        self.peers: list[ProcessRow] = []
        self.last_beat = 0.0
        # Whether remote events are stored held (another process is there); changes only
        # under this lock, which storing takes too, so a switch back to "straight to the
        # outbox" cannot overtake events still held.
        self.holding = False
        self.intake_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._beat_lock = asyncio.Lock()
        self.scheduled: list[Scheduled] = []
        self.housekeeper = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """The first beat (so the row exists and this process knows its peers), then one
        every interval."""
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    def schedule(self, name: str, every_seconds: float,
                 job: Callable[[], Awaitable[object]]) -> None:
        """Run ``job`` in one process of all (the housekeeper): when it becomes
        housekeeper (at start, or when it takes over from a dead one), then every
        ``every_seconds``. Its errors are logged; it runs again at the next turn."""
        self.scheduled.append(Scheduled(name, every_seconds, job))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        jobs = [s.task for s in self.scheduled if s.task is not None]
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        try:
            async with self.intake_lock, self.db.transaction() as session:
                # What this process still held is released (everything it received is
                # stored: its intakes stopped first); its leases go at once.
                if not [p for p in self.peers if p.expires_at > time.time()]:
                    await db.release_held(session, float("inf"), time.time())
                await db.release_all_leases(session, self.process_id)
                await db.forget_process(session, self.process_id)
        except Exception:
            log.warning("could not remove this process's row; it expires in %.0f s",
                        self.expiry, exc_info=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("heartbeat failed (claims and leases of this process expire "
                            "%.0f s after the last good one)", self.expiry, exc_info=True)

    # --- one beat ------------------------------------------------------------------------

    def watermark(self, now: float) -> float:
        waiting = [w for w in (get() for get in self.watermarks) if w is not None]
        return min(waiting, default=now)

    async def beat(self) -> None:
        async with self._beat_lock:
            now = time.time()
            until = now + self.expiry
            async with self.db.transaction() as session:
                await db.beat(session, process_id=self.process_id, host=self.host,
                              pid=self.pid, started_at=self.started_at, now=now,
                              expires_at=until, watermark=self.watermark(now))
                await db.renew_claims(session, self.process_id, until)
                held = sorted(self.leases.held())
                renewed = await db.renew_leases(session, self.process_id, held, until)
                rows = await db.processes(session)
            if renewed < len(held):
                await self._check_leases(held)
            self.last_beat = now
            self.peers = [p for p in rows if p.id != self.process_id]
            was_housekeeper = self.housekeeper
            self.housekeeper = await self.leases.keep(HOUSEKEEPING)
            if self.housekeeper and not was_housekeeper:
                log.info("this process (%s) is the housekeeper now: it runs the scheduled "
                         "jobs and takes over the work of processes that die",
                         self.process_id)
                for job in self.scheduled:
                    job.next_run = 0.0
            dead = [p for p in self.peers if p.expires_at <= now]
            if dead and self.housekeeper:
                await self._bury(dead)
            await self._release()
            if self.housekeeper:
                self._run_due_jobs()

    async def _check_leases(self, held: list[str]) -> None:
        """Some leases were not renewed: another process took them (this one's beats failed
        for longer than the expiry); it no longer holds them."""
        now = time.time()
        async with self.db.sessions() as session:
            lost = {name for name in held
                    if (holder := await db.lease_holder(session, name, now)) is not None
                    and holder[0] != self.process_id}
        if lost:
            log.warning("leases %s were taken over by another process (this one's heartbeat "
                        "failed for too long)", ", ".join(sorted(lost)))
            self.leases.lost(lost)

    def _run_due_jobs(self) -> None:
        now = time.monotonic()
        for job in self.scheduled:
            if job.next_run <= now and (job.task is None or job.task.done()):
                job.next_run = now + job.every_seconds
                job.task = asyncio.create_task(self._run_job(job), name=f"job-{job.name}")

    async def _run_job(self, job: Scheduled) -> None:
        try:
            ran, _ = await self.leases.run_exclusive(job.name, job.job)
            if not ran:
                log.info("scheduled job %s runs in another process right now", job.name)
        except Exception:
            log.exception("scheduled job %s failed; it runs again in %.0f s", job.name,
                          job.every_seconds)

    async def _bury(self, dead: list[ProcessRow]) -> None:
        for process in dead:
            silent = time.time() - process.heartbeat_at
            log.warning("bridge process %s (host %s, pid %d) has not been heard of for %.1f s: "
                        "taking over its work", process.id, process.host, process.pid, silent)
            for callback in self.on_peer_dead:
                await callback(process)  # an error leaves the row: tried again next beat
            async with self.db.transaction() as session:
                await db.forget_process(session, process.id, expired_before=time.time())
        self.peers = [p for p in self.peers if p not in dead]

    async def _release(self) -> None:
        async with self.intake_lock:
            now = time.time()
            # With nobody else, all that is held goes (whoever received it, before it
            # died or stopped); otherwise what every intake has stored everything before.
            # A dead process not dealt with yet is still a peer: its watermark stands still.
            alone = not self.peers
            before = float("inf") if alone else min(
                [self.watermark(now), *(p.intake_watermark for p in self.peers)]
            ) - ORDER_MARGIN_SECONDS
            async with self.db.transaction() as session:
                lanes = await db.release_held(session, before, now)
            self.holding = not alone
        if lanes:
            self.on_released(lanes)

    async def seen_by_peers(self, timeout: float) -> None:
        """Wait until every other live process has beaten since this one started (so each
        stores its remote events held before this one receives any), at most ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.heartbeat_at > self.started_at or p.expires_at <= time.time()
                   for p in self.peers):
                return
            await asyncio.sleep(min(self.interval / 2, 0.5))
            await self.beat()
