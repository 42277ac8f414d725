"""The deals projection (``analytics_deals``, SPEC §12): one row per GetCourse deal.

:func:`project` runs in the transaction that stores the deal events (``EventStore``),
with the events' data still parsed: a trigger reading ``events.data`` in SQL made a
backfill 5x slower on SQLite (docs/decisions.md, "Analytics"). Every merge is order-free
— the largest amount, the earliest creation and payment, the status of the latest event
(a later arrival wins a tie) — so a deal told by a webhook, the Tech API and the poller in
any order, or twice, comes out the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from syncd.errors import InvalidInput
from syncd.events import NewEvent, money

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

    The events of one export row share their ``data``: its fields are read once.
    """
    merged: dict[str, list[Any]] = {}
    fields: dict[int, tuple[Any, ...]] = {}
    for event, identity_id in events:
        kind = event.kind
        if kind not in KINDS:
            continue
        data = event.data
        known = fields.get(id(data))
        if known is None:
            known = fields[id(data)] = (
                _text(data.get("deal_id")),
                _amount(data.get("cost")),
                _amount(data.get("paid_amount")),
                *(_text(data.get(name)) for name in TEXT),
                _text(data.get("status")),
            )
        deal_id, cost, paid, number, *texts, status = known
        if deal_id is None:
            continue
        at = event.occurred_at or now
        row = [
            deal_id, number, identity_id, cost, paid, *texts, status,
            at if status is not None else None,
            at if kind == "deal.created" else None,
            at,
            at if kind == "deal.paid" else None,
        ]  # fmt: skip
        old = merged.get(deal_id)
        if old is None:
            merged[deal_id] = row
            continue
        for i in (1, 2, *range(5, 10)):  # number, identity_id, currency … utm_campaign
            old[i] = _later(old[i], row[i])
        old[_COST] = _later_amount(old[_COST], row[_COST])
        old[_PAID] = _later_amount(old[_PAID], row[_PAID])
        for i in (_CREATED, _FIRST, _PAID_AT):
            old[i] = _earlier(old[i], row[i])
        if status is not None and (old[_STATUS_AT] is None or at >= old[_STATUS_AT]):
            old[_STATUS], old[_STATUS_AT] = status, at
    return list(merged.values())


_MONEY = frozenset({"cost", "paid_amount"})


def _later_amount(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if float(a) >= float(b) else b


@lru_cache(maxsize=4)
def _upsert(dialect: str) -> str:
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
    mark = "%s" if dialect == "postgresql" else "?"
    values = ", ".join(f"CAST({mark} AS NUMERIC)" if n in _MONEY else mark for n in COLUMNS)
    # names are this module's constants, never input; the values are bound
    return (
        f"INSERT INTO {t} ({', '.join(COLUMNS)}) VALUES ({values}) "  # noqa: S608
        f"ON CONFLICT (deal_id) DO UPDATE SET {', '.join(sets)}"
    )


async def project(
    conn: AsyncConnection, events: Iterable[tuple[NewEvent, int | None]], now: datetime
) -> int:
    """Merge the deal events among ``(event, identity_id)`` into ``analytics_deals``.

    Call it in the transaction that stores the events, with the events that were new
    (repeats are harmless: merging a deal event twice changes nothing it did not the
    first time). ``now`` is the events' ``received_at`` (their time when they have no
    ``occurred_at``). Returns the number of deals touched.
    """
    found = rows(events, now)
    if not found:
        return 0
    # driver values, as EventStore writes events: SQLAlchemy's per-value processing of a
    # text() statement doubled a backfill's CPU time
    time = _driver_time(conn.dialect.name)
    params = []
    for row in found:
        for i in (_STATUS_AT, _CREATED, _FIRST, _PAID_AT):
            if row[i] is not None:
                row[i] = time(row[i])
        params.append(tuple(row))
    await conn.exec_driver_sql(_upsert(conn.dialect.name), params)
    return len(found)


def _driver_time(dialect: str) -> Callable[[datetime], Any]:
    if dialect != "sqlite":
        return _as_is
    return _sqlite_text


def _as_is(value: datetime) -> datetime:
    return value


def _sqlite_text(value: datetime) -> str:
    """A UTC moment as SQLAlchemy stores it in SQLite (``UTCDateTime``)."""
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]
