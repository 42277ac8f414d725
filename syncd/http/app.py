"""The ASGI application: plain Starlette routes, so the hot path pays no framework tax.

Every answer is JSON with ``success`` and, on failure, a stable ``error`` code (SPEC §3).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from syncd.batching import Batcher
from syncd.bot_events import from_salebot
from syncd.errors import InvalidInput, StoreUnavailable
from syncd.events import MAX_EXTERNAL_ID, MAX_KIND, NewEvent, from_process, from_techapi
from syncd.http.auth import Tokens, Unauthorized, require_token
from syncd.http.hotpath import Handler, HotPaths
from syncd.http.params import BodyTooLarge, read_params
from syncd.identity import normalise_link
from syncd.logs import mask_email
from syncd.metrics import Metrics, Timed, route_of
from syncd.store import exports, schema
from syncd.store import outbox as outbox_store
from syncd.store.events import IngestResult
from syncd.store.links import LinkRequest, LinkResult
from syncd.store.models import utcnow

#: How long a request waits for the store before answering 503.
STORE_WAIT_SECONDS = 15.0
#: How long /readyz and /metrics wait for the store, however it fails to answer.
PROBE_SECONDS = 5.0
#: The longest email a column holds (``identities.email``, ``events.email``).
MAX_EMAIL = 320


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
    #: accepted beside ``token`` while URLs are rotated; each use is counted
    previous_tokens: tuple[str, ...] = ()
    #: when set, GET /metrics needs it
    metrics_token: str = ""


class Json(JSONResponse):
    """:class:`JSONResponse` with the same bytes and headers, made with less work per
    answer: one encoder made once (``json.dumps`` with options builds one per call),
    the two headers set directly. For answers with a body (not 1xx, 204, 304)."""

    def __init__(self, content: Any, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body = _ENCODER.encode(content).encode("utf-8")
        self.raw_headers = [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        ]


#: Starlette's JSONResponse options
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def failure(status: int, error: str, detail: str = "", **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"success": False, "error": error}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return Json(body, status_code=status)


BOT_EVENTS = "/v1/salebot/events/"


def create_app(ctx: AppContext) -> ASGIApp:
    previous_used = ctx.metrics.auth_previous
    token = Tokens(
        ctx.token,
        ctx.previous_tokens,
        lambda request: previous_used.labels(route_of(request.scope["path"])).inc(),
    )
    metrics_token = Tokens(ctx.metrics_token) if ctx.metrics_token else None

    links_total = ctx.metrics.links
    #: per status, the counter's child (``labels()`` validates and locks on every call;
    #: the statuses are a handful)
    links_children: dict[str, Any] = {}

    def links_counted(status: str) -> Any:
        child = links_children.get(status)
        if child is None:
            child = links_children[status] = links_total.labels(status)
        return child

    async def post_links(request: Request) -> Response:
        try:
            require_token(request, token)
            params = await read_params(request, ctx.max_body_bytes)
            claim = normalise_link(params, ctx.project_id)
            result = await ctx.links.submit(LinkRequest(claim, "webhook"), STORE_WAIT_SECONDS)
        except Unauthorized:
            links_counted("unauthorized").inc()
            raise
        except (InvalidInput, BodyTooLarge):
            links_counted("invalid").inc()
            raise
        except (StoreUnavailable, TimeoutError):
            links_counted("unavailable").inc()
            raise
        links_counted(result.status).inc()
        ctx.counts[result.status] += 1
        if result.status == "conflict":
            logger.bind(conflict_id=result.conflict_id, email=mask_email(claim.email)).warning(
                "link conflict: {}", result.detail
            )
            return failure(409, "conflict", result.detail, conflict_id=result.conflict_id)
        # one line per link only at debug: at thousands a second the minute's summary
        # (syncd.daemon.report_activity) is what an operator reads
        logger.debug("link {} identity {}", result.status, result.identity_id)
        return Json({"success": True, "status": result.status, "identity_id": result.identity_id})

    async def ingest(event: NewEvent) -> Response:
        check_storable(event)
        result = await ctx.events.submit(event, STORE_WAIT_SECONDS)
        kind = ctx.metrics.kind(event.kind)  # bounded: the activity line names each one
        ctx.counts[f"event {kind}" + (" (duplicate)" if result.duplicate else "")] += 1
        logger.debug("event {} {} → {}", event.kind, result.event_id, result.status)
        return Json({"success": True, "event_id": result.event_id, "duplicate": result.duplicate})

    async def getcourse_event(request: Request) -> Response:
        require_token(request, token)
        params = await read_params(request, ctx.max_body_bytes)
        return await ingest(from_process(request.path_params["event"], params))

    async def salebot_event(request: Request) -> Response:
        require_token(request, token)
        params = await read_params(request, ctx.max_body_bytes)
        return await ingest(from_salebot(request.path_params["event"], params, ctx.project_id))

    async def getcourse_techapi(request: Request) -> Response:
        require_token(request, token)
        return await ingest(from_techapi(await read_params(request, ctx.max_body_bytes)))

    async def metrics(request: Request) -> Response:
        if metrics_token is not None:
            metrics_token.check(request)
        try:  # at most once per GAUGE_SECONDS: a scrape flood never reaches the database
            await ctx.metrics.gauges(refresh)
        except Exception as exc:  # the counters are still worth serving
            logger.warning("metrics: cannot read the store: {}", type(exc).__name__)
        return Response(ctx.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def healthz(_: Request) -> Response:
        return Json({"success": True, "status": "alive"})

    readiness = Readiness(ctx.engine)

    async def refresh() -> None:
        ctx.metrics.ready.set(await readiness.reason() is None)
        await within(PROBE_SECONDS, refresh_gauges(ctx.engine, ctx.metrics))

    async def readyz(_: Request) -> Response:
        reason = await readiness.reason()
        if reason is not None:
            return failure(503, "unavailable", reason)
        return Json({"success": True, "status": "ready", "revision": [schema.HEAD]})

    handlers = _handlers()
    app = Starlette(
        routes=[
            Route("/v1/links", post_links, methods=["POST"]),
            Route("/v1/getcourse/events/{event}", getcourse_event, methods=["GET", "POST"]),
            Route("/v1/getcourse/techapi", getcourse_techapi, methods=["POST"]),
            Route("/v1/salebot/events/{event}", salebot_event, methods=["GET", "POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers=handlers,
    )
    # /v1/links/ is no other route: a JSON 404, never a 307 whose Location echoes ?token=
    app.router.redirect_slashes = False
    kinds = {kind: handler for kind, handler in handlers.items() if isinstance(kind, type)}
    events = "/v1/getcourse/events/"
    hot = HotPaths(
        app,
        {("POST", "/v1/links"): post_links, ("POST", "/v1/getcourse/techapi"): getcourse_techapi},
        kinds,
        {
            ("GET", events): ("event", getcourse_event),
            ("POST", events): ("event", getcourse_event),
            ("GET", BOT_EVENTS): ("event", salebot_event),
            ("POST", BOT_EVENTS): ("event", salebot_event),
        },
    )
    return Timed(hot, ctx.metrics)


async def not_ready(engine: AsyncEngine) -> str | None:
    """Why the daemon is not ready (``/readyz``, ``syncd_ready``), or None when it is."""
    return await Readiness(engine).reason()


class Readiness:
    """The store check of /readyz: within PROBE_SECONDS, one at a time, logged per change."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._pending: asyncio.Future[frozenset[str]] | None = None
        self._said: str | None = None  # the reason last logged; None: ready

    async def reason(self) -> str | None:
        """Why the daemon is not ready, or None when it is."""
        try:  # reading the revision proves the store answers
            if self._pending is not None and not self._pending.done():
                raise TimeoutError  # the last check is still stuck: no second connection
            self._pending = asyncio.ensure_future(schema.current(self.engine))
            current = await within(PROBE_SECONDS, self._pending)
        except TimeoutError:
            return self._not_ready(f"database: no answer within {PROBE_SECONDS:.0f} s")
        except Exception as exc:
            return self._not_ready(f"database: {type(exc).__name__}")
        if current != {schema.HEAD}:
            return self._not_ready("migrations are not at head: run `syncd migrate`")
        if self._said is not None:
            logger.info("ready again")
            self._said = None
        return None

    def _not_ready(self, reason: str) -> str:
        if reason != self._said:  # once per change: probes must not flood the log
            logger.warning("not ready: {}", reason)
            self._said = reason
        return reason


