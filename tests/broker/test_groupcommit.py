"""Group commit: concurrent results are written together, and a failed batch fails only its
own callers."""

from __future__ import annotations

import asyncio

import pytest

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
