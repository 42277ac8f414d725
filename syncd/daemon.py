"""The process: one place starts and stops everything.

Start-up order: store (and migrations), the link writer, then the HTTP server on a socket
we bind ourselves (so a busy port is one clear error). Shutdown runs the same stack
backwards: stop accepting and finish in-flight requests, drain the link writer, close the
store. SIGTERM and SIGINT both mean "stop cleanly".
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.batching import Batcher
from syncd.config import Settings
from syncd.errors import ConfigError, PermanentError, StoreUnavailable
from syncd.events import NewEvent
from syncd.http.app import AppContext, create_app
from syncd.http.server import Limits, guarded
from syncd.http.wire import with_utf8_targets
from syncd.memory import release_freed
from syncd.metrics import Metrics
from syncd.notify import Notifier
from syncd.outbox import Dispatcher, Sender
from syncd.ratelimit import RateLimiter
from syncd.retry import BackoffPolicy
from syncd.rules import Skip, compile_rules, unproduced_kinds
from syncd.scheduled import StoppableJobs
from syncd.store import schema
from syncd.store.engine import create_engine, is_sqlite, safe_url
from syncd.store.errors import translated
from syncd.store.events import Addressing, EventStore, IngestResult, OnSkips, expire_waiting
from syncd.store.links import Effects, LinkRequest, LinkResult, LinkStore, no_effects
from syncd.writeback import WriteBack

if TYPE_CHECKING:
    import httpx

GRACEFUL_SECONDS = 10
ACTIVITY_SECONDS = 60.0
#: Event batches in flight at once on PostgreSQL (see syncd.batching).
BATCHES_IN_FLIGHT = 2
#: How long a link or event batch waits for the callers of the last one to come back
#: (see syncd.batching): 32 bots' requests commit as one batch, not as 31 and 1. A lone
#: caller never waits; under load a request waits at most this much more.
BATCH_LINGER_SECONDS = 0.002


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def prepare_schema(engine: AsyncEngine, auto_migrate: bool) -> None:
    async with translated():
        if not auto_migrate:
            await schema.require_head(engine)
        elif not await schema.at_head(engine):
            from syncd.store import migrate  # Alembic, loaded only to migrate

            await migrate.upgrade(engine)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it small answers wait for delayed ACKs (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError("http.port", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


#: Descriptors beyond ``http.max_connections``: database pool, outgoing calls, logs.
SPARE_DESCRIPTORS = 256


def connection_limits(settings: Settings) -> Limits:
    """``http.header_timeout``, ``body_timeout``, ``max_connections``; the descriptor limit
    raised to fit them where the hard limit allows (the unit sets ``LimitNOFILE=``)."""
    h = settings.http
    limits = Limits(
        h.header_timeout.total_seconds(), h.body_timeout.total_seconds(), h.max_connections
    )
    needed = h.max_connections + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(OSError, ValueError):  # the unit's filter may refuse
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        if soft < needed:
            logger.warning(
                "only {} file descriptors for http.max_connections = {}: raise LimitNOFILE= "
                "(or ulimit -n) to {} or lower http.max_connections",
                soft,
                h.max_connections,
                needed,
            )
    return limits


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    addressing(settings)  # a bad rule stops start-up before anything opens
    for warning in unproduced_kinds(settings.rules):
        logger.warning(warning)
    if not settings.http.token:
        raise ConfigError("http.token", "must be set (the shared secret of every /v1 endpoint)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve_until(settings, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def policy(settings: Settings) -> BackoffPolicy:
    d = settings.delivery
    return BackoffPolicy(d.first_retry, d.max_backoff, d.max_attempts, d.max_age)


def senders(http: httpx.AsyncClient, settings: Settings) -> dict[str, Sender]:
    """How each outbox target is called."""
    from syncd.clients.getcourse import GetCourseClient
    from syncd.clients.salebot import SalebotClient

    getcourse = GetCourseClient(http, settings.getcourse.url, settings.getcourse.api_key)
    salebot = SalebotClient(http, settings.salebot.base_url, settings.salebot.api_key)

    async def to_getcourse(action: str, payload: dict[str, Any]) -> object:
        if action == "import_user":
            return await getcourse.import_user(payload)
        if action == "import_deal":
            return await getcourse.import_deal(payload)
        raise PermanentError(f"unknown getcourse action {action!r}")

    async def to_salebot(action: str, payload: dict[str, Any]) -> object:
        return await salebot.call(action, payload)

    return {"getcourse": to_getcourse, "salebot": to_salebot}


class Outgoing:
    """The daemon's one outgoing HTTP client, made at its first use.

    httpx, aiohttp and the transport between them (``syncd.clients.http``) are ~8 MiB
    of a daemon's RSS (``bench/idle_rss.py --breakdown``): a daemon with nothing to
    deliver and the export poller off never loads them.
    """

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            from syncd.clients.http import new_http_client

            self._client = new_http_client()
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def lazy_senders(outgoing: Outgoing, settings: Settings) -> dict[str, Sender]:
    """:func:`senders` over ``outgoing``'s client, made at the first call of any target.

    The first call also puts the real senders into the returned dict, so that a
    dispatcher holding it calls them directly from then on.
    """
    made: dict[str, Sender] = {}

    def target(name: str) -> Sender:
        async def first(action: str, payload: dict[str, Any]) -> object:
            if not made:
                made.update(senders(outgoing.client(), settings))
                lazy.update(made)
            return await made[name](action, payload)

        return first

    lazy = {name: target(name) for name in ("getcourse", "salebot")}
    return lazy


def write_back(settings: Settings) -> Effects:
    """The GetCourse write-back of links; off while ``getcourse.api_key`` is empty."""
    gc = settings.getcourse
    if not gc.api_key:
        return no_effects
    return WriteBack(
        gc.telegram_id_field, gc.client_id_field, settings.salebot.project_id, gc.create_users
    )


class _Enqueues(Protocol):
    enqueued: int


In = TypeVar("In")
Out = TypeVar("Out")


def waking(
    apply: Callable[[Sequence[In]], Awaitable[Out]],
    store: _Enqueues,
    dispatcher: Dispatcher,
) -> Callable[[Sequence[In]], Awaitable[Out]]:
    """``apply``, then wake the dispatcher if the store enqueued deliveries."""

    async def applied(batch: Sequence[In]) -> Out:
        before = store.enqueued
        results = await apply(batch)
        if store.enqueued != before:
            dispatcher.wake()
        return results

    return applied


def counted(
    ingest: Callable[[Sequence[NewEvent]], Awaitable[list[IngestResult]]], metrics: Metrics
) -> Callable[[Sequence[NewEvent]], Awaitable[list[IngestResult]]]:
    """``ingest``, counting events by kind, source and whether they were repeats."""

    async def ingested(batch: Sequence[NewEvent]) -> list[IngestResult]:
        results = await ingest(batch)
        _observe(
            metrics,
            Counter(
                (event.kind, event.source, result.duplicate)
                for event, result in zip(batch, results, strict=True)
            ),
        )
        return results

    return ingested


def counted_new(
    ingest: Callable[[Sequence[NewEvent]], Awaitable[Counter[tuple[str, str, bool]]]],
    metrics: Metrics,
) -> Callable[[Sequence[NewEvent]], Awaitable[Counter[tuple[str, str, bool]]]]:
    """:func:`counted` for the poller's ingest, which answers with counts."""

    async def ingested(batch: Sequence[NewEvent]) -> Counter[tuple[str, str, bool]]:
        counts = await ingest(batch)
        _observe(metrics, counts)
        return counts

    return ingested


