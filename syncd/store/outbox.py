"""The ``deliveries`` table: enqueue in the caller's transaction, claim with a lease,
record outcomes, and the operator's views (list, stats, retry).

Claiming marks rows ``sending`` with ``lease_owner``/``leased_until`` and counts the
attempt at once, so a crash between claim and record costs an attempt, never a loop.
A ``sending`` row whose lease has passed is due again (its owner died). On PostgreSQL
the claim query locks with ``FOR UPDATE SKIP LOCKED``, so daemons sharing a database
never claim the same row; on SQLite the claim runs under ``BEGIN IMMEDIATE``.
Outcomes are recorded only by the lease owner of a row still ``sending``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Literal

from sqlalchemy import Integer, and_, bindparam, func, or_, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncd.store.dialect import in_list, insert_ignoring, list_param
from syncd.store.engine import writing
from syncd.store.errors import translated
from syncd.store.models import Delivery, Identity, utcnow
from syncd.store.pipeline import pipelined

Status = Literal["pending", "sending", "sent", "dead", "waiting"]
STATUSES: tuple[Status, ...] = ("pending", "sending", "sent", "dead", "waiting")


@dataclass(frozen=True, slots=True)
class NewDelivery:
    target: str
    action: str
    payload: dict[str, Any]
    identity_id: int | None = None
    dedupe_key: str | None = None
    waiting_for: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    target: str
    action: str
    payload: dict[str, Any]
    identity_id: int | None
    attempts: int
    age_from: datetime


@dataclass(frozen=True, slots=True)
class Confirmed:
    """GetCourse now holds these keys in the person's custom fields (SPEC §11)."""

    identity_id: int
    telegram_id: int | None
    client_id: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """``sent``; ``retry`` at ``next_attempt_at``; ``dead``; or ``released`` (not tried).

    A ``sent`` outcome may carry what follows from it, written in the same transaction:
    calls it causes (a deal's reply to the bot) and keys GetCourse confirmed.
    """

    id: int
    status: Literal["sent", "retry", "dead", "released"]
    error: str | None = None
    next_attempt_at: datetime | None = None
    follow_ups: tuple[NewDelivery, ...] = ()
    confirmed: Confirmed | None = None


async def enqueue(
    conn: AsyncConnection, deliveries: Sequence[NewDelivery], now: datetime | None = None
) -> None:
    """Insert deliveries in the caller's transaction (the transactional outbox).

    A delivery whose ``dedupe_key`` is already in the table is skipped: a rule's call for
    an event is enqueued once, however often the event is looked at.
    """
    if not deliveries:
        return
    now = now or utcnow()
    await conn.execute(
        insert_ignoring(conn, Delivery, "dedupe_key"),
        [
            {
                "target": d.target,
                "action": d.action,
                "payload": d.payload,
                "identity_id": d.identity_id,
                "dedupe_key": d.dedupe_key,
                "status": "waiting" if d.waiting_for else "pending",
                "waiting_for": d.waiting_for,
                "attempts": 0,
                "created_at": now,
                "age_from": now,
                "next_attempt_at": now,
            }
            for d in deliveries
        ],
    )


def _due(now: datetime) -> Any:
    return or_(
        and_(Delivery.status == "pending", Delivery.next_attempt_at <= now),
        and_(Delivery.status == "sending", Delivery.leased_until < now),
    )


_LIMIT = bindparam("b_limit", type_=Integer)


def _claimable(postgres: bool) -> Any:
    """The ids of up to ``:b_limit`` rows due at ``:b_now``, oldest ``next_attempt_at`` first.

    Two index range scans on ``(status, next_attempt_at)``, each stopping after
    ``b_limit`` rows: pending rows in ``next_attempt_at`` order, and ``sending`` rows
    whose lease has passed (a claimed row's ``next_attempt_at`` is never after its claim,
    so these are due too); then the oldest ``b_limit`` of the two. :func:`_due` as one
    ``OR`` cost a sort of every due row per claim (5 ms of CPU per claim on SQLite with
    20,000 rows due; ``docs/performance.md``, Dispatch). On PostgreSQL each arm locks
    what it takes with ``FOR UPDATE SKIP LOCKED`` (not allowed on a ``UNION`` itself, so
    the arms are subqueries); rows locked but not kept are left as they are.
    """
    now, limit = bindparam("b_now", type_=Delivery.next_attempt_at.type), _LIMIT
    arms = []
    for where in (
        and_(Delivery.status == "pending", Delivery.next_attempt_at <= now),
        and_(Delivery.status == "sending", Delivery.leased_until < now),
    ):
        arm = (
            select(Delivery.id, Delivery.next_attempt_at)
            .where(where)
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
        )
        if postgres:
            arm = arm.with_for_update(skip_locked=True)
        sub = arm.subquery()
        arms.append(select(sub.c.id, sub.c.next_attempt_at))
    due = union_all(*arms).subquery()
    return select(due.c.id).order_by(due.c.next_attempt_at, due.c.id).limit(limit)


