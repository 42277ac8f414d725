"""Is the database at the migration head? Answered without importing Alembic.

A running daemon asks this at start and on every ``GET /readyz``; Alembic's machinery
(~9 MiB of RSS) is loaded only when there is something to migrate
(:mod:`syncd.store.migrate`). ``HEAD`` is the newest revision in ``migrations/``;
``tests/test_migrations.py`` fails when a migration is added without moving it.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

HEAD = "0005"


async def current(engine: AsyncEngine) -> frozenset[str]:
    """The revisions the database is at (empty when it was never migrated)."""
    async with engine.connect() as conn:
        return await _current(conn)


async def _current(conn: AsyncConnection) -> frozenset[str]:
    if not await conn.run_sync(lambda sync: sync.dialect.has_table(sync, "alembic_version")):
        return frozenset()
    try:
        rows = await conn.scalars(text("SELECT version_num FROM alembic_version"))
    except DBAPIError:  # dropped between the two statements
        return frozenset()
    return frozenset(rows)


async def at_head(engine: AsyncEngine) -> bool:
    return await current(engine) == {HEAD}
