"""aiosqlite with one thread hop per statement instead of four.

aiosqlite runs each sqlite3 call on its connection's own thread; SQLAlchemy's adapter
makes four such calls per statement (make a cursor, execute, fetch all, close). Every
hop is a queue put, a wake-up of that thread, and a wake-up of the event loop through
its self-pipe, all paid on the event loop's thread: in ``bench/ingest.py`` the hops
were a fifth of the event loop's busy time. :class:`OneHopCursor` runs the whole
statement — cursor, execute, fetch, close — as one call on the connection's thread, and
answers ``fetchall`` and ``close`` from what that call brought back.

Only the cursor changes: the connection, its thread, transactions, errors (sqlite3's,
raised from the call as before) and SQLAlchemy's translation of them stay aiosqlite's.
Results are read whole, which is what SQLAlchemy's adapter already did for every
non-streaming cursor; syncd streams no SQLite result.

Statements nobody reads go with the next hop (:meth:`OneHopConnection.pend`,
:meth:`OneHopConnection.holding`): a transaction's ``BEGIN`` goes with its first
statement, and the writes a link batch defers to its end (``syncd.store.pipeline``)
with its ``COMMIT``; the pool's rollback of a connection it takes back makes no hop when
nothing ran since the last commit. A link batch was nine hops; it is three. A held statement that
fails raises from the statement or the commit it went with, and a failed commit rolls
the transaction back before it raises, so the connection is never left in an open,
half-written transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["OneHopConnection", "OneHopCursor", "connect", "run", "under"]

#: What one statement brings back: description, rows, rowcount, lastrowid.
_Outcome = tuple[Any, list[Any], int, int | None]


#: A statement held for the next hop: sql, parameters, executemany or not.
_Held = tuple[str, Any, bool]


def _run_after(
    raw: sqlite3.Connection, held: list[_Held], sql: str, parameters: Any, many: bool
) -> _Outcome:
    for statement in held:
        _run(raw, *statement)
    return _run(raw, sql, parameters, many)


def _commit_after(raw: sqlite3.Connection, held: list[_Held]) -> None:
    try:
        for statement in held:
            _run(raw, *statement)
    except BaseException:
        if raw.in_transaction:
            raw.rollback()
        raise
    raw.commit()


def _run(raw: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> _Outcome:
    cursor = raw.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor:
    """The part of aiosqlite's cursor SQLAlchemy's adapter uses, one hop per statement."""

    arraysize = 1

    def __init__(self, connection: OneHopConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> OneHopCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _call(self, sql: str, parameters: Any, many: bool) -> OneHopCursor:
        connection = self._connection
        if connection.holding:  # nobody reads it: it goes with the next hop
            connection.pend(sql, parameters, many)
            self.description, self._rows, self.rowcount, self.lastrowid = None, [], -1, None
            return self
        raw = connection._conn  # aiosqlite's sqlite3 connection (its thread only)
        held, connection._held = connection._held, []
        if held:
            outcome: _Outcome = await connection._execute(
                _run_after, raw, held, sql, parameters, many
            )
        else:
            outcome = await connection._execute(_run, raw, sql, parameters, many)
        self.description, self._rows, self.rowcount, self.lastrowid = outcome
        return self

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> OneHopCursor:
        return await self._call(sql, () if parameters is None else parameters, many=False)

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> OneHopCursor:
        return await self._call(sql, list(parameters), many=True)

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        rows, self._rows = self._rows[:count], self._rows[count:]
        return rows

    async def close(self) -> None:
        self._rows = []


class OneHopConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors run each statement in one hop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: list[_Held] = []
        self._sent = True  # until a commit or rollback says otherwise
        #: while True, cursors hold their statements for the commit (see the module)
        self.holding = False

    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    def pend(self, sql: str, parameters: Any = (), many: bool = False) -> None:
        """Run ``sql`` first in the next hop: with the next statement, or the commit."""
        self._held.append((sql, parameters, many))

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._sent = True  # whatever runs on the thread may open a transaction
        return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    async def commit(self) -> None:
        self.holding = False
        held, self._held = self._held, []
        if held:
            await self._execute(_commit_after, self._conn, held)
        else:
            await super().commit()
        self._sent = False

    async def rollback(self) -> None:
        self.holding = False
        self._held = []  # never sent: nothing of them to undo
        if not self._sent:  # nothing ran since the last commit or rollback: no transaction
            return  # (the pool rolls back every connection it takes back: a hop each)
        await super().rollback()
        self._sent = False


async def under(conn: AsyncConnection) -> OneHopConnection | None:
    """syncd's driver connection under ``conn`` (None under another driver), looked up
    once and kept with the pooled connection it belongs to."""
    driver = conn.info.get(_DRIVER)
    if driver is None:
        driver = conn.info[_DRIVER] = (await conn.get_raw_connection()).driver_connection
    return driver if isinstance(driver, OneHopConnection) else None


_DRIVER = "syncd.sqlite_driver"


async def run(driver: OneHopConnection, sql: str, parameters: Any, many: bool = False) -> list[Any]:
    """One statement on ``driver`` without SQLAlchemy's execution context: its rows
    (none while the connection is holding). sqlite3's errors become SQLAlchemy's, as
    ``exec_driver_sql`` raises them."""
    from sqlalchemy.exc import DBAPIError

    cursor = driver.cursor()
    try:
        await cursor._call(sql, parameters, many)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, parameters, exc, sqlite3.Error) from exc
    return cursor._rows


def connect(database: str | bytes, **kwargs: Any) -> OneHopConnection:
    """:func:`aiosqlite.connect`, returning a :class:`OneHopConnection`."""

    def connector() -> sqlite3.Connection:
        location = database.decode() if isinstance(database, bytes) else str(database)
        connection: sqlite3.Connection = sqlite3.connect(location, **kwargs)
        return connection

    connection = OneHopConnection(connector, 64)
    connection._thread.daemon = True  # as SQLAlchemy's dialect does for aiosqlite's own
    return connection
