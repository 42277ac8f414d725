"""Many rows in one statement, without SQLAlchemy's per-row parameter work.

``conn.execute(insert(T), [row, row, …])`` compiles nothing new (the statement is
cached) but processes every parameter of every row through SQLAlchemy's execution
context, and builds the statement object and its cache key on each call: in a webhook
batch of 32 links that was a fifth of the store's time on the event loop
(``docs/performance.md``). :func:`insert_values` sends the same rows in one statement
through ``exec_driver_sql`` — a multi-row ``INSERT … VALUES (…), (…)`` on SQLite, an
``INSERT … SELECT * FROM unnest(array, …)`` on PostgreSQL — after the very bind
processors SQLAlchemy would apply (:func:`syncd.store.dialect.bind_processors`), so the
stored values are the same.

For a webhook's tens of rows. Thousands go through :func:`syncd.store.dialect.insert_new`
(COPY on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.store.dialect import bind_processors, insert_arrays, values_sql
from syncd.store.engine import json_text

__all__ = ["driver_sql", "insert_values"]

#: Rows per statement: 10 columns x 500 rows stays far under both databases' limits on
#: bound parameters (SQLite 32,766; PostgreSQL 65,535).
ROWS_PER_STATEMENT = 500


async def insert_values(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """``INSERT INTO table (columns) …`` of ``rows`` (Python values, as
    ``conn.execute(insert(table), …)`` takes them); the ``returning`` columns of the new
    rows, in no particular order."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        return await _insert_arrays(conn, table, tuple(columns), rows, tuple(returning))
    processors = bind_processors(conn.dialect, table, columns)
    # names come from syncd's own table definitions, never from input; values are bound
    head = f"INSERT INTO {table.name} ({', '.join(columns)})"
    one = "(" + ", ".join("?" * len(columns)) + ")"
    tail = f"RETURNING {', '.join(returning)}" if returning else ""
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start : start + ROWS_PER_STATEMENT]
        by_column = [  # strict: a row of another length is a ValueError, as before
            column if process is None else _processed(process, column)
            for process, column in zip(processors, zip(*part, strict=True), strict=True)
        ]
        values = tuple(chain.from_iterable(zip(*by_column, strict=True)))
        sql = values_sql(head, one, len(part), tail)
        rows_back = await driver_sql(conn, sql, values)
        if returning:
            found += [tuple(row) for row in rows_back]
    return found


async def driver_sql(
    conn: AsyncConnection, sql: str, parameters: Any, many: bool = False
) -> Sequence[Any]:
    """``conn.exec_driver_sql(sql, parameters)``'s rows (``many``: ``parameters`` is a
    list of parameter sets).

    On SQLite, in a transaction, the statement goes to syncd's driver without
    SQLAlchemy's execution context, cursor result and metadata: in a webhook batch,
    they cost more of the event loop than SQLite's own work for the statement. Errors
    are SQLAlchemy's as before. Elsewhere (PostgreSQL, outside a transaction, where
    SQLAlchemy begins one), ``exec_driver_sql``.
    """
    if conn.dialect.name == "sqlite" and conn.in_transaction():
        from syncd.store import sqlite_driver  # SQLite installations only

        driver = await sqlite_driver.under(conn)
        if driver is not None:
            return await sqlite_driver.run(driver, sql, parameters, many)
    result = await conn.exec_driver_sql(sql, parameters)
    return result.all() if result.returns_rows else []


def _processed(process: Callable[[Any], Any], column: Sequence[Any]) -> list[Any]:
    """``[process(value) for value in column]``, once per run of the same object: a
    batch's rows share one ``now`` (and a datetime's processing is the dearest of a
    row's), so it is processed once, not once per row."""
    out: list[Any] = []
    last: Any = _UNSET
    done: Any = None
    for value in column:
        if value is not last:
            last, done = value, process(value)
        out.append(done)
    return out


_UNSET = object()


async def _insert_arrays(
    conn: AsyncConnection,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
    returning: tuple[str, ...],
) -> list[tuple[Any, ...]]:
    """PostgreSQL: one array per column (:func:`~syncd.store.dialect.insert_arrays`), each
    value turned into the driver's as SQLAlchemy would (JSON as the text its serializer
    writes)."""
    encoders = _encoders(conn.dialect, table, columns)
    arrays = [
        list(column) if encode is None else _processed(encode, column)
        for encode, column in zip(encoders, zip(*rows, strict=True), strict=True)
    ]
    return (await insert_arrays(conn, table, columns, arrays, returning=returning))[0]


@lru_cache(maxsize=32)
def _encoders(
    dialect: Dialect, table: Table, columns: tuple[str, ...]
) -> tuple[Callable[[Any], Any] | None, ...]:
    """Per column, what turns a Python value into its array element (None: as is)."""
    encoders: list[Callable[[Any], Any] | None] = []
    for name, process in zip(columns, bind_processors(dialect, table, columns), strict=True):
        column_type = table.c[name].type
        if isinstance(column_type, JSON):  # JSON text, as SQLAlchemy's json_serializer writes
            encoders.append(_json_element(column_type.none_as_null))
        else:
            encoders.append(process)
    return tuple(encoders)


def _json_element(none_as_null: bool) -> Callable[[Any], str | None]:
    def encode(value: Any) -> str | None:
        return None if value is None and none_as_null else json_text(value)

    return encode
