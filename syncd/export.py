"""``syncd export identities``: the identity map as CSV or JSON lines, streamed."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.store.queries import IdentityView, stream_identities

CSV_COLUMNS = [
    "id",
    "email",
    "telegram_id",
    "gc_user_id",
    "client_id",
    "salebot_clients",
    "created_at",
    "updated_at",
]


def _csv_row(view: IdentityView, project_id: int) -> list[object]:
    own = next((c["client_id"] for c in view.salebot_clients if c["project_id"] == project_id), "")
    every = ";".join(f"{c['project_id']}:{c['client_id']}" for c in view.salebot_clients)
    return [
        view.id,
        view.email,
        view.telegram_id if view.telegram_id is not None else "",
        view.gc_user_id if view.gc_user_id is not None else "",
        own,
        every,
        view.created_at.isoformat(),
        view.updated_at.isoformat(),
    ]


async def write_identities(
    engine: AsyncEngine,
    out: TextIO,
    fmt: str,
    project_id: int,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write every identity to ``out``; returns how many. ``progress`` gets running counts."""
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    count = 0
    async for view in stream_identities(engine):
        if writer is not None:
            writer.writerow(_csv_row(view, project_id))
        else:
            out.write(json.dumps(view.as_json(), ensure_ascii=False) + "\n")
        count += 1
        if progress is not None and count % 10_000 == 0:
            progress(count)
    return count


def replace_atomically(tmp: Path, final: Path) -> None:
    """A half-written export never sits under the name the analyst asked for."""
    os.replace(tmp, final)
