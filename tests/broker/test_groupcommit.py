"""Group commit: concurrent results are written together, and a failed batch fails only its
own callers."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker import groupcommit
from broker.groupcommit import GroupCommit


async def test_concurrent_submissions_share_a_write() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> None:
        await asyncio.sleep(0.01)
        batches.append(items)

    commit: GroupCommit[int] = GroupCommit(write, max_batch=40)
    await asyncio.gather(*[commit.submit(i) for i in range(100)])
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert len(batches) <= 4 and all(len(b) <= 40 for b in batches)


async def test_a_failed_batch_fails_its_callers_only() -> None:
    calls = 0

    async def write(items: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk full")

    commit: GroupCommit[int] = GroupCommit(write)
    first = await asyncio.gather(*[commit.submit(i) for i in range(3)], return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in first)
    await commit.submit(99)  # the next batch is written
    with pytest.raises(RuntimeError):
        raise first[0]  # type: ignore[misc]


async def test_callers_woken_together_come_back_into_one_batch() -> None:
    """Two groups of callers that each submit again as soon as they are answered share the
    next batches (the writer lets a batch fill while callers are concurrent)."""
    batches: list[list[int]] = []

    def write_on_the_loop(items: list[int]) -> None:
        time.sleep(0.002)  # the loop is busy writing, as with SQLite on the loop
        batches.append(items)

    async def write(items: list[int]) -> None:
        write_on_the_loop(items)

    commit: GroupCommit[int] = GroupCommit(write, delay=groupcommit.COMMIT_DELAY)

    async def caller(i: int, start: float) -> None:
        await asyncio.sleep(start)
        for _ in range(5):
            await commit.submit(i)
            await asyncio.sleep(0.0002)  # the round trip to the client and back

    await asyncio.gather(*[caller(i, 0.0 if i < 4 else 0.0003) for i in range(8)])
    assert sum(len(b) for b in batches) == 40
    assert max(len(b) for b in batches) == 8  # the two groups met in one batch


async def test_a_lone_caller_never_waits_for_company() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> None:
        batches.append(items)

    commit: GroupCommit[int] = GroupCommit(write, delay=3600.0)  # a wait would never end

    async def one_by_one() -> None:
        for i in range(20):
            await commit.submit(i)

    await asyncio.wait_for(one_by_one(), 30)
    assert batches == [[i] for i in range(20)]
