"""Alembic environment of syncd.

syncd runs migrations in-process (``syncd migrate``, ``syncd run`` with auto_migrate):
it passes an open connection in ``config.attributes["connection"]``. SQLite needs batch
mode to alter tables, so ``render_as_batch`` is on for it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from syncd.store.models import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `syncd migrate` (it supplies the connection)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
