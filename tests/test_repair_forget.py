"""``syncd identity forget KEY`` (SPEC §11, 152-ФЗ) on SQLite and PostgreSQL: afterwards
the person's email, phone, name and keys are nowhere in a dump of the whole database."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from syncd import config
from syncd.daemon import event_store
from syncd.events import NewEvent
from syncd.store.engine import create_engine
from syncd.store.models import Delivery, Event, IdentityChange
from tests.cli_run import Run, cli_with_rule

EMAIL, TG, CLIENT, GC_USER = "anna.forget@school.ru", 730_001_234, 880_002_345, 4_242_424
PHONE, FIRST, LAST = "+7 (912) 345-67-89", "Анна", "Забытова"
PERSONAL = (EMAIL, str(TG), str(CLIENT), str(GC_USER), PHONE, "9123456789", FIRST, LAST)
CONFIG = """
[[rules]]
event = "deal.paid"
action = "callback"
message = "gc_deal_paid"
variables = { gc_deal_number = "{number}", gc_email = "{email}" }
"""


@pytest.fixture
def setup(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[Run, Path]:
    return cli_with_rule(db_url, tmp_path, monkeypatch, capsys, CONFIG)


async def _events(db_url: str, path: Path) -> None:
    settings = config.load(path).settings
    engine = create_engine(db_url)
    now = datetime.now(UTC)
    try:
        store = event_store(engine, settings, None)
        for event in (
                NewEvent(
                    "deal.paid", "9001", "webhook", email=EMAIL, gc_user_id=GC_USER,
                    occurred_at=now,
                    data={"email": EMAIL, "phone": PHONE, "first_name": FIRST, "last_name": LAST,
                          "name": f"{FIRST} {LAST}", "user_id": str(GC_USER), "number": "77",
                          "cost": "990", "utm_source": "vk", "Комментарий": f"пишите {EMAIL}"},
                ),
                NewEvent(
                    "deal.created", "9001", "poller", email=EMAIL, occurred_at=now,
                    data={"Email": EMAIL, "Телефон": PHONE, "Пользователь": f"{FIRST} {LAST}",
                          "cost": "990"},
                ),
                NewEvent(
                    "bot.started", "tg-1", "salebot", telegram_id=TG, client_id=CLIENT,
                    project_id=settings.salebot.project_id, occurred_at=now,
                    data={"telegram_id": TG, "client_id": CLIENT, "user_name": "anna_tg"},
                ),
                NewEvent(
                    "deal.paid", "9002", "webhook", email="boris@school.ru", occurred_at=now,
                    data={"email": "boris@school.ru", "number": "78", "cost": "500"},
                ),
        ):  # fmt: skip
            await store.ingest([event])
    finally:
        await engine.dispose()


def dump(db_url: str) -> str:
    """Every value stored anywhere in the database, as text."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        with sqlite3.connect(str(url.database)) as conn:
            return "\n".join(conn.iterdump())
    lines = []
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(False)) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(f'SELECT CAST(t AS text) FROM "{table}" AS t').fetchall()
            lines += [f"{table}: {row}" for (row,) in rows]
    return "\n".join(lines)


async def _figures(db_url: str) -> dict[str, object]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            events = {
                (r.kind, r.external_id): r
                for r in await conn.execute(select(Event).order_by(Event.id))
            }
            deliveries = list(await conn.execute(select(Delivery).order_by(Delivery.id)))
            changes = list(await conn.execute(select(IdentityChange).order_by(IdentityChange.id)))
            count = await conn.scalar(select(func.count()).select_from(Event))
    finally:
        await engine.dispose()
    return {"events": events, "deliveries": deliveries, "changes": changes, "count": count}


def test_forget_leaves_no_personal_data_anywhere(setup: tuple[Run, Path], db_url: str) -> None:
    syncd, path = setup
    link = ("identity", "link", "--email", EMAIL, "--telegram-id", str(TG))
    assert syncd(*link, "--client-id", str(CLIENT))[0] == 0
    assert syncd("identity", "link", "--email", "boris@school.ru", "--telegram-id", "1")[0] == 0
    # two conflicts: one of another email over her Telegram id, one of her own email
    assert syncd("identity", "link", "--email", "eve@school.ru", "--telegram-id", str(TG))[0] == 1
    assert syncd("identity", "link", "--email", EMAIL, "--telegram-id", "555555555")[0] == 1
    asyncio.run(_events(db_url, path))
    before = dump(db_url)
    assert all(value in before for value in (EMAIL, str(TG), str(CLIENT), PHONE, FIRST))

    # off a terminal (as here) --yes is required: nothing is erased without it
    assert syncd("identity", "forget", EMAIL) == (
        2,
        "",
        "syncd: forgetting cannot be undone: add --yes to confirm (not on a terminal)\n",
    )
    assert dump(db_url) == before

    code, out, err = syncd("identity", "forget", f"tg:{TG}", "--yes", "--json")
    assert (code, err) == (0, "")
    done = json.loads(out)
    assert done["identity_id"] == 1 and done["events_scrubbed"] == 3
    assert done["conflicts_deleted"] == 1 and done["conflicts_closed"] == 1
    assert done["deliveries_ended"] >= 2  # her GetCourse write-back and her paid deal's call

    after = dump(db_url)
    leaked = [value for value in PERSONAL if value in after]
    assert not leaked, f"still in the database after forget: {leaked}"
    assert "boris@school.ru" in after  # nobody else's data went
    assert syncd("identity", "show", EMAIL) == (1, "", f"syncd: no identity for {EMAIL}\n")

    figures = asyncio.run(_figures(db_url))
    assert figures["count"] == 4  # events stay countable
    paid = figures["events"][("deal.paid", "9001")]  # type: ignore[index]
    assert paid.email is None and paid.identity_id is None and paid.gc_user_id is None
    assert paid.data == {"number": "77", "cost": "990", "utm_source": "vk"}
    assert paid.occurred_at is not None
    bot = figures["events"][("bot.started", "tg-1")]  # type: ignore[index]
    assert (bot.telegram_id, bot.client_id, bot.data) == (None, None, {})
    ended = [d for d in figures["deliveries"] if d.status == "dead"]  # type: ignore[attr-defined]
    assert ended and all(d.last_error == "forgotten" for d in ended)
    assert all(d.identity_id is None for d in ended)
    (trace,) = [c for c in figures["changes"] if c.identity_id is None]  # type: ignore[attr-defined]
    assert (trace.source, trace.before) == ("cli", None)
    assert trace.after == {"forgotten_identity_id": 1}
    stats = json.loads(syncd("outbox", "stats", "--json")[1])
    assert stats["dead_by_reason"] == {"forgotten": len(ended)}
    assert syncd("conflicts", "list")[1].strip() == "no open conflicts"
    # boris's paid deal still calls the bot as before
    assert syncd("identity", "forget", EMAIL, "--yes") == (
        1,
        "",
        f"syncd: no identity for {EMAIL}\n",
    )


def test_forget_text_output(setup: tuple[Run, Path]) -> None:
    syncd, _ = setup
    syncd("identity", "link", "--email", EMAIL, "--telegram-id", str(TG))
    code, out, err = syncd("identity", "forget", EMAIL, "--yes")
    assert (code, err) == (0, "")
    # the trace row's own id differs by database (SQLite reuses a deleted rowid)
    assert re.fullmatch(
        r"identity 1 forgotten: 0 events and 1 deliveries scrubbed \(1 unsent ended dead: "
        r"forgotten\), 0 conflicts cleared; trace: identity_changes #\d+\n",
        out,
    ), out
