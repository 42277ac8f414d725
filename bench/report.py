"""Funnel report benchmark: ``syncd report funnel`` over 1,000,000 events of 200,000 people.

For each database (SQLite in a temporary file, PostgreSQL in a throwaway database):
``syncd migrate``; write a generated history straight into the tables (``executemany`` in
one transaction on SQLite, ``COPY`` on PostgreSQL — the load is not what is measured);
``ANALYZE``; then time ``syncd report funnel`` as a user runs it (a fresh process each
time, ``--format csv`` to a file) for each ``--by``, best and worst of ``--repeat`` runs.
The report's totals are checked against what the generator made.

The history (deterministic, ``--seed``): people ``0 … N-1``, first contact spread over
2025; 85 % talk to the bot (a ``bot.started`` with a ``start`` source and UTM tags, then
``bot.step`` events), half of them give an email (an identity holding their Telegram id
and Salebot client, linked 0–10 days after the first contact); 15 % are GetCourse-only
people (a ``user.created``). 40 % of linked people and 60 % of GetCourse-only people
order (``deal.created``, via the poller or a webhook), half of the orders are paid
(``deal.paid`` and ``deal.status_changed``, cost "12 000,00"-style for webhook deals);
``bot.step`` events fill the log up to ``--events``.

    .venv/bin/python bench/report.py [--people 200000] [--events 1000000] [--db all]

Target (issue 10): under 5 s on SQLite. A missed target is reported, not an exit code;
exits 1 if a report fails or its totals are wrong.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import (
    PG_ADMIN,
    SYNCD,
    BenchError,
    Database,
    machine,
    migrate,
    postgres_database,
    sqlite_database,
    syncd_env,
)

TARGET_SECONDS = 5.0
START = datetime(2025, 1, 1, tzinfo=UTC)
SOURCES = ["ads_vk", "ads_yandex", "blog", "youtube", "partner", "telegram_channel"]
CAMPAIGNS = ["spring", "summer", "autumn", "winter", "black_friday"]
PROJECT_ID = 294495


# --------------------------------------------------------------------------- the history


@dataclass
class History:
    identities: list[tuple[object, ...]] = field(default_factory=list)
    clients: list[tuple[object, ...]] = field(default_factory=list)
    changes: list[tuple[object, ...]] = field(default_factory=list)
    events: list[tuple[object, ...]] = field(default_factory=list)
    #: what a correct report must total
    subscribers: int = 0
    linked: int = 0
    ordered: int = 0
    paid: int = 0
    revenue: int = 0


EVENT_COLUMNS = (
    "id", "kind", "external_id", "occurred_at", "received_at", "email", "identity_id", "data",
    "source", "status", "notes", "telegram_id", "client_id", "project_id",
)  # fmt: skip


def generate(people: int, total_events: int, seed: int) -> History:
    """Rows for identities, salebot_clients, identity_changes and events (ids from 1)."""
    rnd = random.Random(seed)
    h = History()
    pending_steps: list[tuple[int, int | None, int, int, datetime]] = []

    def event(
        kind: str, external_id: str, at: datetime, data: dict[str, object], *,
        identity_id: int | None = None, email: str | None = None, source: str = "salebot",
        telegram_id: int | None = None, client_id: int | None = None,
    ) -> None:  # fmt: skip
        h.events.append(
            (
                len(h.events) + 1, kind, external_id, at, at + timedelta(seconds=2), email,
                identity_id, json.dumps(data, separators=(",", ":")), source, "done", "",
                telegram_id, client_id if client_id is not None else None,
                PROJECT_ID if client_id is not None else None,
            )
        )  # fmt: skip

    def identity(email: str, telegram_id: int | None, created: datetime) -> int:
        identity_id = len(h.identities) + 1
        h.identities.append((identity_id, email, telegram_id, None, created, created))
        clients = []
        if telegram_id is not None:
            h.clients.append((PROJECT_ID, telegram_id + 1, identity_id, created))
            clients = [{"project_id": PROJECT_ID, "client_id": telegram_id + 1}]
        after = {
            "email": email, "telegram_id": telegram_id, "gc_user_id": None,
            "salebot_clients": clients,
        }  # fmt: skip
        h.changes.append(
            (len(h.changes) + 1, identity_id, "salebot" if clients else "getcourse", None,
             json.dumps(after), "", created)
        )  # fmt: skip
        return identity_id

    deal_no = 0

    def order(identity_id: int, email: str, at: datetime, utm: dict[str, str]) -> None:
        nonlocal deal_no
        deal_no += 1
        deal_id = str(10_000_000 + deal_no)
        cost = rnd.choice([4900, 12000, 29900])
        webhook = rnd.random() < 0.3
        data: dict[str, object] = {
            "deal_id": deal_id, "number": str(deal_no), "status": "new",
            "cost": f"{cost // 1000} {cost % 1000:03d},00" if webhook else str(cost),
            "currency": "RUB", "title": "Курс", **utm,
        }  # fmt: skip
        src = "webhook" if webhook else "poller"
        event("deal.created", deal_id, at, data, identity_id=identity_id, email=email, source=src)
        h.ordered += 1
        if rnd.random() < 0.5:
            paid_at = at + timedelta(hours=rnd.randint(1, 72))
            paid = {**data, "status": "payed", "paid_amount": str(cost)}
            event("deal.paid", deal_id, paid_at, paid, identity_id=identity_id, email=email,
                  source="techapi")  # fmt: skip
            event("deal.status_changed", f"{deal_id}:payed", paid_at, paid,
                  identity_id=identity_id, email=email, source="poller")  # fmt: skip
            h.paid += 1
            h.revenue += cost

    for person in range(people):
        first = START + timedelta(seconds=rnd.randrange(365 * 86400))
        email = f"p{person}@school.example"
        utm = {"utm_source": rnd.choice(SOURCES), "utm_campaign": rnd.choice(CAMPAIGNS)}
        if rnd.random() < 0.85:  # a bot subscriber
            h.subscribers += 1
            telegram_id = 500_000_000 + person
            client_id = telegram_id + 1
            linked = rnd.random() < 0.5
            link_at = first + timedelta(seconds=rnd.randrange(10 * 86400))
            identity_id = identity(email, telegram_id, link_at) if linked else None
            touch = {"start": utm["utm_source"], **utm}
            event("bot.started", f"{client_id}:0", first, touch, identity_id=identity_id,
                  telegram_id=telegram_id, client_id=client_id)  # fmt: skip
            pending_steps.append((client_id, identity_id, telegram_id, 1, first))
            if linked:
                assert identity_id is not None
                h.linked += 1
                if rnd.random() < 0.4:
                    order(identity_id, email, link_at + timedelta(hours=rnd.randint(1, 240)), {})
        else:  # GetCourse only
            identity_id = identity(email, None, first)
            event("user.created", str(person), first, {"email": email, **utm},
                  identity_id=identity_id, email=email, source="poller")  # fmt: skip
            if rnd.random() < 0.6:
                order(identity_id, email, first + timedelta(hours=rnd.randint(1, 240)), utm)
    # bot.step events, round robin over the subscribers, up to the total
    while len(h.events) < total_events and pending_steps:
        for i, (client_id, identity_id, telegram_id, n, first) in enumerate(pending_steps):
            if len(h.events) >= total_events:
                break
            event("bot.step", f"{client_id}:{n}", first + timedelta(minutes=n),
                  {"step": f"lesson_{n}"}, identity_id=identity_id, telegram_id=telegram_id,
                  client_id=client_id)  # fmt: skip
            pending_steps[i] = (client_id, identity_id, telegram_id, n + 1, first)
    return h


# --------------------------------------------------------------------------- loading


def _sqlite_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def load_sqlite(path: Path, h: History) -> None:
    def rows(table: list[tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
        for row in table:
            yield tuple(_sqlite_time(v) if isinstance(v, datetime) else v for v in row)

    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            conn.executemany(
                "INSERT INTO identities (id, email, telegram_id, gc_user_id, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows(h.identities),
            )
            conn.executemany(
                "INSERT INTO salebot_clients (project_id, client_id, identity_id, created_at)"
                " VALUES (?, ?, ?, ?)",
                rows(h.clients),
            )
            conn.executemany(
                "INSERT INTO identity_changes (id, identity_id, source, before, after, reason,"
                " changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows(h.changes),
            )
            marks = ", ".join("?" * len(EVENT_COLUMNS))
            conn.executemany(
                f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({marks})",
                rows(h.events),
            )


def load_postgres(conninfo: str, h: History) -> None:
    import psycopg

    tables = [
        ("identities", "id, email, telegram_id, gc_user_id, created_at, updated_at", h.identities),
        ("salebot_clients", "project_id, client_id, identity_id, created_at", h.clients),
        (
            "identity_changes",
            "id, identity_id, source, before, after, reason, changed_at",
            h.changes,
        ),
        ("events", ", ".join(EVENT_COLUMNS), h.events),
    ]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table, columns, rows in tables:
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        for table, _, rows in tables:
            if table != "salebot_clients":
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {len(rows) + 1})"
                )


# --------------------------------------------------------------------------- timing


def run_report(db: Database, workdir: Path, by: str) -> tuple[float, list[dict[str, str]]]:
    output = workdir / f"funnel-{db.kind}-{by}.csv"
    command = [str(SYNCD), "report", "funnel", "--by", by, "--format", "csv", "--output",
               str(output)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=workdir, env=syncd_env(db.url), capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    rows = list(csv.DictReader(io.StringIO(output.read_text(encoding="utf-8"))))
    return seconds, rows


def check_totals(rows: list[dict[str, str]], h: History, by: str) -> None:
    groups = [r for r in rows if r[by] != "total"]
    got = {
        name: sum(int(r[name]) for r in groups)
        for name in ("subscribers", "linked", "ordered", "paid")
    }
    revenue = sum(float(r["revenue"]) for r in groups)
    # GetCourse-only buyers are people, not bot subscribers: the funnel leaves them out
    bot_orders = {k: v for k, v in got.items() if k in ("subscribers", "linked")}
    want = {"subscribers": h.subscribers, "linked": h.linked}
    if bot_orders != want:
        raise BenchError(f"--by {by}: totals {got}, expected {want}")
    if got["ordered"] > h.ordered or got["paid"] > h.paid or revenue > h.revenue:
        raise BenchError(f"--by {by}: more orders or revenue than generated: {got} {revenue}")


def analyze(db: Database) -> None:
    """Fresh planner statistics, as a database in service has (autovacuum is off here)."""
    if db.sqlite_path is not None:
        with closing(sqlite3.connect(db.sqlite_path)) as conn:
            conn.execute("ANALYZE")
        return
    import psycopg

    assert db.pg_conninfo is not None
    with psycopg.connect(db.pg_conninfo, autocommit=True) as conn:
        conn.execute("ANALYZE")


def migrate_to(db: Database, revision: str) -> None:
    """Alembic to ``revision`` (the load goes in before 0007, as an existing install's)."""
    code = (
        "import asyncio; from syncd.store import migrate; from syncd.store.engine import "
        f"create_engine; e = create_engine({db.url!r}); "
        f"asyncio.run(migrate.upgrade(e, {revision!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def bench_one(db: Database, workdir: Path, h: History, repeat: int) -> dict[str, list[float]]:
    # Loading a million events through the 0007 triggers one INSERT at a time is not what
    # is measured here (docs/performance.md has their cost per event): the history goes in
    # at 0006, and `syncd migrate` then builds the analytics tables from it, as it does on
    # an existing installation.
    migrate_to(db, "0006")
    started = time.perf_counter()
    if db.sqlite_path is not None:
        load_sqlite(db.sqlite_path, h)
    else:
        assert db.pg_conninfo is not None
        load_postgres(db.pg_conninfo, h)
    print(f"  loaded {len(h.events):,} events in {time.perf_counter() - started:.1f}s", flush=True)
    started = time.perf_counter()
    migrate(db, workdir)
    print(f"  migration 0007 (analytics tables from the events): "
          f"{time.perf_counter() - started:.1f}s", flush=True)  # fmt: skip
    analyze(db)
    timings: dict[str, list[float]] = {}
    for by in ("source", "utm_campaign", "month"):
        for _ in range(repeat):
            seconds, rows = run_report(db, workdir, by)
            check_totals(rows, h, by)
            timings.setdefault(by, []).append(seconds)
        best, worst = min(timings[by]), max(timings[by])
        print(f"  {db.kind:<8} --by {by:<12} {best:.2f}s best, {worst:.2f}s worst, "
              f"{len(rows) - 1} groups", flush=True)  # fmt: skip
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["all", "sqlite", "postgres"], default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    started = time.perf_counter()
    h = generate(args.people, args.events, args.seed)
    print(
        f"generated {len(h.events):,} events, {len(h.identities):,} identities, "
        f"{h.subscribers:,} bot subscribers, {h.ordered:,} orders, {h.paid:,} paid "
        f"in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="syncd-report-")))
            if args.db in ("all", "sqlite"):
                db = stack.enter_context(sqlite_database(workdir, "report"))
                results["sqlite"] = bench_one(db, workdir, h, args.repeat)
            if args.db in ("all", "postgres"):
                db = stack.enter_context(postgres_database(PG_ADMIN))
                results["postgres"] = bench_one(db, workdir, h, args.repeat)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\nmachine: {machine()}")
    for kind, timings in results.items():
        worst = max(max(t) for t in timings.values())
        verdict = "" if kind != "sqlite" else (
            "  target < 5 s: met" if worst < TARGET_SECONDS else "  target < 5 s: MISSED"
        )  # fmt: skip
        cells = ", ".join(f"--by {by} {min(t):.2f}–{max(t):.2f}s" for by, t in timings.items())
        print(f"{kind:<8} {cells}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
