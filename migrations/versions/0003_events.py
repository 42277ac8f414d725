"""The event log: events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from syncd.store.models import BigId, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("gc_user_id", sa.BigInteger(), nullable=True),
        sa.Column("identity_id", BigId, nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("wait_until", UTCDateTime(), nullable=True),
        sa.Column("notes", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_events_identity_id_identities"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("kind", "external_id", name=op.f("uq_events_kind_external_id")),
    )
    op.create_index("ix_events_status_identity_id", "events", ["status", "identity_id"])
    op.create_index("ix_events_gc_user_id", "events", ["gc_user_id"])
    op.create_index("ix_events_received_at", "events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_events_received_at", table_name="events")
    op.drop_index("ix_events_gc_user_id", table_name="events")
    op.drop_index("ix_events_status_identity_id", table_name="events")
    op.drop_table("events")
