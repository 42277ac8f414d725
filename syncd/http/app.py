"""The ASGI application: plain Starlette routes, so the hot path pays no framework tax.

Every answer is JSON with ``success`` and, on failure, a stable ``error`` code (SPEC §3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from syncd.batching import Batcher
from syncd.errors import InvalidInput, StoreUnavailable
from syncd.http.auth import Unauthorized, require_token
from syncd.http.params import BodyTooLarge, read_params
from syncd.identity import normalise_link
from syncd.logs import mask_email
from syncd.store import migrate
from syncd.store.links import LinkRequest, LinkResult

#: How long a request waits for the store before answering 503.
STORE_WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class AppContext:
    engine: AsyncEngine
    links: Batcher[LinkRequest, LinkResult]
    token: str
    max_body_bytes: int
    project_id: int


def failure(status: int, error: str, detail: str = "", **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": error}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status)


def create_app(ctx: AppContext) -> Starlette:
    token = ctx.token.encode()

    async def post_links(request: Request) -> Response:
        require_token(request, token)
        params = await read_params(request, ctx.max_body_bytes)
        claim = normalise_link(params, ctx.project_id)
        result = await asyncio.wait_for(
            ctx.links.submit(LinkRequest(claim, "webhook")), STORE_WAIT_SECONDS
        )
        log = logger.bind(identity_id=result.identity_id, email=mask_email(claim.email))
        if result.status == "conflict":
            log.bind(conflict_id=result.conflict_id).warning("link conflict: {}", result.detail)
            return failure(409, "conflict", result.detail, conflict_id=result.conflict_id)
        if result.status == "unchanged":
            log.debug("link unchanged")
        else:
            log.info("link {}", result.status)
        return JSONResponse(
            {"success": True, "status": result.status, "identity_id": result.identity_id}
        )

    async def healthz(_: Request) -> Response:
        return JSONResponse({"success": True, "status": "alive"})

    async def readyz(_: Request) -> Response:
        try:
            async with asyncio.timeout(5):
                async with ctx.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                current = await migrate.current(ctx.engine)
        except Exception as exc:
            return failure(503, "unavailable", f"database: {type(exc).__name__}")
        if current != migrate.heads():
            return failure(503, "unavailable", "migrations are not at head: run `syncd migrate`")
        return JSONResponse({"success": True, "status": "ready", "revision": sorted(current)})

    return Starlette(
        routes=[
            Route("/v1/links", post_links, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        exception_handlers=_handlers(),
    )


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _handlers() -> dict[Any, Handler]:
    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidInput)
        return failure(400, exc.code, exc.detail)

    async def unauthorized(_: Request, __: Exception) -> Response:
        return failure(401, "unauthorized")

    async def too_large(_: Request, __: Exception) -> Response:
        return failure(413, "body_too_large")

    async def unavailable(_: Request, exc: Exception) -> Response:
        logger.warning("store unavailable: {}", exc or type(exc).__name__)
        return failure(503, "unavailable")

    async def not_found(_: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        return failure(code, "not_found" if code == 404 else "method_not_allowed")

    async def internal(_: Request, exc: Exception) -> Response:
        logger.opt(exception=exc).error("unexpected error")
        return failure(500, "internal")

    return {
        InvalidInput: invalid,
        Unauthorized: unauthorized,
        BodyTooLarge: too_large,
        StoreUnavailable: unavailable,
        TimeoutError: unavailable,
        404: not_found,
        405: not_found,
        Exception: internal,
    }
