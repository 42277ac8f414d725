"""Backfill benchmark: a 1,000,000-row GetCourse deals export read into the event log.

For each database (SQLite in a temporary file, PostgreSQL in a throwaway database) and each
window size, on a fresh database: ``syncd migrate``; start the simulator in its own process
(bench/big_export_server.py: ``GeneratedDeals`` — deal ``i`` created at 2024-01-01 + 30 s·i,
every 3rd one payed; exports ready at the first collect); measure a plain ``syncd run``
daemon's RSS once ready and idle (poller off); then time ``syncd backfill --since 2024-01-01
--until <day of the last deal> --window-days W`` from its start to its exit, sampling its
VmRSS every 0.1 s and taking its peak from the kernel (``wait4`` rusage: VmHWM) when it
exits. Afterwards the ``events`` table must hold exactly what the rows imply: one
``deal.created`` per deal, and a ``deal.paid`` plus a ``deal.status_changed`` per payed deal.

Window sizes: ``all`` is one export of every row (the headline: one huge export, memory must
stay flat); ``30`` is the recommended windowed way (12 exports for 1,000,000 rows).

    .venv/bin/python bench/backfill.py [--rows 1000000] [--db all] [--window-days all,30]

Target (issue 13): peak RSS within 100 MB of the idle daemon's, and >= 20,000 rows/s on
both databases (``--db all``, the default, runs them one after the other and prints them
side by side). Besides the rows/s, the table gives the CPU seconds per 100,000 rows of
``syncd backfill`` and, on PostgreSQL, of the server processes serving it: the figures to
compare on a shared machine, where the wall clock depends on the neighbours. Exits 1 if a
backfill fails, times out or the events stored are not the expected ones; a missed target
is reported, not an exit code.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import resource
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import harness
from harness import (
    BENCH,
    LOOPBACK,
    SYNCD,
    BenchError,
    Child,
    Database,
    cleaned_up,
    command_line,
    cpu_seconds,
    free_port,
    machine,
    proc_status,
    tail,
)

EXPORT_SERVER = BENCH / "big_export_server.py"
KEY = "gc-bench-key-5d2a91"
START = datetime(2024, 1, 1)  # GeneratedDeals' first deal, as big_export_server serves it
PAID_EVERY = 3  # GeneratedDeals: deal i is payed when i % 3 == 0
SAMPLE_EVERY = 0.1  # seconds between VmRSS samples
PROGRESS_EVERY = 5.0  # seconds between looks at how many events are stored so far
DB_CPU_EVERY = 0.2  # seconds between looks at the PostgreSQL backends' CPU time
#: Budget: every export is a start and a collect; syncd keeps 3 requests in reserve and
#: GetCourse allows 100 per 2 hours, so more windows than this would wait hours.
MAX_WINDOWS = 45
TARGET_ROWS_PER_SECOND = 20_000
TARGET_RSS_MB = 100


def syncd_env(db_url: str, base_url: str = "", **more: str) -> dict[str, str]:
    env = {
        **os.environ,
        "SYNCD_DATABASE__URL": db_url,
        "SYNCD_GETCOURSE__BASE_URL": base_url,
        "SYNCD_GETCOURSE__API_KEY": KEY,
        "SYNCD_GETCOURSE__POLL__EXPORTS": "deals",
        "SYNCD_LOG__FORMAT": "json",
        "SYNCD_LOG__LEVEL": "warning",
        **more,
    }
    env.pop("SYNCD_CONFIG", None)  # the workdir holds no syncd.toml: defaults + these only
    return env


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    rows: int
    step_seconds: int
    buyers: int = 1000

    @property
    def since(self) -> date:
        return START.date()

    @property
    def until(self) -> date:
        """The day of the last deal."""
        return (START + timedelta(seconds=(self.rows - 1) * self.step_seconds)).date()

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1

    @property
    def paid(self) -> int:
        return (self.rows + PAID_EVERY - 1) // PAID_EVERY

    def expected_events(self) -> dict[str, int]:
        return {"deal.created": self.rows, "deal.paid": self.paid, "deal.status_changed": self.paid}

    def window_days(self, spec: str) -> int:
        return self.days if spec == "all" else int(spec)

    def windows(self, spec: str) -> int:
        return math.ceil(self.days / self.window_days(spec))


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    db: str
    windows: int
    window_days: int
    command: list[str]
    seconds: float = 0.0
    collect_seconds: float | None = None  # the first collect request -> exit
    rows_reported: int | None = None
    events: dict[str, int] = field(default_factory=dict)
    idle_rss_kb: int | None = None  # `syncd run`, ready, poller off
    precollect_rss_kb: int | None = None  # the backfill process just before its first collect
    peak_rss_kb: int | None = None  # the backfill process's VmHWM (wait4 rusage)
    sampled_peak_kb: int | None = None
    cpu_seconds: float | None = None  # the backfill process's user + system
    switches: tuple[int, int] = (0, 0)  # its voluntary (waited) / involuntary (preempted)
    server_cpu_seconds: float | None = None
    #: PostgreSQL: the CPU of the server processes serving the backfill's connections
    #: (sampled every DB_CPU_EVERY s while they live; None on SQLite, which is in-process)
    db_cpu_seconds: float | None = None
    exit_code: int | None = None
    timed_out: bool = False  # killed after --timeout-minutes
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s, VmRSS kB)
    stored: list[tuple[float, int]] = field(default_factory=list)  # (s, events stored)
    problems: list[str] = field(default_factory=list)

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    @property
    def growth_kb(self) -> int | None:
        if self.peak_rss_kb is None or self.idle_rss_kb is None:
            return None
        return self.peak_rss_kb - self.idle_rss_kb


def start_export_server(plan: Plan, workdir: Path, label: str) -> tuple[Child, str]:
    argv = [
        sys.executable,
        str(EXPORT_SERVER),
        "--port",
        "0",
        "--key",
        KEY,
        "--rows",
        str(plan.rows),
        "--step-seconds",
        str(plan.step_seconds),
        "--buyers",
        str(plan.buyers),
    ]
    out = workdir / f"export-server-{label}.out"
    server = Child("export server", argv, workdir / f"export-server-{label}.log", dict(os.environ))
    server.spawn(stdout=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not server.alive():
            raise server.died()
        first = tail(out, 1000).splitlines()[:1]
        if first and first[0].startswith("http://"):
            print(f"  $ {shlex.join(argv)}\n    pid {server.pid}, {first[0]}", flush=True)
            return server, first[0]
        time.sleep(0.05)
    server.kill()
    raise BenchError(f"export server not listening in 60s:\n{tail(server.log)}")


def first_collect_at(server_out: Path) -> float | None:
    """CLOCK_MONOTONIC of the server's first collect request (its own log line)."""
    for line in tail(server_out, 100_000).splitlines():
        match = re.match(r"t=([\d.]+) request GET /pl/api/account/exports/", line)
        if match:
            return float(match.group(1))
    return None


