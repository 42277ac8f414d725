"""The ``syncd`` command line (SPEC §7).

Exit status: 0 success, 1 a handled failure (one clear line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from syncd import __version__, config, logs
from syncd.errors import ConfigError, InvalidInput, StoreError, SyncdError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from syncd.poller import Job

Command = Callable[[argparse.Namespace, config.Settings], Coroutine[Any, Any, int]]


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(f"syncd: {text}\n")


def dump(data: Any) -> None:
    out(json.dumps(data, ensure_ascii=False))


@asynccontextmanager
async def open_store(settings: config.Settings) -> AsyncIterator[AsyncEngine]:
    """The database, checked to be at the migration head.

    Never creates one: a missing SQLite file is one clear line (only ``migrate`` and
    ``run`` create the database).
    """
    from syncd.store import diagnose, schema
    from syncd.store.engine import create_engine
    from syncd.store.errors import translated

    diagnose.require_usable(settings.database.url, must_exist=True)
    engine = create_engine(settings.database.url, durability=settings.database.durability)
    try:
        async with translated():
            await diagnose.require_known_schema(engine)
            await schema.require_head(engine)
        yield engine
    finally:
        await engine.dispose()


async def cmd_run(_: argparse.Namespace, settings: config.Settings) -> int:
    from syncd import memory

    memory.lean_imports()  # before anything imports them: no ORM, no uvicorn CLI
    from syncd import daemon

    await _refuse_unusable_database(settings)
    await daemon.run(settings)
    return 0


async def _refuse_unusable_database(settings: config.Settings) -> None:
    """What ``run`` and ``migrate`` refuse, found before they start (and by ``check``):
    an SQLite directory that is missing, a schema a newer syncd migrated."""
    from syncd.store import diagnose
    from syncd.store.engine import create_engine
    from syncd.store.errors import translated

    diagnose.require_usable(settings.database.url, must_exist=False)
    if diagnose.sqlite_path(settings.database.url) is not None and not _exists(settings):
        return  # a new SQLite file: nothing in it to check, and no empty file made here
    engine = create_engine(settings.database.url, durability=settings.database.durability)
    try:
        async with translated():
            await diagnose.require_known_schema(engine)
    finally:
        await engine.dispose()


def _exists(settings: config.Settings) -> bool:
    from syncd.store import diagnose

    path = diagnose.sqlite_path(settings.database.url)
    return path is None or path.exists()


async def cmd_demo(args: argparse.Namespace, settings: config.Settings) -> int:
    import signal

    from syncd import demo

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def until_stopped() -> None:
        await stop.wait()

    return await demo.run(out, keep=args.keep, wait_forever=until_stopped)


async def cmd_migrate(_: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store import migrate
    from syncd.store.engine import create_engine, safe_url
    from syncd.store.errors import translated

    await _refuse_unusable_database(settings)
    engine = create_engine(settings.database.url, durability=settings.database.durability)
    try:
        async with translated():
            before = await migrate.current(engine)
            await migrate.upgrade(engine)
            after = await migrate.current(engine)
    finally:
        await engine.dispose()
    url = safe_url(settings.database.url)
    if before == after:
        out(f"{url}: already at head ({', '.join(sorted(after))})")
    else:
        out(f"{url}: migrated {', '.join(sorted(before)) or 'empty'} -> {', '.join(sorted(after))}")
    return 0


def _missing_sqlite_file(database_url: str) -> str | None:
    """The path of an SQLite database that does not exist yet (check must not create it)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return url.database
    return None


async def _check_database(
    settings: config.Settings, line: Callable[[bool, str, str], None]
) -> None:
    from syncd.errors import SchemaNotReady, StoreError
    from syncd.store import diagnose, migrate
    from syncd.store.engine import create_engine, safe_url
    from syncd.store.errors import translated

    head = ", ".join(sorted(migrate.heads()))
    problem = diagnose.sqlite_problem(settings.database.url, must_exist=False)
    if problem is not None:  # syncd run would refuse it: so does check
        line(False, "database", problem)
        return
    missing = _missing_sqlite_file(settings.database.url)
    if missing is not None:
        line(True, "database", f"{missing} does not exist yet: syncd run or migrate creates it")
        auto = settings.database.auto_migrate
        line(auto, "migrations", "syncd run will apply them" if auto else "run `syncd migrate`")
        return
    engine = create_engine(settings.database.url, durability=settings.database.durability)
    try:
        async with translated():
            current = await migrate.current(engine)
            line(True, "database", safe_url(settings.database.url))
            try:
                await diagnose.require_known_schema(engine)
            except SchemaNotReady as exc:
                line(False, "migrations", str(exc))
                return
        have = ", ".join(sorted(current)) or "empty"
        if current == migrate.heads():
            line(True, "migrations", f"at head {head}")
        elif settings.database.auto_migrate:
            line(True, "migrations", f"database at {have}, head is {head}: syncd run will migrate")
        else:
            line(False, "migrations", f"database at {have}, head is {head}: run `syncd migrate`")
    except StoreError as exc:
        explained = diagnose.explain(exc, settings.database.url)
        line(False, "database", explained or f"{safe_url(settings.database.url)}: {exc}")
    finally:
        await engine.dispose()


