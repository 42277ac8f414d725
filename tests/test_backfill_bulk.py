"""The backfill's bulk writes: what they store, how they commit, and a rerun after a crash.

On PostgreSQL a backfill's chunks go by binary ``COPY`` (:func:`syncd.store.dialect.
copy_binary`) and commit with ``synchronous_commit = off``; these tests hold the rows to
what the webhook's path stores for the same events, and a backfill killed half-way and
run again to what one clean run stores.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.config import Settings
from syncd.daemon import addressing
from syncd.events import NewEvent
from syncd.poller import Poller, backfill, jobs
from syncd.sandbox import getcourse
from syncd.sandbox.getcourse import GeneratedDeals
from syncd.sandbox.serve import serve
from syncd.store.dialect import COPY_FROM_ROWS
from syncd.store.events import Addressing, EventStore

HISTORY = Addressing((), 1, "", timedelta(hours=1), timedelta(0))
MSK = timezone(timedelta(hours=3))
#: Cells a COPY must carry as they are: its own delimiters, escapes, quotes, non-ASCII.
ODD = ("tab\there", "new\nline", "back\\slash", 'quote"d', "\\N", "Курс «Ёж»", "", " ", "😀")


def odd_events(prefix: str, count: int) -> list[NewEvent]:
    out = []
    for i in range(count):
        data: dict[str, Any] = {
            "deal_id": str(i), "title": ODD[i % len(ODD)], "n": i,
            "nested": {"list": [1, None, ODD[(i + 1) % len(ODD)]]}, "flag": i % 2 == 0,
        }  # fmt: skip
        when = None if i % 7 == 0 else datetime(2024, 2, 29, 23, 59, 59, i, tzinfo=MSK)
        kind = ("deal.created", "deal.paid", "user.created", "bot.started")[i % 4]
        out.append(
            NewEvent(kind, f"{prefix}{i}", "backfill", f"p{i % 5}@school.ru" if i % 6 else None,
                     2000 + i % 5 if i % 2 else None, when, data,
                     telegram_id=(10**12 + i) if i % 4 == 3 else None,
                     client_id=i if i % 8 == 3 else None, project_id=1 if i % 8 == 3 else None)
        )  # fmt: skip
    return out


async def stored_events(engine: AsyncEngine, prefix: str) -> list[tuple[Any, ...]]:
    """The events of ``prefix`` as stored, their keys without it, the person by email."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT e.kind, substr(e.external_id, :cut), e.occurred_at, e.email,"
                " e.gc_user_id, i.email, e.data, e.source, e.status, e.wait_until, e.notes,"
                " e.telegram_id, e.client_id, e.project_id"
                " FROM events e LEFT JOIN identities i ON i.id = e.identity_id"
                " WHERE e.external_id LIKE :like ORDER BY 2, 1"
            ),
            {"cut": len(prefix) + 1, "like": f"{prefix}%"},
        )
        return [tuple(row) for row in rows]


async def test_the_bulk_path_stores_what_the_webhook_path_stores(engine: AsyncEngine) -> None:
    """``ingest_new`` (binary COPY on PostgreSQL) and ``ingest`` (a text COPY from 64
    rows, one array per column below) store the same values for the same events."""
    count = 3 * COPY_FROM_ROWS
    bulk = EventStore(engine, HISTORY, relaxed_commits=True)
    one = EventStore(engine, HISTORY)
    counts = await bulk.ingest_new(odd_events("bulk-", count))
    assert sum(n for (_, _, repeat), n in counts.items() if not repeat) == count
    await one.ingest(odd_events("hook-", count))
    got, expected = await stored_events(engine, "bulk-"), await stored_events(engine, "hook-")
    assert len(got) == count
    assert got == expected
    # the same chunk again: every event a repeat, nothing changes
    counts = await bulk.ingest_new(odd_events("bulk-", count))
    assert sum(n for (_, _, repeat), n in counts.items() if repeat) == count
    assert await stored_events(engine, "bulk-") == got


@pytest.mark.postgres
async def test_relaxed_commits_are_the_backfill_transactions_only(pg_url: str) -> None:
    from syncd.store.engine import create_engine

    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        seen: list[str] = []
        for relaxed in (True, False):
            store = EventStore(engine, HISTORY, relaxed_commits=relaxed)
            ingest = store._ingest_counted

            async def watching(conn: Any, *args: Any, ingest: Any = ingest) -> Any:
                seen.append((await conn.execute(text("SHOW synchronous_commit"))).scalar())
                return await ingest(conn, *args)

            store._ingest_counted = watching  # type: ignore[method-assign]
            await store.ingest_new(odd_events(f"r{relaxed}-", 2))
            await store.ingest(odd_events(f"w{relaxed}-", 2))  # a webhook's: durable
            async with engine.connect() as conn:  # the same (only) pooled connection
                seen.append((await conn.execute(text("SHOW synchronous_commit"))).scalar())
        assert seen == ["off", "on", "on", "on"]
    finally:
        await engine.dispose()


START = datetime(2024, 1, 1)
DEALS = 400


class Crash(BaseException):
    """The process dying mid-backfill (nothing in syncd catches it)."""


