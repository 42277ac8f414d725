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
from itertools import chain
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.store.dialect import array_types, bind_processors, values_sql
from syncd.store.engine import json_text

__all__ = ["insert_values"]

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
        values = tuple(
            chain.from_iterable(
                [
                    value if process is None else process(value)
                    for process, value in zip(processors, row, strict=True)
                ]
                for row in part
            )
        )
        sql = values_sql(head, one, len(part), tail)
        result = await conn.exec_driver_sql(sql, values)
        if returning:
            found += [tuple(row) for row in result.all()]
    return found


async def _insert_arrays(
    conn: AsyncConnection,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
    returning: tuple[str, ...],
) -> list[tuple[Any, ...]]:
    """PostgreSQL: ``INSERT … SELECT * FROM unnest(%b::type[], …)``, an array per column
    (in binary: :func:`~syncd.store.dialect.array_types`).

    psycopg parses a statement's placeholders anew on every execution once it has more
    than 50 parameters (32 links x 6 columns is 192), and ``executemany`` sends each row
    as its own prepared execution: either cost more than the batch's own work. One array
    per column keeps the statement short, its parsing cached and the send single.
    """
    sql, encoders = _array_insert(conn, table, columns, returning)
    arrays = tuple(
        [value if encode is None else encode(value) for value in column]
        for encode, column in zip(encoders, zip(*rows, strict=True), strict=True)
    )
    result = await conn.exec_driver_sql(sql, arrays)
    return [tuple(row) for row in result.all()] if returning else []


def _array_insert(
    conn: AsyncConnection, table: Table, columns: tuple[str, ...], returning: tuple[str, ...]
) -> tuple[str, list[Callable[[Any], Any] | None]]:
    """The ``unnest`` statement of :func:`_insert_arrays` and, per column, what turns a
    Python value into the array's element (None: as is)."""
    key = (table.name, columns, returning)
    made = _ARRAY_INSERTS.get(key)
    if made is not None:
        return made
    dialect = conn.dialect
    processors = bind_processors(dialect, table, columns)
    types = array_types(dialect, table, columns)
    encoders: list[Callable[[Any], Any] | None] = []
    for name, process in zip(columns, processors, strict=True):
        column_type = table.c[name].type
        if isinstance(column_type, JSON):  # JSON text, as SQLAlchemy's json_serializer writes
            encoders.append(_json_element(column_type.none_as_null))
        else:
            encoders.append(process)
    arrays = ", ".join(f"%b::{type_}[]" for type_ in types)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"  # noqa: S608
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    _ARRAY_INSERTS[key] = sql, encoders
    return sql, encoders


_ARRAY_INSERTS: dict[
    tuple[str, tuple[str, ...], tuple[str, ...]], tuple[str, list[Callable[[Any], Any] | None]]
] = {}


def _json_element(none_as_null: bool) -> Callable[[Any], str | None]:
    def encode(value: Any) -> str | None:
        return None if value is None and none_as_null else json_text(value)

    return encode
