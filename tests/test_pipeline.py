"""Statements sent together (``syncd.store.pipeline``) keep their order, their
transaction and the store's error rules, on both databases; so do the writes an
identity transaction defers to its commit."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store.engine import create_engine
from syncd.store.links import identity_transaction
from syncd.store.models import Identity, utcnow
from syncd.store.pipeline import defer, pipelined

# No RETURNING: inside the block nobody may read an answer (SQLAlchemy's own insert of
# one row asks for its id back, and fails there with ResourceClosedError).
INSERT = text(
    "INSERT INTO identities (email, telegram_id, created_at, updated_at) "
    "VALUES (:email, :telegram_id, :now, :now)"
)


async def _emails(engine: AsyncEngine) -> dict[str, int | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(Identity.email, Identity.telegram_id))
        return {email: telegram for email, telegram in rows}


async def test_statements_sent_together_run_in_order(engine: AsyncEngine) -> None:
    now = utcnow()
    async with identity_transaction(engine) as conn:
        async with pipelined(conn):
            await conn.execute(INSERT, {"email": "a@school.ru", "telegram_id": 1, "now": now})
            await conn.execute(
                update(Identity).where(Identity.email == "a@school.ru").values(telegram_id=2)
            )
            await conn.execute(
                update(Identity).where(Identity.telegram_id == 2).values(telegram_id=3)
            )
        # after the block the answers are in: a read sees every statement's effect
        telegram = await conn.scalar(select(Identity.telegram_id))
        assert telegram == 3
    assert await _emails(engine) == {"a@school.ru": 3}


async def test_an_error_in_the_block_is_the_stores_and_writes_nothing(engine: AsyncEngine) -> None:
    now = utcnow()
    row = {"email": "b@school.ru", "telegram_id": 7, "now": now}
    with pytest.raises(IntegrityError):
        async with identity_transaction(engine, lookups=True) as conn, pipelined(conn):
            await conn.execute(INSERT, row)
            await conn.execute(INSERT, {**row, "telegram_id": 8})  # the same email: unique
            await conn.execute(text("UPDATE identities SET gc_user_id = 5"))
    assert await _emails(engine) == {}
    # and the pool's connection is usable again
    async with identity_transaction(engine, lookups=True) as conn:
        await conn.execute(INSERT, row)
    assert await _emails(engine) == {"b@school.ru": 7}


async def test_deferred_writes_run_in_order_with_the_commit(engine: AsyncEngine) -> None:
    now = utcnow()
    order: list[str] = []

    async def write(name: str, statement: object, params: dict[str, object]) -> None:
        order.append(name)
        await conn.execute(statement, params)  # type: ignore[arg-type]

    async with identity_transaction(engine, lookups=True) as conn:
        await conn.execute(INSERT, {"email": "c@school.ru", "telegram_id": 1, "now": now})
        defer(conn, lambda: write("first", SET_TG, {"tg": 2}))
        defer(conn, lambda: write("second", SET_TG, {"tg": 3}))
        # deferred: not run yet, whatever the body does after
        assert order == []
        assert await conn.scalar(select(Identity.telegram_id)) == 1
    assert order == ["first", "second"]
    assert await _emails(engine) == {"c@school.ru": 3}


SET_TG = text("UPDATE identities SET telegram_id = :tg")


async def test_a_failing_deferred_write_rolls_the_whole_transaction_back(
    engine: AsyncEngine, db_url: str
) -> None:
    # One pooled connection, so what follows gets the very connection that failed. On
    # PostgreSQL the failed write made the server skip the COMMIT queued after it; that
    # connection used to go back to the pool inside the aborted transaction, and the next
    # request on it failed with InFailedSqlTransaction.
    single = create_engine(db_url, pool_size=1, max_overflow=0)
    now = utcnow()
    row = {"email": "d@school.ru", "telegram_id": 7, "now": now}
    try:
        with pytest.raises(IntegrityError):
            async with identity_transaction(single, lookups=True) as conn:
                await conn.execute(INSERT, row)
                if conn.dialect.name == "postgresql":
                    # the server cannot answer the failing write before this ends, so the
                    # error comes back with the COMMIT, never earlier (the case that broke)
                    defer(conn, lambda: conn.execute(text("SELECT pg_sleep(0.2)")))
                defer(conn, lambda: conn.execute(INSERT, {**row, "telegram_id": 8}))  # same email
                defer(conn, lambda: conn.execute(text("UPDATE identities SET gc_user_id = 5")))
        assert await _emails(single) == {}
        async with identity_transaction(single, lookups=True) as conn:  # the connection is fine
            defer(conn, lambda: conn.execute(INSERT, row))
        assert await _emails(single) == {"d@school.ru": 7}
    finally:
        await single.dispose()
    assert await _emails(engine) == {"d@school.ru": 7}


async def test_a_body_that_raises_runs_no_deferred_write(engine: AsyncEngine) -> None:
    ran: list[bool] = []

    async def write() -> None:
        ran.append(True)

    with pytest.raises(ZeroDivisionError):
        async with identity_transaction(engine) as conn:
            defer(conn, write)
            1 / 0  # noqa: B018
    assert ran == []


async def test_defer_outside_a_deferring_transaction_refuses(engine: AsyncEngine) -> None:
    """A write deferred where nothing would run it is an error, never a lost write."""

    async def write() -> None:
        raise AssertionError("must not run")

    async with engine.begin() as conn:
        with pytest.raises(RuntimeError, match="would be lost"):
            defer(conn, write)
    async with identity_transaction(engine) as conn:
        pass
    async with engine.connect() as conn:  # the marker does not outlive its transaction
        with pytest.raises(RuntimeError):
            defer(conn, write)