def daemon_idle_rss(db: Database, base_url: str, workdir: Path, label: str) -> int:
    """VmRSS (kB) of a plain `syncd run` on this database, ready and idle (poller off)."""
    port = free_port()
    env = syncd_env(
        db.url,
        base_url,
        SYNCD_HTTP__HOST=LOOPBACK,
        SYNCD_HTTP__PORT=str(port),
        SYNCD_HTTP__TOKEN="bench-token",
        SYNCD_GETCOURSE__POLL__INTERVAL="0",
    )
    log = workdir / f"syncd-run-{label}.log"
    daemon = harness.Server("syncd run", [str(SYNCD), "run"], port, log, env)
    with harness.running(daemon, "/readyz"):
        time.sleep(2)  # steady: imports done, pools opened, first scheduler ticks
        samples = harness.status_samples(daemon.pid, ("VmRSS",), 10, SAMPLE_EVERY)["VmRSS"]
        code = daemon.stop()
    if code != 0:
        raise BenchError(f"syncd run exited {code} on SIGTERM:\n{tail(daemon.log)}")
    if not samples:
        raise BenchError("could not read the idle daemon's VmRSS")
    print(f"  idle `syncd run` (poller off): VmRSS {samples[-1] / 1024:.0f} MiB", flush=True)
    return samples[-1]


