"""``syncd backup``: an online, consistent copy of the store (SPEC §7).

SQLite: SQLite's own backup API (:meth:`sqlite3.Connection.backup`), page by page in
steps, in a thread. The source connection holds one read transaction for the whole copy,
so the copy is the database as it was when the backup began (every write committed
before is in it, none after), and the backup never restarts however busy the daemon
is: in WAL mode a reader does not block writers, so a running ``syncd run`` keeps
writing. The copy is written beside the target under a temporary name, checked
(``PRAGMA quick_check``), then renamed into place, so a half-written backup never sits
under the name asked for.

PostgreSQL: ``pg_dump`` is the tool; :func:`pg_dump_command` prints the command with the
password left out (libpq reads it from ``PGPASSFILE``/``~/.pgpass``).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from syncd.errors import SyncdError

#: Pages copied per step (4 MiB with 4 KiB pages); the thread yields between steps.
STEP_PAGES = 1024


class BackupError(SyncdError):
    """The backup cannot be made; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Copied:
    path: Path
    pages: int
    bytes: int


def sqlite_path(database_url: str) -> Path | None:
    """The file of an SQLite URL, or None for another database."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise BackupError("database.url names no SQLite file: nothing to back up")
    return Path(url.database)


def check_target(output: Path, force: bool) -> None:
    """Refuse what would surprise: a missing directory, an existing file without --force."""
    if not output.parent.is_dir():
        raise BackupError(f"directory {output.parent} does not exist: create it first")
    if output.is_dir():
        raise BackupError(f"{output} is a directory: name the backup file")
    if output.exists() and not force:
        raise BackupError(f"{output} exists: choose another name or pass --force to replace it")


async def backup_sqlite(
    source: Path,
    output: Path,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Copied:
    """Copy ``source`` to ``output`` online; ``progress(done_pages, total_pages)``."""
    return await asyncio.to_thread(_copy, source, output, force, progress)


def _copy(
    source: Path, output: Path, force: bool, progress: Callable[[int, int], None] | None
) -> Copied:
    check_target(output, force)
    if not source.is_file():
        raise BackupError(f"SQLite database {source} does not exist")
    tmp = output.with_name(f".{output.name}.part")
    tmp.unlink(missing_ok=True)
    pages = 0

    def step(_status: int, remaining: int, total: int) -> None:
        nonlocal pages
        pages = total
        if progress is not None:
            progress(total - remaining, total)

    try:
        with (
            closing(sqlite3.connect(source, isolation_level=None, timeout=10)) as src,
            closing(sqlite3.connect(tmp, isolation_level=None)) as dst,
        ):
            # one read transaction for the whole copy: a fixed snapshot, no restarts
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            src.backup(dst, pages=STEP_PAGES, progress=step, sleep=0)
            src.execute("COMMIT")
            # a normal syncd file, self-contained: no -wal beside it to carry along
            dst.execute("PRAGMA journal_mode=DELETE")
            (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise BackupError(f"the copy failed its check ({verdict}): nothing written")
        with tmp.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, output)
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {source} failed: {exc}") from None
    except OSError as exc:
        raise BackupError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Copied(output, pages, output.stat().st_size)


def libpq_url(database_url: str) -> str:
    """The URL as libpq (``pg_dump``, ``psql``) takes it, without the password."""
    url = make_url(database_url)
    bare = URL.create("postgresql", url.username, None, url.host, url.port, url.database, url.query)
    return bare.render_as_string(hide_password=False)


def pg_dump_command(database_url: str, output: Path) -> str:
    """The ``pg_dump`` command for a PostgreSQL URL, with no password in it."""
    target = libpq_url(database_url)
    return f"pg_dump --format=custom --file={shlex.quote(str(output))} {shlex.quote(target)}"


def pg_restore_command(database_url: str, output: Path) -> str:
    target = libpq_url(database_url)
    return (
        f"pg_restore --clean --if-exists --no-owner --dbname={shlex.quote(target)} "
        f"{shlex.quote(str(output))}"
    )
