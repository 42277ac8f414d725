"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Table, any_, bindparam, cast, func, select
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.store.engine import json_text


def insert_ignoring(conn: AsyncConnection, model: Any, *unique: str) -> Any:
    """``INSERT … ON CONFLICT (unique…) DO NOTHING`` for the connection's database."""
    # each dialect's package is imported by the engine that uses it, not by every process
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(model).on_conflict_do_nothing(index_elements=list(unique))
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(model).on_conflict_do_nothing(index_elements=list(unique))


def in_list(dialect: str, column: Any, name: str) -> ColumnElement[bool]:
    """``column IN (the list bound as name)``; bind it with :func:`list_param`.

    SQLAlchemy's ``in_`` binds each value apart and renders the list into the statement on
    every execution (for the 1,000 user ids of an export chunk, ~2 ms of the event loop's
    time). One parameter — an array on PostgreSQL, a JSON array read by ``json_each`` on
    SQLite — keeps the statement the same whatever the list, so it can be built once and
    its compiled form reused; both databases still search the column's index.
    """
    if dialect == "postgresql":
        return column == any_(cast(bindparam(name), ARRAY(column.type)))  # type: ignore[no-any-return]
    listed = func.json_each(bindparam(name)).table_valued("value")
    return column.in_(select(listed.c.value))  # type: ignore[no-any-return]


def list_param(dialect: str, values: Iterable[Any]) -> Any:
    """The value of an :func:`in_list` parameter."""
    return list(values) if dialect == "postgresql" else json_text(list(values))


#: Rows per multi-row statement of :func:`insert_new`: 12 columns x 1,000 rows stays under
#: SQLite's 32,766 bound parameters and PostgreSQL's 65,535.
ROWS_PER_STATEMENT = 1000


def bind_processors(dialect: Dialect, table: Table, columns: Sequence[str]) -> list[Any]:
    """Per column, the function turning a Python value into the driver's (None: as is).

    The same functions SQLAlchemy applies, so rows written by :func:`insert_new` are
    stored exactly as ``conn.execute(insert(…))`` would store them. Made once per
    table and columns (a webhook batch asks for them on every insert).
    """
    return list(_bind_processors(dialect, table, tuple(columns)))


@lru_cache(maxsize=64)
def _bind_processors(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
    )


def _tail(unique: Sequence[str], returning: Sequence[str], action: str = "DO NOTHING") -> str:
    """``ON CONFLICT (unique) action`` (none without ``unique``), then ``RETURNING …``."""
    conflict = f"ON CONFLICT ({', '.join(unique)}) {action}" if unique else ""
    back = f"RETURNING {', '.join(returning)}" if returning else ""
    return f"{conflict} {back}".strip()


@lru_cache(maxsize=64)
def _insert_new_sql(
    dialect: str, table: str, columns: tuple[str, ...], unique: tuple[str, ...],
    returning: tuple[str, ...], rows: int,
) -> str:  # fmt: skip
    mark = "?" if dialect == "sqlite" else "%s"
    # names come from syncd's own table definitions, never from input; values are bound
    return values_sql(
        f"INSERT INTO {table} ({', '.join(columns)})",
        "(" + ", ".join([mark] * len(columns)) + ")",
        rows,
        _tail(unique, returning),
    )


