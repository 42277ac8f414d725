"""What every benchmark in bench/ shares: arguments, databases, processes, the report.

A new benchmark is its own measurement and little else: ``bench/latency.py`` is the
example — :func:`parser` for the common options, :func:`kinds` and :func:`database` for
a fresh SQLite file or PostgreSQL database per run, :class:`Server` / :func:`running`
for ``syncd run`` and simulators as child processes (:func:`syncd_env` for their
environment), :func:`machine` and :func:`table` for the report, :func:`bench_main` for
the temporary directory, signals and the exit code.

Everything runs on 127.0.0.1. PostgreSQL databases are created through ``--pg-admin``
(default ``$SYNCD_BENCH_PG`` or ``postgresql://postgres@127.0.0.1:5432/postgres``) and
dropped ``WITH (FORCE)`` whatever happens, SIGTERM and Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SYNCD = Path(sys.executable).parent / "syncd"
PG_ADMIN = os.environ.get("SYNCD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
LOOPBACK = "127.0.0.1"
KINDS = ("sqlite", "postgres")


class BenchError(Exception):
    """The benchmark could not produce a trustworthy figure."""


# --------------------------------------------------------------------------- arguments


def parser(description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--db``, ``--pg-admin``."""
    made = argparse.ArgumentParser(
        description=description,
        epilog=epilog or "Everything runs on 127.0.0.1; every run gets a fresh database.",
    )
    made.add_argument(
        "--db", choices=("sqlite", "postgres", "all"), default="all", help="default: all"
    )
    made.add_argument(
        "--pg-admin",
        default=PG_ADMIN,
        help="PostgreSQL URL to create/drop the throwaway databases through "
        "(default $SYNCD_BENCH_PG or postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    return made


def kinds(args: argparse.Namespace) -> list[str]:
    """The databases ``--db`` names, SQLite first."""
    return list(KINDS) if args.db == "all" else [args.db]


def int_list(low: int, high: int) -> Callable[[str], list[int]]:
    """An argparse type for ``16,64``: numbers between ``low`` and ``high``."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"want numbers like 16,64, got {text!r}") from None
        if not values or not all(low <= v <= high for v in values):
            raise argparse.ArgumentTypeError(f"each number must be between {low} and {high}")
        return values

    return parse


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


def http_status(url: str, timeout: float = 2) -> int:
    return http("GET", url, timeout=timeout)[0]


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


def status_samples(
    pid: int, keys: tuple[str, ...], samples: int = 10, every: float = 0.1
) -> dict[str, list[int]]:
    """``samples`` readings of each :func:`proc_status` key, ``every`` seconds apart (the
    readings that could not be made are left out)."""
    found: dict[str, list[int]] = {key: [] for key in keys}
    for _ in range(samples):
        for key in keys:
            value = proc_status(pid, key)
            if value is not None:
                found[key].append(value)
        time.sleep(every)
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A child process, its output in a log file; stopped by SIGTERM, killed as a last resort."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self, stdout: Path | None = None) -> None:
        with self.log.open("ab") as log, (stdout or self.log).open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=self.log.parent, env=self.env, stdout=out, stderr=log
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def died(self) -> BenchError:
        assert self.process is not None
        return BenchError(
            f"{self.name} exited {self.process.returncode} before it was ready:\n{tail(self.log)}"
        )

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
        """Last resort, from a finally: no-op if already stopped (or reaped)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


class Server(Child):
    """A child process serving HTTP on a loopback port."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, env: dict[str, str]):
        super().__init__(name, argv, log, env)
        self.port = port
        self.base_url = f"http://{LOOPBACK}:{port}"

    def start(self, ready_path: str, timeout: float = 60) -> None:
        """Spawn, then wait until ``GET ready_path`` answers 200."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self.died()
            try:
                if http_status(self.base_url + ready_path, timeout=1) == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"{self.name} not ready in {timeout:.0f}s:\n{tail(self.log)}")


