"""Progress people can read (issue 12, item 5): a live bar (count, rate, ETA) on a
terminal, JSON lines off one; a backfill rerun says its rows were all already stored."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from syncd.progress import Progress
from tests.daemon import SYNCD, free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_json_lines_every_few_seconds() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress(
        "export identities", 1000, unit="identities", stream=out, every=5, clock=clock
    ) as bar:
        for _ in range(9):
            clock.now += 1
            bar.advance(100)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["done"] for line in lines] == [500, 900]  # at 5 s, then the closing line
    first = lines[0]
    assert first["progress"] == "export identities" and first["total"] == 1000
    assert first["rate_per_second"] == 100.0 and first["eta_seconds"] == 5.0
    assert first["unit"] == "identities"


def test_on_a_terminal_a_live_bar_with_rate_and_eta() -> None:
    out = Terminal()
    with Progress("backfill", 4, unit="windows", stream=out) as bar:
        for _ in range(4):
            time.sleep(0.25)  # tqdm redraws at most every 0.2 s
            bar.advance(1, rows=1200, new_events=900)
        bar.note("[4/4] deals 2026-01-01..2026-01-07: 1200 rows, 900 new events")
    shown = out.getvalue()
    assert "backfill" in shown and "4/4" in shown and "100%" in shown
    assert "windows/s" in shown and "<00:00" in shown  # rate and ETA
    assert "rows=1200" in shown and "new_events=900" in shown
    assert "syncd: backfill [4/4] deals" in shown
    assert "{" not in shown  # no JSON on a terminal


SIMULATOR = textwrap.dedent(
    """
    import sys
    import uvicorn
    from syncd.sandbox import getcourse

    state = getcourse.GetCourseState(key="K")
    state.ready_after_polls = 0
    for i in range(6):
        user = state.add_user(f"buyer{i}@school.ru")
        state.add_deal(user, 1000 + i, status="payed" if i % 2 else "new")
    uvicorn.run(getcourse.create_app(state), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning")
    """
)


@pytest.fixture
def seeded_getcourse(tmp_path: Path) -> str:
    """A GetCourse simulator process with six buyers and their deals (created today)."""
    port = free_port()
    script = tmp_path / "sim.py"
    script.write_text(SIMULATOR)
    sim = subprocess.Popen([sys.executable, str(script), str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert sim.poll() is None and time.monotonic() < deadline, "simulator did not start"
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        sim.terminate()
        sim.wait(10)


def test_a_backfill_rerun_says_its_rows_were_already_stored(
    seeded_getcourse: str, db_url: str, tmp_path: Path
) -> None:
    env = {
        "PATH": str(Path(SYNCD).parent),
        "SYNCD_DATABASE__URL": db_url,
        "SYNCD_GETCOURSE__BASE_URL": seeded_getcourse,
        "SYNCD_GETCOURSE__API_KEY": "K",
        "SYNCD_GETCOURSE__POLL__EXPORTS": "deals",
    }
    today = date.today()
    args = [SYNCD, "backfill", "--since", str(today - timedelta(days=1)), "--until", str(today)]

    def backfill() -> tuple[str, list[dict[str, object]]]:
        done = subprocess.run(
            args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stderr.splitlines()]  # JSON only, off a tty
        return done.stdout, lines

    first, lines = backfill()
    assert "1 exports, 6 rows, " in first and "new events" in first
    assert "already stored" not in first
    assert lines[-1]["progress"] == "backfill" and lines[-1]["done"] == lines[-1]["total"] == 1
    assert any("[1/1] deals" in str(line.get("note")) for line in lines)
    again, lines = backfill()
    assert again.strip().endswith("1 exports, 6 rows, all already stored")
    assert lines[-1]["new_events"] == 0 and lines[-1]["rows"] == 6
    assert any("6 rows, all already stored" in str(line.get("note")) for line in lines)


def test_export_off_a_terminal_reports_in_json_lines(sqlite_url: str, tmp_path: Path) -> None:
    import sqlite3

    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO identities (email, created_at, updated_at) "
            "VALUES (?, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            [(f"p{i}@school.ru",) for i in range(25_000)],
        )
    done = subprocess.run(
        [SYNCD, "export", "identities", "--format", "csv", "--output", str(tmp_path / "x.csv")],
        env={"PATH": str(Path(SYNCD).parent), "SYNCD_DATABASE__URL": sqlite_url},
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    *progress, last = done.stderr.splitlines()
    assert last.startswith("syncd: exported 25000 identities to ")
    final = json.loads(progress[-1])
    assert final["progress"] == "export identities"
    assert final["done"] == final["total"] == 25_000
    assert final["unit"] == "identities" and final["eta_seconds"] == 0
