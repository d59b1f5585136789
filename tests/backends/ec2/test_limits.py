"""The pure parts of the EC2 backend: token buckets, the circuit breaker, the state table, the
id tags and the launch coalescer (no EC2 needed)."""

from __future__ import annotations

import asyncio

import pytest

from backends.ec2 import batching
from backends.ec2.batching import Coalescer
from backends.ec2.limits import (
    OPERATIONS,
    REQUEST_BUCKETS,
    RESOURCE_BUCKETS,
    Circuit,
    CircuitBreaker,
    RegionLimits,
    TokenBucket,
)
from backends.ec2.states import STATE_MAP, launch_failed, to_state
from broker.states import State


def test_token_bucket_lends_and_refills() -> None:
    b = TokenBucket(capacity=10, rate=5)
    assert all(b.reserve(1, 0.0) == 0.0 for _ in range(10))
    assert b.reserve(1, 0.0) == pytest.approx(0.2)  # one in debt: wait for one refill
    assert b.reserve(1, 0.0) == pytest.approx(0.4)  # callers queue in order
    assert b.reserve(1, 1.0) == 0.0  # 5 tokens came back in a second
    assert b.available(100.0) == 10  # never above capacity
    with pytest.raises(ValueError):
        TokenBucket(capacity=0, rate=1)


def test_region_limits_follow_the_published_table() -> None:
    limits = RegionLimits(start=0.0)
    # 1,000 instances launch at once, then two a second (the RunInstances resource bucket)
    assert limits.reserve("RunInstances", 1000, 0.0) == 0.0
    assert limits.reserve("RunInstances", 4, 0.0) == pytest.approx(2.0)
    # describes have their own bucket: 100 at once, then 20 a second
    waits = [limits.reserve("DescribeInstances", 0, 0.0) for _ in range(101)]
    assert waits[99] == 0.0 and waits[100] == pytest.approx(1 / 20)
    raised = RegionLimits({"run-instances": [5000, 10]}, start=0.0)
    assert raised.reserve("RunInstances", 5000, 0.0) == 0.0
    with pytest.raises(ValueError):
        RegionLimits({"nonsense": [1, 1]})
    families = set(REQUEST_BUCKETS) | set(RESOURCE_BUCKETS)
    for family, resource in OPERATIONS.values():
        assert family in families and (resource is None or resource in families)


def test_circuit_breaker_opens_trials_and_closes() -> None:
    br = CircuitBreaker("EC2 us-east-1", threshold=3, cooldown=10.0)
    for n in range(2):
        br.failure(f"timeout {n}", float(n))
    assert br.allow(2.0) and br.state is Circuit.CLOSED
    br.failure("InternalError", 2.0)
    assert br.state is Circuit.OPEN and not br.allow(5.0)
    why = br.why(5.0)
    assert "3 failed calls" in why and "InternalError" in why and "7s" in why
    assert br.allow(12.0) and br.state is Circuit.HALF_OPEN  # one trial
    assert not br.allow(12.5)  # and only one
    br.failure("still down", 13.0)  # a failed trial doubles the wait
    assert br.state is Circuit.OPEN and not br.allow(30.0) and br.allow(33.5)
    br.success()
    assert br.state is Circuit.CLOSED and br.failures == 0 and br.allow(34.0)


def test_a_success_resets_the_count() -> None:
    br = CircuitBreaker("r", threshold=2)
    br.failure("a", 0.0)
    br.success()
    br.failure("b", 1.0)
    assert br.state is Circuit.CLOSED


def test_state_table() -> None:
    assert to_state("pending") is State.BOOT
    assert to_state("running") is State.RUNNING
    assert to_state("stopping") is State.SHUTDOWN
    assert to_state("stopped") is State.POWEROFF
    assert to_state("shutting-down") is State.EPILOG
    assert to_state("terminated") is State.DONE
    assert to_state("hibernating-someday") is State.UNKNOWN
    assert set(STATE_MAP) == {
        "pending",
        "running",
        "stopping",
        "stopped",
        "shutting-down",
        "terminated",
    }
    assert launch_failed("terminated", "Server.InternalError")
    assert launch_failed("terminated", "Client.VolumeLimitExceeded")
    assert not launch_failed("terminated", "Client.UserInitiatedShutdown")
    assert not launch_failed("running", "Server.InternalError")


def test_id_tags_round_trip_and_fit_ec2_limits() -> None:
    ids = [f"i-{n:017x}" for n in range(50)]
    token = batching.batch_token("cb-1", ids)
    assert len(token) <= 64 and token == batching.batch_token("cb-1", ids)
    assert token != batching.batch_token("cb-2", ids)
    tags = batching.id_tags("cb-1", token, ids)
    assert all(len(t["Value"]) <= 256 and len(t["Key"]) <= 128 for t in tags)
    assert len(tags) <= 50
    assert batching.ids_from_tags({t["Key"]: t["Value"] for t in tags}) == ids
    assert batching.ids_from_tags({}) == []


async def test_coalescer_groups_by_key_and_size() -> None:
    calls: list[tuple[str, list[int]]] = []

    async def run(key: str, items: list[int]) -> list[int | BaseException]:
        calls.append((key, items))
        return [ValueError("odd") if i % 2 else i * 10 for i in items]

    c: Coalescer[str, int, int] = Coalescer(run, window=0.01, max_size=3)
    futs = [c.submit("a", i) for i in range(4)] + [c.submit("b", 8)]
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert results[0] == 0 and isinstance(results[1], ValueError) and results[4] == 80
    assert sorted(len(items) for _, items in calls) == [1, 1, 3]  # a full batch went at once
    await c.aclose()


async def test_coalescer_keeps_going_when_a_submitter_gives_up() -> None:
    done = asyncio.Event()

    async def run(key: str, items: list[int]) -> list[int | BaseException]:
        await asyncio.sleep(0.05)
        done.set()
        return list(items)

    c: Coalescer[str, int, int] = Coalescer(run, window=0.0, max_size=10)
    fut = c.submit("a", 1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(fut), 0.01)
    await done.wait()
    assert await fut == 1
    await c.aclose()
