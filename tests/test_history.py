"""History is data, not news; early links reach GetCourse; the CLI is the webhook (SPEC §11).

On SQLite and PostgreSQL: old events are stored with ``too_old`` and make no call, from
every source and when a late link releases them; ``syncd backfill``'s store fires no rule;
``syncd events redo`` fires on purpose, once; ``syncd writeback sync`` queues what
GetCourse never confirmed and nothing it did; ``syncd identity link`` releases waiting
events like the webhook; skipped rules are counted and said; every template field works.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from loguru import logger
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.cli import main
from syncd.config import Rule as RuleSettings
from syncd.config import Settings
from syncd.daemon import addressing, event_store, write_back
from syncd.events import CANONICAL_FIELDS, NewEvent, from_export_row
from syncd.metrics import Metrics
from syncd.rules import unproduced_kinds
from syncd.sandbox import getcourse
from syncd.store.events import EventStore, listing, redo
from syncd.store.models import Delivery, Event, Identity, utcnow
from syncd.store.writeback import sync, unconfirmed
from syncd.writeback import WriteBack
from tests.test_outbox_dispatch import (  # noqa: F401 (fixtures)
    apis,
    dispatching,
    gc_state,
    sb_state,
    settings,
    settled,
    until,
)
from tests.test_webhook_links import AUTH, client_for

P = 294495
PAID_RULE: dict[str, Any] = {
    "event": "deal.paid",
    "action": "callback",
    "message": "gc_deal_paid",
    "variables": {"gc_deal_number": "{number}"},
}
FIELDS = [
    "ID заказа",
    "Номер",
    "ID пользователя",
    "Email",
    "Дата создания",
    "Дата оплаты",
    "Статус",
]


def config(**extra: Any) -> Settings:
    return Settings.model_validate({"rules": [PAID_RULE], **extra})


def local(moment: datetime) -> str:
    """A moment as a GetCourse export writes it (Moscow time)."""
    return (moment + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S")


def paid_row(deal: int, email: str, paid: datetime) -> list[str]:
    return [str(deal), str(100 + deal), "", email, local(paid), local(paid), "payed"]


async def deliveries(engine: AsyncEngine) -> list[tuple[str, dict[str, Any]]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(Delivery.action, Delivery.payload).order_by(Delivery.id))
        return [(action, payload) for action, payload in rows]


async def link(client: httpx.AsyncClient, email: str, **keys: str) -> None:
    answer = await client.post("/v1/links", json={"email": email, **keys}, headers=AUTH)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(sink)


async def test_old_events_are_stored_as_history_from_every_source(
    engine: AsyncEngine, logged: list[str]
) -> None:
    metrics = Metrics()
    now = utcnow()
    async for client in client_for(engine, settings=config(), metrics=metrics):
        await link(client, "anna@school.ru", client_id="900")
        # the poller's path: two years of orders, and one paid an hour ago
        store = event_store(engine, config(), metrics)
        rows = [
            paid_row(7000 + i, "anna@school.ru", now - timedelta(days=700 - i)) for i in range(20)
        ]
        rows.append(paid_row(8000, "anna@school.ru", now - timedelta(hours=1)))
        events = [e for row in rows for e in from_export_row("deals", FIELDS, row)]
        await store.ingest_new(events)
        # the Tech API's path: ts64 says when it happened
        old = {"eventType": "getcourse/dealPaid", "ts64": (now - timedelta(days=3)).timestamp(),
               "user": {"email": "anna@school.ru"}, "deal": {"id": 9001, "number": 9}}  # fmt: skip
        answer = await client.post("/v1/getcourse/techapi", json={"json": old}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        exposition = (await client.get("/metrics")).text
    calls = await deliveries(engine)
    assert [p["gc_deal_number"] for _, p in calls] == ["8100"]  # only the news
    stored = {e["external_id"]: e for e in await listing(engine, "deal.paid", 100)}
    assert len(stored) == 22  # history is data: every event is stored
    assert all("too_old" in stored[str(7000 + i)]["notes"] for i in range(20))
    assert "too_old" in stored["9001"]["notes"] and stored["9001"]["status"] == "done"
    assert stored["8000"]["notes"] == ""
    assert 'syncd_rule_skips_total{reason="too_old",rule="0:deal.paid"} 21.0' in exposition
    said = [line for line in logged if "made no call" in line]
    assert said and "20 event(s) made no call: too_old" in said[0]  # one line, not twenty


async def test_a_late_link_releases_only_what_is_still_news(engine: AsyncEngine) -> None:
    now = utcnow()
    async for client in client_for(engine, settings=config()):
        store = event_store(engine, config(), None)
        rows = [paid_row(1, "boris@school.ru", now - timedelta(hours=5)),
                paid_row(2, "boris@school.ru", now - timedelta(hours=6))]  # fmt: skip
        await store.ingest([e for row in rows for e in from_export_row("deals", FIELDS, row)])
        waiting = [
            e for e in await listing(engine, "deal.paid", 10) if e["status"] == "waiting_link"
        ]
        assert len(waiting) == 2  # news, but nobody to send it to yet
        async with engine.begin() as conn:  # deal 2 has waited three days meanwhile
            await conn.execute(
                update(Event)
                .where(Event.kind == "deal.paid", Event.external_id == "2")
                .values(occurred_at=now - timedelta(days=3))
            )
        await link(client, "boris@school.ru", client_id="901")
    assert [p["gc_deal_number"] for _, p in await deliveries(engine)] == ["101"]
    stored = {e["external_id"]: e for e in await listing(engine, "deal.paid", 10)}
    assert stored["2"]["status"] == "done" and "too_old" in stored["2"]["notes"]


async def test_the_backfill_store_fires_no_rule(engine: AsyncEngine) -> None:
    now = utcnow()
    async for client in client_for(engine, settings=config()):
        await link(client, "anna@school.ru", client_id="900")
    history = EventStore(engine, addressing(config()).history_only())
    row = paid_row(5, "anna@school.ru", now - timedelta(minutes=5))  # fresh, still no call
    await history.ingest_new(from_export_row("deals", FIELDS, row))
    assert len(await listing(engine, "deal.paid", 10)) == 1
    assert await deliveries(engine) == []


async def test_events_redo_fires_on_purpose_once(engine: AsyncEngine) -> None:
    now = utcnow()
    async for client in client_for(engine, settings=config()):
        await link(client, "anna@school.ru", client_id="900")
    store = event_store(engine, config(), None)
    await store.ingest(
        from_export_row("deals", FIELDS, paid_row(5, "anna@school.ru", now - timedelta(days=30)))
    )
    (event,) = await listing(engine, "deal.paid", 10)
    assert await deliveries(engine) == []
    dry, missing = await redo(store, [event["id"]], dry_run=True)
    assert missing == [] and [d.outcome for d in dry] == ["would queue"]
    assert dry[0].payload == {"client_id": 900, "message": "gc_deal_paid", "gc_deal_number": "105"}
    assert await deliveries(engine) == []  # a dry run writes nothing
    done, _ = await redo(store, [event["id"], 999_999], dry_run=False)
    assert [d.outcome for d in done] == ["queued"] and done[0].delivery_id is not None
    again, missing = await redo(store, [event["id"]], dry_run=False)
    assert [d.outcome for d in again] == ["already made"] and missing == []
    assert len(await deliveries(engine)) == 1


async def test_links_made_before_getcourse_was_configured_reach_it_once(
    engine: AsyncEngine,
    apis: tuple[str, str],  # noqa: F811
    gc_state: getcourse.GetCourseState,  # noqa: F811
) -> None:
    async for client in client_for(engine):  # the README's path: no GetCourse key yet
        await link(client, "anna@school.ru", telegram_id="111", client_id="900")
        await link(client, "boris@school.ru", telegram_id="222")
    assert await deliveries(engine) == []
    configured = settings(*apis)
    effects = write_back(configured)
    assert isinstance(effects, WriteBack)
    listed = await sync(engine, effects, dry_run=True)
    assert [u.email for u in listed] == ["anna@school.ru", "boris@school.ru"]
    assert await deliveries(engine) == []
    assert len(await sync(engine, effects)) == 2
    assert await sync(engine, effects) == []  # queued already: not twice
    async with dispatching(engine, configured) as dispatcher:
        dispatcher.wake()
        await until(lambda: settled(engine, 2))
    written = {c.params["user"]["email"]: c.params["user"]["addfields"] for c in gc_state.imports()}
    assert written == {
        "anna@school.ru": {"telegram_id": "111", "sb_294495_id": "900"},
        "boris@school.ru": {"telegram_id": "222", "sb_294495_id": ""},
    }
    async with engine.connect() as conn:
        rows = await conn.execute(select(Identity.email, Identity.gc_telegram_id))
        confirmed = {email: tg for email, tg in rows}
    assert confirmed == {"anna@school.ru": 111, "boris@school.ru": 222}
    assert await unconfirmed(engine, P) == [] and await sync(engine, effects) == []


def test_the_cli_link_releases_waiting_events_like_the_webhook(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SYNCD_DATABASE__URL", db_url)
    monkeypatch.delenv("SYNCD_CONFIG", raising=False)
    toml = tmp_path / "syncd.toml"
    toml.write_text(
        '[[rules]]\nevent = "deal.paid"\naction = "callback"\nmessage = "gc_deal_paid"\n',
        encoding="utf-8",
    )
    from syncd.store.engine import create_engine

    async def waiting_event() -> None:
        engine = create_engine(db_url)
        try:
            store = event_store(engine, config(), None)
            await store.ingest(
                [
                    NewEvent(
                        "deal.paid",
                        "77",
                        "webhook",
                        "gleb@school.ru",
                        data={"deal_id": "77", "number": "7"},
                    )
                ]
            )
        finally:
            await engine.dispose()

    asyncio.run(waiting_event())
    code = main(["--config", str(toml), "identity", "link", "--email", "gleb@school.ru",
                 "--client-id", "903"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    code = main(["--config", str(toml), "outbox", "list", "--json"])
    assert code == 0
    (row,) = json.loads(_last_json(capsys))
    assert row["action"] == "callback" and row["status"] == "pending"
    main(["--config", str(toml), "events", "list", "--json"])
    (event,) = json.loads(_last_json(capsys))
    assert event["status"] == "done"


def _last_json(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr().out
    start = min(i for i in (out.find("["), out.find("{")) if i >= 0)
    return out[start:]


def every_field_rules() -> list[dict[str, Any]]:
    fields = sorted(CANONICAL_FIELDS)
    return [
        {"event": "deal.paid", "action": "callback", "message": f"m_{name}",
         "variables": {"v": "{" + name + "}"}}
        for name in fields
    ]  # fmt: skip


async def test_every_documented_template_field_gives_a_call(engine: AsyncEngine) -> None:
    """Each canonical field, ``{event_id}`` included, fills a template and makes a call."""
    rules = every_field_rules()
    configured = Settings.model_validate({"rules": rules})
    params = {name: f"x-{name}" for name in CANONICAL_FIELDS - {"kind", "external_id", "event_id"}}
    params.update(email="anna@school.ru", user_id="42", id="5005", deal_id="5005",
                  telegram_id="111", client_id="900", project_id=str(P))  # fmt: skip
    async for client in client_for(engine, settings=configured):
        await link(client, "anna@school.ru", client_id="900")
        answer = await client.post("/v1/getcourse/events/deal.paid", data=params, headers=AUTH)
        assert answer.status_code == 200, answer.text
        event_id = answer.json()["event_id"]
    made = {p["message"]: p["v"] for _, p in await deliveries(engine)}
    expected = {f"m_{name}": params.get(name) for name in CANONICAL_FIELDS}
    expected.update(m_kind="deal.paid", m_external_id="5005", m_event_id=str(event_id))
    assert made == expected


def test_a_rule_about_an_event_nobody_sends_is_a_warning() -> None:
    rules = [RuleSettings(event="deal.payed", action="callback", message="x"),
             RuleSettings(event="bot.started", action="callback", message="x"),
             RuleSettings(event="payment.accepted", action="callback", message="x")]  # fmt: skip
    (warning,) = unproduced_kinds(rules)
    assert warning.startswith("rules.0:") and "did you mean deal.paid?" in warning