def run_backfill(
    db: Database, plan: Plan, spec: str, workdir: Path, timeout: float, label: str
) -> Run:
    harness.migrate(db, workdir, echo=True)
    server, base_url = start_export_server(plan, workdir, label)
    with cleaned_up(server):
        idle = daemon_idle_rss(db, base_url, workdir, label)
        command = [
            str(SYNCD),
            "backfill",
            "--since",
            plan.since.isoformat(),
            "--until",
            plan.until.isoformat(),
            "--window-days",
            str(plan.window_days(spec)),
        ]
        run = Run(db.kind, plan.windows(spec), plan.window_days(spec), command, idle_rss_kb=idle)
        env = syncd_env(db.url, base_url)
        shown = " ".join(
            f"{k}={v}" for k, v in env.items() if k.startswith("SYNCD_") and k not in os.environ
        )
        print(f"  $ {shown} \\\n      {shlex.join(command)}", flush=True)
        backfill = Child("syncd backfill", command, workdir / f"backfill-{label}.err", env)
        stdout = workdir / f"backfill-{label}.out"
        with cleaned_up(backfill):
            began = time.monotonic()
            backfill.spawn(stdout=stdout)
            status, usage = watch(backfill, db, run, began, timeout)
            ended = time.monotonic()
        run.seconds = ended - began
        run.exit_code = os.waitstatus_to_exitcode(status)
        run.peak_rss_kb = int(usage.ru_maxrss)  # kB on Linux: the process's VmHWM
        run.cpu_seconds = usage.ru_utime + usage.ru_stime
        run.switches = (usage.ru_nvcsw, usage.ru_nivcsw)
        run.server_cpu_seconds = cpu_seconds(server.pid)
        collect_at = first_collect_at(workdir / f"export-server-{label}.out")
        if collect_at is not None and collect_at >= began:
            run.collect_seconds = ended - collect_at
            before = [rss for t, rss in run.timeline if t <= collect_at - began]
            run.precollect_rss_kb = before[-1] if before else None
        server.stop()
    report = tail(stdout, 5)
    match = re.search(r"backfill \S+: (\d+) exports, (\d+) rows", report)
    run.rows_reported = int(match.group(2)) if match else None
    if run.timed_out:
        run.problems.append(
            f"syncd backfill still running after {timeout:.0f} s: killed "
            "(events: what it had stored by then)"
        )
    elif run.exit_code != 0:
        run.problems.append(f"syncd backfill exited {run.exit_code}:\n{tail(backfill.log)}")
    elif match is None:
        run.problems.append(f"syncd backfill printed no summary: {report!r}")
    else:
        if int(match.group(1)) != run.windows:
            run.problems.append(f"{match.group(1)} exports read, expected {run.windows}")
        if run.rows_reported != plan.rows:
            run.problems.append(f"{run.rows_reported} rows read, expected {plan.rows}")
    counted = db.query("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind")
    run.events = {str(kind): int(str(n)) for kind, n in counted}
    if run.events != plan.expected_events() and not run.timed_out:
        run.problems.append(f"events stored {run.events}, expected {plan.expected_events()}")
    # JSON lines on stderr: log records (warning and up) and progress reports; only the
    # former are complaints
    complaints = [
        line
        for line in tail(backfill.log, 100_000).splitlines()
        if line.startswith("{") and not line.startswith('{"progress"')
    ]
    if complaints:
        run.problems.append(
            f"{len(complaints)} warning/error log lines, first: {complaints[0][:300]}"
        )
    return run


