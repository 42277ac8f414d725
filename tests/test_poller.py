"""The export poller and backfill against the GetCourse simulator, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.config import Settings
from syncd.daemon import addressing
from syncd.errors import StoreUnavailable
from syncd.events import NewEvent
from syncd.poller import Job, Poller, backfill, jobs
from syncd.sandbox import getcourse
from syncd.sandbox.clock import FakeClock
from syncd.sandbox.getcourse_rows import DEAL_COLUMNS
from syncd.sandbox.getcourse_state import ExportQuery
from syncd.sandbox.serve import serve
from syncd.store import exports
from syncd.store.events import EventStore, listing
from syncd.store.models import Delivery, ExportRequest

KEY = "gc-key"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
SINCE = date(2026, 1, 1)


class Clocks:
    """Our clock and the simulator's, moved together."""

    def __init__(self) -> None:
        self.sim = FakeClock()

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.sim.now)

    async def sleep(self, seconds: float) -> None:
        self.sim.advance(seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def gc(clocks: Clocks) -> getcourse.GetCourseState:
    state = getcourse.GetCourseState(key=KEY, clock=clocks.sim)
    anna = state.add_user("anna@school.ru")
    state.add_deal(anna, 14900, status="payed")
    state.add_deal(anna, 500)
    state.add_deal(anna, 700, status="cancelled")
    return state


@pytest.fixture
async def poller_for(
    engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> AsyncIterator[Any]:
    async with serve(getcourse.create_app(gc)) as url, httpx.AsyncClient(timeout=10) as http:
        store = EventStore(engine, addressing(Settings()))

        def make(**kw: Any) -> Poller:
            kw.setdefault("waits", (30.0,) * 6)
            return Poller(
                engine,
                http,
                url,
                KEY,
                kw.pop("ingest", store.ingest),
                clock=clocks.now,
                sleep=clocks.sleep,
                **kw,
            )

        yield make


DEALS = Job("deals", "deals", "deals", SINCE)


async def kinds(engine: AsyncEngine) -> list[str]:
    return sorted(f"{e['kind']} {e['external_id']}" for e in await listing(engine, None, 100))


async def test_909_several_times_then_rows(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    gc.ready_after_polls = 4
    outcome = await poller_for().run(DEALS, cursor=date(2026, 11, 19))
    assert (outcome.status, outcome.rows, outcome.errors) == ("done", 3, 0)
    ids = sorted(gc.deals)
    assert await kinds(engine) == sorted(
        [
            f"deal.created {ids[0]}",
            f"deal.paid {ids[0]}",
            f"deal.status_changed {ids[0]}:payed",
            f"deal.created {ids[1]}",
            f"deal.created {ids[2]}",
            f"deal.status_changed {ids[2]}:cancelled",
        ]
    )
    assert gc.export_requests == 6  # one start, four 909 answers, the rows
    assert [c.outcome for c in gc.calls].count("error:909") == 4
    async with engine.connect() as conn:  # syncd counted every one of them
        assert await conn.scalar(select(func.count()).select_from(ExportRequest)) == 6
    state = await exports.load(engine, "deals")
    assert state.cursor == date(2026, 11, 19) and state.pending_export_id is None
    (paid,) = await listing(engine, "deal.paid", 10)
    assert paid["data"]["cost"] == "14900" and paid["data"]["currency"] == "RUB"
    assert paid["data"]["number"] and paid["email"] == "anna@school.ru"  # «Номер» had a BOM


async def test_905_another_export_runs(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    async with serve(getcourse.create_app(gc)) as url, httpx.AsyncClient() as http:
        other = await http.get(
            f"{url}/pl/api/account/users", params={"key": KEY, "created_at[from]": "2026-01-01"}
        )
        assert other.json()["success"] is True  # another integration's export, never collected
    outcome = await poller_for().run(DEALS)
    assert outcome.status == "busy"
    assert (await exports.load(engine, "deals")).pending_export_id is None


async def test_903_budget_spent_at_getcourse(poller_for: Any, gc: getcourse.GetCourseState) -> None:
    gc.budget = 0  # other integrations of the account spent it
    assert (await poller_for().run(DEALS)).status == "budget"


async def test_our_own_budget_is_never_exceeded(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    gc.ready_after_polls = 1000  # never ready: every collect costs a unit
    poller = poller_for(budget=10, waits=(1.0,) * 50)
    assert (await poller.run(DEALS)).status == "budget"
    assert gc.export_requests == 10  # start + 9 collects, then syncd stopped itself
    assert (await poller.run(Job("users", "users", "users", SINCE))).status == "budget"
    assert gc.export_requests == 10  # and started nothing new it could not collect
    assert all(c.outcome != "error:903" for c in gc.calls)


async def test_a_restart_between_start_and_collect_reuses_the_export(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    gc.ready_after_polls = 3
    first = await poller_for(waits=()).run(DEALS)  # the daemon stops after one collect
    assert first.status == "not_ready"
    pending = (await exports.load(engine, "deals")).pending_export_id
    assert pending is not None
    again = await poller_for(waits=(1.0, 1.0)).run(DEALS)  # "restarted"
    assert again.status == "done" and again.rows == 3
    assert list(gc.exports) == [pending]  # no second export was started


async def test_the_cursor_moves_only_after_the_rows_are_committed(
    poller_for: Any, engine: AsyncEngine
) -> None:
    async def broken(batch: Sequence[NewEvent]) -> None:
        raise StoreUnavailable("disk full")

    with pytest.raises(StoreUnavailable):
        await poller_for(ingest=broken).run(DEALS, cursor=date(2026, 11, 19))
    state = await exports.load(engine, "deals")
    assert state.cursor is None and state.pending_export_id is not None
    assert (await poller_for().run(DEALS, cursor=date(2026, 11, 19))).status == "done"
    assert (await exports.load(engine, "deals")).cursor == date(2026, 11, 19)


async def test_a_malformed_row_is_recorded_and_skipped(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    def rows(query: ExportQuery) -> Iterable[Sequence[str]]:
        good = [
            "9001",
            "77",
            "5",
            "Анна",
            "anna@school.ru",
            "",
            "2026-11-20 10:00:00",
            "",
            "Курс",
            "new",
            "1\u00a0000,00",
            "0,00",
            "",
            "",
        ]
        yield good
        yield ["", *good[1:]]  # no deal id
        yield [*good[:10], "много", *good[11:]]  # not money
        yield ["9002", *good[1:4], "not-an-email", *good[5:]]
        yield ["9003", *good[1:]]

    gc.deal_rows = rows
    outcome = await poller_for().run(DEALS)
    assert (outcome.status, outcome.rows, outcome.errors) == ("done", 5, 3)
    assert await kinds(engine) == ["deal.created 9001", "deal.created 9003"]
    async with engine.connect() as conn:
        from syncd.store.models import ExportState

        row = (await conn.execute(select(ExportState))).one()
    assert row.last_errors == 3 and "row 2: the row has no deal_id" in row.last_error
    assert len(DEAL_COLUMNS) == 14


async def test_one_order_by_webhook_techapi_and_poller_is_delivered_once(
    engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    from tests.test_events import RULES, link
    from tests.test_webhook_links import TOKEN, client_for

    settings = Settings.model_validate({"rules": RULES})
    deal = next(d for d in gc.deals.values() if d.status == "payed")
    async for client in client_for(engine, settings=settings):
        await link(client, "anna@school.ru", client_id="900")
        await client.get(
            "/v1/getcourse/events/deal.paid",
            params={
                "token": TOKEN,
                "email": "anna@school.ru",
                "id": str(deal.id),
                "number": str(deal.number),
                "cost": "14900",
            },
        )
    async with serve(getcourse.create_app(gc)) as url, httpx.AsyncClient() as http:
        store = EventStore(engine, addressing(settings))
        poller = Poller(engine, http, url, KEY, store.ingest, clock=clocks.now, sleep=clocks.sleep)
        assert (await poller.run(DEALS)).status == "done"
    async with engine.connect() as conn:
        actions = (await conn.scalars(select(Delivery.action))).all()
    # deal.paid once (the poller's copy was a duplicate); the cancelled order's message
    # comes from the poller alone
    assert sorted(actions) == ["callback", "message"]


async def test_a_simulated_day_at_one_minute_stays_within_budget(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    configured = jobs(["deals", "payments"], [], SINCE)
    poller = poller_for(waits=(20.0, 40.0))
    outcomes = []
    for _minute in range(24 * 60):
        outcomes += await poller.cycle(configured)
        clocks.sim.advance(60)
    done = [o for o in outcomes if o.status == "done"]
    assert len(done) >= 2 * 12  # both exports ran in every 2-hour window of the day
    assert not any(o.status == "busy" for o in outcomes)  # never blocked by our own export
    assert all(c.outcome != "error:903" for c in gc.calls)  # GetCourse never had to refuse
    async with engine.connect() as conn:  # and syncd's own count agrees
        used = await conn.scalar(
            select(func.count())
            .select_from(ExportRequest)
            .where(ExportRequest.at > clocks.now() - timedelta(hours=2))
        )
    assert used is not None and used <= 100


async def test_backfill_runs_in_windows(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    lines: list[str] = []
    done = await backfill(
        poller_for(),
        jobs(["deals"], [], SINCE),
        date(2026, 11, 1),
        date(2026, 11, 30),
        window=timedelta(days=10),
        progress=lines.append,
    )
    windows = [(job.since, job.until) for job, _ in done]
    assert windows == [
        (date(2026, 11, 1), date(2026, 11, 10)),
        (date(2026, 11, 11), date(2026, 11, 20)),
        (date(2026, 11, 21), date(2026, 11, 30)),
    ]
    assert all(outcome.status == "done" for _, outcome in done)
    assert lines[-1].startswith("[3/3] deals 2026-11-21..2026-11-30")
    assert any(e["source"] == "backfill" for e in await listing(engine, None, 10)) or all(
        o.rows == 0 for _, o in done
    )


@pytest.mark.postgres
async def test_one_poller_per_postgres_database(
    pg_url: str, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    import asyncio

    from syncd.store.engine import create_engine

    gc.ready_after_polls = 2  # both are mid-cycle at the same time
    engines = [create_engine(pg_url), create_engine(pg_url)]
    try:
        async with serve(getcourse.create_app(gc)) as url, httpx.AsyncClient() as http:

            def poller(engine: AsyncEngine) -> Poller:
                store = EventStore(engine, addressing(Settings()))

                async def slow_sleep(seconds: float) -> None:
                    clocks.sim.advance(seconds)
                    await asyncio.sleep(0.2)  # hold the lock a while, for real

                return Poller(
                    engine,
                    http,
                    url,
                    KEY,
                    store.ingest,
                    clock=clocks.now,
                    sleep=slow_sleep,
                    waits=(30.0,) * 4,
                )

            first, second = await asyncio.gather(
                poller(engines[0]).cycle([DEALS]), poller(engines[1]).cycle([DEALS])
            )
        assert sorted([len(first), len(second)]) == [0, 1]  # one polled, one skipped
        assert len(gc.exports) == 1
    finally:
        for engine in engines:
            await engine.dispose()