def _observe(metrics: Metrics, counts: Counter[tuple[str, str, bool]]) -> None:
    for (kind, source, repeat), n in counts.items():
        metrics.events.labels(metrics.kind(kind), source, str(repeat).lower()).inc(n)


def addressing(settings: Settings) -> Addressing:
    """The compiled ``[[rules]]`` and how to address Salebot (a ConfigError names a bad rule)."""
    return Addressing(
        compile_rules(settings.rules),
        settings.salebot.project_id,
        settings.salebot.bot_name,
        settings.delivery.wait_for_link,
        settings.delivery.max_event_age,
    )


def skip_reporter(metrics: Metrics | None) -> OnSkips:
    """One log line per rule and reason for the rules that made no call (SPEC §11)."""

    def report(skips: list[Skip]) -> None:
        by_rule: dict[tuple[int, str], list[Skip]] = {}
        for skip in skips:
            by_rule.setdefault((skip.rule.index, skip.reason), []).append(skip)
        for (index, reason), same in sorted(by_rule.items()):
            rule = same[0].rule
            if metrics is not None:
                metrics.rule_skips.labels(f"{index}:{rule.event}", reason).inc(len(same))
            logger.bind(rule=rule.name, reason=reason, events=len(same)).info(
                "{}: {} event(s) made no call: {} ({})",
                rule.name,
                len(same),
                reason,
                same[0].detail,
            )

    return report


