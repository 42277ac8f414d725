"""The process: one place starts and stops everything.

Start-up order: store (and migrations), the link writer, then the HTTP server on a socket
we bind ourselves (so a busy port is one clear error). Shutdown runs the same stack
backwards: stop accepting and finish in-flight requests, drain the link writer, close the
store. SIGTERM and SIGINT both mean "stop cleanly".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack

import uvicorn
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.batching import Batcher
from syncd.config import Settings
from syncd.errors import ConfigError, SchemaNotReady
from syncd.http.app import AppContext, create_app
from syncd.store import migrate
from syncd.store.engine import create_engine, safe_url
from syncd.store.errors import translated
from syncd.store.links import LinkRequest, LinkResult, LinkStore

GRACEFUL_SECONDS = 10


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def prepare_schema(engine: AsyncEngine, auto_migrate: bool) -> None:
    async with translated():
        if auto_migrate:
            await migrate.upgrade(engine)
        elif not await migrate.at_head(engine):
            raise SchemaNotReady("the database is not at the migration head: run `syncd migrate`")


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError("http.port", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    if not settings.http.token:
        raise ConfigError("http.token", "must be set (the shared secret of every /v1 endpoint)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await _serve(settings, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _serve(settings: Settings, stop: asyncio.Event) -> None:
    async with AsyncExitStack() as stack:
        engine = create_engine(settings.database.url)
        stack.push_async_callback(engine.dispose)
        await prepare_schema(engine, settings.database.auto_migrate)
        store = LinkStore(engine, settings.identity.on_conflict)
        links: Batcher[LinkRequest, LinkResult] = await stack.enter_async_context(
            Batcher(store.apply, name="links")
        )
        app = create_app(
            AppContext(
                engine=engine,
                links=links,
                token=settings.http.token,
                max_body_bytes=settings.http.max_body_bytes,
                project_id=settings.salebot.project_id,
            )
        )
        sock = listen(settings.http.host, settings.http.port)
        stack.callback(sock.close)
        server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                access_log=False,  # its lines would carry ?token=
                log_config=None,
                server_header=False,
                timeout_graceful_shutdown=GRACEFUL_SECONDS,
            )
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        stack.push_async_callback(_stop_server, server, serving)
        while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.005)
        host, port = sock.getsockname()[:2]
        logger.bind(database=safe_url(settings.database.url)).info(
            "syncd ready: listening on http://{}:{}", host, port
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        logger.info("syncd stopping")
    logger.info("syncd stopped")


async def _stop_server(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    server.should_exit = True
    await serving