def watch(
    backfill: Child, db: Database, run: Run, began: float, timeout: float
) -> tuple[int, resource.struct_rusage]:
    """Sample VmRSS until the process exits; reap it with wait4 (exact peak RSS, CPU).

    Every PROGRESS_EVERY seconds it also notes how many events are stored so far; on
    PostgreSQL, every DB_CPU_EVERY seconds, the CPU time of the server processes of the
    database's other connections (the backfill's).
    """
    assert backfill.process is not None
    pid = backfill.pid
    looked = cpu_looked = began
    with BackendCpu(db) as backends:
        while True:
            rss = proc_status(pid, "VmRSS")
            if rss is not None:
                run.timeline.append((time.monotonic() - began, rss))
            if time.monotonic() - looked >= PROGRESS_EVERY:
                looked = time.monotonic()
                stored = db.events_so_far()
                if stored is not None:
                    run.stored.append((looked - began, stored))
            if time.monotonic() - cpu_looked >= DB_CPU_EVERY:
                cpu_looked = time.monotonic()
                backends.sample()
            reaped, status, usage = os.wait4(pid, os.WNOHANG)
            if reaped == pid:
                backfill.process.returncode = os.waitstatus_to_exitcode(status)
                run.sampled_peak_kb = max((r for _, r in run.timeline), default=None)
                run.db_cpu_seconds = backends.total()
                return status, usage
            if time.monotonic() - began > timeout and not run.timed_out:
                run.timed_out = True  # reaped (with its rusage) on the next turn
                backfill.process.kill()
            time.sleep(SAMPLE_EVERY)


