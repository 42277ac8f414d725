"""kill -9 of a real ``syncd run`` while it writes links back to GetCourse: after a
restart every delivery ends sent or dead, and only in-flight calls may repeat."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from syncd.sandbox import getcourse
from syncd.sandbox.faults import Faults
from syncd.sandbox.serve import serve
from syncd.store import outbox
from syncd.store.engine import create_engine
from syncd.store.models import Identity
from tests.daemon import GC_KEY, TOKEN, Daemon

pytestmark = pytest.mark.slow
CONCURRENCY = 8


async def post_links(base_url: str, worker: int, acked: list[str], stop: asyncio.Event) -> None:
    # a slow answer on a loaded machine must not end a worker: only the kill or stop does
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        n = 0
        while not stop.is_set():
            n += 1
            email = f"w{worker}n{n}@crash-school.ru"
            try:
                answer = await http.post(
                    "/v1/links",
                    params={"token": TOKEN},
                    json={"email": email, "telegram_id": str(worker * 1_000_000 + n)},
                )
            except httpx.TransportError:
                return
            if answer.status_code == 200:
                acked.append(email)


async def until_progress(
    going: Callable[[], bool], workers: list[asyncio.Task[None]], seconds: float = 120
) -> None:
    """Wait until ``going()``, while the posters still post; fail if they all stopped."""
    deadline = time.monotonic() + seconds
    while not going():
        alive = any(not w.done() for w in workers)
        assert alive and time.monotonic() < deadline, "the burst did not get going"
        await asyncio.sleep(0.02)


async def test_kill_9_mid_burst_then_every_delivery_settles(db_url: str, tmp_path: Path) -> None:
    state = getcourse.GetCourseState(key=GC_KEY)
    state.add_field("telegram_id")
    state.faults = Faults(latency=0.02, error_rate=0.1, seed=9)  # slow, flaky: work in flight
    async with serve(getcourse.create_app(state), grace=0.2) as gc_url:
        env = {
            "SYNCD_GETCOURSE__BASE_URL": gc_url,
            "SYNCD_DELIVERY__FIRST_RETRY": "1s",
            "SYNCD_DELIVERY__MAX_BACKOFF": "1s",
            "SYNCD_DELIVERY__LEASE": "2s",
            "SYNCD_DELIVERY__CONCURRENCY": str(CONCURRENCY),
        }
        first = Daemon(db_url, tmp_path, **env)
        await asyncio.to_thread(first.start)
        acked: list[str] = []
        stop = asyncio.Event()
        workers = [
            asyncio.create_task(post_links(first.base_url, w, acked, stop)) for w in range(8)
        ]
        # kill once the burst is under way — links acknowledged and calls on the wire —
        # at this machine's pace, not after a fixed time
        await until_progress(lambda: len(acked) >= 50 and len(state.imports()) > 0, workers)
        await asyncio.to_thread(first.kill)
        stop.set()
        await asyncio.gather(*workers)
        sent_before_restart = len(state.imports())

        second = Daemon(db_url, tmp_path, **env)
        try:
            await asyncio.to_thread(second.start)
            engine = create_engine(db_url)
            try:
                deadline = time.monotonic() + 60
                while True:  # links committed but cut off before their 200 count too
                    figures = await outbox.stats(engine)
                    if figures["pending"] == figures["sending"] == 0:
                        break
                    assert time.monotonic() < deadline, f"not settled: {figures}"
                    await asyncio.sleep(0.2)
                assert figures["dead"] == 0 and figures["sent"] >= len(acked)
            finally:
                await engine.dispose()
            assert await asyncio.to_thread(second.stop) == 0
        finally:
            second.close()

    assert len(acked) > sent_before_restart  # the restart really had work left
    written = Counter(call.params["user"]["email"] for call in state.imports())
    assert set(acked) <= set(written)  # every acknowledged link reached GetCourse
    assert len(written) == figures["sent"]
    repeated = sum(count - 1 for count in written.values())
    assert repeated <= CONCURRENCY, f"{repeated} calls repeated: more than were in flight"


async def test_sigterm_mid_burst_exits_0_and_leaves_nothing_claimed(
    db_url: str, tmp_path: Path
) -> None:
    state = getcourse.GetCourseState(key=GC_KEY)
    state.add_field("telegram_id")
    state.faults = Faults(latency=0.3)  # calls are on the wire when the signal comes
    async with serve(getcourse.create_app(state), grace=1.0) as gc_url:
        daemon = Daemon(
            db_url, tmp_path, SYNCD_GETCOURSE__BASE_URL=gc_url, SYNCD_DELIVERY__CONCURRENCY="4"
        )
        await asyncio.to_thread(daemon.start)
        try:
            acked: list[str] = []
            stop = asyncio.Event()
            workers = [
                asyncio.create_task(post_links(daemon.base_url, w, acked, stop)) for w in range(8)
            ]
            await until_progress(lambda: len(acked) >= 50 and len(state.imports()) > 0, workers)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(daemon.process.wait, 30)
            stop.set()
            await asyncio.gather(*workers)
        finally:
            daemon.close()
    assert code == 0
    logs = daemon.logs()
    assert "syncd stopped" in logs and "Traceback" not in logs
    engine = create_engine(db_url)
    try:
        figures = await outbox.stats(engine)
        async with engine.connect() as conn:
            stored = set((await conn.scalars(select(Identity.email))).all())
    finally:
        await engine.dispose()
    assert set(acked) <= stored  # every acknowledged link was committed
    assert figures["sending"] == 0  # in-flight calls recorded, the rest released
    assert figures["sent"] == len(state.imports()) and figures["pending"] > 0
