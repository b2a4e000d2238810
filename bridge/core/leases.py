"""Work that must run in one process at a time, guarded by a lease in the database.

Several bridge processes on one PostgreSQL each start the same jobs (catch-up after a
reconnect, scheduled jobs such as retention); a lease makes one of them run it::

    async with bridge.leases.exclusive("retention") as held:
        if held:
            await delete_old_rows()

    await bridge.leases.run_exclusive("retention", delete_old_rows)

A lease is a row (``bridge_lease``) naming its holder, a process ID; the holder's heartbeat
(bridge/core/heartbeat.py) renews it while the process lives, so a job may run as long as
it needs. When the holder dies, its lease expires within ``bridge.heartbeat.expiry_seconds``
and the next process that asks gets it. ``wait=True`` waits for the lease instead of giving
up (a catch-up that must still run after the one in progress).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from bridge.db import leases as db
from bridge.db.engine import Database

log = logging.getLogger("bridge.leases")

T = TypeVar("T")


class Leases:
    def __init__(self, database: Database, holder: str, expiry_seconds: float,
                 poll_seconds: float) -> None:
        self.db = database
        self.holder = holder
        self.expiry_seconds = expiry_seconds
        self.poll_seconds = poll_seconds
        # Names held by this process, by how many holders inside it (a lease held twice in
        # one process, by nested or concurrent users, is released by the last of them).
        self._held: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def try_acquire(self, name: str) -> bool:
        now = time.time()
        async with self.db.transaction() as session:
            return await db.acquire_lease(session, name, self.holder, now,
                                          now + self.expiry_seconds)

    async def release(self, name: str) -> None:
        async with self.db.transaction() as session:
            await db.release_lease(session, name, self.holder)

    @asynccontextmanager
    async def exclusive(self, name: str, *, wait: bool = False) -> AsyncIterator[bool]:
        """Hold the lease ``name`` for the block; yields whether it is held (False: another
        process holds it, and ``wait`` was not asked for). Inside one process, users of one
        name take turns too."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked() and not wait:
            yield False
            return
        async with lock:
            while not await self.try_acquire(name):
                if not wait:
                    yield False
                    return
                await asyncio.sleep(self.poll_seconds)
            self._held[name] = self._held.get(name, 0) + 1
            try:
                yield True
            finally:
                self._held[name] -= 1
                if not self._held[name]:
                    del self._held[name]
                    try:
                        await asyncio.shield(self.release(name))
                    except Exception:
                        # It runs out by itself: the heartbeat renews only held names.
                        log.warning("could not release the lease %s; it expires in %.0f s",
                                    name, self.expiry_seconds, exc_info=True)

    async def run_exclusive(self, name: str, job: Callable[[], Awaitable[T]], *,
                            wait: bool = False) -> tuple[bool, T | None]:
        """Run ``job`` under the lease; (False, None) if another process holds it."""
        async with self.exclusive(name, wait=wait) as held:
            if not held:
                return False, None
            return True, await job()

    async def keep(self, name: str) -> bool:
        """Take the lease ``name`` if free and keep it (renewed by the heartbeat) until
        :meth:`let_go` or the process ends; True while this process holds it. For a role
        one process has at a time (the housekeeper), rather than a job."""
        if name in self._held:
            return True
        if not await self.try_acquire(name):
            return False
        self._held[name] = 1
        return True

    def lost(self, names: set[str]) -> None:
        """These leases were found taken by another process (this one's heartbeat failed
        for longer than the expiry): no longer held here."""
        for name in names:
            self._held.pop(name, None)

    def held(self) -> set[str]:
        return set(self._held)
