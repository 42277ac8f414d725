"""The analyst's model (SPEC §12): views ``syncd_deals``, ``syncd_people``, ``syncd_funnel``.

Reading JSON out of a million events on every report was measured too slow on SQLite
(docs/decisions.md, "Analytics"), so two narrow tables hold what the views need:

* ``analytics_deals``: one row per GetCourse deal (``deal.created``, ``deal.paid``,
  ``deal.status_changed`` from every source): the latest status, the amounts as numbers,
  the times of creation and payment. Kept by ``syncd.store.deals.project`` in the
  transaction that stores the events (the data is parsed there already; a trigger
  reading ``events.data`` made a backfill several times slower);
* ``analytics_bot_contacts``: one row per bot subscriber key — ``sb:{project}:{client}``
  when the event names a Salebot client, else ``tg:{telegram_id}`` — with the first
  contact and the first ``start`` / ``utm_source`` / ``utm_campaign`` seen, each with its
  time. Kept **by a trigger on ``events``** (bot events come one request at a time, so
  the trigger's cost is small beside the request's), whoever writes them. Who the
  subscriber is comes from the identity map when the view is read, so a link made later
  needs no update here. When an event loses its keys (``syncd identity forget``), the
  contact loses them too and stays countable, without personal data.

Every merge is order-free (earliest / latest by time, largest amount), so this
migration's fill of existing events (a ``GROUP BY``) and the running updates agree. The
views (every column in docs/analytics.md) join these with the identity map.

SQL spelled per database: the value of the earliest/latest row of a group (PostgreSQL:
the first element of ``array_agg(… ORDER BY …)``; SQLite: ``min``/``max`` of the time
padded to 26 characters, the id on 12 digits and the value, cut out again); money
(``"12 000,00"`` — spaces, non-breaking spaces, a decimal comma — becomes a number; text
that is no amount becomes NULL, never an error); a day (``date()`` of SQLite's UTC text;
the UTC date of a ``timestamptz``); triggers (SQLite bodies; PL/pgSQL functions).

A later migration that rebuilds ``events``, ``identities`` or ``salebot_clients`` with
``batch_alter_table`` (SQLite copies and renames the table) must drop the views and
triggers first and create them again after.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from syncd.store.models import BigId, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

VIEWS = ("syncd_funnel", "syncd_people", "syncd_deals")  # dependants first
DEAL_KINDS = "('deal.created', 'deal.paid', 'deal.status_changed')"
#: The deal fields read from ``events.data`` (money separately).
DEAL_TEXT = ("deal_id", "number", "status", "currency", "title", "utm_source", "utm_medium",
             "utm_campaign")  # fmt: skip
TOUCH = ("start", "utm_source", "utm_campaign")


class _Sql:
    """The expressions whose spelling differs between SQLite and PostgreSQL."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"

    def first(self, value: str, at: str = "at", row: str = "id", *, last: bool = False) -> str:
        """Aggregate: ``value`` of the earliest (``last``: latest) row where it is set."""
        if self.pg:
            order = f"{at} DESC, {row} DESC" if last else f"{at}, {row}"
            return f"(array_agg({value} ORDER BY {order}) FILTER (WHERE {value} IS NOT NULL))[1]"
        pick = "max" if last else "min"
        key = f"printf('%-26s%012d', {at}, {row}) || {value}"
        return f"substr({pick}(CASE WHEN {value} IS NOT NULL THEN {key} END), 39)"

    def money(self, text: str) -> str:
        """An amount of money as a number (NULL when it is none)."""
        if self.pg:
            cleaned = f"replace(regexp_replace({text}, '[\\s\\u00a0\\u202f]', '', 'g'), ',', '.')"
            amount = "'^-?[0-9]+(\\.[0-9]+)?$'"
            return f"CASE WHEN {cleaned} ~ {amount} THEN CAST({cleaned} AS numeric) END"
        cleaned = (
            f"replace(replace(replace(replace({text}, ' ', ''), char(160), ''), char(8239), ''),"
            " ',', '.')"
        )
        digits = f"ltrim({cleaned}, '-')"
        # canonical amounts (the poller's "12000", "99.50"; JSON numbers) take the first two
        # branches; only raw webhook text pays for the clean-up
        return (
            f"CASE WHEN typeof({text}) IN ('integer', 'real') THEN {text}"
            f" WHEN {text} GLOB '[0-9]*' AND {text} NOT GLOB '*[^0-9.]*'"
            f" AND {text} NOT GLOB '*.*.*' AND {text} NOT GLOB '*.' THEN CAST({text} AS NUMERIC)"
            f" WHEN {digits} GLOB '[0-9]*' AND {digits} NOT GLOB '*[^0-9.]*'"
            f" AND {digits} NOT GLOB '*.*.*' AND {digits} NOT GLOB '*.'"
            f" AND length({cleaned}) - length({digits}) <= 1"
            f" THEN CAST({cleaned} AS NUMERIC) END"
        )

    def earliest(self, *moments: str) -> str:
        """The earliest of moments that may be NULL (NULL only when all are)."""
        if self.pg:
            return f"least({', '.join(moments)})"
        fill = f"coalesce({', '.join(moments)})"  # SQLite's min(a, NULL) is NULL
        return f"min({', '.join(f'coalesce({m}, {fill})' for m in moments)})"

    def latest(self, *values: str) -> str:
        if self.pg:
            return f"greatest({', '.join(values)})"
        fill = f"coalesce({', '.join(values)})"
        return f"max({', '.join(f'coalesce({v}, {fill})' for v in values)})"

    def day(self, moment: str) -> str:
        return f"CAST(({moment} AT TIME ZONE 'UTC') AS date)" if self.pg else f"date({moment})"

    def null(self, kind: str) -> str:
        """A NULL of a type (PostgreSQL types the columns of a UNION from its values)."""
        types = {"timestamp": "timestamptz", "text": "text", "numeric": "numeric"}
        return f"CAST(NULL AS {types[kind]})" if self.pg else "NULL"

    def zero(self) -> str:
        return "CAST(0 AS numeric)" if self.pg else "0"

    def has_bot_keys(self, after: str) -> str:
        """An ``identity_changes.after`` naming a Telegram id or a Salebot client."""
        clients = (
            f"json_array_length({after} -> 'salebot_clients')"
            if self.pg
            else f"json_array_length({after}, '$.salebot_clients')"
        )
        return f"({after} ->> 'telegram_id' IS NOT NULL OR {clients} > 0)"

    def contact_key(self, e: str) -> str:
        sb = f"'sb:' || coalesce({e}.project_id, 0) || ':' || {e}.client_id"
        return f"CASE WHEN {e}.client_id IS NOT NULL THEN {sb} ELSE 'tg:' || {e}.telegram_id END"


