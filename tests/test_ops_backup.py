"""``syncd backup --output F`` (issue 12, item 4): an online, consistent SQLite copy of a
daemon under load that restores every acknowledged link; PostgreSQL gets the pg_dump
command; no surprise overwrites."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from syncd import backup
from syncd.cli import main
from tests.daemon import SYNCD, TOKEN, Daemon


class Poster:
    """Posts links until stopped; remembers which were acknowledged (200) and when."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.acked: list[tuple[float, str]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self.stopped.is_set():
                n += 1
                email = f"p{n}@school.ru"
                answer = http.post(
                    f"{self.base_url}/v1/links",
                    json={"email": email, "telegram_id": n},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                if answer.status_code == 200:
                    self.acked.append((time.monotonic(), email))

    def wait_for(self, count: int) -> None:
        while len(self.acked) < count:
            assert self.thread.is_alive()
            time.sleep(0.01)


def test_a_backup_under_load_restores_every_acknowledged_link(
    sqlite_url: str, tmp_path: Path
) -> None:
    daemon = Daemon(sqlite_url, tmp_path).start()
    poster = Poster(daemon.base_url)
    poster.thread.start()
    copy = tmp_path / "backups" / "syncd-copy.db"
    copy.parent.mkdir()
    try:
        poster.wait_for(30)
        began = time.monotonic()
        done = daemon.cli("backup", "--output", str(copy))
        assert done.returncode == 0, done.stderr
        after = len(poster.acked)
        poster.wait_for(after + 10)  # the daemon kept writing through it, and after
    finally:
        poster.stopped.set()
        poster.thread.join(30)
        assert daemon.stop() == 0
    assert f"{copy} (" in done.stdout and "integrity ok" in done.stdout
    before = {email for at, email in poster.acked if at < began}
    assert len(before) >= 30
    # the copy is a normal, self-contained syncd SQLite file: open it
    assert not Path(f"{copy}-wal").exists()
    with sqlite3.connect(copy) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {email for (email,) in conn.execute("SELECT email FROM identities")}
    assert before <= stored, f"missing from the backup: {sorted(before - stored)[:5]}"
    # restoring = pointing syncd at the copy: it is at the migration head and answers
    restored = daemon.cli("identity", "show", sorted(before)[0], "--json")
    assert restored.returncode == 0  # (the daemon's own URL still names the original)
    on_copy = subprocess.run(
        [SYNCD, "identity", "show", sorted(before)[0], "--json"],
        env={**daemon.env, "SYNCD_DATABASE__URL": f"sqlite:///{copy}"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert on_copy.returncode == 0, on_copy.stderr
    assert sorted(before)[0] in on_copy.stdout


async def test_the_copy_is_made_in_steps_while_writes_go_on(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Path(sqlite_url.removeprefix("sqlite:///"))
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, pad TEXT)")
        conn.executemany("INSERT INTO scratch (pad) VALUES (?)", [("x" * 500,)] * 2000)
    monkeypatch.setattr(backup, "STEP_PAGES", 16)
    stop, warm = threading.Event(), threading.Event()
    written: list[int] = []

    def writer() -> None:
        with sqlite3.connect(source, isolation_level=None, timeout=10) as conn:
            while not stop.is_set():
                cursor = conn.execute("INSERT INTO scratch (pad) VALUES ('y')")
                written.append(int(cursor.lastrowid or 0))
                if len(written) == 20:
                    warm.set()

    steps: list[tuple[int, int]] = []
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert await asyncio.to_thread(warm.wait, 30)
        acked = written[-1]
        copied = await backup.backup_sqlite(
            source, tmp_path / "copy.db", progress=lambda d, t: steps.append((d, t))
        )
        during = len(written)
    finally:
        stop.set()
        thread.join(30)
    assert len(steps) > 10  # many steps ...
    done = [d for d, _ in steps]
    assert done == sorted(done)  # ... that never started over, though writes went on
    assert during > 20
    with sqlite3.connect(copied.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (top,) = conn.execute("SELECT max(id) FROM scratch").fetchone()
    assert top >= acked


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)

    def run(url: str, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("SYNCD_DATABASE__URL", url)
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_no_overwrite_without_force_and_a_missing_directory_is_one_line(
    cli, sqlite_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "b.db"
    assert cli(sqlite_url, "backup", "--output", str(target))[0] == 0
    first = target.stat().st_mtime_ns
    code, _, err = cli(sqlite_url, "backup", "--output", str(target))
    assert code == 1 and "exists" in err and "--force" in err and len(err.splitlines()) == 1
    assert target.stat().st_mtime_ns == first  # left alone
    assert cli(sqlite_url, "backup", "--output", str(target), "--force")[0] == 0
    code, _, err = cli(sqlite_url, "backup", "--output", str(tmp_path / "no" / "b.db"))
    missing = f"syncd: directory {tmp_path / 'no'} does not exist: create it first\n"
    assert code == 1 and err == missing
    code, _, err = cli(f"sqlite:///{tmp_path / 'none.db'}", "backup", "--output", "c.db")
    assert code == 1 and "does not exist" in err and not (tmp_path / "c.db").exists()
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.postgres
def test_postgres_prints_the_pg_dump_command_without_the_password(cli, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.engine import make_url

    with_password = make_url(pg_url).set(password="Sup3r-secret").render_as_string(False)
    code, out, _ = cli(with_password, "backup", "--output", "syncd.dump")
    assert code == 0
    assert "pg_dump --format=custom --file=syncd.dump postgresql://postgres@127.0.0.1" in out
    assert "PGPASSFILE" in out and "pg_restore" in out
    assert "Sup3r-secret" not in out
    assert not Path("syncd.dump").exists()  # syncd runs nothing itself
