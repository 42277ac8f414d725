"""Is the database at the migration head? Answered without importing Alembic.

A running daemon asks this at start and on every ``GET /readyz``; Alembic's machinery
(~9 MiB of RSS) is loaded only when there is something to migrate
(:mod:`syncd.store.migrate`). ``HEAD`` is the newest revision in ``migrations/``;
``tests/test_migrations.py`` fails when a migration is added without moving it.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.errors import SchemaNotReady

HEAD = "0008"


async def current(engine: AsyncEngine) -> frozenset[str]:
    """The revisions the database is at (empty when it was never migrated)."""
    async with engine.connect() as conn:
        if not await conn.run_sync(lambda sync: sync.dialect.has_table(sync, "alembic_version")):
            return frozenset()
        try:
            rows = await conn.scalars(text("SELECT version_num FROM alembic_version"))
        except DBAPIError:  # dropped between the two statements
            return frozenset()
        return frozenset(rows)


async def at_head(engine: AsyncEngine) -> bool:
    return await current(engine) == {HEAD}


async def require_head(engine: AsyncEngine) -> None:
    """SchemaNotReady unless the database is at the head (for every user of the store)."""
    if not await at_head(engine):
        raise SchemaNotReady("the database is not at the migration head: run `syncd migrate`")