@cache
def _claim_statement(postgres: bool) -> Any:
    """Built once per dialect: building it per claim cost more CPU than running it."""
    return (
        update(Delivery)
        .where(Delivery.id.in_(_claimable(postgres).scalar_subquery()))
        .values(
            status="sending",
            lease_owner=bindparam("b_owner"),
            leased_until=bindparam("b_until"),
            attempts=Delivery.attempts + 1,
        )
        .returning(
            Delivery.id,
            Delivery.target,
            Delivery.action,
            Delivery.payload,
            Delivery.identity_id,
            Delivery.attempts,
            Delivery.age_from,
        )
    )


async def claim(engine: AsyncEngine, owner: str, limit: int, lease: timedelta) -> list[Claimed]:
    """Take up to ``limit`` due rows for ``owner`` until ``now + lease``."""
    return await record(engine, owner, (), claim=limit, lease=lease)


async def _claim(
    conn: AsyncConnection, owner: str, limit: int, lease: timedelta, now: datetime
) -> list[Claimed]:
    params = {"b_now": now, "b_limit": limit, "b_owner": owner, "b_until": now + lease}
    statement = _claim_statement(conn.dialect.name == "postgresql")
    claimed = [Claimed(*row) for row in await conn.execute(statement, params)]
    claimed.sort(key=lambda c: c.id)
    return claimed


def _finishing(**values: Any) -> Any:
    """``UPDATE deliveries`` of the row ``:b_id`` if ``:b_owner`` still holds it (one row
    per parameter set: sent by ``executemany``)."""
    return (
        update(Delivery)
        .where(
            Delivery.id == bindparam("b_id"),
            Delivery.lease_owner == bindparam("b_owner"),
            Delivery.status == "sending",
        )
        .values(leased_until=None, lease_owner=None, **values)
        .execution_options(synchronize_session=False)
    )


@cache
def _record_statements(dialect: str) -> dict[str, Any]:
    """The outcome statements, built once per dialect (their construction cost more than
    their execution): ``sent`` for a list of ids bound as one parameter (the same
    statement whatever the count, so PostgreSQL keeps it prepared), the others per row."""
    now = bindparam("b_now", type_=Delivery.finished_at.type)
    sent = (
        update(Delivery)
        .where(
            in_list(dialect, Delivery.id, "b_ids"),
            Delivery.lease_owner == bindparam("b_owner"),
            Delivery.status == "sending",
        )
        .values(
            leased_until=None, lease_owner=None, status="sent", finished_at=now, last_error=None
        )
        .execution_options(synchronize_session=False)
    )
    return {
        "sent": sent,
        "dead": _finishing(status="dead", finished_at=now, last_error=bindparam("b_error")),
        "retry": _finishing(
            status="pending",
            next_attempt_at=bindparam("b_next", type_=Delivery.next_attempt_at.type),
            last_error=bindparam("b_error"),
        ),
        "released": _finishing(status="pending", attempts=Delivery.attempts - 1),
        "confirmed": update(Identity)
        .where(Identity.id == bindparam("b_id"))
        .values(gc_telegram_id=bindparam("b_tg"), gc_client_id=bindparam("b_client"))
        .execution_options(synchronize_session=False),
    }


