"""Smoothing outgoing calls: at most ``rate`` a second, evenly spaced, no bursts.

Telegram allows about 30 messages a second per bot and one a second per chat, so a
burst of callbacks is spread out rather than fired at once (``api/salebot.md``).
"""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """``await limiter.acquire()`` returns at most ``rate`` times a second; 0 = no limit."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    @property
    def limited(self) -> bool:
        """Whether calls are paced at all (``rate`` > 0)."""
        return bool(self._interval)

    async def acquire(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)
