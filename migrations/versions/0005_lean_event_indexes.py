"""Lean indexes on events: the unique key and a partial index of waiting events only.

Every secondary index of ``events`` is written for every event, and a backfill writes
millions of them. ``ix_events_gc_user_id`` and ``ix_events_received_at`` served no query
of syncd; ``ix_events_status_identity_id`` served only the look-up of ``waiting_link``
events, which a partial index over those few rows serves as well. Measured with plain
``sqlite3`` on 1,000,000 deal rows (1.67 M events): 22,600 rows/s with the three indexes,
117,000 without (docs/performance.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

WAITING = sa.text("status = 'waiting_link'")


def upgrade() -> None:
    op.drop_index("ix_events_status_identity_id", table_name="events")
    op.drop_index("ix_events_gc_user_id", table_name="events")
    op.drop_index("ix_events_received_at", table_name="events")
    op.create_index(
        "ix_events_waiting_link",
        "events",
        ["identity_id"],
        sqlite_where=WAITING,
        postgresql_where=WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_events_waiting_link", table_name="events")
    op.create_index("ix_events_received_at", "events", ["received_at"])
    op.create_index("ix_events_gc_user_id", "events", ["gc_user_id"])
    op.create_index("ix_events_status_identity_id", "events", ["status", "identity_id"])
