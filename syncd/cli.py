"""The ``syncd`` command line (SPEC §7).

Exit status: 0 success, 1 a handled failure (one clear line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd import __version__, config, logs
from syncd.errors import ConfigError, InvalidInput, SyncdError

Command = Callable[[argparse.Namespace, config.Settings], Coroutine[Any, Any, int]]


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(f"syncd: {text}\n")


def dump(data: Any) -> None:
    out(json.dumps(data, ensure_ascii=False))


@asynccontextmanager
async def open_store(settings: config.Settings) -> AsyncIterator[AsyncEngine]:
    """The database, checked to be at the migration head."""
    from syncd.store import schema
    from syncd.store.engine import create_engine
    from syncd.store.errors import translated

    engine = create_engine(settings.database.url)
    try:
        async with translated():
            await schema.require_head(engine)
        yield engine
    finally:
        await engine.dispose()


async def cmd_run(_: argparse.Namespace, settings: config.Settings) -> int:
    from syncd import daemon

    await daemon.run(settings)
    return 0


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

    engine = create_engine(settings.database.url)
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
    from syncd.store import migrate
    from syncd.store.engine import create_engine, safe_url
    from syncd.store.errors import translated

    head = ", ".join(sorted(migrate.heads()))
    missing = _missing_sqlite_file(settings.database.url)
    if missing is not None:
        line(True, "database", f"{missing} does not exist yet: syncd run or migrate creates it")
        auto = settings.database.auto_migrate
        line(auto, "migrations", "syncd run will apply them" if auto else "run `syncd migrate`")
        return
    engine = create_engine(settings.database.url)
    try:
        async with translated():
            current = await migrate.current(engine)
        line(True, "database", safe_url(settings.database.url))
        have = ", ".join(sorted(current)) or "empty"
        if current == migrate.heads():
            line(True, "migrations", f"at head {head}")
        elif settings.database.auto_migrate:
            line(True, "migrations", f"database at {have}, head is {head}: syncd run will migrate")
        else:
            line(False, "migrations", f"database at {have}, head is {head}: run `syncd migrate`")
    except SyncdError as exc:
        line(False, "database", f"{safe_url(settings.database.url)}: {exc}")
    finally:
        await engine.dispose()


async def cmd_check(args: argparse.Namespace, settings: config.Settings) -> int:
    failed = 0

    def line(ok: bool, what: str, text: str) -> None:
        nonlocal failed
        failed += not ok
        out(f"{'ok  ' if ok else 'FAIL'} {what}: {text}")

    from syncd.rules import compile_rules

    line(True, "config", str(args.config_path or "built-in defaults"))
    try:
        line(True, "rules", f"{len(compile_rules(settings.rules))} rules")
    except ConfigError as exc:
        line(False, "rules", str(exc))
    line(
        bool(settings.http.token),
        "http.token",
        "set" if settings.http.token else "empty: set it (syncd run refuses to start without it)",
    )
    await _check_database(settings, line)
    if args.remote:
        from syncd import remote
        from syncd.clients.http import new_http_client

        async with new_http_client() as http:
            await remote.check(settings, http, line)
    return 1 if failed else 0


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
    from syncd.store.links import LinkRequest, LinkStore

    claim = normalise_link(
        {
            "email": args.email,
            "telegram_id": args.telegram_id,
            "client_id": args.client_id,
            "project_id": args.project_id,
        },
        settings.salebot.project_id,
    )
    from syncd.daemon import write_back

    async with open_store(settings) as engine:
        store = LinkStore(engine, settings.identity.on_conflict, write_back(settings))
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


async def cmd_export_identities(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.export import replace_atomically, write_identities

    def progress(count: int) -> None:
        sys.stderr.write(f"\rsyncd: exported {count} identities…")

    async with open_store(settings) as engine:
        if args.output is None:
            count = await write_identities(
                engine, sys.stdout, args.format, settings.salebot.project_id
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
    where = f" to {args.output}" if args.output else ""
    sys.stderr.write(f"\rsyncd: exported {count} identities{where}\n")
    return 0


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


async def cmd_backfill(args: argparse.Namespace, settings: config.Settings) -> int:
    from datetime import timedelta

    from syncd.clients.http import new_http_client
    from syncd.daemon import addressing
    from syncd.poller import Poller, backfill, jobs
    from syncd.store.events import EventStore

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

    def progress(text: str) -> None:
        sys.stderr.write(f"syncd: backfill {text}\n")
        sys.stderr.flush()

    async with open_store(settings) as engine, new_http_client() as http:
        store = EventStore(engine, addressing(settings))
        poller = Poller(engine, http, gc.url, gc.api_key, store.ingest_new)
        done = await backfill(
            poller, configured, args.since, until,
            window=timedelta(days=args.window_days), progress=progress,
        )  # fmt: skip
    rows = sum(outcome.rows for _, outcome in done)
    broken = [job.name for job, outcome in done if outcome.status == "broken"]
    out(f"backfill {args.since}..{until}: {len(done)} exports, {rows} rows")
    for name in broken:
        err(f"{name} failed: see the log line above")
    return 1 if broken else 0


async def cmd_outbox_list(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store import outbox

    async with open_store(settings) as engine:
        rows = await outbox.listing(engine, args.status, args.limit)
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
    return 0


async def cmd_outbox_stats(args: argparse.Namespace, settings: config.Settings) -> int:
    from syncd.store import outbox

    async with open_store(settings) as engine:
        figures = await outbox.stats(engine)
    if args.json:
        dump(figures)
        return 0
    for name, value in figures.items():
        out(f"{name:<24}{value}")
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

    conflicts = commands.add_parser("conflicts", help="link conflicts waiting for an operator")
    conflicts_cmds = conflicts.add_subparsers(
        dest="conflicts_command", required=True, metavar="ACTION"
    )
    clist = add("list", cmd_conflicts_list, "list open link conflicts", conflicts_cmds)
    clist.add_argument("--json", action="store_true", help="print JSON")

    events = commands.add_parser("events", help="the GetCourse event log")
    events_cmds = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    elist = add("list", cmd_events_list, "list events, newest last", events_cmds)
    elist.add_argument("--kind", metavar="K", help="only this kind (deal.paid, user.created, …)")
    elist.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    elist.add_argument("--json", action="store_true", help="print JSON")

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
        "--status", choices=["pending", "sending", "sent", "dead", "waiting"], help="only these"
    )
    olist.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    olist.add_argument("--json", action="store_true", help="print JSON")
    ostats = add("stats", cmd_outbox_stats, "counts by status and the oldest due age", outbox_cmds)
    ostats.add_argument("--json", action="store_true", help="print JSON")
    oretry = add("retry", cmd_outbox_retry, "replay dead deliveries now", outbox_cmds)
    oretry.add_argument("ids", nargs="*", type=int, metavar="ID", help="delivery ids")
    oretry.add_argument("--dead", action="store_true", help="every dead delivery")

    export = commands.add_parser("export", help="export data for analysts")
    export_cmds = export.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    ident = add("identities", cmd_export_identities, "the identity map, streamed", export_cmds)
    ident.add_argument("--format", choices=["csv", "jsonl"], required=True)
    ident.add_argument("--output", metavar="F", help="write to F (atomically) instead of stdout")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        loaded = config.load(args.config)
        args.config_path = loaded.path
        settings = loaded.settings
        level = settings.log.level if args.command == "run" else "warning"
        logs.setup(level, settings.log.format)
        for warning in loaded.warnings:
            logger.warning(warning)
        handler: Command = args.handler
        with _runner() as runner:
            return runner.run(handler(args, settings))
    except ConfigError as exc:
        err(f"config error: {exc}")
    except InvalidInput as exc:
        err(f"{exc.code}: {exc.detail}")
    except SyncdError as exc:
        err(str(exc))
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
