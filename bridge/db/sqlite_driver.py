"""SQLAlchemy's aiosqlite adapter with fewer trips to aiosqlite's thread.

aiosqlite runs every sqlite3 call in its own thread, and SQLAlchemy's adapter makes four
such calls per statement (open a cursor, execute, fetch, close) plus one for the rollback
that ends even a read-only session. Each trip is a hand-over to that thread and back
through the event loop, which costs far more than the statement itself on a local
database. This adapter does a statement's calls in one trip (`_run`), runs the statements
that cannot wait for a lock right in the event loop (`_here`: reads, and what a write
transaction does between BEGIN IMMEDIATE and COMMIT), and skips the rollback or commit
when the connection has no transaction open. Same sqlite3 connection (opened with
check_same_thread off, never used by two threads at once), same SQL.

A writing transaction's BEGIN IMMEDIATE and COMMIT run in the event loop too, where they
cannot wait: the BEGIN with the busy timeout off (only when another process holds the write
lock does it go to the thread, to wait there as before), the COMMIT with the WAL's automatic
checkpoint off (`_commit_here`), so that it only appends to the WAL. The checkpoint, which
copies the WAL into the database file and syncs it, runs in the thread with every
CHECKPOINT_EVERY-th commit instead. Those two trips were most of what a small transaction
cost (about 0.15 ms each of hand-over, against some 0.02 ms of SQLite's own work).

The BEGIN IMMEDIATE goes straight to sqlite3 from SQLAlchemy's ``begin`` event
(`OneTripConnection.begin_immediate_here`) instead of a statement's whole way through
SQLAlchemy; and on the connection the database keeps for its writing transactions, used only
through ORM sessions, the statements that run in the event loop run without a coroutine
handed to the event loop's greenlet and back (`OneTripCursor._ran_here`). Each of those cost
more than SQLite's own work for a small statement.

Used through ``create_async_engine(url, module=dbapi(), connect_args=...)``
(bridge.db.engine).
"""

from __future__ import annotations

import collections
import re
import sqlite3
import weakref
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import Connection
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# Statements that go to aiosqlite's thread even inside a transaction: those that end it
# otherwise than through the connection's commit (`OneTripConnection.commit`), and deletes,
# which can take long.
_SLOW_OR_LOCKING = re.compile(r"\s*(?:COMMIT|ROLLBACK|END|BEGIN|SAVEPOINT|RELEASE|DELETE|"
                              r"PRAGMA|VACUUM)", re.IGNORECASE)
_SELECT = re.compile(r"\s*SELECT\b", re.IGNORECASE)
_BEGIN_IMMEDIATE = re.compile(r"\s*BEGIN\s+IMMEDIATE\s*$", re.IGNORECASE)
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"

# How long a statement waits for another process's lock (PRAGMA busy_timeout, set on every
# connection by bridge.db.engine).
BUSY_TIMEOUT_MS = 10_000
# Commits (of this process) between two checkpoints of the WAL; the engine turns SQLite's
# automatic one (after a commit that grew the WAL past 1,000 pages) off, so that a commit
# never checkpoints in the event loop. A few pages per commit: a WAL of a few megabytes.
CHECKPOINT_EVERY = 200
_commits_since_checkpoint = 0


# The connections (aiosqlite's) whose statements all come through an ORM session: the one
# the database keeps for its writing transactions (bridge.db.engine). Inside a transaction
# their statements that may run in the event loop run without a coroutine and a switch to
# the event loop's greenlet and back (`OneTripCursor._ran_here`). Not other connections':
# SQLAlchemy's AsyncConnection.execute insists that each statement switches at least once
# (AwaitRequired).
_THROUGH_SESSIONS_ONLY: weakref.WeakSet[aiosqlite.Connection] = weakref.WeakSet()


def through_sessions_only(dbapi_connection: Any, only: bool) -> None:
    """Say whether the statements of ``dbapi_connection`` (a :class:`OneTripConnection`)
    come only through ORM sessions from now on (see _THROUGH_SESSIONS_ONLY)."""
    connection = dbapi_connection._connection
    if only:
        _THROUGH_SESSIONS_ONLY.add(connection)
    else:
        _THROUGH_SESSIONS_ONLY.discard(connection)


def runs_here(connection: Connection, operation: str) -> sqlite3.Connection | None:
    """The sqlite3 connection under ``connection`` (SQLAlchemy's) if this driver would run
    ``operation`` right here in the event loop (see `_here`: a statement of a writing
    transaction, a read outside one) and nothing else uses it now: then the statement may
    be handed to it directly, bypassing SQLAlchemy (bridge.db.direct). None otherwise, and
    for any other database."""
    if connection.dialect.name != "sqlite":
        return None
    adapted = connection.connection.dbapi_connection
    if not isinstance(adapted, OneTripConnection) or adapted._execute_mutex.locked():
        return None
    sqlite = adapted._connection._conn
    return sqlite if _here(sqlite, operation) else None


def _begins_here(connection: sqlite3.Connection, operation: Any) -> bool:
    """Is ``operation`` a BEGIN IMMEDIATE, done right here in the event loop because the
    write lock was free (True)? False for anything else, and when another process holds the
    lock: then the BEGIN is to wait for it in aiosqlite's thread."""
    if not isinstance(operation, str) or connection.in_transaction or \
            not _BEGIN_IMMEDIATE.match(operation):
        return False
    connection.execute("PRAGMA busy_timeout=0")
    try:
        connection.execute(operation)
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
        return False
    finally:
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return True


