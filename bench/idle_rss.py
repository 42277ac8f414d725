"""Idle RSS benchmark: the memory of a ready ``syncd run`` that nothing is talking to.

For each database (a fresh SQLite file, a throwaway PostgreSQL database) it starts a real
``syncd run`` (defaults, a token, the export poller off, a GetCourse key so the
write-back is on), waits for ``GET /readyz`` to answer 200, lets it settle, then reads
``VmRSS`` (and its anonymous / file-backed split) from ``/proc/PID/status`` several
times and keeps the median; ``--repeat`` starts that many daemons per database.

    .venv/bin/python bench/idle_rss.py [--db all] [--repeat 3] [--settle 2] [--breakdown]
                                       [--bytecode]

``--bytecode`` first compiles syncd's modules and migrations to ``.pyc`` in place
(``__pycache__``, git-ignored), as a ``pip install`` leaves an installed package; without
it the daemons read the checkout as it is, which on a fresh clone with
``PYTHONDONTWRITEBYTECODE=1`` (this machine's environment) means compiled from source at
every start. (A ``PYTHONPYCACHEPREFIX`` would keep the checkout clean but sends every
stdlib and third-party import to the prefix too, compiled from source: not an installed
daemon.) Measured both ways on 2026-12-06: the same RSS within 0.1 MiB.

``--breakdown`` also imports what a daemon imports, layer by layer, in a child
interpreter and prints what each layer adds to its RSS (the order matters: a layer is
charged only for what the layers before it did not already load).

Target (issue 13): idle RSS <= 75 MB (decimal: 71.5 MiB) on both databases. Exits 0
whether or not the target is met; 1 only if a daemon could not be measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import SYNCD, BenchError, Server, command_line, free_port, machine

TOKEN = "bench-token-9d21"
TARGET_MB = 75  # decimal megabytes, as the issue states it
TARGET_KB = TARGET_MB * 1_000_000 / 1024
SAMPLES = 10
SAMPLE_EVERY = 0.1  # seconds


@dataclass
class Run:
    db: str
    rss_kb: list[int] = field(default_factory=list)  # one median per daemon
    anon_kb: list[int] = field(default_factory=list)
    file_kb: list[int] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)  # spawn -> /readyz 200


def one_daemon(
    kind: str,
    db: harness.Database,
    workdir: Path,
    n: int,
    settle: float,
    run: Run,
) -> None:
    """Start one `syncd run`, wait for /readyz, settle, sample VmRSS; add the medians to ``run``."""
    port = free_port()
    env = harness.syncd_env(
        db.url,
        port,
        SYNCD_HTTP__TOKEN=TOKEN,
        SYNCD_GETCOURSE__BASE_URL="http://127.0.0.1:9",
        SYNCD_GETCOURSE__API_KEY="bench-gc-key",
        SYNCD_GETCOURSE__POLL__INTERVAL="0",
        SYNCD_LOG__LEVEL="warning",
    )
    daemon = Server(
        f"syncd run ({kind})", [str(SYNCD), "run"], port, workdir / f"syncd-{kind}-{n}.log", env
    )
    began = time.monotonic()
    with harness.running(daemon, "/readyz"):
        run.ready_s.append(time.monotonic() - began)
        time.sleep(settle)  # imports done, pools opened, the first scheduler ticks
        found = harness.status_samples(
            daemon.pid, ("VmRSS", "RssAnon", "RssFile"), SAMPLES, SAMPLE_EVERY
        )
        rss, anon, file = found["VmRSS"], found["RssAnon"], found["RssFile"]
        code = daemon.stop()
    if code != 0:
        raise BenchError(f"syncd run exited {code} on SIGTERM:\n{harness.tail(daemon.log)}")
    if not rss:
        raise BenchError("could not read the daemon's VmRSS")
    run.rss_kb.append(int(statistics.median(rss)))
    run.anon_kb.append(int(statistics.median(anon)) if anon else 0)
    run.file_kb.append(int(statistics.median(file)) if file else 0)
    print(
        f"  {kind} #{n + 1}: pid {daemon.pid}, ready in {run.ready_s[-1]:.2f} s, "
        f"VmRSS {run.rss_kb[-1] / 1024:.1f} MiB (anon {run.anon_kb[-1] / 1024:.1f}, "
        f"file {run.file_kb[-1] / 1024:.1f})",
        flush=True,
    )


def bytecode(args: argparse.Namespace) -> None:
    """With ``--bytecode``: compile syncd and its migrations to ``.pyc`` in place."""
    if args.bytecode:
        command = [sys.executable, "-m", "compileall", "-q", "syncd", "migrations"]
        subprocess.run(command, cwd=harness.ROOT, check=True, capture_output=True, timeout=300)


def measure_db(kind: str, workdir: Path, args: argparse.Namespace) -> Run:
    run = Run(kind)
    with harness.database(kind, workdir, args.pg_admin, label="idle") as db:
        harness.migrate(db, workdir)  # a migrated database: `run` only checks the revision
        for n in range(args.repeat):
            one_daemon(kind, db, workdir, n, args.settle, run)
    return run


#: What a ready `syncd run` has imported, in layers; each is charged what it adds. A
#: ``lean:`` entry is how `syncd run` imports that package (``syncd.memory``:
#: ``sqlalchemy.ext.asyncio`` without the ORM, ``uvicorn`` without its command line).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "stdlib: asyncio, ssl, json, logging, email, http.client, urllib, argparse",
        ("asyncio", "ssl", "json", "logging", "email.utils", "http.client", "urllib.request",
         "argparse", "decimal", "uuid", "tomllib"),
    ),
    ("uvloop", ("uvloop",)),
    ("pydantic (+ email_validator)", ("pydantic.main", "pydantic.fields", "email_validator")),
    ("syncd.config: the settings models built", ("syncd.config",)),
    ("loguru", ("loguru", "syncd.logs")),
    ("SQLAlchemy core", ("sqlalchemy", "sqlalchemy.engine", "sqlalchemy.sql")),
    ("SQLAlchemy ext.asyncio: engine and results only (no ORM)", ("lean:sqlalchemy_asyncio",)),
    ("SQLite: dialect, aiosqlite, sqlite3", ("sqlalchemy.dialects.sqlite", "aiosqlite")),
    ("PostgreSQL: dialect, psycopg", ("sqlalchemy.dialects.postgresql", "psycopg")),
    ("syncd.store.models (Core tables)", ("syncd.store.models",)),
    ("starlette", ("starlette.applications", "starlette.routing", "starlette.responses")),
    ("uvicorn: config and server only (no CLI)", ("lean:uvicorn",)),
    ("prometheus_client", ("prometheus_client",)),
    ("apscheduler", ("apscheduler.schedulers.asyncio",)),
    ("orjson", ("orjson",)),
    ("the rest of syncd (syncd.cli, syncd.daemon)", ("syncd.cli", "syncd.daemon")),
)  # fmt: skip

#: Loaded at the first outgoing call (``syncd.daemon.Outgoing``), not by an idle daemon:
#: shown after the total, as what the first delivery adds.
LATER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("+ at the first outgoing call: httpx, aiohttp, httpx_aiohttp", ("syncd.clients.http",)),
)

_BREAKDOWN = """
import importlib, json, sys
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")]
out = [["python + site", [], rss()]]
for name, modules in json.loads(sys.argv[1]):
    skipped = []
    for module in modules:
        try:
            if module.startswith("lean:"):
                from syncd import memory
                getattr(memory, "lean_" + module[5:])()
            else:
                importlib.import_module(module)
        except ImportError:
            skipped.append(module)
    out.append([name, skipped, rss()])
