"""Statements sent together (``syncd.store.pipeline``) keep their order, their
transaction and the store's error rules, on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store.links import identity_transaction
from syncd.store.models import Identity, utcnow
from syncd.store.pipeline import pipelined

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
