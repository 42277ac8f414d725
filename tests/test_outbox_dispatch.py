"""The dispatcher against the simulators over loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.config import Settings
from syncd.daemon import senders, write_back
from syncd.identity import LinkClaim
from syncd.metrics import Metrics
from syncd.outbox import Dispatcher
from syncd.retry import BackoffPolicy
from syncd.sandbox import getcourse, salebot
from syncd.sandbox.faults import Faults
from syncd.sandbox.serve import serve
from syncd.store import outbox
from syncd.store.links import LinkRequest, LinkStore
from syncd.store.models import Delivery
from syncd.store.outbox import NewDelivery

GC_KEY, SB_KEY = "gc-key", "sb-key"
P = 294495
FAST = BackoffPolicy(
    timedelta(milliseconds=10), timedelta(milliseconds=100), 60, timedelta(hours=1)
)


def settings(gc_url: str, sb_url: str, **getcourse_extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "getcourse": {"base_url": gc_url, "api_key": GC_KEY, **getcourse_extra},
            "salebot": {"base_url": sb_url, "api_key": SB_KEY, "rate_per_second": 0},
        }
    )


@pytest.fixture
def gc_state() -> getcourse.GetCourseState:
    state = getcourse.GetCourseState(key=GC_KEY)
    state.add_field("telegram_id")
    state.add_field("sb_294495_id")
    return state


@pytest.fixture
def sb_state() -> salebot.SalebotState:
    return salebot.SalebotState(key=SB_KEY)


@pytest.fixture
async def apis(
    gc_state: getcourse.GetCourseState, sb_state: salebot.SalebotState
) -> AsyncIterator[tuple[str, str]]:
    async with (
        serve(getcourse.create_app(gc_state)) as gc_url,
        serve(salebot.create_app(sb_state), grace=0.2) as sb_url,
    ):
        yield gc_url, sb_url


@asynccontextmanager
async def dispatching(
    engine: AsyncEngine, config: Settings, policy: BackoffPolicy = FAST, **kw: Any
) -> AsyncIterator[Dispatcher]:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(1.0, connect=1.0))
        )
        kw.setdefault("poll_seconds", 0.02)
        yield await stack.enter_async_context(
            Dispatcher(engine, senders(http, config), policy, **kw)
        )


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def settled(engine: AsyncEngine, total: int) -> bool:
    figures = await outbox.stats(engine)
    return bool(figures["sent"] + figures["dead"] == total)


async def test_a_link_ends_in_one_import_call(
    engine: AsyncEngine, apis: tuple[str, str], gc_state: getcourse.GetCourseState
) -> None:
    config = settings(*apis)
    store = LinkStore(engine, "reject", write_back(config))
    async with dispatching(engine, config) as dispatcher:
        claim = LinkClaim("anna@school.ru", 123456789, P, 987654)
        await store.apply([LinkRequest(claim, "test")])
        await store.apply([LinkRequest(claim, "test")])  # unchanged: nothing more
        dispatcher.wake()
        await until(lambda: settled(engine, 1))
        await asyncio.sleep(0.1)
    (call,) = gc_state.imports()
    assert call.path == "/pl/api/users" and call.action == "add"
    assert call.params == {
        "user": {
            "email": "anna@school.ru",
            "addfields": {"telegram_id": "123456789", "sb_294495_id": "987654"},
        },
        "system": {"refresh_if_exists": 1},
    }
    user = gc_state.user_by_email("anna@school.ru")
    assert user is not None and user.fields == {
        "telegram_id": "123456789",
        "sb_294495_id": "987654",
    }
    assert (await outbox.stats(engine))["sent"] == 1


async def test_without_create_users_the_call_waits_for_gc_user_id(
    engine: AsyncEngine, apis: tuple[str, str], gc_state: getcourse.GetCourseState
) -> None:
    config = settings(*apis, create_users=False)
    store = LinkStore(engine, "reject", write_back(config))
    async with dispatching(engine, config):
        (result,) = await store.apply([LinkRequest(LinkClaim("a@school.ru", 5, P, None), "t")])
        await asyncio.sleep(0.2)
        assert gc_state.imports() == []
        assert (await outbox.stats(engine))["waiting"] == 1
        assert result.identity_id is not None
        async with engine.begin() as conn:  # what the events issue does on learning it
            await outbox.release_waiting(conn, result.identity_id, "gc_user_id")
        await until(lambda: settled(engine, 1))
    assert len(gc_state.imports()) == 1


async def test_a_burst_survives_5xx_and_timeouts(
    engine: AsyncEngine, apis: tuple[str, str], sb_state: salebot.SalebotState
) -> None:
    for client_id in range(1, 501):
        sb_state.add_client(1000 + client_id, client_id=client_id)
    sb_state.faults = Faults(error_rate=0.15, status=503, timeout_rate=0.15, hang=3, seed=4)
    async with engine.begin() as conn:
        await outbox.enqueue(
            conn,
            [
                NewDelivery("salebot", "callback", {"client_id": i, "message": f"m{i}"})
                for i in range(1, 501)
            ],
        )
    async with dispatching(engine, settings(*apis), concurrency=32):
        await until(lambda: settled(engine, 500), seconds=120)
    figures = await outbox.stats(engine)
    assert figures["sent"] == 500 and figures["dead"] == 0
    # every call reached the bot exactly once — because here a faulted request never
    # reaches it (a 503, or a timeout that drops the request: timeout_mode "lost"); the
    # realistic case, where the bot did the work and the answer was lost, is below
    messages = [call.body["message"] for call in sb_state.calls_of("callback")]
    assert sorted(messages) == sorted(f"m{i}" for i in range(1, 501))
    faults = len(sb_state.fault_log)
    assert 100 < faults < 260  # ~30 % of the first tries, and of their retries
    async with engine.connect() as conn:
        attempts = sum((await conn.scalars(select(Delivery.attempts))).all())
        errors = (await conn.scalars(select(Delivery.last_error))).all()
    assert attempts == 500 + faults  # one retry per fault, no more, no less
    assert all(e is None for e in errors)  # sent rows carry no stale error


async def test_retries_wait_as_the_policy_says(
    engine: AsyncEngine, apis: tuple[str, str], sb_state: salebot.SalebotState
) -> None:
    sb_state.add_client(77, client_id=1)
    sb_state.faults = Faults(fail_next=3, status=502)
    slow = BackoffPolicy(
        timedelta(milliseconds=200),
        timedelta(seconds=1),
        10,
        timedelta(hours=1),
        uniform=lambda lo, hi: hi,
    )  # no jitter: waits 0.2, 0.4, 0.8 s
    async with engine.begin() as conn:
        await outbox.enqueue(
            conn, [NewDelivery("salebot", "callback", {"client_id": 1, "message": "x"})]
        )
    started = time.monotonic()
    async with dispatching(engine, settings(*apis), policy=slow):
        await until(lambda: settled(engine, 1))
    elapsed = time.monotonic() - started
    # 0.2 + 0.4 + 0.8 s of backoff at least, then the success; no upper bound: a loaded
    # machine may be late, never early
    assert elapsed >= 1.4
    (row,) = await outbox.listing(engine, None, 10)
    assert row["status"] == "sent" and row["attempts"] == 4


async def test_permanent_failures_die_at_once_and_replay(
    engine: AsyncEngine, apis: tuple[str, str], sb_state: salebot.SalebotState
) -> None:
    async with engine.begin() as conn:
        await outbox.enqueue(
            conn, [NewDelivery("salebot", "callback", {"client_id": 42, "message": "hi"})]
        )
    config = settings(*apis)
    metrics = Metrics()
    async with dispatching(engine, config, metrics=metrics):
        await until(lambda: settled(engine, 1))
    dead_total = {"target": "salebot", "outcome": "dead"}
    assert metrics.registry.get_sample_value("syncd_deliveries_total", dead_total) == 1
    (dead,) = await outbox.listing(engine, "dead", 10)
    assert dead["attempts"] == 1
    assert dead["last_error"] == "salebot callback: status client_not_found"
    assert SB_KEY not in dead["last_error"]
    sb_state.add_client(4242, client_id=42)  # the operator fixes the bot, then replays
    assert (await outbox.retry(engine, None))[0] == [dead["id"]]
    async with dispatching(engine, config):
        await until(lambda: settled(engine, 1))
    assert (await outbox.stats(engine))["sent"] == 1
    assert [c.body["client_id"] for c in sb_state.calls_of("callback")] == [42]


async def test_a_lost_answer_repeats_the_call_only_that_once(
    engine: AsyncEngine, apis: tuple[str, str], sb_state: salebot.SalebotState
) -> None:
    """The realistic timeout: the bot did the work, the answer never came back. The call
    is sent again (at-least-once, SPEC §5): a call repeats once per lost answer, no more,
    and nothing is lost."""
    for client_id in range(1, 201):
        sb_state.add_client(1000 + client_id, client_id=client_id)
    # the client gives up after 1 s (see dispatching); the simulator holds the answer 3 s
    sb_state.faults = Faults(timeout_rate=0.15, timeout_mode="processed", hang=3, seed=8)
    async with engine.begin() as conn:
        await outbox.enqueue(
            conn,
            [
                NewDelivery("salebot", "callback", {"client_id": i, "message": f"m{i}"})
                for i in range(1, 201)
            ],
        )
    async with dispatching(engine, settings(*apis), concurrency=32):
        await until(lambda: settled(engine, 200), seconds=120)
    figures = await outbox.stats(engine)
    assert figures["sent"] == 200 and figures["dead"] == 0
    lost = len(sb_state.fault_log)
    assert lost > 0 and all(hit.kind == "timeout" for hit in sb_state.fault_log)
    received = Counter(call.body["message"] for call in sb_state.calls_of("callback"))
    assert set(received) == {f"m{i}" for i in range(1, 201)}  # nothing lost
    assert sum(received.values()) == 200 + lost  # one repeat per lost answer, no more
    async with engine.connect() as conn:
        attempts = {
            payload["message"]: n
            for payload, n in await conn.execute(select(Delivery.payload, Delivery.attempts))
        }
    # each call reached the bot once per attempt: every attempt was processed
    assert received == attempts


@pytest.mark.postgres
async def test_two_dispatchers_on_one_postgres_never_send_a_row_twice(
    pg_url: str, apis: tuple[str, str], sb_state: salebot.SalebotState
) -> None:
    from syncd.store.engine import create_engine

    for client_id in range(1, 401):
        sb_state.add_client(client_id, client_id=client_id)
    engines = [create_engine(pg_url), create_engine(pg_url)]
    try:
        async with engines[0].begin() as conn:
            await outbox.enqueue(
                conn,
                [
                    NewDelivery("salebot", "callback", {"client_id": i, "message": "m"})
                    for i in range(1, 401)
                ],
            )
        config = settings(*apis)
        sb_state.faults = Faults(latency=0.005)  # calls take a while: both get to claim
        metrics = [Metrics(), Metrics()]
        async with (
            dispatching(engines[0], config, concurrency=8, metrics=metrics[0]),
            dispatching(engines[1], config, concurrency=8, metrics=metrics[1]),
        ):
            await until(lambda: settled(engines[0], 400), seconds=60)
        sent = sorted(c.body["client_id"] for c in sb_state.calls_of("callback"))
        assert sent == list(range(1, 401))
        labels = {"target": "salebot", "outcome": "sent"}
        by_each = [m.registry.get_sample_value("syncd_deliveries_total", labels) for m in metrics]
        # both dispatchers really claimed and sent rows (not one idling beside the other)
        assert all(n is not None and n > 0 for n in by_each), by_each
        assert sum(n or 0 for n in by_each) == 400
    finally:
        for engine in engines:
            await engine.dispose()
