"""Prometheus metrics (``GET /metrics``), named ``syncd_…`` with their unit in the name.

One :class:`Metrics` (its own registry, so tests can build many apps) is shared by the
HTTP layer, the stores' callers and the dispatcher. Counters move where an outcome is
decided; the outbox and export-budget gauges are read from the database at scrape time,
so several daemons on one database report the same truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Route templates by path prefix, so a label never carries an id or a token.
ROUTES = (
    ("/v1/links", "/v1/links"),
    ("/v1/getcourse/events/", "/v1/getcourse/events/{event}"),
    ("/v1/getcourse/techapi", "/v1/getcourse/techapi"),
    ("/healthz", "/healthz"),
    ("/readyz", "/readyz"),
    ("/metrics", "/metrics"),
)


class Metrics:
    def __init__(self) -> None:
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observe: Callable[[], None] = lambda: self.metrics.latency.labels(  # noqa: E731
            route_of(scope["path"]), scope["method"]
        ).observe(time.perf_counter() - started)

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                observe()

        await self.app(scope, receive, timed_send)
