"""Which people's keys GetCourse has not confirmed, and queueing their write-backs (§11).

A successful import of a write-back stores the keys it wrote on the identity
(``gc_telegram_id``, ``gc_client_id``). A person whose current Telegram id or client id
(in the configured Salebot project) differs from those — a link made while
``getcourse.api_key`` was empty, a write-back that died — gets the write queued again,
unless one is already on its way. Nothing GetCourse confirmed is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.identity import Person
from syncd.store.errors import translated
from syncd.store.models import Delivery, Identity, SalebotClient, utcnow
from syncd.store.outbox import enqueue
from syncd.writeback import WriteBack

#: People per transaction: a school's ten thousand subscribers in a few statements.
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    identity_id: int
    email: str
    telegram_id: int | None
    client_id: int | None
    confirmed_telegram_id: int | None
    confirmed_client_id: int | None
    gc_user_id: int | None


async def unconfirmed(engine: AsyncEngine, project_id: int) -> list[Unconfirmed]:
    """People whose keys GetCourse has not confirmed and whose write is not under way."""
    client = (
        select(SalebotClient.client_id)
        .where(SalebotClient.identity_id == Identity.id, SalebotClient.project_id == project_id)
        .scalar_subquery()
    )
    on_its_way = exists().where(
        Delivery.identity_id == Identity.id,
        Delivery.target == "getcourse",
        Delivery.action == "import_user",
        Delivery.status.in_(("pending", "sending", "waiting")),
    )
    query = (
        select(
            Identity.id,
            Identity.email,
            Identity.telegram_id,
            client,
            Identity.gc_telegram_id,
            Identity.gc_client_id,
            Identity.gc_user_id,
        )
        .where(
            and_(
                Identity.telegram_id.is_distinct_from(Identity.gc_telegram_id)
                | client.is_distinct_from(Identity.gc_client_id),
                ~on_its_way,
            )
        )
        .order_by(Identity.id)
    )
    async with translated(), engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [Unconfirmed(*row) for row in rows]


async def sync(engine: AsyncEngine, effects: WriteBack, dry_run: bool = False) -> list[Unconfirmed]:
    """Queue the write-back of every unconfirmed person (only list them with ``dry_run``)."""
    todo = await unconfirmed(engine, effects.project_id)
    if dry_run or not todo:
        return todo
    for start in range(0, len(todo), CHUNK):
        deliveries = []
        for u in todo[start : start + CHUNK]:
            before = Person(
                u.identity_id,
                u.email,
                u.confirmed_telegram_id,
                u.gc_user_id,
                {effects.project_id: u.confirmed_client_id} if u.confirmed_client_id else {},
            )
            after = Person(
                u.identity_id,
                u.email,
                u.telegram_id,
                u.gc_user_id,
                {effects.project_id: u.client_id} if u.client_id is not None else {},
            )
            deliveries += effects(before, after)
        async with translated(), engine.begin() as conn:
            await enqueue(conn, deliveries, utcnow())
    return todo
