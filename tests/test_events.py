"""GetCourse events (SPEC §3, §6): webhooks, de-duplication, rules, waiting for a link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.config import Settings
from syncd.errors import ConfigError
from syncd.rules import compile_rules
from syncd.sandbox import getcourse, salebot
from syncd.sandbox.getcourse_callout import fire_process_call, fire_techapi
from syncd.sandbox.serve import serve
from syncd.store import outbox
from syncd.store.events import listing
from syncd.store.models import Delivery, Event, utcnow
from syncd.store.queries import find_identity
from tests.test_outbox_dispatch import dispatching, settled
from tests.test_webhook_links import AUTH, TOKEN, client_for

P = 294495
RULES: list[dict[str, Any]] = [
    {
        "event": "deal.paid",
        "action": "callback",
        "message": "gc_deal_paid",
        "variables": {"gc_deal_number": "{number}", "gc_amount": "{cost}"},
    },
    {"event": "user.created", "action": "save_variables", "variables": {"client.email": "{email}"}},
    {
        "event": "deal.status_changed",
        "action": "message",
        "message": "Статус заказа: {status}",
        "where": {"status": "cancelled"},
    },
]


def config(**extra: Any) -> Settings:
    return Settings.model_validate({"rules": RULES, **extra})


#: The batch tests' rows are dated 2024: with no age limit they are still news.
NO_AGE_LIMIT = config(delivery={"max_event_age": "0"})


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(engine, settings=config()):
        yield client


async def deliveries(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(Delivery.action, Delivery.payload).order_by(Delivery.id))
        return [{"action": a, **p} for a, p in rows]


async def link(client: httpx.AsyncClient, email: str, **keys: str) -> None:
    answer = await client.post("/v1/links", json={"email": email, **keys}, headers=AUTH)
    assert answer.status_code == 200, answer.text


PAID = "/v1/getcourse/events/deal.paid"


async def test_process_call_as_getcourse_sends_it(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await link(client, "anna@school.ru", telegram_id="111", client_id="900")
    # GET with placeholders in the query, one unsubstituted (a custom field GetCourse lacks)
    answer = await client.get(
        PAID,
        params={
            "token": TOKEN,
            "email": "Anna@School.ru",
            "user_id": "512478330",
            "id": "871035642",
            "number": "11892043",
            "cost": "14900",
            "tg": "{object.user.telegram_id}",
        },
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body == {"success": True, "event_id": body["event_id"], "duplicate": False}
    again = await client.post(
        PAID, data={"email": "anna@school.ru", "id": "871035642"}, params={"token": TOKEN}
    )
    assert again.json() == {"success": True, "event_id": body["event_id"], "duplicate": True}
    assert await deliveries(engine) == [
        {
            "action": "callback",
            "client_id": 900,
            "message": "gc_deal_paid",
            "gc_deal_number": "11892043",
            "gc_amount": "14900",
        }
    ]
    (event,) = await listing(engine, "deal.paid", 10)
    assert event["status"] == "done" and "tg" not in event["data"]
    assert event["data"]["deal_id"] == "871035642" and event["gc_user_id"] == 512478330
    anna = await find_identity(engine, email="anna@school.ru")
    assert anna is not None and anna.gc_user_id == 512478330  # learned from the event


async def test_only_a_telegram_id_gets_a_tg_callback(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await link(client, "boris@school.ru", telegram_id="222")
    await client.post(
        PAID,
        json={"email": "boris@school.ru", "id": "5", "number": "7", "cost": "100"},
        headers=AUTH,
    )
    assert await deliveries(engine) == [
        {
            "action": "tg_callback",
            "user_id": 222,
            "group_id": "myschool_bot",
            "message": "gc_deal_paid",
            "gc_deal_number": "7",
            "gc_amount": "100",
        }
    ]


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        (PAID, {"id": "1"}, "missing_key"),
        (PAID, {"email": "{object.user.email}", "id": "1"}, "missing_key"),
        (PAID, {"email": "a@b.ru"}, "missing_id"),
        (PAID, {"email": "not-an-email", "id": "1"}, "invalid_email"),
        (PAID, {"user_id": "abc", "id": "1"}, "invalid_user_id"),
        (PAID, {"email": "a@b.ru", "id": "1 OR 1=1"}, "invalid_id"),
        ("/v1/getcourse/events/Deal.Paid", {"email": "a@b.ru", "id": "1"}, "invalid_event"),
        (
            "/v1/getcourse/events/deal.status_changed",
            {"email": "a@b.ru", "id": "1"},
            "missing_status",
        ),
    ],
)
async def test_bad_events_400_and_nothing_written(
    client: httpx.AsyncClient, engine: AsyncEngine, path: str, params: dict[str, str], code: str
) -> None:
    answer = await client.get(path, params={"token": TOKEN, **params})
    assert answer.status_code == 400 and answer.json()["error"] == code
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Event)) == 0


async def test_events_need_the_token(client: httpx.AsyncClient) -> None:
    answer = await client.get(PAID, params={"email": "a@b.ru", "id": "1"})
    assert answer.status_code == 401
    techapi = await client.post("/v1/getcourse/techapi", json={"json": {}})
    assert techapi.status_code == 401


async def test_one_order_three_ways_is_one_event_per_kind(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await link(client, "vera@school.ru", client_id="901")
    gc = getcourse.GetCourseState()
    user = gc.add_user("vera@school.ru")
    deal = gc.add_deal(user, 14900, status="payed")
    obj = {
        "id": deal.id,
        "number": deal.number,
        "cost_money_value": "14900",
        "user": {"id": user.id, "email": user.email},
    }
    for _ in range(2):  # GetCourse retries nothing, but people paste URLs twice
        await fire_process_call(
            f"http://syncd{PAID}?token={TOKEN}&email={{object.user.email}}&user_id={{object.user.id}}"
            "&id={object.id}&number={object.number}&cost={object.cost_money_value}",
            obj,
            client=client,
        )
    answers = await fire_techapi(
        f"http://syncd/v1/getcourse/techapi?token={TOKEN}",
        "getcourse/dealPaid",
        user,
        deal,
        client=client,
    )
    assert [a.json()["duplicate"] for a in answers] == [True, False]  # paid again, status new
    kinds = sorted(e["kind"] for e in await listing(engine, None, 10))
    assert kinds == ["deal.paid", "deal.status_changed"]
    assert len(await deliveries(engine)) == 1  # deal.paid once; status payed has no rule


@pytest.mark.parametrize("first", ["json", "bare"])
async def test_a_techapi_delivery_wrapped_or_bare_is_one_event(
    client: httpx.AsyncClient, engine: AsyncEngine, first: str
) -> None:
    """getcourse.md, "Added 2026-12-02": both envelopes are seen; one event, one key."""
    await link(client, "vera@school.ru", client_id="901")
    gc = getcourse.GetCourseState()
    user = gc.add_user("vera@school.ru")
    deal = gc.add_deal(user, 14900, status="payed")
    url = f"http://syncd/v1/getcourse/techapi?token={TOKEN}"
    second = "bare" if first == "json" else "json"
    answers = [
        a
        for envelope in (first, second)
        for a in await fire_techapi(
            url, "getcourse/dealPaid", user, deal, client=client, envelope=envelope
        )
    ]
    assert [a.status_code for a in answers] == [200] * 4, answers[0].text
    assert [a.json()["duplicate"] for a in answers] == [False, False, True, True]
    kinds = sorted(e["kind"] for e in await listing(engine, None, 10))
    assert kinds == ["deal.paid", "deal.status_changed"]
    (paid,) = await listing(engine, "deal.paid", 10)
    assert paid["occurred_at"] is not None and paid["data"]["deal_id"] == str(deal.id)
    assert len(await deliveries(engine)) == 1


TECHAPI = (
    b'{"json": {"eventType": "getcourse/dealPaid", "ts64": %s, '
    b'"user": {"gcId": 5, "email": "a@b.ru"}, "deal": {"id": "7", "status": "payed"}}}'
)


@pytest.mark.parametrize(
    "ts64",
    [b"1e20", b"1e300", b"1768467822000", b"NaN", b"Infinity", b"-Infinity", b"-1", b"0",
     b"true", b'"soon"', b"[1]"],
)  # fmt: skip
async def test_a_ts64_that_is_no_time_is_400_and_nothing_written(
    client: httpx.AsyncClient, engine: AsyncEngine, ts64: bytes
) -> None:
    answer = await client.post(
        "/v1/getcourse/techapi",
        content=TECHAPI % ts64,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_body")
    detail = answer.json()["detail"]
    assert "ts64" in detail or "not a JSON number" in detail  # NaN: refused by the parser
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Event)) == 0


@pytest.mark.parametrize("ts64", [b"1768467822", b"1768467822.5", b'"1768467822"', b"null"])
async def test_a_ts64_in_seconds_is_the_events_time(
    client: httpx.AsyncClient, engine: AsyncEngine, ts64: bytes
) -> None:
    answer = await client.post(
        "/v1/getcourse/techapi",
        content=TECHAPI % ts64,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    (event,) = await listing(engine, "deal.paid", 10)
    if ts64 == b"null":  # absent: the event's time is unknown
        assert event["occurred_at"] is None
    else:
        assert event["occurred_at"][:19] == "2026-01-15T09:03:42"  # 1768467822 in UTC


async def test_a_body_that_is_no_techapi_delivery_is_400(client: httpx.AsyncClient) -> None:
    for body in ({"json": "x"}, {"ts64": 1768467822}, {"json": {"json": {}}}):
        answer = await client.post("/v1/getcourse/techapi", json=body, headers=AUTH)
        assert (answer.status_code, answer.json()["error"]) in (
            (400, "invalid_body"), (400, "invalid_event")
        )  # fmt: skip


async def test_an_event_waits_for_the_link(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await client.post(
        PAID, json={"email": "gleb@school.ru", "id": "9", "number": "1", "cost": "5"}, headers=AUTH
    )
    (event,) = await listing(engine, None, 10)
    assert event["status"] == "waiting_link" and event["wait_until"]
    assert await deliveries(engine) == []
    await link(client, "gleb@school.ru", client_id="903")  # the bot learns the email
    assert [d["action"] for d in await deliveries(engine)] == ["callback"]
    assert (await listing(engine, None, 10))[0]["status"] == "done"
    await link(client, "gleb@school.ru", telegram_id="5")  # a later link delivers nothing new
    assert len(await deliveries(engine)) == 1


async def test_an_event_past_wait_for_link_is_not_delivered(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await client.post(
        PAID, json={"email": "dina@school.ru", "id": "10", "number": "1", "cost": "5"}, headers=AUTH
    )
    async with engine.begin() as conn:
        await conn.execute(update(Event).values(wait_until=utcnow() - timedelta(seconds=1)))
    await link(client, "dina@school.ru", client_id="904")
    assert await deliveries(engine) == []
    assert (await listing(engine, None, 10))[0]["status"] == "expired"


async def test_missing_values_are_noted_and_where_filters(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await link(client, "egor@school.ru", client_id="905")
    await client.post(PAID, json={"email": "egor@school.ru", "id": "11"}, headers=AUTH)  # no number
    changed = "/v1/getcourse/events/deal.status_changed"
    await client.post(
        changed, json={"email": "egor@school.ru", "id": "11", "status": "in_work"}, headers=AUTH
    )
    await client.post(
        changed, json={"email": "egor@school.ru", "id": "11", "status": "cancelled"}, headers=AUTH
    )
    events = {e["external_id"]: e for e in await listing(engine, None, 10)}
    assert "no value for cost, number" in events["11"]["notes"]
    assert [d["message"] for d in await deliveries(engine)] == ["Статус заказа: cancelled"]


async def test_learning_gc_user_id_releases_waiting_write_backs(engine: AsyncEngine) -> None:
    settings = config(getcourse={"api_key": "k", "create_users": False})
    async for client in client_for(engine, settings=settings):
        await link(client, "zoya@school.ru", telegram_id="333")
        assert (await outbox.stats(engine))["waiting"] == 1
        await client.get(
            "/v1/getcourse/events/user.created",
            params={"token": TOKEN, "email": "zoya@school.ru", "user_id": "77", "id": "77"},
        )
    figures = await outbox.stats(engine)
    assert figures["waiting"] == 0 and figures["pending"] == 1


async def test_a_paid_order_reaches_the_bot(engine: AsyncEngine) -> None:
    state = salebot.SalebotState(key="sb-key")
    state.add_client(111, client_id=900)
    async with serve(salebot.create_app(state)) as sb_url:
        settings = Settings.model_validate(
            {
                "rules": RULES,
                "salebot": {"base_url": sb_url, "api_key": "sb-key", "rate_per_second": 0},
            }
        )
        async for client in client_for(engine, settings=settings):
            async with dispatching(engine, settings) as dispatcher:
                await link(client, "anna@school.ru", telegram_id="111", client_id="900")
                await client.get(
                    PAID,
                    params={
                        "token": TOKEN,
                        "email": "anna@school.ru",
                        "id": "1",
                        "number": "42",
                        "cost": "990",
                    },
                )
                dispatcher.wake()
                deadline = asyncio.get_running_loop().time() + 10
                while not await settled(engine, 1):
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.02)
    (call,) = state.calls_of("callback")
    assert call.body == {
        "client_id": 900,
        "message": "gc_deal_paid",
        "gc_deal_number": "42",
        "gc_amount": "990",
    }
    assert state.clients[900].deal_variables == {"gc_deal_number": "42", "gc_amount": "990"}


@pytest.mark.parametrize(
    ("rule", "key", "message"),
    [
        (
            {"event": "deal.paid", "action": "callback", "message": "x {nope}"},
            "rules.0",
            "unknown field {nope}",
        ),
        (
            {
                "event": "deal.paid",
                "action": "callback",
                "message": "x",
                "where": {"stat": "payed"},
            },
            "rules.0",
            "unknown field {stat}",
        ),
        (
            {"event": "deal.paid", "action": "callback", "message": "{number!r}"},
            "rules.0.message",
            "bad template",
        ),
        (
            {"event": "deal.paid", "action": "callback", "message": "{a.b}"},
            "rules.0.message",
            "bad template",
        ),
        ({"event": "deal.paid", "action": "callback"}, "rules.0.message", "needs a message"),
        (
            {"event": "deal.paid", "action": "save_variables"},
            "rules.0.variables",
            "needs variables",
        ),
        (
            {
                "event": "deal.paid",
                "action": "callback",
                "message": "x",
                "variables": {"client_id": "1"},
            },
            "rules.0.variables",
            "reserved",
        ),
    ],
)
def test_bad_rules_stop_start_up_naming_the_rule(
    rule: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_rules(Settings.model_validate({"rules": [rule]}).rules)
    assert caught.value.key == key and message in str(caught.value)
    assert "(deal.paid → " in str(caught.value)


def test_listed_fields_may_be_used() -> None:
    (rule,) = compile_rules(
        Settings.model_validate(
            {
                "rules": [
                    {
                        "event": "deal.paid",
                        "action": "callback",
                        "message": "{{x}} {promo}",
                        "fields": ["promo"],
                    }
                ]
            }
        ).rules
    )
    rendered = rule.render({"promo": "SALE"})
    assert not isinstance(rendered, str) and rendered.message == "{x} SALE"


DEAL_FIELDS = [
    "ID заказа", "Номер", "ID пользователя", "Пользователь", "Email", "Дата создания",
    "Дата оплаты", "Статус", "Стоимость, RUB",
]  # fmt: skip


def deal_row(i: int) -> list[str]:
    paid = i % 3 == 0
    return [
        str(7000 + i), str(100 + i), str(500 + i % 7), f"Покупатель {i % 7}",
        f"Buyer{i % 7}@School.ru", "2024-03-01 12:30:00", "2024-03-02 09:00:00" if paid else "",
        "payed" if paid else "new", "12 000,00",
    ]  # fmt: skip


async def test_a_big_batch_is_stored_as_given_and_repeats_are_duplicates(
    engine: AsyncEngine,
) -> None:
    """The bulk write path (many rows per statement, values converted once per row)."""
    from syncd.daemon import addressing
    from syncd.events import from_export_row
    from syncd.store.dialect import ROWS_PER_STATEMENT
    from syncd.store.events import EventStore

    store = EventStore(engine, addressing(NO_AGE_LIMIT))
    events = [e for i in range(1500) for e in from_export_row("deals", DEAL_FIELDS, deal_row(i))]
    assert len(events) > 2 * ROWS_PER_STATEMENT  # several statements in one batch
    first = await store.ingest(events[:100])
    assert not any(r.duplicate for r in first)
    results = await store.ingest(events)  # the first 100 again, then new ones
    assert [r.duplicate for r in results] == [True] * 100 + [False] * (len(events) - 100)
    assert [r.event_id for r in results[:100]] == [r.event_id for r in first]
    assert len({r.event_id for r in results}) == len(events)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Event)) == len(events)
        people = await conn.scalar(select(func.count(func.distinct(Event.identity_id))))
    assert people == 7  # one identity per buyer, found again in later batches
    paid = [e for e in await listing(engine, "deal.paid", 5000) if e["external_id"] == "7003"]
    (event,) = paid
    assert event["occurred_at"] == "2024-03-02T06:00:00+00:00"  # Moscow time → UTC
    assert event["email"] == "buyer3@school.ru" and event["gc_user_id"] == 503
    assert event["data"]["user_name"] == "Покупатель 3" and event["data"]["cost"] == "12000"
    assert event["status"] == "waiting_link"  # the rule needs a client id nobody has yet


async def test_the_pollers_ingest_counts_new_and_repeats_and_delivers(
    engine: AsyncEngine,
) -> None:
    """The poller's write path: no answer per event, counts by kind; rules still deliver."""
    from collections import Counter

    from syncd.daemon import addressing
    from syncd.events import from_export_row
    from syncd.identity import LinkClaim
    from syncd.store.events import EventStore
    from syncd.store.linkplan import LinkRequest
    from syncd.store.links import LinkStore

    claim = LinkClaim("buyer3@school.ru", None, P, 903)
    await LinkStore(engine, "reject").apply([LinkRequest(claim, "test")])
    store = EventStore(engine, addressing(NO_AGE_LIMIT))
    events = [e for i in range(1500) for e in from_export_row("deals", DEAL_FIELDS, deal_row(i))]
    first = await store.ingest_new(events[:300])
    assert first == Counter((e.kind, "poller", False) for e in events[:300])
    # a later, overlapping export: 300 stored already, 5 repeated within the batch
    second = await store.ingest_new(events + events[:5])
    expected = Counter((e.kind, "poller", False) for e in events[300:])
    expected.update((e.kind, "poller", True) for e in events[:300] + events[:5])
    assert second == expected
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Event)) == len(events)
        keys = {
            i: (k, x)
            for i, k, x in await conn.execute(select(Event.id, Event.kind, Event.external_id))
        }
        made = (await conn.execute(select(Delivery.dedupe_key, Delivery.payload))).all()
    # deal.paid of buyer 3 (the one with a client id), each once, for its own event (the
    # dedupe key names the event): number and client id are that deal's
    sent = sorted(
        (keys[int(key.split(":")[1])], p["gc_deal_number"], p["client_id"]) for key, p in made
    )
    paid = [i for i in range(1500) if i % 3 == 0 and i % 7 == 3]
    assert sent == [(("deal.paid", str(7000 + i)), str(100 + i), 903) for i in paid]
    assert store.enqueued == len(paid)


