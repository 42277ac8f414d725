"""``syncd conflicts resolve ID --keep|--replace`` on SQLite and PostgreSQL (SPEC §7, §11)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from syncd import config
from syncd.daemon import event_store
from syncd.events import NewEvent
from syncd.store.engine import create_engine
from syncd.store.models import Delivery, Event, IdentityChange, LinkConflict
from tests.cli_run import Run, cli_with_rule

TG = 111_111_111


@pytest.fixture
def setup(
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[Run, Path]:
    return cli_with_rule(db_url, tmp_path, monkeypatch, capsys)


async def _paid_deal_for(db_url: str, path: Path, email: str) -> None:
    settings = config.load(path).settings
    engine = create_engine(db_url)
    try:
        store = event_store(engine, settings, None)
        event = NewEvent(
            "deal.paid", "5001", "webhook", email=email, occurred_at=datetime.now(UTC),
            data={"email": email, "number": "42", "cost": "990"},
        )  # fmt: skip
        (result,) = await store.ingest([event])
        assert result.status == "waiting_link"  # b@ has no Telegram id yet
    finally:
        await engine.dispose()


async def _rows(db_url: str) -> tuple[list[dict[str, object]], list[object], list[object]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            deliveries = [
                {"target": r.target, "action": r.action, "payload": r.payload}
                for r in await conn.execute(select(Delivery).order_by(Delivery.id))
            ]
            changes = list(await conn.execute(select(IdentityChange).order_by(IdentityChange.id)))
            statuses = list(await conn.scalars(select(LinkConflict.status)))
            events = list(await conn.scalars(select(Event.status)))
    finally:
        await engine.dispose()
    return deliveries, changes, [*statuses, *events]


def test_replace_applies_the_claim_as_the_webhook_would(
    setup: tuple[Run, Path], db_url: str
) -> None:
    syncd, path = setup
    assert syncd("identity", "link", "--email", "a@school.ru", "--telegram-id", str(TG))[0] == 0
    # b@ is known by a client id of another project only: no Telegram address here yet
    b = syncd("identity", "link", "--email", "b@school.ru", "--client-id", "7", "--project-id", "9")
    assert b[0] == 0
    asyncio.run(_paid_deal_for(db_url, path, "b@school.ru"))
    code, _, err = syncd("identity", "link", "--email", "b@school.ru", "--telegram-id", str(TG))
    assert code == 1 and "conflict 1:" in err
    before, _, _ = asyncio.run(_rows(db_url))

    code, out, err = syncd("conflicts", "resolve", "1", "--replace")
    assert (code, err) == (0, "")
    assert out.startswith("conflict 1 replaced: linked identity 2")

    shown = json.loads(syncd("identity", "show", "tg:111111111", "--json")[1])
    assert shown["email"] == "b@school.ru"
    assert json.loads(syncd("identity", "show", "a@school.ru", "--json")[1])["telegram_id"] is None
    deliveries, changes, statuses = asyncio.run(_rows(db_url))
    new = deliveries[len(before) :]
    # the GetCourse write-back of both sides, and the paid deal that waited for b@'s link
    writes = {d["payload"]["user"]["email"]: d["payload"]["user"]["addfields"] for d in new  # type: ignore[index]
              if d["target"] == "getcourse"}  # fmt: skip
    assert writes["a@school.ru"]["telegram_id"] == ""
    assert writes["b@school.ru"]["telegram_id"] == str(TG)
    (callback,) = [d for d in new if d["target"] == "salebot"]
    assert callback["action"] == "tg_callback"
    assert callback["payload"]["user_id"] == TG  # type: ignore[index]
    assert callback["payload"]["message"] == "gc_deal_paid"  # type: ignore[index]
    lost, gained = changes[-2:]
    assert (lost.source, lost.before["telegram_id"], lost.after["telegram_id"]) == ("cli", TG, None)
    assert (gained.source, gained.after["telegram_id"]) == ("cli", TG)
    assert statuses[0] == "replaced" and statuses[1:] == ["done"]
    assert syncd("conflicts", "list")[1].strip() == "no open conflicts"

    code, out, err = syncd("conflicts", "resolve", "1", "--replace")
    assert (code, out) == (1, "")
    assert err == "syncd: conflict_closed: conflict 1 is already closed (replaced)\n"


def test_keep_closes_and_changes_nothing(setup: tuple[Run, Path], db_url: str) -> None:
    syncd, _ = setup
    syncd("identity", "link", "--email", "a@school.ru", "--telegram-id", str(TG))
    syncd("identity", "link", "--email", "b@school.ru", "--telegram-id", str(TG))
    before = asyncio.run(_rows(db_url))

    code, out, err = syncd("conflicts", "resolve", "1", "--keep", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"conflict_id": 1, "status": "kept"}
    deliveries, changes, statuses = asyncio.run(_rows(db_url))
    assert (deliveries, len(changes)) == (before[0], len(before[1]))
    assert statuses == ["kept"]
    assert json.loads(syncd("identity", "show", "tg:111111111", "--json")[1])["email"] == (
        "a@school.ru"
    )
    assert syncd("identity", "show", "b@school.ru")[0] == 1


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (("99", "--keep"), 1, "syncd: unknown_conflict: there is no conflict 99\n"),
        (("1",), 2, None),  # --keep or --replace is required
        (("1", "--keep", "--replace"), 2, None),
        (("x", "--keep"), 2, None),
    ],
)
def test_bad_resolutions(
    setup: tuple[Run, Path], args: tuple[str, ...], code: int, line: str | None
) -> None:
    syncd, _ = setup
    if code == 2:
        with pytest.raises(SystemExit) as caught:
            syncd("conflicts", "resolve", *args)
        assert caught.value.code == 2
        return
    assert syncd("conflicts", "resolve", *args) == (code, "", line)
