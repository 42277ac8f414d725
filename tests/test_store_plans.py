"""The statements of every link batch search indexes, whatever the size of the map.

A link batch reads the people holding its keys and gives waiting bot events their
identity. Written with ``OR`` over ``IN (subquery)``, the read made PostgreSQL scan all
of ``identities`` and ``salebot_clients`` in every batch (28 ms at 87,000 people, and
growing); the bot-event update could hash-join every unlinked event. These tests fill
both databases with thousands of people and unlinked bot events, then ask each database
how it runs the very statements a batch sends (captured from the driver): no full scan
of a table that grows with the school.
"""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.bot_events import from_salebot
from syncd.config import Settings
from syncd.daemon import event_store, link_store
from syncd.identity import LinkClaim
from syncd.store.engine import create_engine
from syncd.store.linkplan import LinkRequest
from syncd.store.links import identity_transaction

PEOPLE = 3_000
GROWING = ("identities", "salebot_clients", "events")


def _claims(start: int, n: int) -> list[LinkRequest]:
    return [
        LinkRequest(LinkClaim(f"p{i}@school.ru", 10_000 + i, 1, 20_000 + i), "webhook")
        for i in range(start, start + n)
    ]


def _numbered(statement: str) -> tuple[str, int]:
    """The driver's statement with PostgreSQL's own placeholders (``$1``…), as a
    prepared statement holds it, and how many there are."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        key = match.group(1) or f"#{len(numbers)}"  # %(name)s repeats; %b and %s do not
        return f"${numbers.setdefault(key, len(numbers) + 1)}"

    return re.sub(r"%\((\w+)\)s|%[bs]", number, statement), len(numbers)


async def _full_scans(
    engine: AsyncEngine,
    statement: str,
    parameters: Any,
    *,
    as_syncd: bool = False,
    generic: bool = False,
) -> list[str]:
    """The scans of a growing table the database would run ``statement`` with that read
    the whole table (no index condition). ``as_syncd``: plan it as a link batch's
    transaction does, with nothing forced here. ``generic`` (PostgreSQL): the plan kept
    for the prepared statement and reused whatever its parameters."""
    async with AsyncExitStack() as stack:
        if as_syncd:
            conn = await stack.enter_async_context(identity_transaction(engine, lookups=True))
        else:
            conn = await stack.enter_async_context(engine.connect())
        if conn.dialect.name == "sqlite":  # SEARCH uses an index; SCAN reads it all
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            steps = [str(row[-1]) for row in rows]
            return [s for s in steps if any(s.startswith(f"SCAN {t}") for t in GROWING)]
        # Whether an index path exists at all: at a few thousand rows a hash join over a
        # seq scan may simply be cheaper, so the planner is held to nested loops and
        # index searches; a scan of a table's whole index (no Index Cond) still counts.
        for knob in () if as_syncd else ("seqscan", "hashjoin", "mergejoin"):
            await conn.exec_driver_sql(f"SET enable_{knob} = off")
        if generic:  # PostgreSQL 15 has no EXPLAIN (GENERIC_PLAN): prepare it, then ask
            numbered, count = _numbered(statement)
            await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.exec_driver_sql("PREPARE batch_statement AS " + numbered)
            nulls = ", ".join(["NULL"] * count)  # a generic plan ignores the values
            plan = await conn.exec_driver_sql(
                f"EXPLAIN (FORMAT JSON) EXECUTE batch_statement({nulls})"
            )
            await conn.exec_driver_sql("DEALLOCATE batch_statement")  # pooled: it stays
        else:
            plan = await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)
        found: list[str] = []
        nodes = [plan.scalar_one()[0]["Plan"]]
        while nodes:
            node = nodes.pop()
            nodes += node.get("Plans", [])
            if node.get("Relation Name") not in GROWING:
                continue
            kind, where = node["Node Type"], f"{node['Node Type']} on {node['Relation Name']}"
            if kind == "Seq Scan" or (kind.startswith("Index") and "Index Cond" not in node):
                found.append(where)
            elif kind.startswith("Index"):
                # a search by part of the key: the index is walked by its first column
                # (or, without it, whole) and the list of keys only filters what it finds
                leading = await conn.scalar(_LEADING_COLUMN, {"index": node["Index Name"]})
                if not re.search(rf"\b{leading}\b", node["Index Cond"]):
                    found.append(f"{where}: {node['Index Cond']} without {leading}")
                if "= ANY" in node.get("Filter", ""):
                    found.append(f"{where}: keys as a filter, {node['Filter']}")
        return found


_LEADING_COLUMN = text(
    "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
    "WHERE c.relname = :index"
)


async def _batch_statements(
    engine: AsyncEngine, *, analyze: bool, analyze_small: bool = False
) -> list[tuple[str, Any]]:
    """Fill the map with thousands of people and unlinked bot subscribers, then capture
    the read and the bot-event updates of one more link batch. ``analyze_small``: the
    database gathers its statistics when it holds five of each, and never again."""
    settings = Settings.model_validate({"salebot": {"project_id": 1}})
    events = event_store(engine, settings, None)
    store = link_store(engine, settings, events)
    # bot subscribers nobody has linked yet: their events wait with only their keys
    bot = [
        from_salebot("started", {"client_id": str(90_000 + i), "id": f"s{i}"}, 1)
        for i in range(PEOPLE)
    ]
    first = 0
    if analyze_small:
        first = 5
        await store.apply(_claims(0, first))
        await events.ingest(bot[:first])
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
    for start in range(first, PEOPLE, 500):
        await store.apply(_claims(start, min(500, PEOPLE - start)))
    for start in range(first, PEOPLE, 500):
        await events.ingest(bot[start : start + 500])
    if analyze:
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))

    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT IDENTITIES", "UPDATE EVENTS")):
            single = parameters[0] if isinstance(parameters, list) else parameters
            sent.append((statement, single))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    # on SQLite, syncd.store.rows.driver_sql sends some statements past SQLAlchemy
    from syncd.store import sqlite_driver

    direct = sqlite_driver.run

    async def run(driver: Any, sql: str, parameters: Any, many: bool = False) -> Any:
        capture(None, None, sql, parameters)
        return await direct(driver, sql, parameters, many)

    sqlite_driver.run = run  # type: ignore[assignment]
    try:
        # known people, new ones, and bot subscribers linked at last
        requests = _claims(100, 20) + [
            LinkRequest(LinkClaim(f"b{i}@school.ru", None, 1, 90_000 + i), "webhook")
            for i in range(20)
        ]
        await store.apply(requests)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
        sqlite_driver.run = direct  # type: ignore[assignment]
    kinds = {statement.split()[0].upper() for statement, _ in sent}
    assert kinds == {"SELECT", "UPDATE"}, sent  # the read and the bot-event update ran
    return sent


async def test_a_link_batch_searches_indexes_at_thousands_of_people(engine: AsyncEngine) -> None:
    for statement, parameters in await _batch_statements(engine, analyze=True):
        assert await _full_scans(engine, statement, parameters) == [], statement


async def test_before_any_analyze_a_link_batch_still_searches_indexes(engine: AsyncEngine) -> None:
    """Day one: thousands of people arrived since the database last gathered statistics
    (autovacuum's ANALYZE comes a minute or more later). Told the tables are tiny,
    PostgreSQL would read all of ``identities`` in every batch; the link transaction
    holds its planner to index searches (``identity_transaction(lookups=True)``)."""
    for statement, parameters in await _batch_statements(engine, analyze=False):
        assert await _full_scans(engine, statement, parameters, as_syncd=True) == [], statement


async def test_the_plan_postgresql_keeps_for_a_batch_statement_searches_indexes(
    engine: AsyncEngine,
) -> None:
    """A link batch's transaction plans each prepared statement once and reuses that
    generic plan, blind to the parameters, in every later batch; built before any
    ANALYZE, it must still search indexes."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite keeps no plan across statements: the test above covers it")
    for statement, parameters in await _batch_statements(engine, analyze=False):
        found = await _full_scans(engine, statement, parameters, as_syncd=True, generic=True)
        assert found == [], statement


