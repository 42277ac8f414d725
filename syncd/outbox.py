"""The dispatcher: claims due deliveries, sends them, records what happened (SPEC §5).

One claim loop keeps up to ``concurrency`` sends in flight. Each send goes through the
target's rate limiter and sender; its outcome is classified by exception type —
:class:`TransientError` → retry per :class:`~syncd.retry.BackoffPolicy` (or ``dead`` when
it gives up), :class:`PermanentError` → ``dead`` at once — and recorded through a
group-commit :class:`~syncd.batching.Batcher`. :meth:`Dispatcher.wake` lets a local
enqueue skip the poll interval.

Stopping: no new claims; sends that have not reached the wire are released (back to
``pending``, the attempt not counted); sends on the wire get ``drain`` seconds, then are
cancelled and released too. A call cancelled on the wire may have been received: that
is the documented at-least-once window.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from syncd.batching import Batcher
from syncd.errors import PermanentError, StoreUnavailable, TransientError
from syncd.logs import redact
from syncd.metrics import Metrics
from syncd.ratelimit import RateLimiter
from syncd.retry import BackoffPolicy, GiveUp
from syncd.rules import META, reply_call
from syncd.store import outbox
from syncd.store.models import utcnow
from syncd.store.outbox import Claimed, Confirmed, NewDelivery, Outcome

#: ``await sender(action, payload)``: returns on success, raises a DeliveryError.
Sender = Callable[[str, dict[str, Any]], Awaitable[object]]


def owner_name() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    def __init__(
        self,
        engine: AsyncEngine,
        senders: Mapping[str, Sender],
        policy: BackoffPolicy,
        *,
        limiters: Mapping[str, RateLimiter] | None = None,
        concurrency: int = 16,
        lease: timedelta = timedelta(seconds=60),
        poll_seconds: float = 1.0,
        drain_seconds: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.senders = senders
        self.policy = policy
        self.limiters = limiters or {}
        self.concurrency = concurrency
        self.lease = lease
        self.poll_seconds = poll_seconds
        self.drain_seconds = drain_seconds
        self.metrics = metrics
        self.owner = owner_name()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set when half the slots are free again
        self._slots = asyncio.Semaphore(concurrency)
        #: rows whose call has started: from the send until its outcome is committed
        self._on_wire: set[int] = set()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._recorder: Batcher[Outcome, None] = Batcher(
            self._record, max_batch=512, name="outbox-recorder"
        )
        self._loop: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Something was enqueued: look now instead of at the next poll."""
        self._wake.set()

    async def _record(self, outcomes: Sequence[Outcome]) -> list[None]:
        await outbox.record(self.engine, self.owner, outcomes)
        if any(o.follow_ups for o in outcomes):
            self.wake()
        return [None] * len(outcomes)

    async def __aenter__(self) -> Dispatcher:
        await self._recorder.__aenter__()
        self._loop = asyncio.create_task(self._run(), name="dispatcher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        waiting = [t for i, t in self._tasks.items() if i not in self._on_wire]
        for task in waiting:
            task.cancel()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks.values()), timeout=self.drain_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._recorder.__aexit__(None, None, None)

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            self._slots.release()
            if self._tasks and self._free_slots() < self.concurrency // 2:
                # claim in batches, not a row per freed slot: wait for half the slots
                self._room.clear()
                await self._room.wait()
                continue
            free = self._free_slots()
            try:
                rows = await outbox.claim(self.engine, self.owner, free, self.lease)
            except StoreUnavailable as exc:
                logger.warning("outbox: cannot claim deliveries: {}", exc)
                rows = []
            for row in rows:
                await self._slots.acquire()
                self._tasks[row.id] = asyncio.create_task(self._deliver(row))
            if len(rows) < free:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    def _free_slots(self) -> int:
        return max(1, self.concurrency - len(self._tasks))

    async def _deliver(self, row: Claimed) -> None:
        log = logger.bind(delivery_id=row.id, action=f"{row.target}.{row.action}")
        try:
            limiter = self.limiters.get(row.target)
            if limiter is not None:
                await limiter.acquire()
            self._on_wire.add(row.id)
            meta = row.payload.get(META)
            payload = row.payload
            if isinstance(meta, dict):  # syncd's own note on the row: never sent
                payload = {k: v for k, v in payload.items() if k != META}
            try:
                result = await self.senders[row.target](row.action, payload)
            except TransientError as exc:
                outcome = self._after_failure(row, exc)
            except PermanentError as exc:
                outcome = Outcome(row.id, "dead", redact(str(exc)))
            except Exception as exc:  # a bug in a sender: retry, loudly
                log.opt(exception=exc).error("delivery failed unexpectedly")
                outcome = self._after_failure(row, TransientError(type(exc).__name__))
            else:
                outcome = _sent(row, meta, result)
        except asyncio.CancelledError:
            outcome = Outcome(row.id, "released")
        # The slot is held until the outcome is committed: at most `concurrency` rows are
        # ever sent-but-unrecorded, the most a crash can repeat (SPEC §5).
        try:
            self._log(log, row, outcome)
            if self.metrics is not None and outcome.status != "released":
                self.metrics.deliveries.labels(row.target, outcome.status).inc()
            await self._recorder.submit(outcome)
        except StoreUnavailable as exc:  # the lease expires and the row is taken again
            log.warning("outbox: could not record the outcome: {}", exc)
        finally:
            self._on_wire.discard(row.id)
            self._tasks.pop(row.id, None)
            self._slots.release()
            if self._free_slots() >= self.concurrency // 2 or not self._tasks:
                self._room.set()

    def _after_failure(self, row: Claimed, exc: TransientError) -> Outcome:
        error = redact(str(exc))
        decision = self.policy.next(row.attempts, row.age_from, utcnow(), exc.retry_after)
        if isinstance(decision, GiveUp):
            return Outcome(row.id, "dead", f"{decision.reason}; last error: {error}")
        return Outcome(row.id, "retry", error, decision.when)

    @staticmethod
    def _log(log: Any, row: Claimed, outcome: Outcome) -> None:
        if outcome.status == "sent":
            log.info("delivery sent (attempt {})", row.attempts)
        elif outcome.status == "retry":
            log.warning("delivery will retry at {}: {}", outcome.next_attempt_at, outcome.error)
        elif outcome.status == "dead":
            log.error("delivery dead: {}", outcome.error)


def _sent(row: Claimed, meta: object, result: object) -> Outcome:
    """A ``sent`` outcome with what follows from it: keys GetCourse now holds (a
    write-back's ``confirms``), and a deal's reply to the bot (a ``reply``)."""
    if not isinstance(meta, dict):
        return Outcome(row.id, "sent")
    confirmed = None
    confirms = meta.get("confirms")
    if isinstance(confirms, dict) and row.identity_id is not None:
        confirmed = Confirmed(
            row.identity_id, confirms.get("telegram_id"), confirms.get("client_id")
        )
    follow_ups: tuple[NewDelivery, ...] = ()
    reply = reply_call(meta, result)
    if reply is not None:
        follow_ups = (
            NewDelivery(
                reply.target,
                reply.action,
                reply.payload,
                identity_id=row.identity_id,
                dedupe_key=f"reply:{row.id}",
            ),
        )
    return Outcome(row.id, "sent", follow_ups=follow_ups, confirmed=confirmed)
