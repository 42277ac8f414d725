"""Several statements in one round trip to PostgreSQL (psycopg's pipeline mode).

A link batch on PostgreSQL was nine round trips to the server, each one a wake-up of
the server and of syncd: on the two shared cores of a small VM that waiting, not the
work, set the pace. Inside :func:`pipelined` psycopg sends each statement without
waiting for its answer and reads every answer at the end of the block, so the server
runs them back to back. Statements keep their order and their transaction; the first
error is raised at the end of the block, as SQLAlchemy would raise it (the store's
error rules apply).

Only for statements whose results nobody reads: SQLAlchemy looks for rows as soon as a
statement is sent, so a ``SELECT`` or a ``RETURNING`` inside the block would come back
empty, and ``rowcount`` is unknown. On SQLite the block is a no-op (the statements run
in-process; there is no round trip to save).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction

if TYPE_CHECKING:
    import psycopg

#: A write whose result nobody reads, queued by :func:`defer`.
Write = Callable[[], Awaitable[object]]
_DEFERRED = "syncd.deferred_writes"


@asynccontextmanager
async def pipelined(conn: AsyncConnection) -> AsyncIterator[None]:
    """Run the block's statements in one round trip on PostgreSQL (see the module)."""
    if conn.dialect.name != "postgresql":
        yield
        return
    import psycopg  # only PostgreSQL installations get here

    driver = await _driver(conn)
    try:
        async with driver.pipeline():
            yield
    except psycopg.Error as exc:
        raise DBAPIError.instance("(pipelined statements)", None, exc, psycopg.Error) from exc


@asynccontextmanager
async def deferring(conn: AsyncConnection, transaction: AsyncTransaction) -> AsyncIterator[None]:
    """Around a transaction's body: the writes given to :func:`defer` run at its end, and on
    PostgreSQL go in one round trip with the ``COMMIT`` (the commit happens here then;
    the transaction's own block finds it done). On SQLite they are held by syncd's driver
    and go, in order, with the block's COMMIT in one hop to the connection's thread
    (:mod:`syncd.store.sqlite_driver`). Nothing runs if the body raises: the
    transaction rolls back.
    """
    writes: list[Write] = []
    conn.info[_DEFERRED] = writes
    try:
        yield
        del conn.info[_DEFERRED]  # a write deferring another: an error, not a lost write
        if conn.dialect.name != "postgresql" or not writes:
            async with _held(conn):  # SQLite: they go to its thread with the COMMIT
                for write in writes:
                    await write()
            return
        try:
            async with pipelined(conn):
                for write in writes:
                    await write()
                await transaction.commit()  # psycopg sends COMMIT and syncs: one round trip
        except BaseException:
            await _roll_back(conn)
            raise
    finally:
        conn.info.pop(_DEFERRED, None)


@asynccontextmanager
async def _held(conn: AsyncConnection) -> AsyncIterator[None]:
    """SQLite: the block's statements go with the transaction's commit, in one hop to
    the connection's thread (:mod:`syncd.store.sqlite_driver`); a rollback drops them."""
    from syncd.store import sqlite_driver  # SQLite installations only

    driver = await sqlite_driver.under(conn)
    if driver is None:
        yield
        return
    driver.holding = True
    try:
        yield
    except BaseException:
        driver.holding = False
        raise


async def _roll_back(conn: AsyncConnection) -> None:
    """End the server's transaction after a pipelined commit failed.

    A write that fails in the pipeline makes the server skip the ``COMMIT`` queued after
    it: the transaction stays open and aborted. SQLAlchemy counts a failed commit as the
    end of the transaction, so neither the transaction's block nor the pool's reset would
    roll it back, and the next checkout got a connection that refuses every statement
    (``InFailedSqlTransaction``). psycopg's ``rollback`` sends ``ROLLBACK`` only while
    the server reports a transaction, so this is a no-op after a commit that did end it.
    """
    import psycopg  # only PostgreSQL installations get here

    driver = await _driver(conn)
    try:
        await driver.rollback()
    except psycopg.Error:  # a lost connection: SQLAlchemy has invalidated it already
        return


async def _driver(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under ``conn`` (PostgreSQL only)."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection  # type: ignore[return-value]


def defer(conn: AsyncConnection, write: Write) -> None:
    """Run ``write`` at the end of the :func:`deferring` transaction ``conn`` is in, just
    before its commit. Only for writes whose results nobody reads and that nothing later
    in the transaction reads back (see the module on pipelines)."""
    writes = conn.info.get(_DEFERRED)
    if writes is None:
        raise RuntimeError("defer() outside a deferring transaction: the write would be lost")
    writes.append(write)
