"""Ingest benchmark: how many distinct links per second a real ``syncd run`` stores.

For each database (SQLite in a temporary directory, PostgreSQL in a throwaway database) it
starts ``syncd run`` on a free loopback port and drives it with ``wrk`` (N keep-alive
connections, a fixed duration, every request a person never seen before, see
bench/links.lua), then counts the rows in ``identities``. The ceiling is the same load
against a raw ASGI app on the same server stack (bench/ceiling_app.py), measured right
after each syncd run; the ratio syncd/ceiling is what syncd itself costs.

``--route bot`` drives ``POST /v1/salebot/events/started`` instead (every request a new
bot subscriber, bench/bot_events.lua) and counts ``bot.started`` events; ``--route both``
measures the two routes one after the other in the same run.

Run ``bash bench/setup.sh`` once (it installs wrk), then::

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 32] [--db all] [--route links]

Exits 1 if wrk is missing, if any response was not 2xx, or if the rows stored do not
match the responses wrk counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import (
    LOOPBACK,
    SYNCD,
    BenchError,
    Database,
    Server,
    command_line,
    cpu_seconds,
    free_port,
    http,
    machine,
    proc_status,
    running,
    syncd_env,
    tail,
)
from harness import table as render

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "links.lua"
#: per route: the wrk script and what counts the rows it stores
ROUTES = {
    "links": (BENCH / "links.lua", "SELECT count(*) FROM identities"),
    "bot": (BENCH / "bot_events.lua", "SELECT count(*) FROM events WHERE kind = 'bot.started'"),
}
CEILING_APP = BENCH / "ceiling_app.py"
TOKEN = "bench-token-7c1e2f"
#: Each wrk thread numbers its people from (thread + 1) * STRIDE: disjoint ranges.
STRIDE = 1_000_000_000
#: The one person the preflight request creates (below every thread's range).
PREFLIGHT_ID = 7


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    command: list[str]
    requests: int
    seconds: float
    rps: float
    p50: str
    p99: str
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    output: str = ""

    @property
    def ok_responses(self) -> int:
        return self.requests - self.non_2xx

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise BenchError(f"cannot read wrk latency {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, command: list[str]) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchError(f"wrk output has no {pattern!r}:\n{output}")
        return match

    total = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),")
    p50 = find(r"^\s*50%\s+(\S+)").group(1)
    p99 = find(r"^\s*99%\s+(\S+)").group(1)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    return WrkResult(
        command=command,
        requests=int(total.group(1)),
        seconds=to_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50=p50,
        p99=p99,
        p50_ms=to_ms(p50),
        p99_ms=to_ms(p99),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors,
        output=output,
    )


def run_wrk(wrk: str, port: int, args: argparse.Namespace, lua: Path = LUA) -> WrkResult:
    command = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.seconds}s",
        "--latency",
        "-s",
        str(lua),
        f"http://{LOOPBACK}:{port}",
        "--",
        TOKEN,
        str(STRIDE),
    ]
    print(f"  $ {shlex.join(command)}", flush=True)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.seconds + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_wrk(done.stdout, command)


# --------------------------------------------------------------------------- runs


@dataclass
class Row:
    db: str
    wrk: WrkResult
    rows_stored: int
    peak_rss_kb: int | None
    cpu_percent: float | None
    exit_code: int
    ceiling: WrkResult | None = None
    problems: list[str] = field(default_factory=list)
    route: str = "links"

    @property
    def ratio(self) -> float | None:
        return self.wrk.rps / self.ceiling.rps if self.ceiling else None


def run_syncd(
    db: Database, workdir: Path, wrk: str, args: argparse.Namespace, route: str = "links"
) -> Row:
    lua, counting = ROUTES[route]
    port = free_port()
    env = syncd_env(
        db.url,
        port,
        SYNCD_HTTP__TOKEN=TOKEN,
        SYNCD_LOG__LEVEL="info",
        SYNCD_DATABASE__DURABILITY=args.durability,
    )
    log = workdir / f"syncd-{db.kind}.log"
    daemon = Server(f"syncd ({db.kind})", [str(SYNCD), "run"], port, log, env)
    with running(daemon, "/readyz"):
        print(f"  syncd pid {daemon.pid} on {daemon.base_url}, log {log}", flush=True)
        preflight(daemon)
        before = db.count(counting)
        cpu_before = cpu_seconds(daemon.pid)
        result = run_wrk(wrk, port, args, lua)
        cpu_after = cpu_seconds(daemon.pid)
        peak_rss = proc_status(daemon.pid, "VmHWM")
        exit_code = daemon.stop()
    # Counted after a graceful stop: requests still in flight when wrk hung up are drained.
    stored = db.count(counting) - before
    cpu = (
        100 * (cpu_after - cpu_before) / result.seconds
        if cpu_before is not None and cpu_after is not None
        else None
    )
    row = Row(db.kind, result, stored, peak_rss, cpu, exit_code, route=route)
    if result.non_2xx:
        row.problems.append(f"{result.non_2xx} non-2xx responses: links/s is NOT a valid figure")
    if exit_code != 0:
        row.problems.append(f"syncd exited {exit_code} on SIGTERM (expected 0)")
    # wrk counts a response only if it arrived before the deadline; a request in flight
    # then (at most one per connection, plus any wrk timed out) may still be stored.
    slack = args.connections + result.errors
    if not result.ok_responses <= stored <= result.ok_responses + slack:
        row.problems.append(
            f"rows stored {stored} do not match wrk's {result.ok_responses} 2xx responses "
            f"(allowed: up to {slack} more, for requests in flight at the deadline)"
        )
    if row.problems:
        print(f"  syncd log tail:\n{tail(log)}")
    return row


def preflight(daemon: Server) -> None:
    """One link by hand, so a misconfiguration fails with syncd's own words."""
    body = json.dumps(
        {
            "email": f"u{PREFLIGHT_ID}@bench-school.ru",
            "telegram_id": str(PREFLIGHT_ID),
            "client_id": str(PREFLIGHT_ID),
        }
    ).encode()
    status, answer = http("POST", f"{daemon.base_url}/v1/links?token={TOKEN}", body, timeout=15)
    # "unchanged": the second route of --route both, on the same database
    if status != 200 or json.loads(answer).get("status") not in ("created", "unchanged"):
        raise BenchError(f"preflight POST /v1/links answered {status}: {answer!r}")


