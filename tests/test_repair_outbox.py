"""``syncd outbox show|list|stats``: one call with its cause and masked secrets, the events
waiting for a link, dead calls by reason — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from syncd import config
from syncd.daemon import event_store
from syncd.events import NewEvent
from syncd.store import outbox
from syncd.store.engine import create_engine
from syncd.store.models import Delivery
from tests.cli_run import Run, cli_with_rule

SB_KEY = "sb-secret-key-5e1f"


@pytest.fixture
def setup(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[Run, Path]:
    return cli_with_rule(
        db_url,
        tmp_path,
        monkeypatch,
        capsys,
        SYNCD_GETCOURSE__API_KEY="gc-secret-key-77aa",
        SYNCD_SALEBOT__BASE_URL="https://chatter.salebot.pro",
        SYNCD_SALEBOT__API_KEY=SB_KEY,
    )


async def _prepare(db_url: str, path: Path) -> None:
    """A paid deal for a@ (linked: a call) and one for w@ (no Telegram: it waits); the
    paid deal's call died twice over; a hand-made call carrying secrets."""
    settings = config.load(path).settings
    engine = create_engine(db_url)
    now = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    try:
        store = event_store(engine, settings, None)
        for email, deal in (("a@school.ru", "501"), ("w@school.ru", "502")):
            event = NewEvent(
                "deal.paid", deal, "webhook", email=email, occurred_at=datetime.now(UTC),
                data={"email": email, "number": deal},
            )  # fmt: skip
            await store.ingest([event])
        async with engine.begin() as conn:
            await conn.execute(
                update(Delivery)
                .where(Delivery.target == "salebot")
                .values(
                    status="dead",
                    attempts=3,
                    finished_at=now,
                    last_error="salebot tg_callback: status client_not_found",
                )
            )
            await outbox.enqueue(
                conn,
                [
                    outbox.NewDelivery(
                        "salebot", "save_variables",
                        {"client_id": 5, "variables": {"api_key": "leak-1", "x": 1},
                         "token": "leak-2", "nested": [{"secret": "leak-3"}]},
                    )
                ],
            )  # fmt: skip
    finally:
        await engine.dispose()


def test_show_list_and_stats(setup: tuple[Run, Path], db_url: str) -> None:
    syncd, path = setup
    assert syncd("identity", "link", "--email", "a@school.ru", "--telegram-id", "321")[0] == 0
    w_link = ("--email", "w@school.ru", "--client-id", "9", "--project-id", "7")
    assert syncd("identity", "link", *w_link)[0] == 0  # no Telegram address here
    asyncio.run(_prepare(db_url, path))

    code, out, err = syncd("outbox", "show", "2", "--json")
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert shown["target"] == "salebot" and shown["action"] == "tg_callback"
    assert shown["status"] == "dead" and shown["attempts"] == 3
    assert shown["last_error"] == "salebot tg_callback: status client_not_found"
    assert shown["payload"]["message"] == "gc_deal_paid" and shown["payload"]["user_id"] == 321
    assert shown["endpoint"] == "https://chatter.salebot.pro/api/***/tg_callback"
    cause = shown["cause"]
    assert (cause["type"], cause["kind"], cause["external_id"], cause["rule"]) == (
        "event", "deal.paid", "501", 0,
    )  # fmt: skip
    assert cause["occurred_at"] is not None and cause["source"] == "webhook"

    code, out, _ = syncd("outbox", "show", "2")
    assert code == 0
    assert (
        "call          salebot.tg_callback https://chatter.salebot.pro/api/***/tg_callback\n" in out
    )
    assert "caused by     event " in out and "deal.paid 501" in out
    assert "rules[0] (deal.paid → callback)" in out
    assert "last error    salebot tg_callback: status client_not_found\n" in out

    link = json.loads(syncd("outbox", "show", "1", "--json")[1])
    assert (link["target"], link["action"], link["status"]) == (
        "getcourse",
        "import_user",
        "pending",
    )
    assert link["endpoint"] == "http://127.0.0.1:9/pl/api/users"
    assert link["cause"]["type"] == "link" and link["cause"]["source"] == "cli"
    assert link["next_attempt_at"] is not None

    code, out, _ = syncd("outbox", "show", "3", "--json")
    secrets = json.loads(out)["payload"]
    assert secrets == {
        "client_id": 5,
        "variables": {"api_key": "***", "x": 1},
        "token": "***",
        "nested": [{"secret": "***"}],
    }
    for args in (("outbox", "show", "2"), ("outbox", "show", "3"), ("outbox", "list")):
        printed = "".join(syncd(*args)[1:])
        assert SB_KEY not in printed and "leak-" not in printed

    assert syncd("outbox", "show", "99") == (1, "", "syncd: there is no delivery 99\n")

    code, out, _ = syncd("outbox", "list")
    assert code == 0
    assert "+ 1 events wait for a link (oldest received " in out
    assert out.endswith("dead by reason: 1 × salebot tg_callback: status client_not_found\n")
    (waiting,) = json.loads(syncd("outbox", "list", "--status", "waiting_link", "--json")[1])
    assert (waiting["kind"], waiting["external_id"], waiting["status"]) == (
        "deal.paid", "502", "waiting_link",
    )  # fmt: skip
    text = syncd("outbox", "list", "--status", "waiting_link")[1]
    assert text.startswith(f"event #{waiting['event_id']} waiting_link deal.paid 502 identity=2")

    stats = json.loads(syncd("outbox", "stats", "--json")[1])
    assert stats["dead"] == 1 and stats["waiting_link_events"] == 1
    assert stats["dead_by_reason"] == {"salebot tg_callback: status client_not_found": 1}
    text = syncd("outbox", "stats")[1]
    assert "waiting_link_events             1\n" in text
    assert "dead: 1                         salebot tg_callback: status client_not_found\n" in text
