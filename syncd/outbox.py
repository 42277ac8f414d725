"""The dispatcher: claims due deliveries, sends them, records what happened (SPEC §5).

One claim loop keeps up to ``concurrency`` sends in flight. Each send goes through the
target's rate limiter and sender; its outcome is classified by exception type —
:class:`TransientError` → retry per :class:`~syncd.retry.BackoffPolicy` (or ``dead`` when
it gives up), :class:`PermanentError` → ``dead`` at once — and recorded through a
group-commit :class:`~syncd.batching.Batcher`. Claims go through the same batcher: a
claim and the outcomes queued with it are one transaction (one commit, one fsync on
SQLite), not two. :meth:`Dispatcher.wake` lets a local enqueue skip the poll interval.

Stopping: no new claims (a claim already queued still completes, and its rows are
released unsent); sends that have not reached the wire are released (back to
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
from dataclasses import dataclass
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

#: Record transactions in flight at once on PostgreSQL (see :class:`syncd.batching.Batcher`).
RECORDS_IN_FLIGHT = 2

#: ``await sender(action, payload)``: returns on success, raises a DeliveryError.
Sender = Callable[[str, dict[str, Any]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class _Claim:
    """A claim of up to ``limit`` rows, queued with the outcomes (see :meth:`Dispatcher._run`)."""

    limit: int


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
        self._room = asyncio.Event()  # set when there is room for a claim (_has_room)
        #: a row holds a slot from just before its send until its outcome is committed
        self._slots = asyncio.Semaphore(concurrency)
        # Claimed rows kept ready for the next free slot (up to twice the slots), so that
        # no slot waits for a claim, which queues behind a group commit (~10 ms under
        # load). Not with a rate limit: the limit is then the pace, and a row kept ready
        # too long would outlive its lease (_deliver releases such a row unsent).
        limited = any(limiter.limited for limiter in self.limiters.values())
        self._capacity = concurrency if limited else 3 * concurrency
        #: rows whose call has started: from the send until its outcome is committed
        self._on_wire: set[int] = set()
        #: rows waiting for a slot or the rate limiter: cancelled (released) when stopping
        self._waiting: set[int] = set()
        #: every claimed row not finished yet (ready, waiting, on the wire or recording)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # PostgreSQL: a second record transaction makes its round trips while the first
        # commits (rows are claimed FOR UPDATE SKIP LOCKED; each outcome is its own row's);
        # SQLite has one writer anyway
        self._recorder: Batcher[Outcome | _Claim, list[Claimed] | None] = Batcher(
            self._record,
            max_batch=512,
            name="outbox-recorder",
            concurrency=1 if engine.dialect.name == "sqlite" else RECORDS_IN_FLIGHT,
        )
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """Something was enqueued: look now instead of at the next poll."""
        self._wake.set()

    async def _submit(self, item: Outcome | _Claim) -> list[Claimed] | None:
        """Record an outcome (or claim rows) with the next group commit; wait for it."""
        return await self._recorder.submit(item)

    async def _record(self, items: Sequence[Outcome | _Claim]) -> list[list[Claimed] | None]:
        """Outcomes and claims queued together: one transaction. The claimed rows go to
        the first claim (the claim loop queues one at a time)."""
        outcomes = [item for item in items if isinstance(item, Outcome)]
        limit = sum(item.limit for item in items if isinstance(item, _Claim))
        claimed = await outbox.record(
            self.engine, self.owner, outcomes, claim=limit, lease=self.lease
        )
        if any(o.follow_ups for o in outcomes):
            self.wake()
        results: list[list[Claimed] | None] = []
        for item in items:
            if isinstance(item, _Claim):
                results.append(claimed)
                claimed = []
            else:
                results.append(None)
        return results

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
        # The claim loop stops at its next step, not mid-claim: rows it claims are always
        # started, and a row started while stopping is released unsent (_deliver).
        self._stopping = True
        self._wake.set()
        self._room.set()
        for row_id in list(self._waiting):
            self._tasks[row_id].cancel()
        if self._loop is not None:
            await self._loop
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks.values()), timeout=self.drain_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._recorder.__aexit__(None, None, None)

    async def _run(self) -> None:
        while not self._stopping:
            free = self._capacity - len(self._tasks)
            if not self._has_room():
                # claim in batches, not a row per freed slot: wait for half the slots
                self._room.clear()
                await self._room.wait()
                continue
            self._wake.clear()  # an enqueue from now on is seen by the next claim
            try:
                rows = await self._submit(_Claim(free)) or []
            except StoreUnavailable as exc:
                logger.warning("outbox: cannot claim deliveries: {}", exc)
                rows = []
            claimed_at = asyncio.get_running_loop().time()
            for row in rows:
                self._tasks[row.id] = asyncio.create_task(self._deliver(row, claimed_at))
            if len(rows) < free and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    def _has_room(self) -> bool:
        """Room for a claim: half the slots' worth free, or nothing claimed at all."""
        return not self._tasks or self._capacity - len(self._tasks) >= self.concurrency // 2

    async def _deliver(self, row: Claimed, claimed_at: float) -> None:
        log = logger.bind(delivery_id=row.id, action=f"{row.target}.{row.action}")
        slotted = False
        try:
            self._waiting.add(row.id)
            try:
                if not self._stopping:
                    await self._slots.acquire()
                    slotted = True
                waited = asyncio.get_running_loop().time() - claimed_at
                if waited > self.lease.total_seconds() / 2:  # ready too long (slow calls)
                    raise asyncio.CancelledError  # released: sent later, under a fresh lease
                limiter = self.limiters.get(row.target)
                if limiter is not None and not self._stopping:
                    await limiter.acquire()
            finally:
                self._waiting.discard(row.id)
            if self._stopping:
                raise asyncio.CancelledError  # claimed as syncd stops: released unsent
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
            await self._submit(outcome)
        except StoreUnavailable as exc:  # the lease expires and the row is taken again
            log.warning("outbox: could not record the outcome: {}", exc)
        finally:
            self._on_wire.discard(row.id)
            self._waiting.discard(row.id)
            self._tasks.pop(row.id, None)
            if slotted:
                self._slots.release()
            if self._has_room():
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
