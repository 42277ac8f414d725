"""The few statements whose spelling differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert_ignoring(conn: AsyncConnection, model: Any, *unique: str) -> Any:
    """``INSERT … ON CONFLICT (unique…) DO NOTHING`` for the connection's database."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing(index_elements=list(unique))
    return sqlite.insert(model).on_conflict_do_nothing(index_elements=list(unique))
