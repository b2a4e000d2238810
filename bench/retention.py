"""The retention job on a year of rows: how fast it deletes, and what the bridge's own
writers notice meanwhile.

Fills a fresh database with message mappings and finished outbox rows older than the
default retention (and some newer ones, which stay), then runs
``bridge.core.retention.run_retention`` while a writer keeps inserting rows one small
transaction at a time, as the bridge's queues do. Prints, against the targets:

- rows deleted per second (wall clock: for information, it depends on the machine's load);
- CPU milliseconds of this process per 1,000 rows deleted (from /proc; with SQLite the
  database works in this process too, with PostgreSQL the server's share is not counted);
- the longest single batch (each batch is one transaction: how long it can hold up others);
- the writer's p99 commit latency during the job, beside the same before it (a ratio, so a
  loaded machine shows less in it than in the absolute numbers);
- CPU seconds of this process per 1,000 rows deleted (from /proc).

Run: ``.venv/bin/python bench/retention.py [--rows 200000] [--database URL]``
(``make bench-retention``). Exit code 0 all targets met, 3 a target missed, 1 failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert

import bridge.core.retention as retention
from bridge.config import RetentionConfig
from bridge.db.engine import Database
from bridge.db.models import MessageMapping, OutboxItem

DAY = 86400.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_CPU_MS_PER_1000 = 50.0
TARGET_LONGEST_BATCH_MS = 250.0
TARGET_WRITER_P99_RATIO = 3.0


def cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)] if ordered else float("nan")


async def fill(db: Database, rows: int, now: float) -> None:
    chunk = 10_000
    done = 0
    while done < rows:
        n = min(chunk, rows - done)
        old = [{"room_id": f"!r{i % 50}:bench", "event_id": f"$e{done + i}",
                "network": "slack", "remote_space": "T_C", "remote_id": f"{done + i}.0",
                "part": 0, "thread_root": None,
                "created_at": now - (400 + (done + i) % 300) * DAY} for i in range(n)]
        outbox = [{"lane": f"slack:!r{i % 50}:bench", "network": "slack",
                   "room_id": f"!r{i % 50}:bench", "kind": "event",
                   "payload": '{"event": {"content": {"body": "x"}}}',
                   "created_at": now - 40 * DAY, "state": "done", "attempts": 1,
                   "next_attempt_at": 0.0, "claimed_until": 0.0,
                   "failure_reported": False} for i in range(n // 4)]
        async with db.transaction() as session:
            await session.execute(insert(MessageMapping), old)
            await session.execute(insert(OutboxItem), outbox)
        done += n
        print(f"\rfilling: {done}/{rows} mappings", end="", file=sys.stderr, flush=True)
    # Newer rows, which must stay.
    async with db.transaction() as session:
        await session.execute(insert(MessageMapping), [
            {"room_id": "!new:bench", "event_id": f"$new{i}", "network": "slack",
             "remote_space": "T_C", "remote_id": f"new{i}", "part": 0, "thread_root": None,
             "created_at": now - DAY} for i in range(1000)])
    print(file=sys.stderr)


async def writer(db: Database, latencies: list[float], stop: asyncio.Event) -> None:
    """One small transaction after another, as the bridge's queues write."""
    n = 0
    while not stop.is_set():
        started = time.perf_counter()
        async with db.transaction() as session:
            await session.execute(insert(MessageMapping).values(
                room_id="!live:bench", event_id=f"$live{uuid.uuid4().hex}", network="slack",
                remote_space="T_C", remote_id=f"live{uuid.uuid4().hex}", part=0,
                created_at=time.time()))
        latencies.append(time.perf_counter() - started)
        n += 1
        await asyncio.sleep(0.005)


async def run(url: str, rows: int) -> int:
    db = Database(url)
    try:
        await db.upgrade()
        now = time.time()
        await fill(db, rows, now)

        stop = asyncio.Event()
        before: list[float] = []
        task = asyncio.create_task(writer(db, before, stop))
        await asyncio.sleep(2.0)
        stop.set()
        await task

        batches: list[float] = []
        real_batch = retention.delete_older_batch

        async def timed_batch(*args: Any, **kwargs: Any) -> int:
            started = time.perf_counter()
            try:
                return await real_batch(*args, **kwargs)
            finally:
                batches.append(time.perf_counter() - started)

        retention.delete_older_batch = timed_batch  # type: ignore[assignment]
        during: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(writer(db, during, stop))
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        deleted = await retention.run_retention(db, RetentionConfig(), now=now)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        stop.set()
        await task
        retention.delete_older_batch = real_batch  # type: ignore[assignment]
    finally:
        await db.close()

    total = sum(deleted.values())
    rate = total / wall if wall else float("inf")
    longest = max(batches) * 1000 if batches else 0.0
    ratio = p99(during) / p99(before) if before and during else float("nan")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    print(f"deleted: {deleted} in {wall:.1f} s, {len(batches)} batches")
    cpu_ms = cpu / total * 1_000_000 if total else float("nan")
    print(f"rows deleted per second: {rate:,.0f} (wall clock, for information)")
    results = [
        (f"CPU per 1,000 rows deleted: {cpu_ms:.1f} ms", cpu_ms <= TARGET_CPU_MS_PER_1000,
         f"<= {TARGET_CPU_MS_PER_1000:.0f} ms"),
        (f"longest batch: {longest:.0f} ms", longest <= TARGET_LONGEST_BATCH_MS,
         f"<= {TARGET_LONGEST_BATCH_MS:.0f} ms"),
        (f"writer p99 during / before: {p99(during) * 1000:.1f} ms / "
         f"{p99(before) * 1000:.1f} ms = {ratio:.2f}", ratio <= TARGET_WRITER_P99_RATIO,
         f"<= {TARGET_WRITER_P99_RATIO:.1f}"),
    ]
    missed = False
    for text, ok, target in results:
        print(f"[{'OK' if ok else 'MISSED'}] {text} (target {target})")
        missed |= not ok
    if total != rows + rows // 4:
        print(f"FAILED: expected {rows + rows // 4} rows deleted, got {total}")
        return 1
    return 3 if missed else 0


async def postgres_url(base: str) -> tuple[str, str]:
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = base.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return base.rsplit("/", 1)[0] + f"/{name}", name


async def drop_postgres(base: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000,
                        help="old message mappings to delete (and a quarter as many "
                             "finished outbox rows); default 200000")
    parser.add_argument("--database", default=None,
                        help="sqlite+aiosqlite:///file, or postgresql+asyncpg://user@host/db "
                             "(a fresh database is made beside db and dropped); default: a "
                             "temporary SQLite file")
    args = parser.parse_args()
    if args.database and args.database.startswith("postgresql+asyncpg://"):
        url, name = asyncio.run(postgres_url(args.database))
        try:
            return asyncio.run(run(url, args.rows))
        finally:
            asyncio.run(drop_postgres(args.database, name))
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite+aiosqlite:///{tmp}/bench.db"
        return asyncio.run(run(url, args.rows))


if __name__ == "__main__":
    sys.exit(main())
