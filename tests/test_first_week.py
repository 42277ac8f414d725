"""A school's first week, replayed with real ``syncd run`` processes (issue 15).

Day one: the README's path, no GetCourse key yet; a subscriber links. Day two: the key
is set, the example config polls from 2024 and has a ``deal.paid`` rule. Two years of
paid orders arrive as events — and the bot hears about none of them; the early link is
written to GetCourse all the same.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from syncd.sandbox import getcourse, salebot
from syncd.sandbox.serve import serve
from syncd.store.engine import create_engine
from syncd.store.models import Event, Identity
from tests.daemon import GC_KEY, SB_KEY, TOKEN, Daemon

pytestmark = pytest.mark.slow
CONFIG = """
[getcourse.poll]
interval = "2s"
exports = ["deals"]
since = "2024-01-01"

[[rules]]
event = "deal.paid"
action = "callback"
message = "gc_deal_paid"
variables = { gc_deal_number = "{number}" }
"""


async def wait_for(check, what: str, seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        await asyncio.sleep(0.2)


async def test_history_stays_history_and_the_early_link_reaches_getcourse(
    db_url: str, tmp_path: Path
) -> None:
    gc = getcourse.GetCourseState(key=GC_KEY)
    gc.add_field("telegram_id")
    gc.add_field("sb_294495_id")
    anna = gc.add_user("anna@school.ru")
    for month in range(20):  # paid long ago, each one
        moment = datetime(2024 + month // 12, month % 12 + 1, 10, 12, 0)
        gc.add_deal(anna, 1000 + month, status="payed", created_at=moment, payed_at=moment)
    sb = salebot.SalebotState(key=SB_KEY)
    sb.add_client(555, client_id=900)
    (tmp_path / "syncd.toml").write_text(CONFIG, encoding="utf-8")
    async with (
        serve(getcourse.create_app(gc)) as gc_url,
        serve(salebot.create_app(sb)) as sb_url,
    ):
        urls = {"SYNCD_GETCOURSE__BASE_URL": gc_url, "SYNCD_SALEBOT__BASE_URL": sb_url}
        day_one = Daemon(db_url, tmp_path, SYNCD_GETCOURSE__API_KEY="", **urls)
        await asyncio.to_thread(day_one.start)
        try:
            async with httpx.AsyncClient(base_url=day_one.base_url, timeout=10) as http:
                link = {"email": "anna@school.ru", "telegram_id": "555", "client_id": "900"}
                answer = await http.post("/v1/links", params={"token": TOKEN}, json=link)
                assert answer.status_code == 200, answer.text
        finally:
            await asyncio.to_thread(day_one.stop)
        assert gc.imports() == []  # no key: nothing could be written yet

        day_two = Daemon(db_url, tmp_path, **urls)
        await asyncio.to_thread(day_two.start)
        engine = create_engine(db_url)
        try:

            async def polled() -> bool:
                async with engine.connect() as conn:
                    paid = await conn.scalar(
                        select(func.count()).select_from(Event).where(Event.kind == "deal.paid")
                    )
                return paid == 20

            async def confirmed() -> bool:
                async with engine.connect() as conn:
                    tg = await conn.scalar(select(Identity.gc_telegram_id))
                return tg == 555

            await wait_for(polled, "the first poll to store two years of orders")
            await wait_for(confirmed, "GetCourse to confirm the early link")
            await asyncio.sleep(2)  # anything the poll would have sent has had its time
        finally:
            await asyncio.to_thread(day_two.stop)
            await engine.dispose()
    assert sb.calls_of("callback") == [] and sb.calls_of("tg_callback") == []
    (write,) = [c for c in gc.imports() if c.path == "/pl/api/users"]
    assert write.params["user"] == {
        "email": "anna@school.ru",
        "addfields": {"telegram_id": "555", "sb_294495_id": "900"},
    }
    log = day_two.log.read_text(encoding="utf-8")
    assert "made no call: too_old" in log