async def record(
    engine: AsyncEngine,
    owner: str,
    outcomes: Sequence[Outcome],
    *,
    claim: int = 0,
    lease: timedelta = timedelta(seconds=60),
) -> list[Claimed]:
    """Write outcomes of rows ``owner`` still holds and, with ``claim``, take up to that
    many due rows for ``owner`` until ``now + lease`` — all in one transaction.

    ``sent`` rows by one statement for all of them; ``dead``, ``retry`` and ``released``
    (each with its own error or time) by one ``executemany`` per status; then the
    claim. The dispatcher sends its claims with the outcomes waiting at that moment:
    one commit (one fsync on SQLite) for both. Returns the rows claimed.
    """
    now = utcnow()
    sent: list[int] = []  # one statement, whatever the order
    others: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        if o.status == "sent":
            sent.append(o.id)
        else:
            others.setdefault(o.status, []).append(
                {
                    "b_id": o.id,
                    "b_owner": owner,
                    "b_now": now,
                    "b_error": o.error,
                    "b_next": o.next_attempt_at,
                }
            )
    claimed: list[Claimed] = []
    async with translated(), writing(engine), engine.connect() as conn:
        conn = await conn.execution_options(write_lock=True)
        dialect = conn.dialect.name
        statements = _record_statements(dialect)
        async with conn.begin():
            # nothing in this block reads a result: with BEGIN, one round trip (PostgreSQL)
            async with pipelined(conn):
                if sent:
                    await conn.execute(
                        statements["sent"],
                        {"b_ids": list_param(dialect, sent), "b_owner": owner, "b_now": now},
                    )
                for status, params in others.items():
                    await conn.execute(statements[status], params)
                # in id order: concurrent batches (PostgreSQL) lock identities in one order
                confirmed = sorted(
                    (o.confirmed for o in outcomes if o.status == "sent" and o.confirmed),
                    key=lambda c: c.identity_id,
                )
                if confirmed:
                    await conn.execute(
                        statements["confirmed"],
                        [
                            {"b_id": c.identity_id, "b_tg": c.telegram_id, "b_client": c.client_id}
                            for c in confirmed
                        ],
                    )
            await enqueue(
                conn, [d for o in outcomes if o.status == "sent" for d in o.follow_ups], now
            )
            if claim > 0:
                claimed = await _claim(conn, owner, claim, lease, now)
    return claimed


async def release_waiting(conn: AsyncConnection, identity_id: int, waiting_for: str) -> int:
    """Make an identity's deliveries that waited for ``waiting_for`` due now."""
    result = await conn.execute(
        update(Delivery)
        .where(
            Delivery.identity_id == identity_id,
            Delivery.status == "waiting",
            Delivery.waiting_for == waiting_for,
        )
        .values(status="pending", waiting_for=None, next_attempt_at=utcnow())
    )
    return int(result.rowcount or 0)


def as_json(row: Any) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": row.id,
        "status": row.status,
        "target": row.target,
        "action": row.action,
        "identity_id": row.identity_id,
        "attempts": row.attempts,
        "waiting_for": row.waiting_for,
        "created_at": iso(row.created_at),
        "next_attempt_at": iso(row.next_attempt_at),
        "finished_at": iso(row.finished_at),
        "last_error": row.last_error,
    }


async def listing(engine: AsyncEngine, status: str | None, limit: int) -> list[dict[str, Any]]:
    query = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Delivery.status == status)
    async with translated(), engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [as_json(row) for row in reversed(rows)]


async def stats(engine: AsyncEngine) -> dict[str, Any]:
    """Counts by status, and the age in seconds of the oldest row due now."""
    now = utcnow()
    async with translated(), engine.connect() as conn:
        grouped = select(Delivery.status, func.count()).group_by(Delivery.status)
        counts: dict[str, int] = {row[0]: row[1] for row in await conn.execute(grouped)}
        oldest = await conn.scalar(select(func.min(Delivery.next_attempt_at)).where(_due(now)))
    result: dict[str, Any] = {status: counts.get(status, 0) for status in STATUSES}
    age = (now - oldest).total_seconds() if isinstance(oldest, datetime) else 0.0
    result["oldest_due_age_seconds"] = round(max(age, 0.0), 3)
    return result


async def due_count(engine: AsyncEngine) -> int:
    async with translated(), engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(Delivery).where(_due(utcnow())))
    return int(count or 0)


async def retry(engine: AsyncEngine, ids: Sequence[int] | None) -> tuple[list[int], dict[int, str]]:
    """Replay dead rows (all of them when ``ids`` is None): due now, attempts from zero.

    Returns the ids requeued and, for asked ids that were not dead, their status.
    """
    now = utcnow()
    async with translated(), engine.begin() as conn:
        query = select(Delivery.id, Delivery.status)
        if ids is not None:
            query = query.where(Delivery.id.in_(ids))
        else:
            query = query.where(Delivery.status == "dead")
        found: dict[int, str] = {row[0]: row[1] for row in await conn.execute(query)}
        dead = sorted(i for i, status in found.items() if status == "dead")
        if dead:
            await conn.execute(
                update(Delivery)
                .where(Delivery.id.in_(dead), Delivery.status == "dead")
                .values(
                    status="pending",
                    attempts=0,
                    age_from=now,
                    next_attempt_at=now,
                    finished_at=None,
                )
            )
    refused = {i: found.get(i, "unknown") for i in (ids or []) if found.get(i) != "dead"}
    return dead, refused