T = TypeVar("T")


async def within(seconds: float, work: Awaitable[T]) -> T:
    """``await work``, or TimeoutError after ``seconds``: a hard limit.

    ``asyncio.timeout`` returns only once the cancelled work has unwound, and a
    connection to a database that black-holes packets can take far longer to give up
    (seen: /readyz 15 s against its 5 s). Here the work runs as a task that is cancelled
    and left to unwind on its own.
    """
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # it unwound with an error: nobody waits for it any more


def check_storable(event: NewEvent) -> None:
    """What the bounded columns hold, checked here so both databases answer alike."""
    if len(event.kind) > MAX_KIND:
        raise InvalidInput("invalid_event", f"the event name is longer than {MAX_KIND}")
    if len(event.external_id) > MAX_EXTERNAL_ID:
        raise InvalidInput(
            "invalid_id", f"the event id (with its status) is longer than {MAX_EXTERNAL_ID}"
        )
    if event.email is not None and len(event.email) > MAX_EMAIL:
        raise InvalidInput("invalid_email", f"email is longer than {MAX_EMAIL}")


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

    async def disconnected(_: Request, __: Exception) -> Response:
        # the client went (or header/body_timeout closed it): nobody reads this answer
        return failure(400, "disconnected")

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
        ClientDisconnect: disconnected,
        StoreUnavailable: unavailable,
        TimeoutError: unavailable,
        404: not_found,
        405: not_found,
        Exception: internal,
    }
