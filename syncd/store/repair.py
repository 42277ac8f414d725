"""What an operator reads and closes: one conflict, one outgoing call and its cause,
the events waiting for a link, and dead calls by reason (``syncd conflicts``,
``syncd outbox show|list|stats``)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.identity import LinkClaim
from syncd.store.errors import translated
from syncd.store.models import Delivery, Event, IdentityChange, LinkConflict, utcnow

#: Keys whose values are secrets wherever they appear in a payload.
SECRET_KEYS = re.compile(r"(^|_)(api_?key|key|token|secret|password)$", re.IGNORECASE)
_EVENT_RULE = re.compile(r"^event:(\d+):rule:(\d+)$")
_REPLY = re.compile(r"^reply:(\d+)$")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# conflicts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conflict:
    id: int
    status: str
    source: str
    claim: LinkClaim
    identity_ids: list[int]
    reason: str


async def conflict(engine: AsyncEngine, conflict_id: int) -> Conflict | None:
    async with translated(), engine.connect() as conn:
        row = (
            await conn.execute(select(LinkConflict).where(LinkConflict.id == conflict_id))
        ).first()
    if row is None:
        return None
    claim = LinkClaim(row.email, row.telegram_id, row.project_id, row.client_id)
    holders = row.holders.get("identity_ids", []) if isinstance(row.holders, dict) else []
    return Conflict(row.id, row.status, row.source, claim, list(holders), row.reason)


async def close_conflict(
    engine: AsyncEngine, conflict_id: int, status: Literal["kept", "replaced"]
) -> bool:
    """Close an open conflict; False when it was no longer open (someone else closed it)."""
    async with translated(), engine.begin() as conn:
        result = await conn.execute(
            update(LinkConflict)
            .where(LinkConflict.id == conflict_id, LinkConflict.status == "open")
            .values(status=status, last_seen_at=utcnow())
        )
    return bool(result.rowcount)


# one outgoing call -------------------------------------------------------------------


def masked(value: Any) -> Any:
    """``value`` with every secret-looking key's value replaced by ``***``."""
    if isinstance(value, dict):
        return {
            k: "***" if isinstance(k, str) and SECRET_KEYS.search(k) else masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


async def delivery(engine: AsyncEngine, delivery_id: int) -> dict[str, Any] | None:
    """One delivery as ``syncd outbox show`` prints it, with what caused it."""
    async with translated(), engine.connect() as conn:
        row = (await conn.execute(select(Delivery).where(Delivery.id == delivery_id))).first()
        if row is None:
            return None
        cause = await _cause(conn, row)
    return {
        "id": row.id,
        "status": row.status,
        "target": row.target,
        "action": row.action,
        "payload": masked(row.payload),
        "identity_id": row.identity_id,
        "cause": cause,
        "attempts": row.attempts,
        "waiting_for": row.waiting_for,
        "created_at": _iso(row.created_at),
        "next_attempt_at": _iso(row.next_attempt_at)
        if row.status in ("pending", "sending")
        else None,
        "leased_until": _iso(row.leased_until),
        "finished_at": _iso(row.finished_at),
        "last_error": row.last_error,
        "dedupe_key": row.dedupe_key,
    }


async def _cause(conn: Any, row: Any) -> dict[str, Any]:
    key = row.dedupe_key or ""
    found = _EVENT_RULE.match(key)
    if found:
        event_id, rule = int(found.group(1)), int(found.group(2))
        event = (
            await conn.execute(
                select(Event.kind, Event.external_id, Event.occurred_at, Event.source).where(
                    Event.id == event_id
                )
            )
        ).first()
        cause: dict[str, Any] = {"type": "event", "event_id": event_id, "rule": rule}
        if event is None:
            return {**cause, "missing": True}
        return {
            **cause,
            "kind": event.kind,
            "external_id": event.external_id,
            "occurred_at": _iso(event.occurred_at),
            "source": event.source,
        }
    found = _REPLY.match(key)
    if found:
        first = int(found.group(1))
        parent = (
            await conn.execute(select(Delivery.target, Delivery.action).where(Delivery.id == first))
        ).first()
        cause = {"type": "reply", "delivery_id": first}
        return {**cause, "target": parent.target, "action": parent.action} if parent else cause
    if row.target == "getcourse" and row.action == "import_user" and row.identity_id is not None:
        change = (
            await conn.execute(
                select(IdentityChange.id, IdentityChange.source, IdentityChange.changed_at)
                .where(
                    IdentityChange.identity_id == row.identity_id,
                    IdentityChange.changed_at <= row.created_at,
                )
                .order_by(IdentityChange.changed_at.desc(), IdentityChange.id.desc())
                .limit(1)
            )
        ).first()
        cause = {"type": "link", "identity_id": row.identity_id}
        if change is not None:
            cause |= {
                "change_id": change.id,
                "source": change.source,
                "changed_at": _iso(change.changed_at),
            }
        return cause
    return {"type": "unknown", "dedupe_key": row.dedupe_key}


# the queue's other side: waiting events, dead calls by reason ---------------------------


def reason_of(error: str | None) -> str:
    """A dead call's reason: the first line of its last error."""
    if not error:
        return "(no error recorded)"
    return error.strip().splitlines()[0][:200] if error.strip() else "(no error recorded)"


async def dead_by_reason(engine: AsyncEngine) -> dict[str, int]:
    """How many dead calls per reason, most first."""
    query = (
        select(Delivery.last_error, func.count())
        .where(Delivery.status == "dead")
        .group_by(Delivery.last_error)
    )
    counts: Counter[str] = Counter()
    async with translated(), engine.connect() as conn:
        for error, n in await conn.execute(query):
            counts[reason_of(error)] += n
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


async def waiting_events_summary(engine: AsyncEngine) -> dict[str, Any]:
    """How many events wait for a link, and since when the oldest waits."""
    query = select(func.count(), func.min(Event.received_at)).where(Event.status == "waiting_link")
    async with translated(), engine.connect() as conn:
        count, oldest = (await conn.execute(query)).one()
    return {"count": int(count or 0), "oldest_received_at": _iso(oldest)}


async def waiting_events(engine: AsyncEngine, limit: int) -> list[dict[str, Any]]:
    """The events waiting for a link, oldest first."""
    query = (
        select(Event.id, Event.kind, Event.external_id, Event.identity_id, Event.received_at,
               Event.wait_until, Event.notes)
        .where(Event.status == "waiting_link")
        .order_by(Event.id)
        .limit(limit)
    )  # fmt: skip
    async with translated(), engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        {
            "event_id": r.id,
            "status": "waiting_link",
            "kind": r.kind,
            "external_id": r.external_id,
            "identity_id": r.identity_id,
            "received_at": _iso(r.received_at),
            "wait_until": _iso(r.wait_until),
            "notes": r.notes,
        }
        for r in rows
    ]
