"""The export poller and backfill against the GetCourse simulator, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
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
#: The test's clock starts now (to the second), so the simulator's data, stamped from it,
#: is as fresh as a live account's, and every date below passes on any calendar day.
T0 = datetime.now(UTC).replace(microsecond=0)
TODAY = T0.date()
SINCE = TODAY - timedelta(days=30)
MSK = timedelta(hours=3)  # the simulated account's local time


class Clocks:
    """Our clock and the simulator's, moved together."""

    def __init__(self) -> None:
        self.sim = FakeClock()

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.sim.now)

    def local(self, **ago: float) -> datetime:
        """The account's local time (naive, Moscow), ``ago`` (timedelta's names) back."""
        return (self.now() + MSK - timedelta(**ago)).replace(tzinfo=None)

    async def sleep(self, seconds: float) -> None:
        self.sim.advance(seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def gc(clocks: Clocks) -> getcourse.GetCourseState:
    state = getcourse.GetCourseState(key=KEY, clock=clocks.sim)
    anna = state.add_user("anna@school.ru", created_at=clocks.local(days=3))
    state.add_deal(anna, 14900, status="payed", created_at=clocks.local(hours=2))
    state.add_deal(anna, 500, created_at=clocks.local(hours=2))
    state.add_deal(anna, 700, status="cancelled", created_at=clocks.local(hours=1))
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
    outcome = await poller_for().run(DEALS, cursor=TODAY - timedelta(days=1))
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
    assert state.cursor == TODAY - timedelta(days=1) and state.pending_export_id is None
    (paid,) = await listing(engine, "deal.paid", 10)
    assert paid["data"]["cost"] == "14900" and paid["data"]["currency"] == "RUB"
    assert paid["data"]["number"] and paid["email"] == "anna@school.ru"  # «Номер» had a BOM


async def test_905_another_export_runs(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    async with serve(getcourse.create_app(gc)) as url, httpx.AsyncClient() as http:
        other = await http.get(
            f"{url}/pl/api/account/users", params={"key": KEY, "created_at[from]": str(SINCE)}
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

    yesterday = TODAY - timedelta(days=1)
    with pytest.raises(StoreUnavailable):
        await poller_for(ingest=broken).run(DEALS, cursor=yesterday)
    state = await exports.load(engine, "deals")
    assert state.cursor is None and state.pending_export_id is not None
    assert (await poller_for().run(DEALS, cursor=yesterday)).status == "done"
    assert (await exports.load(engine, "deals")).cursor == yesterday


async def test_a_row_without_its_ids_is_skipped_an_unreadable_cell_costs_one_field(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    created = clocks.local(hours=1).strftime("%Y-%m-%d %H:%M:%S")

    def rows(query: ExportQuery) -> Iterable[Sequence[str]]:
        good = ["9001", "77", "", "Анна", "anna@school.ru", "", created, "", "Курс", "new",
                "1\u00a0000,00", "0,00", "", ""]  # fmt: skip
        yield good
        yield ["", *good[1:]]  # no deal id: nothing to name the event by
        yield ["9002", *good[1:10], "много", *good[11:]]  # not money
        yield ["9003", *good[1:4], "not-an-email", *good[5:]]  # no email, no user id
        yield ["9004", *good[1:6], "вчера", *good[7:9], "Оплачен", "много", *good[11:]]
        yield ["9005", *good[1:9], "Непонятный", *good[10:]]  # a status no one knows

    gc.deal_rows = rows
    outcome = await poller_for().run(DEALS)
    assert (outcome.status, outcome.rows, outcome.errors) == ("done", 6, 2)
    assert outcome.unreadable == 5
    assert await kinds(engine) == [
        "deal.created 9001", "deal.created 9002", "deal.created 9004", "deal.created 9005",
        "deal.paid 9004", "deal.status_changed 9004:payed",
    ]  # fmt: skip
    events = {e["external_id"]: e for e in await listing(engine, "deal.created", 10)}
    assert "cost" not in events["9002"]["data"] and events["9002"]["data"]["title"] == "Курс"
    assert events["9004"]["occurred_at"] is None and "created_at" not in events["9004"]["data"]
    assert "status" not in events["9005"]["data"]
    async with engine.connect() as conn:
        from syncd.store.models import ExportState

        row = (await conn.execute(select(ExportState))).one()
    assert row.last_errors == 2 and "row 2: the row has no deal_id" in row.last_error
    # said once for the export, not once per row; no email is ever quoted
    assert "unreadable cells left empty: cost: 2 cells (e.g. 'много')" in row.last_error
    assert "created_at: 1 cell (e.g. 'вчера')" in row.last_error
    assert "email: 1 cell," in row.last_error and "not-an-email" not in row.last_error
    assert "status: 1 cell (e.g. 'Непонятный')" in row.last_error
    assert len(DEAL_COLUMNS) == 14


SHAPES = {
    "documented": {},
    "offer column «Состав заказа»": {"offer_column": "Состав заказа"},
    "status labels": {"status_cells": "labels"},
    "amounts with a currency word": {"money_style": "currency_word"},
    "all at once": {
        "offer_column": "Состав заказа", "status_cells": "labels", "money_style": "currency_word"
    },
}  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_export_shape_gives_the_same_events(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks, shape: str
) -> None:
    """getcourse.md, "Added 2026-12-02": the shapes other accounts write, read alike."""
    for name, value in SHAPES[shape].items():
        setattr(gc, name, value)
    anna = next(iter(gc.users.values()))
    deal = gc.add_deal(anna, "12000.5", status="part_payed", created_at=clocks.local(hours=1))
    deal.title = "Курс «Основы»"
    gc.add_payment(deal, 300, status="accepted", created_at=clocks.local(hours=1))
    poller = poller_for()
    assert (await poller.run(DEALS)).errors == 0
    payments = await poller.run(Job("payments", "payments", "payments", SINCE))
    assert (payments.status, payments.rows, payments.errors, payments.unreadable) == (
        "done", 1, 0, 0
    )  # fmt: skip
    ids = sorted(gc.deals)
    (payment_id,) = gc.payments
    assert await kinds(engine) == sorted(
        [f"deal.created {i}" for i in ids]
        + [f"deal.paid {ids[0]}", f"deal.status_changed {ids[0]}:payed"]
        + [f"deal.status_changed {ids[2]}:cancelled", f"deal.status_changed {ids[3]}:part_payed"]
        + [f"payment.accepted {payment_id}"]
    )
    (paid,) = await listing(engine, "payment.accepted", 10)
    assert paid["data"]["paid_amount"] == "300"  # «300 руб.» in the currency-word shape
    created = {e["external_id"]: e["data"] for e in await listing(engine, "deal.created", 10)}
    assert created[str(ids[3])]["title"] == "Курс «Основы»"
    assert created[str(ids[3])]["cost"] == "12000.50"
    assert created[str(ids[3])]["status"] == "part_payed"  # the code, whatever the cell said


POISON = ["7", '["2"]', "null", '"text"', "{}", "[" * 40 + '"x"' + "]" * 40]


async def test_rows_that_cannot_be_read_are_skipped_and_counted(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState
) -> None:
    """Issue 14: items that are no row never stop the export (nor the poller)."""
    row = ["1", "2", "3", "Анна", "anna@school.ru", "", "", "", "Курс", "new", "1,00", "", "", ""]
    nested = '"' + '", "'.join(row[:9]) + '", ' + "[" * 40 + "1" + "]" * 40 + ', "", "", "", ""'
    gc.extra_items["deals"] = [*POISON, "[" + nested + "]"]
    outcome = await poller_for().run(DEALS)
    assert (outcome.status, outcome.rows, outcome.errors) == ("done", 3 + 7, 6)
    assert outcome.unreadable == 1  # the nested status cell: that field left empty
    assert "deal.created 1" in await kinds(engine)
    state = await exports.load(engine, "deals")
    assert state.pending_export_id is None and state.cursor is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b'{"success": true, "info": {"fields": ["a"], "items": 7}}', "info.items is not a list"),
        (b'{"success": true, "info": {"fields": [1], "items": []}}', "a column title is not"),
        (b'{"success": true, "info": "no"}', "it has no column titles"),
        (b'{"success": true, "info": {"fields": ["a"], "items": [[', "not valid JSON"),
        (
            b'{"success": true, "info": {"fields": ["a"], "items": ['
            + b"[" * 100_000
            + b"]" * 100_000
            + b"]}}",
            "nested deeper than 512",
        ),
    ],
)
async def test_an_answer_that_cannot_be_read_ends_that_export_with_a_reason(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, answer: bytes, reason: str
) -> None:
    gc.raw_answers["deals"] = answer
    outcome = await poller_for().run(DEALS)
    assert outcome.status == "broken" and reason in outcome.detail
    state = await exports.load(engine, "deals")
    assert state.pending_export_id is None  # never collected again
    assert [c.outcome for c in gc.calls].count("ok") == 2  # one start, one collect


async def test_a_day_of_cycles_with_a_poisoned_export_still_runs_the_others(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    """Issue 14: 145 cycles at 10 minutes, the deals export poisoned, payments still run."""
    anna = next(iter(gc.users.values()))
    gc.add_payment(next(iter(gc.deals.values())), created_at=clocks.local(hours=1))
    gc.extra_items["deals"] = [*POISON, "[" * 2000 + "]" * 2000]  # too deep: unreadable
    configured = jobs(["deals", "payments"], [], SINCE)
    poller = poller_for(waits=(20.0, 40.0))
    outcomes = []
    for minute in range(0, 24 * 60 + 1, 10):
        if minute == 12 * 60:  # a new payment at noon is still found
            deal = gc.add_deal(anna, 10, created_at=clocks.local(minutes=1))
            gc.add_payment(deal, created_at=clocks.local(minutes=1))
        outcomes.append(await poller.cycle(configured))
        clocks.sim.advance(600)
    assert len(outcomes) == 145
    deals = [o[0] for o in outcomes]
    payments = [o[1] for o in outcomes]
    assert all(o.status == "broken" and "nested deeper than 512" in o.detail for o in deals)
    assert all(o.status == "done" for o in payments)
    assert payments[-1].rows == 2
    assert len(await listing(engine, "payment.accepted", 10)) == 2
    assert (await exports.load(engine, "deals")).pending_export_id is None
    assert all(c.outcome != "error:903" for c in gc.calls)


@pytest.mark.parametrize(
    ("switch", "reason"),
    [
        ({"collect_errors": {"deals": "Файл не создан"}}, "GetCourse could not make the file"),
        ({"export_api": False}, "error 917: Функционал API недоступен на вашем тарифе — "
         "the account's plan has no export API"),
    ],
)  # fmt: skip
async def test_final_export_errors_say_why_and_are_not_asked_again(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, switch: Any, reason: str
) -> None:
    for name, value in switch.items():
        setattr(gc, name, value)
    outcome = await poller_for().run(DEALS)
    assert outcome.status == "broken" and reason in outcome.detail
    assert (await exports.load(engine, "deals")).pending_export_id is None
    asked = len(gc.calls)
    failed = [f"/exports/{export_id}" for export_id in gc.exports]  # none started at 917
    assert (await poller_for().run(Job("users", "users", "users", SINCE))).status in (
        "broken", "done"
    )  # fmt: skip
    assert not [c for c in gc.calls[asked:] if any(c.path.endswith(f) for f in failed)]


async def test_the_group_list_is_counted_in_the_budget(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    group = gc.add_group("Поток 1")
    gc.add_member(group, next(iter(gc.users.values())), clocks.local(hours=1))
    outcome = await poller_for().run(jobs(["groups"], [group.id], SINCE)[0])
    assert (outcome.status, outcome.rows) == ("done", 1)
    (joined,) = await listing(engine, "group.joined", 10)
    assert joined["data"]["group_name"] == "Поток 1"
    async with engine.connect() as conn:
        counted = await conn.scalar(select(func.count()).select_from(ExportRequest))
    # start, a 909, the rows and the group list: syncd counts what GetCourse counts
    assert counted == gc.export_requests == 4


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


async def test_six_simulated_hours_at_one_minute_stay_within_budget(
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    """Three budget windows of 2 hours polled every minute (a day took 95 s of the suite's
    10 minutes and proves no more: the budget is per window)."""
    configured = jobs(["deals", "payments"], [], SINCE)
    poller = poller_for(waits=(20.0, 40.0))
    outcomes = []
    for _minute in range(6 * 60):
        outcomes += await poller.cycle(configured)
        clocks.sim.advance(60)
    done = [o for o in outcomes if o.status == "done"]
    assert len(done) >= 2 * 3  # both exports ran in every 2-hour window
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
    poller_for: Any, engine: AsyncEngine, gc: getcourse.GetCourseState, clocks: Clocks
) -> None:
    anna = next(iter(gc.users.values()))
    for days in (27, 26, 15):  # two deals in the first window, one in the second
        gc.add_deal(anna, 100, created_at=clocks.local(days=days))
    # windows are the account's (Moscow) dates: from 21:00 UTC on, its deals of an hour
    # ago are already tomorrow's by the UTC calendar
    today = clocks.local().date()
    first = today - timedelta(days=29)
    lines: list[str] = []
    done = await backfill(
        poller_for(),
        jobs(["deals"], [], SINCE),
        first,
        today,
        window=timedelta(days=10),
        progress=lines.append,
    )
    windows = [(job.since, job.until) for job, _ in done]
    assert windows == [
        (first, first + timedelta(days=9)),
        (first + timedelta(days=10), first + timedelta(days=19)),
        (first + timedelta(days=20), today),
    ]
    assert [(o.status, o.rows, o.events) for _, o in done] == [
        ("done", 2, 2), ("done", 1, 1), ("done", 3, 6)
    ]  # fmt: skip
    assert (
        lines[-1]
        == f"[3/3] deals {first + timedelta(days=20)}..{today}: 3 rows, 6 events, 0 bad rows"
    )
    stored = await listing(engine, None, 100)
    assert len(stored) == 9 and {e["source"] for e in stored} == {"backfill"}


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