async def cmd_check(args: argparse.Namespace, settings: config.Settings) -> int:
    failed = 0

    def line(ok: bool | None, what: str, text: str) -> None:  # None: a warning
        nonlocal failed
        failed += ok is False
        out(f"{'ok  ' if ok else 'warn' if ok is None else 'FAIL'} {what}: {text}")

    from syncd.rules import compile_rules, unproduced_kinds

    line(True, "config", str(args.config_path or no_config_note(settings)))
    try:
        line(True, "rules", f"{len(compile_rules(settings.rules))} rules")
    except ConfigError as exc:
        line(False, "rules", str(exc))
    for warning in unproduced_kinds(settings.rules):
        out(f"warn rules: {warning}")
    line(
        bool(settings.http.token),
        "http.token",
        "set" if settings.http.token else "empty: set it (syncd run refuses to start without it)",
    )
    _check_ops(settings, line)
    await _check_database(settings, line)
    if args.remote:
        from syncd import remote
        from syncd.clients.http import new_http_client

        async with new_http_client() as http:
            await remote.check(settings, http, line)
    return 1 if failed else 0


def _check_ops(settings: config.Settings, line: Callable[[bool, str, str], None]) -> None:
    """Token rotation and the metrics token (issue 12)."""
    previous = len(settings.http.previous_tokens)
    line(
        True,
        "http.previous_tokens",
        f"{previous} previous token{'s' if previous != 1 else ''} still accepted: remove them "
        "once syncd_auth_previous_token_total stops growing"
        if previous
        else "none (no rotation in progress)",
    )
    line(
        True,
        "http.metrics_token",
        "set: GET /metrics needs it"
        if settings.http.metrics_token
        else "empty: GET /metrics is open to whoever reaches the port",
    )


def parse_key(key: str, project_id: int) -> dict[str, Any]:
    """``email``, ``tg:<telegram_id>`` or ``sb:<client_id>`` (in ``salebot.project_id``)."""
    from syncd.identity import normalise_email, normalise_id

    if key.startswith("tg:"):
        return {"telegram_id": normalise_id(key[3:], "telegram_id")}
    if key.startswith("sb:"):
        return {"client": (project_id, normalise_id(key[3:], "client_id"))}
    return {"email": normalise_email(key)}


