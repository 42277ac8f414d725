"""When to try an outgoing call again: a small policy value object.

The wait before attempt ``n + 1`` after ``n`` failed attempts (n ≥ 1) is *full jitter*
over a capped exponential::

    cap(n)  = min(max_backoff, first_retry × 2^(n−1))
    wait(n) = max(min(retry_after, max_backoff), uniform(0, cap(n)))
                                                       retry_after: 0 when not given

A peer's ``Retry-After`` is a floor, never shortened by the jitter, but never longer
than ``max_backoff`` either: one answer saying ``Retry-After: 1000000`` must not make a
call dead at once (it would outlive ``max_age``). The call is given up
(``dead``) when ``n ≥ max_attempts``, or when the next try would start after
``age_from + max_age``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

Uniform = Callable[[float, float], float]


@dataclass(frozen=True, slots=True)
class RetryAt:
    when: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    first_retry: timedelta
    max_backoff: timedelta
    max_attempts: int
    max_age: timedelta
    uniform: Uniform = field(default=random.uniform, compare=False, repr=False)

    def cap(self, attempts: int) -> float:
        """The upper bound of the jittered wait after ``attempts`` failures, in seconds."""
        exponent = min(max(attempts - 1, 0), 62)
        ceiling: float = self.first_retry.total_seconds() * 2**exponent
        return min(self.max_backoff.total_seconds(), ceiling)

    def next(
        self, attempts: int, age_from: datetime, now: datetime, retry_after: float | None = None
    ) -> RetryAt | GiveUp:
        """After ``attempts`` failed tries: when to try again, or why to stop."""
        if attempts >= self.max_attempts:
            return GiveUp(f"gave up after {attempts} attempts")
        floor = min(retry_after or 0.0, self.max_backoff.total_seconds())  # inf and NaN too
        wait = max(floor if floor == floor else 0.0, self.uniform(0.0, self.cap(attempts)))
        when = now + timedelta(seconds=wait)
        if when - age_from > self.max_age:
            return GiveUp(f"gave up: older than delivery.max_age ({self.max_age})")
        return RetryAt(when)
