"""POST /v1/links in-process: every row of the SPEC §3 answer table, on both databases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.batching import Batcher
from syncd.config import Settings
from syncd.daemon import counted, event_store, link_store
from syncd.http.app import AppContext, create_app
from syncd.metrics import Metrics
from syncd.store.engine import create_engine
from syncd.store.models import Identity, LinkConflict

TOKEN = "s3cret-token"
P = 294495
LIMIT = 4096


async def client_for(
    engine: AsyncEngine,
    token: str = TOKEN,
    settings: Settings | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, wired as ``syncd run`` wires it (rules from ``settings``)."""
    settings = settings or Settings()
    metrics = metrics or Metrics()
    events_in = event_store(engine, settings, metrics)
    store = link_store(engine, settings, events_in)
    async with (
        Batcher(store.apply, name="links") as links,
        Batcher(counted(events_in.ingest, metrics), name="events") as events,
    ):
        app = create_app(AppContext(engine, links, events, token, LIMIT, P, metrics=metrics))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://syncd") as client:
            yield client


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async for client in client_for(engine):
        yield client


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def identities(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(Identity)) or 0)


async def test_salebot_json_strings_then_form_then_numbers(
    client: httpx.AsyncClient, db_url: str
) -> None:
    body = {"email": "Anna@School.ru", "telegram_id": "123456789", "client_id": "987654"}
    first = await client.post("/v1/links", json=body, headers=AUTH)
    assert first.status_code == 200
    identity_id = first.json()["identity_id"]
    assert first.json() == {"success": True, "status": "created", "identity_id": identity_id}
    # the answer came after the commit: a separate engine sees the row at once
    other = create_engine(db_url)
    try:
        assert await identities(other) == 1
    finally:
        await other.dispose()
    again = await client.post(
        "/v1/links", data={"email": "anna@school.ru", "sb_id": "987654"}, headers=AUTH
    )
    assert again.json() == {"success": True, "status": "unchanged", "identity_id": identity_id}
    numbers = await client.post(
        "/v1/links",
        json={"email": "anna@school.ru", "client_id": 55, "project_id": 7},
        headers=AUTH,
    )
    assert numbers.json()["status"] == "linked"


@pytest.mark.parametrize(
    "auth",
    [
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"headers": {"authorization": f"bearer {TOKEN}"}},
        {"headers": {"X-Syncd-Token": TOKEN}},
        {"params": {"token": TOKEN}},
    ],
)
async def test_token_channels(client: httpx.AsyncClient, auth: dict[str, Any]) -> None:
    answer = await client.post("/v1/links", json={"email": "a@b.ru", "telegram_id": 1}, **auth)
    assert answer.status_code == 200


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"headers": {"Authorization": "Bearer wrong"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},
        {"headers": {"X-Syncd-Token": TOKEN[:-1]}},
        {"params": {"token": ""}},
        {"params": {"token": TOKEN + "x"}},
    ],
)
async def test_bad_tokens_401_and_nothing_written(
    client: httpx.AsyncClient, engine: AsyncEngine, auth: dict[str, Any]
) -> None:
    answer = await client.post("/v1/links", json={"email": "a@b.ru", "telegram_id": 1}, **auth)
    assert answer.status_code == 401
    assert answer.json() == {"success": False, "error": "unauthorized"}
    assert await identities(engine) == 0


