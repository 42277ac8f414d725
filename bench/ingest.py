"""Ingest benchmark: how many distinct links per second a real ``syncd run`` stores.

For each database (SQLite in a temporary directory, PostgreSQL in a throwaway database) it
starts ``syncd run`` on a free loopback port and drives it with ``wrk`` (N keep-alive
connections, a fixed duration, every request a person never seen before, see
bench/links.lua), then counts the rows in ``identities``. The ceiling is the same load
against a raw ASGI app on the same server stack (bench/ceiling_app.py), measured right
after each syncd run; the ratio syncd/ceiling is what syncd itself costs.

Run ``bash bench/setup.sh`` once (it installs wrk), then::

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 32] [--db all]

Exits 1 if wrk is missing, if any response was not 2xx, or if the rows stored do not
match the responses wrk counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "links.lua"
CEILING_APP = BENCH / "ceiling_app.py"
SYNCD = Path(sys.executable).parent / "syncd"
TOKEN = "bench-token-7c1e2f"
PG_ADMIN = os.environ.get("SYNCD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Each wrk thread numbers its people from (thread + 1) * STRIDE: disjoint ranges.
STRIDE = 1_000_000_000
#: The one person the preflight request creates (below every thread's range).
PREFLIGHT_ID = 7
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """The benchmark could not produce a trustworthy figure."""


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, timeout: float = 2) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def proc_status(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmHWM, VmRSS), in kB; None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """A child process serving HTTP on a loopback port, its output in a log file."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.port = port
        self.log = log
        self.env = env
        self.base_url = f"http://{LOOPBACK}:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready_path: str, timeout: float = 60) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.log.parent, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited {self.process.returncode} before it was ready:\n"
                    f"{tail(self.log)}"
                )
            try:
                if http("GET", self.base_url + ready_path, timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"{self.name} not ready in {timeout:.0f}s:\n{tail(self.log)}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise BenchError(f"{self.name} did not stop within {timeout:.0f}s of SIGTERM") from None

    def kill(self) -> None:
        """Last resort, from a finally: no-op if already stopped."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def running(server: Server, ready_path: str) -> Iterator[Server]:
    try:
        server.start(ready_path)
        yield server
    finally:
        server.kill()


# --------------------------------------------------------------------------- databases


@dataclass
class Database:
    kind: str  # "sqlite" | "postgres"
    url: str  # what syncd gets as SYNCD_DATABASE__URL
    sqlite_path: Path | None = None
    pg_conninfo: str | None = None

    def count_identities(self) -> int:
        if self.sqlite_path is not None:
            with closing(sqlite3.connect(self.sqlite_path)) as conn:
                row = conn.execute("SELECT count(*) FROM identities").fetchone()
            return int(row[0])
        import psycopg

        assert self.pg_conninfo is not None
        with psycopg.connect(self.pg_conninfo, autocommit=True) as conn:
            result = conn.execute("SELECT count(*) FROM identities").fetchone()
        assert result is not None
        return int(result[0])


@contextmanager
def sqlite_database(workdir: Path) -> Iterator[Database]:
    path = workdir / "syncd.db"
    yield Database("sqlite", f"sqlite:///{path}", sqlite_path=path)


@contextmanager
def postgres_database(admin_url: str) -> Iterator[Database]:
    """A throwaway database, dropped (WITH FORCE) whatever happens."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url).set(drivername="postgresql")
    if admin.host not in (LOOPBACK, "localhost", "::1"):
        raise BenchError(f"PostgreSQL must be on the loopback, not {admin.host!r}")
    name = f"syncd_bench_{uuid.uuid4().hex[:12]}"
    admin_conninfo = admin.render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL not reachable at {admin_url}: {exc}") from None
    try:
        url = admin.set(database=name).render_as_string(hide_password=False)
        yield Database("postgres", url, pg_conninfo=url)
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=5) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))
        print(f"  dropped PostgreSQL database {name}")


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


def run_wrk(wrk: str, port: int, args: argparse.Namespace) -> WrkResult:
    command = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.seconds}s",
        "--latency",
        "-s",
        str(LUA),
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

    @property
    def ratio(self) -> float | None:
        return self.wrk.rps / self.ceiling.rps if self.ceiling else None