def test_sqlite_times_are_written_as_sqlalchemy_writes_them() -> None:
    """The event log's one-step time formatting matches SQLAlchemy's own conversion."""
    import random
    from datetime import UTC, datetime, timezone

    from sqlalchemy.dialects import sqlite

    from syncd.store.dialect import bind_processors
    from syncd.store.events import EVENTS, _sqlite_time, _ToDriver

    assert _ToDriver.for_dialect(sqlite.dialect()).time is _sqlite_time
    (reference,) = bind_processors(sqlite.dialect(), EVENTS, ["occurred_at"])
    rng = random.Random(7)
    for _ in range(2000):
        zone = timezone(timedelta(minutes=rng.randrange(-12 * 60, 14 * 60, 15)))
        moment = datetime.fromtimestamp(rng.uniform(-2e9, 4e9), UTC).astimezone(zone)
        moment = moment.replace(microsecond=rng.choice([0, rng.randrange(1_000_000)]))
        assert _sqlite_time(moment) == reference(moment)
    with pytest.raises(ValueError, match="naive"):
        _sqlite_time(datetime(2024, 1, 1))  # naive: the mistake under test


async def test_event_data_keeps_what_orjson_refuses(engine: AsyncEngine) -> None:
    """Data is JSON text by orjson; an integer beyond 64 bits still goes in (and comes out)."""
    from syncd.daemon import addressing
    from syncd.events import NewEvent
    from syncd.store.events import EventStore

    data = {"deal_id": "1", "title": "Курс «Основы»", "big": 2**70, "nested": {"n": [1, None]}}
    store = EventStore(engine, addressing(config()))
    await store.ingest([NewEvent("deal.created", "1", "webhook", "a@school.ru", None, None, data)])
    (event,) = await listing(engine, "deal.created", 10)
    assert event["data"] == data