async def _insert_parts(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    unique: Sequence[str],
    returning: Sequence[str],
) -> AsyncIterator[CursorResult[Any]]:
    """One ``INSERT … ON CONFLICT DO NOTHING`` per :data:`ROWS_PER_STATEMENT` rows."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        part = rows[start : start + ROWS_PER_STATEMENT]
        sql = _insert_new_sql(
            conn.dialect.name, table.name, tuple(columns), tuple(unique), tuple(returning),
            len(part),
        )  # fmt: skip
        yield await conn.exec_driver_sql(sql, tuple(chain.from_iterable(part)))


#: Rows per statement of :func:`execute_values`.
VALUES_ROWS = 100


@lru_cache(maxsize=64)
def values_sql(head: str, one: str, rows: int, tail: str) -> str:
    """``head VALUES one, one, … tail``: ``rows`` rows of placeholders ``one``."""
    return f"{head} VALUES {', '.join([one] * rows)} {tail}"


async def execute_values(
    conn: AsyncConnection, head: str, one: str, rows: Sequence[Sequence[Any]], tail: str
) -> None:
    """``head VALUES one, one, … tail`` with :data:`VALUES_ROWS` rows a statement.

    ``one`` is a row's placeholders (``(?, CAST(? AS NUMERIC), …)``) and the rows are the
    driver's values. For SQLite's bulk upserts, where a statement of many rows costs
    SQLite half the time per row of one row each. The statements have two sizes only,
    :data:`VALUES_ROWS` rows (sent by one ``executemany``) and one row (the rest, another
    ``executemany``): two hops to the database thread, and nothing new to compile or to
    cache — every size would be a statement of its own in the driver's cache, 1.4 MiB
    for one of 1,000 upsert rows, compiled in 10 ms.
    """
    full = len(rows) - len(rows) % VALUES_ROWS
    if full:
        await conn.exec_driver_sql(
            values_sql(head, one, VALUES_ROWS, tail),
            [
                tuple(chain.from_iterable(rows[i : i + VALUES_ROWS]))
                for i in range(0, full, VALUES_ROWS)
            ],
        )
    if full < len(rows):
        await conn.exec_driver_sql(
            values_sql(head, one, 1, tail), [tuple(row) for row in rows[full:]]
        )


#: From this many rows on, PostgreSQL gets them by ``COPY`` (see :func:`_copy_insert`).
COPY_FROM_ROWS = 64


@lru_cache(maxsize=32)
def _copy_sql(
    table: str, columns: tuple[str, ...], unique: tuple[str, ...], returning: tuple[str, ...],
    action: str = "DO NOTHING",
) -> tuple[str, str, str, str]:  # fmt: skip
    """The staging table's DDL, its COPY, the INSERT from it and its clean-up."""
    staging = f"syncd_copy_{table}"
    names = ", ".join(columns)
    # names come from syncd's own table definitions, never from input; values are copied
    create = (
        f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "  # noqa: S608
        f"SELECT {names} FROM {table} WITH NO DATA"
    )
    insert = (
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging} "  # noqa: S608
        + _tail(unique, returning, action)
    )
    clear = f"DELETE FROM {staging}"  # noqa: S608
    return create, f"COPY {staging} ({names}) FROM STDIN", insert, clear


async def _copy_insert(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    unique: Sequence[str],
    returning: Sequence[str],
    action: str = "DO NOTHING",
) -> tuple[list[tuple[Any, ...]], int]:
    """PostgreSQL: ``COPY`` the rows into a session's temporary table, then one
    ``INSERT … SELECT … ON CONFLICT (unique) action`` (``DO NOTHING`` unless told);
    returns (rows back, rows inserted or updated).

    A multi-row ``VALUES`` of 1,000 rows is a 15,000-placeholder statement that psycopg
    parses anew on every execution (it caches only short ones): two thirds of a
    backfill's CPU. ``COPY`` sends the values in psycopg's C row format with no parsing,
    and the statements around it are short. Same transaction, same conflict rule.
    """
    statements = _copy_sql(table.name, tuple(columns), tuple(unique), tuple(returning), action)
    return await _through_staging(conn, statements, rows, bool(returning))


async def _through_staging(
    conn: AsyncConnection,
    statements: tuple[str, str, str, str],
    rows: Iterable[Sequence[Any]],
    returning: bool,
    types: Sequence[str] | None = None,
) -> tuple[list[tuple[Any, ...]], int]:
    """Run a staging table's (create, copy, insert, clear) on the driver: the rows go by
    the ``COPY`` (in binary with ``types``); returns (rows back, rows inserted or
    updated). A driver error is raised as SQLAlchemy raises it, so the store's error
    translation applies."""
    import psycopg  # only PostgreSQL installations get here

    create, copy_sql, insert, clear = statements
    raw = await conn.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    statement = create
    try:
        async with driver.cursor() as cursor:
            await cursor.execute(create)
            statement = copy_sql
            async with cursor.copy(copy_sql) as copy:
                if types is not None:
                    copy.set_types(list(types))
                for row in rows:
                    await copy.write_row(row)
            statement = insert
            await cursor.execute(insert)
            found = [tuple(row) for row in await cursor.fetchall()] if returning else []
            count = cursor.rowcount
            statement = clear
            await cursor.execute(clear)
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
    return found, count


