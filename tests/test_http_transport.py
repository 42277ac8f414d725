"""The daemon's outgoing client (httpx over aiohttp) against real loopback servers.

Every failure must reach the callers as the httpx error of its kind, so the outbox
logs "connection failed" or "timed out" truthfully, and never with the URL (Salebot's
key is in the path).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from syncd.clients.http import new_http_client, send
from syncd.clients.salebot import SalebotClient
from syncd.errors import TransientError
from syncd.sandbox import salebot
from syncd.sandbox.serve import serve

KEY = "sb-secret-key-0042"
Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(talk: Conversation) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that runs ``talk`` for each connection; its base URL."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await talk(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    sizes = [int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")]
    return head + await reader.readexactly(sizes[0] if sizes else 0)


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(5)


async def talk_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"this is not HTTP\r\n\r\n")
    await writer.drain()


async def cut_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"status": ')
    await writer.drain()


async def failure(base: str, seconds: float = 5.0) -> TransientError:
    async with new_http_client(httpx.Timeout(seconds)) as http:
        with pytest.raises(TransientError) as caught:
            await send(http, "salebot callback", "POST", f"{base}/api/{KEY}/callback", json={})
    assert KEY not in str(caught.value) and base not in str(caught.value)
    return caught.value


async def test_a_refused_connection_is_a_connection_failure() -> None:
    async with raw_server(hang_up) as base:
        pass  # closed: nothing listens on the port any more
    error = await failure(base)
    assert str(error) == "salebot callback: connection failed (ConnectError)"


async def test_a_server_hanging_up_is_not_called_a_timeout() -> None:
    async with raw_server(hang_up) as base:
        error = await failure(base)
    assert str(error) == "salebot callback: connection failed (RemoteProtocolError)"


async def test_a_silent_server_is_a_read_timeout() -> None:
    async with raw_server(say_nothing) as base:
        error = await failure(base, seconds=0.3)
    assert str(error) == "salebot callback: timed out (ReadTimeout)"


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async with raw_server(talk_garbage) as base:
        error = await failure(base)
    assert str(error) == "salebot callback: connection failed (RemoteProtocolError)"


async def test_a_body_cut_short_is_a_read_error() -> None:
    async with raw_server(cut_body) as base:
        error = await failure(base)
    assert str(error) == "salebot callback: connection failed (ReadError)"


async def test_calls_reach_the_simulator_over_kept_alive_connections() -> None:
    state = salebot.SalebotState(key=KEY)
    state.add_client(42, client_id=900)
    async with serve(salebot.create_app(state)) as base, new_http_client() as http:
        bot = SalebotClient(http, base, KEY)
        await asyncio.gather(*[bot.callback(900, f"m{i}", {"n": str(i)}) for i in range(50)])
        streamed = b""
        async with http.stream("GET", f"{base}/api/{KEY}/connected_channels") as response:
            async for chunk in response.aiter_bytes():
                streamed += chunk
    sent = [c.body["message"] for c in state.calls if c.action == "callback"]
    assert sorted(sent) == sorted(f"m{i}" for i in range(50))
    assert b"myschool_bot" in streamed
