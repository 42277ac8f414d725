"""Applying links to the identity map, many per transaction.

:meth:`LinkStore.apply` takes a batch of claims and applies them in **one** transaction
that holds the write lock from its first read (``BEGIN IMMEDIATE`` on SQLite, an
advisory transaction lock on PostgreSQL, so several daemons on one database take
turns). It loads every identity holding any key of the batch in one query, plans the
batch in memory (:mod:`syncd.store.linkplan`), then writes the difference with one
statement per kind of change — however many links the batch holds. Nothing is returned
before the commit, so a caller that answers 200 after :meth:`apply` returns never
acknowledges a link that is not stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Result,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncd.identity import Decision, LinkClaim, OnConflict, Person
from syncd.store.dialect import in_list, list_param
from syncd.store.engine import writing
from syncd.store.errors import translated
from syncd.store.linkplan import Effects, LinkRequest, Plan, no_effects
from syncd.store.models import Identity, IdentityChange, LinkConflict, SalebotClient, utcnow
from syncd.store.outbox import enqueue
from syncd.store.pipeline import defer, deferring, pipelined
from syncd.store.rows import insert_values

__all__ = ["Effects", "LinkRequest", "LinkResult", "LinkStore", "no_effects"]

#: Called in the link's transaction with the final state of every identity the batch
#: changed (real ids); returns how many deliveries it enqueued (waiting events).
AfterLink = Callable[[AsyncConnection, list[Person], datetime], Awaitable[int]]

IDENTITIES = cast(Table, Identity.__table__)
CLIENTS = cast(Table, SalebotClient.__table__)
CHANGES = cast(Table, IdentityChange.__table__)

#: Key of the PostgreSQL advisory lock that serialises identity writers.
IDENTITY_LOCK = 0x5C_D0_00_02


@dataclass(frozen=True, slots=True)
class LinkResult:
    status: str
    identity_id: int | None = None
    conflict_id: int | None = None
    detail: str = ""


@asynccontextmanager
async def identity_transaction(
    engine: AsyncEngine, *, lookups: bool = False
) -> AsyncIterator[AsyncConnection]:
    """A transaction that may create or change identities: it holds the write lock from
    its first read (``BEGIN IMMEDIATE`` on SQLite; an advisory lock on PostgreSQL, so
    several daemons take turns). Outages become :class:`StoreUnavailable`. Writes given
    to :func:`~syncd.store.pipeline.defer` go with the commit (one round trip on
    PostgreSQL).

    ``lookups``: every statement of the transaction finds its rows by key (a webhook's
    batch). On PostgreSQL the planner is then held to index searches and nested loops
    for this transaction only (:data:`_LOCK_FOR_LOOKUPS`).
    """
    async with translated(), writing(engine), engine.connect() as conn:
        conn = await conn.execution_options(write_lock=True)
        async with conn.begin() as transaction, deferring(conn, transaction):
            if conn.dialect.name == "postgresql":
                async with pipelined(conn):  # BEGIN and the lock: one round trip
                    await conn.execute(_LOCK_FOR_LOOKUPS if lookups else _LOCK, _LOCK_KEY)
            yield conn


_LOCK_KEY = {"k": IDENTITY_LOCK}
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
#: The lock, and the planner held to index searches until the transaction ends. A
#: school's tables start empty and grow by thousands an hour, and PostgreSQL plans with
#: the statistics of its last ANALYZE (autovacuum's, a minute or more behind): it read
#: every person with a sequential scan in each link batch while ``identities`` looked
#: small (3,800 rows: 2.1 ms a batch instead of 0.2, growing with the table until the
#: next ANALYZE). A batch's statements are key lookups by design
#: (``tests/test_store_plans.py`` proves each has an index path), so this cannot pick a
#: worse plan for them. ``set_config(…, true)`` is ``SET LOCAL``: it ends with the
#: transaction and costs no round trip of its own.
#:
#: The same holds for their generic plans, so the transaction also plans each prepared
#: statement once (``force_generic_plan``) instead of at every batch, as the session's
#: ``force_custom_plan`` (:mod:`syncd.store.engine`) would: planning the people read alone
#: was 290 µs of a batch's ~2.6 ms on the server, and ingest on PostgreSQL ran 35–50 %
#: faster with the plans reused (docs/performance.md, 2026-12-07). A generic plan is
#: only ever built here — the session default never builds one — so it is built under
#: the index-only knobs above, and PostgreSQL rebuilds it, here again, after an ANALYZE
#: or a migration changes a table; ``tests/test_store_plans.py`` checks those plans too.
#:
#: A disabled node still runs where it is the only way (a staging table, a ``VALUES``
#: list), at a cost of 10^10, far above ``jit_above_cost``: PostgreSQL then compiled such
#: a statement with LLVM at every batch, inlined and optimized, ~70 ms each for an
#: ``INSERT … SELECT`` of a hundred rows that runs in ~1 ms (GetCourse events at 1,000 a
#: second waited seconds for it). So the transaction also turns JIT off: its statements
#: touch a few rows each by design.
_LOCK_FOR_LOOKUPS = text(
    "SELECT pg_advisory_xact_lock(:k), set_config('enable_seqscan', 'off', true), "
    "set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true), "
    "set_config('plan_cache_mode', 'force_generic_plan', true), set_config('jit', 'off', true)"
)


class LinkStore:
    """Applies links; see the module docstring for the transaction rules."""

    def __init__(
        self,
        engine: AsyncEngine,
        on_conflict: OnConflict,
        effects: Effects = no_effects,
        after_link: AfterLink | None = None,
    ) -> None:
        self.engine = engine
        self.on_conflict = on_conflict
        self.effects = effects
        self.after_link = after_link
        #: How many deliveries committed batches enqueued (for waking a dispatcher).
        self.enqueued = 0

    async def apply(self, requests: Sequence[LinkRequest]) -> list[LinkResult]:
        """Apply a batch in one transaction; raises :class:`StoreUnavailable` on an outage."""
        async with identity_transaction(self.engine, lookups=True) as conn:
            people = await load_people(conn, [r.claim for r in requests])
            first = {p.id: p for p in people if p.id is not None}
            plan = Plan(first, self.on_conflict, self.effects)
            for request in requests:
                plan.add(request)
            now = utcnow()
            results, ids = await _write(conn, plan, requests, now)
            enqueued = len(plan.deliveries)
            if self.after_link is not None:
                changed = [p for i, p in plan.people.items() if i < 0 or p != plan.initial[i]]
                final = [p.with_id(ids[p.id]) for p in changed if p.id is not None]
                if final:
                    enqueued += await self.after_link(conn, final, now)
        self.enqueued += enqueued
        return results


async def _write(
    conn: AsyncConnection, plan: Plan, requests: Sequence[LinkRequest], now: datetime
) -> tuple[list[LinkResult], dict[int, int]]:
    """Write the plan; return the results and the map of plan ids to stored ids."""
    updated = plan.updated()
    if plan.telegram_moves():  # let go first: telegram_id is unique
        await conn.execute(
            update(Identity)
            .where(Identity.id.in_([first.id for first, _ in updated]))
            .values(telegram_id=None)
        )
    removed = plan.clients_removed()
    if removed:
        await conn.execute(
            delete(SalebotClient).where(
                SalebotClient.project_id == bindparam("b_project"),
                SalebotClient.client_id == bindparam("b_client"),
            ),
            [{"b_project": p, "b_client": c} for p, c in sorted(removed)],
        )
    ids = {i: i for i in plan.people if i > 0}
    created = plan.created()
    if created:
        # mapped back by email: a multi-row RETURNING comes in no promised order
        by_email = dict(
            (email, new_id)
            for new_id, email in await insert_values(
                conn,
                IDENTITIES,
                ("email", "telegram_id", "gc_user_id", "created_at", "updated_at"),
                [(p.email, p.telegram_id, p.gc_user_id, now, now) for p in created],
                returning=("id", "email"),
            )
        )
        for person in created:
            assert person.id is not None
            ids[person.id] = by_email[person.email]
    # nothing reads these back in the transaction: they go with its COMMIT (on PostgreSQL
    # in one round trip, with the bot-event attach when nothing reads after it either)
    if updated:
        telegrams = [
            {"b_id": final.id, "b_telegram": final.telegram_id, "b_now": now}
            for _, final in updated
        ]
        defer(conn, lambda: conn.execute(_SET_TELEGRAM, telegrams))
    clients = [(p, c, ids[i], now) for p, c, i in plan.clients_added()]
    if clients:
        defer(conn, lambda: insert_values(conn, CLIENTS, _CLIENT_COLUMNS, clients))
    changes = [
        (
            ids[change.identity_id],
            change.source,
            change.before.keys() if change.before is not None else None,
            change.after.with_id(ids[change.identity_id]).keys(),
            change.reason,
            now,
        )
        for change in plan.changes
    ]
    if changes:
        defer(conn, lambda: insert_values(conn, CHANGES, _CHANGE_COLUMNS, changes))
    deliveries = [
        replace(d, identity_id=ids.get(d.identity_id, d.identity_id))
        if d.identity_id is not None
        else d
        for d in plan.deliveries
    ]
    await enqueue(conn, deliveries, now)  # SQLAlchemy's many-row insert reads its answers
    results = []
    for request, decision, target in zip(requests, plan.decisions, plan.targets, strict=True):
        if decision.status == "conflict":
            conflict_id = await _record_conflict(conn, request, decision, now)
            results.append(LinkResult("conflict", conflict_id=conflict_id, detail=decision.reason))
        else:
            assert target is not None
            results.append(LinkResult(decision.status, ids[target], detail=decision.reason))
    return results, ids


_SET_TELEGRAM = (
    update(Identity)
    .where(Identity.id == bindparam("b_id"))
    .values(telegram_id=bindparam("b_telegram"), updated_at=bindparam("b_now"))
)
_CLIENT_COLUMNS = ("project_id", "client_id", "identity_id", "created_at")
_CHANGE_COLUMNS = ("identity_id", "source", "before", "after", "reason", "changed_at")


async def _record_conflict(
    conn: AsyncConnection, request: LinkRequest, decision: Decision, now: datetime
) -> int:
    """Store the conflict for an operator; a repeat of an open one is counted, not copied."""
    claim = request.claim
    same = (
        (LinkConflict.status == "open")
        & (LinkConflict.email == claim.email)
        & (LinkConflict.project_id == claim.project_id)
        & _eq_or_null(LinkConflict.telegram_id, claim.telegram_id)
        & _eq_or_null(LinkConflict.client_id, claim.client_id)
    )
    existing = await conn.scalar(select(LinkConflict.id).where(same).limit(1))
    if isinstance(existing, int):
        await conn.execute(
            update(LinkConflict)
            .where(LinkConflict.id == existing)
            .values(seen_count=LinkConflict.seen_count + 1, last_seen_at=now)
        )
        return existing
    new_id = await conn.scalar(
        insert(LinkConflict)
        .values(
            source=request.source,
            email=claim.email,
            telegram_id=claim.telegram_id,
            project_id=claim.project_id,
            client_id=claim.client_id,
            holders={"identity_ids": list(decision.holders)},
            reason=decision.reason,
            created_at=now,
            last_seen_at=now,
        )
        .returning(LinkConflict.id)
    )
    assert isinstance(new_id, int)
    return new_id


def _eq_or_null(column: Any, value: int | None) -> Any:
    return column.is_(None) if value is None else column == value


async def load_people(
    conn: AsyncConnection,
    claims: Sequence[LinkClaim] = (),
    *,
    emails: Iterable[str] = (),
    gc_user_ids: Iterable[int] = (),
    telegram_ids: Iterable[int] = (),
    clients: Iterable[tuple[int, int]] = (),
) -> list[Person]:
    """Every identity holding any key of ``claims`` (or one of ``emails``,
    ``gc_user_ids``, ``telegram_ids``, ``(project_id, client_id)`` ``clients``), with its
    Salebot clients, in one query."""
    wanted_emails = {c.email for c in claims} | set(emails)
    telegrams = {c.telegram_id for c in claims if c.telegram_id is not None} | set(telegram_ids)
    gc_ids = set(gc_user_ids)
    by_project: dict[int, set[int]] = {}
    pairs = [(c.project_id, c.client_id) for c in claims if c.client_id is not None]
    for project_id, client_id in [*pairs, *clients]:
        by_project.setdefault(project_id, set()).add(client_id)
    if not (wanted_emails or telegrams or gc_ids or by_project):
        return []
    dialect = conn.dialect.name
    params: dict[str, Any] = {}
    for name, values in (("emails", wanted_emails), ("telegrams", telegrams), ("gc_ids", gc_ids)):
        if values:
            params[name] = list_param(dialect, values)
    if dialect == "postgresql" and by_project:  # one arm: the pairs as two arrays
        keys = [(project, client) for project, ids in by_project.items() for client in ids]
        params["client_projects"] = [project for project, _ in keys]
        params["client_ids"] = [client for _, client in keys]
        projects = 1
    else:
        for k, (project_id, client_ids) in enumerate(by_project.items()):
            params[f"project_{k}"] = project_id
            params[f"clients_{k}"] = list_param(dialect, client_ids)
        projects = len(by_project)
    query = _people_query(dialect, bool(wanted_emails), bool(telegrams), bool(gc_ids), projects)
    return _people(await conn.execute(query, params))


@lru_cache(maxsize=64)
def _people_query(
    dialect: str, emails: bool, telegrams: bool, gc_ids: bool, projects: int
) -> Select[int, str, int | None, int | None, int, int]:
    """The query of :func:`load_people` for one shape of batch, built once: its cache key
    and compiled form are then SQLAlchemy's to reuse (a batch only binds values).

    The ids come from a ``UNION ALL`` of one index search per kind of key. The same
    searches joined by ``OR`` made PostgreSQL scan all of ``identities`` and
    ``salebot_clients`` (an ``IN (subquery)`` cannot join a bitmap ``OR``): 28 ms a batch
    at 87,000 people, growing with them; this way it is 1.4 ms.
    """
    arms = []
    for wanted, column, name in (
        (emails, Identity.email, "emails"),
        (telegrams, Identity.telegram_id, "telegrams"),
        (gc_ids, Identity.gc_user_id, "gc_ids"),
    ):
        if wanted:
            arms.append(select(Identity.id).where(in_list(dialect, column, name)))
    if dialect == "postgresql":
        if projects:  # every project's pairs in one arm
            arms.append(_CLIENTS_PG)
    else:
        for k in range(projects):
            arms.append(
                select(SalebotClient.identity_id).where(
                    SalebotClient.project_id == bindparam(f"project_{k}"),
                    in_list(dialect, SalebotClient.client_id, f"clients_{k}"),
                )
            )
    return _PEOPLE.where(Identity.id.in_(union_all(*arms) if len(arms) > 1 else arms[0]))


#: The client arm on PostgreSQL: each (project, client) pair one index search. Written
#: as ``project_id = :p AND client_id = ANY(:clients)``, the plan PostgreSQL kept for it
#: (built while the table was small: day one, or a minute before autovacuum's ANALYZE)
#: searched the primary key by project alone and filtered every client of the project —
#: a read that grew with the school until the next ANALYZE, and the slow half of
#: PostgreSQL's ingest runs (docs/performance.md). An ``= ANY`` on the key's second
#: column always has that alternative; a join on both columns has none, since the link
#: transaction rules out hash and merge joins (``_LOCK_FOR_LOOKUPS``).
_CLIENT_KEYS = (
    func.unnest(
        cast_(bindparam("client_projects"), ARRAY(BigInteger)),
        cast_(bindparam("client_ids"), ARRAY(BigInteger)),
    )
    .table_valued("project", "client")
    .render_derived(name="k")
)
_CLIENTS_PG = select(SalebotClient.identity_id).join_from(
    _CLIENT_KEYS,
    SalebotClient,
    (SalebotClient.project_id == _CLIENT_KEYS.c.project)
    & (SalebotClient.client_id == _CLIENT_KEYS.c.client),
)

_PEOPLE = select(
    Identity.id,
    Identity.email,
    Identity.telegram_id,
    Identity.gc_user_id,
    SalebotClient.project_id,
    SalebotClient.client_id,
).outerjoin(SalebotClient, SalebotClient.identity_id == Identity.id)


async def people_where(conn: AsyncConnection, condition: Any) -> list[Person]:
    """The identities matching ``condition``, as :class:`Person` values with their clients."""
    return _people(await conn.execute(_PEOPLE.where(condition)))


def _people(rows: Result[int, str, int | None, int | None, int, int]) -> list[Person]:
    keys: dict[int, tuple[str, int | None, int | None]] = {}
    clients: dict[int, dict[int, int]] = {}
    for identity_id, email, telegram_id, gc_user_id, project_id, client_id in rows.all():
        keys[identity_id] = (email, telegram_id, gc_user_id)
        owned = clients.setdefault(identity_id, {})
        if project_id is not None:
            owned[project_id] = client_id
    return [Person(i, *keys[i], clients[i]) for i in keys]
