"""Log lines: JSON objects off a terminal, emails masked, key-bearing URLs redacted,
and the once-a-minute link summary."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter

import pytest
from loguru import logger

from syncd import logs
from syncd.daemon import report_activity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("anna@school.ru", "a***@school.ru"),
        (
            "POST https://chatter.salebot.pro/api/0123abcd/callback",
            "POST https://chatter.salebot.pro/api/***/callback",
        ),
        (
            "GET /pl/api/account/deals?key=SECRET&created_at[from]=2024",
            "GET /pl/api/account/deals?key=***&created_at[from]=2024",
        ),
        ("/v1/links?token=abc123", "/v1/links?token=***"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert logs.redact(text) == expected


def test_mask_email() -> None:
    assert logs.mask_email("Boris@School.ru") == "B***@School.ru"
    assert logs.mask_email("") == ""
    assert logs.mask_email("no-at-sign") == "***"


async def test_activity_summary_is_one_json_line_per_period() -> None:
    sink = io.StringIO()
    logs.setup("info", "json", sink)
    counts: Counter[str] = Counter(created=3, conflict=1)
    task = asyncio.create_task(report_activity(counts, every=0.05))
    await asyncio.sleep(0.12)
    task.cancel()
    logger.remove()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert len(lines) == 1  # the second period had no traffic: no line
    assert lines[0]["level"] == "info"
    assert lines[0]["msg"] == "links in the last 0 s: conflict 1, created 3"
    assert lines[0]["created"] == 3 and lines[0]["conflict"] == 1
    assert not counts