# --------------------------------------------------------------------------- tables


def create_tables() -> None:
    op.create_table(
        "analytics_deals",
        sa.Column("deal_id", sa.String(128), primary_key=True),
        sa.Column("number", sa.String(64), nullable=True),
        sa.Column("identity_id", BigId, nullable=True),
        sa.Column("status", sa.String(64), nullable=True),
        sa.Column("status_at", UTCDateTime(), nullable=True),
        sa.Column("cost", sa.Numeric(), nullable=True),
        sa.Column("paid_amount", sa.Numeric(), nullable=True),
        sa.Column("currency", sa.String(16), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=True),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("paid_at", UTCDateTime(), nullable=True),
        sa.Column("utm_source", sa.Text(), nullable=True),
        sa.Column("utm_medium", sa.Text(), nullable=True),
        sa.Column("utm_campaign", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_analytics_deals_identity_id_identities"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("deal_id", name=op.f("pk_analytics_deals")),
    )
    op.create_index("ix_analytics_deals_identity_id", "analytics_deals", ["identity_id"])
    op.create_table(
        "analytics_bot_contacts",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=True),
        sa.Column("client_id", sa.BigInteger(), nullable=True),
        sa.Column("telegram_id", sa.BigInteger(), nullable=True),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        *(
            column
            for name in TOUCH
            for column in (
                sa.Column(name, sa.Text(), nullable=True),
                sa.Column(f"{name}_at", UTCDateTime(), nullable=True),
            )
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analytics_bot_contacts")),
        sa.UniqueConstraint("key", name=op.f("uq_analytics_bot_contacts_key")),
    )


# --------------------------------------------------------------------------- filling


def _stored(e: str) -> Callable[[str], str]:
    """A field of the stored row ``e``'s data (read once per field: for the initial fill)."""
    return lambda name: f"({e}.data ->> '{name}')"


def _parsed(sql: _Sql) -> tuple[Callable[[str], str], str]:
    """A field of the trigger's ``NEW.data``, parsed once, and the FROM clause it needs.

    SQLite (3.40) parses the JSON text again at every ``->>``; one ``json_each`` pivot
    parses it once. PL/pgSQL reads a ``jsonb`` variable the function declares (``d``).
    """
    if sql.pg:
        return (lambda name: f"(d ->> '{name}')"), ""
    names = TOUCH
    pivot = ", ".join(f"max(CASE WHEN key = '{n}' THEN value END) AS {n}" for n in names)
    return (lambda name: f"j.{name}"), f" FROM (SELECT {pivot} FROM json_each(NEW.data)) AS j"


def deal_values(sql: _Sql, e: str, field: Callable[[str], str]) -> dict[str, str]:
    """One deal event's contribution, as SQL over the event row ``e``."""
    at = f"coalesce({e}.occurred_at, {e}.received_at)"
    text = {name: f"nullif(CAST({field(name)} AS text), '')" for name in DEAL_TEXT}
    return {
        **text,
        "at": at,
        "cost": sql.money(field("cost")),
        "paid_amount": sql.money(field("paid_amount")),
    }


def fill_deals(sql: _Sql) -> str:
    v = deal_values(sql, "e", _stored("e"))
    inner = ",\n".join(f"{expr} AS {name}" for name, expr in v.items())
    return f"""
INSERT INTO analytics_deals (deal_id, number, identity_id, status, status_at,
    cost, paid_amount, currency, title, created_at, first_at, paid_at, utm_source, utm_medium,
    utm_campaign)
SELECT deal_id, max(number), max(identity_id),
       {sql.first("status", last=True)},
       max(CASE WHEN status IS NOT NULL THEN at END),
       max(cost), max(paid_amount), max(currency), max(title),
       min(CASE WHEN kind = 'deal.created' THEN at END), min(at),
       min(CASE WHEN kind = 'deal.paid' THEN at END),
       max(utm_source), max(utm_medium), max(utm_campaign)
FROM (SELECT e.id, e.kind, e.identity_id, {inner}
      FROM events AS e WHERE e.kind IN {DEAL_KINDS}) AS ev
WHERE deal_id IS NOT NULL
GROUP BY deal_id
"""


def touch_values(field: Callable[[str], str]) -> dict[str, str]:
    return {name: f"nullif(CAST({field(name)} AS text), '')" for name in TOUCH}


def fill_contacts(sql: _Sql) -> str:
    v = touch_values(_stored("e"))
    firsts = ",\n       ".join(
        f"{sql.first(name)}, min(CASE WHEN {name} IS NOT NULL THEN at END)" for name in TOUCH
    )
    return f"""
INSERT INTO analytics_bot_contacts (key, project_id, client_id, telegram_id, first_at,
    {", ".join(f"{name}, {name}_at" for name in TOUCH)})
SELECT key, max(project_id), max(client_id), max(telegram_id), min(at),
       {firsts}
FROM (SELECT e.id, {sql.contact_key("e")} AS key, e.project_id, e.client_id, e.telegram_id,
             coalesce(e.occurred_at, e.received_at) AS at,
             {", ".join(f"{expr} AS {name}" for name, expr in v.items())}
      FROM events AS e
      WHERE e.kind LIKE 'bot.%' AND (e.client_id IS NOT NULL OR e.telegram_id IS NOT NULL)
     ) AS ev
GROUP BY key
"""


def contact_upsert(sql: _Sql, e: str) -> str:
    t = "analytics_bot_contacts"
    field, source = _parsed(sql)
    v = touch_values(field)
    at = f"coalesce({e}.occurred_at, {e}.received_at)"
    sets = [
        f"telegram_id = coalesce(excluded.telegram_id, {t}.telegram_id)",
        f"first_at = {sql.earliest(f'{t}.first_at', 'excluded.first_at')}",
    ]
    for name in TOUCH:
        earlier = (
            f"(excluded.{name} IS NOT NULL AND ({t}.{name} IS NULL"
            f" OR excluded.{name}_at < {t}.{name}_at))"
        )
        sets += [
            f"{name} = CASE WHEN {earlier} THEN excluded.{name} ELSE {t}.{name} END",
            f"{name}_at = CASE WHEN {earlier} THEN excluded.{name}_at ELSE {t}.{name}_at END",
        ]
    columns = ", ".join(f"{name}, {name}_at" for name in TOUCH)
    values = ", ".join(f"{expr}, CASE WHEN {expr} IS NOT NULL THEN {at} END" for expr in v.values())
    joined = ",\n    ".join(sets)
    return f"""
INSERT INTO {t} (key, project_id, client_id, telegram_id, first_at, {columns})
SELECT {sql.contact_key(e)}, {e}.project_id, {e}.client_id, {e}.telegram_id, {at}, {values}{source}
WHERE {e}.client_id IS NOT NULL OR {e}.telegram_id IS NOT NULL
ON CONFLICT (key) DO UPDATE SET
    {joined}
"""


def contact_scrub(e: str) -> str:
    """A bot event that lost its keys (forgotten): its contact loses them too."""
    return f"""
UPDATE analytics_bot_contacts
SET key = 'forgotten:' || id, project_id = NULL, client_id = NULL, telegram_id = NULL
WHERE (client_id IS NOT NULL AND client_id = {e}.client_id
       AND coalesce(project_id, 0) = coalesce({e}.project_id, 0))
   OR (telegram_id IS NOT NULL AND telegram_id = {e}.telegram_id)
"""


def create_triggers(sql: _Sql) -> None:
    bot_when = "NEW.kind LIKE 'bot.%'"
    scrub_when = (
        "OLD.kind LIKE 'bot.%' AND NEW.client_id IS NULL AND NEW.telegram_id IS NULL"
        " AND (OLD.client_id IS NOT NULL OR OLD.telegram_id IS NOT NULL)"
    )
    if not sql.pg:
        for name, event, when, body in (
            ("analytics_bot_contacts_ai", "INSERT", bot_when, contact_upsert(sql, "NEW")),
            ("analytics_bot_contacts_au", "UPDATE OF client_id, telegram_id", scrub_when,
             contact_scrub("OLD")),
        ):  # fmt: skip
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON events WHEN {when}\nBEGIN{body};\nEND"
            )
        return
    for name, event, when, body in (
        ("analytics_bot_contacts_ai", "INSERT", bot_when, contact_upsert(sql, "NEW")),
        ("analytics_bot_contacts_au", "UPDATE OF client_id, telegram_id", scrub_when,
         contact_scrub("OLD")),
    ):  # fmt: skip
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
            f"DECLARE d jsonb := NEW.data::jsonb;\nBEGIN{body};\nRETURN NULL;\nEND\n$fn$"
        )
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON events FOR EACH ROW WHEN ({when})"
            f" EXECUTE FUNCTION {name}()"
        )