@pytest.mark.parametrize(
    ("cell", "amount"),
    [
        ("12 000,00", "12000"), ("12\u00a0000,00", "12000"), ("99,50", "99.50"),
        ("300 руб.", "300"), ("300,50 руб.", "300.50"), ("12\u00a0000 RUB", "12000"),
        ("₽ 99", "99"), ("1,200.50 USD", "1200.50"), ("1.200,50", "1200.50"),
        ("-1 500,00", "-1500"), ("0,00", "0"),
    ],
)  # fmt: skip
def test_amounts_as_accounts_write_them(cell: str, amount: str) -> None:
    from syncd.events import money

    assert money(cell) == amount


@pytest.mark.parametrize("cell", ["много", "руб.", "1,2,3,4 руб 5", "--", "."])
def test_a_cell_that_is_no_amount_is_refused(cell: str) -> None:
    from syncd.errors import InvalidInput
    from syncd.events import money

    with pytest.raises(InvalidInput):
        money(cell)


def test_status_cells_as_codes_or_labels_are_stored_as_codes() -> None:
    from syncd.events import from_export_row

    fields = ["ID заказа", "Email", "Статус", "Состав заказа"]
    cells = [
        ("payed", "payed"), ("Оплачен", "payed"), ("ОТМЕНЁН", "cancelled"),
        ("Ожидаем оплаты", "payment_waiting"), ("Не подтверждён", "not_confirmed"),
    ]  # fmt: skip
    for cell, code in cells:
        events = from_export_row("deals", fields, ["1", "a@b.ru", cell, "Курс"])
        assert events[-1].data["status"] == code and events[-1].data["title"] == "Курс"