print(json.dumps(out))
"""


def _layers_rss(kind: str) -> list[tuple[str, list[str], list[int]]]:
    """Import the layers a daemon on ``kind`` loads in a child; (layer, not importable, RSS)."""
    other = "PostgreSQL" if kind == "sqlite" else "SQLite"
    layers = [(name, mods) for name, mods in (*LAYERS, *LATER) if not name.startswith(other)]
    done = subprocess.run(
        [sys.executable, "-c", _BREAKDOWN, json.dumps(layers)],
        cwd=harness.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"the import breakdown failed:\n{done.stderr}")
    return [(name, skipped, now) for name, skipped, now in json.loads(done.stdout)]


def breakdown(kinds: list[str]) -> None:
    """What each layer of a daemon's imports adds to the RSS of a fresh interpreter."""
    added: dict[str, dict[str, str]] = {}  # layer -> kind -> "+x.x"
    totals: dict[str, str] = {}
    for kind in kinds:
        steps = _layers_rss(kind)
        later = {name for name, _ in LATER}
        previous = steps[0][2]
        added.setdefault(steps[0][0], {})[kind] = f"{previous[0] / 1024:.1f}"
        for name, skipped, now in steps[1:]:
            if name in later and kind not in totals:
                totals[kind] = f"{previous[0] / 1024:.1f}"
            shown = f"{(now[0] - previous[0]) / 1024:+.1f}" + (
                " (not importable)" if skipped else ""
            )
            added.setdefault(name, {})[kind] = shown
            previous = now
        totals.setdefault(kind, f"{previous[0] / 1024:.1f}")
    rows: list[tuple[str, ...]] = [("layer (in import order), MiB", *kinds)]
    for name, _ in (("python + site", ()), *LAYERS):
        if name in added:
            rows.append((name, *(added[name].get(kind, "-") for kind in kinds)))
    rows.append(("total (a fresh interpreter, imports only)", *(totals[k] for k in kinds)))
    for name, _ in LATER:
        rows.append((name, *(added.get(name, {}).get(kind, "-") for kind in kinds)))
    print("\n=== what the imports of `syncd run` add to RSS ===")
    print(harness.table(rows))
    print(
        "Each layer is charged what the layers above it had not already loaded. No event "
        "loop, pools, threads or TLS contexts here: a ready daemon adds those on top (and "
        "gives back, with malloc_trim, what start-up freed)."
    )


