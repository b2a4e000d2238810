"""The places that build on a dependency's internals notice when that dependency changes them.

bridge/db/sqlite_driver.py subclasses SQLAlchemy's aiosqlite adapter, copies parts of it and
calls aiosqlite's private Connection API; bridge/email/aiosmtpd_data.py replaces aiosmtpd's
DATA command with a copy of its checks and answers and calls SMTP's private methods. Both are
pinned in pyproject.toml to the series they were written for; bridge/slack/receive.py
copies slack-sdk's Socket Mode message parsing (to parse with orjson). Within that range a new
release may still change what they copied: each copied upstream function is fingerprinted
(its source), and each private name they call is checked, so that an upgrade fails here,
saying what to compare, instead of misbehaving at run time.

After comparing the upstream change with the copy (and adapting the copy), update the
fingerprint below to the one the failure names.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import aiosmtpd
import aiosqlite
import pytest
import sqlalchemy
from aiosmtpd.smtp import SMTP
from mautrix.util.async_db.aiosqlite import SQLiteDatabase, TxnConnection
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from sqlalchemy import text
from sqlalchemy.dialects.sqlite import aiosqlite as sqlalchemy_aiosqlite

from bridge.db import sqlite_driver
from bridge.db.engine import Database, create_engine
from bridge.email import aiosmtpd_data

# (class, method) -> (fingerprint of the method's source, where we copied or override it).
COPIED: dict[tuple[type, str], tuple[str, str]] = {
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_cursor, "__init__"):
        ("50447cd5c4913270", "sqlite_driver.OneTripCursor.__init__ sets the same attributes"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_cursor, "execute"):
        ("235038e47e047a4f", "sqlite_driver.OneTripCursor.execute handles errors the same way"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_cursor, "executemany"):
        ("f53bcbd4e5c2555f", "sqlite_driver.OneTripCursor.executemany, likewise"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_cursor, "_async_soft_close"):
        ("a5a2506bb2e89187", "sqlite_driver.OneTripCursor._async_soft_close does nothing"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_cursor, "close"):
        ("a24b9c0d46d32538", "sqlite_driver.OneTripCursor.close only drops the rows"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_connection, "rollback"):
        ("564e10479db0566d", "sqlite_driver.OneTripConnection.rollback skips it outside one"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_connection, "commit"):
        ("01525c9c88c61637", "sqlite_driver.OneTripConnection.commit, likewise"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_connection, "cursor"):
        ("47afee60f4d4fa22", "sqlite_driver.OneTripConnection relies on _cursor_cls"),
    (sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_connection, "_handle_exception"):
        ("148a73713d1af4d3", "sqlite_driver.OneTripCursor calls it on every error"),
    (SMTP, "smtp_DATA"):
        ("025c94766a3c653c", "aiosmtpd_data.SmtpProtocol.smtp_DATA copies its checks and "
                             "answers, in its order"),
    (SMTP, "_getaddr"):
        ("c9f8dc386b41034a", "aiosmtpd_data.SmtpProtocol._getaddr must give what it gives"),
    (AsyncBaseSocketModeClient, "process_message"):
        ("58229bcf7ca2423e", "receive._SocketModeClient.process_message copies it, parsing "
                             "with json_codec"),
    (TxnConnection, "transaction"):
        ("0815e663adeca33e", "crypto.ImmediateTxnConnection.transaction copies it, beginning "
                             "IMMEDIATE"),
}

MODULE_FILES = {"sqlite_driver": "bridge/db/sqlite_driver.py",
                "crypto": "bridge/matrix/crypto.py",
                "aiosmtpd_data": "bridge/email/aiosmtpd_data.py",
                "receive": "bridge/slack/receive.py"}
VERSIONS = (f"SQLAlchemy {sqlalchemy.__version__}, aiosqlite {aiosqlite.__version__}, "
            f"aiosmtpd {aiosmtpd.__version__}")


def _defining_class(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def fingerprint(cls: type, name: str) -> str:
    source = textwrap.dedent(inspect.getsource(vars(_defining_class(cls, name))[name]))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@pytest.mark.parametrize(("cls", "name"), list(COPIED),
                         ids=[f"{cls.__name__}.{name}" for cls, name in COPIED])
def test_the_upstream_code_we_copied_is_unchanged(cls: type, name: str) -> None:
    expected, ours = COPIED[cls, name]
    owner = _defining_class(cls, name)
    assert fingerprint(cls, name) == expected, (
        f"{owner.__module__}.{owner.__qualname__}.{name} changed ({VERSIONS}): "
        f"{ours}. Compare the new source with {MODULE_FILES[ours.split('.')[0]]}, adapt "
        f"it, then set this fingerprint in tests/test_workarounds.py to "
        f"{fingerprint(cls, name)!r}")


def _signature_of(cls: type, name: str) -> str:
    member = inspect.getattr_static(cls, name, None)
    if member is None:
        return "missing"
    if isinstance(member, property):
        return "property"
    kind = "async " if inspect.iscoroutinefunction(member) else ""
    return kind + str(inspect.signature(member)).split(" ->")[0]


# Private names the workarounds call, with the signature they call them with.
CALLED: list[tuple[type, str, str]] = [
    (aiosqlite.Connection, "_execute", "async (self, fn, *args, **kwargs)"),
    (aiosqlite.Connection, "_conn", "property"),
    (SMTP, "check_helo_needed", "async (self, helo: str = 'HELO')"),
    (SMTP, "check_auth_needed", "async (self, caller_method: str)"),
    (SMTP, "push", "async (self, status: ~AnyStr)"),
    (SMTP, "_call_handler_hook", "async (self, command: str, *args)"),
    (SMTP, "_set_post_data_state", "(self)"),
]


@pytest.mark.parametrize(("cls", "name", "signature"), CALLED,
                         ids=[f"{cls.__name__}.{name}" for cls, name, _ in CALLED])
def test_the_private_api_we_call_is_still_there(cls: type, name: str, signature: str) -> None:
    assert _signature_of(cls, name) == signature, (
        f"{cls.__module__}.{cls.__qualname__}.{name} is now {_signature_of(cls, name)!r}, "
        f"was {signature!r} ({VERSIONS}); bridge/db/sqlite_driver.py or "
        "bridge/email/aiosmtpd_data.py calls it that way")


async def test_the_crypto_stores_sqlite_connections_begin_immediate(tmp_path: Path) -> None:
    """bridge/matrix/crypto.py: mautrix's pool hands out ImmediateTxnConnections, whose
    transactions hold the write lock from their first statement."""
    from mautrix.util.async_db import Database

    from bridge.matrix.crypto import ImmediateTxnConnection, _immediate_transactions

    db = Database.create(f"sqlite:{tmp_path / 'crypto.db'}")
    await db.start()
    try:
        _immediate_transactions(db)
        assert isinstance(db, SQLiteDatabase)
        assert db._pool.qsize() >= 1
        async with db.acquire() as conn:
            assert isinstance(conn.wrapped, ImmediateTxnConnection)
            async with conn.transaction():
                await conn.execute("CREATE TABLE t (x INTEGER)")
                # Another connection cannot write meanwhile: the lock is taken.
                other = sqlite3.connect(tmp_path / "crypto.db", timeout=0)
                try:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        other.execute("BEGIN IMMEDIATE")
                finally:
                    other.close()
    finally:
        await db.stop()


def test_the_megolm_session_class_swap_notes_the_plaintext() -> None:
    """bridge/matrix/crypto.py: BridgeCryptoStore turns mautrix's inbound Megolm sessions into
    _RecordingGroupSessions by assigning __class__, which needs the same layout."""
    import olm
    from mautrix.crypto import InboundGroupSession

    from bridge.matrix.crypto import _PLAINTEXT, _RecordingGroupSession

    assert _RecordingGroupSession.__bases__ == (InboundGroupSession,)
    assert "__slots__" not in vars(_RecordingGroupSession)
    outbound = olm.OutboundGroupSession()
    inbound = InboundGroupSession(outbound.session_key, "signing", "sender", "!r:x")
    inbound.__class__ = _RecordingGroupSession
    plaintext, index = inbound.decrypt(outbound.encrypt('{"type": "m.room.message"}'))
    assert (plaintext, index) == ('{"type": "m.room.message"}', 0)
    assert _PLAINTEXT.get() == plaintext


def test_the_connection_class_swap_still_fits() -> None:
    # OneTripDBAPI.connect turns SQLAlchemy's connection into a OneTripConnection by
    # assigning __class__, which Python allows only for the same memory layout.
    base = sqlalchemy_aiosqlite.AsyncAdapt_aiosqlite_connection
    assert sqlite_driver.OneTripConnection.__slots__ == (), "it must add no attributes"
    assert "__dict__" not in vars(sqlite_driver.OneTripConnection)
    assert sqlite_driver.OneTripConnection.__bases__ == (base,)
    assert base._cursor_cls is not sqlite_driver.OneTripCursor


async def test_the_one_trip_driver_reads_and_writes(tmp_path: Path) -> None:
    """The bridge's SQLite engine, on a file as the bridge uses it: writes in a transaction
    (BEGIN IMMEDIATE, as the bridge's writers do) and reads outside one (the two paths of
    sqlite_driver._here), a commit and a rollback."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}")
    writer = engine.execution_options(writer=True)
    try:
        async with engine.connect() as connection:
            raw: Any = (await connection.get_raw_connection()).dbapi_connection
            assert isinstance(raw, sqlite_driver.OneTripConnection)
        async with writer.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            await connection.execute(text("INSERT INTO t (v) VALUES (:v)"),
                                     [{"v": "a"}, {"v": "b"}])
        with pytest.raises(RuntimeError):
            async with writer.begin() as connection:
                await connection.execute(text("INSERT INTO t (v) VALUES ('rolled back')"))
                raise RuntimeError
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT v FROM t ORDER BY id"))).all()
        assert [row.v for row in rows] == ["a", "b"]
    finally:
        await engine.dispose()


