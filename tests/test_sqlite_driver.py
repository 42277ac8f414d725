"""syncd's aiosqlite cursor (syncd.store.sqlite_driver): one thread hop per statement,
with the answers, row counts and errors SQLAlchemy got from aiosqlite's own cursor; a
transaction's BEGIN with its first statement, deferred writes with its COMMIT."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncd.store import sqlite_driver
from syncd.store.engine import create_engine
from syncd.store.pipeline import defer, deferring
from syncd.store.rows import driver_sql


def counting_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hops: list[str] = []
    execute = sqlite_driver.OneHopConnection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(sqlite_driver.OneHopConnection, "_execute", counted)
    return hops


async def values(engine: Any) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all())


@asynccontextmanager
async def table_t(tmp_path: Path, *stored: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh file with ``t (v TEXT UNIQUE)`` holding ``stored``."""
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT UNIQUE)"))
            for v in stored:
                await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": v})
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def deferred(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction whose ``defer``red writes go with its commit, as a link batch's do."""
    async with (
        engine.connect() as conn,
        conn.begin() as transaction,
        deferring(conn, transaction),
    ):
        yield conn


async def test_statements_answer_as_before_in_one_hop_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops = counting_hops(monkeypatch)
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
        async with engine.begin() as conn:
            hops.clear()
            returned = await conn.execute(
                text("INSERT INTO t (v) VALUES ('a'), ('b'), ('c') RETURNING id, v")
            )
            assert sorted(returned.all()) == [(1, "a"), (2, "b"), (3, "c")]
            changed = await conn.execute(
                text("UPDATE t SET v = v || '!' WHERE id = :id"), [{"id": 1}, {"id": 3}]
            )
            assert changed.rowcount == 2  # executemany: the rows of every parameter set
            one = await conn.execute(text("INSERT INTO t (v) VALUES ('d')"))
            assert one.lastrowid == 4
            # one hop per statement, BEGIN with the first
            assert hops == ["_run_after", "_run", "_run"]
        assert hops[3:] == ["commit"]
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all()
            assert rows == ["a!", "b", "c!", "d"]
            assert (await conn.execute(text("SELECT v FROM t WHERE 0"))).all() == []
    finally:
        await engine.dispose()


async def test_a_constraint_error_is_sqlalchemys_and_rolls_the_transaction_back(
    tmp_path: Path,
) -> None:
    async with table_t(tmp_path, "a") as engine:
        with pytest.raises(IntegrityError, match="UNIQUE"):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('b')"))
                await conn.execute(text("INSERT INTO t VALUES ('a')"))
        assert await values(engine) == ["a"]


async def test_deferred_writes_go_with_the_commit_in_one_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with table_t(tmp_path) as engine:
        hops = counting_hops(monkeypatch)
        async with deferred(engine) as conn:
            await conn.execute(text("INSERT INTO t VALUES ('a')"))
            for v in "bcd":
                defer(conn, lambda v=v: conn.execute(text(f"INSERT INTO t VALUES ('{v}')")))
        assert hops == ["_run_after", "_commit_after"]  # BEGIN + 'a'; b, c, d + COMMIT
        assert await values(engine) == ["a", "b", "c", "d"]


async def _broken() -> None:
    raise RuntimeError("a write that fails before it reaches the database")


@pytest.mark.parametrize(
    ("stored", "last", "error"),
    [
        (("a",), lambda conn: conn.execute(text("INSERT INTO t VALUES ('a')")), IntegrityError),
        ((), lambda _conn: _broken(), RuntimeError),
    ],
    ids=["fails at the commit", "fails before it is sent"],
)
async def test_a_deferred_write_that_fails_undoes_the_whole_transaction(
    tmp_path: Path, stored: tuple[str, ...], last: Any, error: type[Exception]
) -> None:
    async with table_t(tmp_path, *stored) as engine:
        with pytest.raises(error):
            async with deferred(engine) as conn:
                await conn.execute(text("INSERT INTO t VALUES ('b')"))
                defer(conn, lambda: conn.execute(text("INSERT INTO t VALUES ('c')")))
                defer(conn, lambda: last(conn))
        assert await values(engine) == list(stored)  # neither 'b' (sent) nor 'c' (held)
        async with engine.begin() as conn:  # no transaction left open, nothing left held
            await conn.execute(text("INSERT INTO t VALUES ('e')"))
        assert await values(engine) == [*stored, "e"]


async def test_driver_sql_answers_and_fails_as_exec_driver_sql_in_one_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with table_t(tmp_path) as engine:
        hops = counting_hops(monkeypatch)
        async with engine.begin() as conn:
            rows = await driver_sql(conn, "INSERT INTO t VALUES (?), (?) RETURNING v", ("a", "b"))
            assert sorted(rows) == [("a",), ("b",)]
            many = [("c",), ("d",)]
            assert await driver_sql(conn, "INSERT INTO t VALUES (?)", many, many=True) == []
        assert hops == ["_run_after", "_run", "commit"]  # no SQLAlchemy cursor in between
        with pytest.raises(IntegrityError, match="UNIQUE"):  # SQLAlchemy's, as before
            async with engine.begin() as conn:
                await driver_sql(conn, "INSERT INTO t VALUES (?)", ("e",))
                await driver_sql(conn, "INSERT INTO t VALUES (?)", ("a",))
        assert await values(engine) == ["a", "b", "c", "d"]  # 'e' went with the rollback
        async with engine.connect() as conn:  # outside a transaction: SQLAlchemy begins one
            await driver_sql(conn, "INSERT INTO t VALUES (?)", ("f",))
            await conn.rollback()
        assert await values(engine) == ["a", "b", "c", "d"]
