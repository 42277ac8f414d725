"""Acknowledged means on disk: SQLite commits with ``synchronous=FULL`` unless the
operator chose ``database.durability = "normal"`` (issue 13).

Checked on the connections syncd itself opens: through its engine, and inside a real
``syncd run`` process (a ``sitecustomize`` on its PYTHONPATH reports what each
connection it checks out has in force). On PostgreSQL syncd leaves durability to the
server; the tests check that its connections commit synchronously (the server default).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from syncd import config
from syncd.errors import ConfigError
from syncd.store.engine import create_engine
from tests.daemon import TOKEN, Daemon

#: PRAGMA synchronous answers with a number: 1 NORMAL, 2 FULL
SQLITE_LEVEL = {"normal": 1, "full": 2}

OBSERVER = """
import json, os
from sqlalchemy import event
from sqlalchemy.pool import Pool

_LOG = os.environ["SYNCD_TEST_DURABILITY_LOG"]


@event.listens_for(Pool, "checkout")
def _report(dbapi_connection, _record, _proxy):
    kind = "sqlite" if "sqlite" in type(dbapi_connection).__name__.lower() else "postgresql"
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous" if kind == "sqlite" else "SHOW synchronous_commit")
    value = cursor.fetchone()[0]
    cursor.close()
    if kind == "postgresql":
        dbapi_connection.rollback()  # leave no transaction open behind the pool's back
    with open(_LOG, "a") as log:
        log.write(json.dumps({"db": kind, "value": value}) + "\\n")
"""


async def _in_force(url: str, **options: str) -> str | int:
    engine = create_engine(url, **options)
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                value = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
            else:
                value = (await conn.execute(text("SHOW synchronous_commit"))).scalar_one()
    finally:
        await engine.dispose()
    assert isinstance(value, str | int)
    return value


async def test_engine_commits_durably_by_default(db_url: str) -> None:
    value = await _in_force(db_url)
    if db_url.startswith("sqlite"):
        assert value == SQLITE_LEVEL["full"]
    else:
        assert value == "on"


async def test_durability_normal_is_an_explicit_choice(db_url: str) -> None:
    value = await _in_force(db_url, durability="normal")
    if db_url.startswith("sqlite"):
        assert value == SQLITE_LEVEL["normal"]
    else:  # PostgreSQL's durability is the server's: syncd does not weaken it
        assert value == "on"


async def test_unknown_durability_is_refused_by_the_engine(sqlite_url: str) -> None:
    with pytest.raises(ConfigError, match=r"database\.durability"):
        create_engine(sqlite_url, durability="fast")


def test_config_key_defaults_to_full_and_rejects_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./syncd.toml
    empty = tmp_path / "syncd.toml"
    empty.write_text("")
    assert config.load(empty, env={}).settings.database.durability == "full"
    chosen = config.load(empty, env={"SYNCD_DATABASE__DURABILITY": "normal"})
    assert chosen.settings.database.durability == "normal"
    (tmp_path / "fast.toml").write_text('[database]\ndurability = "fast"\n')
    with pytest.raises(ConfigError, match=r"database\.durability"):
        config.load(tmp_path / "fast.toml", env={})
    with pytest.raises(ConfigError, match=r"database\.durability"):
        config.load(empty, env={"SYNCD_DATABASE__DURABILITY": "off"})


@pytest.mark.parametrize("durability", ["default", "normal"])
def test_a_running_daemon_stores_links_with_the_chosen_durability(
    db_url: str, tmp_path: Path, durability: str
) -> None:
    hook = tmp_path / "observer"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OBSERVER)
    log = tmp_path / "durability.jsonl"
    env = {"PYTHONPATH": str(hook), "SYNCD_TEST_DURABILITY_LOG": str(log)}
    if durability != "default":
        env["SYNCD_DATABASE__DURABILITY"] = durability
    daemon = Daemon(db_url, tmp_path, **env)
    try:
        daemon.start()
        answer = httpx.post(
            f"{daemon.base_url}/v1/links",
            params={"token": TOKEN},
            json={"email": "durable@school.ru", "telegram_id": "5150", "client_id": "77"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert daemon.stop() == 0
    finally:
        daemon.close()
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen, "the daemon checked out no connection"
    if db_url.startswith("sqlite"):
        level = SQLITE_LEVEL["normal" if durability == "normal" else "full"]
        assert {(s["db"], s["value"]) for s in seen} == {("sqlite", level)}
    else:
        assert {(s["db"], s["value"]) for s in seen} == {("postgresql", "on")}