def run_ceiling(workdir: Path, wrk: str, args: argparse.Namespace) -> WrkResult:
    port = free_port()
    log = workdir / f"ceiling-{port}.log"
    server = Server(
        "ceiling app", [sys.executable, str(CEILING_APP), str(port)], port, log, dict(os.environ)
    )
    with running(server, "/"):
        print(f"  ceiling app pid {server.pid} on {server.base_url}", flush=True)
        result = run_wrk(wrk, port, args)
        server.stop()
    return result


def describe(result: WrkResult, what: str) -> None:
    errors = ", ".join(f"{k} {v}" for k, v in result.socket_errors.items() if v) or "none"
    print(
        f"  {what}: {result.rps:,.0f} req/s, {result.requests:,} requests in "
        f"{result.seconds:.2f}s, p50 {result.p50}, p99 {result.p99}, "
        f"non-2xx {result.non_2xx}, socket errors: {errors}",
        flush=True,
    )


# --------------------------------------------------------------------------- report


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else "?"


def summary(rows: list[Row], args: argparse.Namespace, wrk: str) -> None:
    head = (
        "db",
        "route",
        "req/s",
        "p50",
        "p99",
        "non-2xx",
        "2xx (wrk)",
        "rows stored",
        "ceiling req/s",
        "ratio",
        "peak RSS",
        "syncd CPU",
    )
    table: list[tuple[str, ...]] = [head]
    for row in rows:
        table.append(
            (
                row.db,
                row.route,
                f"{row.wrk.rps:,.0f}",
                row.wrk.p50,
                row.wrk.p99,
                str(row.wrk.non_2xx),
                f"{row.wrk.ok_responses:,}",
                f"{row.rows_stored:,}",
                f"{row.ceiling.rps:,.0f}" if row.ceiling else "skipped",
                f"{row.ratio:.3f}" if row.ratio is not None else "-",
                f"{row.peak_rss_kb / 1024:.0f} MiB" if row.peak_rss_kb else "?",
                f"{row.cpu_percent:.0f}%" if row.cpu_percent is not None else "?",
            )
        )
    print(
        "\n=== syncd ingest benchmark: POST /v1/links (links) and /v1/salebot/events/started "
        "(bot), every request a new person ==="
    )
    print(f"machine : {machine()}")
    print(f"wrk     : {wrk_version(wrk)}")
    print(f"command : {command_line()}")
    print(
        f"load    : wrk -t{args.threads} -c{args.connections} -d{args.seconds}s --latency, "
        "load generator on the same cores as the server; "
        f"database.durability = {args.durability} (SQLite)"
    )
    print()
    print(render(table))
    print()
    print(
        "req/s = wrk Requests/sec against syncd; ceiling = the same load against a raw ASGI "
        "app on the same uvicorn stack (measured right after); ratio = links/s / ceiling; "
        "peak RSS = syncd VmHWM before SIGTERM; syncd CPU = its CPU time / wrk duration."
    )
    for row in rows:
        for problem in row.problems:
            print(f"FAIL [{row.db}]: {problem}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = harness.parser(
        "Benchmark syncd's POST /v1/links with wrk: distinct links per second on SQLite "
        "and PostgreSQL, against the ceiling of a raw ASGI app on the same server stack.",
        epilog="Needs wrk: run `bash bench/setup.sh` once. Everything runs on 127.0.0.1.",
    )
    parser.add_argument(
        "--seconds", type=int, default=10, help="duration of each wrk run (1-300, default 10)"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="concurrent keep-alive connections (32)"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--skip-ceiling", action="store_true", help="do not measure the raw ASGI ceiling"
    )
    parser.add_argument(
        "--route",
        choices=("links", "bot", "both"),
        default="links",
        help="POST /v1/links, POST /v1/salebot/events/started, or both in one run",
    )
    parser.add_argument(
        "--durability",
        choices=("full", "normal"),
        default="full",
        help="syncd's database.durability (SQLite: fsync per commit or not; default full)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 300:
        parser.error("--seconds must be between 1 and 300")
    if not 1 <= args.connections <= 1000:
        parser.error("--connections must be between 1 and 1000")
    if not 1 <= args.threads <= args.connections:
        parser.error("--threads must be between 1 and --connections")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: run `bash bench/setup.sh`", file=sys.stderr)
        return 1
    rows: list[Row] = []

    def measure(workdir: Path) -> int:
        for kind in harness.kinds(args):
            print(f"\n--- {kind} ---", flush=True)
            with harness.database(kind, workdir, args.pg_admin) as db:
                routes = ["links", "bot"] if args.route == "both" else [args.route]
                measured = [run_syncd(db, workdir, wrk, args, route) for route in routes]
            ceiling = None if args.skip_ceiling else run_ceiling(workdir, wrk, args)
            for row in measured:
                describe(row.wrk, f"syncd {row.route}")
                print(
                    f"  rows stored {row.rows_stored:,} (wrk 2xx {row.wrk.ok_responses:,}), "
                    f"peak RSS {row.peak_rss_kb} kB, exit {row.exit_code}",
                    flush=True,
                )
                row.ceiling = ceiling
                rows.append(row)
            if ceiling is not None:
                describe(ceiling, "ceiling")
        summary(rows, args, wrk)
        return 1 if any(row.problems for row in rows) else 0

    return harness.bench_main(measure, report=lambda: rows and summary(rows, args, wrk))


if __name__ == "__main__":
    sys.exit(main())
