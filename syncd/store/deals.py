"""The deals projection (``analytics_deals``, SPEC §12): one row per GetCourse deal.

:func:`project` runs in the transaction that stores the deal events (``EventStore``),
with the events' data still parsed: a trigger reading ``events.data`` in SQL made a
backfill 5x slower on SQLite (docs/decisions.md, "Analytics"). Every merge is order-free
— the largest amount, the earliest creation and payment, the status of the latest event
(a later arrival wins a tie) — so a deal told by a webhook, the Tech API and the poller in
any order, or twice, comes out the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.errors import InvalidInput
from syncd.events import NewEvent, money
from syncd.store.dialect import COPY_FROM_ROWS, execute_values, merge_many
from syncd.store.models import AnalyticsDeal

KINDS = frozenset({"deal.created", "deal.paid", "deal.status_changed"})
TEXT = ("number", "currency", "title", "utm_source", "utm_medium", "utm_campaign")
LARGEST = ("number", "identity_id", "cost", "paid_amount", *TEXT[1:])
EARLIEST = ("created_at", "first_at", "paid_at")
COLUMNS = ("deal_id", *LARGEST, "status", "status_at", *EARLIEST)
assert COLUMNS == (
    "deal_id", "number", "identity_id", "cost", "paid_amount", "currency", "title",
    "utm_source", "utm_medium", "utm_campaign", "status", "status_at", "created_at",
    "first_at", "paid_at",
)  # fmt: skip


def _amount(value: object) -> str | None:
    """A canonical amount (``"12 000,00"`` → ``"12000"``), None when it is none."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return money(str(value))
    except InvalidInput:
        return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    cleaned = str(value).strip()
    return cleaned or None


