"""The analyst's views (SPEC §12) and ``syncd report funnel`` on a dataset counted by hand.

The dataset (project 294495), on both databases:

* **Anna** talks to the bot on 1 March 10:00 (``start=ads_vk``, campaign ``spring``) and
  again on 2 March, gives her email on 4 March (a link), orders on 5 March by a process
  webhook with ``cost = "12 000,00"``; the Tech API reports it paid (12000) and the
  poller sees the same deal again: one deal, 12000 of revenue, in the 1 March cohort.
* **Boris** talks to the bot on 1 March 15:00 (``utm_source=blog``, no ``start``) and
  never gives an email: a subscriber with no identity.
* **Vera** talks to the bot on 2 March 09:00 (``start=ads_vk``), links at 10:00, and
  orders 4,900 that she does not pay.
* **Dmitry** only buys in GetCourse (29,900, paid, ``utm_source=partner``): a person,
  not a bot subscriber.

Funnel: 1 March ads_vk 1/1/1/1 12000; 1 March blog 1/0/0/0 0; 2 March ads_vk 1/1/1/0 0.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.cli import main
from syncd.events import NewEvent
from syncd.report import funnel
from syncd.store.engine import create_engine
from syncd.store.events import Addressing, EventStore
from syncd.store.models import Event, Identity, IdentityChange, SalebotClient

P = 294495
DOC = Path(__file__).resolve().parents[1] / "docs" / "analytics.md"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


def as_utc(value: Any) -> datetime:
    """A view's time as an aware UTC datetime (SQLite gives text, PostgreSQL timestamptz)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def bot_event(
    engine: AsyncEngine, kind: str, n: int, when: datetime, client_id: int,
    telegram_id: int | None, **data: str,
) -> None:  # fmt: skip
    """A bot event as the bot endpoint stores it (SPEC §10), by plain SQL."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(Event).values(
                kind=kind, external_id=f"{client_id}:{n}", occurred_at=None, received_at=when,
                email=None, gc_user_id=None, identity_id=None, data=data, source="salebot",
                status="done", wait_until=None, notes="", telegram_id=telegram_id,
                client_id=client_id, project_id=P,
            )
        )  # fmt: skip


async def link(
    engine: AsyncEngine, email: str, when: datetime, client_id: int, telegram_id: int | None
) -> int:
    """An identity made by a link from the bot, as the link store writes it."""
    async with engine.begin() as conn:
        identity_id = int(
            (
                await conn.execute(
                    insert(Identity)
                    .values(email=email, telegram_id=telegram_id, created_at=when, updated_at=when)
                    .returning(Identity.id)
                )
            ).scalar_one()
        )
        await conn.execute(
            insert(SalebotClient).values(
                project_id=P, client_id=client_id, identity_id=identity_id, created_at=when
            )
        )
        after = {"email": email, "telegram_id": telegram_id, "gc_user_id": None,
                 "salebot_clients": [{"project_id": P, "client_id": client_id}]}  # fmt: skip
        await conn.execute(
            insert(IdentityChange).values(
                identity_id=identity_id,
                source="salebot",
                before=None,
                after=after,
                reason="",
                changed_at=when,
            )
        )
        # the bot endpoint attaches the person's earlier events when a link names their keys
        await conn.execute(
            update(Event)
            .where(Event.client_id == client_id, Event.identity_id.is_(None))
            .values(identity_id=identity_id)
        )
    return identity_id


def deal(kind: str, source: str, deal_id: str, email: str, when: datetime, **data: str) -> NewEvent:
    status = data.get("status", "new")
    external = f"{deal_id}:{status}" if kind == "deal.status_changed" else deal_id
    fields = {"deal_id": deal_id, "email": email, "status": status, **data}
    return NewEvent(kind, external, source, email, None, when, fields)


@pytest.fixture
async def dataset(engine: AsyncEngine) -> dict[str, int]:
    return await build(engine)


@pytest.fixture
def stored(db_url: str) -> dict[str, int]:
    """The dataset, for tests that run the CLI (which runs its own event loop)."""

    async def made() -> dict[str, int]:
        engine = create_engine(db_url)
        try:
            return await build(engine)
        finally:
            await engine.dispose()

    return asyncio.run(made())


async def build(engine: AsyncEngine) -> dict[str, int]:
    store = EventStore(engine, Addressing((), P, "", timedelta(hours=1), timedelta(0)))
    # Anna: the bot days before the email, then an order seen by three sources
    await bot_event(engine, "bot.started", 1, at(1, 10), 1001, 5001, start="ads_vk",
                    utm_source="vk", utm_campaign="spring")  # fmt: skip
    await bot_event(engine, "bot.step", 2, at(2, 12), 1001, 5001, step="lesson_1")
    anna = await link(engine, "anna@school.ru", at(4, 12), 1001, 5001)
    await store.ingest([
        deal("deal.created", "webhook", "701", "anna@school.ru", at(5, 9), cost="12 000,00",
             number="11", utm_source="google"),
    ])  # fmt: skip
    await store.ingest([
        deal("deal.paid", "techapi", "701", "anna@school.ru", at(5, 13), status="payed",
             cost="12000", paid_amount="12000"),
        deal("deal.status_changed", "techapi", "701", "anna@school.ru", at(5, 13),
             status="payed"),
    ])  # fmt: skip
    results = await store.ingest([  # the poller: the same deal again, every kind
        deal("deal.created", "poller", "701", "anna@school.ru", at(5, 9), status="payed",
             cost="12000", paid_amount="12000"),
        deal("deal.paid", "poller", "701", "anna@school.ru", at(5, 13), status="payed",
             cost="12000", paid_amount="12000"),
        deal("deal.status_changed", "poller", "701", "anna@school.ru", at(5, 13),
             status="payed", cost="12000", paid_amount="12000"),
    ])  # fmt: skip
    assert all(r.duplicate for r in results)
    # Boris: the bot only
    await bot_event(engine, "bot.started", 1, at(1, 15), 1002, None, utm_source="blog")
    # Vera: the bot, a link the same day, an unpaid order
    await bot_event(engine, "bot.started", 1, at(2, 9), 1003, 5003, start="ads_vk")
    vera = await link(engine, "vera@school.ru", at(2, 10), 1003, 5003)
    await store.ingest([deal("deal.created", "poller", "702", "vera@school.ru", at(3, 8),
                             cost="4900")])  # fmt: skip
    # Dmitry: GetCourse only
    await store.ingest([
        deal("deal.created", "poller", "703", "dmitry@school.ru", at(6, 8), cost="29900",
             utm_source="partner", utm_campaign="autumn"),
        deal("deal.paid", "poller", "703", "dmitry@school.ru", at(6, 9), status="payed",
             cost="29900", paid_amount="29900"),
    ])  # fmt: skip
    return {"anna": anna, "vera": vera}


async def rows(engine: AsyncEngine, query: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(query))]


def money(value: Any) -> Decimal:
    return Decimal(str(value))


async def test_deals_one_row_per_deal_from_every_source(
    engine: AsyncEngine, dataset: dict[str, int]
) -> None:
    deals = {r["deal_id"]: r for r in await rows(engine, "SELECT * FROM syncd_deals")}
    assert sorted(deals) == ["701", "702", "703"]
    d = deals["701"]
    assert (d["identity_id"], d["email"], d["number"], d["status"]) == (
        dataset["anna"], "anna@school.ru", "11", "payed",
    )  # fmt: skip
    assert money(d["cost"]) == 12000  # "12 000,00" from the webhook, a number
    assert money(d["paid_amount"]) == 12000
    assert as_utc(d["created_at"]) == at(5, 9)
    assert as_utc(d["paid_at"]) == at(5, 13)
    assert d["utm_source"] == "google"
    v = deals["702"]
    assert (v["status"], money(v["cost"]), v["paid_amount"], v["paid_at"]) == (
        "new", 4900, None, None,
    )  # fmt: skip
    total = await rows(engine, "SELECT sum(cost) AS c, sum(paid_amount) AS p FROM syncd_deals")
    assert (money(total[0]["c"]), money(total[0]["p"])) == (12000 + 4900 + 29900, 12000 + 29900)


async def test_people_first_touch_and_cohort(engine: AsyncEngine, dataset: dict[str, int]) -> None:
    people = await rows(engine, "SELECT * FROM syncd_people")
    assert len(people) == 4  # Anna, Boris, Vera, Dmitry: each once
    by_email = {p["email"]: p for p in people}
    anna = by_email["anna@school.ru"]
    assert anna["identity_id"] == dataset["anna"]
    assert (anna["telegram_id"], anna["client_id"]) == (5001, 1001)
    # the bot days before the email: one person, in the cohort of the first bot contact
    assert as_utc(anna["first_bot_at"]) == as_utc(anna["first_seen_at"]) == at(1, 10)
    assert as_utc(anna["linked_at"]) == at(4, 12)
    assert (anna["source"], anna["utm_campaign"]) == ("ads_vk", "spring")  # start wins
    assert (anna["orders"], anna["paid_orders"], money(anna["revenue"])) == (1, 1, 12000)
    assert as_utc(anna["first_order_at"]) == at(5, 9)
    assert as_utc(anna["first_paid_at"]) == at(5, 13)
    boris = by_email[None]
    assert (boris["identity_id"], boris["client_id"], boris["source"]) == (None, 1002, "blog")
    assert boris["linked_at"] is None and boris["orders"] == 0
    dmitry = by_email["dmitry@school.ru"]
    assert dmitry["first_bot_at"] is None
    assert (dmitry["source"], dmitry["utm_campaign"]) == ("partner", "autumn")  # the deal's
    assert (dmitry["orders"], dmitry["paid_orders"], money(dmitry["revenue"])) == (1, 1, 29900)


async def test_funnel_view_by_day_and_source(engine: AsyncEngine, dataset: dict[str, int]) -> None:
    found = await rows(engine, "SELECT * FROM syncd_funnel")
    got = {
        (str(r["day"])[:10], r["source"]): (
            r["subscribers"],
            r["linked"],
            r["ordered"],
            r["paid"],
            money(r["revenue"]),
        )
        for r in found
    }
    assert got == {
        ("2025-03-01", "ads_vk"): (1, 1, 1, 1, 12000),
        ("2025-03-01", "blog"): (1, 0, 0, 0, 0),
        ("2025-03-02", "ads_vk"): (1, 1, 1, 0, 0),
    }


async def test_report_groups_and_period(engine: AsyncEngine, dataset: dict[str, int]) -> None:
    by_source = await funnel(engine, "source")
    got = [(r.key, r.subscribers, r.linked, r.ordered, r.paid, r.revenue) for r in by_source.rows]
    assert got == [
        ("ads_vk", 2, 2, 2, 1, Decimal("12000.00")),
        ("blog", 1, 0, 0, 0, Decimal("0.00")),
    ]
    by_campaign = await funnel(engine, "utm_campaign")
    assert {r.key: r.subscribers for r in by_campaign.rows} == {"(none)": 2, "spring": 1}
    by_month = await funnel(engine, "month", since=date(2025, 3, 2), until=date(2025, 3, 2))
    assert [(r.key, r.subscribers, r.linked, r.ordered, r.paid) for r in by_month.rows] == [
        ("2025-03", 1, 1, 1, 0),
    ]


@pytest.fixture
def syncd(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SYNCD_DATABASE__URL", db_url)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    monkeypatch.chdir(Path(__file__).parent)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_report_csv_and_json(syncd, stored: dict[str, int], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = syncd("report", "funnel", "--format", "csv")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(r["source"], r["subscribers"], r["paid"], r["revenue"]) for r in table] == [
        ("ads_vk", "2", "1", "12000.00"),
        ("blog", "1", "0", "0.00"),
        ("total", "3", "1", "12000.00"),
    ]
    assert table[0]["ordered_rate"] == "1.0" and table[0]["paid_rate"] == "0.5"
    assert table[1]["ordered_rate"] == ""  # nobody linked: no rate, not a division by zero
    output = tmp_path / "funnel.json"
    code, _, err = syncd("report", "funnel", "--by", "month", "--format", "json",
                         "--output", str(output))  # fmt: skip
    assert code == 0 and str(output) in err
    document = json.loads(output.read_text(encoding="utf-8"))
    assert document["rows"] == [{
        "month": "2025-03", "subscribers": 3, "linked": 2, "ordered": 2, "paid": 1,
        "revenue": "12000.00", "linked_rate": 0.6667, "ordered_rate": 1.0, "paid_rate": 0.5,
    }]  # fmt: skip
    assert document["total"]["revenue"] == "12000.00"
    code, out, _ = syncd("report", "funnel")  # the terminal table
    assert code == 0
    assert re.search(r"ads_vk\s+2\s+2\s+100\.0%\s+2\s+100\.0%\s+1\s+50\.0%\s+12 000\.00", out)


def test_report_bad_dates_are_one_line_and_exit_2(syncd) -> None:  # type: ignore[no-untyped-def]
    code, out, err = syncd("report", "funnel", "--since", "2025-13-01")
    assert (code, out) == (2, "")
    assert err.strip().count("\n") == 0 and "--since '2025-13-01' is not a date" in err
    code, _, err = syncd("report", "funnel", "--since", "2025-03-02", "--until", "2025-03-01")
    assert code == 2 and "after --until" in err


def analyst_queries() -> list[tuple[str, str]]:
    """The numbered ready queries of docs/analytics.md: (title, SQL)."""
    text_ = DOC.read_text(encoding="utf-8")
    found = re.findall(r"^### (Q\d+\..*?)\n.*?```sql\n(.*?)```", text_, re.M | re.S)
    return [(title, sql) for title, sql in found]


def test_the_doc_has_ten_queries() -> None:
    assert len(analyst_queries()) == 10


@pytest.mark.parametrize("title, query", analyst_queries(), ids=lambda v: str(v)[:3])
async def test_each_documented_query_runs(
    engine: AsyncEngine, dataset: dict[str, int], title: str, query: str
) -> None:
    dialect = engine.dialect.name
    variants = re.split(r"^-- (sqlite|postgresql)\n", query, flags=re.M)
    if len(variants) > 1:  # one spelling per database
        spelled = dict(zip(variants[1::2], variants[2::2], strict=True))
        query = spelled[dialect]
    found = await rows(engine, query)
    assert found, f"{title}: no rows on the test dataset"


async def test_forgetting_keys_keeps_the_subscriber_countable(
    engine: AsyncEngine, dataset: dict[str, int]
) -> None:
    """``syncd identity forget`` blanks an event's keys: the contact loses them too."""
    async with engine.begin() as conn:  # what forget does to Boris's events
        await conn.execute(
            update(Event).where(Event.client_id == 1002).values(client_id=None, telegram_id=None)
        )
    kept = await rows(engine, "SELECT key, client_id, telegram_id FROM analytics_bot_contacts")
    assert not any(r["client_id"] == 1002 or "1002" in r["key"] for r in kept)
    funnel_rows = await rows(engine, "SELECT source, subscribers FROM syncd_funnel")
    assert {r["source"]: r["subscribers"] for r in funnel_rows}["blog"] == 1