@contextmanager
def cleaned_up(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.kill()


@contextmanager
def running(server: Server, ready_path: str) -> Iterator[Server]:
    """The server started and ready; killed on the way out if still running."""
    try:
        server.start(ready_path)
        yield server
    finally:
        server.kill()


def syncd_env(db_url: str, port: int | None = None, **more: str) -> dict[str, str]:
    """The environment of a syncd child: this one's, no ``SYNCD_*`` from outside, no config
    file (defaults + these), JSON logs, the given database and loopback port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env |= {"SYNCD_DATABASE__URL": db_url, "SYNCD_LOG__FORMAT": "json"}
    if port is not None:
        env |= {"SYNCD_HTTP__HOST": LOOPBACK, "SYNCD_HTTP__PORT": str(port)}
    return env | more


def migrate(
    db: Database, workdir: Path, env: dict[str, str] | None = None, *, echo: bool = False
) -> list[str]:
    """``syncd migrate`` on the database (in ``env``, else :func:`syncd_env`); returns the
    command. ``echo``: print the command and what it said."""
    command = [str(SYNCD), "migrate"]
    done = subprocess.run(
        command,
        cwd=workdir,
        env=env if env is not None else syncd_env(db.url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"syncd migrate exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    if echo:
        print(f"  $ {shlex.join(command)}\n    {done.stdout.strip()}", flush=True)
    return command


# --------------------------------------------------------------------------- databases


@dataclass
class Database:
    kind: str  # "sqlite" | "postgres"
    url: str  # what syncd gets as SYNCD_DATABASE__URL
    sqlite_path: Path | None = None
    pg_conninfo: str | None = None

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of one statement, on a connection of its own."""
        if self.sqlite_path is not None:
            with closing(sqlite3.connect(self.sqlite_path)) as conn:
                return [tuple(row) for row in conn.execute(statement).fetchall()]
        import psycopg

        assert self.pg_conninfo is not None
        with psycopg.connect(self.pg_conninfo, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(statement).fetchall()]  # type: ignore[arg-type]

    def count(self, query: str = "SELECT count(*) FROM identities") -> int:
        return int(self.query(query)[0][0])

    def events_so_far(self) -> int | None:
        """The highest event id (ids are sequential): a cheap read while syncd writes."""
        try:
            if self.sqlite_path is not None:
                uri = f"file:{self.sqlite_path}?mode=ro"
                with closing(sqlite3.connect(uri, uri=True, timeout=0.5)) as conn:
                    row = conn.execute("SELECT max(id) FROM events").fetchone()
            else:
                import psycopg

                assert self.pg_conninfo is not None
                with psycopg.connect(self.pg_conninfo, autocommit=True, connect_timeout=2) as pg:
                    row = pg.execute("SELECT max(id) FROM events").fetchone()
        except Exception:
            return None
        return int(row[0] or 0) if row else 0


@contextmanager
def sqlite_database(workdir: Path, label: str = "") -> Iterator[Database]:
    """A SQLite file in the work directory, removed (with its WAL) afterwards."""
    path = workdir / (f"syncd-{label}.db" if label else "syncd.db")
    try:
        yield Database("sqlite", f"sqlite:///{path}", sqlite_path=path)
    finally:
        for leftover in (
            path,
            path.with_name(path.name + "-wal"),
            path.with_name(path.name + "-shm"),
        ):
            leftover.unlink(missing_ok=True)


@contextmanager
def postgres_database(admin_url: str = PG_ADMIN) -> Iterator[Database]:
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
        shown = []
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            for setting in ("server_version", "synchronous_commit"):
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
                shown.append(f"{setting} {row[0] if row else '?'}")
        print(f"  PostgreSQL database {name}: {', '.join(shown)}", flush=True)
        yield Database("postgres", url, pg_conninfo=url)
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=5) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))
        print(f"  dropped PostgreSQL database {name}", flush=True)


def database(
    kind: str, workdir: Path, pg_admin: str = PG_ADMIN, label: str = ""
) -> AbstractContextManager[Database]:
    """A fresh database of that kind: a SQLite file in ``workdir`` or a PostgreSQL one."""
    return sqlite_database(workdir, label) if kind == "sqlite" else postgres_database(pg_admin)


# --------------------------------------------------------------------------- the report


def machine() -> str:
    """Cores, CPU model, memory, load average, Python and kernel: one line."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = memory = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with suppress(OSError):
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        memory = f", RAM {int(found.group(1)) / 1024 / 1024:.1f} GiB" if found else ""
    load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"nproc {cores} ({cpu or platform.machine()}){memory}{load}, Python "
        f"{platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}"
    )


def command_line() -> str:
    return f"{shlex.join(getattr(sys, 'orig_argv', sys.argv))}  (cwd {Path.cwd()})"


def table(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Rows (the first is the head) as aligned columns; the first ``left`` ones left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = (
            c.ljust(w) if j < left else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def mib(kb: int | None) -> str:
    return f"{kb / 1024:.0f} MiB" if kb is not None else "?"


# --------------------------------------------------------------------------- main


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bench_main(
    run: Callable[[Path], int],
    prefix: str = "syncd-bench-",
    report: Callable[[], None] | None = None,
) -> int:
    """Run ``run(workdir)`` in a temporary directory; returns the exit code.

    SIGTERM (and a SIGINT that a background shell would ignore) unwind through the
    ``finally`` blocks: children are killed and PostgreSQL databases dropped. A
    :class:`BenchError` prints ``report()`` (what was measured so far) and exits 1.
    """
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    if not SYNCD.exists():
        print(f"{SYNCD} not found: run this with the project's venv python", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return run(Path(tmp))
    except BenchError as exc:
        if report is not None:
            report()
        print(f"\nFAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if report is not None:
            report()
        print(
            f"\ninterrupted ({exc or 'SIGINT'}): processes stopped, databases dropped",
            file=sys.stderr,
        )
        return 130
