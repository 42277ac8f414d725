"""Failures a new user meets, each one line naming the cause and the fix, exit 1 — never a
traceback — for ``run``, ``check`` and the other commands alike (issue 15, item 6)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from sqlalchemy import text

from syncd.cli import main
from syncd.store.engine import create_engine
from tests.daemon import GC_KEY, Daemon

ROLE_LINE = (
    "syncd: database.url: PostgreSQL at 127.0.0.1:5432 has no role 'syncd_no_such_role': "
    "create it (createuser syncd_no_such_role) or fix the user in database.url\n"
)
DB_LINE = (
    "syncd: database.url: PostgreSQL at 127.0.0.1:5432 has no database 'syncd_no_such_db': "
    "create it (createdb -h 127.0.0.1 syncd_no_such_db) or fix the name in database.url\n"
)
REFUSED_LINE = (
    "syncd: database.url: nothing accepts connections at 127.0.0.1:1: "
    "start PostgreSQL or fix the host and port in database.url\n"
)
COMMANDS = [
    ("run",),
    ("migrate",),
    ("outbox", "stats"),
    ("identity", "show", "a@school.ru"),
    ("conflicts", "resolve", "1", "--keep"),
    ("identity", "forget", "a@school.ru", "--yes"),
    ("outbox", "show", "1"),
    ("export", "identities", "--format", "csv"),
]


@pytest.fixture
def syncd(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):  # type: ignore[no-untyped-def]
    """``syncd ARGS`` in an empty directory with no config file: (exit, stdout, stderr)."""
    for name in ("SYNCD_CONFIG", "SYNCD_DATABASE__URL", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNCD_HTTP__TOKEN", "t0ken-for-run")

    def run(*args: str, url: str | None = None) -> tuple[int, str, str]:
        if url is not None:
            monkeypatch.setenv("SYNCD_DATABASE__URL", url)
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.mark.parametrize("args", COMMANDS)
@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("postgresql://postgres@127.0.0.1:1/syncd", REFUSED_LINE),
        pytest.param(
            "postgresql://postgres@127.0.0.1:5432/syncd_no_such_db",
            DB_LINE,
            marks=pytest.mark.postgres,
        ),
        pytest.param(
            "postgresql://syncd_no_such_role@127.0.0.1:5432/postgres",
            ROLE_LINE,
            marks=pytest.mark.postgres,
        ),
    ],
    ids=["refused", "unknown-database", "unknown-role"],
)
def test_postgres_failures_are_one_line(syncd, args: tuple[str, ...], url: str, line: str) -> None:  # type: ignore[no-untyped-def]
    assert syncd(*args, url=url) == (1, "", line)


@pytest.mark.parametrize("args", COMMANDS)
def test_a_missing_sqlite_directory_is_one_line(
    syncd, tmp_path: Path, args: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "state" / "syncd"
    code, out, err = syncd(*args, url=f"sqlite:///{folder}/syncd.db")
    assert (code, out) == (1, "")
    assert err == (
        f"syncd: database.url: the directory {folder} does not exist: "
        f"create it (mkdir -p {folder}) or point database.url elsewhere\n"
    )
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "url_line",
    [
        ("postgresql://postgres@127.0.0.1:1/syncd", REFUSED_LINE),
        ("sqlite:///{tmp}/nowhere/syncd.db", "the directory {tmp}/nowhere does not exist"),
    ],
)
def test_check_fails_where_run_would(syncd, tmp_path: Path, url_line: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    url, line = (part.format(tmp=tmp_path) for part in url_line)
    code, out, err = syncd("check", url=url)
    assert (code, err) == (1, "")
    (failed,) = [row for row in out.splitlines() if row.startswith("FAIL")]
    assert failed.startswith("FAIL database: ")
    assert line.removeprefix("syncd: ").strip() in failed


@pytest.mark.parametrize(
    "args",
    [
        ("outbox", "stats"),
        ("outbox", "list"),
        ("events", "list"),
        ("conflicts", "list"),
        ("identity", "show", "a@school.ru"),
        ("identity", "forget", "a@school.ru", "--yes"),
    ],
)
def test_no_command_but_migrate_and_run_creates_a_database(
    syncd, tmp_path: Path, args: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    code, out, err = syncd(*args)  # no config file, no SYNCD_DATABASE__URL: the default
    assert (code, out) == (1, "")
    assert err == (
        "syncd: database.url: syncd.db does not exist: run `syncd migrate` to create it, or "
        "point database.url at the existing database (no config file found in syncd.toml, "
        "/etc/syncd/syncd.toml: database.url is the built-in default)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_check_says_where_it_looked_and_which_defaults(syncd) -> None:  # type: ignore[no-untyped-def]
    _, out, _ = syncd("check")
    assert out.splitlines()[0] == (
        "ok   config: no config file found (looked for --config, $SYNCD_CONFIG, syncd.toml, "
        "/etc/syncd/syncd.toml): built-in defaults and 1 SYNCD_<SECTION>__<KEY> overrides — "
        "database.url=sqlite:///./syncd.db, http on 127.0.0.1:8787, 0 rules"
    )


@pytest.mark.parametrize("args", [("check",), ("outbox", "stats"), ("migrate",), ("run",)])
def test_a_schema_newer_than_the_code_is_refused(syncd, db_url: str, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    async def downgrade_the_code() -> None:  # as if a newer syncd had migrated it
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        finally:
            await engine.dispose()

    asyncio.run(downgrade_the_code())
    code, out, err = syncd(*args, url=db_url)
    assert code == 1
    newer = (
        "the database is at revision 0999, newer than this syncd (it knows up to {head}): run "
        "the newer syncd that migrated it, or restore a backup taken before that upgrade"
    )
    from syncd.store.schema import HEAD

    if args == ("check",):
        assert f"FAIL migrations: {newer.format(head=HEAD)}" in out.splitlines()
    else:
        assert (out, err) == ("", f"syncd: {newer.format(head=HEAD)}\n")


def test_export_to_a_missing_directory_is_one_line(syncd, sqlite_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "missing" / "dir" / "x.csv"
    code, out, err = syncd(
        "export", "identities", "--format", "csv", "--output", str(target), url=sqlite_url
    )
    assert (code, out) == (1, "")
    assert err == (
        f"syncd: --output {target}: the directory {target.parent} does not exist: "
        "create it or choose another path\n"
    )


@pytest.mark.slow
async def test_sigterm_while_an_export_is_not_ready(sqlite_url: str, tmp_path: Path) -> None:
    """The poller waits for GetCourse to build an export (909); SIGTERM then stops syncd
    at once, exit 0, no traceback, and the started export is kept for the next start."""
    from syncd.sandbox import getcourse
    from syncd.sandbox.serve import serve

    state = getcourse.GetCourseState(key=GC_KEY)
    state.ready_after_polls = 10**9  # never ready
    async with serve(getcourse.create_app(state)) as gc_url:
        daemon = Daemon(
            sqlite_url, tmp_path, SYNCD_GETCOURSE__BASE_URL=gc_url, SYNCD_LOG__FORMAT="human"
        )
        await asyncio.to_thread(daemon.start)
        try:
            while not any(export.polls >= 1 for export in state.exports.values()):
                assert daemon.process is not None and daemon.process.poll() is None
                await asyncio.sleep(0.05)  # the first poll comes ~5 s after start
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(daemon.process.wait, 30)
        finally:
            daemon.close()
    logs = daemon.logs()
    assert code == 0, logs
    assert "Traceback" not in logs and "CancelledError" not in logs, logs
    assert "syncd stopped" in logs
    assert "is collected at the next start" in logs
