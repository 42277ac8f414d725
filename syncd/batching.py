"""Group commit: many concurrent requests, one transaction.

Callers :meth:`Batcher.submit` an item and wait. One worker task takes whatever is
queued (up to ``max_batch``), hands it to ``apply`` — which must commit before it
returns — and resolves each caller with its own result. Under light load a batch is one
item and nothing waits; under heavy load the commit cost is shared.

With ``concurrency`` above one, that many batches may be in flight at once: each waits
on its own round trips (a PostgreSQL server a network hop away) while the next one is
gathered and started. The store's own lock still decides which commits first.

With ``linger``, a batch taken under load waits (at most that long) until as many items
are queued as the last batch held and, with one worker, as were waiting at once lately
(:meth:`Batcher._gather`), so callers that come back together commit together.

If a batch fails for a reason other than an outage (:class:`StoreUnavailable`), its items
are retried one by one, so a fault in one record never stops the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from loguru import logger

from syncd.errors import StoreUnavailable

Item = TypeVar("Item")
Result = TypeVar("Result")
#: How many batches back a batch's target remembers the peak of callers waiting: after
#: the callers thin out, at most this many batches wait the whole linger for them.
PEAK_BATCHES = 8


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        apply: Callable[[Sequence[Item]], Awaitable[list[Result]]],
        *,
        max_batch: int = 256,
        name: str = "batcher",
        concurrency: int = 1,
        linger: float = 0.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._apply = apply
        self._max_batch = max_batch
        self._name = name
        self._concurrency = concurrency
        self._in_flight: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._linger = linger
        #: callers waiting for their result now; the most at once since the last batch
        #: was taken, and that figure for each of the last batches
        self._waiting = 0
        self._peak = 0
        self._peaks: deque[int] = deque(maxlen=PEAK_BATCHES)
        #: the size of the last batch taken, and how many items a lingering batch waits for
        self._last = 1
        self._target = 1
        self._filled: asyncio.Future[None] | None = None

    async def submit(self, item: Item, within: float | None = None) -> Result:
        """Queue ``item`` and wait until its batch is committed (or failed).

        ``within``: raise :class:`TimeoutError` after that many seconds (the item may
        still be applied with its batch). One timer on the loop, where
        ``asyncio.timeout`` costs a context manager and a task reschedule per call.
        """
        if self._worker is None or self._worker.done():
            raise RuntimeError(f"{self._name} is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.put_nowait((item, future))
        self._waiting += 1
        self._peak = max(self._peak, self._waiting)
        filled = self._filled
        if filled is not None and self._queue.qsize() + 1 >= self._target and not filled.done():
            filled.set_result(None)
        # A caller that gives up cancels only its own future; the batch goes on and
        # skips futures that are already done.
        timer = None if within is None else loop.call_later(within, _time_out, future)
        try:
            return await future
        finally:
            self._waiting -= 1
            if timer is not None:
                timer.cancel()

    async def __aenter__(self) -> Batcher[Item, Result]:
        self._worker = asyncio.create_task(self._run(), name=self._name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finish what is queued, then stop."""
        self._queue.put_nowait(None)
        if self._worker is not None:
            await self._worker

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        stopping = False
        while not stopping:
            entry = await self._queue.get()
            if entry is None:
                break
            # a free slot first, then take what queued meanwhile: batches stay full
            await slots.acquire()
            if self._linger:
                # one batch has no more callers than the last; alone (one worker), no
                # more than were waiting at once lately: two groups of callers
                # taking turns become one (see _gather)
                self._target = self._last
                if self._concurrency == 1:
                    self._target = max([self._last, *self._peaks])
                if self._queue.qsize() + 1 < self._target:
                    await self._gather()
                self._peaks.append(self._peak)
                self._peak = self._waiting
            batch = [entry]
            while len(batch) < self._max_batch and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._last = len(batch)
            if self._concurrency == 1:
                await self._process(batch)
                slots.release()
                continue
            task = asyncio.create_task(self._process(batch), name=f"{self._name} batch")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            task.add_done_callback(lambda _task: slots.release())
        if self._in_flight:
            await asyncio.gather(*self._in_flight)

    async def _gather(self) -> None:
        """Wait, at most ``linger`` seconds, until the target is queued: as many items as
        the last batch held and, with one worker, as many as were waiting at once over
        the last :data:`PEAK_BATCHES` batches.

        Under steady load the callers of one batch come back together, all but the
        first still on their way when it is taken: without the wait, 32 clients became
        alternating batches of 31 and 1, two commits (two fsyncs) where one does
        (docs/performance.md). With the last batch's size alone, two groups of 16 taking
        turns stayed two groups (each batch found its 16 queued), a third fewer links a
        second; the peak of callers waiting at once (32 while one group commits and the
        other waits) makes the next batch wait for the group being answered. A lone
        caller never waits: its last batch held one, and one was waiting.
        """
        loop = asyncio.get_running_loop()
        filled = self._filled = loop.create_future()
        timer = loop.call_later(self._linger, _resolve, filled, None)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    async def _process(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._apply([item for item, _ in batch])
        except StoreUnavailable as exc:
            for _, future in batch:
                _fail(future, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                logger.opt(exception=exc).error("{name}: an item failed", name=self._name)
                _fail(batch[0][1], exc)
                return
            logger.warning(
                "{name}: a batch of {n} failed ({error}); retrying one by one",
                name=self._name,
                n=len(batch),
                error=type(exc).__name__,
            )
            for entry in batch:
                await self._process([entry])
            return
        for (_, future), result in zip(batch, results, strict=True):
            _resolve(future, result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():  # the caller may have gone (client disconnected)
        future.set_exception(exc)


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _resolve(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)
