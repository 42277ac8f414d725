"""The webhook path reads requests and writes answers with less work than Starlette's
objects (``syncd.http.params``, ``syncd.http.app.Json``); what it reads and writes must
be exactly what those objects would have given, for any input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import Message

from syncd.errors import InvalidInput
from syncd.http.app import Json
from syncd.http.params import BodyTooLarge, header, parse_body, query, read_body


def request(headers: list[tuple[bytes, bytes]] = [], query_string: bytes = b"") -> Request:  # noqa: B006
    scope = {"type": "http", "method": "POST", "path": "/v1/links", "headers": headers}
    scope["query_string"] = query_string
    return Request(scope)


names = st.sampled_from([b"authorization", b"x-syncd-token", b"content-type", b"x-other"])
values = st.binary(max_size=20).filter(lambda v: b"\r" not in v and b"\n" not in v)


@given(st.lists(st.tuples(names, values), max_size=6), names)
def test_a_header_is_read_as_starlette_reads_it(
    headers: list[tuple[bytes, bytes]], name: bytes
) -> None:
    assert header(request(headers), name) == request(headers).headers.get(name.decode())


query_bytes = st.lists(
    st.sampled_from([b"token", b"email", b"a", b"=", b"&", b";", b"%", b"%2", b"%20", b"+",
                     b"%D0%BF", "п".encode(), b"\xff", b"x", b"1"]),
    max_size=12,
).map(b"".join)  # fmt: skip


@given(query_bytes)
def test_the_query_string_is_read_as_starlette_reads_it(raw: bytes) -> None:
    ours = request(query_string=raw)
    assert query(ours) == dict(request(query_string=raw).query_params)
    assert query(ours) is query(ours)  # parsed once per request


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), json_values, max_size=5), st.sampled_from([200, 400, 409, 503]))
def test_a_json_answer_is_the_bytes_and_headers_of_starlettes(
    content: dict[str, Any], status: int
) -> None:
    ours, theirs = Json(content, status), JSONResponse(content, status)
    assert ours.body == theirs.body
    assert ours.raw_headers == theirs.raw_headers
    assert ours.status_code == theirs.status_code == status
    assert ours.background is None


def test_a_json_answer_refuses_what_starlettes_refuses() -> None:
    for bad in ({"x": float("nan")}, {"x": float("inf")}):
        with pytest.raises(ValueError):
            JSONResponse(bad)
        with pytest.raises(ValueError):
            Json(bad)


def receiving(*messages: Message) -> Any:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


def body_request(*messages: Message, length: str | None = None) -> Request:
    headers = [] if length is None else [(b"content-length", length.encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    return Request(scope, receiving(*messages))


async def test_a_body_in_parts_is_read_whole_and_kept_for_a_second_read() -> None:
    parts = [{"type": "http.request", "body": b"ab", "more_body": True},
             {"type": "http.request", "body": b"", "more_body": True},
             {"type": "http.request", "body": b"cd"}]  # fmt: skip
    req = body_request(*parts)
    assert await read_body(req, 100) == b"abcd"
    assert await req.body() == b"abcd"  # what an error handler would read again


async def test_a_client_gone_mid_body_is_a_disconnect() -> None:
    req = body_request(
        {"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}
    )
    with pytest.raises(ClientDisconnect):
        await read_body(req, 100)


async def test_a_body_over_the_limit_is_refused_declared_or_not() -> None:
    with pytest.raises(BodyTooLarge):  # declared: refused before reading
        await read_body(body_request(length="101"), 100)
    parts = [{"type": "http.request", "body": b"x" * 60, "more_body": True},
             {"type": "http.request", "body": b"x" * 60}]  # fmt: skip
    with pytest.raises(BodyTooLarge):  # undeclared: refused as it grows
        await read_body(body_request(*parts), 100)


def test_the_lean_decoder_refuses_a_bom_as_json_loads_does() -> None:
    with pytest.raises(InvalidInput, match="BOM"):
        parse_body('\ufeff{"a": 1}'.encode(), "application/json")
    with pytest.raises(json.JSONDecodeError, match="BOM"):
        json.loads('\ufeff{"a": 1}')
    assert parse_body(b'{"a": 1.5}', "application/json") == {"a": 1.5}
