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
    deadline = asyncio.get_running_loop().time() + 30
    while counts:  # the first period ends: its line is written, the counts cleared
        assert asyncio.get_running_loop().time() < deadline, "no summary came"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.15)  # at least two more periods, with no traffic
    task.cancel()
    logger.remove()
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert len(lines) == 1  # the second period had no traffic: no line
    assert lines[0]["level"] == "info"
    assert lines[0]["msg"] == "links in the last 0 s: conflict 1, created 3"
    assert lines[0]["created"] == 3 and lines[0]["conflict"] == 1
    assert not counts


# Issue 14: every line JSON off a terminal, no full email or password in either format --


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]  # fails on any non-JSON line


def test_library_lines_are_json_lines_too() -> None:
    import logging

    sink = io.StringIO()
    logs.setup("info", "json", sink)
    try:
        logging.getLogger("apscheduler.scheduler").warning(
            'Execution of job "Poller.cycle" skipped: maximum number of running instances '
            "reached (1)"
        )
        logging.getLogger("psycopg").warning("error ignored in rollback on <Connection>")
        logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
        try:
            raise RuntimeError("boom for anna@school.ru")
        except RuntimeError as exc:
            logging.getLogger("uvicorn.error").error(
                "Exception in ASGI application\n", exc_info=exc
            )
    finally:
        logger.remove()
        logging.basicConfig(handlers=[], force=True)
        logging.captureWarnings(False)
    lines = _json_lines(sink.getvalue())
    by_logger = {line.get("logger"): line for line in lines}
    assert "maximum number of running instances" in str(by_logger["apscheduler.scheduler"]["msg"])
    assert by_logger["psycopg"]["level"] == "warning"
    assert by_logger["uvicorn.error"]["msg"] == "unexpected error in a request"
    assert by_logger["uvicorn.error"]["exception"] == "RuntimeError: boom for a***@school.ru"
    # floodable by anyone without a token: not at info
    assert not any("Invalid HTTP request" in str(line["msg"]) for line in lines)


def _fail_with_secrets() -> None:
    password = "pg-Secret-77"
    settings = {"url": f"postgresql://syncd:{password}@db/syncd", "email": "anna@school.ru"}
    raise ValueError(f"cannot store {settings!r} for boris@school.ru")


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_exceptions_are_a_type_and_a_masked_message(fmt: str) -> None:
    sink = io.StringIO()
    logs.setup("debug", fmt, sink)
    try:
        try:
            _fail_with_secrets()
        except ValueError as exc:
            logger.opt(exception=exc).error("an item failed")
        logger.bind(url="postgresql://u:pw-Secret@h/db").warning("store down: anna@school.ru")
    finally:
        logger.remove()
    text = sink.getvalue()
    for secret in ("pg-Secret-77", "pw-Secret", "anna@school.ru", "boris@school.ru"):
        assert secret not in text, f"{secret} leaked in the {fmt} format:\n{text}"
    assert "ValueError: cannot store" in text
    assert "b***@school.ru" in text
    if fmt == "json":
        _json_lines(text)
    else:
        assert "_fail_with_secrets" in text  # the frames are still there for a human


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_a_fuzzing_run_logs_no_full_email(sqlite_url: str, fmt: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.test_fuzz_webhooks import Call, calls, run_with_client, send

    sink = io.StringIO()
    logs.setup("debug", fmt, sink)
    sent: set[str] = set()
    people = st.builds(
        lambda n, call: Call(
            call.route, call.how, call.event, {**call.data, "email": f"person{n}@school.ru"}
        ),
        st.integers(1000, 9999),
        calls,
    )

    def fuzz(client: object, engine: object, runner: asyncio.Runner) -> None:
        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(people)
        def one(call: Call) -> None:
            sent.add(str(call.data["email"]))
            runner.run(send(client, call))  # type: ignore[arg-type]

        one()

    try:
        run_with_client(sqlite_url, fuzz)  # type: ignore[arg-type]
    finally:
        logger.remove()
    text = sink.getvalue()
    assert text  # the run logged (debug: a line per link and event)
    leaked = sorted(email for email in sent if email in text)
    assert not leaked, f"{len(leaked)} full emails in the {fmt} log, e.g. {leaked[:3]}"
    if fmt == "json":
        _json_lines(text)