async def run_backfill(engine: AsyncEngine, url: str, crash_after: int | None = None) -> None:
    """``syncd backfill`` as the CLI runs it, in chunks of 64 events; ``crash_after``
    chunks committed, the next one dies before it is written."""
    store = EventStore(engine, addressing(Settings()).history_only(), relaxed_commits=True)
    chunks = 0

    async def ingest(batch: Any) -> Any:
        nonlocal chunks
        if crash_after is not None and chunks == crash_after:
            raise Crash
        chunks += 1
        return await store.ingest_new(batch)

    async def no_wait(_: float) -> None:
        return None

    async with httpx.AsyncClient(timeout=10) as http:
        poller = Poller(engine, http, url, "k", ingest, sleep=no_wait, chunk=COPY_FROM_ROWS)
        await backfill(
            poller, jobs(["deals"], [], date(2024, 1, 1)), date(2024, 1, 1), date(2024, 1, 4),
            window=timedelta(days=2),
        )  # fmt: skip
    assert crash_after is None or chunks == crash_after


async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Events, deals and people as stored, people named by email (ids are the database's)."""
    queries = {
        "events": "SELECT e.kind, e.external_id, e.occurred_at, e.email, e.gc_user_id, i.email,"
        " e.data, e.source, e.status, e.notes FROM events e"
        " LEFT JOIN identities i ON i.id = e.identity_id ORDER BY 2, 1",
        "deals": "SELECT d.deal_id, d.number, i.email, d.cost, d.paid_amount, d.currency,"
        " d.title, d.status, d.status_at, d.created_at, d.first_at, d.paid_at"
        " FROM analytics_deals d LEFT JOIN identities i ON i.id = d.identity_id ORDER BY 1",
        "people": "SELECT email, gc_user_id FROM identities ORDER BY 1",
        "deliveries": "SELECT count(*) FROM deliveries",
    }
    found = {}
    async with engine.connect() as conn:
        for name, sql in queries.items():
            found[name] = [tuple(row) for row in await conn.execute(text(sql))]
    return found


async def wipe(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in ("analytics_deals", "events", "identity_changes", "identities"):
            await conn.execute(text(f"DELETE FROM {table}"))


async def test_a_backfill_killed_half_way_and_run_again_stores_what_one_run_does(
    engine: AsyncEngine,
) -> None:
    state = getcourse.GetCourseState(
        key="k",
        deal_rows=GeneratedDeals(DEALS, start=START, step_seconds=600, users=7),
        ready_after_polls=0,
    )
    async with serve(getcourse.create_app(state)) as url:
        await run_backfill(engine, url)
        clean = await snapshot(engine)
        assert len(clean["deals"]) == DEALS and len(clean["people"]) == 7
        assert clean["deliveries"] == [(0,)]  # history is not news (SPEC §11)
        await wipe(engine)
        with pytest.raises(Crash):
            await run_backfill(engine, url, crash_after=3)
        half = await snapshot(engine)
        assert 0 < len(half["events"]) < len(clean["events"])
        await run_backfill(engine, url)
        assert await snapshot(engine) == clean
        await run_backfill(engine, url)  # and once more: all repeats
        assert await snapshot(engine) == clean


def test_odd_events_cover_both_copy_paths() -> None:
    """The fixtures above reach the bulk paths (64 rows and up) and hold every odd cell."""
    events = odd_events("x", 3 * COPY_FROM_ROWS)
    assert len(events) >= COPY_FROM_ROWS
    assert {e.data["title"] for e in events} == set(ODD)
    assert any(e.occurred_at is None for e in events)
    assert all(e.occurred_at is None or e.occurred_at.tzinfo is not UTC for e in events)


async def test_a_chunk_is_written_while_the_next_one_is_read(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader gives a write in flight the event loop every few rows, so the write's
    statements run beside the parsing. Rows of one read arrive hundreds at a time and
    parsing them never waits: without those turns, each statement's answer waited for
    the reader's next network read, and the write finished only when the reader, its
    next chunk full, waited for it (docs/performance.md, 2026-12-07 evening)."""
    import syncd.poller as poller_module

    parsed = 0
    parse = poller_module.from_export_row

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal parsed
        parsed += 1
        return parse(*args, **kwargs)

    monkeypatch.setattr(poller_module, "from_export_row", counted)
    writes: list[tuple[int, int]] = []  # (rows parsed when a write began, when it ended)

    async def ingest(batch: list[NewEvent]) -> None:
        began = parsed
        for _ in range(4):  # four statements, each a turn of the event loop
            await asyncio.sleep(0)
        writes.append((began, parsed))

    state = getcourse.GetCourseState(
        key="k", deal_rows=GeneratedDeals(3000, start=START, step_seconds=60, users=7),
        ready_after_polls=0,
    )  # fmt: skip

    async def no_wait(_: float) -> None:
        return None

    async with serve(getcourse.create_app(state)) as url, httpx.AsyncClient(timeout=10) as http:
        poller = Poller(engine, http, url, "k", ingest, sleep=no_wait, chunk=1000)
        await backfill(
            poller, jobs(["deals"], [], date(2024, 1, 1)), date(2024, 1, 1), date(2024, 1, 3),
            window=timedelta(days=3),
        )  # fmt: skip
    assert parsed == 3000 and len(writes) >= 4
    per_chunk = parsed // len(writes)
    for began, ended in writes[:-1]:  # the last one has nothing left to read beside it
        assert ended - began < per_chunk // 2, writes
