"""Fixtures: each simulator served over real loopback HTTP, with its state at hand."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from syncd.sandbox import getcourse, salebot
from syncd.sandbox.clock import FakeClock
from syncd.sandbox.serve import serve

GC_KEY = "gc-test-key"
SB_KEY = "sb-test-key"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gc_state(clock: FakeClock) -> getcourse.GetCourseState:
    state = getcourse.GetCourseState(key=GC_KEY, clock=clock)
    state.add_field("telegram_id")
    state.add_field("sb_294495_id")
    return state


@pytest.fixture
async def gc(gc_state: getcourse.GetCourseState) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(getcourse.create_app(gc_state)) as base,
        httpx.AsyncClient(base_url=base, timeout=5) as client,
    ):
        yield client


@pytest.fixture
def sb_state() -> salebot.SalebotState:
    return salebot.SalebotState(key=SB_KEY)


@pytest.fixture
async def sb(sb_state: salebot.SalebotState) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(salebot.create_app(sb_state)) as base,
        httpx.AsyncClient(base_url=f"{base}/api/{SB_KEY}/", timeout=5) as client,
    ):
        yield client


def encode_params(params: dict[str, Any]) -> str:
    """``params`` as the import API wants it: base64 of UTF-8 JSON."""
    return base64.b64encode(json.dumps(params, ensure_ascii=False).encode()).decode()


ImportCall = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def gc_import(gc: httpx.AsyncClient) -> ImportCall:
    """``await gc_import(params, key=…, path="users"|"deals")``: one import API call."""

    async def call(
        params: dict[str, Any], *, key: str = GC_KEY, path: str = "users"
    ) -> httpx.Response:
        data = {"key": key, "action": "add", "params": encode_params(params)}
        return await gc.post(f"/pl/api/{path}", data=data)

    return call