@lru_cache(maxsize=64)
def _array_types(dialect: Dialect, table: Table, columns: tuple[str, ...]) -> tuple[str, ...]:
    """Each column's type as PostgreSQL spells it, for ``%b::type[]`` parameters.

    ``%b``: psycopg sends the array in binary. In text form it quotes and escapes every
    string element with a regular expression — four times the CPU of the binary form
    for a 32-row, 5-column insert (769 against 168 µs).
    """
    return tuple(table.c[name].type.compile(dialect=dialect) for name in columns)


@lru_cache(maxsize=32)
def _unnest_sql(
    table: str, columns: tuple[str, ...], types: tuple[str, ...], unique: tuple[str, ...],
    returning: tuple[str, ...],
) -> str:  # fmt: skip
    arrays = ", ".join(f"%b::{type_}[]" for type_ in types)
    # names and types come from syncd's own table definitions, never from input
    head = f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"  # noqa: S608
    return f"{head} {_tail(unique, returning)}".strip()


async def insert_arrays(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    arrays: Sequence[list[Any]],
    unique: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> tuple[list[tuple[Any, ...]], int]:
    """PostgreSQL: ``INSERT … SELECT * FROM unnest(%b::type[], …)`` of one array of driver
    values per column (``ON CONFLICT (unique) DO NOTHING`` when ``unique`` is given);
    returns (rows back, rows inserted).

    For a webhook's tens of rows: psycopg parses the placeholders of a statement with
    more than 50 parameters anew on every execution (a 32-event ``VALUES`` has 480) and
    sends each ``executemany`` row as its own execution; an array per column keeps the
    statement short, its parsing cached and the send single.
    """
    types = _array_types(conn.dialect, table, tuple(columns))
    sql = _unnest_sql(table.name, tuple(columns), types, tuple(unique), tuple(returning))
    result = await conn.exec_driver_sql(sql, tuple(arrays))
    return ([tuple(row) for row in result.all()] if returning else []), result.rowcount


async def _unnest_insert(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    unique: Sequence[str],
    returning: Sequence[str],
) -> tuple[list[tuple[Any, ...]], int]:
    """:func:`insert_arrays` of ``rows`` (driver values), conflicts on ``unique`` skipped."""
    arrays = [list(column) for column in zip(*rows, strict=True)]
    return await insert_arrays(conn, table, columns, arrays, unique, returning)


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
    trip to the database thread per statement; on PostgreSQL as one array per column
    (:func:`_unnest_insert`), and from :data:`COPY_FROM_ROWS` rows on by ``COPY``
    (:func:`_copy_insert`). The returned rows are the inserted ones.
    """
    if conn.dialect.name == "postgresql":
        if len(rows) >= COPY_FROM_ROWS:
            return (await _copy_insert(conn, table, columns, rows, unique, returning))[0]
        return (await _unnest_insert(conn, table, columns, rows, unique, returning))[0]
    found: list[Any] = []
    async for result in _insert_parts(conn, table, columns, rows, unique, returning):
        found += result.all()
    return found


async def insert_counted(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    unique: Sequence[str],
) -> int:
    """:func:`insert_new` returning only how many rows were inserted (no row back)."""
    if conn.dialect.name == "postgresql":
        if len(rows) >= COPY_FROM_ROWS:
            return await copy_binary(conn, table, columns, rows, unique)
        return (await _unnest_insert(conn, table, columns, rows, unique, ()))[1]
    count = 0
    async for result in _insert_parts(conn, table, columns, rows, unique, ()):
        count += result.rowcount
    return count


async def merge_many(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    unique: Sequence[str],
    update: str,
) -> None:
    """PostgreSQL: ``INSERT … ON CONFLICT (unique) DO UPDATE SET update`` of many rows.

    By :func:`copy_binary` (``COPY`` into the staging table, then one ``INSERT …
    SELECT``). The rows must already be the driver's values and name each key once: a
    ``DO UPDATE`` may not touch a row twice in one statement. ``update`` names the
    proposed row ``excluded``, as in any upsert.
    """
    if conn.dialect.name != "postgresql":
        raise NotImplementedError("merge_many: PostgreSQL only")
    await copy_binary(conn, table, columns, rows, unique, f"DO UPDATE SET {update}")


#: How each column type travels in :func:`copy_binary`: (the staging column's type, the
#: type psycopg dumps the value as). Text-like values go as text: the server's ``json`` and
#: ``varchar(n)`` take text in binary form (and check it as before: JSON syntax, the length).
#: Amounts are the canonical text of :func:`syncd.events.money`: staged as text and cast in
#: the ``INSERT … SELECT``, the same conversion a text ``COPY`` makes.
_BINARY = {
    "TEXT": (None, "text"), "JSON": (None, "text"), "BIGINT": (None, "int8"),
    "INTEGER": (None, "int4"), "SMALLINT": (None, "int2"), "BOOLEAN": (None, "bool"),
    "TIMESTAMP WITH TIME ZONE": (None, "timestamptz"), "NUMERIC": ("TEXT", "text"),
}  # fmt: skip


@lru_cache(maxsize=32)
def _binary_copy_sql(
    dialect: Dialect, table: Table, columns: tuple[str, ...], unique: tuple[str, ...],
    action: str,
) -> tuple[tuple[str, str, str, str], tuple[str, ...], tuple[int, ...]] | None:  # fmt: skip
    """:func:`_copy_sql` for a binary ``COPY``, with the dump types and the positions of
    the JSON columns; None when a column's type has no binary way here."""
    types = _array_types(dialect, table, columns)
    staged, dumped, selected = [], [], []
    for name, type_ in zip(columns, types, strict=True):
        way = _BINARY.get("TEXT" if type_.startswith("VARCHAR") else type_)
        if way is None:
            return None
        staged.append(f"{name} {way[0] or type_}")
        dumped.append(way[1])
        selected.append(f"CAST({name} AS {type_})" if way[0] else name)
    staging = f"syncd_bcopy_{table.name}"
    # names and types come from syncd's own table definitions, never from input
    create = (
        f"CREATE TEMP TABLE IF NOT EXISTS {staging} ({', '.join(staged)}) ON COMMIT DELETE ROWS"
    )
    copy = f"COPY {staging} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    insert = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608
        f"SELECT {', '.join(selected)} FROM {staging} " + _tail(unique, (), action)
    )
    clear = f"DELETE FROM {staging}"  # noqa: S608
    json_at = tuple(i for i, type_ in enumerate(types) if type_ == "JSON")
    return (create, copy, insert, clear), tuple(dumped), json_at


