"""The tables of syncd (SPEC §4). The schema itself is made by Alembic, never by create_all."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: BIGINT on PostgreSQL; INTEGER (the rowid alias, so it auto-increments) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on both databases (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class Identity(Base):
    """One person."""

    __tablename__ = "identities"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    telegram_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    gc_user_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    #: The keys a successful GetCourse import last wrote into the person's custom fields
    #: (SPEC §11): ``syncd writeback sync`` queues the write where they differ.
    gc_telegram_id: Mapped[int | None] = mapped_column(BigInteger)
    gc_client_id: Mapped[int | None] = mapped_column(BigInteger)


class SalebotClient(Base):
    """A person's client id in one Salebot project (one per project)."""

    __tablename__ = "salebot_clients"
    __table_args__ = (UniqueConstraint("identity_id", "project_id"),)
    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    client_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    identity_id: Mapped[int] = mapped_column(BigId, ForeignKey("identities.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]


class IdentityChange(Base):
    """Append-only trace of every change to an identity: before/after keys, source, time."""

    __tablename__ = "identity_changes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: NULL only on the trace ``syncd identity forget`` leaves (the identity is gone)
    identity_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("identities.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(32))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any]]
    reason: Mapped[str] = mapped_column(Text, server_default="")
    changed_at: Mapped[datetime]


class LinkConflict(Base):
    """A rejected link, kept for an operator. A repeat of an open one bumps ``seen_count``."""

    __tablename__ = "link_conflicts"
    __table_args__ = (Index("ix_link_conflicts_status_email", "status", "email"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'open'"))
    source: Mapped[str] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(320))
    telegram_id: Mapped[int | None] = mapped_column(BigInteger)
    project_id: Mapped[int] = mapped_column(BigInteger)
    client_id: Mapped[int | None] = mapped_column(BigInteger)
    holders: Mapped[dict[str, Any]]
    reason: Mapped[str] = mapped_column(Text)
    seen_count: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class Delivery(Base):
    """The outbox (SPEC §5): one outgoing call, inserted with the change that causes it.

    ``status``: ``pending`` (due at ``next_attempt_at``) → ``sending`` (claimed by
    ``lease_owner`` until ``leased_until``) → ``sent`` | ``dead`` (``last_error`` says why).
    ``waiting`` rows wait for something named in ``waiting_for`` (``gc_user_id``).
    ``age_from`` is when ``delivery.max_age`` starts counting (reset by a replay).
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_identity_id_status", "identity_id", "status"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    target: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    identity_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("identities.id", ondelete="SET NULL")
    )
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    waiting_for: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime]
    age_from: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    leased_until: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]


class Event(Base):
    """One GetCourse event (SPEC §6), unique per ``(kind, external_id)`` across sources.

    ``status``: ``done`` (rules applied: deliveries enqueued, or none apply),
    ``waiting_link`` (a rule needs a Telegram id or client id the person does not have
    yet; kept until ``wait_until``), ``expired`` (waited in vain). ``notes`` says why a
    rule gave no delivery.
    """

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("kind", "external_id"),
        # Partial indexes. Their WHERE is spelled in the migrations only (which make the
        # schema): ``sqlite_where=`` / ``postgresql_where=`` here would make SQLAlchemy
        # import both dialect packages in every process to check the keywords — the
        # PostgreSQL one is ~2.5 MiB of a daemon's idle RSS on SQLite (docs/performance.md).
        # The running daemon never emits DDL; Alembic's comparison does not read WHERE.
        # the only secondary index: every index is written for every event (migration
        # 0005); WHERE status = 'waiting_link'
        Index("ix_events_waiting_link", "identity_id"),
        # bot events of people no link names yet, found again when one does (0006);
        # both WHERE identity_id IS NULL
        Index("ix_events_unlinked_telegram_id", "telegram_id"),
        Index("ix_events_unlinked_client_id", "project_id", "client_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime]
    email: Mapped[str | None] = mapped_column(String(320))
    gc_user_id: Mapped[int | None] = mapped_column(BigInteger)
    identity_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("identities.id", ondelete="SET NULL")
    )
    data: Mapped[dict[str, Any]]
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    wait_until: Mapped[datetime | None]
    notes: Mapped[str] = mapped_column(Text, server_default="")
    #: A bot event's Salebot keys (SPEC §10); empty for GetCourse events.
    telegram_id: Mapped[int | None] = mapped_column(BigInteger)
    client_id: Mapped[int | None] = mapped_column(BigInteger)
    project_id: Mapped[int | None] = mapped_column(BigInteger)


class ExportState(Base):
    """One GetCourse export the poller runs (``deals``, ``groups:7``, ``backfill:deals``…).

    ``pending_export_id`` is stored (and committed) right after the export is started,
    before it is collected, so a restart collects it instead of starting another.
    ``cursor`` — the lower date bound of the next poll — moves only after the rows are
    committed.
    """

    __tablename__ = "export_state"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[date | None] = mapped_column(Date)
    pending_export_id: Mapped[int | None] = mapped_column(BigInteger)
    pending_filters: Mapped[dict[str, Any] | None]
    pending_since: Mapped[datetime | None]
    last_run_at: Mapped[datetime | None]
    last_rows: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_errors: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str] = mapped_column(Text, server_default="")


class ExportRequest(Base):
    """Every export request made (starts and polls): the account's budget, counted."""

    __tablename__ = "export_requests"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    export: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))


class AnalyticsDeal(Base):
    """One GetCourse deal, however many sources told of it (SPEC §12; view ``syncd_deals``).

    Written by :func:`syncd.store.deals.project` in the transaction of the deal events.
    """

    __tablename__ = "analytics_deals"
    deal_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    number: Mapped[str | None] = mapped_column(String(64))
    identity_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("identities.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[str | None] = mapped_column(String(64))
    status_at: Mapped[datetime | None]
    cost: Mapped[Decimal | None] = mapped_column(Numeric())
    paid_amount: Mapped[Decimal | None] = mapped_column(Numeric())
    currency: Mapped[str | None] = mapped_column(String(16))
    title: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None]
    first_at: Mapped[datetime]
    paid_at: Mapped[datetime | None]
    utm_source: Mapped[str | None] = mapped_column(Text)
    utm_medium: Mapped[str | None] = mapped_column(Text)
    utm_campaign: Mapped[str | None] = mapped_column(Text)


class AnalyticsBotContact(Base):
    """A bot subscriber's first contact and first touch (SPEC §12; view ``syncd_people``).

    ``key`` is ``sb:{project}:{client}`` or ``tg:{telegram_id}``. Written only by triggers
    on ``events`` (migration 0007).
    """

    __tablename__ = "analytics_bot_contacts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int | None] = mapped_column(BigInteger)
    client_id: Mapped[int | None] = mapped_column(BigInteger)
    telegram_id: Mapped[int | None] = mapped_column(BigInteger)
    first_at: Mapped[datetime]
    start: Mapped[str | None] = mapped_column(Text)
    start_at: Mapped[datetime | None]
    utm_source: Mapped[str | None] = mapped_column(Text)
    utm_source_at: Mapped[datetime | None]
    utm_campaign: Mapped[str | None] = mapped_column(Text)
    utm_campaign_at: Mapped[datetime | None]