async def test_empty_configured_token_refuses_everyone(engine: AsyncEngine) -> None:
    async for client in client_for(engine, token=""):
        answer = await client.post(
            "/v1/links", json={"email": "a@b.ru", "telegram_id": 1}, params={"token": ""}
        )
        assert answer.status_code == 401


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"json": {"telegram_id": "1"}}, "missing_email"),
        ({"json": {"email": "a@b.ru"}}, "missing_key"),
        ({"json": {"email": "#{email}", "telegram_id": "1"}}, "invalid_email"),
        ({"data": {"email": "a@b", "telegram_id": "1"}}, "invalid_email"),
        ({"json": {"email": "a@b.ru", "telegram_id": "#{platform_id}"}}, "invalid_telegram_id"),
        ({"json": {"email": "a@b.ru", "telegram_id": "-3"}}, "invalid_telegram_id"),
        ({"json": {"email": "a@b.ru", "client_id": "#{client_id}"}}, "invalid_client_id"),
        ({"data": {"email": "a@b.ru", "sb_id": "1e5"}}, "invalid_client_id"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            "invalid_body",
        ),
        ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, "invalid_body"),
        ({"content": b"email=\xff\xfe", "headers": {"content-type": "text/plain"}}, "invalid_body"),
        ({"files": {"f": ("a.txt", b"x")}}, "invalid_body"),
        ({"content": b"", "headers": {"content-type": "application/json"}}, "missing_email"),
    ],
)
async def test_bad_input_400_and_nothing_written(
    client: httpx.AsyncClient, engine: AsyncEngine, kwargs: dict[str, Any], code: str
) -> None:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    answer = await client.post("/v1/links", headers=headers, **kwargs)
    assert answer.status_code == 400
    body = answer.json()
    assert body["success"] is False and body["error"] == code and body["detail"]
    assert await identities(engine) == 0


async def test_conflict_409(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    await client.post("/v1/links", json={"email": "a@b.ru", "telegram_id": 1}, headers=AUTH)
    answer = await client.post(
        "/v1/links", json={"email": "b@b.ru", "telegram_id": "1"}, headers=AUTH
    )
    assert answer.status_code == 409
    body = answer.json()
    assert body["error"] == "conflict" and body["success"] is False and body["detail"]
    async with engine.connect() as conn:
        stored = await conn.scalar(select(LinkConflict.id))
    assert body["conflict_id"] == stored


async def test_huge_bodies_413(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    padding = "x" * (LIMIT + 1)
    declared = await client.post(
        "/v1/links", json={"email": "a@b.ru", "telegram_id": 1, "pad": padding}, headers=AUTH
    )
    assert declared.status_code == 413
    assert declared.json() == {"success": False, "error": "body_too_large"}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield b'{"email": "a@b.ru", "telegram_id": 1, "pad": "'
        for _ in range(LIMIT // 512 + 1):
            yield b"y" * 512
        yield b'"}'

    streamed = await client.post(
        "/v1/links", content=chunks(), headers={**AUTH, "content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await identities(engine) == 0


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["success"] is False
    wrong = await client.get("/v1/links", headers=AUTH)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"success": True, "status": "alive"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


@pytest.mark.parametrize(
    "empty_db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_not_ready_before_migrations(empty_db_url: str) -> None:
    engine = create_engine(empty_db_url)
    try:
        async for client in client_for(engine):
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "syncd migrate" in ready.json()["detail"]
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-dir/for/syncd.db",
        "sqlite:///{garbage}",
        pytest.param("postgresql://postgres@127.0.0.1:1/none", marks=pytest.mark.postgres),
    ],
)
async def test_store_down_503(url: str, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-database.db"
    garbage.write_bytes(b"this is not an SQLite file" * 100)
    engine = create_engine(url.format(garbage=garbage))
    try:
        async for client in client_for(engine):
            answer = await client.post(
                "/v1/links", json={"email": "a@b.ru", "telegram_id": 1}, headers=AUTH
            )
            assert answer.status_code == 503
            assert answer.json() == {"success": False, "error": "unavailable"}
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await engine.dispose()
        # aiosqlite posts an un-awaited stop() after a failed connect; let its worker
        # thread answer before pytest closes this test's loop.
        await asyncio.sleep(0.1)


def test_answers_are_json_for_salebot() -> None:
    # Salebot can only map JSON answers into variables: every answer above is parsed with
    # .json(); this guards the one hand-made answer body.
    from syncd.http.app import failure

    assert json.loads(failure(400, "x", "y").body) == {
        "success": False,
        "error": "x",
        "detail": "y",
    }