def run_syncd(db: Database, workdir: Path, wrk: str, args: argparse.Namespace) -> Row:
    port = free_port()
    env = {
        **os.environ,
        "SYNCD_DATABASE__URL": db.url,
        "SYNCD_HTTP__HOST": LOOPBACK,
        "SYNCD_HTTP__PORT": str(port),
        "SYNCD_HTTP__TOKEN": TOKEN,
        "SYNCD_LOG__FORMAT": "json",
        "SYNCD_LOG__LEVEL": "info",
    }
    env.pop("SYNCD_CONFIG", None)
    log = workdir / f"syncd-{db.kind}.log"
    daemon = Server(f"syncd ({db.kind})", [str(SYNCD), "run"], port, log, env)
    with running(daemon, "/readyz"):
        print(f"  syncd pid {daemon.pid} on {daemon.base_url}, log {log}", flush=True)
        preflight(daemon)
        before = db.count_identities()
        cpu_before = cpu_seconds(daemon.pid)
        result = run_wrk(wrk, port, args)
        cpu_after = cpu_seconds(daemon.pid)
        peak_rss = proc_status(daemon.pid, "VmHWM")
        exit_code = daemon.stop()
    # Counted after a graceful stop: requests still in flight when wrk hung up are drained.
    stored = db.count_identities() - before
    cpu = (
        100 * (cpu_after - cpu_before) / result.seconds
        if cpu_before is not None and cpu_after is not None
        else None
    )
    row = Row(db.kind, result, stored, peak_rss, cpu, exit_code)
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
    if status != 200 or json.loads(answer).get("status") != "created":
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


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"nproc {cores} ({cpu or platform.machine()}), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else "?"


def summary(rows: list[Row], args: argparse.Namespace, wrk: str) -> None:
    head = (
        "db",
        "links/s",
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
    table = [head]
    for row in rows:
        table.append(
            (
                row.db,
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
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    print("\n=== syncd ingest benchmark: POST /v1/links, every request a new person ===")
    print(f"machine : {machine()}")
    print(f"wrk     : {wrk_version(wrk)}")
    print(f"command : {shlex.join(getattr(sys, 'orig_argv', sys.argv))}  (cwd {Path.cwd()})")
    print(
        f"load    : wrk -t{args.threads} -c{args.connections} -d{args.seconds}s --latency, "
        "load generator on the same cores as the server"
    )
    print()
    for i, line in enumerate(table):
        print(
            "  ".join(
                cell.ljust(w) if j == 0 else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print(
        "links/s = wrk Requests/sec against syncd; ceiling = the same load against a raw ASGI "
        "app on the same uvicorn stack (measured right after); ratio = links/s / ceiling; "
        "peak RSS = syncd VmHWM before SIGTERM; syncd CPU = its CPU time / wrk duration."
    )
    for row in rows:
        for problem in row.problems:
            print(f"FAIL [{row.db}]: {problem}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark syncd's POST /v1/links with wrk: distinct links per second on SQLite "
            "and PostgreSQL, against the ceiling of a raw ASGI app on the same server stack."
        ),
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
        "--db", choices=("sqlite", "postgres", "all"), default="all", help="default: all"
    )
    parser.add_argument(
        "--skip-ceiling", action="store_true", help="do not measure the raw ASGI ceiling"
    )
    parser.add_argument(
        "--pg-admin",
        default=PG_ADMIN,
        help="PostgreSQL URL to create/drop the throwaway database through "
        "(default $SYNCD_BENCH_PG or postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 300:
        parser.error("--seconds must be between 1 and 300")
    if not 1 <= args.connections <= 1000:
        parser.error("--connections must be between 1 and 1000")
    if not 1 <= args.threads <= args.connections:
        parser.error("--threads must be between 1 and --connections")
    return args


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (and a SIGINT that a background shell would ignore) unwind through the
    # finally blocks: the daemon is killed and the PostgreSQL database dropped.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed: run `bash bench/setup.sh`", file=sys.stderr)
        return 1
    if not SYNCD.exists():
        print(f"{SYNCD} not found: run this with the project's venv python", file=sys.stderr)
        return 1
    kinds = ["sqlite", "postgres"] if args.db == "all" else [args.db]
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="syncd-bench-") as tmp:
            workdir = Path(tmp)
            for kind in kinds:
                print(f"\n--- {kind} ---", flush=True)
                with (
                    sqlite_database(workdir)
                    if kind == "sqlite"
                    else postgres_database(args.pg_admin)
                ) as db:
                    row = run_syncd(db, workdir, wrk, args)
                describe(row.wrk, "syncd")
                print(
                    f"  rows stored {row.rows_stored:,} (wrk 2xx {row.wrk.ok_responses:,}), "
                    f"peak RSS {row.peak_rss_kb} kB, exit {row.exit_code}",
                    flush=True,
                )
                if not args.skip_ceiling:
                    row.ceiling = run_ceiling(workdir, wrk, args)
                    describe(row.ceiling, "ceiling")
                rows.append(row)
    except BenchError as exc:
        if rows:
            summary(rows, args, wrk)
        print(f"\nFAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(
            f"\ninterrupted ({exc or 'SIGINT'}): daemon stopped, databases dropped", file=sys.stderr
        )
        return 130
    summary(rows, args, wrk)
    return 1 if any(row.problems for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
