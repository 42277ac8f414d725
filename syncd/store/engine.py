"""Engines for both databases: SQLite (aiosqlite, WAL) and PostgreSQL (psycopg 3).

Write transactions that read before they write (a link) ask for
``execution_options(write_lock=True)``: on SQLite they start with ``BEGIN IMMEDIATE`` so
the read and the write see one state; on PostgreSQL the caller takes an advisory lock.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from syncd.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000
#: ``database.durability`` -> SQLite's ``synchronous``. ``full``: the WAL is fsynced at
#: every commit, so a 2xx sent after a commit survives a power loss; ``normal``: only a
#: crash of the process is survived (the last commits may go with the power).
SQLITE_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
#: A pooled PostgreSQL connection idle this long is pinged at checkout (see
#: :func:`_ping_when_idle`).
IDLE_PING_SECONDS = 2.0
_RETURNED_AT = "syncd_returned_at"


def database_url(url: str) -> URL:
    """Map the user-facing ``sqlite:///…`` / ``postgresql://…`` to the async drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError("database.url", f"not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    raise ConfigError("database.url", f"unsupported database {backend!r}: use sqlite or postgresql")


def safe_url(url: str | URL) -> str:
    """The URL without its password, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def json_text(value: Any) -> str:
    """A JSON column's value as text: orjson, or the standard library for what it refuses.

    orjson writes UTF-8 as is (no ``\\uXXXX``), without spaces; it refuses integers beyond
    64 bits, which a webhook body could carry. Both read back the same.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def create_engine(url: str, *, durability: str = "full", **kwargs: Any) -> AsyncEngine:
    """An engine for syncd's database; ``durability`` is ``database.durability`` (SQLite)."""
    target = database_url(url)
    kwargs.setdefault("json_serializer", json_text)
    if target.get_backend_name() == "sqlite":
        if durability not in SQLITE_SYNCHRONOUS:
            raise ConfigError("database.durability", f"must be full or normal, not {durability!r}")
        engine = create_async_engine(target, **kwargs)
        _sqlite_pragmas(engine, SQLITE_SYNCHRONOUS[durability])
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_timeout", 5)
    # psycopg prepares a statement after five uses; PostgreSQL may then keep a generic
    # plan made while a table was empty (a sequential scan) long after it has grown —
    # seen as a 2.7 s de-duplication query in a million-row backfill. Custom plans
    # (planned with the actual parameters) keep the indexes in use.
    kwargs.setdefault(
        "connect_args", {"connect_timeout": 5, "options": "-c plan_cache_mode=force_custom_plan"}
    )
    engine = create_async_engine(target, **kwargs)
    _ping_when_idle(engine, IDLE_PING_SECONDS)
    return engine


def _ping_when_idle(engine: AsyncEngine, after: float) -> None:
    """Check a pooled connection at checkout when it has sat idle ``after`` seconds.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: one more round trip in every
    transaction, a tenth of a webhook batch's round trips on PostgreSQL. A connection
    handed back moments ago is as alive as the last statement it ran; one that idled —
    across a server restart or a dropped link — is pinged, and a dead one is replaced
    before a request meets it. A connection that dies mid-burst fails its statement,
    which SQLAlchemy reports as a disconnect and answers by emptying the pool.
    """

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def returned(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < after:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("the idle connection did not answer a ping") from exc


def _sqlite_pragmas(engine: AsyncEngine, synchronous: str = "FULL") -> None:
    # aiosqlite and sqlite3: imported with a SQLite engine (at start-up), not on PostgreSQL
    from syncd.store import sqlite_driver

    @event.listens_for(engine.sync_engine, "do_connect")
    def one_hop(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        # aiosqlite, one thread hop per statement (syncd.store.sqlite_driver)
        return dialect.dbapi.connect(*cargs, async_creator_fn=sqlite_driver.connect, **cparams)

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event (below) emit BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL + FULL (the default): the WAL is fsynced at each commit, before syncd
        # answers; a group commit pays it once per batch. NORMAL (database.durability =
        # "normal") survives a crash of the process only. See docs/decisions.md.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("write_lock", False)
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        driver = connection.connection.driver_connection
        if isinstance(driver, sqlite_driver.OneHopConnection):
            driver.pend(begin)  # with the transaction's first statement: one hop less
        else:
            connection.exec_driver_sql(begin)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


#: Per SQLite engine: the lock its own write transactions queue on (see :func:`writing`).
_WRITERS: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[None]:
    """Around a write transaction: on SQLite, one at a time per process.

    SQLite has one writer at a time, and a writer that finds the lock taken sleeps in
    SQLite's busy handler (1, 2, 5 … 100 ms steps) instead of waking when it is free.
    Under steady load — webhook batches, the dispatcher's claims and records — those
    sleeps added up to seconds between a GetCourse event and its Salebot callback
    (``bench/latency.py``). Queued on an asyncio lock, the next writer starts the
    moment the last one commits; only another process (a CLI command) still meets the
    busy handler. PostgreSQL needs nothing: row locks and the advisory lock do this.
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    lock = _WRITERS.get(engine.sync_engine)
    if lock is None:
        lock = _WRITERS[engine.sync_engine] = asyncio.Lock()
    async with lock:
        yield