def event_store(engine: AsyncEngine, settings: Settings, metrics: Metrics | None) -> EventStore:
    return EventStore(engine, addressing(settings), skip_reporter(metrics))


def link_store(engine: AsyncEngine, settings: Settings, events: EventStore) -> LinkStore:
    """What ``POST /v1/links`` and ``syncd identity link`` both apply links with."""
    return LinkStore(engine, settings.identity.on_conflict, write_back(settings), events.after_link)


async def _sync_writeback(engine: AsyncEngine, settings: Settings) -> None:
    """At start, with a GetCourse key: queue the write-backs GetCourse never confirmed."""
    effects = write_back(settings)
    if not isinstance(effects, WriteBack):
        return
    from syncd.store.writeback import sync

    try:
        queued = await sync(engine, effects)
    except StoreUnavailable as exc:
        logger.warning("cannot check which links GetCourse has not confirmed: {}", exc)
        return
    if queued:
        logger.info(
            "{} people's keys were never confirmed by GetCourse: writes queued", len(queued)
        )


async def _expire(engine: AsyncEngine) -> None:
    try:
        expired = await expire_waiting(engine)
    except StoreUnavailable as exc:
        logger.warning("cannot expire waiting events: {}", exc)
        return
    if expired:
        logger.info("{} events waited longer than delivery.wait_for_link: expired", expired)


