"""An injectable clock, so a test can jump over GetCourse's two-hour export budget window.

A clock is any zero-argument callable returning seconds (monotonic semantics: only
differences matter). The default everywhere is :func:`time.monotonic`.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class FakeClock:
    """A clock that moves only when told: ``clock.advance(7200)`` is two hours later."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.now += seconds
