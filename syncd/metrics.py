"""Prometheus metrics (``GET /metrics``), named ``syncd_…`` with their unit in the name.

One :class:`Metrics` (its own registry, so tests can build many apps) is shared by the
HTTP layer, the stores' callers and the dispatcher. Counters move where an outcome is
decided; the outbox and export-budget gauges are read from the database at scrape time
(at most once per :data:`GAUGE_SECONDS`, see :class:`Throttle`), so several daemons on
one database report the same truth and a scrape flood does not reach the database.

Every label set is bounded, whatever clients send: an event kind is a label only when a
rule names it or it is one of the canonical kinds (SPEC §6, §10), else ``other``; HTTP
methods other than the ones syncd serves are ``other``; routes are templates.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from syncd import __version__

#: Route templates by path prefix, so a label never carries an id or a token.
ROUTES = (
    ("/v1/links", "/v1/links"),
    ("/v1/getcourse/events/", "/v1/getcourse/events/{event}"),
    ("/v1/getcourse/techapi", "/v1/getcourse/techapi"),
    ("/v1/salebot/events/", "/v1/salebot/events/{event}"),
    ("/healthz", "/healthz"),
    ("/readyz", "/readyz"),
    ("/metrics", "/metrics"),
)
#: The event kinds every daemon may see (SPEC §6 and §10); rules add theirs.
CANONICAL_KINDS = frozenset(
    {
        "user.created", "deal.created", "deal.paid", "deal.status_changed", "group.joined",
        "payment.expected", "payment.accepted", "payment.returned", "payment.tobalance",
        "payment.frombalance", "payment.returned_to_balance",
        "bot.started", "bot.step", "bot.tag", "bot.question",
    }
)  # fmt: skip
METHODS = frozenset({"GET", "POST", "HEAD"})
#: The least time between two reads of the database-backed gauges.
GAUGE_SECONDS = 5.0


class Metrics:
    def __init__(self, kinds: Iterable[str] = ()) -> None:
        #: event kinds that get their own label value; the rest are counted as ``other``
        self.kinds = CANONICAL_KINDS | frozenset(kinds)
        self.registry = CollectorRegistry()
        r = self.registry
        self.links = Counter(
            "syncd_links_total", "Links answered, by outcome.", ["outcome"], registry=r
        )
        self.events = Counter(
            "syncd_events_total", "GetCourse events received, by kind and source.",
            ["kind", "source", "duplicate"], registry=r,
        )  # fmt: skip
        self.deliveries = Counter(
            "syncd_deliveries_total", "Outgoing calls finished, by target and outcome.",
            ["target", "outcome"], registry=r,
        )  # fmt: skip
        self.rule_skips = Counter(
            "syncd_rule_skips_total", "Rules that matched an event but made no call, by reason.",
            ["rule", "reason"], registry=r,
        )  # fmt: skip
        self.outbox_due = Gauge(
            "syncd_outbox_due_deliveries",
            "Deliveries due now (pending or lease expired).",
            registry=r,
        )
        self.outbox_by_status = Gauge(
            "syncd_outbox_deliveries",
            "Deliveries in the outbox, by status.",
            ["status"],
            registry=r,
        )
        self.outbox_oldest = Gauge(
            "syncd_outbox_oldest_due_age_seconds", "Age of the oldest delivery due now.", registry=r
        )
        self.budget_left = Gauge(
            "syncd_export_budget_left_requests",
            "GetCourse export requests left in the current 2-hour window.", registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "syncd_http_request_duration_seconds", "HTTP request latency, by route.",
            ["route", "method"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
        )  # fmt: skip
        # operations (issue 12): token rotation, readiness, build, the process itself
        self.auth_previous = Counter(
            "syncd_auth_previous_token_total",
            "Requests accepted with a token from http.previous_tokens, by route template.",
            ["route"], registry=r,
        )  # fmt: skip
        self.ready = Gauge(
            "syncd_ready", "1 when the database answers and migrations are at head.", registry=r
        )
        Info("syncd_build", "The running syncd.", registry=r).info({"version": __version__})
        ProcessCollector(registry=r)

        self.dropped = Counter(
            "syncd_http_connections_dropped_total",
            "Connections closed by syncd before an answer, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.gauges = Throttle(GAUGE_SECONDS)

    def kind(self, kind: str) -> str:
        """``kind`` as a label value: itself when known, else ``other``."""
        return kind if kind in self.kinds else "other"

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Throttle:
    """Run a refresh at most once per ``seconds``; other callers use the last figures.

    The caller that starts a refresh waits for it (and sees its exception); callers that
    come while one runs, or within ``seconds`` of the last start, return at once. So N
    scrapes a second cost the database one read per ``seconds``, and a slow database
    slows one scrape, not all of them.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0
        self._running = False

    async def __call__(self, refresh: Callable[[], Awaitable[None]]) -> None:
        now = time.monotonic()
        if self._running or now < self._next:
            return
        self._running, self._next = True, now + self.seconds
        try:
            await refresh()
        finally:
            self._running = False


def route_of(path: str) -> str:
    for prefix, template in ROUTES:
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return template
    return "other"


class Timed:
    """ASGI wrapper: the latency of every HTTP request, by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        #: per (route template, method): the histogram's child (``labels()`` validates and
        #: locks on every call; both keys are bounded)
        self._children: dict[tuple[str, str], Histogram] = {}

    def _child(self, path: str, method: str) -> Histogram:
        key = (route_of(path), method if method in METHODS else "other")
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.latency.labels(*key)
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._child(scope["path"], scope["method"]).observe(time.perf_counter() - started)

        await self.app(scope, receive, timed_send)