def _commit_due_for_checkpoint() -> bool:
    global _commits_since_checkpoint
    _commits_since_checkpoint += 1
    if _commits_since_checkpoint < CHECKPOINT_EVERY:
        return False
    _commits_since_checkpoint = 0
    return True


def _commit_and_checkpoint(connection: sqlite3.Connection) -> None:
    """In aiosqlite's thread: the commit, then a PASSIVE checkpoint (it waits for nobody,
    and copies what no reader still needs; the rest goes with the next one)."""
    connection.commit()
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()


def _here(connection: sqlite3.Connection, operation: Any) -> bool:
    """May this statement run right here in the event loop, without the trip to aiosqlite's
    thread? Where it cannot wait for a lock and is short (an indexed look-up or a row):

    - inside a write transaction (BEGIN IMMEDIATE took the write lock: nothing more to
      wait for), except what ends it or may take long (_SLOW_OR_LOCKING);
    - a read outside one: in WAL mode readers do not wait for writers (only for a crash
      recovery or a connection in exclusive locking mode, which the bridge never opens).

    BEGIN IMMEDIATE itself (which may wait while another process writes) and COMMIT have
    their own ways (`_begins_here`, `OneTripConnection.commit`). The trip costs more than
    such a statement (about 0.2 ms of hand-over on one core, which the bridge is pinned to
    in the benchmarks). (A file database, as the bridge uses: the pool hands a connection
    to one session at a time. An in-memory one shares one connection and is not meant for
    the bridge.)
    """
    if not isinstance(operation, str):
        return False
    if connection.in_transaction:
        return not _SLOW_OR_LOCKING.match(operation)
    return bool(_SELECT.match(operation))


def _run(connection: sqlite3.Connection, many: bool, operation: Any,
         parameters: Any) -> tuple[Any, list[Any], int, int | None]:
    """One statement, in aiosqlite's thread or (see `_here`) in the event loop's:
    (description, rows, rowcount, lastrowid)."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement runs, is fetched and closed in one call to the thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        # No aiosqlite cursor is opened: each statement opens and closes its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        return  # nothing is open: the rows and the description are already here

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            if not self._ran_here(False, operation, parameters):
                await_(self._execute(False, operation, parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            if not self._ran_here(True, operation, seq_of_parameters):
                await_(self._execute(True, operation, seq_of_parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def _ran_here(self, many: bool, operation: Any, parameters: Any) -> bool:
        """Run a statement of a transaction that may run in the event loop (`_here`) right
        away, without handing a coroutine to the event loop's greenlet and back (`await_`),
        which cost more than SQLite's own work for such a statement: on a connection used
        only through sessions (see _THROUGH_SESSIONS_ONLY), while nothing else uses it
        (else, never the case while one session holds it, `_execute` waits)."""
        connection = self._connection
        sqlite = connection._conn
        if not sqlite.in_transaction or connection not in _THROUGH_SESSIONS_ONLY or \
                self._adapt_connection._execute_mutex.locked() or not _here(sqlite, operation):
            return False
        self._description, rows, self._rowcount, self._lastrowid = _run(
            sqlite, many, operation, parameters)
        self._rows = collections.deque(rows)
        return True

    async def _execute(self, many: bool, operation: Any, parameters: Any) -> None:
        connection = self._connection
        async with self._adapt_connection._execute_mutex:
            sqlite = connection._conn
            if _here(sqlite, operation):
                result = _run(sqlite, many, operation, parameters)
            elif not many and not parameters and _begins_here(sqlite, operation):
                result = (None, [], -1, None)  # what sqlite3's cursor says after a BEGIN
            else:
                result = await connection._execute(_run, sqlite, many, operation,
                                                   parameters)
        self._description, rows, self._rowcount, self._lastrowid = result
        self._rows = collections.deque(rows)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    _cursor_cls = OneTripCursor

    def _in_transaction(self) -> bool:
        # Readable from any thread (no thread check in sqlite3), and nothing runs on this
        # connection while SQLAlchemy ends its transaction.
        connection = self._connection._connection
        return connection is None or connection.in_transaction

    def begin_immediate_here(self) -> bool:
        """BEGIN IMMEDIATE right here in the event loop (see `_begins_here`), without the
        way of a statement through SQLAlchemy (which cost about a third of a small writing
        transaction). False when it could not begin here (the write lock taken by another
        process, or an error): nothing was begun, and the caller's BEGIN statement waits
        for the lock in aiosqlite's thread, or raises the error, as any statement does."""
        if self._execute_mutex.locked():
            return False
        try:
            return _begins_here(self._connection._conn, BEGIN_IMMEDIATE)
        except sqlite3.Error:
            return False

    def rollback(self) -> None:
        if self._in_transaction():  # a read in autocommit mode has nothing to roll back
            super().rollback()

    def commit(self) -> None:
        if not self._in_transaction():
            return
        connection = self._connection
        try:
            if _commit_due_for_checkpoint():
                await_(connection._execute(_commit_and_checkpoint, connection._conn))
            else:
                # Appends to the WAL (no sync with synchronous=NORMAL, no checkpoint): it
                # cannot wait for a lock, the transaction holds the write lock already.
                connection._conn.commit()
        except Exception as error:
            self._handle_exception(error)


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        connection = super().connect(*arg, **kw)
        connection.__class__ = OneTripConnection  # same slots, fewer trips
        return connection


def dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
