"""A pooled PostgreSQL connection is pinged at checkout only after it sat idle.

syncd dropped SQLAlchemy's ``pool_pre_ping`` (a round trip in every transaction) for a
ping after ``IDLE_PING_SECONDS`` of idleness (``syncd.store.engine``). These tests kill
the server side of a pooled connection and show both halves: after the idle time the
dead connection is replaced before the statement meets it; within it, it is not pinged.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from syncd.store import engine as engine_module
from syncd.store.engine import create_engine
from tests.conftest import PG_ADMIN

pytestmark = pytest.mark.postgres


def _terminate(pid: int) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def _backend_pid(url: str, idle: float) -> tuple[int, int | BaseException]:
    """The pooled connection's backend pid; then, after killing it and idling ``idle``
    seconds, what the next checkout's statement gets (a pid or the error)."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            first = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert isinstance(first, int)
        await asyncio.to_thread(_terminate, first)
        await asyncio.sleep(idle)
        try:
            async with engine.connect() as conn:
                second = await conn.scalar(text("SELECT pg_backend_pid()"))
        except DBAPIError as exc:
            return first, exc
        assert isinstance(second, int)
        return first, second
    finally:
        await engine.dispose()


async def test_an_idle_dead_connection_is_replaced_before_a_statement_meets_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.2)
    first, second = await _backend_pid(pg_url, idle=0.5)
    assert isinstance(second, int) and second != first  # a new backend, no error


async def test_a_connection_back_moments_ago_is_not_pinged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 60.0)
    _first, second = await _backend_pid(pg_url, idle=0.2)
    # no ping: the statement itself meets the dead connection (and the pool is emptied)
    assert isinstance(second, DBAPIError) and second.connection_invalidated
