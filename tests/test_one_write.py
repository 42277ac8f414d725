"""syncd's server transport sends what one step of the event loop wrote in one piece,
and loses nothing on close (syncd.http.server.OneWrite)."""

from __future__ import annotations

import asyncio
import socket

from syncd.http.server import OneWrite


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


async def _pair(sends: list[bytes] | None = None) -> tuple[OneWrite, socket.socket]:
    """A OneWrite over a real socket transport; ``sends`` records each write it makes."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(Sink, sock=ours)
    assert isinstance(transport, asyncio.Transport)
    if sends is not None:
        write = transport.write

        def recorded(data: bytes | bytearray | memoryview) -> None:
            sends.append(bytes(data))
            write(data)

        transport.write = recorded  # type: ignore[method-assign]
    theirs.setblocking(False)
    return OneWrite(transport, loop), theirs


async def _read(peer: socket.socket) -> list[bytes]:
    """What the peer's successive reads return, until the writer has been quiet a while."""
    loop = asyncio.get_running_loop()
    reads: list[bytes] = []
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(peer, 65536), 0.2)
        except TimeoutError:
            return reads
        if not chunk:
            return reads
        reads.append(chunk)


async def test_a_head_and_a_body_written_in_one_step_leave_in_one_send() -> None:
    sends: list[bytes] = []
    transport, peer = await _pair(sends)
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert await _read(peer) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"next")  # a later step: its own send
    assert await _read(peer) == [b"next"]
    assert len(sends) == 2
    transport.close()
    peer.close()


async def test_close_right_after_a_write_sends_it_first_and_abort_drops_it() -> None:
    transport, peer = await _pair()
    transport.write(b"last words")
    transport.close()
    assert await _read(peer) == [b"last words"]
    assert transport.is_closing()
    peer.close()

    transport, peer = await _pair()
    transport.write(b"never sent")
    transport.abort()
    assert await _read(peer) == []
    peer.close()
