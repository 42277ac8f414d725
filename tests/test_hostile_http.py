"""/metrics stays small and cheap, /readyz answers in time, no redirect echoes the token."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.config import Settings
from syncd.daemon import counted_new
from syncd.events import NewEvent
from syncd.metrics import Metrics
from syncd.store.engine import create_engine
from tests.test_webhook_links import AUTH, TOKEN, client_for


async def test_metrics_labels_stay_bounded_with_5000_event_kinds(sqlite_url: str) -> None:
    settings = Settings.model_validate(
        {"rules": [{"event": "lesson.done", "action": "callback", "message": "m"}]}
    )
    metrics = Metrics(kinds=(rule.event for rule in settings.rules))
    kinds = ["deal.paid", "lesson.done", *(f"kind{i}" for i in range(5000))]

    async def polled(batch: Sequence[NewEvent]) -> Counter[tuple[str, str, bool]]:
        return Counter((event.kind, event.source, False) for event in batch)

    # 5,000 kinds as the poller would count them (the store is not what is measured) ...
    await counted_new(polled, metrics)([NewEvent(k, "1", "poller") for k in kinds])
    engine = create_engine(sqlite_url)
    try:
        async for client in client_for(engine, settings=settings, metrics=metrics):
            for kind in ("deal.paid", "lesson.done", "kind1", "kind2"):  # ... and webhooks
                answer = await client.get(
                    f"/v1/getcourse/events/{kind}",
                    params={"token": TOKEN, "email": "a@school.ru", "id": "1"},
                )
                assert answer.status_code == 200
            for method in ("FOO", "BAR", "PURGE"):  # client-chosen methods: no label each
                await client.request(method, "/v1/links")
            text = (await client.get("/metrics")).text
    finally:
        await engine.dispose()
    assert 'kind="deal.paid"' in text and 'kind="lesson.done"' in text
    assert 'syncd_events_total{duplicate="false",kind="other",source="poller"} 5000.0' in text
    assert 'kind="other",source="webhook"' in text
    assert "kind4999" not in text and 'method="FOO"' not in text
    assert len(text.encode()) < 40_000  # was 1.36 MB with 5,000 kinds
    print(f"/metrics: {len(text.encode())} bytes after 5,002 kinds")


async def test_a_scrape_flood_reads_the_database_once(db_url: str) -> None:
    engine = create_engine(db_url)
    statements = 0

    @sa_event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    try:
        async for client in client_for(engine):
            first = await client.get("/metrics")
            after_first = statements
            answers = await asyncio.gather(*(client.get("/metrics") for _ in range(200)))
    finally:
        await engine.dispose()
    assert first.status_code == 200 and all(a.status_code == 200 for a in answers)
    assert after_first > 0  # the first scrape read the gauges ...
    assert statements == after_first  # ... the next 200 (within 5 s) did not


class Hole:
    """A TCP proxy on loopback to PostgreSQL that, once ``close()``d, swallows every byte
    both ways and never answers: the database black-holes packets."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.swallowing = False
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    def close(self) -> None:
        self.swallowing = True

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            if not self.swallowing:
                writer.write(chunk)
                await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.swallowing:
            await self._pipe(reader, writer)
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers.append(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hole]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            for writer in self._writers:
                writer.close()
            server.close()


async def test_readyz_answers_within_its_limit_when_the_database_black_holes(
    pg_url: str,
) -> None:
    real = make_url(pg_url)
    async with Hole(real.host or "127.0.0.1", real.port or 5432).running() as hole:
        engine = create_engine(
            real.set(host="127.0.0.1", port=hole.port).render_as_string(hide_password=False)
        )
        try:
            async for client in client_for(engine):
                assert (await client.get("/readyz")).status_code == 200  # pooled, in use
                hole.close()
                started = time.monotonic()
                first = await client.get("/readyz")
                took = time.monotonic() - started
                started = time.monotonic()
                second = await client.get("/readyz")  # the first check is still stuck
                again = time.monotonic() - started
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(engine.dispose(), 5)
    assert first.status_code == 503
    assert first.json()["detail"] == "database: no answer within 5 s"
    assert took < 6.5  # its 5 s and the time to answer; was 15 s
    assert second.status_code == 503 and again < 1  # no pile-up of stuck checks
    print(f"/readyz with a black-holed database: {took:.2f} s, then {again * 1000:.0f} ms")


async def test_a_trailing_slash_is_a_json_404_never_a_redirect(engine: AsyncEngine) -> None:
    async for client in client_for(engine):
        answers = [
            await client.post(f"/v1/links/?token={TOKEN}", json={"email": "a@school.ru"}),
            await client.get(f"/v1/getcourse/events/deal.paid/?token={TOKEN}&id=1"),
            await client.post("/v1/getcourse/techapi/", json={}, headers=AUTH),
            await client.get("/readyz/"),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.request.url
        assert answer.json() == {"success": False, "error": "not_found"}
        assert "location" not in answer.headers
        assert TOKEN not in answer.text
