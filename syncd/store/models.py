"""The tables of syncd (SPEC §4). The schema itself is made by Alembic, never by create_all.

SQLAlchemy Core, not the ORM: syncd reads and writes with Core statements only, and the
ORM (``sqlalchemy.orm``) is ~7.7 MiB of a running daemon's RSS (``bench/idle_rss.py``).
Each table is still spelled as a class: its columns are class attributes
(``Event.kind``), the class stands for its table in ``select()``, ``insert()``,
``update()`` and ``delete()``, and ``Event.__table__`` is the :class:`~sqlalchemy.Table`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.schema import SchemaItem
from sqlalchemy.types import TypeEngine

_T = TypeVar("_T")

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


if TYPE_CHECKING:

    class _Column(Generic[_T]):
        """How mypy sees a column attribute: read from its class, a ``Column[_T]``.

        (SQLAlchemy types a ``Column`` read from a class as ``Never``, to keep Core
        columns from passing for ORM attributes.)
        """

        def __get__(self, instance: object, owner: Any) -> Column[_T]: ...


def json_object() -> TypeEngine[dict[str, Any]]:
    """JSON holding an object: a dict in Python."""
    return cast("TypeEngine[dict[str, Any]]", JSON())


def column(
    type_: TypeEngine[_T] | type[TypeEngine[_T]], *args: SchemaItem, **kw: Any
) -> _Column[_T]:
    """A NOT NULL column (its name is the attribute's)."""
    return cast("_Column[_T]", Column(type_, *args, nullable=False, **kw))


def nullable(
    type_: TypeEngine[_T] | type[TypeEngine[_T]], *args: SchemaItem, **kw: Any
) -> _Column[_T | None]:
    """A column that may be NULL (its name is the attribute's)."""
    return cast("_Column[_T | None]", Column(type_, *args, nullable=True, **kw))


class Base:
    """One table, spelled as a class whose :class:`~sqlalchemy.Column` attributes are its
    columns, in order; ``__tablename__`` and ``__table_args__`` as in declarative."""

    metadata: ClassVar[MetaData] = MetaData(naming_convention=NAMING)
    __tablename__: ClassVar[str]
    __table_args__: ClassVar[tuple[Any, ...]] = ()
    __table__: ClassVar[FromClause]  # a Table, typed as declarative types it

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        columns: list[Column[Any]] = []
        for key, value in vars(cls).items():
            if isinstance(value, Column):
                value.name = value.key = key
                columns.append(value)
        cls.__table__ = Table(cls.__tablename__, cls.metadata, *columns, *cls.__table_args__)

    @classmethod
    def __clause_element__(cls) -> FromClause:
        """The table, wherever SQLAlchemy is given the class (``select(Event)``)."""
        return cls.__table__


class Identity(Base):
    """One person."""

    __tablename__ = "identities"
    id = column(BigId, primary_key=True)
    email = column(String(320), unique=True)
    telegram_id = nullable(BigInteger, unique=True)
    gc_user_id = nullable(BigInteger, unique=True)
    created_at = column(UTCDateTime())
    updated_at = column(UTCDateTime())
    #: The keys a successful GetCourse import last wrote into the person's custom fields
    #: (SPEC §11): ``syncd writeback sync`` queues the write where they differ.
    gc_telegram_id = nullable(BigInteger)
    gc_client_id = nullable(BigInteger)


class SalebotClient(Base):
    """A person's client id in one Salebot project (one per project)."""

    __tablename__ = "salebot_clients"
    __table_args__ = (UniqueConstraint("identity_id", "project_id"),)
    project_id = column(BigInteger, primary_key=True)
    client_id = column(BigInteger, primary_key=True)
    identity_id = column(BigId, ForeignKey("identities.id", ondelete="CASCADE"))
    created_at = column(UTCDateTime())


class IdentityChange(Base):
    """Append-only trace of every change to an identity: before/after keys, source, time."""

    __tablename__ = "identity_changes"
    id = column(BigId, primary_key=True)
    #: NULL only on the trace ``syncd identity forget`` leaves (the identity is gone)
    identity_id = nullable(BigId, ForeignKey("identities.id", ondelete="CASCADE"), index=True)
    source = column(String(32))
    before = nullable(json_object())
    after = column(json_object())
    reason = column(Text, server_default="")
    changed_at = column(UTCDateTime())


class LinkConflict(Base):
    """A rejected link, kept for an operator. A repeat of an open one bumps ``seen_count``."""

    __tablename__ = "link_conflicts"
    __table_args__ = (Index("ix_link_conflicts_status_email", "status", "email"),)
    id = column(BigId, primary_key=True)
    status = column(String(16), server_default=text("'open'"))
    source = column(String(32))
    email = column(String(320))
    telegram_id = nullable(BigInteger)
    project_id = column(BigInteger)
    client_id = nullable(BigInteger)
    holders = column(json_object())
    reason = column(Text)
    seen_count = column(Integer, server_default=text("1"))
    created_at = column(UTCDateTime())
    last_seen_at = column(UTCDateTime())


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
    id = column(BigId, primary_key=True)
    target = column(String(16))
    action = column(String(32))
    payload = column(json_object())
    identity_id = nullable(BigId, ForeignKey("identities.id", ondelete="SET NULL"))
    dedupe_key = nullable(String(200), unique=True)
    status = column(String(16))
    waiting_for = nullable(String(32))
    attempts = column(Integer, server_default=text("0"))
    created_at = column(UTCDateTime())
    age_from = column(UTCDateTime())
    next_attempt_at = column(UTCDateTime())
    leased_until = nullable(UTCDateTime())
    lease_owner = nullable(String(64))
    last_error = nullable(Text)
    finished_at = nullable(UTCDateTime())


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
    id = column(BigId, primary_key=True)
    kind = column(String(64))
    external_id = column(String(128))
    occurred_at = nullable(UTCDateTime())
    received_at = column(UTCDateTime())
    email = nullable(String(320))
    gc_user_id = nullable(BigInteger)
    identity_id = nullable(BigId, ForeignKey("identities.id", ondelete="SET NULL"))
    data = column(json_object())
    source = column(String(16))
    status = column(String(16))
    wait_until = nullable(UTCDateTime())
    notes = column(Text, server_default="")
    #: A bot event's Salebot keys (SPEC §10); empty for GetCourse events.
    telegram_id = nullable(BigInteger)
    client_id = nullable(BigInteger)
    project_id = nullable(BigInteger)


class ExportState(Base):
    """One GetCourse export the poller runs (``deals``, ``groups:7``, ``backfill:deals``…).

    ``pending_export_id`` is stored (and committed) right after the export is started,
    before it is collected, so a restart collects it instead of starting another.
    ``cursor`` — the lower date bound of the next poll — moves only after the rows are
    committed.
    """

    __tablename__ = "export_state"
    name = column(String(64), primary_key=True)
    cursor = nullable(Date)
    pending_export_id = nullable(BigInteger)
    pending_filters = nullable(json_object())
    pending_since = nullable(UTCDateTime())
    last_run_at = nullable(UTCDateTime())
    last_rows = column(Integer, server_default=text("0"))
    last_errors = column(Integer, server_default=text("0"))
    last_error = column(Text, server_default="")


class ExportRequest(Base):
    """Every export request made (starts and polls): the account's budget, counted."""

    __tablename__ = "export_requests"
    id = column(BigId, primary_key=True)
    at = column(UTCDateTime(), index=True)
    export = column(String(64))
    kind = column(String(16))


class AnalyticsDeal(Base):
    """One GetCourse deal, however many sources told of it (SPEC §12; view ``syncd_deals``).

    Written by :func:`syncd.store.deals.project` in the transaction of the deal events.
    """

    __tablename__ = "analytics_deals"
    deal_id = column(String(128), primary_key=True)
    number = nullable(String(64))
    identity_id = nullable(BigId, ForeignKey("identities.id", ondelete="SET NULL"), index=True)
    status = nullable(String(64))
    status_at = nullable(UTCDateTime())
    cost = nullable(Numeric())
    paid_amount = nullable(Numeric())
    currency = nullable(String(16))
    title = nullable(Text)
    created_at = nullable(UTCDateTime())
    first_at = column(UTCDateTime())
    paid_at = nullable(UTCDateTime())
    utm_source = nullable(Text)
    utm_medium = nullable(Text)
    utm_campaign = nullable(Text)


class AnalyticsBotContact(Base):
    """A bot subscriber's first contact and first touch (SPEC §12; view ``syncd_people``).

    ``key`` is ``sb:{project}:{client}`` or ``tg:{telegram_id}``. Written only by triggers
    on ``events`` (migration 0007).
    """

    __tablename__ = "analytics_bot_contacts"
    id = column(BigId, primary_key=True)
    key = column(String(64), unique=True)
    project_id = nullable(BigInteger)
    client_id = nullable(BigInteger)
    telegram_id = nullable(BigInteger)
    first_at = column(UTCDateTime())
    start = nullable(Text)
    start_at = nullable(UTCDateTime())
    utm_source = nullable(Text)
    utm_source_at = nullable(UTCDateTime())
    utm_campaign = nullable(Text)
    utm_campaign_at = nullable(UTCDateTime())
