"""Reading the identity map: one identity, open conflicts, a streamed export."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store.errors import translated
from syncd.store.models import Identity, LinkConflict, SalebotClient


@dataclass(frozen=True, slots=True)
class IdentityView:
    id: int
    email: str
    telegram_id: int | None
    gc_user_id: int | None
    salebot_clients: list[dict[str, int]]
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The shape of SPEC §7 (``syncd identity show --json``)."""
        return {
            "id": self.id,
            "email": self.email,
            "telegram_id": self.telegram_id,
            "gc_user_id": self.gc_user_id,
            "salebot_clients": self.salebot_clients,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _view(row: Any, clients: list[dict[str, int]]) -> IdentityView:
    return IdentityView(
        row.id, row.email, row.telegram_id, row.gc_user_id, clients, row.created_at, row.updated_at
    )


async def find_identity(
    engine: AsyncEngine,
    *,
    email: str | None = None,
    telegram_id: int | None = None,
    client: tuple[int, int] | None = None,
) -> IdentityView | None:
    query = select(Identity)
    if email is not None:
        query = query.where(Identity.email == email)
    elif telegram_id is not None:
        query = query.where(Identity.telegram_id == telegram_id)
    elif client is not None:
        query = query.join(SalebotClient, SalebotClient.identity_id == Identity.id).where(
            SalebotClient.project_id == client[0], SalebotClient.client_id == client[1]
        )
    else:
        raise ValueError("give one key")
    async with translated(), engine.connect() as conn:
        row = (await conn.execute(query)).first()
        if row is None:
            return None
        clients = await conn.execute(
            select(SalebotClient.project_id, SalebotClient.client_id)
            .where(SalebotClient.identity_id == row.id)
            .order_by(SalebotClient.project_id)
        )
        return _view(row, [{"project_id": p, "client_id": c} for p, c in clients])


async def open_conflicts(engine: AsyncEngine) -> list[dict[str, Any]]:
    query = select(LinkConflict).where(LinkConflict.status == "open").order_by(LinkConflict.id)
    async with translated(), engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        {
            "id": row.id,
            "email": row.email,
            "telegram_id": row.telegram_id,
            "project_id": row.project_id,
            "client_id": row.client_id,
            "identity_ids": row.holders.get("identity_ids", []),
            "reason": row.reason,
            "source": row.source,
            "seen_count": row.seen_count,
            "created_at": row.created_at.isoformat(),
            "last_seen_at": row.last_seen_at.isoformat(),
        }
        for row in rows
    ]


async def stream_identities(engine: AsyncEngine, chunk: int = 1000) -> AsyncIterator[IdentityView]:
    """Every identity in id order with its clients, read ``chunk`` rows at a time.

    Memory stays flat however many identities there are: rows are fetched in pages by
    id (keyset), never all at once.
    """
    last = 0
    while True:
        async with translated(), engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Identity).where(Identity.id > last).order_by(Identity.id).limit(chunk)
                )
            ).all()
            if not rows:
                return
            owned: dict[int, list[dict[str, int]]] = {row.id: [] for row in rows}
            clients = await conn.execute(
                select(SalebotClient.identity_id, SalebotClient.project_id, SalebotClient.client_id)
                .where(SalebotClient.identity_id.between(rows[0].id, rows[-1].id))
                .order_by(SalebotClient.identity_id, SalebotClient.project_id)
            )
            for identity_id, project_id, client_id in clients:
                if identity_id in owned:
                    owned[identity_id].append({"project_id": project_id, "client_id": client_id})
        for row in rows:
            yield _view(row, owned[row.id])
        last = rows[-1].id
