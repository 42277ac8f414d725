"""The poller's memory: export state per export, and the account's export budget.

GetCourse allows **100 export requests per 2 hours per account**, starts and status
polls alike, and going over breaks every integration of the account. :func:`spend`
checks and records one request in one write-locked transaction, before the request is
sent: a crash can only over-count, never under-count, and two processes sharing the
database cannot overspend together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store.dialect import insert_ignoring
from syncd.store.errors import translated
from syncd.store.models import ExportRequest, ExportState

BUDGET = 100
WINDOW = timedelta(hours=2)
#: PostgreSQL advisory lock held by the one daemon that polls a shared database.
POLLER_LOCK = 0x5C_D0_00_03


@dataclass(frozen=True, slots=True)
class State:
    name: str
    cursor: date | None
    pending_export_id: int | None
    pending_filters: dict[str, Any] | None


async def load(engine: AsyncEngine, name: str) -> State:
    async with translated(), engine.connect() as conn:
        row = (await conn.execute(select(ExportState).where(ExportState.name == name))).first()
    if row is None:
        return State(name, None, None, None)
    return State(name, row.cursor, row.pending_export_id, row.pending_filters)


async def save_pending(
    engine: AsyncEngine, name: str, export_id: int, filters: dict[str, Any], now: datetime
) -> None:
    """Remember a started export before collecting it (committed on return)."""
    async with translated(), engine.begin() as conn:
        await conn.execute(insert_ignoring(conn, ExportState, "name").values(name=name))
        await conn.execute(
            update(ExportState)
            .where(ExportState.name == name)
            .values(pending_export_id=export_id, pending_filters=filters, pending_since=now)
        )


async def finish(
    engine: AsyncEngine,
    name: str,
    now: datetime,
    *,
    cursor: date | None,
    rows: int,
    errors: int,
    last_error: str,
) -> None:
    """The export is collected and its rows committed: forget it, move the cursor."""
    values: dict[str, Any] = {
        "pending_export_id": None,
        "pending_filters": None,
        "pending_since": None,
        "last_run_at": now,
        "last_rows": rows,
        "last_errors": errors,
        "last_error": last_error,
    }
    if cursor is not None:
        values["cursor"] = cursor
    async with translated(), engine.begin() as conn:
        await conn.execute(insert_ignoring(conn, ExportState, "name").values(name=name))
        await conn.execute(update(ExportState).where(ExportState.name == name).values(**values))


async def spend(
    engine: AsyncEngine, export: str, kind: str, now: datetime, budget: int = BUDGET
) -> bool:
    """Record one export request if the budget allows it; False when it is spent."""
    async with translated(), engine.connect() as conn:
        conn = await conn.execution_options(write_lock=True)
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                await conn.execute(text("LOCK TABLE export_requests IN EXCLUSIVE MODE"))
            await conn.execute(delete(ExportRequest).where(ExportRequest.at <= now - WINDOW * 2))
            used = await conn.scalar(
                select(func.count())
                .select_from(ExportRequest)
                .where(ExportRequest.at > now - WINDOW)
            )
            if int(used or 0) >= budget:
                return False
            await conn.execute(insert(ExportRequest).values(at=now, export=export, kind=kind))
            return True


async def budget_left(engine: AsyncEngine, now: datetime, budget: int = BUDGET) -> int:
    async with translated(), engine.connect() as conn:
        used = await conn.scalar(
            select(func.count()).select_from(ExportRequest).where(ExportRequest.at > now - WINDOW)
        )
    return max(0, budget - int(used or 0))


async def budget_frees_at(engine: AsyncEngine, now: datetime) -> datetime:
    """When the oldest counted request leaves the window (``now`` if none is counted)."""
    async with translated(), engine.connect() as conn:
        oldest = await conn.scalar(
            select(func.min(ExportRequest.at)).where(ExportRequest.at > now - WINDOW)
        )
    return oldest + WINDOW if isinstance(oldest, datetime) else now
