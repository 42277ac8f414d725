"""syncd's aiosqlite cursor (syncd.store.sqlite_driver): one thread hop per statement,
with the answers, row counts and errors SQLAlchemy got from aiosqlite's own cursor; a
transaction's BEGIN with its first statement, deferred writes with its COMMIT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from syncd.store import sqlite_driver
from syncd.store.engine import create_engine
from syncd.store.pipeline import defer, deferring


async def test_statements_answer_as_before_in_one_hop_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[str] = []
    execute = sqlite_driver.OneHopConnection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(sqlite_driver.OneHopConnection, "_execute", counted)
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
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT UNIQUE)"))
            await conn.execute(text("INSERT INTO t VALUES ('a')"))
        with pytest.raises(IntegrityError, match="UNIQUE"):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('b')"))
                await conn.execute(text("INSERT INTO t VALUES ('a')"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["a"]
    finally:
        await engine.dispose()


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


async def test_deferred_writes_go_with_the_commit_in_one_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT UNIQUE)"))
        hops = counting_hops(monkeypatch)
        async with (
            engine.connect() as conn,
            conn.begin() as transaction,
            deferring(conn, transaction),
        ):
            await conn.execute(text("INSERT INTO t VALUES ('a')"))
            for v in "bcd":
                defer(conn, lambda v=v: conn.execute(text(f"INSERT INTO t VALUES ('{v}')")))
        assert hops == ["_run_after", "_commit_after"]  # BEGIN + 'a'; b, c, d + COMMIT
        assert await values(engine) == ["a", "b", "c", "d"]
    finally:
        await engine.dispose()


async def test_a_deferred_write_that_fails_at_commit_undoes_the_whole_transaction(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT UNIQUE)"))
            await conn.execute(text("INSERT INTO t VALUES ('a')"))
        with pytest.raises(IntegrityError, match="UNIQUE"):
            async with (
                engine.connect() as conn,
                conn.begin() as transaction,
                deferring(conn, transaction),
            ):
                await conn.execute(text("INSERT INTO t VALUES ('b')"))
                defer(conn, lambda: conn.execute(text("INSERT INTO t VALUES ('c')")))
                defer(conn, lambda: conn.execute(text("INSERT INTO t VALUES ('a')")))
        assert await values(engine) == ["a"]  # neither 'b' (sent) nor 'c' (held) stayed
        async with engine.begin() as conn:  # the connection is not left in a transaction
            await conn.execute(text("INSERT INTO t VALUES ('e')"))
        assert await values(engine) == ["a", "e"]
    finally:
        await engine.dispose()


async def test_held_writes_of_a_transaction_that_rolls_back_are_never_sent(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")

    async def broken() -> None:
        raise RuntimeError("a write that fails before it reaches the database")

    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT UNIQUE)"))
        with pytest.raises(RuntimeError, match="fails before"):
            async with (
                engine.connect() as conn,
                conn.begin() as transaction,
                deferring(conn, transaction),
            ):
                await conn.execute(text("INSERT INTO t VALUES ('a')"))
                defer(conn, lambda: conn.execute(text("INSERT INTO t VALUES ('b')")))
                defer(conn, broken)
        assert await values(engine) == []
        async with engine.begin() as conn:  # nothing held is left for the next one
            await conn.execute(text("INSERT INTO t VALUES ('c')"))
        assert await values(engine) == ["c"]
    finally:
        await engine.dispose()


async def test_driver_sql_answers_and_fails_as_exec_driver_sql_in_one_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd.store.rows import driver_sql

    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT UNIQUE)"))
        hops = counting_hops(monkeypatch)
        async with engine.begin() as conn:
            rows = await driver_sql(conn, "INSERT INTO t VALUES (?), (?) RETURNING v", ("a", "b"))
            assert sorted(rows) == [("a",), ("b",)]
            assert (
                await driver_sql(conn, "INSERT INTO t VALUES (?)", [("c",), ("d",)], many=True)
                == []
            )
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
    finally:
        await engine.dispose()
