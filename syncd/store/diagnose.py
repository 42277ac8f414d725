"""Why the database cannot be used, as one line that names the cause and the fix.

The CLI (``syncd run``, ``check`` and every other command) prints these instead of a
driver's message or a traceback. libpq reports a failed connection without an SQLSTATE
(the server has not accepted the session yet), so :func:`explain` reads the driver's
message here, at the boundary, and only here; anything it does not recognise is shown
as the driver's first line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.errors import SchemaNotReady, StoreUnavailable
from syncd.store import schema

_NO_DATABASE = re.compile(r'database "([^"]+)" does not exist')
_NO_ROLE = re.compile(r'role "([^"]+)" does not exist')
_PASSWORD = re.compile(r'password authentication failed for user "([^"]+)"')
_NO_HOST = re.compile(r"(?:failed to resolve host|could not translate host name) '?\"?([^'\"]+)")


def _url(database_url: str) -> URL | None:
    try:
        return make_url(database_url)
    except ArgumentError:
        return None


def _where(url: URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}"


def sqlite_path(database_url: str) -> Path | None:
    """The file of an SQLite URL (None for PostgreSQL or an in-memory database)."""
    url = _url(database_url)
    if url is None or url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def sqlite_problem(database_url: str, *, must_exist: bool) -> str | None:
    """What stops SQLite from opening (or creating) its file, before anything touches it.

    ``must_exist``: commands that only read or repair must not create an empty database.
    """
    path = sqlite_path(database_url)
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():
        return (
            f"database.url: the directory {folder} does not exist: "
            f"create it (mkdir -p {folder}) or point database.url elsewhere"
        )
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return f"database.url: {path} is not readable and writable by this user: fix its owner"
        return None
    if must_exist:
        return (
            f"database.url: {path} does not exist: run `syncd migrate` to create it, "
            "or point database.url at the existing database"
        )
    if not os.access(folder, os.W_OK):
        return f"database.url: cannot create {path}: the directory {folder} is not writable"
    return None


def explain(exc: BaseException, database_url: str) -> str | None:
    """One line for a failure to reach the database, or None when it is not one."""
    if not isinstance(exc, StoreUnavailable):
        return None
    url = _url(database_url)
    cause: BaseException | None = exc.__cause__
    if cause is None:  # raised here with its own clear message
        return None
    orig = getattr(cause, "orig", None) or cause
    text = str(orig or exc)
    if url is not None and url.get_backend_name() == "sqlite":
        problem = sqlite_problem(database_url, must_exist=False)
        if problem is not None:
            return problem
        if "not a database" in text or "malformed" in text:
            return (
                f"database.url: {url.database} is not an SQLite database syncd can read: "
                "restore it from a backup or point database.url elsewhere"
            )
        first = text.splitlines()[0] if text else type(orig).__name__
        return f"database.url: cannot open {url.database}: {first}"
    if url is None:
        return None
    where = _where(url)
    found = _NO_DATABASE.search(text)
    if found:
        name = found.group(1)
        return (
            f"database.url: PostgreSQL at {where} has no database {name!r}: "
            f"create it (createdb -h {url.host or 'localhost'} {name}) "
            "or fix the name in database.url"
        )
    found = _NO_ROLE.search(text)
    if found:
        name = found.group(1)
        return (
            f"database.url: PostgreSQL at {where} has no role {name!r}: "
            f"create it (createuser {name}) or fix the user in database.url"
        )
    found = _PASSWORD.search(text)
    if found:
        return (
            f"database.url: PostgreSQL at {where} refused the password of {found.group(1)!r}: "
            "fix it in $CREDENTIALS_DIRECTORY/database-url or SYNCD_DATABASE__URL"
        )
    if "Connection refused" in text:
        return (
            f"database.url: nothing accepts connections at {where}: "
            "start PostgreSQL or fix the host and port in database.url"
        )
    found = _NO_HOST.search(text)
    if found:
        return f"database.url: unknown host {found.group(1)!r}: fix the host in database.url"
    if "timeout" in text.lower():
        return (
            f"database.url: PostgreSQL at {where} did not answer in time: "
            "check that the server is up and reachable from here"
        )
    if "connection" not in text.lower():
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"database.url: cannot use PostgreSQL at {where}: {lines[-1] if lines else text}"


async def require_known_schema(engine: AsyncEngine) -> frozenset[str]:
    """The database's revisions; :class:`SchemaNotReady` when a newer syncd migrated it.

    Alembic is loaded only when the database is not at this code's head.
    """
    current = await schema.current(engine)
    if not current or current == {schema.HEAD}:
        return current
    from alembic.script import ScriptDirectory

    from syncd.store import migrate

    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    known = {script.revision for script in scripts.walk_revisions()}
    unknown = sorted(current - known)
    if unknown:
        raise SchemaNotReady(
            f"the database is at revision {', '.join(unknown)}, newer than this syncd "
            f"(it knows up to {schema.HEAD}): run the newer syncd that migrated it, "
            "or restore a backup taken before that upgrade"
        )
    return current


def require_usable(database_url: str, *, must_exist: bool) -> None:
    """:class:`StoreUnavailable` with the one line of :func:`sqlite_problem`, if any."""
    problem = sqlite_problem(database_url, must_exist=must_exist)
    if problem is not None:
        raise StoreUnavailable(problem)
