"""Engine creation and schema migrations (alembic), for SQLite and PostgreSQL alike.

alembic (with mako and the rest it brings, some ten megabytes) is imported only where a
migration runs or the migrations are read: ``bridge run`` applies them in a short-lived
child process (:meth:`Database.upgrade_in_subprocess`), so they never stay resident.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bridge.db import sqlite_driver

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Connections kept open to a SQLite file (each is a thread of aiosqlite's; opened when needed;
# up to 10 more are opened and closed beyond them).
SQLITE_POOL = 20
# What the Core queries that only read take: a session, or a plain connection
# (Database.reading).
Reader = AsyncSession | AsyncConnection
# The table in which alembic keeps the revisions a database is at (one row per branch).
VERSION_TABLE = "alembic_version"


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
    cursor.execute(f"PRAGMA busy_timeout={sqlite_driver.BUSY_TIMEOUT_MS}")
    # Commits run in the event loop (sqlite_driver): one must never do a checkpoint's
    # copying and syncing there. The driver checkpoints in aiosqlite's thread instead.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writing transactions say IMMEDIATE, which takes the write lock up front: two bridge
    # processes on one SQLite file then claim work one after the other instead of both
    # reading the same free items. Reads stay deferred and never wait for a writer (WAL).
    # Reads run in autocommit (each statement sees the latest commit): no BEGIN/ROLLBACK
    # round trips, which cost more than the queries themselves through aiosqlite's thread.
    # The BEGIN goes straight to the driver when it can be done at once (the usual case);
    # as a statement only when it must wait for another process's lock or has failed (then
    # it fails again as a statement, with SQLAlchemy's wrapped error).
    if conn.get_execution_options().get("writer") and \
            not conn.connection.dbapi_connection.begin_immediate_here():  # type: ignore[union-attr]
        conn.exec_driver_sql(sqlite_driver.BEGIN_IMMEDIATE)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # Every session ends its own transaction, so the pool's extra rollback on return
        # is a wasted round trip. sqlite_driver: at most one trip to aiosqlite's thread per
        # statement, none for those that cannot wait for a lock (which run in the event
        # loop: hence check_same_thread off; a connection is never used by two at once).
        # The pool keeps as many connections as the outbox's lanes use at once (20 rooms
        # busy): with the default 5, each connection beyond them was opened and closed per
        # use (a thread started, the pragmas set), a fifth of a relayed message's CPU.
        engine = create_async_engine(url, pool_reset_on_return=None, pool_size=SQLITE_POOL,
                                     max_overflow=10,
                                     module=sqlite_driver.dbapi(),
                                     connect_args={"check_same_thread": False})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

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
    from alembic.script import ScriptDirectory

    return tuple(sorted(ScriptDirectory.from_config(_alembic_config()).get_heads()))


def describe(revisions: tuple[str, ...]) -> str | None:
    """Revisions as messages show them ("0005" or "email0001, slack0001"); None if none."""
    return ", ".join(revisions) or None


def head_revision() -> str | None:
    """What a fully migrated database is at, as :func:`current_revision` describes it."""
    return describe(head_revisions())


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    # What alembic's MigrationContext.get_current_heads reads, without importing alembic.
    if not inspect(connection).has_table(VERSION_TABLE):
        return ()
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return tuple(sorted(str(row[0]) for row in rows))


async def current_revisions(engine: AsyncEngine) -> tuple[str, ...]:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revisions)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revisions, one per branch, as one string (None: empty database)."""
    return describe(await current_revisions(engine))


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """Apply pending migrations of the core and every network; returns the revisions before
    and after (as :func:`describe` puts them)."""

    from alembic import command

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


class MigrationError(Exception):
    """The migration child process could not migrate: its one-line description;
    ``database_error`` when the database refused or was unreachable (not a bug)."""

    def __init__(self, message: str, *, database_error: bool) -> None:
        super().__init__(message)
        self.database_error = database_error