TRIGGERS = ("analytics_bot_contacts_ai", "analytics_bot_contacts_au")


# --------------------------------------------------------------------------- views


def deals_view() -> str:
    return """
CREATE VIEW syncd_deals AS
SELECT d.deal_id, d.number, d.identity_id, i.email, d.status, d.cost,
       CASE WHEN d.paid_amount IS NOT NULL THEN d.paid_amount
            WHEN d.paid_at IS NOT NULL THEN d.cost END AS paid_amount,
       d.currency, d.title, coalesce(d.created_at, d.first_at) AS created_at, d.paid_at,
       d.utm_source, d.utm_medium, d.utm_campaign
FROM analytics_deals AS d
LEFT JOIN identities AS i ON i.id = d.identity_id
"""


def people_view(sql: _Sql) -> str:
    """Per identity, one ``GROUP BY`` over a union of its facts (no join of aggregates:
    SQLite would scan a materialised aggregate once per identity); then the unlinked."""
    t, n, z = sql.null("timestamp"), sql.null("text"), sql.null("numeric")
    touch = ", ".join(f"{name}, {name}_at" for name in TOUCH)
    no_touch = ", ".join([n, t] * len(TOUCH))
    named = ", ".join(f"{n} AS {name}, {t} AS {name}_at" for name in TOUCH)
    first_touch = ",\n           ".join(
        f"{sql.first(name, f'{name}_at', 'row_id')} AS {name}" for name in TOUCH
    )
    return f"""
CREATE VIEW syncd_people AS
WITH contact AS (
    SELECT c.id, c.project_id, c.client_id, c.telegram_id, c.first_at, {touch},
           coalesce(s.identity_id, k.id) AS identity_id
    FROM analytics_bot_contacts AS c
    LEFT JOIN salebot_clients AS s ON s.project_id = c.project_id AND s.client_id = c.client_id
    LEFT JOIN identities AS k ON k.telegram_id = c.telegram_id
),
facts AS (
    SELECT i.id AS identity_id, i.created_at AS seen_at, {t} AS bot_at, {t} AS linked_at,
           {t} AS order_at, {t} AS paid_at, 0 AS orders, {z} AS amount, {named},
           {n} AS deal_utm_source, {n} AS deal_utm_campaign, 0 AS row_id
    FROM identities AS i
    UNION ALL
    SELECT identity_id, first_at, first_at, {t}, {t}, {t}, 0, {z}, {touch}, {n}, {n}, id
    FROM contact
    WHERE identity_id IS NOT NULL
    UNION ALL
    SELECT identity_id, coalesce(created_at, first_at), {t}, {t}, coalesce(created_at, first_at),
           paid_at, 1,
           CASE WHEN paid_amount IS NOT NULL THEN paid_amount
                WHEN paid_at IS NOT NULL THEN cost END,
           {no_touch}, utm_source, utm_campaign, 0
    FROM analytics_deals
    WHERE identity_id IS NOT NULL
    UNION ALL
    SELECT ch.identity_id, ch.changed_at, ch.changed_at, ch.changed_at, {t}, {t}, 0, {z},
           {no_touch}, {n}, {n}, 0
    FROM identity_changes AS ch
    JOIN identities AS h ON h.id = ch.identity_id
    WHERE (h.telegram_id IS NOT NULL
           OR EXISTS (SELECT 1 FROM salebot_clients AS sc WHERE sc.identity_id = h.id))
      AND {sql.has_bot_keys("ch.after")}
    UNION ALL
    SELECT identity_id, coalesce(occurred_at, received_at), {t}, {t}, {t}, {t}, 0, {z},
           {no_touch}, {n}, {n}, 0
    FROM events
    WHERE kind = 'user.created' AND identity_id IS NOT NULL
),
person AS (
    SELECT identity_id, min(seen_at) AS first_seen_at, min(bot_at) AS first_bot_at,
           min(linked_at) AS linked_at, min(order_at) AS first_order_at,
           min(paid_at) AS first_paid_at, sum(orders) AS orders, count(paid_at) AS paid_orders,
           coalesce(sum(amount), {sql.zero()}) AS revenue,
           {first_touch},
           {sql.first("deal_utm_source", "order_at", "row_id")} AS deal_utm_source,
           {sql.first("deal_utm_campaign", "order_at", "row_id")} AS deal_utm_campaign
    FROM facts
    GROUP BY identity_id
)
SELECT i.id AS identity_id, i.email, i.telegram_id,
       (SELECT min(s.client_id) FROM salebot_clients AS s WHERE s.identity_id = i.id)
           AS client_id,
       p.first_seen_at, p.first_bot_at,
       coalesce(p.start, p.utm_source, p.deal_utm_source, '(none)') AS source,
       coalesce(p.utm_campaign, p.deal_utm_campaign) AS utm_campaign,
       p.linked_at, p.first_order_at, p.first_paid_at, p.orders, p.paid_orders, p.revenue
FROM person AS p
JOIN identities AS i ON i.id = p.identity_id
UNION ALL
SELECT NULL, NULL, telegram_id, client_id, first_at, first_at,
       coalesce(start, utm_source, '(none)'), utm_campaign,
       NULL, NULL, NULL, 0, 0, {sql.zero()}
FROM contact
WHERE identity_id IS NULL
"""


def funnel_view(sql: _Sql) -> str:
    return f"""
CREATE VIEW syncd_funnel AS
SELECT {sql.day("first_bot_at")} AS day, source,
       count(*) AS subscribers,
       count(linked_at) AS linked,
       count(first_order_at) AS ordered,
       count(first_paid_at) AS paid,
       sum(revenue) AS revenue
FROM syncd_people
WHERE first_bot_at IS NOT NULL
GROUP BY {sql.day("first_bot_at")}, source
"""


def upgrade() -> None:
    sql = _Sql(op.get_bind().dialect.name)
    create_tables()
    op.execute(fill_deals(sql))
    op.execute(fill_contacts(sql))
    create_triggers(sql)
    op.execute(deals_view())
    op.execute(people_view(sql))
    op.execute(funnel_view(sql))


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (" ON events" if pg else ""))
        if pg:
            op.execute(f"DROP FUNCTION IF EXISTS {trigger}()")
    op.drop_table("analytics_bot_contacts")
    op.drop_index("ix_analytics_deals_identity_id", table_name="analytics_deals")
    op.drop_table("analytics_deals")
