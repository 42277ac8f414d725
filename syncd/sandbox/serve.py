"""Run an ASGI app on a loopback port inside the current asyncio loop.

Used by tests (real HTTP over 127.0.0.1, no fixed ports), the demo and benchmarks::

    async with serve(create_app(state)) as base_url:
        ...  # base_url == "http://127.0.0.1:54321"

The socket is bound here (port 0 = the kernel picks a free port, so there is no race
between choosing and binding) and handed to ``uvicorn.Server``; lifespan off, no
websockets, no logging config of its own (uvicorn's loggers are set to WARNING, which is
process-wide, as with any uvicorn server). Uvicorn's own signal capture is switched off:
signals belong to whoever runs the loop (the CLI, the daemon), not to an embedded server.

On exit the server stops accepting, closes idle connections, waits up to ``grace`` seconds
for in-flight requests, then cancels what is left (a fault-injected hang: uvicorn answers
it 500 and logs the cancellation) and waits for it to finish. These are uvicorn's own
shutdown steps, re-done without its fixed 0.1 s sleeps and polls, because tests start
and stop a server each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.types import ASGIApp


class _EmbeddedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, grace: float) -> None:
        super().__init__(config)
        self.grace = grace
        self.stop = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)
        await self.stop.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.server_state
        for server in self.servers:
            server.close()
        for connection in list(state.connections):
            connection.shutdown()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=self.grace)
        leftovers = list(state.tasks)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, grace: float = 1.0
) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yield its base URL (no trailing slash)."""
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and
    # without it every response split in two writes waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,  # leave the process's logging handlers alone (the daemon's, loguru…)
        log_level="warning",
        ws="none",
    )
    server = _EmbeddedServer(config, grace)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped the start-up
                raise RuntimeError("the sandbox server stopped during start-up")
            await asyncio.sleep(0.005)
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        server.stop.set()
        try:
            await task
        finally:
            sock.close()
