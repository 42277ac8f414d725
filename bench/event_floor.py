"""The floor of the event log's writes on SQLite: plain ``sqlite3``, no syncd code on the path.

It migrates a fresh database with ``syncd migrate`` (so the schema is syncd's own), then
stores ``--rows`` generated deal rows as events — ``deal.created`` for each, and
``deal.paid`` plus ``deal.status_changed`` for every 3rd — the way syncd does: 2,000 rows
per transaction, up to 1,000 rows per ``INSERT … ON CONFLICT DO NOTHING RETURNING``, WAL
and ``synchronous=NORMAL``. With ``--indexes former`` it first puts back the three
indexes migration 0005 dropped, to show what they cost::

    .venv/bin/python bench/event_floor.py --indexes current,former

Prints rows/s over the whole run and over the database calls alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMER = (
    "CREATE INDEX ix_events_status_identity_id ON events (status, identity_id)",
    "CREATE INDEX ix_events_gc_user_id ON events (gc_user_id)",
    "CREATE INDEX ix_events_received_at ON events (received_at)",
)
COLUMNS = (
    "kind, external_id, occurred_at, received_at, email, gc_user_id, identity_id, data, "
    "source, status, wait_until, notes"
)
BUYERS = 1000
CHUNK = 2000
PER_STATEMENT = 1000


def migrated(path: Path) -> None:
    syncd = Path(sys.executable).with_name("syncd")
    env = {**os.environ, "SYNCD_DATABASE__URL": f"sqlite:///{path}"}
    subprocess.run([str(syncd), "migrate"], env=env, check=True, capture_output=True)


def rows_of(first: int, last: int, now: str) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for i in range(first, last):
        buyer = i % BUYERS
        deal = str(50_000_000 + i)
        paid = i % 3 == 0
        data = {
            "deal_id": deal, "number": str(1_000_000 + i), "user_id": 2_000_000 + buyer,
            "user_name": f"Покупатель {buyer}", "email": f"buyer{buyer}@example.ru",
            "created_at": "2024-01-01 00:00:00", "title": "Курс", "cost": "12000",
            "currency": "RUB", "status": "payed" if paid else "new",
        }  # fmt: skip
        text = json.dumps(data)
        common = ("2024-01-01 00:00:00.000000", now, data["email"], 2_000_000 + buyer, buyer + 1)
        tail = (text, "backfill", "done", None, "")
        rows.append(("deal.created", deal, *common, *tail))
        if paid:
            rows.append(("deal.paid", deal, *common, *tail))
            rows.append(("deal.status_changed", f"{deal}:payed", *common, *tail))
    return rows


def run(indexes: str, total: int, directory: Path) -> None:
    path = directory / f"floor-{indexes}.db"
    migrated(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    if indexes == "former":
        for statement in FORMER:
            db.execute(statement)
    now = "2026-11-25 10:00:00.000000"
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO identities (id, email, gc_user_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(b + 1, f"buyer{b}@example.ru", 2_000_000 + b, now, now) for b in range(BUYERS)],
    )
    db.execute("COMMIT")
    one = "(" + ", ".join("?" * 12) + ")"
    started = time.perf_counter()
    in_db = 0.0
    events = 0
    for first in range(0, total, CHUNK):
        rows = rows_of(first, min(total, first + CHUNK), now)
        events += len(rows)
        began = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for at in range(0, len(rows), PER_STATEMENT):
            part = rows[at : at + PER_STATEMENT]
            sql = (
                f"INSERT INTO events ({COLUMNS}) VALUES {', '.join([one] * len(part))} "
                "ON CONFLICT (kind, external_id) DO NOTHING RETURNING id, kind, external_id"
            )
            db.execute(sql, [value for row in part for value in row]).fetchall()
        db.execute("COMMIT")
        in_db += time.perf_counter() - began
    elapsed = time.perf_counter() - started
    db.close()
    print(
        f"{indexes:8} {total:>10,} rows {events:>10,} events  "
        f"{total / elapsed:>9,.0f} rows/s overall  {total / in_db:>9,.0f} rows/s in the database"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="deal rows (default 1,000,000)")
    parser.add_argument(
        "--indexes", default="current,former",
        help="comma-separated: current (syncd's schema), former (the indexes before 0005)",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncd-floor-") as directory:
        for indexes in args.indexes.split(","):
            if indexes not in ("current", "former"):
                parser.error(f"--indexes: unknown set {indexes!r}")
            run(indexes, args.rows, Path(directory))


if __name__ == "__main__":
    main()
