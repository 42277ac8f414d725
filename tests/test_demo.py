"""``syncd demo``: the README's first command tells the whole story and exits 0."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.daemon import SYNCD

pytestmark = pytest.mark.slow


def test_demo_tells_the_story_and_exits_0(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([SYNCD, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    out = done.stdout
    for step in (
        "1. Анна taps an ad in VK and starts @myschool_bot",
        "2. Анна sends her email",
        "3. Анна taps «Хочу курс»",
        "4. Анна pays",
        "Summary",
    ):
        assert step in out
    assert "{'telegram_id': '123456789', 'sb_294495_id': '987654'}" in out
    # the round trip: the bot's event made an order whose payment link came back
    assert re.search(r"'gc_payment_link': 'https://[^']+/dealPay/id/\d+", out), out
    assert "bot callbacks  gc_deal_ready, gc_deal_paid" in out
    assert "4 sent, 0 dead, 0 pending" in out
    # and the analyst's funnel: Анна, from the VK ad, through to a paid order
    assert re.search(r"vk_ads\s+1\s+1\s+100\.0%\s+1\s+100\.0%\s+1\s+100\.0%\s+14 900", out), out
    assert not list(tmp_path.iterdir())  # the temporary database is gone


def test_demo_keep_leaves_it_running_until_ctrl_c(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [SYNCD, "demo", "--keep"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "curl -s -X POST" in line:
                break
        curl = lines[-1]
        url = re.search(r"'(http://127\.0\.0\.1:\d+/v1/links\?token=[^']+)'", curl)
        assert url, curl
        answer = httpx.post(url.group(1), data={"email": "boris@school.ru", "telegram_id": "555"})
        assert answer.json()["status"] == "created"
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
