"""The deals projection (``analytics_deals``) written in bulk is the one written deal by deal.

:func:`syncd.store.deals.project` merges a batch's events per deal in Python and sends
the merged rows many at a time (SQLite: multi-row ``INSERT … ON CONFLICT DO UPDATE``;
PostgreSQL: ``COPY`` into a staging table and one ``INSERT … SELECT … ON CONFLICT DO
UPDATE`` from 64 deals on). These tests hold it to the simplest definition: the same
events upserted one at a time give the same rows, in batches or not.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.errors import InvalidInput
from syncd.events import NewEvent, money
from syncd.store import deals
from syncd.store.dialect import COPY_FROM_ROWS
from syncd.store.events import Addressing, EventStore
from syncd.store.models import AnalyticsDeal, Event, Identity

KINDS = ("deal.created", "deal.paid", "deal.status_changed")
BASE = datetime(2025, 3, 1, 9, tzinfo=UTC)
MSK = timezone(timedelta(hours=3))
AMOUNTS = ("12 000,00", "12000", "99,5", "99.50", "0", "1,200.50", "300 руб.", "none", "", None)


# --------------------------------------------------------------------------- a reference


def reference_rows(events: list[tuple[NewEvent, int | None]], now: datetime) -> list[list[Any]]:
    """The merge as first written (issue 12): a full row per event, merged column by column."""

    def amount(value: object) -> str | None:
        if value is None or isinstance(value, bool):
            return None
        try:
            return money(str(value))
        except InvalidInput:
            return None

    def clean(value: object) -> str | None:
        return (str(value).strip() or None) if value is not None else None

    def later(a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else max(a, b)

    def earlier(a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else min(a, b)

    def later_amount(a: str | None, b: str | None) -> str | None:
        if a is None or b is None:
            return a or b
        return a if float(a) >= float(b) else b

    merged: dict[str, list[Any]] = {}
    for event, identity_id in events:
        if event.kind not in deals.KINDS:
            continue
        data = event.data
        deal_id = clean(data.get("deal_id"))
        if deal_id is None:
            continue
        texts = [clean(data.get(name)) for name in deals.TEXT]
        status = clean(data.get("status"))
        at = event.occurred_at or now
        row: list[Any] = [
            deal_id, texts[0], identity_id, amount(data.get("cost")),
            amount(data.get("paid_amount")), *texts[1:], status,
            at if status is not None else None,
            at if event.kind == "deal.created" else None,
            at,
            at if event.kind == "deal.paid" else None,
        ]  # fmt: skip
        old = merged.get(deal_id)
        if old is None:
            merged[deal_id] = row
            continue
        for i in (1, 2, *range(5, 10)):
            old[i] = later(old[i], row[i])
        old[3] = later_amount(old[3], row[3])
        old[4] = later_amount(old[4], row[4])
        for i in (12, 13, 14):
            old[i] = earlier(old[i], row[i])
        if status is not None and (old[11] is None or at >= old[11]):
            old[10], old[11] = status, at
    return list(merged.values())


def random_events(
    rng: random.Random, deals_count: int, prefix: str = "", identities: tuple[int, ...] = (1, 2)
) -> list[tuple[NewEvent, int | None]]:
    """Export-like rows (1-3 events sharing one ``data``) and webhook-like single events,
    for few deals, with ties, missing fields, odd amounts and several time zones."""
    out: list[tuple[NewEvent, int | None]] = []
    for n in range(deals_count * 3):
        deal_id = f"{prefix}{rng.randrange(deals_count)}"
        data: dict[str, Any] = {"deal_id": deal_id if rng.random() > 0.02 else " "}
        for name in ("number", "currency", "title", "utm_source", "utm_medium", "utm_campaign"):
            if rng.random() < 0.6:
                data[name] = rng.choice(["a", "b", " c ", "", "Курс", str(rng.randrange(3))])
        for name in ("cost", "paid_amount"):
            if rng.random() < 0.7:
                data[name] = rng.choice(AMOUNTS)
        if rng.random() < 0.8:
            data["status"] = rng.choice(["new", "payed", "cancelled", "", None])
        identity = rng.choice((None, *identities))
        moment = rng.choice(
            [
                None,
                BASE + timedelta(minutes=rng.randrange(20)),
                (BASE + timedelta(minutes=rng.randrange(20))).astimezone(MSK),
            ]
        )
        kinds = rng.sample(KINDS, rng.randint(1, 3)) if rng.random() < 0.7 else [rng.choice(KINDS)]
        for kind in kinds:  # the events of one export row share its data and moment
            out.append((NewEvent(kind, f"{prefix}{n}:{kind}", "poller", None, None, moment, data),
                        identity))  # fmt: skip
    return out


def test_rows_merge_as_the_reference_does() -> None:
    rng = random.Random(20261202)
    now = BASE + timedelta(minutes=10)
    for _ in range(300):
        events = random_events(rng, rng.randint(1, 12))
        if rng.random() < 0.5:
            rng.shuffle(events)
        assert deals.rows(events, now) == reference_rows(events, now)


# --------------------------------------------------------------------------- the database


async def stored(engine: AsyncEngine, prefix: str) -> dict[str, tuple[Any, ...]]:
    """The projection's rows of one prefix's deals, keyed without the prefix."""
    async with engine.connect() as conn:
        found = await conn.execute(
            select(AnalyticsDeal.__table__).where(AnalyticsDeal.deal_id.startswith(prefix))
        )
        return {row.deal_id[len(prefix) :]: tuple(row)[1:] for row in found}


async def identities(engine: AsyncEngine, n: int) -> tuple[int, ...]:
    async with engine.begin() as conn:
        made = await conn.execute(
            insert(Identity).returning(Identity.id),
            [
                {"email": f"p{i}@school.ru", "created_at": BASE, "updated_at": BASE}
                for i in range(n)
            ],
        )
        return tuple(made.scalars())


async def test_bulk_projection_equals_one_deal_at_a_time(engine: AsyncEngine) -> None:
    """Batches of hundreds of deals (COPY on PostgreSQL, multi-row statements on SQLite),
    into an empty table and then onto the rows already there, equal one event at a time."""
    people = await identities(engine, 3)
    rng = random.Random(7)
    now = BASE + timedelta(minutes=10)
    count = 4 * COPY_FROM_ROWS
    template = random_events(rng, count, identities=people)

    def renamed(prefix: str) -> list[tuple[NewEvent, int | None]]:
        copies: dict[int, dict[str, Any]] = {}  # shared data stays shared
        out = []
        for event, identity in template:
            data = copies.get(id(event.data))
            if data is None:
                data = copies[id(event.data)] = {**event.data}
                if data["deal_id"].strip():
                    data["deal_id"] = prefix + data["deal_id"]
            out.append((NewEvent(event.kind, prefix + event.external_id, event.source, None,
                                 None, event.occurred_at, data), identity))  # fmt: skip
        return out

    bulk, single = renamed("bulk-"), renamed("one-")
    half = len(bulk) // 2
    async with engine.begin() as conn:
        touched = await deals.project(conn, bulk[:half], now)
        assert touched >= COPY_FROM_ROWS  # the bulk path, not the small one
    async with engine.begin() as conn:  # the second half merges onto stored rows
        assert await deals.project(conn, bulk[half:], now) >= COPY_FROM_ROWS
    for pair in single:  # one statement per event (the same order: a later one wins a tie)
        async with engine.begin() as conn:
            await deals.project(conn, [pair], now)
    got, expected = await stored(engine, "bulk-"), await stored(engine, "one-")
    assert len(got) > 3 * COPY_FROM_ROWS
    assert got == expected


async def test_bulk_projection_twice_changes_nothing(engine: AsyncEngine) -> None:
    people = await identities(engine, 2)
    now = BASE + timedelta(minutes=10)
    events = random_events(random.Random(11), 2 * COPY_FROM_ROWS, "x", people)
    async with engine.begin() as conn:
        await deals.project(conn, events, now)
    first = await stored(engine, "x")
    async with engine.begin() as conn:
        await deals.project(conn, events, now)
        await deals.project(conn, events, now)  # twice in one transaction: staging reused
    assert await stored(engine, "x") == first


def export_batch(start: int, count: int) -> list[NewEvent]:
    """A backfill chunk: per deal a deal.created, and for every 3rd a paid and a status."""
    out = []
    for i in range(start, start + count):
        paid = i % 3 == 0
        when = BASE + timedelta(minutes=i)
        data = {"deal_id": str(i), "number": str(1000 + i), "cost": "12 000,00",
                "paid_amount": "12000" if paid else "0",
                "status": "payed" if paid else "new"}  # fmt: skip
        email = f"buyer{i % 5}@school.ru"
        out.append(NewEvent("deal.created", str(i), "poller", email, 2000 + i % 5, when, data))
        if paid:
            out.append(NewEvent("deal.paid", str(i), "poller", email, 2000 + i % 5, when, data))
            out.append(NewEvent("deal.status_changed", f"{i}:payed", "poller", email,
                                2000 + i % 5, when, data))  # fmt: skip
    return out


async def test_backfill_chunk_and_its_deals_commit_together(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ingest_new`` of a chunk of hundreds of deals: the deals are projected in the
    events' transaction — a failure after the projection leaves neither behind."""
    store = EventStore(engine, Addressing((), 1, "", timedelta(hours=1), timedelta(0)))
    project = deals.project

    async def failing(*args: Any) -> int:
        await project(*args)
        raise RuntimeError("after the projection")

    monkeypatch.setattr(deals, "project", failing)
    with pytest.raises(RuntimeError):
        await store.ingest_new(export_batch(0, 3 * COPY_FROM_ROWS))
    monkeypatch.setattr(deals, "project", project)
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Event))).scalar() == 0
        assert (await conn.execute(select(func.count()).select_from(AnalyticsDeal))).scalar() == 0

    counts = await store.ingest_new(export_batch(0, 3 * COPY_FROM_ROWS))
    assert sum(
        n for (_, _, repeat), n in counts.items() if not repeat
    ) == 3 * COPY_FROM_ROWS + 2 * (COPY_FROM_ROWS)
    await store.ingest_new(export_batch(0, 3 * COPY_FROM_ROWS))  # all repeats: no change
    async with engine.connect() as conn:
        found = (
            await conn.execute(
                text(
                    "SELECT count(*), sum(cost), sum(paid_amount), count(paid_at),"
                    " count(identity_id) FROM syncd_deals"
                )
            )
        ).one()
    deals_count, cost, paid, paid_at, known = found
    assert (deals_count, int(cost), int(paid), paid_at, known) == (
        3 * COPY_FROM_ROWS, 12000 * 3 * COPY_FROM_ROWS, 12000 * COPY_FROM_ROWS,
        COPY_FROM_ROWS, 3 * COPY_FROM_ROWS,
    )  # fmt: skip


async def test_sqlite_bulk_statements_have_two_sizes(sqlite_url: str) -> None:
    """Every batch size makes the same two statements (100 rows, one row): the driver
    caches each statement text, and one of its own per size would pile up (MiBs each)."""
    from sqlalchemy import event as sa_event

    from syncd.store.engine import create_engine

    engine = create_engine(sqlite_url)
    seen: set[int] = set()  # rows per statement

    def count(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement.startswith("INSERT INTO analytics_deals"):
            seen.add(statement.count("?") // len(deals.COLUMNS))

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        now = BASE + timedelta(minutes=10)
        for size in (1, 99, 100, 101, 250, 377):
            events = random_events(random.Random(size), size, f"s{size}-", identities=())
            wanted = len(deals.rows(events, now))
            async with engine.begin() as conn:
                assert await deals.project(conn, events, now) == wanted
    finally:
        await engine.dispose()
    assert seen == {100, 1}
