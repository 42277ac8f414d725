"""A daemon loads what its own database needs, and no other (idle RSS, docs/performance.md).

Each check runs in a fresh interpreter: what ``syncd run`` imports, plus the engine for
one database; then the modules of the other database must not be there (the PostgreSQL
dialect package alone is ~2.5 MiB of RSS on SQLite; aiosqlite and sqlite3 ~1 MiB on
PostgreSQL). Creating the engine needs no server: the driver is imported, not connected.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
import syncd.cli, syncd.daemon
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
