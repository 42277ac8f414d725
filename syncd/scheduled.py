"""Scheduled jobs that a shutdown stops cleanly.

APScheduler's ``shutdown(wait=False)`` leaves a running coroutine job to the event loop,
which cancels it at the very end — after the store is closed — and APScheduler logs the
``CancelledError`` with a traceback. The poller's job can be in the middle of a long
wait (GetCourse builds an export: 909 for minutes), so SIGTERM would end in a
traceback. :class:`StoppableJobs` wraps such jobs: :meth:`stop` cancels the ones
running and waits for them while the store is still open, and a job cancelled that way
ends with one log line instead of an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger


class StoppableJobs:
    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def wrap(
        self, job: Callable[..., Awaitable[object]], stopped: str
    ) -> Callable[..., Awaitable[None]]:
        """``job`` as a scheduled coroutine; ``stopped`` is logged if a stop cuts it short."""

        async def run(*args: Any, **kwargs: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await job(*args, **kwargs)
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                logger.info(stopped)
            finally:
                self._running.discard(task)

        return run

    async def stop(self) -> None:
        """Cancel the jobs running now and wait until they have ended."""
        self._stopping = True
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
