"""Fixtures: a real SQLite file and a real PostgreSQL database per test, both migrated.

PostgreSQL: ``$SYNCD_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
is the server's admin URL. Once per run a template database is migrated to head; every
test gets its own database cloned from it and dropped afterwards. No shared database is
ever used by name. Without a reachable server the PostgreSQL tests skip with the reason,
unless ``SYNCD_REQUIRE_PG=1`` (set by ``.ci/run``) turns that into a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store import migrate
from syncd.store.engine import create_engine

PG_ADMIN = os.environ.get("SYNCD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("SYNCD_REQUIRE_PG") == "1"
RUN_ID = uuid.uuid4().hex[:8]


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)


def _pg_url(name: str) -> str:
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database for this run; dropped at the end."""
    try:
        admin = _admin()
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL not reachable at {make_url(PG_ADMIN).render_as_string()}: {exc}"
        if REQUIRE_PG:
            pytest.fail(f"SYNCD_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)
    name = f"syncd_test_{RUN_ID}_tpl"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        asyncio.run(_migrate(_pg_url(name)))
        yield name
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated database of its own for one test."""
    name = f"syncd_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _pg_url(name)
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    asyncio.run(_migrate(f"sqlite:///{path}"))
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "syncd.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on a migrated SQLite file and on a migrated PostgreSQL database."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty (unmigrated) database; parametrised by the tests that use it."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("pg_template")  # skip/fail exactly as the other PG tests
    name = f"syncd_test_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _pg_url(name)
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    await engine.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) left checked out"
