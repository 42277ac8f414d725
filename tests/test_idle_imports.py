"""A daemon loads what its own database needs, and no other (idle RSS, docs/performance.md).

Each check runs in a fresh interpreter: what ``syncd run`` imports (as ``cmd_run`` does:
:func:`syncd.memory.lean_imports` first), plus the engine for one database; then the
modules of the other database must not be there (the PostgreSQL dialect package alone
is ~2.5 MiB of RSS on SQLite; aiosqlite and sqlite3 ~1 MiB on PostgreSQL), nor what a
daemon only needs for an outgoing call (httpx, aiohttp: ~8 MiB), nor SQLAlchemy's ORM
(~7.7 MiB), nor uvicorn's command line (~1.8 MiB). Creating the engine needs no server:
the driver is imported, not connected.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
import syncd.cli
assert not any(m.startswith(("sqlalchemy", "uvicorn")) for m in sys.modules), "too early"
from syncd import memory
memory.lean_imports()
import syncd.daemon
from syncd.store.engine import create_engine
engine = create_engine({url!r})
print(json.dumps(sorted(sys.modules)))
"""


def _modules_with(url: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(url=url)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(out.stdout))


def _loaded(modules: set[str], *packages: str) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in packages or m.startswith(packages))


def test_a_sqlite_daemon_does_not_load_postgresql(tmp_path: Path) -> None:
    modules = _modules_with(f"sqlite:///{tmp_path / 'probe.db'}")
    assert "aiosqlite" in modules  # the driver is loaded at start, not at the first query
    assert _loaded(modules, "psycopg", "sqlalchemy.dialects.postgresql") == []


def test_a_postgresql_daemon_does_not_load_sqlite() -> None:
    modules = _modules_with("postgresql://syncd@127.0.0.1:1/none")  # never connected
    assert "psycopg" in modules
    assert _loaded(modules, "aiosqlite", "sqlite3", "sqlalchemy.dialects.sqlite") == []


def test_the_daemon_does_not_load_the_export_poller_or_cli_only_code() -> None:
    """The poller (and its JSON stream parser) is imported when it is switched on."""
    modules = _modules_with("sqlite:///probe.db")
    unwanted = ("ijson", "syncd.poller", "alembic", "tqdm", "syncd.sandbox", "syncd.report")
    assert _loaded(modules, *unwanted) == []


def test_the_daemon_loads_no_outgoing_client_orm_or_server_cli() -> None:
    """httpx and aiohttp come with the first outgoing call (``daemon.Outgoing``); the ORM
    and uvicorn's command line never (``syncd.memory.lean_imports``)."""
    modules = _modules_with("sqlite:///probe.db")
    unwanted = ("httpx", "httpx_aiohttp", "aiohttp", "syncd.clients.http", "sqlalchemy.orm")
    assert _loaded(modules, *unwanted) == []
    assert _loaded(modules, "click", "watchfiles", "uvicorn.main", "uvicorn.supervisors") == []
    assert "sqlalchemy.ext.asyncio.engine" in modules
    assert "uvicorn.server" in modules


def test_lean_packages_are_whole_at_the_first_other_name() -> None:
    """What the lean imports left out is there at its first use, as from the real package."""
    code = """
import sys
from syncd import memory
memory.lean_imports()
import sqlalchemy.ext.asyncio as lean
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
assert "sqlalchemy.orm" not in sys.modules
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
assert "sqlalchemy.orm" in sys.modules
import sqlalchemy.ext.asyncio.engine as engine
assert lean.AsyncEngine is engine.AsyncEngine and lean.create_async_engine is create_async_engine
import uvicorn
assert "uvicorn.main" not in sys.modules
from uvicorn.server import Server
assert uvicorn.Server is Server
assert callable(uvicorn.run) and "click" in sys.modules and uvicorn.Config.__name__ == "Config"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_after_start_up_what_is_alive_is_out_of_the_collectors_rounds() -> None:
    # in a fresh interpreter: a frozen generation here would outlive this test
    probe = (
        "import gc\nfrom syncd.memory import release_freed\n"
        "before = gc.get_freeze_count()\nrelease_freed()\n"
        "print(before, gc.get_freeze_count(), gc.get_threshold()[0])\n"
    )
    output = subprocess.check_output([sys.executable, "-c", probe], text=True)
    before, after, young = map(int, output.split())
    assert before == 0 and after > 1000
    assert young == 10_000  # collected a fourteenth as often as by default
