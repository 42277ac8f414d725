"""The deliveries table on both databases: claim with a lease, outcomes, replay, waiting."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store import outbox
from syncd.store.models import Delivery, utcnow
from syncd.store.outbox import NewDelivery, Outcome

LEASE = timedelta(seconds=30)


async def fill(engine: AsyncEngine, n: int, **kw: object) -> None:
    async with engine.begin() as conn:
        await outbox.enqueue(
            conn,
            [NewDelivery("salebot", "callback", {"client_id": i}, **kw) for i in range(n)],  # type: ignore[arg-type]
        )


async def statuses(engine: AsyncEngine) -> dict[int, str]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(Delivery.id, Delivery.status))).all())


async def test_claim_leases_and_counts_the_attempt(engine: AsyncEngine) -> None:
    await fill(engine, 5)
    first = await outbox.claim(engine, "a", 3, LEASE)
    assert [c.attempts for c in first] == [1, 1, 1]
    second = await outbox.claim(engine, "b", 10, LEASE)
    assert {c.id for c in first}.isdisjoint({c.id for c in second}) and len(second) == 2
    assert await outbox.claim(engine, "c", 10, LEASE) == []


async def test_only_the_lease_owner_records(engine: AsyncEngine) -> None:
    await fill(engine, 2)
    one, two = await outbox.claim(engine, "a", 2, LEASE)
    await outbox.record(engine, "intruder", [Outcome(one.id, "sent")])
    await outbox.record(engine, "a", [Outcome(two.id, "dead", "client_not_found")])
    assert await statuses(engine) == {one.id: "sending", two.id: "dead"}


async def test_an_expired_lease_is_taken_again(engine: AsyncEngine) -> None:
    await fill(engine, 1)
    (row,) = await outbox.claim(engine, "crashed", 1, LEASE)
    async with engine.begin() as conn:  # the owner died and its lease ran out
        await conn.execute(update(Delivery).values(leased_until=utcnow() - timedelta(seconds=1)))
    (again,) = await outbox.claim(engine, "b", 1, LEASE)
    assert again.id == row.id and again.attempts == 2
    await outbox.record(engine, "crashed", [Outcome(row.id, "sent")])  # too late: ignored
    await outbox.record(engine, "b", [Outcome(row.id, "sent")])
    assert await statuses(engine) == {row.id: "sent"}


async def test_retry_and_release(engine: AsyncEngine) -> None:
    await fill(engine, 2)
    one, two = await outbox.claim(engine, "a", 2, LEASE)
    later = utcnow() + timedelta(hours=1)
    await outbox.record(
        engine, "a", [Outcome(one.id, "retry", "HTTP 503", later), Outcome(two.id, "released")]
    )
    (again,) = await outbox.claim(engine, "a", 5, LEASE)  # only the released one is due
    assert again.id == two.id and again.attempts == 1  # the release gave the attempt back
    figures = await outbox.stats(engine)
    assert figures["pending"] == 1 and figures["sending"] == 1
    listed = await outbox.listing(engine, "pending", 10)
    assert listed[0]["last_error"] == "HTTP 503"
    async with engine.begin() as conn:  # one row overdue by a minute
        await conn.execute(
            update(Delivery)
            .where(Delivery.id == one.id)
            .values(next_attempt_at=utcnow() - timedelta(minutes=1))
        )
    assert 60 <= (await outbox.stats(engine))["oldest_due_age_seconds"] < 70


async def test_replay_dead(engine: AsyncEngine) -> None:
    await fill(engine, 3)
    rows = await outbox.claim(engine, "a", 3, LEASE)
    await outbox.record(engine, "a", [Outcome(r.id, "dead", "HTTP 403") for r in rows[:2]])
    await outbox.record(engine, "a", [Outcome(rows[2].id, "sent")])
    requeued, refused = await outbox.retry(engine, [rows[0].id, rows[2].id, 999])
    assert requeued == [rows[0].id]
    assert refused == {rows[2].id: "sent", 999: "unknown"}
    assert (await outbox.retry(engine, None))[0] == [rows[1].id]
    again = await outbox.claim(engine, "a", 5, LEASE)
    assert sorted(r.id for r in again) == [rows[0].id, rows[1].id]
    assert {r.attempts for r in again} == {1}


async def test_waiting_rows_wait_until_released(engine: AsyncEngine) -> None:
    from syncd.identity import LinkClaim
    from syncd.store.links import LinkRequest, LinkStore

    (result,) = await LinkStore(engine, "reject").apply(
        [LinkRequest(LinkClaim("a@school.ru", 1, 294495, None), "t")]
    )
    assert result.identity_id is not None
    await fill(engine, 2, identity_id=result.identity_id, waiting_for="gc_user_id")
    assert await outbox.claim(engine, "a", 5, LEASE) == []
    assert (await outbox.stats(engine))["waiting"] == 2
    async with engine.begin() as conn:
        assert await outbox.release_waiting(conn, result.identity_id, "gc_user_id") == 2
    assert len(await outbox.claim(engine, "a", 5, LEASE)) == 2


async def test_concurrent_claimers_never_share_a_row(db_url: str) -> None:
    from syncd.store.engine import create_engine

    engines = [create_engine(db_url) for _ in range(3)]
    try:
        await fill(engines[0], 300)
        taken: list[int] = []

        async def claimer(i: int) -> None:
            while rows := await outbox.claim(engines[i], f"d{i}", 7, LEASE):
                taken.extend(r.id for r in rows)

        await asyncio.gather(*(claimer(i) for i in range(3)))
        assert len(taken) == len(set(taken)) == 300
    finally:
        for engine in engines:
            await engine.dispose()