def _later(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def _earlier(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


# positions in a row (COLUMNS' order)
_DEAL, _IDENTITY, _COST, _PAID = 0, 2, 3, 4
_STATUS, _STATUS_AT, _CREATED, _FIRST, _PAID_AT = 10, 11, 12, 13, 14


def rows(events: Iterable[tuple[NewEvent, int | None]], now: datetime) -> list[list[Any]]:
    """One merged row (COLUMNS' order) per deal of ``(event, identity_id)`` pairs.

    The events of one export row share their ``data``: its fields are read once, and an
    event whose ``data`` and person are those the deal's row merged last merges only its
    time (merging the same values again changes nothing: every merge is a largest or an
    earliest).
    """
    merged: dict[str, list[Any]] = {}
    last: dict[str, tuple[dict[str, Any], int | None]] = {}  # what each row merged last
    fields: dict[int, tuple[Any, ...]] = {}
    for event, identity_id in events:
        kind = event.kind
        if kind not in KINDS:
            continue
        data = event.data
        known = fields.get(id(data))
        if known is None:
            known = fields[id(data)] = _fields(data)
        deal_id = known[0]
        if deal_id is None:
            continue
        at = event.occurred_at or now
        status = known[-1]
        old = merged.get(deal_id)
        if old is None:
            _, cost, paid, number, *texts, _ = known
            merged[deal_id] = [
                deal_id, number, identity_id, cost, paid, *texts, status,
                at if status is not None else None,
                at if kind == "deal.created" else None,
                at,
                at if kind == "deal.paid" else None,
            ]  # fmt: skip
            last[deal_id] = (data, identity_id)
            continue
        seen_data, seen_identity = last[deal_id]
        if seen_data is not data or seen_identity != identity_id:
            _merge_values(old, known, identity_id)
            last[deal_id] = (data, identity_id)
        if kind == "deal.created":
            old[_CREATED] = _earlier(old[_CREATED], at)
        elif kind == "deal.paid":
            old[_PAID_AT] = _earlier(old[_PAID_AT], at)
        old[_FIRST] = _earlier(old[_FIRST], at)
        if status is not None and (old[_STATUS_AT] is None or at >= old[_STATUS_AT]):
            old[_STATUS], old[_STATUS_AT] = status, at
    return list(merged.values())


def _fields(data: dict[str, Any]) -> tuple[Any, ...]:
    """(deal_id, cost, paid_amount, number, currency … utm_campaign, status), cleaned."""
    get = data.get
    return (
        _text(get("deal_id")), _amount(get("cost")), _amount(get("paid_amount")),
        _text(get("number")), _text(get("currency")), _text(get("title")),
        _text(get("utm_source")), _text(get("utm_medium")), _text(get("utm_campaign")),
        _text(get("status")),
    )  # fmt: skip


def _merge_values(old: list[Any], known: tuple[Any, ...], identity_id: int | None) -> None:
    """The largest of each value column (the amounts as numbers) into ``old``."""
    _, cost, paid, number, *texts, _ = known
    old[1] = _later(old[1], number)
    old[_IDENTITY] = _later(old[_IDENTITY], identity_id)
    for i, value in enumerate(texts, 5):  # currency … utm_campaign
        old[i] = _later(old[i], value)
    old[_COST] = _later_amount(old[_COST], cost)
    old[_PAID] = _later_amount(old[_PAID], paid)


_MONEY = frozenset({"cost", "paid_amount"})
_TABLE = cast(Table, AnalyticsDeal.__table__)


def _later_amount(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if float(a) >= float(b) else b


@lru_cache(maxsize=4)
def _update(dialect: str) -> str:
    """The ``SET`` list of the upsert: each column merged as :func:`rows` merges it."""
    t = "analytics_deals"

    def largest(name: str) -> str:
        if dialect == "postgresql":
            return f"{name} = greatest({t}.{name}, excluded.{name})"
        both = f"coalesce({t}.{name}, excluded.{name})"
        return f"{name} = max(coalesce({t}.{name}, {both}), coalesce(excluded.{name}, {both}))"

    def earliest(name: str) -> str:
        if dialect == "postgresql":
            return f"{name} = least({t}.{name}, excluded.{name})"
        both = f"coalesce({t}.{name}, excluded.{name})"
        return f"{name} = min(coalesce({t}.{name}, {both}), coalesce(excluded.{name}, {both}))"

    newer = (
        f"excluded.status IS NOT NULL AND ({t}.status IS NULL"
        f" OR excluded.status_at >= {t}.status_at)"
    )
    sets = [largest(n) for n in LARGEST] + [earliest(n) for n in EARLIEST]
    sets += [
        f"status = CASE WHEN {newer} THEN excluded.status ELSE {t}.status END",
        f"status_at = CASE WHEN {newer} THEN excluded.status_at ELSE {t}.status_at END",
    ]
    return ", ".join(sets)


# names are this module's constants, never input; the values are bound
_HEAD = f"INSERT INTO analytics_deals ({', '.join(COLUMNS)})"


@lru_cache(maxsize=4)
def _one_row(dialect: str) -> str:
    """A row's placeholders in the upsert's ``VALUES``."""
    mark = "%s" if dialect == "postgresql" else "?"
    return (
        "(" + ", ".join(f"CAST({mark} AS NUMERIC)" if n in _MONEY else mark for n in COLUMNS) + ")"
    )


@lru_cache(maxsize=4)
def _tail(dialect: str) -> str:
    return f"ON CONFLICT (deal_id) DO UPDATE SET {_update(dialect)}"


@lru_cache(maxsize=4)
def _upsert(dialect: str) -> str:
    """The upsert of one row."""
    return f"{_HEAD} VALUES {_one_row(dialect)} {_tail(dialect)}"


async def project(
    conn: AsyncConnection, events: Iterable[tuple[NewEvent, int | None]], now: datetime
) -> int:
    """Merge the deal events among ``(event, identity_id)`` into ``analytics_deals``.

    Call it in the transaction that stores the events, with the events that were new
    (repeats are harmless: merging a deal event twice changes nothing it did not the
    first time). ``now`` is the events' ``received_at`` (their time when they have no
    ``occurred_at``). Returns the number of deals touched.

    The rows are merged per deal here, so the database sees each deal once (a ``DO
    UPDATE`` may touch a row once per statement), and many deals go in one statement:
    on SQLite multi-row ``INSERT … VALUES … ON CONFLICT DO UPDATE`` statements of 100
    deals (:func:`~syncd.store.dialect.execute_values`); on PostgreSQL, from
    :data:`~syncd.store.dialect.COPY_FROM_ROWS` deals on, ``COPY`` into a staging table
    and one ``INSERT … SELECT … ON CONFLICT DO UPDATE``
    (:func:`~syncd.store.dialect.merge_many`), fewer by ``executemany``. One upsert per
    deal was most of a backfill's time on PostgreSQL (docs/performance.md).
    """
    found = rows(events, now)
    if not found:
        return 0
    dialect = conn.dialect.name
    # driver values, as EventStore writes events: SQLAlchemy's per-value processing of a
    # text() statement doubled a backfill's CPU time
    if dialect == "sqlite":
        _as_sqlite_text(found)
        await execute_values(conn, _HEAD, _one_row(dialect), found, _tail(dialect))
    elif len(found) >= COPY_FROM_ROWS:
        await merge_many(conn, _TABLE, COLUMNS, found, ("deal_id",), _update(dialect))
    else:
        await conn.exec_driver_sql(_upsert(dialect), [tuple(row) for row in found])
    return len(found)


_TIMES = (_STATUS_AT, _CREATED, _FIRST, _PAID_AT)


def _as_sqlite_text(found: list[list[Any]]) -> None:
    """The rows' times as SQLAlchemy stores them in SQLite (``UTCDateTime``), in place.

    A deal's times are mostly one and the same object (an export row's moment), and
    formatting it was a tenth of a backfill's CPU: each object is formatted once.
    """
    done: dict[int, tuple[datetime, str]] = {}
    for row in found:
        for i in _TIMES:
            value = row[i]
            if value is None:
                continue
            hit = done.get(id(value))
            if hit is None or hit[0] is not value:
                hit = done[id(value)] = (value, _sqlite_text(value))
            row[i] = hit[1]


def _sqlite_text(value: datetime) -> str:
    """A UTC moment as SQLAlchemy stores it in SQLite (``UTCDateTime``)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]
