"""The ASGI application: plain Starlette routes, so the hot path pays no framework tax.

Every answer is JSON with ``success`` and, on failure, a stable ``error`` code (SPEC §3).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from syncd.batching import Batcher
from syncd.errors import InvalidInput, StoreUnavailable
from syncd.events import NewEvent, from_process, from_techapi
from syncd.http.auth import Unauthorized, require_token
from syncd.http.hotpath import Handler, HotPaths
from syncd.http.params import BodyTooLarge, read_params
from syncd.identity import normalise_link
from syncd.logs import mask_email
from syncd.metrics import Metrics, Timed
from syncd.store import exports, schema
from syncd.store import outbox as outbox_store
from syncd.store.events import IngestResult
from syncd.store.links import LinkRequest, LinkResult
from syncd.store.models import utcnow

#: How long a request waits for the store before answering 503.
STORE_WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class AppContext:
    engine: AsyncEngine
    links: Batcher[LinkRequest, LinkResult]
    events: Batcher[NewEvent, IngestResult]
    token: str
    max_body_bytes: int
    project_id: int
    #: links answered, by status, since the last activity report (see syncd.daemon)
    counts: Counter[str] = field(default_factory=Counter)
    metrics: Metrics = field(default_factory=Metrics)


def failure(status: int, error: str, detail: str = "", **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": error}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status)


def create_app(ctx: AppContext) -> ASGIApp:
    token = ctx.token.encode()

    links_total = ctx.metrics.links

    async def post_links(request: Request) -> Response:
        try:
            require_token(request, token)
            params = await read_params(request, ctx.max_body_bytes)
            claim = normalise_link(params, ctx.project_id)
            async with asyncio.timeout(STORE_WAIT_SECONDS):  # no task per request (wait_for)
                result = await ctx.links.submit(LinkRequest(claim, "webhook"))
        except Unauthorized:
            links_total.labels("unauthorized").inc()
            raise
        except (InvalidInput, BodyTooLarge):
            links_total.labels("invalid").inc()
            raise
        except (StoreUnavailable, TimeoutError):
            links_total.labels("unavailable").inc()
            raise
        links_total.labels(result.status).inc()
        ctx.counts[result.status] += 1
        if result.status == "conflict":
            logger.bind(conflict_id=result.conflict_id, email=mask_email(claim.email)).warning(
                "link conflict: {}", result.detail
            )
            return failure(409, "conflict", result.detail, conflict_id=result.conflict_id)
        # one line per link only at debug: at thousands a second the minute's summary
        # (syncd.daemon.report_activity) is what an operator reads
        logger.debug("link {} identity {}", result.status, result.identity_id)
        return JSONResponse(
            {"success": True, "status": result.status, "identity_id": result.identity_id}
        )

    async def ingest(event: NewEvent) -> Response:
        async with asyncio.timeout(STORE_WAIT_SECONDS):
            result = await ctx.events.submit(event)
        ctx.counts[f"event {event.kind}" + (" (duplicate)" if result.duplicate else "")] += 1
        logger.debug("event {} {} → {}", event.kind, result.event_id, result.status)
        return JSONResponse(
            {"success": True, "event_id": result.event_id, "duplicate": result.duplicate}
        )

    async def getcourse_event(request: Request) -> Response:
        require_token(request, token)
        params = await read_params(request, ctx.max_body_bytes)
        return await ingest(from_process(request.path_params["event"], params))

    async def getcourse_techapi(request: Request) -> Response:
        require_token(request, token)
        return await ingest(from_techapi(await read_params(request, ctx.max_body_bytes)))

    async def metrics(_: Request) -> Response:
        try:
            async with asyncio.timeout(5):
                await refresh_gauges(ctx.engine, ctx.metrics)
        except Exception as exc:  # the counters are still worth serving
            logger.warning("metrics: cannot read the store: {}", type(exc).__name__)
        return Response(ctx.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def healthz(_: Request) -> Response:
        return JSONResponse({"success": True, "status": "alive"})

    async def readyz(_: Request) -> Response:
        try:
            async with asyncio.timeout(5):  # reading the revision proves the store answers
                current = await schema.current(ctx.engine)
        except Exception as exc:
            return failure(503, "unavailable", f"database: {type(exc).__name__}")
        if current != {schema.HEAD}:
            return failure(503, "unavailable", "migrations are not at head: run `syncd migrate`")
        return JSONResponse({"success": True, "status": "ready", "revision": sorted(current)})

    handlers = _handlers()
    app = Starlette(
        routes=[
            Route("/v1/links", post_links, methods=["POST"]),
            Route("/v1/getcourse/events/{event}", getcourse_event, methods=["GET", "POST"]),
            Route("/v1/getcourse/techapi", getcourse_techapi, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers=handlers,
    )
    kinds = {kind: handler for kind, handler in handlers.items() if isinstance(kind, type)}
    events = "/v1/getcourse/events/"
    hot = HotPaths(
        app,
        {("POST", "/v1/links"): post_links, ("POST", "/v1/getcourse/techapi"): getcourse_techapi},
        kinds,
        {
            ("GET", events): ("event", getcourse_event),
            ("POST", events): ("event", getcourse_event),
        },
    )
    return Timed(hot, ctx.metrics)


async def refresh_gauges(engine: AsyncEngine, metrics: Metrics) -> None:
    """The outbox and the export budget, as the database has them now."""
    figures = await outbox_store.stats(engine)
    for status in outbox_store.STATUSES:
        metrics.outbox_by_status.labels(status).set(figures[status])
    metrics.outbox_oldest.set(figures["oldest_due_age_seconds"])
    metrics.outbox_due.set(await outbox_store.due_count(engine))
    metrics.budget_left.set(await exports.budget_left(engine, utcnow()))


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