def summary(runs: list[Run], args: argparse.Namespace) -> None:
    def mib(values: list[int]) -> str:
        return f"{statistics.median(values) / 1024:.1f}" if values else "-"

    rows: list[tuple[str, ...]] = [("", *(run.db for run in runs))]
    rows.append(("idle VmRSS, MiB (median)", *(mib(run.rss_kb) for run in runs)))
    rows.append(
        (
            "idle VmRSS, MB (decimal)",
            *(
                f"{statistics.median(run.rss_kb) * 1024 / 1e6:.1f}" if run.rss_kb else "-"
                for run in runs
            ),
        )
    )
    rows.append(
        (
            "  min - max, MiB",
            *(
                f"{min(run.rss_kb) / 1024:.1f} - {max(run.rss_kb) / 1024:.1f}"
                if run.rss_kb
                else "-"
                for run in runs
            ),
        )
    )
    rows.append(("  anonymous (RssAnon), MiB", *(mib(run.anon_kb) for run in runs)))
    rows.append(("  file-backed (RssFile), MiB", *(mib(run.file_kb) for run in runs)))
    rows.append(
        (
            "ready after, s (median)",
            *(f"{statistics.median(run.ready_s):.2f}" if run.ready_s else "-" for run in runs),
        )
    )
    print("\n=== syncd idle RSS benchmark: a ready `syncd run`, no traffic ===")
    print(f"machine : {machine()}")
    print(f"command : {command_line()}")
    print(
        f"load    : {args.repeat} daemon(s) per database, each measured {args.settle:g} s "
        f"after /readyz answered 200: median of {SAMPLES} VmRSS samples {SAMPLE_EVERY:g} s "
        "apart (export poller off, GetCourse write-back on, no requests; syncd's modules "
        f"{'as .pyc' if args.bytecode else 'as checked out'})"
    )
    print()
    print(harness.table(rows))
    print()
    for run in runs:
        if run.rss_kb:
            value = statistics.median(run.rss_kb)
            verdict = "met" if value <= TARGET_KB else "MISSED"
            print(
                f"target [{run.db}]: idle VmRSS {value * 1024 / 1e6:.1f} MB "
                f"({value / 1024:.1f} MiB) <= {TARGET_MB} MB ({TARGET_KB / 1024:.1f} MiB): "
                f"{verdict}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(
        "Idle RSS of a ready `syncd run` on SQLite and PostgreSQL, against the target."
    )
    parser.add_argument("--repeat", type=int, default=3, help="daemons per database (3)")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds after ready before sampling (2)"
    )
    parser.add_argument(
        "--bytecode",
        action="store_true",
        help="syncd's modules compiled to .pyc first, as installed (default: as checked out)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print what each layer of the daemon's imports adds to RSS",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 20 or not 0 <= args.settle <= 120:
        parser.error("--repeat must be in 1..20 and --settle in 0..120")
    runs: list[Run] = []

    def measure(workdir: Path) -> int:
        bytecode(args)
        for kind in harness.kinds(args):
            print(f"\n--- {kind} ---", flush=True)
            runs.append(measure_db(kind, workdir, args))
        summary(runs, args)
        if args.breakdown:
            breakdown(harness.kinds(args))
        return 0  # a missed target is a figure, not a failure

    def report() -> None:
        if runs:
            summary(runs, args)

    return harness.bench_main(measure, report=report)


if __name__ == "__main__":
    sys.exit(main())
