"""Applying links to the identity map, many per transaction.

:meth:`LinkStore.apply` takes a batch of claims and applies them in **one** transaction
that holds the write lock from its first read (``BEGIN IMMEDIATE`` on SQLite, an
advisory transaction lock on PostgreSQL, so several daemons on one database take
turns). It loads every identity holding any key of the batch in one query, then decides
each claim in order with :func:`syncd.identity.decide` against that in-memory view,
writing as it goes; later claims see the effects of earlier ones. Nothing is returned
before the commit, so a caller that answers 200 after :meth:`apply` returns never
acknowledges a link that is not stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import delete, insert, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncd.identity import Change, Decision, Holders, LinkClaim, OnConflict, Person, decide
from syncd.store.errors import translated
from syncd.store.models import Identity, IdentityChange, LinkConflict, SalebotClient, utcnow
from syncd.store.outbox import NewDelivery, enqueue

#: Key of the PostgreSQL advisory lock that serialises identity writers.
IDENTITY_LOCK = 0x5C_D0_00_02


#: What else a change to an identity causes, in the same transaction (the outbox).
Effects = Callable[[Person | None, Person], list[NewDelivery]]


def no_effects(before: Person | None, after: Person) -> list[NewDelivery]:
    return []


@dataclass(frozen=True, slots=True)
class LinkResult:
    status: str
    identity_id: int | None = None
    conflict_id: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LinkRequest:
    claim: LinkClaim
    source: str


class _View:
    """The identities a batch touches, indexed by each key."""

    def __init__(self, people: list[Person]) -> None:
        self.people: dict[int, Person] = {}
        self.email: dict[str, int] = {}
        self.telegram: dict[int, int] = {}
        self.client: dict[tuple[int, int], int] = {}
        for person in people:
            self.put(None, person)

    def holders(self, claim: LinkClaim) -> Holders:
        def get(key: int | None) -> Person | None:
            return self.people.get(key) if key is not None else None

        client = (
            self.client.get((claim.project_id, claim.client_id))
            if claim.client_id is not None
            else None
        )
        return Holders(
            by_email=get(self.email.get(claim.email)),
            by_telegram=get(self.telegram.get(claim.telegram_id))
            if claim.telegram_id is not None
            else None,
            by_client=get(client),
        )

    def put(self, before: Person | None, after: Person) -> None:
        assert after.id is not None
        if before is not None:
            self.email.pop(before.email, None)
            if before.telegram_id is not None:
                self.telegram.pop(before.telegram_id, None)
            for pair in before.clients.items():
                self.client.pop(pair, None)
        self.people[after.id] = after
        self.email[after.email] = after.id
        if after.telegram_id is not None:
            self.telegram[after.telegram_id] = after.id
        for pair in after.clients.items():
            self.client[pair] = after.id


class LinkStore:
    """Applies links; see the module docstring for the transaction rules."""

    def __init__(
        self, engine: AsyncEngine, on_conflict: OnConflict, effects: Effects = no_effects
    ) -> None:
        self.engine = engine
        self.on_conflict = on_conflict
        self.effects = effects
        #: How many deliveries the last committed batches enqueued (for waking a dispatcher).
        self.enqueued = 0

    async def apply(self, requests: Sequence[LinkRequest]) -> list[LinkResult]:
        """Apply a batch in one transaction; raises :class:`StoreUnavailable` on an outage."""
        async with translated(), self.engine.connect() as conn:
            conn = await conn.execution_options(write_lock=True)
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": IDENTITY_LOCK}
                    )
                batch = _Batch(conn, self.on_conflict, self.effects)
                results = await batch.run(requests)
        self.enqueued += batch.enqueued
        return results


class _Batch:
    def __init__(self, conn: AsyncConnection, on_conflict: OnConflict, effects: Effects) -> None:
        self.conn = conn
        self.on_conflict = on_conflict
        self.effects = effects
        self.now = utcnow()
        self.changes: list[dict[str, Any]] = []
        self.deliveries: list[NewDelivery] = []
        self.enqueued = 0

    async def run(self, requests: Sequence[LinkRequest]) -> list[LinkResult]:
        view = _View(await load_people(self.conn, [r.claim for r in requests]))
        results = []
        for request in requests:
            decision = decide(request.claim, view.holders(request.claim), self.on_conflict)
            results.append(await self.write(request, decision, view))
        if self.changes:
            await self.conn.execute(insert(IdentityChange), self.changes)
        await enqueue(self.conn, self.deliveries, self.now)
        self.enqueued = len(self.deliveries)
        return results

    async def write(self, request: LinkRequest, decision: Decision, view: _View) -> LinkResult:
        if decision.status == "conflict":
            conflict_id = await self.record_conflict(request, decision)
            return LinkResult("conflict", conflict_id=conflict_id, detail=decision.reason)
        target = decision.target
        assert target is not None
        if decision.status == "unchanged":
            return LinkResult("unchanged", identity_id=target.after.id)
        stored: Person | None = None
        for change in decision.changes:
            stored = await self.write_change(change, request.source, decision.reason)
            view.put(change.before, stored)
        assert stored is not None
        return LinkResult(decision.status, identity_id=stored.id, detail=decision.reason)

    async def write_change(self, change: Change, source: str, reason: str) -> Person:
        before, after = change.before, change.after
        if before is None:
            new_id = await self.conn.scalar(
                insert(Identity)
                .values(
                    email=after.email,
                    telegram_id=after.telegram_id,
                    gc_user_id=after.gc_user_id,
                    created_at=self.now,
                    updated_at=self.now,
                )
                .returning(Identity.id)
            )
            assert new_id is not None
            after = replace(after, id=new_id)
            old_clients: set[tuple[int, int]] = set()
        else:
            await self.conn.execute(
                update(Identity)
                .where(Identity.id == before.id)
                .values(telegram_id=after.telegram_id, updated_at=self.now)
            )
            old_clients = set(before.clients.items())
        new_clients = set(after.clients.items())
        for project_id, client_id in old_clients - new_clients:
            await self.conn.execute(
                delete(SalebotClient).where(
                    SalebotClient.project_id == project_id, SalebotClient.client_id == client_id
                )
            )
        added = new_clients - old_clients
        if added:
            await self.conn.execute(
                insert(SalebotClient),
                [
                    {
                        "project_id": p,
                        "client_id": c,
                        "identity_id": after.id,
                        "created_at": self.now,
                    }
                    for p, c in sorted(added)
                ],
            )
        self.changes.append(
            {
                "identity_id": after.id,
                "source": source,
                "before": before.keys() if before is not None else None,
                "after": after.keys(),
                "reason": reason,
                "changed_at": self.now,
            }
        )
        self.deliveries.extend(self.effects(before, after))
        return after

    async def record_conflict(self, request: LinkRequest, decision: Decision) -> int:
        """Store the conflict for an operator; a repeat of an open one is counted, not copied."""
        claim = request.claim
        same = (
            (LinkConflict.status == "open")
            & (LinkConflict.email == claim.email)
            & (LinkConflict.project_id == claim.project_id)
            & _eq_or_null(LinkConflict.telegram_id, claim.telegram_id)
            & _eq_or_null(LinkConflict.client_id, claim.client_id)
        )
        existing = await self.conn.scalar(select(LinkConflict.id).where(same).limit(1))
        if isinstance(existing, int):
            await self.conn.execute(
                update(LinkConflict)
                .where(LinkConflict.id == existing)
                .values(seen_count=LinkConflict.seen_count + 1, last_seen_at=self.now)
            )
            return existing
        new_id = await self.conn.scalar(
            insert(LinkConflict)
            .values(
                source=request.source,
                email=claim.email,
                telegram_id=claim.telegram_id,
                project_id=claim.project_id,
                client_id=claim.client_id,
                holders={"identity_ids": list(decision.holders)},
                reason=decision.reason,
                created_at=self.now,
                last_seen_at=self.now,
            )
            .returning(LinkConflict.id)
        )
        assert isinstance(new_id, int)
        return new_id


def _eq_or_null(column: Any, value: int | None) -> Any:
    return column.is_(None) if value is None else column == value


async def load_people(conn: AsyncConnection, claims: Sequence[LinkClaim]) -> list[Person]:
    """Every identity that holds any key of ``claims``, with its Salebot clients."""
    emails = {c.email for c in claims}
    telegrams = {c.telegram_id for c in claims if c.telegram_id is not None}
    clients = {(c.project_id, c.client_id) for c in claims if c.client_id is not None}
    conditions = [Identity.email.in_(emails)]
    if telegrams:
        conditions.append(Identity.telegram_id.in_(telegrams))
    if clients:
        conditions.append(
            Identity.id.in_(
                select(SalebotClient.identity_id).where(
                    tuple_(SalebotClient.project_id, SalebotClient.client_id).in_(clients)
                )
            )
        )
    rows = (await conn.execute(select(Identity).where(or_(*conditions)))).all()
    return await with_clients(conn, rows)


async def with_clients(conn: AsyncConnection, rows: Sequence[Any]) -> list[Person]:
    """Identity rows → :class:`Person` values with their client ids."""
    if not rows:
        return []
    ids = [row.id for row in rows]
    owned: dict[int, dict[int, int]] = {i: {} for i in ids}
    for client in await conn.execute(
        select(SalebotClient.identity_id, SalebotClient.project_id, SalebotClient.client_id).where(
            SalebotClient.identity_id.in_(ids)
        )
    ):
        owned[client.identity_id][client.project_id] = client.client_id
    return [
        Person(row.id, row.email, row.telegram_id, row.gc_user_id, owned[row.id]) for row in rows
    ]
