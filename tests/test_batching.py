"""Group commit: one bad record never fails its neighbours; an outage fails the batch;
stopping finishes what is queued."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from syncd.batching import Batcher
from syncd.errors import StoreUnavailable


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def apply(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)
        if "down" in items:
            raise StoreUnavailable("db down")
        if "bad" in items:
            raise ValueError("bad record")
        return [item.upper() for item in items]


async def test_concurrent_items_share_a_batch_and_a_bad_one_is_isolated() -> None:
    recorder = Recorder()
    async with Batcher(recorder.apply) as batcher:
        results = await asyncio.gather(
            *(batcher.submit(item) for item in ["a", "b", "bad", "c"]), return_exceptions=True
        )
    assert results[:2] == ["A", "B"] and results[3] == "C"
    assert isinstance(results[2], ValueError)
    assert recorder.batches[0] == ["a", "b", "bad", "c"]  # one transaction first
    assert ["a"] in recorder.batches and ["c"] in recorder.batches  # then one by one


async def test_an_outage_fails_the_whole_batch_without_retrying() -> None:
    recorder = Recorder()
    async with Batcher(recorder.apply) as batcher:
        results = await asyncio.gather(
            *(batcher.submit(item) for item in ["a", "down"]), return_exceptions=True
        )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert recorder.batches == [["a", "down"]]


async def test_stop_finishes_what_is_queued() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.apply, max_batch=2)
    async with batcher:
        pending = [asyncio.create_task(batcher.submit(str(i))) for i in range(5)]
        await asyncio.sleep(0)
    assert [await task for task in pending] == ["0", "1", "2", "3", "4"]
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.submit("late")


class Overlapping(Recorder):
    """Counts how many batches are being applied at once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.most = 0

    async def apply(self, items: Sequence[str]) -> list[str]:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await super().apply(items)
        finally:
            self.now -= 1


async def test_two_batches_in_flight_each_answer_their_own_and_stop_waits_for_both() -> None:
    recorder = Overlapping()
    batcher = Batcher(recorder.apply, max_batch=3, concurrency=2)
    async with batcher:
        pending = [asyncio.create_task(batcher.submit(str(i))) for i in range(7)]
        pending.append(asyncio.create_task(batcher.submit("bad")))
        await asyncio.sleep(0)
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert results[:7] == [str(i) for i in range(7)]  # digits: upper() is the same
    assert isinstance(results[7], ValueError)  # isolated, the others answered
    assert recorder.most == 2  # overlapped, never more than asked
    assert sorted(item for batch in recorder.batches[:3] for item in batch) == sorted(
        [str(i) for i in range(7)] + ["bad"]
    )  # the first batches took everything queued, three at a time


def test_concurrency_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(Recorder().apply, concurrency=0)


async def _steady_load(batcher: Batcher[str, str], rounds: int) -> None:
    """Eight callers, each sending again as soon as answered, the first of each round a
    little ahead of the others (as one client's answer lands first)."""

    async def caller(name: str, ahead: bool) -> None:
        for round_ in range(rounds):
            if not ahead:
                await asyncio.sleep(0.002)
            assert await batcher.submit(f"{name}{round_}") == f"{name}{round_}".upper()

    await asyncio.gather(*(caller(f"c{i}-", ahead=i == 0) for i in range(8)))


async def test_without_linger_callers_that_come_back_together_split_into_two_batches() -> None:
    recorder = Recorder()
    async with Batcher(recorder.apply) as batcher:
        await _steady_load(batcher, rounds=5)
    sizes = [len(batch) for batch in recorder.batches]
    assert sizes.count(1) == 5, sizes  # the caller ahead commits alone: a commit more a round


async def test_with_linger_callers_that_come_back_together_commit_together() -> None:
    recorder = Recorder()
    async with Batcher(recorder.apply, linger=0.05) as batcher:
        await _steady_load(batcher, rounds=5)
    sizes = [len(batch) for batch in recorder.batches]
    # the first round learns its size (1, then 7); after it, every round is one batch
    assert sizes == [1, 7, 8, 8, 8, 8], sizes


async def test_a_lone_caller_never_waits_for_the_linger() -> None:
    recorder = Recorder()
    async with Batcher(recorder.apply, linger=3600) as batcher:
        for item in ["a", "b", "c"]:  # an hour's linger would hang this test
            assert await batcher.submit(item) == item.upper()
        # after a batch of three, one caller alone waits at most the linger, then goes
        await asyncio.gather(*(batcher.submit(i) for i in ["d", "e", "f"]))
    assert recorder.batches[:3] == [["a"], ["b"], ["c"]]


async def test_the_linger_is_bounded() -> None:
    recorder = Recorder()
    async with Batcher(recorder.apply, linger=0.01) as batcher:
        await asyncio.gather(*(batcher.submit(i) for i in ["a", "b", "c"]))
        assert await batcher.submit("d") == "D"  # three expected, one came: goes anyway
    assert recorder.batches == [["a", "b", "c"], ["d"]]


async def test_a_caller_that_times_out_gets_timeout_error_and_its_batch_goes_on() -> None:
    class Slow(Recorder):
        async def apply(self, items: Sequence[str]) -> list[str]:
            await asyncio.sleep(0.2)
            return await super().apply(items)

    recorder = Slow()
    async with Batcher(recorder.apply) as batcher:
        hurried = asyncio.create_task(batcher.submit("a", within=0.01))
        patient = asyncio.create_task(batcher.submit("b", within=60))
        with pytest.raises(TimeoutError):
            await hurried
        assert await patient == "B"
    assert recorder.batches == [["a", "b"]]  # the item that timed out was still applied


async def test_two_groups_of_callers_taking_turns_become_one() -> None:
    """Group A's batch commits while group B waits, then B's while A waits: with the
    last batch's size alone each batch found its group queued and the two never met."""
    recorder = Recorder()

    async def caller(name: str, start: float) -> None:
        await asyncio.sleep(start)
        for round_ in range(8):
            assert await batcher.submit(f"{name}{round_}") == f"{name}{round_}".upper()

    async with Batcher(recorder.apply, linger=0.05) as batcher:
        await asyncio.gather(
            *(caller(f"a{i}-", 0) for i in range(8)), *(caller(f"b{i}-", 0.005) for i in range(8))
        )
    sizes = [len(batch) for batch in recorder.batches]
    assert sizes[:2] == [8, 8], sizes  # two groups, one in the batch, one waiting for it
    assert 16 in sizes and sizes[sizes.index(16) :].count(8) <= 1, sizes  # then one
