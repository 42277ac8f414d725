"""PostgreSQL: the event log's and the deals' references to identities checked once per
statement, not once per row.

``events.identity_id`` and ``analytics_deals.identity_id`` name an identity or nothing
(``ON DELETE SET NULL``). As foreign keys, PostgreSQL checked them with one query per
row written: in a backfill (1,000,000 export rows write 1,670,000 events and 1,000,000
deals) that was ~40 % of each chunk's ``INSERT`` (docs/performance.md, 2026-12-07). This
migration replaces the two foreign keys, on PostgreSQL only, with triggers that keep
the same guarantee per statement:

* after an ``INSERT`` or ``UPDATE`` of ``events`` or ``analytics_deals``: every distinct
  identity the new rows name is looked up once and locked ``FOR KEY SHARE`` (as the
  foreign key locked it: no other transaction can delete it before this one ends); one
  that does not exist raises ``foreign_key_violation`` (SQLSTATE 23503, what the
  foreign key raised), naming the table and the identity;
* after a ``DELETE`` of identities: their references become NULL (the foreign key's
  ``ON DELETE SET NULL``), one ``UPDATE`` per table; after a ``TRUNCATE`` of
  identities, every reference becomes NULL;
* an identity's ``id`` cannot change while anything names it (the foreign key's ``NO
  ACTION`` on update; syncd never changes one).

SQLite keeps its foreign keys: its backfill is not limited by them.
``tests/test_identity_references.py`` proves the guarantee on both databases.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: The tables whose ``identity_id`` the triggers keep, with the foreign keys they replace.
REFERRING = {
    "events": "fk_events_identity_id_identities",
    "analytics_deals": "fk_analytics_deals_identity_id_identities",
}


def _function(name: str, body: str) -> str:
    """``CREATE FUNCTION syncd_identity_refs_{name}()``, a PL/pgSQL trigger function."""
    return (
        f"CREATE FUNCTION syncd_identity_refs_{name}() RETURNS trigger LANGUAGE plpgsql"
        f" AS $fn$\n{body.strip()}\n$fn$"
    )


_CHECK = _function(
    "check",
    """
DECLARE
    wanted bigint;
    locked bigint;
    missing bigint;
BEGIN
    SELECT count(DISTINCT identity_id) INTO wanted FROM new_rows WHERE identity_id IS NOT NULL;
    IF wanted = 0 THEN
        RETURN NULL;
    END IF;
    SELECT count(*) INTO locked FROM (
        SELECT 1 FROM identities
        WHERE id IN (SELECT identity_id FROM new_rows)
        FOR KEY SHARE
    ) AS named;
    IF locked < wanted THEN
        SELECT n.identity_id INTO missing FROM new_rows AS n
        WHERE n.identity_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM identities AS i WHERE i.id = n.identity_id)
        LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = format('%s.identity_id names no identity (%s)', TG_TABLE_NAME, missing),
            TABLE = TG_TABLE_NAME, COLUMN = 'identity_id';
    END IF;
    RETURN NULL;
END
""",
)

_FORGET = _function(
    "forget",
    """
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE events SET identity_id = NULL WHERE identity_id IS NOT NULL;
        UPDATE analytics_deals SET identity_id = NULL WHERE identity_id IS NOT NULL;
    ELSE
        UPDATE events SET identity_id = NULL WHERE identity_id IN (SELECT id FROM gone);
        UPDATE analytics_deals SET identity_id = NULL
        WHERE identity_id IN (SELECT id FROM gone);
    END IF;
    RETURN NULL;
END
""",
)

_KEEP_ID = _function(
    "keep_id",
    """
BEGIN
    IF EXISTS (SELECT 1 FROM events WHERE identity_id = OLD.id)
       OR EXISTS (SELECT 1 FROM analytics_deals WHERE identity_id = OLD.id) THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('identity %s is still named by events or deals', OLD.id),
            TABLE = 'identities', COLUMN = 'id';
    END IF;
    RETURN NEW;
END
""",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_CHECK)
    op.execute(_FORGET)
    op.execute(_KEEP_ID)
    for table, constraint in REFERRING.items():
        op.drop_constraint(constraint, table, type_="foreignkey")
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER syncd_{table}_identity_{event.lower()} AFTER {event} ON {table}"
                " REFERENCING NEW TABLE AS new_rows"
                " FOR EACH STATEMENT EXECUTE FUNCTION syncd_identity_refs_check()"
            )
    op.execute(
        "CREATE TRIGGER syncd_identities_forget AFTER DELETE ON identities"
        " REFERENCING OLD TABLE AS gone"
        " FOR EACH STATEMENT EXECUTE FUNCTION syncd_identity_refs_forget()"
    )
    op.execute(
        "CREATE TRIGGER syncd_identities_truncate AFTER TRUNCATE ON identities"
        " FOR EACH STATEMENT EXECUTE FUNCTION syncd_identity_refs_forget()"
    )
    op.execute(
        "CREATE TRIGGER syncd_identities_keep_id BEFORE UPDATE OF id ON identities"
        " FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)"
        " EXECUTE FUNCTION syncd_identity_refs_keep_id()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for trigger in ("forget", "truncate", "keep_id"):
        op.execute(f"DROP TRIGGER IF EXISTS syncd_identities_{trigger} ON identities")
    for table, constraint in REFERRING.items():
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS syncd_{table}_identity_{event} ON {table}")
        op.create_foreign_key(
            constraint, table, "identities", ["identity_id"], ["id"], ondelete="SET NULL"
        )
    for function in ("check", "forget", "keep_id"):
        op.execute(f"DROP FUNCTION IF EXISTS syncd_identity_refs_{function}()")
