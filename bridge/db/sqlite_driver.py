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

Used through ``create_async_engine(url, module=dbapi(), connect_args=...)``
(bridge.db.engine).
"""

from __future__ import annotations

import collections
import re
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# Statements that go to aiosqlite's thread even inside a transaction: those that end it
# (COMMIT may checkpoint the WAL, with an fsync), and deletes, which can take long.
_SLOW_OR_LOCKING = re.compile(r"\s*(?:COMMIT|ROLLBACK|END|BEGIN|SAVEPOINT|RELEASE|DELETE|"
                              r"PRAGMA|VACUUM)", re.IGNORECASE)
_SELECT = re.compile(r"\s*SELECT\b", re.IGNORECASE)


def _here(connection: sqlite3.Connection, operation: Any) -> bool:
    """May this statement run right here in the event loop, without the trip to aiosqlite's
    thread? Where it cannot wait for a lock and is short (an indexed look-up or a row):

    - inside a write transaction (BEGIN IMMEDIATE took the write lock: nothing more to
      wait for), except what ends it or may take long (_SLOW_OR_LOCKING);
    - a read outside one: in WAL mode readers do not wait for writers (only for a crash
      recovery or a connection in exclusive locking mode, which the bridge never opens).

    BEGIN IMMEDIATE itself (which waits while another process writes) and COMMIT stay in
    the thread. The trip costs more than such a statement (about 0.2 ms of hand-over on
    one core, which the bridge is pinned to in the benchmarks). (A file database, as the
    bridge uses: the pool hands a connection to one session at a time. An in-memory one
    shares one connection and is not meant for the bridge.)
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
            return await_(self._execute(False, operation, parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._execute(True, operation, seq_of_parameters))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _execute(self, many: bool, operation: Any, parameters: Any) -> None:
        connection = self._connection
        async with self._adapt_connection._execute_mutex:
            sqlite = connection._conn
            if _here(sqlite, operation):
                result = _run(sqlite, many, operation, parameters)
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

    def rollback(self) -> None:
        if self._in_transaction():  # a read in autocommit mode has nothing to roll back
            super().rollback()

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        connection = super().connect(*arg, **kw)
        connection.__class__ = OneTripConnection  # same slots, fewer trips
        return connection


def dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
