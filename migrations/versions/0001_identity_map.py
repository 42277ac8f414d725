"""The identity map: identities, salebot_clients, identity_changes, link_conflicts.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from syncd.store.models import BigId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("telegram_id", sa.BigInteger(), nullable=True),
        sa.Column("gc_user_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("email", name=op.f("uq_identities_email")),
        sa.UniqueConstraint("telegram_id", name=op.f("uq_identities_telegram_id")),
        sa.UniqueConstraint("gc_user_id", name=op.f("uq_identities_gc_user_id")),
    )
    op.create_table(
        "salebot_clients",
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("identity_id", BigId, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_salebot_clients_identity_id_identities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "client_id", name=op.f("pk_salebot_clients")),
        sa.UniqueConstraint(
            "identity_id", "project_id", name=op.f("uq_salebot_clients_identity_id_project_id")
        ),
    )
    op.create_table(
        "identity_changes",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("identity_id", BigId, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_identity_changes_identity_id_identities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_changes")),
    )
    op.create_index(op.f("ix_identity_changes_identity_id"), "identity_changes", ["identity_id"])
    op.create_table(
        "link_conflicts",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("status", sa.String(16), server_default=sa.text("'open'"), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("telegram_id", sa.BigInteger(), nullable=True),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=True),
        sa.Column("holders", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("seen_count", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_conflicts")),
    )
    op.create_index("ix_link_conflicts_status_email", "link_conflicts", ["status", "email"])


def downgrade() -> None:
    op.drop_index("ix_link_conflicts_status_email", table_name="link_conflicts")
    op.drop_table("link_conflicts")
    op.drop_index(op.f("ix_identity_changes_identity_id"), table_name="identity_changes")
    op.drop_table("identity_changes")
    op.drop_table("salebot_clients")
    op.drop_table("identities")