async def copy_binary(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    unique: Sequence[str],
    action: str = "DO NOTHING",
) -> int:
    """:func:`_copy_insert` (no rows back) with the values sent in binary; rows inserted
    or updated.

    psycopg's text ``COPY`` formats each value through its Python-level dumpers: for an
    event row (15 columns, a JSON ``data`` of ~350 characters) 16-23 µs of CPU, against
    2.6-2.8 µs in binary with the column types given (an export of 1,000,000 rows writes
    1,670,000 events and 1,000,000 deals: 3-4 CPU seconds per 100,000 rows before). The
    rows are the driver's values as for :func:`_copy_insert`; a JSON column's
    ``psycopg.types.json.Json`` values are serialized once per object (an export row's
    events share theirs) by the engine's serializer, as the text form does.
    """
    found = _binary_copy_sql(conn.dialect, table, tuple(columns), tuple(unique), action)
    if found is None:
        return (await _copy_insert(conn, table, columns, rows, unique, (), action))[1]
    statements, dumped, json_at = found
    if json_at:
        rows = _json_as_text(rows, json_at, getattr(conn.dialect, "_json_serializer", None))
    return (await _through_staging(conn, statements, rows, False, dumped))[1]


def _json_as_text(
    rows: Sequence[Sequence[Any]], json_at: tuple[int, ...], serializer: Any
) -> list[Sequence[Any]]:
    """``rows`` with their JSON columns' ``Json`` wrappers as text, each object once."""
    dumps = serializer or json_text
    texts: dict[int, tuple[Any, str]] = {}  # id(wrapper) -> (wrapper, text): kept alive
    out: list[Sequence[Any]] = []
    for row in rows:
        row = list(row)
        for i in json_at:
            value = row[i]
            if value is None or isinstance(value, str):
                continue
            hit = texts.get(id(value))
            if hit is None:
                obj = getattr(value, "obj", value)
                hit = texts[id(value)] = (value, (getattr(value, "dumps", None) or dumps)(obj))
            row[i] = hit[1]
        out.append(row)
    return out