async def test_a_writer_waits_for_another_process_in_the_thread_not_the_loop(
        tmp_path: Path) -> None:
    """BEGIN IMMEDIATE runs in the event loop only while the write lock is free: held by
    another process (here a plain sqlite3 connection), the writer waits for it in
    aiosqlite's thread, and the event loop goes on meanwhile."""
    path = tmp_path / "bridge.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    writer = engine.execution_options(writer=True)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with writer.begin() as connection:
            await connection.execute(text("CREATE TABLE t (v TEXT)"))
        other.execute("BEGIN IMMEDIATE")

        async def write() -> None:
            async with writer.begin() as connection:
                await connection.execute(text("INSERT INTO t (v) VALUES ('after')"))

        waiting = asyncio.create_task(write())
        ticks = 0
        for _ in range(10):  # the loop is free while the writer waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 10 and not waiting.done()
        other.execute("INSERT INTO t (v) VALUES ('other')")
        other.execute("COMMIT")
        await asyncio.wait_for(waiting, 10)
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT v FROM t ORDER BY rowid"))).all()
        assert [row.v for row in rows] == ["other", "after"]
        # The loop's BEGIN left the connection's busy timeout as it was.
        async with engine.connect() as connection:
            timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar()
        assert timeout == sqlite_driver.BUSY_TIMEOUT_MS
    finally:
        other.close()
        await engine.dispose()


