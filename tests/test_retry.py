"""The backoff policy as a table (SPEC §5): capped exponential, full jitter, Retry-After,
max_attempts, max_age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncd.retry import BackoffPolicy, GiveUp, RetryAt

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def policy(jitter: str = "top", **kw: object) -> BackoffPolicy:
    pick = {"top": lambda lo, hi: hi, "bottom": lambda lo, hi: lo, "mid": lambda lo, hi: hi / 2}
    values: dict[str, object] = {
        "first_retry": timedelta(seconds=5),
        "max_backoff": timedelta(hours=1),
        "max_attempts": 12,
        "max_age": timedelta(days=3),
        "uniform": pick[jitter],
    }
    values.update(kw)
    return BackoffPolicy(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempts", "jitter", "retry_after", "wait"),
    [
        (1, "top", None, 5),
        (2, "top", None, 10),
        (3, "top", None, 20),
        (5, "top", None, 80),
        (10, "top", None, 2560),
        (11, "top", None, 3600),  # capped by max_backoff
        (3, "mid", None, 10),  # full jitter: anywhere in [0, cap]
        (3, "bottom", None, 0),
        (1, "bottom", 30, 30),  # Retry-After is a floor
        (1, "top", 2, 5),  # ... not a ceiling
        (11, "top", 7200, 3600),  # ... capped by max_backoff (issue 14)
    ],
)
def test_wait(attempts: int, jitter: str, retry_after: float | None, wait: float) -> None:
    outcome = policy(jitter).next(attempts, T0, T0, retry_after)
    assert outcome == RetryAt(T0 + timedelta(seconds=wait))


@pytest.mark.parametrize(
    ("attempts", "now", "kw", "reason"),
    [
        (12, T0, {}, "after 12 attempts"),
        (3, T0, {"max_attempts": 3}, "after 3 attempts"),
        (1, T0 + timedelta(days=3), {}, "max_age"),
        (1, T0, {"max_age": timedelta(seconds=4)}, "max_age"),  # the next try would be too late
    ],
)
def test_give_up(attempts: int, now: datetime, kw: dict[str, object], reason: str) -> None:
    outcome = policy(**kw).next(attempts, T0, now)
    assert isinstance(outcome, GiveUp) and reason in outcome.reason


def test_real_jitter_stays_within_the_cap() -> None:
    real = BackoffPolicy(timedelta(seconds=1), timedelta(seconds=8), 100, timedelta(days=1))
    for attempts in range(1, 30):
        outcome = real.next(attempts, T0, T0)
        assert isinstance(outcome, RetryAt)
        assert 0 <= (outcome.when - T0).total_seconds() <= min(8, 2 ** (attempts - 1))
