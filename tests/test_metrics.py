"""GET /metrics: counters where outcomes are decided, gauges read from the store."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.metrics import Metrics
from syncd.store import outbox
from syncd.store.outbox import NewDelivery
from tests.test_webhook_links import AUTH, TOKEN, client_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_what_happened(engine: AsyncEngine) -> None:
    metrics = Metrics()
    async with engine.begin() as conn:
        await outbox.enqueue(conn, [NewDelivery("salebot", "callback", {"client_id": 1})])
    async for client in client_for(engine, metrics=metrics):
        await client.post(
            "/v1/links", json={"email": "a@school.ru", "telegram_id": 1}, headers=AUTH
        )
        await client.post(
            "/v1/links", json={"email": "b@school.ru", "telegram_id": 1}, headers=AUTH
        )
        await client.post("/v1/links", json={"email": "#{email}", "telegram_id": 2}, headers=AUTH)
        await client.post("/v1/links", json={"email": "c@school.ru", "telegram_id": 3})
        for _ in range(2):
            await client.get(
                "/v1/getcourse/events/deal.paid",
                params={"token": TOKEN, "email": "a@school.ru", "id": "77"},
            )
        answer = await client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    got = samples(answer.text)
    assert got[("syncd_links_total", (("outcome", "created"),))] == 1
    assert got[("syncd_links_total", (("outcome", "conflict"),))] == 1
    assert got[("syncd_links_total", (("outcome", "invalid"),))] == 1
    assert got[("syncd_links_total", (("outcome", "unauthorized"),))] == 1
    paid = (("duplicate", "false"), ("kind", "deal.paid"), ("source", "webhook"))
    assert got[("syncd_events_total", paid)] == 1
    assert got[("syncd_events_total", (("duplicate", "true"), *paid[1:]))] == 1
    assert got[("syncd_outbox_deliveries", (("status", "pending"),))] == 1
    assert got[("syncd_outbox_due_deliveries", ())] == 1
    assert got[("syncd_outbox_oldest_due_age_seconds", ())] >= 0
    assert got[("syncd_export_budget_left_requests", ())] == 100
    routes = {dict(labels).get("route") for (name, labels) in got if name.startswith("syncd_http_")}
    assert {"/v1/links", "/v1/getcourse/events/{event}"} <= routes
    assert routes <= {"/v1/links", "/v1/getcourse/events/{event}", "/metrics"}  # templates only
    count = "syncd_http_request_duration_seconds_count"
    # every answer timed once, refusals too; the hot routes time themselves
    assert got[(count, (("method", "POST"), ("route", "/v1/links")))] == 4
    assert got[(count, (("method", "GET"), ("route", "/v1/getcourse/events/{event}")))] == 2
    assert TOKEN not in answer.text


async def test_polled_events_are_counted_by_kind_and_repeat(engine: AsyncEngine) -> None:
    from prometheus_client import generate_latest

    from syncd.config import Settings
    from syncd.daemon import addressing, counted_new
    from syncd.events import from_export_row
    from syncd.store.events import EventStore
    from tests.test_events import DEAL_FIELDS, deal_row

    metrics = Metrics()
    store = EventStore(engine, addressing(Settings()))
    ingest = counted_new(store.ingest_new, metrics)
    events = [e for i in range(3) for e in from_export_row("deals", DEAL_FIELDS, deal_row(i))]
    await ingest(events)
    await ingest(events[:2])  # deal 7000 (created + paid) again
    got = samples(generate_latest(metrics.registry).decode())
    created = (("duplicate", "false"), ("kind", "deal.created"), ("source", "poller"))
    assert got[("syncd_events_total", created)] == 3
    assert got[("syncd_events_total", (("duplicate", "true"), *created[1:]))] == 1
    paid = (("duplicate", "true"), ("kind", "deal.paid"), ("source", "poller"))
    assert got[("syncd_events_total", paid)] == 1
