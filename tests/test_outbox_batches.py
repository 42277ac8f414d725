"""The outbox's batched statements on both databases: what one claim takes and what one
record writes, row by row, when a batch mixes every kind of outcome.

A claim is one statement whatever its size; a record writes every ``sent`` row by one
statement and the other outcomes by one ``executemany`` each; outcomes are recorded
through a group commit whose batch survives a poisoned item.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.errors import TransientError
from syncd.outbox import Dispatcher
from syncd.retry import BackoffPolicy
from syncd.store import outbox
from syncd.store.models import Delivery, Identity, utcnow
from syncd.store.outbox import Confirmed, NewDelivery, Outcome

LEASE = timedelta(seconds=30)
POLICY = BackoffPolicy(timedelta(seconds=5), timedelta(hours=1), 12, timedelta(days=3))


async def fill(engine: AsyncEngine, n: int, **kw: Any) -> None:
    async with engine.begin() as conn:
        await outbox.enqueue(
            conn, [NewDelivery("salebot", "callback", {"client_id": i}, **kw) for i in range(n)]
        )


async def rows(engine: AsyncEngine) -> dict[int, Any]:
    async with engine.connect() as conn:
        found = await conn.execute(select(Delivery).order_by(Delivery.id))
        return {row.id: row for row in found}


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def an_identity(engine: AsyncEngine) -> int:
    from syncd.identity import LinkClaim
    from syncd.store.links import LinkRequest, LinkStore

    (result,) = await LinkStore(engine, "reject").apply(
        [LinkRequest(LinkClaim("a@school.ru", 1, 294495, None), "t")]
    )
    assert result.identity_id is not None
    return result.identity_id


async def test_a_claim_takes_expired_leases_and_due_rows_oldest_first(
    engine: AsyncEngine,
) -> None:
    await fill(engine, 6)
    ids = sorted(await rows(engine))
    now = utcnow()
    async with engine.begin() as conn:
        # ids[0]: claimed by a daemon that died (lease passed); ids[1]: a live lease;
        # ids[2]: due later; ids[3]: the oldest pending row; ids[4], ids[5]: due now
        await conn.execute(
            update(Delivery)
            .where(Delivery.id == ids[0])
            .values(
                status="sending",
                lease_owner="dead",
                leased_until=now - timedelta(seconds=1),
                next_attempt_at=now - timedelta(minutes=5),
                attempts=1,
            )
        )
        await conn.execute(
            update(Delivery)
            .where(Delivery.id == ids[1])
            .values(status="sending", lease_owner="alive", leased_until=now + LEASE, attempts=1)
        )
        await conn.execute(
            update(Delivery)
            .where(Delivery.id == ids[2])
            .values(next_attempt_at=now + timedelta(hours=1))
        )
        await conn.execute(
            update(Delivery)
            .where(Delivery.id == ids[3])
            .values(next_attempt_at=now - timedelta(minutes=1))
        )
    first = await outbox.claim(engine, "me", 2, LEASE)
    assert [c.id for c in first] == [ids[0], ids[3]]  # the oldest two, whatever their status
    assert [c.attempts for c in first] == [2, 1]
    rest = await outbox.claim(engine, "me", 10, LEASE)
    assert [c.id for c in rest] == [ids[4], ids[5]]  # never the live lease, never the future
    assert await outbox.claim(engine, "me", 10, LEASE) == []
    stored = await rows(engine)
    assert {i for i, r in stored.items() if r.lease_owner == "me"} == {
        ids[0],
        ids[3],
        ids[4],
        ids[5],
    }
    assert stored[ids[1]].lease_owner == "alive" and stored[ids[2]].status == "pending"


async def test_one_record_writes_a_mixed_batch_row_by_row(engine: AsyncEngine) -> None:
    identity = await an_identity(engine)
    await fill(engine, 7, identity_id=identity)
    claimed = await outbox.claim(engine, "me", 7, LEASE)
    a, b, c, d, e, f, g = (row.id for row in claimed)
    async with engine.begin() as conn:  # g's lease passed and another daemon took it
        await conn.execute(update(Delivery).where(Delivery.id == g).values(lease_owner="other"))
    later = utcnow() + timedelta(minutes=10)
    reply = NewDelivery("salebot", "message", {"client_id": 9}, dedupe_key=f"reply:{b}")
    await outbox.record(
        engine,
        "me",
        [
            Outcome(a, "sent"),
            Outcome(b, "sent", follow_ups=(reply,), confirmed=Confirmed(identity, 77, 88)),
            Outcome(c, "dead", "salebot callback: status client_not_found"),
            Outcome(d, "retry", "salebot callback: HTTP 503", later),
            Outcome(e, "released"),
            Outcome(f, "sent"),
            Outcome(g, "sent"),  # not ours any more: ignored
        ],
    )
    stored = await rows(engine)
    assert {i: stored[i].status for i in (a, b, c, d, e, f, g)} == {
        a: "sent",
        b: "sent",
        c: "dead",
        d: "pending",
        e: "pending",
        f: "sent",
        g: "sending",
    }
    for i in (a, b, c, d, e, f):
        assert stored[i].lease_owner is None and stored[i].leased_until is None
    assert stored[a].finished_at is not None and stored[a].last_error is None
    assert stored[c].last_error == "salebot callback: status client_not_found"
    assert stored[d].last_error == "salebot callback: HTTP 503"
    assert abs((aware(stored[d].next_attempt_at) - aware(later)).total_seconds()) < 1
    assert stored[d].attempts == 1 and stored[e].attempts == 0  # a release gives it back
    assert stored[g].lease_owner == "other"
    (follow_up,) = [r for r in stored.values() if r.dedupe_key == f"reply:{b}"]
    assert follow_up.status == "pending" and follow_up.action == "message"
    async with engine.connect() as conn:
        keys = (
            await conn.execute(
                select(Identity.gc_telegram_id, Identity.gc_client_id).where(
                    Identity.id == identity
                )
            )
        ).one()
    assert tuple(keys) == (77, 88)


async def test_a_poisoned_outcome_does_not_stop_the_rest_of_its_batch(
    engine: AsyncEngine,
) -> None:
    """Outcomes are recorded in one transaction per batch; when one of them cannot be
    written (here a follow-up call whose payload is not JSON), the batch is retried item
    by item: the others are recorded, the poisoned row keeps its lease (to be sent again
    when it expires), and the dispatcher goes on."""
    await fill(engine, 5)
    seen: list[int] = []

    async def sender(action: str, payload: dict[str, Any]) -> object:
        seen.append(payload["client_id"])
        if payload["client_id"] == 2:
            raise TransientError("salebot callback: HTTP 503")
        return None

    dispatcher = Dispatcher(engine, {"salebot": sender}, POLICY, concurrency=8, poll_seconds=60)
    claimed = await outbox.claim(engine, dispatcher.owner, 5, LEASE)
    ids = [row.id for row in claimed]
    poison = NewDelivery("salebot", "message", {"not json": object()})
    outcomes = [
        Outcome(ids[0], "sent"),
        Outcome(ids[1], "sent", follow_ups=(poison,)),
        Outcome(ids[2], "dead", "salebot callback: HTTP 403"),
        Outcome(ids[3], "retry", "salebot callback: HTTP 503", utcnow() + timedelta(hours=1)),
        Outcome(ids[4], "sent"),
    ]
    async with dispatcher:
        results = await asyncio.gather(
            *(dispatcher._submit(o) for o in outcomes), return_exceptions=True
        )
    assert [isinstance(r, Exception) for r in results] == [False, True, False, False, False]
    stored = await rows(engine)
    assert [stored[i].status for i in ids] == ["sent", "sending", "dead", "pending", "sent"]
    assert stored[ids[1]].lease_owner == dispatcher.owner  # not lost: sent again later
    assert len(stored) == 5  # the poisoned follow-up was not written


@pytest.mark.parametrize("size", [1, 64, 300])
async def test_claims_and_records_of_any_size(engine: AsyncEngine, size: int) -> None:
    await fill(engine, 300)
    done = 0
    while claimed := await outbox.claim(engine, "me", size, LEASE):
        assert len(claimed) <= size
        await outbox.record(engine, "me", [Outcome(c.id, "sent") for c in claimed])
        done += len(claimed)
    assert done == 300
    assert (await outbox.stats(engine))["sent"] == 300


async def test_stopping_mid_burst_releases_what_was_claimed_but_not_sent(
    engine: AsyncEngine,
) -> None:
    """Without a rate limit the dispatcher keeps claimed rows ready beyond its slots; on
    stop those, like rows claimed as it stops, go back to pending unsent (the attempt
    given back), and the calls on the wire are recorded."""
    await fill(engine, 200)
    calls: list[int] = []
    started = asyncio.Event()

    async def slow(action: str, payload: dict[str, Any]) -> object:
        calls.append(payload["client_id"])
        if len(calls) >= 20:
            started.set()
        await asyncio.sleep(0.05)
        return None

    async with Dispatcher(engine, {"salebot": slow}, POLICY, concurrency=8, poll_seconds=0.02):
        await asyncio.wait_for(started.wait(), 30)
    stored = await rows(engine)
    by_status = {s: [r for r in stored.values() if r.status == s] for s in ("sent", "pending")}
    assert not [r for r in stored.values() if r.status == "sending"]
    assert len(by_status["sent"]) == len(calls) == len(set(calls))  # each call recorded once
    assert all(r.attempts == 1 for r in by_status["sent"])
    assert all(r.attempts == 0 for r in by_status["pending"])  # released ones gave it back
    assert len(by_status["sent"]) + len(by_status["pending"]) == 200


async def test_a_row_kept_ready_longer_than_half_its_lease_is_released_unsent(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(engine, 3)
    calls: list[int] = []
    recorded: list[str] = []
    record = outbox.record

    async def spy(*args: Any, **kw: Any) -> Any:
        recorded.extend(o.status for o in args[2])
        return await record(*args, **kw)

    monkeypatch.setattr(outbox, "record", spy)

    async def slow(action: str, payload: dict[str, Any]) -> object:
        calls.append(payload["client_id"])
        await asyncio.sleep(1.2)
        return None

    # one slot and one row ready behind it, which waits 1.2 s for the slot: more than
    # half the 2 s lease, so it goes back to pending unsent and is claimed again later
    dispatcher = Dispatcher(
        engine,
        {"salebot": slow},
        POLICY,
        concurrency=1,
        lease=timedelta(seconds=2),
        poll_seconds=0.02,
    )
    async with dispatcher:
        deadline = asyncio.get_running_loop().time() + 30
        while (await outbox.stats(engine))["sent"] < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    assert "released" in recorded
    assert sorted(calls) == [0, 1, 2]  # nothing sent twice
    stored = await rows(engine)
    assert sorted(r.attempts for r in stored.values()) == [1, 1, 1]  # releases gave back
