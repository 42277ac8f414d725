"""Concurrent links for the same people never make two identities or lose a key.

Two shapes of concurrency, each on SQLite and PostgreSQL: many simultaneous HTTP
requests into one daemon (its group-commit writer), and several independent writers on
one database (as several daemons, or the CLI beside a daemon, would be).
"""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.identity import LinkClaim, normalise_link
from syncd.store.engine import create_engine
from syncd.store.links import LinkRequest, LinkStore
from syncd.store.models import Identity, LinkConflict, SalebotClient
from syncd.store.queries import find_identity
from tests.test_webhook_links import AUTH, P, client_for

PEOPLE = 40


def claims_for(person: int) -> list[dict[str, object]]:
    """Four compatible, partial links for one person, as several bot blocks would send."""
    email, tg, client = f"p{person}@school.ru", str(1000 + person), str(5000 + person)
    return [
        {"email": email, "telegram_id": tg},
        {"email": email.upper(), "client_id": client},
        {"email": email, "telegram_id": tg, "client_id": client},
        {"email": f" {email} ", "sb_id": client},
    ]


async def assert_everyone_whole(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Identity)) == PEOPLE
        assert await conn.scalar(select(func.count()).select_from(SalebotClient)) == PEOPLE
        assert await conn.scalar(select(func.count()).select_from(LinkConflict)) == 0
    for person in range(PEOPLE):
        found = await find_identity(engine, email=f"p{person}@school.ru")
        assert found is not None
        assert found.telegram_id == 1000 + person
        assert found.salebot_clients == [{"project_id": P, "client_id": 5000 + person}]


async def test_concurrent_http_links(engine: AsyncEngine) -> None:
    bodies = [body for person in range(PEOPLE) for body in claims_for(person)]
    random.Random(7).shuffle(bodies)
    async for client in client_for(engine):
        answers = await asyncio.gather(
            *(client.post("/v1/links", json=body, headers=AUTH) for body in bodies)
        )
    statuses = [a.json()["status"] for a in answers]
    assert {a.status_code for a in answers} == {200}
    assert statuses.count("created") == PEOPLE
    await assert_everyone_whole(engine)


async def test_independent_writers_on_one_database(db_url: str) -> None:
    engines = [create_engine(db_url) for _ in range(4)]
    try:
        stores = [LinkStore(engine, "reject") for engine in engines]
        requests = []
        for person in range(PEOPLE):
            for body in claims_for(person):
                requests.append(LinkRequest(normalise_link(body, P), "test"))
        random.Random(11).shuffle(requests)

        async def one(i: int, request: LinkRequest) -> str:
            (result,) = await stores[i % len(stores)].apply([request])
            return result.status

        statuses = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        assert statuses.count("created") == PEOPLE
        await assert_everyone_whole(engines[0])
    finally:
        for engine in engines:
            await engine.dispose()


async def test_concurrent_conflicting_claims_keep_one_owner(engine: AsyncEngine) -> None:
    """Ten emails race for one Telegram id: exactly one wins, nine are conflicts."""
    store = LinkStore(engine, "reject")
    results = await asyncio.gather(
        *(
            store.apply([LinkRequest(LinkClaim(f"r{i}@school.ru", 77, P, None), "t")])
            for i in range(10)
        )
    )
    statuses = sorted(r[0].status for r in results)
    assert statuses == ["conflict"] * 9 + ["created"]
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Identity)) == 1