async def test_a_plan_kept_from_small_tables_still_searches_by_every_key(
    engine: AsyncEngine,
) -> None:
    """The plan of a batch statement is built once, often while the tables are small (a
    school's first minutes, or before autovacuum's next ANALYZE), and kept while they
    grow. It must search by every key of the batch: a search by project alone, with the
    clients as a filter, reads every client of the project in each batch — the slow half
    of PostgreSQL's ingest runs (docs/performance.md, 2026-12-07)."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite keeps no plan across statements and syncd never ANALYZEs it")
    for statement, parameters in await _batch_statements(engine, analyze=False, analyze_small=True):
        found = await _full_scans(engine, statement, parameters, as_syncd=True, generic=True)
        assert found == [], statement


async def test_a_link_batch_reuses_its_plans_on_postgresql(pg_url: str) -> None:
    """Planning the people read anew was 290 µs of a batch's ~2.6 ms on the server on
    PostgreSQL; once psycopg has prepared them, batches reuse one plan each."""
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)  # one session to inspect
    try:
        settings = Settings.model_validate({"salebot": {"project_id": 1}})
        store = link_store(engine, settings, event_store(engine, settings, None))
        for start in range(0, 200, 20):  # ten batches: past psycopg's threshold of five
            await store.apply(_claims(start, 20))
        async with engine.connect() as conn:
            plans = await conn.execute(
                text(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE 'SELECT identities.id%'"
                )
            )
            assert [tuple(row) for row in plans] == [(5, 0)]
    finally:
        await engine.dispose()


async def test_a_batch_transaction_compiles_no_statement_just_in_time(pg_url: str) -> None:
    """A batch's transaction disables sequential scans, so a statement that can only scan
    (the ``INSERT … SELECT`` from a staging table of an event batch or a deals merge) is
    costed at 10^10 and went over ``jit_above_cost``: PostgreSQL compiled it with LLVM in
    every batch, ~70 ms for a statement of ~1 ms. GetCourse events at 1,000 a second
    then waited seconds each (docs/performance.md, 2026-12-07)."""
    engine = create_engine(pg_url)
    scan = "EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM events WHERE notes LIKE '%%x'"
    try:
        async with engine.begin() as conn:  # the premise: that knob alone makes it compile
            if not await conn.scalar(text("SELECT pg_jit_available()")):
                pytest.skip("this PostgreSQL has no JIT to compile with")
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = (await conn.exec_driver_sql(scan)).scalar_one()[0]
            assert plan.get("JIT", {}).get("Functions", 0) > 0, plan
        async with identity_transaction(engine, lookups=True) as conn:
            plan = (await conn.exec_driver_sql(scan)).scalar_one()[0]
        assert "JIT" not in plan, plan["JIT"]
    finally:
        await engine.dispose()
