"""The export poller: export_state, export_requests.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from syncd.store.models import BigId, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("cursor", sa.Date(), nullable=True),
        sa.Column("pending_export_id", sa.BigInteger(), nullable=True),
        sa.Column("pending_filters", sa.JSON(), nullable=True),
        sa.Column("pending_since", UTCDateTime(), nullable=True),
        sa.Column("last_run_at", UTCDateTime(), nullable=True),
        sa.Column("last_rows", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_errors", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_export_state")),
    )
    op.create_table(
        "export_requests",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("export", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_requests")),
    )
    op.create_index(op.f("ix_export_requests_at"), "export_requests", ["at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_export_requests_at"), table_name="export_requests")
    op.drop_table("export_requests")
    op.drop_table("export_state")