async def test_a_writing_transaction_makes_no_trip_to_the_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the write lock free, a writing transaction of the database (an ORM session on the
    connection it keeps for writing) runs its BEGIN IMMEDIATE, its statements (one row,
    several rows, a read) and its commit in the event loop, without a single hand-over to
    aiosqlite's thread or to the event loop's greenlet. The BEGIN takes the write lock all
    the same, and an error of a statement run so comes out as SQLAlchemy's, as before."""
    path = tmp_path / "bridge.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    monkeypatch.setattr(sqlite_driver, "_commits_since_checkpoint", 0)  # no checkpoint due
    trips: list[Any] = []
    to_thread = aiosqlite.Connection._execute
    awaited = sqlite_driver.await_

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(fn)
        return await to_thread(self, fn, *args, **kwargs)

    def counted_await(awaitable: Any) -> Any:
        trips.append(awaitable)
        return awaited(awaitable)

    other = sqlite3.connect(path, timeout=0)
    try:
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        monkeypatch.setattr(sqlite_driver, "await_", counted_await)
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": "a"})
            await session.execute(text("INSERT INTO t (v) VALUES (:v)"),
                                  [{"v": "b"}, {"v": "c"}])
            assert (await session.execute(text("SELECT count(*) FROM t"))).scalar() == 3
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # the loop's BEGIN holds the write lock
        assert trips == []
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            async with db.transaction() as session:
                await session.execute(text("INSERT INTO t (id, v) VALUES (1, 'again')"))
        # (Only the rollback went to the thread, as it always does.)
        assert [getattr(fn, "__qualname__", None) for fn in trips] == ["Connection.rollback"]
        trips.clear()
        assert [row[0] for row in other.execute("SELECT v FROM t ORDER BY id")] == \
            ["a", "b", "c"]
        # Reads through a plain (async) connection still hand over as they must: SQLAlchemy
        # insists on it (AwaitRequired otherwise).
        async with db.reading() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 3
        assert trips
    finally:
        other.close()
        await db.close()


async def test_commits_in_the_loop_checkpoint_the_wal_in_the_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own checkpoint is off (it would run in the event loop with a commit); every
    CHECKPOINT_EVERY-th commit checkpoints in aiosqlite's thread, so the WAL stays small."""
    path = tmp_path / "bridge.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    writer = engine.execution_options(writer=True)
    monkeypatch.setattr(sqlite_driver, "_commits_since_checkpoint", 0)
    try:
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")
                    ).scalar() == 0
        async with writer.begin() as connection:
            await connection.execute(text("CREATE TABLE t (v TEXT)"))
        # The table's commit was the first; the 2 * CHECKPOINT_EVERY-th checkpoints.
        for n in range(2 * sqlite_driver.CHECKPOINT_EVERY - 1):
            async with writer.begin() as connection:
                await connection.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": str(n)})
        # Then one more commit: a WAL that was checkpointed starts again from its beginning.
        async with writer.begin() as connection:
            await connection.execute(text("INSERT INTO t (v) VALUES ('last')"))
        async with engine.connect() as connection:
            busy, frames, _ = (await connection.exec_driver_sql(
                "PRAGMA wal_checkpoint(PASSIVE)")).one()
        # Without the driver's checkpoints it would hold a frame or more per commit.
        assert busy == 0 and frames < 10
    finally:
        await engine.dispose()


def test_the_smtp_protocol_is_aiosmtpds_with_our_data_command() -> None:
    assert issubclass(aiosmtpd_data.SmtpProtocol, SMTP)
    assert "smtp_DATA" in vars(aiosmtpd_data.SmtpProtocol)
