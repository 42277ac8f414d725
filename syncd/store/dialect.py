"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection


def insert_ignoring(conn: AsyncConnection, model: Any, *unique: str) -> Any:
    """``INSERT … ON CONFLICT (unique…) DO NOTHING`` for the connection's database."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=list(unique))
    return sqlite.insert(model).on_conflict_do_nothing(index_elements=list(unique))


#: Rows per multi-row statement of :func:`insert_new`: 12 columns x 1,000 rows stays under
#: SQLite's 32,766 bound parameters and PostgreSQL's 65,535.
ROWS_PER_STATEMENT = 1000


def bind_processors(dialect: Dialect, table: Table, columns: Sequence[str]) -> list[Any]:
    """Per column, the function turning a Python value into the driver's (None: as is).

    The same functions SQLAlchemy applies, so rows written by :func:`insert_new` are
    stored exactly as ``conn.execute(insert(…))`` would store them.
    """
    return [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]


@lru_cache(maxsize=64)
def _insert_new_sql(
    dialect: str, table: str, columns: tuple[str, ...], unique: tuple[str, ...],
    returning: tuple[str, ...], rows: int,
) -> str:  # fmt: skip
    mark = "?" if dialect == "sqlite" else "%s"
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    # names come from syncd's own table definitions, never from input; values are bound
    values = ", ".join([one] * rows)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} "  # noqa: S608
        f"ON CONFLICT ({', '.join(unique)}) DO NOTHING RETURNING {', '.join(returning)}"
    )


async def insert_new(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    unique: Sequence[str],
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    """``INSERT … ON CONFLICT (unique) DO NOTHING RETURNING …`` of many rows, fast.

    For the event log's bulk writes: the values must already be the driver's (see
    :func:`bind_processors`), and are sent as one flat parameter list per statement of
    up to :data:`ROWS_PER_STATEMENT` rows — no per-value work in SQLAlchemy, one round
    trip to the database thread per statement. The returned rows are the inserted ones.
    """
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start : start + ROWS_PER_STATEMENT]
        sql = _insert_new_sql(
            conn.dialect.name, table.name, tuple(columns), tuple(unique), tuple(returning),
            len(part),
        )  # fmt: skip
        result = await conn.exec_driver_sql(sql, tuple(value for row in part for value in row))
        found += [tuple(r) for r in result]
    return found
