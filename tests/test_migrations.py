"""Migrations are code under test: upgrade an empty database, compare with the models,
downgrade to nothing and upgrade again — on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from syncd.store import migrate, schema
from syncd.store.engine import create_engine
from syncd.store.models import Base

BOTH = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


#: Foreign keys of the models that PostgreSQL keeps by statement triggers instead
#: (migration 0008; their guarantee: tests/test_identity_references.py).
BY_TRIGGERS = {"fk_events_identity_id_identities", "fk_analytics_deals_identity_id_identities"}


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    found = list(compare_metadata(context, Base.metadata))
    if connection.dialect.name == "postgresql":
        found = [d for d in found if not (d[0] == "add_fk" and d[1].name in BY_TRIGGERS)]
    return found


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


@pytest.mark.parametrize("empty_db_url", BOTH, indirect=True)
async def test_upgrade_matches_models_and_round_trips(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        assert await migrate.current(engine) != migrate.heads()
        assert await schema.current(engine) == frozenset()  # not even alembic_version
        await migrate.upgrade(engine)
        assert await migrate.current(engine) == migrate.heads()
        assert await schema.at_head(engine)  # the daemon's Alembic-free check agrees
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            assert await conn.run_sync(_tables) == set(Base.metadata.tables)
        await migrate.downgrade(engine, "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        assert await migrate.current(engine) == frozenset()
        assert not await schema.at_head(engine)
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)  # idempotent
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


def test_the_daemons_head_is_the_newest_migration() -> None:
    """A new migration must move ``schema.HEAD``, or daemons would re-run Alembic."""
    assert migrate.heads() == {schema.HEAD}


def test_a_running_daemon_does_not_load_alembic(tmp_path: Path) -> None:
    """At start on a migrated database, and at /readyz, Alembic stays unloaded (~9 MiB)."""
    url = f"sqlite:///{tmp_path / 'probe.db'}"
    syncd = str(Path(sys.executable).with_name("syncd"))
    env = {**os.environ, "SYNCD_DATABASE__URL": url}
    subprocess.run([syncd, "migrate"], env=env, capture_output=True, check=True, timeout=60)
    probe = f"""
import asyncio, sys
from syncd.daemon import prepare_schema
from syncd.store import schema
from syncd.store.engine import create_engine
async def main():
    engine = create_engine({url!r})
    await prepare_schema(engine, auto_migrate=True)
    assert await schema.at_head(engine)
    await engine.dispose()
asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("alembic")))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
