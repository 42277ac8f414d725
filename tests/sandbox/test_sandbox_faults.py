"""Fault injection, on both simulators, over loopback HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

from syncd.sandbox.faults import Faults
from syncd.sandbox.getcourse import GetCourseState
from syncd.sandbox.salebot import SalebotState

pytestmark = pytest.mark.timeout(15)
CALLBACK = {"client_id": 1, "message": "gc_deal_paid", "gc_amount": "100"}


@pytest.fixture(autouse=True)
def known_client(sb_state: SalebotState) -> None:
    sb_state.add_client(5, client_id=1)


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.05, "error"), (0.15, "rate_limit"), (0.25, "timeout"), (0.35, None)],
)
def test_one_draw_picks_error_then_429_then_timeout(draw: float, expected: str | None) -> None:
    faults = Faults(error_rate=0.1, rate_limit_rate=0.1, timeout_rate=0.1)
    faults.rng.random = lambda: draw  # type: ignore[method-assign]
    assert faults.decide() == expected


async def _statuses(sb: httpx.AsyncClient, count: int) -> list[int]:
    return [(await sb.get("connected_channels")).status_code for _ in range(count)]


async def test_a_seeded_error_rate_is_reproducible_and_faults_are_not_delivered(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    sb_state.faults = Faults(error_rate=0.3, seed=7)
    first = await _statuses(sb, 200)
    sb_state.faults = Faults(error_rate=0.3, seed=7)
    second = await _statuses(sb, 200)

    assert first == second
    assert set(first) == {200, 503}
    assert 40 <= first.count(503) <= 80
    assert len(sb_state.fault_log) == 2 * first.count(503)
    assert len(sb_state.calls) == 2 * first.count(200)


async def test_a_fixed_status_fails_everything_and_records_nothing(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    sb_state.faults = Faults(error_rate=1.0, status=500)

    answer = await sb.post("callback", json=CALLBACK)

    assert answer.status_code == 500
    assert sb_state.calls == []
    assert sb_state.clients[1].deal_variables == {}
    assert [(h.kind, h.path) for h in sb_state.fault_log] == [
        ("error", f"/api/{sb_state.key}/callback")
    ]


async def test_fail_next_fails_exactly_that_many_calls(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    sb_state.faults = Faults(fail_next=2)
    assert await _statuses(sb, 4) == [503, 503, 200, 200]


@pytest.mark.parametrize(
    ("faults", "status", "retry_after"),
    [
        (Faults(rate_limit_rate=1.0, retry_after=2), 429, "2"),
        (Faults(rate_limit_rate=1.0), 429, "1"),
        (Faults(error_rate=1.0, retry_after=1.5), 503, "2"),
        (Faults(error_rate=1.0), 503, None),
    ],
)
async def test_429_and_503_carry_retry_after(
    sb: httpx.AsyncClient,
    sb_state: SalebotState,
    faults: Faults,
    status: int,
    retry_after: str | None,
) -> None:
    sb_state.faults = faults

    answer = await sb.post("callback", json=CALLBACK)

    assert (answer.status_code, answer.headers.get("retry-after")) == (status, retry_after)
    assert sb_state.calls == []


async def test_a_timeout_lost_before_processing_changes_nothing(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    sb_state.faults = Faults(timeout_rate=1.0, hang=30)

    with pytest.raises(httpx.ReadTimeout):
        await sb.post("callback", json=CALLBACK, timeout=0.3)

    assert sb_state.calls == []
    assert sb_state.clients[1].deal_variables == {}
    sb_state.faults = Faults()
    assert (await sb.post("callback", json=CALLBACK)).status_code == 200


async def test_a_timeout_after_processing_did_the_work_the_client_never_heard_of(
    sb: httpx.AsyncClient, sb_state: SalebotState
) -> None:
    sb_state.faults = Faults(timeout_rate=1.0, timeout_mode="processed", hang=30)

    with pytest.raises(httpx.ReadTimeout):
        await sb.post("callback", json=CALLBACK, timeout=httpx.Timeout(0.3, connect=10))

    assert [c.action for c in sb_state.calls] == ["callback"]
    assert sb_state.clients[1].deal_variables == {"gc_amount": "100"}


@pytest.mark.parametrize(("mode", "status", "delivered"), [("processed", 200, 1), ("lost", 504, 0)])
async def test_a_hang_shorter_than_the_client_timeout_ends_with_an_answer(
    sb: httpx.AsyncClient, sb_state: SalebotState, mode: str, status: int, delivered: int
) -> None:
    sb_state.faults = Faults(timeout_rate=1.0, timeout_mode=mode, hang=0.2)  # type: ignore[arg-type]

    answer = await sb.post("callback", json=CALLBACK)

    assert answer.status_code == status
    assert len(sb_state.calls) == delivered


async def test_latency_delays_but_delivers(sb: httpx.AsyncClient, sb_state: SalebotState) -> None:
    sb_state.faults = Faults(latency=0.2)

    started = time.monotonic()
    answer = await sb.post("callback", json=CALLBACK)

    assert time.monotonic() - started >= 0.2
    assert answer.status_code == 200
    assert len(sb_state.calls) == 1


async def test_faults_can_target_paths_and_a_faulted_poll_costs_no_budget(
    gc: httpx.AsyncClient, gc_state: GetCourseState
) -> None:
    gc_state.faults = Faults(error_rate=1.0, paths=("/exports/",))
    key = {"key": gc_state.key}

    started = await gc.get(
        "/pl/api/account/deals", params={**key, "created_at[from]": "2024-01-01"}
    )
    export_id = started.json()["info"]["export_id"]
    polled = await gc.get(f"/pl/api/account/exports/{export_id}", params=key)

    assert polled.status_code == 503
    assert gc_state.export_requests == 1
    assert gc_state.exports[export_id].polls == 0
