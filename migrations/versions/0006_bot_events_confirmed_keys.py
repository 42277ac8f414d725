"""Bot events' own keys on the event log; the keys GetCourse has confirmed per person.

* ``events.telegram_id``, ``events.client_id``, ``events.project_id``: a bot event
  (SPEC §10) names its person by Salebot keys, and may arrive before any link names an
  email. The keys are kept on the event so that a later link can attach the identity
  (two partial indexes over the events that have no identity yet: a link looks there).
* ``identities.gc_telegram_id``, ``identities.gc_client_id``: the Telegram id and the
  Salebot client id that a successful GetCourse import last wrote into the person's
  custom fields (SPEC §11). ``syncd writeback sync`` queues the write for every person
  whose current keys differ from these.
* ``identity_changes.identity_id`` nullable: ``syncd identity forget`` (SPEC §11) deletes
  the identity and leaves one trace row with no personal data, which names no identity.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from syncd.store.models import BigId

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UNLINKED = sa.text("identity_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("telegram_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("client_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("project_id", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_events_unlinked_telegram_id",
        "events",
        ["telegram_id"],
        sqlite_where=UNLINKED,
        postgresql_where=UNLINKED,
    )
    op.create_index(
        "ix_events_unlinked_client_id",
        "events",
        ["project_id", "client_id"],
        sqlite_where=UNLINKED,
        postgresql_where=UNLINKED,
    )
    with op.batch_alter_table("identities") as batch:
        batch.add_column(sa.Column("gc_telegram_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("gc_client_id", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("identity_changes") as batch:
        batch.alter_column("identity_id", existing_type=BigId, nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM identity_changes WHERE identity_id IS NULL")
    with op.batch_alter_table("identity_changes") as batch:
        batch.alter_column("identity_id", existing_type=BigId, nullable=False)
    with op.batch_alter_table("identities") as batch:
        batch.drop_column("gc_client_id")
        batch.drop_column("gc_telegram_id")
    op.drop_index("ix_events_unlinked_client_id", table_name="events")
    op.drop_index("ix_events_unlinked_telegram_id", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("project_id")
        batch.drop_column("client_id")
        batch.drop_column("telegram_id")
