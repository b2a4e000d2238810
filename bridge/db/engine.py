"""Engine creation and schema migrations (alembic), for SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import functools
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bridge.db import sqlite_driver


def migrations_dir() -> Path:
    """alembic/ at the repository top, or bridge/_migrations inside an installed wheel."""
    packaged = Path(__file__).resolve().parent.parent / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent.parent / "alembic"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Python's sqlite3 starts a transaction only before the first write, so a "read, then
    # write" transaction (claiming queued work) is not atomic across processes. Take over
    # transaction control; _sqlite_begin then starts every transaction explicitly.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    # WAL lets readers (health checks, metrics) proceed while a writer commits; the busy
    # timeout turns short lock waits into waiting rather than "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writing transactions say IMMEDIATE, which takes the write lock up front: two bridge
    # processes on one SQLite file then claim work one after the other instead of both
    # reading the same free items. Reads stay deferred and never wait for a writer (WAL).
    # Reads run in autocommit (each statement sees the latest commit): no BEGIN/ROLLBACK
    # round trips, which cost more than the queries themselves through aiosqlite's thread.
    if conn.get_execution_options().get("writer"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # Every session ends its own transaction, so the pool's extra rollback on return
        # is a wasted round trip. sqlite_driver: at most one trip to aiosqlite's thread per
        # statement, none for those that cannot wait for a lock (which run in the event
        # loop: hence check_same_thread off; a connection is never used by two at once).
        engine = create_async_engine(url, pool_reset_on_return=None,
                                     module=sqlite_driver.dbapi(),
                                     connect_args={"check_same_thread": False})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from bridge.networks import migration_locations

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # The core's history, then each network's branch in its own folder (they hang off the
    # core's: alembic finds a revision in whichever location holds it).
    locations = [migrations_dir() / "versions", *migration_locations()]
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> tuple[str, ...]:
    """The newest revision of the core and of every network: one head per branch."""
    from bridge.networks import migration_locations

    return _head_revisions(tuple(migration_locations()))


@functools.cache  # the migrations shipped with this process do not change while it runs
def _head_revisions(_locations: tuple[Path, ...]) -> tuple[str, ...]:
    return tuple(sorted(ScriptDirectory.from_config(_alembic_config()).get_heads()))


def describe(revisions: tuple[str, ...]) -> str | None:
    """Revisions as messages show them ("0005" or "email0001, slack0001"); None if none."""
    return ", ".join(revisions) or None


def head_revision() -> str | None:
    """What a fully migrated database is at, as :func:`current_revision` describes it."""
    return describe(head_revisions())


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


async def current_revisions(engine: AsyncEngine) -> tuple[str, ...]:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revisions)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revisions, one per branch, as one string (None: empty database)."""
    return describe(await current_revisions(engine))


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Apply pending migrations of the core and every network; returns the revisions before
    and after (as :func:`describe` puts them)."""

    def run(connection: Connection) -> tuple[str | None, str | None]:
        if connection.dialect.name == "postgresql":
            # Several bridge processes starting at once on one database: one migrates, the
            # others wait here and then find it done (held until this transaction ends).
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtextextended("
                                       "'bridge schema upgrade', 0))")
        before = _current_revisions(connection)
        command.upgrade(_alembic_config(connection), "heads")
        return describe(before), describe(_current_revisions(connection))

    # Alembic keeps the running migration in module globals (alembic.context, alembic.op),
    # and run_sync gives up the event loop at every statement: two upgrades in one process
    # (two bridges, a test's second database) would interleave and break each other
    # ("KeyError: 'script'" as the second removes the first's proxies). One at a time.
    async with _upgrade_lock(), engine.begin() as conn:
        return await conn.run_sync(run)


_UPGRADE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = \
    weakref.WeakKeyDictionary()


def _upgrade_lock() -> asyncio.Lock:
    """The lock that keeps this event loop's upgrades apart (a lock is bound to its loop)."""
    loop = asyncio.get_running_loop()
    lock = _UPGRADE_LOCKS.get(loop)
    if lock is None:
        lock = _UPGRADE_LOCKS[loop] = asyncio.Lock()
    return lock


class Database:
    """The engine and a session factory; repositories take the sessions it hands out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        # Sessions for reading; transaction() hands out writing ones.
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writers = async_sessionmaker(self.engine.execution_options(writer=True),
                                           expire_on_commit=False)
        self.postgres = is_postgres(self.engine)
        # SQLite allows one writer at a time; serialising our own writers in-process avoids
        # busy-waiting on the file lock and keeps latency flat.
        self._write_lock: asyncio.Lock | None = None if self.postgres else asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on success and rolls back on error."""
        if self._write_lock is None:
            async with self._writers() as session, session.begin():
                yield session
            return
        async with self._write_lock, self._writers() as session, session.begin():
            yield session

    async def upgrade(self) -> tuple[str | None, str | None]:
        return await upgrade(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()