class BackendCpu:
    """PostgreSQL: user + system CPU of the server processes of the other connections to
    the bench's database, as last seen (a process's time counts up to its last sample).

    The server runs on this machine (127.0.0.1), so its processes' /proc entries are
    readable; on SQLite (in-process) or when they are not, ``total()`` is None.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.seen: dict[int, float] = {}
        self.conn: Any = None  # a psycopg connection (imported only for PostgreSQL)

    def __enter__(self) -> BackendCpu:
        if self.db.kind == "postgres" and self.db.pg_conninfo is not None:
            import psycopg

            try:
                self.conn = psycopg.connect(self.db.pg_conninfo, autocommit=True)
            except psycopg.Error:
                self.conn = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()

    def sample(self) -> None:
        if self.conn is None:
            return
        try:
            found = self.conn.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        except Exception:
            return
        for (backend,) in found:
            used = cpu_seconds(int(backend))
            if used is not None:
                self.seen[int(backend)] = max(used, self.seen.get(int(backend), 0.0))

    def total(self) -> float | None:
        return sum(self.seen.values()) if self.conn is not None and self.seen else None


def describe(run: Run) -> None:
    mib = "{:.0f} MiB".format
    print(
        ("  killed at the timeout" if run.timed_out else f"  exit {run.exit_code}")
        + f" after {run.seconds:.1f} s"
        + (f" ({run.collect_seconds:.1f} s from the first collect)" if run.collect_seconds else "")
        + f"; rows {run.rows_reported}, events {run.events}",
        flush=True,
    )
    if run.timeline:
        picks = sorted({round(i * (len(run.timeline) - 1) / 10) for i in range(11)})
        points = ", ".join(
            f"{run.timeline[i][0]:.0f}s {run.timeline[i][1] / 1024:.0f}" for i in picks
        )
        print(f"  VmRSS timeline (MiB): {points}", flush=True)
    if len(run.stored) > 1:
        marks = [(0.0, 0), *run.stored, (run.seconds, run.total_events)]
        picks = sorted({round(i * (len(marks) - 1) / 10) for i in range(11)})
        rates = []
        for a, b in itertools.pairwise(picks):
            (t0, n0), (t1, n1) = marks[a], marks[b]
            if t1 > t0:
                rates.append(f"{t0:.0f}-{t1:.0f}s {(n1 - n0) / (t1 - t0):,.0f}")
        print(f"  events/s by interval: {', '.join(rates)}", flush=True)
    print(
        "  peak RSS "
        + (mib(run.peak_rss_kb / 1024) if run.peak_rss_kb else "?")
        + f" (max sampled {mib((run.sampled_peak_kb or 0) / 1024)}), "
        + f"backfill CPU {run.cpu_seconds or 0:.1f} s (context switches: {run.switches[0]:,} "
        + f"voluntary, {run.switches[1]:,} involuntary), "
        + f"export server CPU {run.server_cpu_seconds or 0:.1f} s"
        + (
            f", PostgreSQL backends CPU {run.db_cpu_seconds:.1f} s"
            if run.db_cpu_seconds is not None
            else ""
        ),
        flush=True,
    )
    for problem in run.problems:
        print(f"  PROBLEM: {problem}", flush=True)


# --------------------------------------------------------------------------- report


def rows_per_second(run: Run, plan: Plan) -> str:
    """rows/s; for a run killed at the timeout, estimated from the events stored by then."""
    if not run.seconds:
        return "-"
    if run.timed_out:
        per_row = sum(plan.expected_events().values()) / plan.rows
        return f"~{run.total_events / per_row / run.seconds:,.0f}"
    return f"{(run.rows_reported or 0) / run.seconds:,.0f}"


def rows_done(run: Run, plan: Plan) -> float:
    """Rows read; for a run killed at the timeout, estimated from the events stored."""
    if run.timed_out:
        return run.total_events / (sum(plan.expected_events().values()) / plan.rows)
    return float(run.rows_reported or 0)


def per_100k(seconds: float | None, run: Run, plan: Plan) -> str:
    rows = rows_done(run, plan)
    return f"{seconds * 100_000 / rows:.2f}" if seconds is not None and rows else "-"


def summary(runs: list[Run], plan: Plan) -> None:
    def mib(kb: int | None) -> str:
        return f"{kb / 1024:.0f} MiB" if kb is not None else "?"

    head = (
        "db",
        "windows",
        "rows",
        "events",
        "seconds",
        "rows/s",
        "events/s",
        "idle RSS",
        "pre-collect",
        "peak RSS",
        "peak-idle",
        "CPU",
        "CPU s/100k",
        "DB CPU s/100k",
        "exit",
    )
    table = [head]
    for run in runs:
        rows = run.rows_reported or 0
        table.append(
            (
                run.db,
                f"{run.windows} x {run.window_days}d",
                f"{rows:,}" if not run.timed_out else "timeout",
                f"{run.total_events:,}",
                f"{run.seconds:.1f}",
                rows_per_second(run, plan),
                f"{run.total_events / run.seconds:,.0f}" if run.seconds else "-",
                mib(run.idle_rss_kb),
                mib(run.precollect_rss_kb),
                mib(run.peak_rss_kb),
                mib(run.growth_kb),
                f"{100 * run.cpu_seconds / run.seconds:.0f}%"
                if run.cpu_seconds is not None and run.seconds
                else "?",
                per_100k(run.cpu_seconds, run, plan),
                per_100k(run.db_cpu_seconds, run, plan),
                "killed" if run.timed_out else str(run.exit_code),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    print("\n=== syncd backfill benchmark: one GetCourse deals export into the event log ===")
    print(f"machine : {machine()}")
    print(f"command : {command_line()}")
    print(
        f"data    : {plan.rows:,} deals, one every {plan.step_seconds} s from {START:%Y-%m-%d}, "
        f"{plan.since}..{plan.until} ({plan.days} days), every {PAID_EVERY}rd payed, "
        f"{plan.buyers:,} buyers in turn; expected "
        f"events {sum(plan.expected_events().values()):,} {plan.expected_events()}"
    )
    print("simulator: bench/big_export_server.py, its own process, on the same cores")
    print()
    for i, line in enumerate(table):
        print(
            "  ".join(
                cell.ljust(w) if j < 2 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print(
        "seconds = `syncd backfill` start to exit (interpreter start-up included); rows/s and "
        "events/s over those seconds; idle RSS = a ready `syncd run` on the same database, "
        "poller off; pre-collect = the backfill's VmRSS just before its first collect request; "
        "peak RSS = the backfill's VmHWM (wait4); CPU = its user+system time / seconds; "
        "CPU s/100k = that time per 100,000 rows (the figure to compare on a busy machine); "
        "DB CPU s/100k = the same for the PostgreSQL server processes of its connections "
        "(sampled every 0.2 s; SQLite works inside syncd's process: -); "
        "~rows/s = a run killed at the timeout, from the events it had stored."
    )
    for run in runs:
        if run.exit_code != 0 or run.problems:
            continue
        rate = (run.rows_reported or 0) / run.seconds
        growth = (run.growth_kb or 0) / 1024
        print(
            f"target [{run.db}, {run.windows} x {run.window_days}d]: peak-idle {growth:.0f} MiB "
            f"({'ok' if growth <= TARGET_RSS_MB else 'MISSED'}: <= {TARGET_RSS_MB} MB)"
            + f", {rate:,.0f} rows/s ({'ok' if rate >= TARGET_ROWS_PER_SECOND else 'MISSED'}: "
            f">= {TARGET_ROWS_PER_SECOND:,}, both databases)"
        )
    for run in runs:
        for problem in run.problems:
            print(f"FAIL [{run.db}, {run.windows} windows]: {problem}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.parser(
        "Benchmark `syncd backfill` over a huge GetCourse deals export served by the "
        "simulator: rows/s into the event log and the peak RSS against an idle daemon's, "
        "on SQLite and PostgreSQL."
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="deals in the export (default 1,000,000)"
    )
    parser.add_argument(
        "--step-seconds",
        type=int,
        default=30,
        help="seconds between deals' creation (default 30: 1,000,000 deals span 348 days)",
    )
    parser.add_argument(
        "--buyers",
        type=int,
        default=1000,
        help="distinct buyers, each deal the next one's (default 1,000: after the first "
        "1,000 deals every buyer is known; --buyers equal to --rows makes every deal a "
        "new person, so the backfill also creates an identity per deal)",
    )
    parser.add_argument(
        "--window-days",
        default="all,30",
        help="comma-separated window sizes to run, in days; `all` = one export of every row "
        "(default: all,30)",
    )
    parser.add_argument(
        "--timeout-minutes",
        type=float,
        default=20,
        help="give up on a backfill after this long (default 20)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rows <= 100_000_000:
        parser.error("--rows must be between 1 and 100,000,000")
    if not 1 <= args.step_seconds <= 86_400:
        parser.error("--step-seconds must be between 1 and 86400")
    if args.timeout_minutes <= 0:
        parser.error("--timeout-minutes must be positive")
    if not 1 <= args.buyers <= args.rows:
        parser.error("--buyers must be between 1 and --rows")
    args.plan = Plan(args.rows, args.step_seconds, args.buyers)
    args.specs = [s.strip() for s in args.window_days.split(",") if s.strip()]
    if not args.specs:
        parser.error("--window-days: name at least one window size")
    for spec in args.specs:
        if spec != "all" and not (spec.isdigit() and int(spec) >= 1):
            parser.error(f"--window-days: {spec!r} is neither `all` nor a number of days")
        if args.plan.windows(spec) > MAX_WINDOWS:
            parser.error(
                f"--window-days {spec}: {args.plan.windows(spec)} exports over "
                f"{args.plan.days} days would exceed GetCourse's budget (at most "
                f"{MAX_WINDOWS} exports); use wider windows"
            )
    return args


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and a SIGINT that a background shell would ignore) unwind through the
    # finally blocks: children are killed and the PostgreSQL databases dropped.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    if not SYNCD.exists():
        print(f"{SYNCD} not found: run this with the project's venv python", file=sys.stderr)
        return 1
    plan: Plan = args.plan
    kinds = ["sqlite", "postgres"] if args.db == "all" else [args.db]
    runs: list[Run] = []
    print(f"machine: {machine()}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="syncd-bench-backfill-") as tmp:
            workdir = Path(tmp)
            for kind in kinds:
                for spec in args.specs:
                    label = f"{kind}-{spec}"
                    print(
                        f"\n--- {kind}, {plan.windows(spec)} export(s) of "
                        f"{plan.window_days(spec)} days, {plan.rows:,} rows ---",
                        flush=True,
                    )
                    with harness.database(kind, workdir, args.pg_admin, label) as db:
                        run = run_backfill(
                            db, plan, spec, workdir, args.timeout_minutes * 60, label
                        )
                        describe(run)
                    runs.append(run)
    except BenchError as exc:
        if runs:
            summary(runs, plan)
        print(f"\nFAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if runs:
            summary(runs, plan)
        print(
            f"\ninterrupted ({exc or 'SIGINT'}): processes stopped, databases dropped",
            file=sys.stderr,
        )
        return 130
    summary(runs, plan)
    return 1 if any(run.problems or run.exit_code != 0 for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
