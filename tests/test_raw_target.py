"""Raw UTF-8 in a process URL (getcourse.md, "Added 2026-12-02"), against a real ``syncd run``.

Whether GetCourse URL-encodes the values it substitutes is not documented: a raw Cyrillic
name (with a space) must reach syncd decoded as UTF-8, and whatever request the HTTP layer
refuses is still answered in JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.http.wire import BadTarget, rewrite_request_line
from syncd.sandbox.getcourse_callout import fire_process_call, fire_raw_get, send_raw
from syncd.store.engine import create_engine
from syncd.store.events import listing
from tests.daemon import TOKEN, Daemon

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(db_url: str, tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(db_url, tmp_path).start()
    yield running
    assert running.stop() == 0
    running.close()


IVAN = "%D0%98%D0%B2%D0%B0%D0%BD"
TG = b"GET /a?tg={object.user.telegram_id} HTTP/1.1"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"GET /a?b=c HTTP/1.1", b"GET /a?b=c HTTP/1.1"),
        ("GET /a?n=Иван HTTP/1.1".encode(), f"GET /a?n={IVAN} HTTP/1.1".encode()),
        ("GET /a?n=Иван Ли HTTP/1.1".encode(), f"GET /a?n={IVAN}%20%D0%9B%D0%B8 HTTP/1.1".encode()),
        (TG, TG),  # an unsubstituted placeholder: llhttp takes braces as they are
        (b"garbage", b"garbage"),
    ],
)
def test_the_request_line_is_escaped_only_where_it_must_be(line: bytes, expected: bytes) -> None:
    assert rewrite_request_line(line) == expected


def test_a_target_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(BadTarget):
        rewrite_request_line(b"GET /a?n=\xff\xfe HTTP/1.1")


async def test_raw_utf8_in_a_process_url_is_read_as_utf8(daemon: Daemon, db_url: str) -> None:
    url = (
        f"{daemon.base_url}/v1/getcourse/events/user.created?token={TOKEN}"
        "&email={object.email}&user_id={object.id}&id={object.id}"
        "&first_name={object.first_name}&city={object.city}"
    )
    person = {"email": "ivan@school.ru", "id": 512, "first_name": "Иван Петрович", "city": "Тверь"}
    answer = await fire_process_call(url, person, raw=True)
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True
    engine = create_engine(db_url)
    try:
        (event,) = await listing(engine, "user.created", 10)
    finally:
        await engine.dispose()
    assert event["data"]["first_name"] == "Иван Петрович" and event["data"]["city"] == "Тверь"


async def test_every_refused_request_is_answered_in_json(daemon: Daemon) -> None:
    base = daemon.base_url
    not_utf8 = await fire_raw_get(base, b"/v1/getcourse/events/user.created?first_name=\xff")
    broken_header = await send_raw(base, b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n")
    bad_version = await send_raw(base, b"GET /healthz HTTP/9\r\n\r\n")
    for answer in (not_utf8, broken_header, bad_version):
        assert answer.status_code == 400
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["success"] is False and answer.json()["error"] == "invalid_request"
    assert "not UTF-8" in not_utf8.json()["detail"]
    # and the server still serves (keep-alive requests after a raw one are read normally)
    again = await asyncio.gather(*(fire_raw_get(base, "/healthz") for _ in range(3)))
    assert [a.status_code for a in again] == [200] * 3