async def cmd_identity_show(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store.queries import find_identity

    lookup = parse_key(args.key, settings.salebot.project_id)
    async with open_store(settings) as engine:
        found = await find_identity(engine, **lookup)
    if found is None:
        err(f"no identity for {args.key}")
        return 1
    data = found.as_json()
    if args.json:
        dump(data)
        return 0
    for name, value in data.items():
        if name == "salebot_clients":
            value = ", ".join(f"{c['client_id']} (project {c['project_id']})" for c in value)
        out(f"{name:<16}{'' if value is None else value}")
    return 0


async def cmd_identity_link(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.identity import normalise_link
    from syncd.store.links import LinkRequest

    claim = normalise_link(
        {
            "email": args.email,
            "telegram_id": args.telegram_id,
            "client_id": args.client_id,
            "project_id": args.project_id,
        },
        settings.salebot.project_id,
    )
    from syncd.daemon import event_store, link_store

    async with open_store(settings) as engine:
        # exactly what POST /v1/links applies: conflicts, write-back, waiting events (§11)
        store = link_store(engine, settings, event_store(engine, settings, None))
        (result,) = await store.apply([LinkRequest(claim, "cli")])
    if result.status == "conflict":
        err(f"conflict {result.conflict_id}: {result.detail} (nothing changed)")
        return 1
    out(f"{result.status}: identity {result.identity_id}")
    return 0


async def cmd_conflicts_list(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store.queries import open_conflicts

    async with open_store(settings) as engine:
        conflicts = await open_conflicts(engine)
    if args.json:
        dump(conflicts)
        return 0
    if not conflicts:
        out("no open conflicts")
    for c in conflicts:
        out(
            f"#{c['id']} {c['last_seen_at']} x{c['seen_count']} email={c['email']} "
            f"telegram_id={c['telegram_id']} client_id={c['client_id']} "
            f"project={c['project_id']} holders={c['identity_ids']}: {c['reason']}"
        )
    return 0


# repair and forgetting (SPEC §11): conflicts resolve, identity forget, outbox show ---


async def cmd_conflicts_resolve(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.daemon import event_store, link_store
    from syncd.repair import resolve_conflict

    action: Literal["keep", "replace"] = "keep" if args.keep else "replace"
    # the webhook's own link store, in replace mode: keys move, both sides are traced,
    # the GetCourse write-back is queued and waiting events are released
    replacing = settings.model_copy(
        update={"identity": settings.identity.model_copy(update={"on_conflict": "replace"})}
    )
    async with open_store(settings) as engine:
        store = link_store(engine, replacing, event_store(engine, replacing, None))
        done = await resolve_conflict(engine, args.id, action, store.apply)
    if args.json:
        dump(done.as_json())
    elif done.link is None:
        out(f"conflict {done.conflict_id} kept: the identity map is unchanged")
    else:
        out(
            f"conflict {done.conflict_id} replaced: {done.link.status} identity "
            f"{done.link.identity_id}" + (f" ({done.link.detail})" if done.link.detail else "")
        )
    return 0


async def cmd_identity_forget(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store.forget import forget
    from syncd.store.queries import find_identity

    lookup = parse_key(args.key, settings.salebot.project_id)
    async with open_store(settings) as engine:
        found = await find_identity(engine, **lookup)
        if found is None:
            err(f"no identity for {args.key}")
            return 1
        if not args.yes:
            if not sys.stdin.isatty():
                err("forgetting cannot be undone: add --yes to confirm (not on a terminal)")
                return 2
            sys.stderr.write(
                f"Erase identity {found.id} ({found.email}, telegram_id={found.telegram_id}) "
                "and every personal value of it for good? Type yes: "
            )
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                err("nothing erased")
                return 1
        done = await forget(engine, found.id)
    if done is None:
        err(f"no identity for {args.key} (it went meanwhile)")
        return 1
    if args.json:
        dump(done.as_json())
        return 0
    out(
        f"identity {done.identity_id} forgotten: {done.events} events and {done.deliveries} "
        f"deliveries scrubbed ({done.deliveries_ended} unsent ended dead: forgotten), "
        f"{done.conflicts_deleted + done.conflicts_closed} conflicts cleared; "
        f"trace: identity_changes #{done.trace_id}"
    )
    return 0


async def cmd_outbox_show(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store import repair

    async with open_store(settings) as engine:
        found = await repair.delivery(engine, args.id)
    if found is None:
        err(f"there is no delivery {args.id}")
        return 1
    found["endpoint"] = _endpoint(settings, found["target"], found["action"])
    if args.json:
        dump(found)
        return 0
    cause = found["cause"]
    for name, value in (
        ("delivery", f"#{found['id']} {found['status']}"),
        ("call", f"{found['target']}.{found['action']} {found['endpoint']}"),
        ("caused by", _describe_cause(cause, settings)),
        ("identity", found["identity_id"]),
        ("attempts", found["attempts"]),
        ("created", found["created_at"]),
        ("next attempt", found["next_attempt_at"]),
        ("waiting for", found["waiting_for"]),
        ("finished", found["finished_at"]),
        ("last error", found["last_error"]),
        ("payload", json.dumps(found["payload"], ensure_ascii=False)),
    ):
        if value is not None:
            out(f"{name:<14}{value}")
    return 0


def _endpoint(settings: config.Settings, target: str, action: str) -> str:
    """Where the call goes; the Salebot URL with its key masked, never as is."""
    if target == "salebot":
        return f"{settings.salebot.base_url.rstrip('/')}/api/***/{action}"
    if target == "getcourse":
        path = {"import_user": "users", "import_deal": "deals"}.get(action, action)
        return f"{settings.getcourse.url}/pl/api/{path}"
    return target


def _describe_cause(cause: dict[str, Any], settings: config.Settings) -> str:
    kind = cause.get("type")
    if kind == "event":
        rule = cause["rule"]
        name = f"rules[{rule}]"
        if 0 <= rule < len(settings.rules):
            name += f" ({settings.rules[rule].event} → {settings.rules[rule].action})"
        if cause.get("missing"):
            return f"event {cause['event_id']} (no longer stored), {name}"
        return (
            f"event {cause['event_id']} {cause['kind']} {cause['external_id']} "
            f"(occurred {cause['occurred_at']}, via {cause['source']}), {name}"
        )
    if kind == "reply":
        parent = f" ({cause['target']}.{cause['action']})" if "target" in cause else ""
        return f"the reply to delivery {cause['delivery_id']}{parent}"
    if kind == "link":
        if "change_id" in cause:
            return (
                f"a link of identity {cause['identity_id']} (identity_changes "
                f"#{cause['change_id']}, via {cause['source']} at {cause['changed_at']})"
            )
        return f"a link of identity {cause['identity_id']}"
    return f"unknown (dedupe key {cause.get('dedupe_key')})"


async def cmd_export_identities(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.export import replace_atomically, write_identities

    if args.output is not None:
        problem = _unwritable(Path(args.output))
        if problem:
            err(f"--output {args.output}: {problem}")
            return 1
    from syncd.progress import Progress

    async with open_store(settings) as engine:
        # a bar only when the rows do not go to the same terminal
        shown = args.output is not None or not sys.stdout.isatty()
        total = await _count_identities(engine) if shown else None
        with Progress("export identities", total, unit="identities") as bar:

            def progress(count: int) -> None:
                if shown:
                    bar.advance(count - bar.done)

            if args.output is None:
                count = await write_identities(
                    engine, sys.stdout, args.format, settings.salebot.project_id, progress
                )
            else:
                final = Path(args.output)
                tmp = final.with_name(f".{final.name}.part")
                try:
                    with tmp.open("w", encoding="utf-8", newline="") as file:
                        count = await write_identities(
                            engine, file, args.format, settings.salebot.project_id, progress
                        )
                    replace_atomically(tmp, final)
                finally:
                    tmp.unlink(missing_ok=True)
            progress(count)
    where = f" to {args.output}" if args.output else ""
    sys.stderr.write(f"syncd: exported {count} identities{where}\n")
    return 0


def _unwritable(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (checked before any work starts)."""
    folder = path.parent
    if not folder.is_dir():
        return f"the directory {folder} does not exist: create it or choose another path"
    if path.is_dir():
        return "is a directory: name a file"
    if not os.access(folder, os.W_OK):
        return f"the directory {folder} is not writable by this user"
    return None


async def _count_identities(engine: AsyncEngine) -> int:
    from sqlalchemy import func, select

    from syncd.store.models import Identity

    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(Identity)) or 0)


async def cmd_events_list(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store.events import listing

    async with open_store(settings) as engine:
        rows = await listing(engine, args.kind, args.limit)
    if args.json:
        dump(rows)
        return 0
    if not rows:
        out("no events" + (f" of kind {args.kind}" if args.kind else ""))
    for r in rows:
        line = f"#{r['id']} {r['received_at']} {r['kind']} {r['external_id']} via {r['source']}"
        line += f" {r['status']} identity={r['identity_id']}"
        if r["notes"]:
            line += f" — {r['notes']}"
        out(line)
    return 0


async def cmd_events_redo(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.daemon import event_store
    from syncd.store.events import redo

    async with open_store(settings) as engine:
        done, missing = await redo(event_store(engine, settings, None), args.ids, args.dry_run)
    for event_id in missing:
        err(f"event {event_id} does not exist")
    if args.json:
        dump([item.as_json() for item in done])
    else:
        for item in done:
            line = f"event {item.event_id} {item.kind}: {item.rule}: {item.outcome}"
            if item.target is not None:
                line += (
                    f" — {item.target}.{item.action} {json.dumps(item.payload, ensure_ascii=False)}"
                )
            if item.delivery_id is not None:
                line += f" (delivery {item.delivery_id})"
            out(line)
    return 1 if missing else 0


async def cmd_writeback_sync(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.daemon import write_back
    from syncd.store.writeback import sync
    from syncd.writeback import WriteBack

    effects = write_back(settings)
    if not isinstance(effects, WriteBack):
        err("getcourse.api_key is empty: nothing can be written to GetCourse yet")
        return 1
    async with open_store(settings) as engine:
        todo = await sync(engine, effects, dry_run=args.dry_run)
    if args.json:
        dump(
            [
                {
                    "identity_id": u.identity_id,
                    "email": u.email,
                    "telegram_id": u.telegram_id,
                    "client_id": u.client_id,
                    "confirmed": {
                        "telegram_id": u.confirmed_telegram_id,
                        "client_id": u.confirmed_client_id,
                    },
                    "queued": not args.dry_run,
                }
                for u in todo
            ]
        )
        return 0
    for u in todo:
        out(
            f"identity {u.identity_id} {u.email}: telegram_id={u.telegram_id} "
            f"client_id={u.client_id} (GetCourse has telegram_id={u.confirmed_telegram_id} "
            f"client_id={u.confirmed_client_id})"
        )
    verb = "would queue" if args.dry_run else "queued"
    out(
        f"{verb} {len(todo)} GetCourse write(s)"
        if todo
        else "nothing to queue: GetCourse confirmed every current key, or its write is on its way"
    )
    return 0


async def cmd_backfill(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.poller import jobs

    gc = settings.getcourse
    if not gc.api_key:
        err("getcourse.api_key is empty: backfill needs the export API")
        return 1
    until = args.until or date.today()
    if args.since > until:
        err(f"--since {args.since} is after --until {until}")
        return 2
    configured = jobs(gc.poll.exports, gc.poll.groups, args.since)
    if not configured:
        err("no exports configured (getcourse.poll.exports)")
        return 1
    days = (until - args.since).days + 1
    tally = BackfillTally()
    with _bulk_collector():
        return await _backfill(args, settings, configured, until, days, tally)


async def _backfill(
    args: argparse.Namespace,
    settings: config.Settings,
    configured: list[Job],
    until: date,
    days: int,
    tally: BackfillTally,
) -> int:
    from datetime import timedelta

    from syncd.clients.http import new_http_client
    from syncd.daemon import addressing
    from syncd.poller import Poller, backfill
    from syncd.progress import Progress
    from syncd.store.events import EventStore

    gc = settings.getcourse
    async with open_store(settings) as engine, new_http_client() as http:
        # history is data, not news: a backfill fires no rule (SPEC §11)
        # relaxed commits: a backfill's events are history that a rerun writes again (and
        # de-duplicates), and the window's end is recorded by an ordinary commit after
        # them, which makes them durable with it (WAL is flushed in order)
        store = EventStore(engine, addressing(settings).history_only(), relaxed_commits=True)
        windows = -(-days // args.window_days) * len(configured)
        with Progress("backfill", windows, unit="windows") as bar:
            ingest = tally.counting(store.ingest_new, bar)
            poller = Poller(engine, http, gc.url, gc.api_key, ingest, chunk=BACKFILL_CHUNK)
            done = await backfill(
                poller, configured, args.since, until,
                window=timedelta(days=args.window_days), progress=bar.note,
                on_window=tally.window_read(bar),
            )  # fmt: skip
    rows = sum(outcome.rows for _, outcome in done)
    broken = [job.name for job, outcome in done if outcome.status == "broken"]
    out(f"backfill {args.since}..{until}: {len(done)} exports, {tally.describe(rows)}")
    for name in broken:
        err(f"{name} failed: see the log line above")
    return 1 if broken else 0


#: Events per transaction in a backfill (the poller's default: 2,000). Each chunk looks
#: its people up again and makes its own round trips and commit (on PostgreSQL it locks
#: every buyer's identity row again for the foreign keys): 5,000 took 15-20 % less CPU
#: in syncd and ~10 % less in the server than 2,000 on a 200,000-row export, for +6 MiB
#: of peak RSS (10,000: +20 MiB).
BACKFILL_CHUNK = 5000


@contextmanager
def _bulk_collector() -> Iterator[None]:
    """During a backfill: collect the youngest generation every 100,000 allocations
    instead of 700, and leave what is loaded by then (modules, settings) out of every
    full collection. A backfill makes millions of short-lived objects and few cycles;
    10-13 % less CPU on a 200,000-row backfill (docs/performance.md), the same peak
    memory. The collector is as it was afterwards."""
    import gc

    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class BackfillTally:
    """New events versus events already stored, so a rerun is not counted as news."""

    def __init__(self) -> None:
        self.new = self.stored = self.rows = 0
        self._window_new = self._window_stored = 0

    def counting(self, ingest: Any, bar: Any) -> Any:
        """``ingest`` (the poller's), tallying its answer ``{(kind, source, repeat): n}``."""

        async def counted(batch: Any) -> Any:
            counts = await ingest(batch)
            for (_kind, _source, repeat), n in counts.items():
                if repeat:
                    self.stored += n
                    self._window_stored += n
                else:
                    self.new += n
                    self._window_new += n
            bar.advance(0, rows=self.rows, new_events=self.new, already_stored=self.stored)
            return counts

        return counted

    def window_read(self, bar: Any) -> Callable[[Any, Any, int, int], None]:
        def read(job: Any, outcome: Any, number: int, total: int) -> None:
            self.rows += outcome.rows
            window = self.describe(outcome.rows, self._window_new, self._window_stored)
            self._window_new = self._window_stored = 0
            bad = f", {outcome.errors} bad rows" if outcome.errors else ""
            name = job.name.split(":")[1] if job.name.startswith("backfill:") else job.name
            bar.note(f"[{number}/{total}] {name} {job.since}..{job.until}: {window}{bad}")
            bar.advance(1, rows=self.rows, new_events=self.new, already_stored=self.stored)

        return read

    def describe(self, rows: int, new: int | None = None, stored: int | None = None) -> str:
        new = self.new if new is None else new
        stored = self.stored if stored is None else stored
        text = f"{rows} rows"
        if rows and not new:
            return f"{text}, all already stored"
        if rows:
            text += f", {new} new events"
            if stored:
                text += f", {stored} already stored"
        return text


async def cmd_outbox_list(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store import outbox, repair

    async with open_store(settings) as engine:
        if args.status == "waiting_link":
            events = await repair.waiting_events(engine, args.limit)
        else:
            rows = await outbox.listing(engine, args.status, args.limit)
            waiting = await repair.waiting_events_summary(engine)
            dead = await repair.dead_by_reason(engine) if args.status in (None, "dead") else {}
    if args.status == "waiting_link":
        if args.json:
            dump(events)
            return 0
        if not events:
            out("no events wait for a link")
        for e in events:
            out(
                f"event #{e['event_id']} waiting_link {e['kind']} {e['external_id']} "
                f"identity={e['identity_id']} received {e['received_at']} "
                f"until {e['wait_until']}" + (f" — {e['notes']}" if e["notes"] else "")
            )
        return 0
    if args.json:
        dump(rows)
        return 0
    if not rows:
        out("no deliveries" + (f" with status {args.status}" if args.status else ""))
    for r in rows:
        when = r["finished_at"] if r["status"] in ("sent", "dead") else r["next_attempt_at"]
        line = (
            f"#{r['id']} {r['status']:<8} {r['target']}.{r['action']:<14} attempts={r['attempts']}"
        )
        line += f" identity={r['identity_id']} {when}"
        if r["waiting_for"]:
            line += f" waiting for {r['waiting_for']}"
        if r["last_error"]:
            line += f" — {r['last_error']}"
        out(line)
    if waiting["count"] and args.status is None:
        out(
            f"+ {waiting['count']} events wait for a link (oldest received "
            f"{waiting['oldest_received_at']}): syncd outbox list --status waiting_link"
        )
    if dead:
        out("dead by reason: " + "; ".join(f"{n} × {reason}" for reason, n in dead.items()))
    return 0


async def cmd_outbox_stats(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store import outbox, repair

    async with open_store(settings) as engine:
        figures = await outbox.stats(engine)
        waiting = await repair.waiting_events_summary(engine)
        figures["waiting_link_events"] = waiting["count"]
        figures["oldest_waiting_link_received_at"] = waiting["oldest_received_at"]
        figures["dead_by_reason"] = await repair.dead_by_reason(engine)
    if args.json:
        dump(figures)
        return 0
    for name, value in figures.items():
        if name == "dead_by_reason":
            continue
        out(f"{name:<32}{'' if value is None else value}")
    for reason, n in figures["dead_by_reason"].items():
        out(f"dead: {n:<26}{reason}")
    return 0


async def cmd_outbox_retry(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store import outbox

    if bool(args.ids) == bool(args.dead):
        err("give delivery ids or --dead (not both)")
        return 2
    async with open_store(settings) as engine:
        requeued, refused = await outbox.retry(engine, args.ids or None)
    out(f"requeued {len(requeued)} deliveries" + (f": {requeued}" if requeued else ""))
    for delivery_id, status in refused.items():
        err(f"delivery {delivery_id} is {status}, not dead: left as is")
    return 1 if refused else 0


async def cmd_backup(args: argparse.Namespace, settings: config.Settings) -> int:
    """An online copy of a SQLite store; for PostgreSQL, the pg_dump command to run."""
    from syncd import backup
    from syncd.progress import Progress

    output = Path(args.output)
    source = backup.sqlite_path(settings.database.url)
    if source is None:
        backup.check_target(output, args.force)
        out("# PostgreSQL: back up with pg_dump (the password is read from PGPASSFILE or")
        out("# ~/.pgpass, never from the command line); restore with pg_restore:")
        out(backup.pg_dump_command(settings.database.url, output))
        out("# " + backup.pg_restore_command(settings.database.url, output))
        return 0
    backup.check_target(output, args.force)  # before a progress line: one clear line
    with Progress("backup", None, unit="pages") as bar:

        def progress(done: int, total: int) -> None:
            bar.set_total(total)
            bar.advance(done - bar.done)

        copied = await backup.backup_sqlite(source, output, force=args.force, progress=progress)
    out(f"backup of {source}: {copied.path} ({copied.bytes} bytes, integrity ok)")
    return 0


# report funnel (SPEC §7, §12) ---------------------------------------------------------


async def cmd_report_funnel(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.export import replace_atomically
    from syncd.report import funnel, parse_day, render

    try:
        since = parse_day(args.since, "--since") if args.since is not None else None
        until = parse_day(args.until, "--until") if args.until is not None else None
        if since is not None and until is not None and since > until:
            raise InvalidInput("bad_date", f"--since {since} is after --until {until}")
    except InvalidInput as exc:
        err(exc.detail)
        return 2
    if args.output is not None:
        problem = _unwritable(Path(args.output))
        if problem:
            err(f"--output {args.output}: {problem}")
            return 1
    async with open_store(settings) as engine:
        found = await funnel(engine, args.by, since, until)
    document = render(found, args.format)
    if args.output is None:
        sys.stdout.write(document)
        return 0
    final = Path(args.output)
    tmp = final.with_name(f".{final.name}.part")
    try:
        tmp.write_text(document, encoding="utf-8")
        replace_atomically(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    sys.stderr.write(f"syncd: funnel by {args.by} ({len(found.rows)} rows) written to {final}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Links GetCourse and Salebot identities and keeps the two talking.",
        epilog="Config: --config, else $SYNCD_CONFIG, else ./syncd.toml, else "
        "/etc/syncd/syncd.toml. Any key can be overridden as SYNCD_<SECTION>__<KEY>.",
    )
    parser.add_argument("--config", metavar="PATH", help="the TOML config file")
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Command, help: str, parent: Any = commands
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    add("run", cmd_run, "run the daemon (HTTP ingress) until SIGTERM/SIGINT")
    add("migrate", cmd_migrate, "apply database migrations up to head")
    demo = add(
        "demo",
        cmd_demo,
        "watch the whole loop in a minute: simulators of GetCourse and Salebot, a daemon, "
        "a temporary database, and a story",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave everything running and print the URLs"
    )
    check = add("check", cmd_check, "validate the config, the database and its migrations")
    check.add_argument(
        "--remote",
        action="store_true",
        help="also call GetCourse (key, custom fields) and Salebot (key, bot_name)",
    )

    identity = commands.add_parser("identity", help="look up or link one person")
    identity_cmds = identity.add_subparsers(
        dest="identity_command", required=True, metavar="ACTION"
    )
    show = add("show", cmd_identity_show, "show one identity", identity_cmds)
    show.add_argument("key", metavar="KEY", help="an email, tg:<telegram_id> or sb:<client_id>")
    show.add_argument("--json", action="store_true", help="print JSON")
    link = add(
        "link", cmd_identity_link, "link keys by hand (same rules as the webhook)", identity_cmds
    )
    link.add_argument("--email", required=True)
    link.add_argument("--telegram-id", metavar="T")
    link.add_argument("--client-id", metavar="C", help="Salebot client id")
    link.add_argument(
        "--project-id", metavar="P", help="Salebot project (default salebot.project_id)"
    )
    forget = add(
        "forget",
        cmd_identity_forget,
        "erase one person's personal data for good (152-ФЗ, SPEC §11); asks on a terminal",
        identity_cmds,
    )
    forget.add_argument("key", metavar="KEY", help="an email, tg:<telegram_id> or sb:<client_id>")
    forget.add_argument("--yes", action="store_true", help="do not ask (needed off a terminal)")
    forget.add_argument("--json", action="store_true", help="print JSON")

    conflicts = commands.add_parser("conflicts", help="link conflicts waiting for an operator")
    conflicts_cmds = conflicts.add_subparsers(
        dest="conflicts_command", required=True, metavar="ACTION"
    )
    clist = add("list", cmd_conflicts_list, "list open link conflicts", conflicts_cmds)
    clist.add_argument("--json", action="store_true", help="print JSON")
    cresolve = add(
        "resolve",
        cmd_conflicts_resolve,
        "close a conflict: --keep leaves the map as it is; --replace applies the claim as "
        'identity.on_conflict = "replace" would (keys move, GetCourse is written)',
        conflicts_cmds,
    )
    cresolve.add_argument("id", type=int, metavar="ID", help="a conflict id (conflicts list)")
    how = cresolve.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep", action="store_true", help="keep the map as it is")
    how.add_argument("--replace", action="store_true", help="apply the claim")
    cresolve.add_argument("--json", action="store_true", help="print JSON")

    events = commands.add_parser("events", help="the GetCourse event log")
    events_cmds = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    elist = add("list", cmd_events_list, "list events, newest last", events_cmds)
    elist.add_argument("--kind", metavar="K", help="only this kind (deal.paid, user.created, …)")
    elist.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    elist.add_argument("--json", action="store_true", help="print JSON")
    eredo = add(
        "redo",
        cmd_events_redo,
        "run the rules again for these events, on purpose (however old they are); a rule "
        "that already made a call for an event makes none",
        events_cmds,
    )
    eredo.add_argument("ids", nargs="+", type=int, metavar="ID", help="event ids")
    eredo.add_argument("--dry-run", action="store_true", help="print what would be sent")
    eredo.add_argument("--json", action="store_true", help="print JSON")

    writeback = commands.add_parser("writeback", help="the GetCourse write-back of links")
    writeback_cmds = writeback.add_subparsers(dest="action", required=True, metavar="ACTION")
    wsync = add(
        "sync",
        cmd_writeback_sync,
        "queue the GetCourse custom-field write for every person whose current keys "
        "GetCourse has not confirmed (links made before getcourse.api_key was set, dead writes)",
        writeback_cmds,
    )
    wsync.add_argument("--dry-run", action="store_true", help="only list them")
    wsync.add_argument("--json", action="store_true", help="print JSON")

    back = add(
        "backfill",
        cmd_backfill,
        "read past GetCourse exports into the event log, in date windows (as the poller does)",
    )
    back.add_argument("--since", type=_date, required=True, metavar="DATE", help="YYYY-MM-DD")
    back.add_argument("--until", type=_date, metavar="DATE", help="YYYY-MM-DD (default today)")
    back.add_argument(
        "--window-days", type=int, default=7, metavar="N", help="days per export (default 7)"
    )

    outbox = commands.add_parser("outbox", help="the queue of outgoing calls")
    outbox_cmds = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    olist = add("list", cmd_outbox_list, "list deliveries, newest last", outbox_cmds)
    olist.add_argument(
        "--status",
        choices=["pending", "sending", "sent", "dead", "waiting", "waiting_link"],
        help="only these; waiting_link lists the events that wait for a Telegram link",
    )
    olist.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    olist.add_argument("--json", action="store_true", help="print JSON")
    ostats = add("stats", cmd_outbox_stats, "counts by status and the oldest due age", outbox_cmds)
    ostats.add_argument("--json", action="store_true", help="print JSON")
    oshow = add(
        "show",
        cmd_outbox_show,
        "one call: target, payload (secrets masked), what caused it, attempts, last error",
        outbox_cmds,
    )
    oshow.add_argument("id", type=int, metavar="ID", help="a delivery id")
    oshow.add_argument("--json", action="store_true", help="print JSON")
    oretry = add("retry", cmd_outbox_retry, "replay dead deliveries now", outbox_cmds)
    oretry.add_argument("ids", nargs="*", type=int, metavar="ID", help="delivery ids")
    oretry.add_argument("--dead", action="store_true", help="every dead delivery")

    bk = add(
        "backup",
        cmd_backup,
        "an online, consistent copy of the SQLite store (PostgreSQL: prints the pg_dump command)",
    )
    bk.add_argument("--output", required=True, metavar="F", help="the backup file to write")
    bk.add_argument("--force", action="store_true", help="replace F if it exists")

    export = commands.add_parser("export", help="export data for analysts")
    export_cmds = export.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    ident = add("identities", cmd_export_identities, "the identity map, streamed", export_cmds)
    ident.add_argument("--format", choices=["csv", "jsonl"], required=True)
    ident.add_argument("--output", metavar="F", help="write to F (atomically) instead of stdout")
    # report funnel (SPEC §7, §12)
    report = commands.add_parser("report", help="reports for analysts")
    report_cmds = report.add_subparsers(dest="report_command", required=True, metavar="WHAT")
    rfunnel = add(
        "funnel",
        cmd_report_funnel,
        "bot subscribers -> linked -> ordered -> paid, by cohort of first bot contact",
        report_cmds,
    )
    rfunnel.add_argument("--since", metavar="D", help="first contact on or after D (YYYY-MM-DD)")
    rfunnel.add_argument("--until", metavar="D", help="first contact on or before D (YYYY-MM-DD)")
    rfunnel.add_argument(
        "--by", choices=["source", "utm_campaign", "month"], default="source",
        help="group by first-touch source (default), first-touch UTM campaign or month",
    )  # fmt: skip
    rfunnel.add_argument(
        "--format", choices=["table", "csv", "json", "html"], default="table",
        help="table (default), csv, json, or one self-contained HTML page with a chart",
    )  # fmt: skip
    rfunnel.add_argument("--output", metavar="F", help="write to F (atomically) instead of stdout")
    return parser


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def no_config_note(settings: config.Settings) -> str:
    """Where syncd looked for a config file and which defaults it runs with instead."""
    looked = ", ".join(str(path) for path in config.DEFAULT_PATHS)
    # only overrides (SYNCD_<SECTION>__<KEY>) set a value; SYNCD_REQUIRE_PG & co. do not
    env = sorted(name for name in os.environ if name.startswith("SYNCD_") and "__" in name)
    return (
        f"no config file found (looked for --config, $SYNCD_CONFIG, {looked}): built-in "
        f"defaults{f' and {len(env)} SYNCD_<SECTION>__<KEY> overrides' if env else ''} — "
        f"database.url={safe_database_url(settings.database.url)}, "
        f"http on {settings.http.host}:{settings.http.port}, {len(settings.rules)} rules"
    )


def safe_database_url(url: str) -> str:
    from syncd.store.engine import safe_url

    try:
        return safe_url(url)
    except Exception:  # a URL that does not parse is shown as "?"
        return "?"


def _store_failure(exc: StoreError, settings: config.Settings, args: argparse.Namespace) -> str:
    """The one line for a database failure: the cause and the fix."""
    from syncd.store import diagnose

    line = diagnose.explain(exc, settings.database.url) or str(exc)
    defaulted = "SYNCD_DATABASE__URL" not in os.environ and not os.environ.get(
        "CREDENTIALS_DIRECTORY"
    )
    if getattr(args, "config_path", None) is None and defaulted:
        looked = ", ".join(str(path) for path in config.DEFAULT_PATHS)
        line += f" (no config file found in {looked}: database.url is the built-in default)"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: config.Settings | None = None
    try:
        loaded = config.load(args.config)
        args.config_path = loaded.path
        settings = loaded.settings
        level = settings.log.level if args.command == "run" else "warning"
        logs.setup(level, settings.log.format)
        for warning in loaded.warnings:
            logger.warning(warning)
        configured_by_env = any(name.startswith("SYNCD_") for name in os.environ)
        if args.command == "run" and loaded.path is None and not configured_by_env:
            logger.warning(no_config_note(settings))
        handler: Command = args.handler
        with _runner() as runner:
            return runner.run(handler(args, settings))
    except ConfigError as exc:
        err(f"config error: {exc}")
    except InvalidInput as exc:
        err(f"{exc.code}: {exc.detail}")
    except StoreError as exc:
        err(_store_failure(exc, settings, args) if settings is not None else str(exc))
    except SyncdError as exc:
        err(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `syncd … | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
