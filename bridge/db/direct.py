"""A few hot statements run straight on SQLite's connection: SQLAlchemy's SQL, without its
execution machinery around each call.

Through ``Connection.execute`` a small statement costs some 0.03 ms of SQLAlchemy's work (the
execution context, the parameters processed by name, a result object, the events) against a
few microseconds of SQLite's own, and the outbox's record of a relayed message runs several
(its success, its lane's next item claimed, its message mapping). A :class:`DirectStatement`
compiles its Core statement once, with SQLAlchemy, per dialect and set of parameter names,
and then hands each call's values to sqlite3 in the compiled order, converted as SQLAlchemy's
bind processors convert them; rows come back as tuples, their values converted as
SQLAlchemy's result processors convert them.

Only where the bridge's SQLite driver runs the statement in the event loop anyway (a
statement of a writing transaction, a read outside one: :func:`sqlite_driver.runs_here`),
and only for statements that no ``before_execute`` listener needs to see (the portal cache
watches ``link`` and ``portal``; these are statements of the outbox and the message
mappings, and reads). Anywhere else (PostgreSQL, a write outside a transaction, a statement
that must wait for a lock) it goes through SQLAlchemy as before, so the answer is the same
either way. An error comes out as SQLAlchemy raises it (its ``DBAPIError`` subclass of the
driver's error).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler

from bridge.db import sqlite_driver

Parameters = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    # Each placeholder's value: its parameter's name, the value compiled into the statement
    # (a literal in .values()), and SQLAlchemy's conversion for its type, if any.
    names: tuple[str, ...]
    defaults: dict[str, Any]
    converts: dict[str, Callable[[Any], Any]]
    # Each result column's conversion (None: none), if any column has one.
    converts_out: tuple[Callable[[Any], Any] | None, ...] | None

    def rows(self, rows: list[Any]) -> list[Any]:
        converts = self.converts_out
        if converts is None:
            return rows
        return [tuple(value if convert is None else convert(value)
                      for convert, value in zip(converts, row, strict=True)) for row in rows]

    def values(self, parameters: Parameters) -> tuple[Any, ...]:
        merged = {**self.defaults, **parameters}
        converts = self.converts
        return tuple(converts[name](merged[name]) if name in converts else merged[name]
                     for name in self.names)


class DirectStatement:
    """A Core statement, executed straight on sqlite3 where that is safe (see the module)."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # By the dialect (a process may use SQLite and PostgreSQL, as the tests do), the
        # parameters' names and whether it is run for several rows; None: this form of the
        # statement always goes through SQLAlchemy.
        self._compiled: dict[tuple[str, tuple[str, ...], bool], _Compiled | None] = {}

    def execute(self, connection: Connection,
                parameters: Parameters | Sequence[Parameters]) -> list[Any]:
        """Run it with one row's ``parameters`` or several (a list); returns the rows it
        returns (RETURNING), [] when none."""
        many = not isinstance(parameters, Mapping)
        rows: Sequence[Parameters] = parameters if many else [parameters]  # type: ignore[assignment,list-item]
        # Compiled only for SQLite: the direct form asks the dialect for its result
        # conversions without a cursor, which asyncpg's cannot answer for a float column.
        compiled = self._compile(connection.dialect, rows[0], many) \
            if rows and connection.dialect.name == "sqlite" else None
        sqlite = sqlite_driver.runs_here(connection, compiled.sql) if compiled else None
        if sqlite is None or compiled is None:
            result = connection.execute(self.statement, parameters)
            return list(result) if result.returns_rows else []
        try:
            if many:
                sqlite.executemany(compiled.sql, [compiled.values(row) for row in rows])
                return []
            cursor = sqlite.execute(compiled.sql, compiled.values(rows[0]))
            try:
                return compiled.rows(cursor.fetchall()) if cursor.description else []
            finally:
                cursor.close()
        except sqlite3.Error as error:
            raise DBAPIError.instance(compiled.sql, parameters, error, sqlite3.Error) \
                from error

    def _compile(self, dialect: Dialect, first: Parameters, many: bool) -> _Compiled | None:
        # (By the names in the caller's order: each caller always builds its rows alike, and
        # sorting them on every call cost more than the lookup.)
        key = (dialect.name, tuple(first), many)
        if key in self._compiled:
            return self._compiled[key]
        # As Connection.execute compiles it: the parameters' names decide an INSERT's
        # columns.
        compiled = self.statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=sorted(first), for_executemany=many)
        self._compiled[key] = made = _direct_form(compiled, dialect, many)
        return made


def _direct_form(compiled: SQLCompiler, dialect: Dialect, many: bool) -> _Compiled | None:
    """The compiled statement as sqlite3 takes it, or None where that would differ from what
    SQLAlchemy does with it: parameters rendered at execution time (expanding IN lists),
    RETURNING of several rows at once."""
    names = compiled.positiontup
    if names is None or "__[POSTCOMPILE" in compiled.string or \
            (many and compiled.effective_returning):
        return None
    converts_out = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None)
                         for column in compiled._result_columns)
    converts: dict[str, Callable[[Any], Any]] = {
        name: convert for name, convert in compiled._bind_processors.items()
        if not isinstance(convert, Sequence)}  # (tuples: expanding parameters)
    return _Compiled(sql=compiled.string, names=tuple(names),
                     defaults=dict(compiled.construct_params(_check=False)),
                     converts=converts,
                     converts_out=converts_out if any(converts_out) else None)
