"""Migrations are code under test: upgrade an empty database, compare with the models,
downgrade to nothing and upgrade again — on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from syncd.store import migrate
from syncd.store.engine import create_engine
from syncd.store.models import Base

BOTH = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


@pytest.mark.parametrize("empty_db_url", BOTH, indirect=True)
async def test_upgrade_matches_models_and_round_trips(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        assert not await migrate.at_head(engine)
        await migrate.upgrade(engine)
        assert await migrate.at_head(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert await conn.run_sync(_tables) == set(Base.metadata.tables)
        await migrate.downgrade(engine, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        assert await migrate.current(engine) == frozenset()
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)  # idempotent
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()
