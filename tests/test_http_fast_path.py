"""The daemon's direct path for JSON POSTs (``post_json`` over aiohttp, no httpx models).

The outbox's Salebot calls take it, so it must behave as the httpx path does: the same
body bytes and headers on the wire, no redirect followed, every answer classified the
same, every failure named the same and never with the URL (the key is in the path).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from syncd.clients.http import HttpClient, json_body, new_http_client, post_json
from syncd.clients.salebot import SalebotClient
from syncd.errors import PermanentError, TransientError
from syncd.sandbox.serve import serve
from tests.test_http_transport import (
    KEY,
    cut_body,
    hang_up,
    raw_server,
    say_nothing,
    talk_garbage,
)


async def fast_failure(base: str, seconds: float = 5.0) -> TransientError:
    async with new_http_client(httpx.Timeout(seconds)) as http:
        assert isinstance(http, HttpClient)
        with pytest.raises(TransientError) as caught:
            await post_json(http, "salebot callback", f"{base}/api/{KEY}/callback", {})
    assert KEY not in str(caught.value) and base not in str(caught.value)
    return caught.value


async def test_a_refused_connection_is_a_connection_failure() -> None:
    async with raw_server(hang_up) as base:
        pass  # closed: nothing listens on the port any more
    error = await fast_failure(base)
    assert str(error) == "salebot callback: connection failed (ConnectError)"


async def test_a_server_hanging_up_is_not_called_a_timeout() -> None:
    async with raw_server(hang_up) as base:
        error = await fast_failure(base)
    assert str(error) == "salebot callback: connection failed (RemoteProtocolError)"


async def test_a_silent_server_is_a_read_timeout() -> None:
    async with raw_server(say_nothing) as base:
        error = await fast_failure(base, seconds=0.3)
    assert str(error) == "salebot callback: timed out (ReadTimeout)"


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async with raw_server(talk_garbage) as base:
        error = await fast_failure(base)
    assert str(error) == "salebot callback: connection failed (RemoteProtocolError)"


async def test_a_body_cut_short_is_a_read_error() -> None:
    async with raw_server(cut_body) as base:
        error = await fast_failure(base)
    assert str(error) == "salebot callback: connection failed (ReadError)"


class Recorder:
    """An ASGI app that notes each request and answers with what a test set."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.status = 200
        self.body: bytes = b'{"status": "success"}'
        self.headers: dict[str, str] = {}

    def app(self) -> Starlette:
        async def answer(request: Request) -> Response:
            body = await request.body()
            self.requests.append((request.method, request.url.path, dict(request.headers), body))
            return Response(self.body, self.status, headers=self.headers)

        return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])


async def both_paths(recorder: Recorder, call: Any) -> list[Any]:
    """``call(salebot_client)`` through the daemon's client and through plain httpx."""
    outcomes: list[Any] = []
    async with serve(recorder.app()) as base:
        for http in (new_http_client(), httpx.AsyncClient(follow_redirects=False)):
            async with http:
                try:
                    outcomes.append(("ok", await call(SalebotClient(http, base, KEY))))
                except (TransientError, PermanentError) as exc:
                    assert KEY not in str(exc) and base not in str(exc)
                    outcomes.append((type(exc), str(exc), getattr(exc, "retry_after", None)))
    return outcomes


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (200, b"", {}),
        (200, b'{"status": "success"}', {}),
        (200, b'{"id": 7}', {}),
        (200, b"OK", {}),
        (200, b'{"status": "client_not_found"}', {}),
        (200, b'{"status": "fail", "message": "bot paused"}', {}),
        (200, b'{"status": NaN}', {}),  # not JSON orjson reads: decided by json.loads
        (401, b'{"status": "fail"}', {}),
        (404, b"no such key", {}),
        (500, b"", {}),
        (503, b"", {"Retry-After": "7"}),
        (429, b"", {"Retry-After": "42"}),
        (301, b"", {"Location": "https://chatter.example.pro/api/x"}),
    ],
)
async def test_answers_are_classified_as_on_the_httpx_path(
    status: int, body: bytes, headers: dict[str, str]
) -> None:
    recorder = Recorder()
    recorder.status, recorder.body, recorder.headers = status, body, headers
    fast, plain = await both_paths(recorder, lambda sb: sb.callback(5, "gc_deal_paid"))
    assert fast == plain
    assert len(recorder.requests) == 2  # a redirect is not followed by either


async def test_the_request_on_the_wire_is_the_httpx_one() -> None:
    recorder = Recorder()
    variables = {"gc_name": "Анна «Школа»", "gc_amount": 1.5, "gc_ids": [1, 2**40]}
    await both_paths(recorder, lambda sb: sb.callback(5, "gc_deal_paid", variables))
    (fast, plain) = recorder.requests
    assert fast[:2] == plain[:2] == ("POST", f"/api/{KEY}/callback")
    assert fast[3] == plain[3]  # the same bytes: compact, UTF-8, not escaped
    for name in ("content-type", "user-agent", "accept", "content-length"):
        assert fast[2][name] == plain[2][name], name


async def test_calls_share_the_pool_with_the_httpx_path() -> None:
    recorder = Recorder()
    async with serve(recorder.app()) as base, new_http_client() as http:
        sb = SalebotClient(http, base, KEY)
        results = await asyncio.gather(*[sb.callback(i, "m") for i in range(40)])
        channels = await http.get(f"{base}/api/{KEY}/connected_channels")
    assert results == [{"status": "success"}] * 40 and channels.status_code == 200
    assert sorted(json.loads(r[3])["client_id"] for r in recorder.requests[:40]) == list(range(40))


@pytest.mark.parametrize(
    "body",
    [
        {"client_id": 1, "message": "m"},
        {"text": "Привет, «мир» \u2028 \U0001f600", "n": -0.5, "none": None, "ok": True},
        {"big": 2**70},  # beyond 64 bits: orjson refuses, json.dumps writes it
        {1: "an int key"},  # orjson refuses, json.dumps turns it into "1"
    ],
)
def test_json_body_is_what_httpx_sends(body: Any) -> None:
    request = httpx.Request("POST", "http://x/", json=body)
    assert json_body(body) == request.content
