"""A hostile or broken peer's ``Retry-After`` cannot make deliveries dead at once."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.clients.http import retry_after
from syncd.retry import BackoffPolicy, RetryAt
from syncd.sandbox import salebot
from syncd.sandbox.faults import Faults
from syncd.store import outbox
from syncd.store.models import utcnow
from syncd.store.outbox import NewDelivery
from tests.test_outbox_dispatch import (  # noqa: F401 (fixtures)
    apis,
    dispatching,
    gc_state,
    sb_state,
    settings,
    settled,
    until,
)


async def test_one_429_with_a_huge_retry_after_is_retried_within_max_backoff(
    engine: AsyncEngine,
    apis: tuple[str, str],  # noqa: F811
    sb_state: salebot.SalebotState,  # noqa: F811
) -> None:
    sb_state.add_client(77, client_id=1)
    sb_state.faults = Faults(fail_next=1, status=429, retry_after=1_000_000)
    # max_age 3 days: waiting the 11.5 days asked for would make the call dead at once
    policy = BackoffPolicy(
        timedelta(milliseconds=10), timedelta(milliseconds=300), 12, timedelta(days=3)
    )
    async with engine.begin() as conn:
        await outbox.enqueue(
            conn, [NewDelivery("salebot", "callback", {"client_id": 1, "message": "x"})]
        )
    async with dispatching(engine, settings(*apis), policy=policy):
        await until(lambda: settled(engine, 1))
    (row,) = await outbox.listing(engine, None, 10)
    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert [fault for fault in sb_state.fault_log] and len(sb_state.calls_of("callback")) == 1


@pytest.mark.parametrize("header", ["1000000", "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_the_wait_never_exceeds_max_backoff(header: str) -> None:
    policy = BackoffPolicy(timedelta(seconds=5), timedelta(hours=1), 12, timedelta(days=3))
    asked = retry_after(httpx.Response(429, headers={"Retry-After": header}))
    now = utcnow()
    decision = policy.next(1, now, now, asked)
    assert isinstance(decision, RetryAt)
    assert decision.when - now <= timedelta(hours=1)


@pytest.mark.parametrize("header", ["²", "soon", "-5", ""])
def test_an_unreadable_retry_after_is_ignored(header: str) -> None:
    answer = httpx.Response(429, headers={"Retry-After": header.encode("latin-1")})
    assert retry_after(answer) is None
