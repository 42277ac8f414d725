"""syncd's aiosqlite cursor (syncd.store.sqlite_driver): one thread hop per statement,
with the answers, row counts and errors SQLAlchemy got from aiosqlite's own cursor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from syncd.store import sqlite_driver
from syncd.store.engine import create_engine


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
            assert hops == ["_run", "_run", "_run"]  # one hop per statement
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