async def serve_until(settings: Settings, stop: asyncio.Event) -> None:
    """Everything `syncd run` runs, until `stop` is set (no signal handling here)."""
    async with AsyncExitStack() as stack:
        engine = create_engine(settings.database.url, durability=settings.database.durability)
        stack.push_async_callback(engine.dispose)
        await prepare_schema(engine, settings.database.auto_migrate)
        if not settings.getcourse.api_key:
            logger.warning("getcourse.api_key is empty: links are not written back to GetCourse")
        metrics = Metrics(kinds=(rule.event for rule in settings.rules))
        outgoing = Outgoing()  # closed after the dispatcher has stopped
        stack.push_async_callback(outgoing.aclose)
        dispatcher = await stack.enter_async_context(
            Dispatcher(
                engine,
                lazy_senders(outgoing, settings),
                policy(settings),
                limiters={"salebot": RateLimiter(settings.salebot.rate_per_second)},
                concurrency=settings.delivery.concurrency,
                lease=settings.delivery.lease,
                metrics=metrics,
            )
        )
        events_in = event_store(engine, settings, metrics)
        store = link_store(engine, settings, events_in)
        await _sync_writeback(engine, settings)

        # Events on PostgreSQL: a second batch makes its round trips while the first
        # holds the identity lock (bot events: +40-50 % in bench/ingest.py). Links hold
        # that lock from their first read, so a second link batch only split the
        # batches (-5 %); SQLite has one writer in-process anyway.
        in_flight = 1 if is_sqlite(engine) else BATCHES_IN_FLIGHT
        apply_links = waking(store.apply, store, dispatcher)
        links: Batcher[LinkRequest, LinkResult] = await stack.enter_async_context(
            Batcher(apply_links, name="links", linger=BATCH_LINGER_SECONDS)
        )
        apply_events = counted(waking(events_in.ingest, events_in, dispatcher), metrics)
        events: Batcher[NewEvent, IngestResult] = await stack.enter_async_context(
            Batcher(apply_events, name="events", concurrency=in_flight, linger=BATCH_LINGER_SECONDS)
        )
        scheduler = AsyncIOScheduler(timezone="UTC")
        stoppable = StoppableJobs()  # a stop mid-job is one log line, not a traceback
        scheduler.add_job(_expire, "interval", seconds=60, args=[engine], id="expire-waiting")
        poll = settings.getcourse.poll
        if poll.interval.total_seconds() > 0 and settings.getcourse.api_key:
            from syncd.poller import Poller, jobs  # and ijson: loaded when the poller is on

            poll_events = counted_new(waking(events_in.ingest_new, events_in, dispatcher), metrics)
            gc = settings.getcourse
            poller = Poller(engine, outgoing.client(), gc.url, gc.api_key, poll_events)
            scheduler.add_job(
                stoppable.wrap(
                    poller.cycle,
                    "poller: stopped while waiting for GetCourse; "
                    "a started export is collected at the next start",
                ),
                "interval",
                seconds=poll.interval.total_seconds(),
                args=[jobs(poll.exports, poll.groups, poll.since)],
                id="export-poller",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC) + timedelta(seconds=5),
            )
        elif poll.interval.total_seconds() > 0:
            logger.warning("getcourse.api_key is empty: the export poller is off")
        scheduler.start()
        stack.push_async_callback(stoppable.stop)  # runs after the scheduler's shutdown
        stack.callback(scheduler.shutdown, wait=False)
        ctx = AppContext(
            engine=engine,
            links=links,
            events=events,
            token=settings.http.token,
            max_body_bytes=settings.http.max_body_bytes,
            project_id=settings.salebot.project_id,
            metrics=metrics,
            previous_tokens=tuple(settings.http.previous_tokens),
            metrics_token=settings.http.metrics_token,
        )
        app = create_app(ctx)
        reporter = asyncio.create_task(report_activity(ctx.counts), name="activity")
        stack.callback(reporter.cancel)
        sock = listen(settings.http.host, settings.http.port)
        stack.callback(sock.close)
        server = _Server(
            uvicorn.Config(
                app,
                lifespan="off",
                access_log=False,  # its lines would carry ?token=
                log_config=None,
                server_header=False,
                proxy_headers=False,  # syncd reads no client address
                timeout_graceful_shutdown=GRACEFUL_SECONDS,
                http=with_utf8_targets(guarded(connection_limits(settings), metrics)),
                ws="none",  # no WebSocket routes: an upgrade is an ordinary request
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
        notifier = Notifier()
        notifier.ready(f"listening on {host}:{port}")  # bound, and migrations are at head
        release_freed()  # what start-up freed: up to ~4 MiB of RSS (bench/idle_rss.py)
        pinging = asyncio.create_task(notifier.watchdog(), name="watchdog")
        stack.callback(pinging.cancel)
        stack.callback(notifier.stopping)  # runs first on the way out
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        logger.info("syncd stopping")
    logger.info("syncd stopped")


async def report_activity(counts: Counter[str], every: float = ACTIVITY_SECONDS) -> None:
    """Once per ``every`` seconds with traffic: one INFO line counting links by status."""
    while True:
        await asyncio.sleep(every)
        if counts:
            summary = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
            logger.bind(**counts).info("links in the last {:.0f} s: {}", every, summary)
            counts.clear()


async def _stop_server(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    server.should_exit = True
    await serving