class Database:
    """The engine and a session factory; repositories take the sessions it hands out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        # Sessions for reading; transaction() hands out writing ones.
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writing_engine = self.engine.execution_options(writer=True)
        self._writers = async_sessionmaker(self._writing_engine, expire_on_commit=False)
        self.postgres = is_postgres(self.engine)
        # The revisions a completed upgrade brought the schema to (the heads this code
        # ships): the health check compares with it instead of reading the migrations.
        self.head: str | None = None
        # SQLite allows one writer at a time; serialising our own writers in-process avoids
        # busy-waiting on the file lock and keeps latency flat.
        self._write_lock: asyncio.Lock | None = None if self.postgres else asyncio.Lock()
        # SQLite: a connection kept open for the writing transactions (one at a time, under
        # the write lock) and one for the reads, instead of one taken from the pool and given
        # back each time: that costs about 0.1 ms of SQLAlchemy's bookkeeping (the pool, a new
        # Connection, the greenlet trips to open and close it), more than a small transaction's
        # statements. A read while the kept one is in use takes one from the pool, as before.
        self._kept_writer: AsyncConnection | None = None
        self._kept_reader: AsyncConnection | None = None
        self._kept_reader_in_use = False
        # Called with the connection's ``info`` when a writing transaction on the kept
        # connection has ended (committed or rolled back): the pool's ``checkin`` event says
        # so for a pooled connection, but the kept one never goes back to the pool.
        self.kept_transaction_ended: list[Callable[[dict[Any, Any]], None]] = []

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for Core reads (the queries that take a :data:`Reader`): what
        the per-message paths read with, without an ORM session's bookkeeping around it."""
        if self.postgres or self._kept_reader_in_use:
            async with self.engine.connect() as connection:
                yield connection
            return
        self._kept_reader_in_use = True
        try:
            self._kept_reader = await self._kept(self._kept_reader, self.engine,
                                                 reader=True)
            yield self._kept_reader
        finally:
            self._kept_reader_in_use = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on success and rolls back on error."""
        if self._write_lock is None:
            async with self._writers() as session, session.begin():
                yield session
            return
        async with self._write_lock:
            self._kept_writer = await self._kept(self._kept_writer, self._writing_engine,
                                                 reader=False)
            # The session begins its transaction on the connection with its first statement,
            # and its close (which rolls back what was not committed) leaves the connection
            # open. Not `async with` the session: its exit runs the close in a task of its
            # own, shielded from cancellation, which cost more than a small transaction's
            # statements; a kept connection that a cancellation leaves inside a transaction
            # is replaced instead (_kept).
            kept = self._kept_writer
            session = AsyncSession(kept, expire_on_commit=False)
            try:
                yield session
                await session.commit()
            finally:
                try:
                    await session.close()
                finally:
                    self._kept_transaction_ended(kept)

    def _kept_transaction_ended(self, connection: AsyncConnection) -> None:
        if not self.kept_transaction_ended:
            return
        try:
            info = connection.info
        except Exception:  # invalidated: the pool's own event said the transaction ended
            return
        for ended in self.kept_transaction_ended:
            ended(info)

    @staticmethod
    async def _kept(connection: AsyncConnection | None, engine: AsyncEngine, *,
                    reader: bool) -> AsyncConnection:
        """``connection`` if it can be used again, else a new one from ``engine``. One left
        in a transaction (a commit or rollback cut short by a cancellation) or invalidated
        (an error that broke it) is closed: a session would join that transaction instead of
        beginning its own. (A reader's transaction only ever reads: SQLite runs its
        statements in autocommit, see _sqlite_begin.)"""
        if connection is not None:
            if not connection.closed and not connection.invalidated and \
                    (reader or not connection.in_transaction()):
                return connection
            with contextlib.suppress(Exception):
                if not reader:
                    sqlite_driver.through_sessions_only(
                        connection.sync_connection.connection.dbapi_connection,  # type: ignore[union-attr]
                        False)
            with contextlib.suppress(Exception):
                await connection.close()
        connection = await engine.connect()
        if not reader:
            # Used only by the sessions of transaction(), never through AsyncConnection's own
            # execute (which insists on a switch to the event loop per statement).
            raw = await connection.get_raw_connection()
            sqlite_driver.through_sessions_only(raw.dbapi_connection, True)
        return connection

    async def upgrade(self) -> tuple[str | None, str | None]:
        return await upgrade(self.engine)

    async def upgrade_in_subprocess(self) -> tuple[str | None, str | None]:
        """:meth:`upgrade` in a short-lived child process (``python -m bridge.db.migrate``),
        so that alembic is never imported into this one: what ``bridge run`` uses, to keep
        the running bridge small. The URL goes to the child on its stdin (not its command
        line, which other users can read). A database error is raised as
        :class:`MigrationError` with the child's one-line description."""
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.db.migrate", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await child.communicate(self.url.encode("utf-8"))
        try:
            answer = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.decode("utf-8", "replace").strip().splitlines()[-20:]
            raise RuntimeError(f"the database migration process exited with code "
                               f"{child.returncode}:\n" + "\n".join(tail)) from None
        if "error" in answer:
            raise MigrationError(str(answer["error"]), database_error=bool(answer["database"]))
        return answer["before"], answer["after"]

    async def close(self) -> None:
        for connection in (self._kept_writer, self._kept_reader):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        self._kept_writer = self._kept_reader = None
        await self.engine.dispose()
