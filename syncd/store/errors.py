"""Driver errors translated at the store boundary into :mod:`syncd.errors` types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import exc as sa_exc

from syncd.errors import StoreUnavailable


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn "cannot reach / cannot lock the database" into :class:`StoreUnavailable`.

    Integrity errors and programming errors are left alone: they are bugs or races that
    the caller handles, not an outage.
    """
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
        raise StoreUnavailable(
            f"database unavailable: {type(getattr(exc, 'orig', None) or exc).__name__}"
        ) from exc
    except sa_exc.DBAPIError as exc:
        if type(exc) is sa_exc.DatabaseError:  # e.g. "file is not a database"
            raise StoreUnavailable(f"database unusable: {exc.orig}") from exc
        if exc.connection_invalidated:
            raise StoreUnavailable("database connection lost") from exc
        raise
    except (OSError, ConnectionError) as exc:
        raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
