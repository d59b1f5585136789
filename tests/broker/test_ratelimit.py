"""The per-key token bucket: burst, refill, independence of keys, bounded memory, bad settings."""

from __future__ import annotations

import pytest

from broker.ratelimit import RateLimiter


def test_a_burst_is_allowed_then_refused_then_refilled_at_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=5)
    assert [limiter.allow("AK1", 100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.retry_after("AK1", 100.0) == pytest.approx(0.5)
    assert not limiter.allow("AK1", 100.4)
    assert limiter.allow("AK1", 100.5)
    assert not limiter.allow("AK1", 100.5)
    # a long idle period refills to the burst, never beyond it
    assert [limiter.allow("AK1", 1000.0) for _ in range(6)] == [True] * 5 + [False]


def test_refused_requests_do_not_spend_tokens() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.allow("k", 0.0)
    for t in (0.1, 0.2, 0.3, 0.9):
        assert not limiter.allow("k", t)
    assert limiter.allow("k", 1.0)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0) and limiter.allow("b", 0.0)
    assert limiter.retry_after("c", 0.0) == 0.0


def test_cost_and_a_clock_going_backwards() -> None:
    limiter = RateLimiter(rate=10.0, burst=10)
    assert limiter.allow("k", 5.0, cost=8)
    assert not limiter.allow("k", 5.0, cost=3)
    assert not limiter.allow("k", 4.0, cost=3)  # earlier "now" adds nothing, takes nothing
    assert limiter.allow("k", 4.0, cost=2)


def test_disabled_allows_everything_and_keeps_nothing() -> None:
    limiter = RateLimiter(rate=0, burst=0)
    assert not limiter.enabled
    assert all(limiter.allow(f"k{i}", 0.0) for i in range(1000))
    assert len(limiter) == 0


def test_memory_is_bounded_and_busy_keys_keep_their_limit() -> None:
    limiter = RateLimiter(rate=1.0, burst=3, max_keys=100)
    for _ in range(3):
        assert limiter.allow("busy", 0.0)
    for i in range(10_000):
        limiter.allow(f"scan{i}", 0.0)
        assert len(limiter) <= 100
        if i % 50 == 0:  # the busy key stays recently used, so it is never the one dropped
            assert not limiter.allow("busy", 0.0)


def test_idle_full_buckets_go_first() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_keys=3)
    limiter.allow("old1", 0.0)
    limiter.allow("old2", 0.0)
    limiter.allow("hot", 10.0)
    limiter.allow("hot", 10.0)
    limiter.allow("new", 10.0)  # over the bound: old1 and old2 are full again, both shed
    assert len(limiter) == 2
    assert not limiter.allow("hot", 10.0)  # hot's bucket was kept, still empty


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"),
    [(1.0, 0.5, 10), (float("inf"), 1, 10), (1.0, float("nan"), 10), (1.0, 1, 0)],
)
def test_bad_settings_are_refused(rate: float, burst: float, max_keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst, max_keys)
