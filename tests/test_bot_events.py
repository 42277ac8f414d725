"""Bot events and GetCourse actions (SPEC §10), on SQLite and PostgreSQL.

``/v1/salebot/events/{event}``: every answer of the table, de-duplication, events of
people no link names yet attached later; ``gc_update_user`` and ``gc_create_deal``
against the GetCourse simulator, its failures included; the round trip a bot builds a
"pay here" button on: bot event → deal in GetCourse → callback with the payment link.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.config import Settings
from syncd.daemon import addressing
from syncd.errors import ConfigError
from syncd.sandbox import getcourse, salebot
from syncd.store import outbox
from syncd.store.engine import create_engine
from syncd.store.models import Delivery, Event
from tests.test_outbox_dispatch import (  # noqa: F401 (fixtures)
    GC_KEY,
    SB_KEY,
    apis,
    dispatching,
    gc_state,
    sb_state,
    settled,
    until,
)
from tests.test_webhook_links import AUTH, client_for

P = 294495
WANT: dict[str, Any] = {
    "event": "bot.want_course",
    "action": "gc_create_deal",
    "fields": ["offer", "price"],
    "offer_code": "{offer}",
    "cost": "{price}",
    "status": "new",
    "reply": "gc_deal_ready",
}
TAG: dict[str, Any] = {
    "event": "bot.tag",
    "action": "gc_update_user",
    "groups": ["{tag}", ["VIP", "2026-12-31"]],
    "addfields": {"Источник в боте": "{start}"},
}


def configured(gc_url: str = "http://127.0.0.1:9", sb_url: str = "http://127.0.0.1:9") -> Settings:
    return Settings.model_validate(
        {
            "getcourse": {"base_url": gc_url, "api_key": GC_KEY},
            "salebot": {"base_url": sb_url, "api_key": SB_KEY, "rate_per_second": 0},
            "rules": [WANT, TAG],
        }
    )


async def count(engine: AsyncEngine, model: type[Any]) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(model)) or 0)


async def events(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(Event).order_by(Event.id))).all())


async def test_bot_events_as_salebot_sends_them(engine: AsyncEngine) -> None:
    async for client in client_for(engine, settings=configured()):
        url = "/v1/salebot/events/started"
        # GET from a block, a variable the bot had no value for left as #{…}
        query = {"token": AUTH["Authorization"][len("Bearer ") :], "telegram_id": "555",
                 "start": "ads_vk", "utm_campaign": "#{utm_campaign}"}  # fmt: skip
        got = await client.get(url, params=query)
        assert got.status_code == 200 and got.json()["success"] is True, got.text
        assert got.json()["duplicate"] is False
        # JSON with numbers, an id: a second call with the same id is a duplicate
        body = {"client_id": 900, "telegram_id": 555, "id": "s-1", "step": 3}
        first = await client.post("/v1/salebot/events/step", json=body, headers=AUTH)
        again = await client.post("/v1/salebot/events/step", json=body, headers=AUTH)
        assert again.json() == {**first.json(), "duplicate": True}
        form = await client.post(
            "/v1/salebot/events/tag", data={"sb_id": "900", "tag": "course"}, headers=AUTH
        )
        assert form.status_code == 200
    stored = await events(engine)
    assert [(e.kind, e.source) for e in stored] == [
        ("bot.started", "salebot"), ("bot.step", "salebot"), ("bot.tag", "salebot"),
    ]  # fmt: skip
    started, step, tag = stored
    assert (started.telegram_id, started.client_id, started.project_id) == (555, None, P)
    assert started.identity_id is None  # nobody has linked tg 555 yet
    assert started.data == {"telegram_id": "555", "start": "ads_vk", "project_id": str(P)}
    assert step.data["step"] == "3" and step.external_id == "s-1"
    assert tag.client_id == 900  # sb_id, as older bots send it


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("started", {"start": "x"}, "missing_key"),
        ("started", {"telegram_id": "12ab"}, "invalid_telegram_id"),
        ("started", {"client_id": "-1"}, "invalid_client_id"),
        ("started", {"client_id": "1", "project_id": "p"}, "invalid_project_id"),
        ("started", {"client_id": "1", "email": "not-an-email"}, "invalid_email"),
        ("Started!", {"client_id": "1"}, "invalid_event"),
        ("started", {"client_id": "1", "id": "has space"}, "invalid_id"),
        ("started", {"client_id": "1", "extra": {"nested": 1}}, "invalid_body"),
    ],
)
async def test_bad_bot_events_are_400_and_write_nothing(
    engine: AsyncEngine, path: str, body: dict[str, Any], error: str
) -> None:
    async for client in client_for(engine, settings=configured()):
        answer = await client.post(f"/v1/salebot/events/{path}", json=body, headers=AUTH)
        unauthorized = await client.post("/v1/salebot/events/started", json={"client_id": 1})
    assert answer.status_code == 400, answer.text
    assert answer.json()["success"] is False and answer.json()["error"] == error
    assert unauthorized.status_code == 401
    assert await count(engine, Event) == 0


async def test_a_link_gives_earlier_bot_events_their_person(engine: AsyncEngine) -> None:
    async for client in client_for(engine, settings=configured()):
        for url, keys in (("started", {"telegram_id": "777"}), ("step", {"client_id": "901"})):
            answer = await client.post(f"/v1/salebot/events/{url}", json=keys, headers=AUTH)
            assert answer.status_code == 200
        link = {"email": "vera@school.ru", "telegram_id": "777", "client_id": "901"}
        answer = await client.post("/v1/links", json=link, headers=AUTH)
        assert answer.status_code == 200
        identity_id = answer.json()["identity_id"]
        # later bot events find the person at once
        await client.post(
            "/v1/salebot/events/tag", json={"client_id": "901", "tag": "x"}, headers=AUTH
        )
    assert {e.identity_id for e in await events(engine)} == {identity_id}


async def test_the_round_trip_bot_to_deal_to_payment_link(
    engine: AsyncEngine,
    apis: tuple[str, str],  # noqa: F811
    gc_state: getcourse.GetCourseState,  # noqa: F811
    sb_state: salebot.SalebotState,  # noqa: F811
) -> None:
    settings = configured(*apis)
    sb_state.add_client(555, client_id=900)
    async for client in client_for(engine, settings=settings):
        link = {"email": "anna@school.ru", "telegram_id": "555", "client_id": "900"}
        assert (await client.post("/v1/links", json=link, headers=AUTH)).status_code == 200
        want = {"client_id": "900", "offer": "course-1", "price": "14900", "id": "w1"}
        answer = await client.post("/v1/salebot/events/want_course", json=want, headers=AUTH)
        assert answer.status_code == 200
        async with dispatching(engine, settings) as dispatcher:
            dispatcher.wake()
            await until(lambda: settled(engine, 3))  # write-back, deal, reply
    (deal,) = gc_state.deals.values()
    assert (deal.title, deal.cost, deal.status) == ("course-1", 14900, "new")
    deal_call = next(c for c in gc_state.imports() if c.path == "/pl/api/deals")
    assert deal_call.params["system"]["return_payment_link"] == 1
    assert "_syncd" not in deal_call.params  # syncd's own note never leaves it
    (reply,) = sb_state.calls_of("callback")
    assert reply.body["client_id"] in (900, "900") and reply.body["message"] == "gc_deal_ready"
    assert reply.body["gc_deal_id"] == str(deal.id)
    assert reply.body["gc_deal_number"] == str(deal.number)
    assert (
        reply.body["gc_payment_link"].startswith("https://")
        and str(deal.id) in reply.body["gc_payment_link"]
    )


async def test_a_getcourse_action_waits_for_the_email(
    engine: AsyncEngine,
    apis: tuple[str, str],  # noqa: F811
    gc_state: getcourse.GetCourseState,  # noqa: F811
) -> None:
    settings = configured(*apis)
    async for client in client_for(engine, settings=settings):
        tag = {"client_id": "902", "tag": "Поток 1", "start": "ads"}
        await client.post("/v1/salebot/events/tag", json=tag, headers=AUTH)
        (event,) = await events(engine)
        assert event.status == "waiting_link"  # no email for GetCourse yet
        assert await count(engine, Delivery) == 0
        link = {"email": "gleb@school.ru", "client_id": "902"}
        assert (await client.post("/v1/links", json=link, headers=AUTH)).status_code == 200
        async with dispatching(engine, settings) as dispatcher:
            dispatcher.wake()
            await until(lambda: settled(engine, 2))  # write-back and the tag's update
    user = gc_state.user_by_email("gleb@school.ru")
    assert user is not None
    groups = {g.name for g in gc_state.groups.values()}
    assert {"Поток 1", "VIP"} <= groups
    update = [c for c in gc_state.imports() if "group_name" in c.params["user"]]
    assert update[0].params["user"]["group_name"] == ["Поток 1", ["VIP", "2026-12-31"]]
    assert update[0].params["user"]["addfields"] == {"Источник в боте": "ads"}


async def test_a_deal_getcourse_refuses_is_dead_with_its_reason(
    engine: AsyncEngine,
    apis: tuple[str, str],  # noqa: F811
    gc_state: getcourse.GetCourseState,  # noqa: F811
) -> None:
    rule = {**WANT, "status": "{offer}"}  # a status GetCourse does not know
    settings = Settings.model_validate({**configured(*apis).model_dump(), "rules": [rule]})
    async for client in client_for(engine, settings=settings):
        link = {"email": "anna@school.ru", "client_id": "900"}
        await client.post("/v1/links", json=link, headers=AUTH)
        want = {"client_id": "900", "offer": "bogus", "price": "10"}
        await client.post("/v1/salebot/events/want_course", json=want, headers=AUTH)
        async with dispatching(engine, settings) as dispatcher:
            dispatcher.wake()
            await until(lambda: settled(engine, 2))
    dead = [d for d in await outbox.listing(engine, "dead", 10)]
    assert len(dead) == 1 and dead[0]["action"] == "import_deal"
    assert "bogus" in dead[0]["last_error"]
    assert gc_state.deals == {}


@pytest.mark.parametrize(
    ("rule", "where"),
    [
        ({"event": "bot.x", "action": "gc_create_deal", "offer_code": "c"}, "rules.0.cost"),
        ({"event": "bot.x", "action": "gc_create_deal", "cost": "1"}, "rules.0"),
        ({"event": "bot.x", "action": "gc_update_user"}, "rules.0"),
        ({"event": "bot.x", "action": "gc_update_user", "groups": ["{nope}"]}, "rules.0"),
        ({"event": "bot.x", "action": "callback", "message": "m", "reply": "r"}, "rules.0.reply"),
        (
            {"event": "bot.x", "action": "gc_update_user", "groups": [["VIP", "31.12.2026"]]},
            "rules.0.groups.0",
        ),
    ],
)
def test_getcourse_action_config_errors_name_the_rule(rule: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        addressing(Settings.model_validate({"rules": [rule]}))
    assert caught.value.key == where


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("no_api", "empty answer"), ("forbidden", "Действие запрещено")],
)
async def test_a_deal_on_a_plan_without_the_api_is_dead_not_retried(
    engine: AsyncEngine,
    apis: tuple[str, str],  # noqa: F811
    gc_state: getcourse.GetCourseState,  # noqa: F811
    mode: str,
    reason: str,
) -> None:
    settings = configured(*apis)
    gc_state.import_mode = mode  # type: ignore[assignment]
    async for client in client_for(engine, settings=settings):
        await client.post(
            "/v1/links", json={"email": "anna@school.ru", "client_id": "900"}, headers=AUTH
        )
        want = {"client_id": "900", "offer": "course-1", "price": "10"}
        await client.post("/v1/salebot/events/want_course", json=want, headers=AUTH)
        async with dispatching(engine, settings) as dispatcher:
            dispatcher.wake()
            await until(lambda: settled(engine, 2))
    dead = {d["action"]: d for d in await outbox.listing(engine, "dead", 10)}
    assert reason in dead["import_deal"]["last_error"]
    assert dead["import_deal"]["attempts"] == 1  # permanent: not retried


async def test_a_body_too_large_is_413_and_a_store_down_is_503(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    async for client in client_for(engine, settings=configured()):
        big = {"client_id": "1", "note": "x" * 10_000}
        answer = await client.post("/v1/salebot/events/started", json=big, headers=AUTH)
    assert answer.status_code == 413 and answer.json()["error"] == "body_too_large"
    garbage = tmp_path / "not-a-database.db"
    garbage.write_bytes(b"this is not an SQLite file" * 100)
    down = create_engine(f"sqlite:///{garbage}")
    try:
        async for client in client_for(down, settings=configured()):
            answer = await client.post(
                "/v1/salebot/events/started", json={"client_id": "1"}, headers=AUTH
            )
        assert answer.status_code == 503
        assert answer.json() == {"success": False, "error": "unavailable"}
    finally:
        await down.dispose()
        await asyncio.sleep(0.1)  # as in test_webhook_links: aiosqlite's late stop()
    assert await count(engine, Event) == 0


async def test_one_batch_of_bot_and_getcourse_events_finds_each_person_once(
    engine: AsyncEngine,
) -> None:
    """A linked person's bot event beside a GetCourse event of someone already known
    (no GetCourse user id) in one batch: each finds its identity, none is made twice."""
    from syncd.bot_events import from_salebot
    from syncd.daemon import event_store
    from syncd.events import NewEvent

    async for client in client_for(engine, settings=configured()):
        for email, keys in (
            ("anna@school.ru", {"client_id": "900"}),
            ("boris@school.ru", {"telegram_id": "7"}),
        ):
            await client.post("/v1/links", json={"email": email, **keys}, headers=AUTH)
    store = event_store(engine, configured(), None)
    results = await store.ingest(
        [
            from_salebot("step", {"client_id": "900", "step": "1"}, P),
            NewEvent("deal.created", "42", "webhook", "boris@school.ru", data={"deal_id": "42"}),
        ]
    )
    assert [r.duplicate for r in results] == [False, False]
    stored = await events(engine)
    assert len({e.identity_id for e in stored}) == 2 and None not in {e.identity_id for e in stored}
