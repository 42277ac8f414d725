"""The event log and the deals name an identity that exists, or nothing.

SQLite keeps ``events.identity_id`` and ``analytics_deals.identity_id`` by foreign keys;
PostgreSQL by statement triggers (migration 0008: one check per statement instead of one
per row, for the backfill's speed). These tests hold both to the same rules: a row naming
no identity is refused and nothing of its statement is written; deleting an identity
leaves its events and deals, unnamed; an identity's id cannot change while named; and
on PostgreSQL a write holds the identities it names, so a concurrent delete waits for it
instead of leaving a reference to nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncd.store.models import AnalyticsDeal, Event, Identity, utcnow


async def _person(conn: AsyncConnection, email: str) -> int:
    now = utcnow()
    found = await conn.scalar(
        insert(Identity).values(email=email, created_at=now, updated_at=now).returning(Identity.id)
    )
    assert found is not None
    return int(found)


def _event(n: int, identity_id: int | None) -> dict[str, Any]:
    return {
        "kind": "deal.created", "external_id": f"d{n}", "received_at": utcnow(),
        "identity_id": identity_id, "data": {"deal_id": str(n)}, "source": "poll",
        "status": "done", "notes": "",
    }  # fmt: skip


def _deal(n: int, identity_id: int | None) -> dict[str, Any]:
    return {"deal_id": str(n), "identity_id": identity_id, "first_at": utcnow()}


async def _count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def test_an_event_naming_no_identity_is_refused_with_its_whole_statement(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        known = await _person(conn, "a@school.ru")
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(Event), [_event(1, known), _event(2, known + 1000)])
    assert await _count(engine, Event) == 0
    async with engine.begin() as conn:  # a known one, or none, is fine
        await conn.execute(insert(Event), [_event(1, known), _event(2, None)])
    assert await _count(engine, Event) == 2


async def test_a_deal_naming_no_identity_is_refused(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        known = await _person(conn, "a@school.ru")
        await conn.execute(insert(AnalyticsDeal), [_deal(1, known), _deal(2, None)])
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(AnalyticsDeal), [_deal(3, known + 1000)])
    with pytest.raises(IntegrityError):  # an update is held to it too
        async with engine.begin() as conn:
            await conn.execute(
                update(AnalyticsDeal).where(AnalyticsDeal.deal_id == "2").values(identity_id=-5)
            )
    assert await _count(engine, AnalyticsDeal) == 2


async def test_an_event_cannot_be_pointed_at_no_identity(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        known = await _person(conn, "a@school.ru")
        await conn.execute(insert(Event), [_event(1, None)])
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(update(Event).values(identity_id=known + 1000))
    async with engine.begin() as conn:
        await conn.execute(update(Event).values(identity_id=known))
        assert await conn.scalar(select(Event.identity_id)) == known


async def test_deleting_an_identity_leaves_its_events_and_deals_unnamed(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        gone = await _person(conn, "gone@school.ru")
        kept = await _person(conn, "kept@school.ru")
        await conn.execute(insert(Event), [_event(1, gone), _event(2, kept), _event(3, gone)])
        await conn.execute(insert(AnalyticsDeal), [_deal(1, gone), _deal(2, kept)])
    async with engine.begin() as conn:
        await conn.execute(delete(Identity).where(Identity.id == gone))
    async with engine.connect() as conn:
        events = dict((await conn.execute(select(Event.external_id, Event.identity_id))).all())
        deals = dict(
            (await conn.execute(select(AnalyticsDeal.deal_id, AnalyticsDeal.identity_id))).all()
        )
    assert events == {"d1": None, "d2": kept, "d3": None}
    assert deals == {"1": None, "2": kept}


async def test_an_identity_named_by_an_event_keeps_its_id(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        named = await _person(conn, "named@school.ru")
        free = await _person(conn, "free@school.ru")
        await conn.execute(insert(Event), [_event(1, named)])
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(update(Identity).where(Identity.id == named).values(id=named + 1000))
    async with engine.begin() as conn:  # one nothing names may be renumbered
        await conn.execute(update(Identity).where(Identity.id == free).values(id=free + 1000))


@pytest.mark.postgres
async def test_a_delete_waits_for_the_write_that_names_the_identity(pg_url: str) -> None:
    """The foreign key locked each identity it checked until the writer ended; the
    trigger does the same once per identity, or a concurrent delete could slip in between
    the check and the commit and leave the new event naming no one."""
    from syncd.store.engine import create_engine

    engine = create_engine(pg_url)
    try:
        async with engine.begin() as conn:
            person = await _person(conn, "a@school.ru")
        async with engine.connect() as writer, engine.connect() as deleter:
            await writer.execute(insert(Event), [_event(1, person), _event(2, person)])
            # the write is not committed: its lock must stop the delete
            await deleter.exec_driver_sql("SET lock_timeout = '200ms'")
            with pytest.raises(DBAPIError, match="lock timeout"):
                await deleter.execute(delete(Identity).where(Identity.id == person))
            await deleter.rollback()
            await writer.commit()
            await deleter.execute(delete(Identity).where(Identity.id == person))
            await deleter.commit()
        async with engine.connect() as conn:
            named = (await conn.execute(select(Event.identity_id))).scalars().all()
        assert named == [None, None]
        assert await _count(engine, Identity) == 0
    finally:
        await engine.dispose()
