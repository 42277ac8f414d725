"""Many rows in one statement, without SQLAlchemy's per-row parameter work.

``conn.execute(insert(T), [row, row, …])`` compiles nothing new (the statement is
cached) but processes every parameter of every row through SQLAlchemy's execution
context, and builds the statement object and its cache key on each call: in a webhook
batch of 32 links that was a fifth of the store's time on the event loop
(``docs/performance.md``). :func:`insert_values` sends the same rows as one multi-row
``INSERT … VALUES (…), (…)`` through ``exec_driver_sql``, after the very bind
processors SQLAlchemy would apply (:func:`syncd.store.dialect.bind_processors`), so the
stored values are the same.

For a webhook's tens of rows. Thousands go through :func:`syncd.store.dialect.insert_new`
(COPY on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Table, any_, bindparam, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.store.dialect import bind_processors
from syncd.store.engine import json_text

__all__ = ["in_list", "insert_values", "list_param", "placeholder"]

#: Rows per statement: 10 columns x 500 rows stays far under both databases' limits on
#: bound parameters (SQLite 32,766; PostgreSQL 65,535).
ROWS_PER_STATEMENT = 500


def placeholder(conn: AsyncConnection) -> str:
    """The driver's parameter mark: ``?`` (sqlite3) or ``%s`` (psycopg)."""
    return "?" if conn.dialect.name == "sqlite" else "%s"


def in_list(dialect: str, column: Any, name: str) -> ColumnElement[bool]:
    """``column IN (the list bound as name)``; bind it with :func:`list_param`.

    One parameter whatever the length — an array on PostgreSQL, a JSON array read by
    ``json_each`` on SQLite — so a statement built once serves every batch; both
    databases still search the column's index.
    """
    if dialect == "postgresql":
        return column == any_(cast(bindparam(name), ARRAY(column.type)))  # type: ignore[no-any-return]
    listed = func.json_each(bindparam(name)).table_valued("value")
    return column.in_(select(listed.c.value))  # type: ignore[no-any-return]


def list_param(dialect: str, values: Iterable[Any]) -> Any:
    """The value of an :func:`in_list` parameter."""
    return list(values) if dialect == "postgresql" else json_text(list(values))


@lru_cache(maxsize=128)
def _insert_sql(
    mark: str, table: str, columns: tuple[str, ...], returning: tuple[str, ...], rows: int
) -> str:
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    # names come from syncd's own table definitions, never from input; values are bound
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
    sql = head + ", ".join([one] * rows)
    return f"{sql} RETURNING {', '.join(returning)}" if returning else sql


async def insert_values(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """``INSERT INTO table (columns) VALUES …`` of ``rows`` (Python values, as
    ``conn.execute(insert(table), …)`` takes them); the ``returning`` columns of the new
    rows, in no particular order."""
    if not rows:
        return []
    processors = bind_processors(conn.dialect, table, columns)
    mark = placeholder(conn)
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
        sql = _insert_sql(mark, table.name, tuple(columns), tuple(returning), len(part))
        result = await conn.exec_driver_sql(sql, values)
        if returning:
            found += [tuple(row) for row in result.all()]
    return found
