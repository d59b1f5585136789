"""Request rate limits per key (an EC2 access key): one token bucket each, in bounded memory.

Decides whether one more request of a key is allowed now. Each key has a bucket of ``burst``
tokens that refills at ``rate`` tokens per second; a request takes one token (or ``cost``) and
is refused when the bucket holds less. ``rate <= 0`` turns limiting off.

Memory is bounded by ``max_keys``. Buckets are kept least recently used first; a bucket that
has been idle long enough to refill completely carries no information and is dropped first,
losslessly. Only when every kept bucket is still refilling is the least recently used one
dropped anyway (that key gets a full bucket again: the limit is then approximate for keys idle
the longest, never for a busy one). The caller owns the instance (one per runtime) and passes
the clock, so there is no module state and tests need no sleeping.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class RateLimiter:
    """Token buckets per key: ``rate`` tokens per second, at most ``burst`` held."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if not math.isfinite(rate) or not math.isfinite(burst):
            raise ValueError("rate and burst must be finite numbers")
        if rate > 0 and burst < 1:
            raise ValueError("burst must be at least 1 when a rate is set")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        #: key -> (tokens, time they were counted), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it holds them; say whether it did."""
        if not self.enabled:
            return True
        found = self._buckets.pop(key, None)
        if found is None:
            tokens = self.burst
        else:
            held, then = found
            tokens = min(self.burst, held + max(0.0, now - then) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._evict(now)
        return allowed

    def retry_after(self, key: str, now: float, cost: float = 1.0) -> float:
        """Seconds until ``key`` could spend ``cost`` tokens (0: it could now)."""
        if not self.enabled or key not in self._buckets:
            return 0.0
        held, then = self._buckets[key]
        tokens = min(self.burst, held + max(0.0, now - then) * self.rate)
        return max(0.0, (cost - tokens) / self.rate)

    def _evict(self, now: float) -> None:
        while self._buckets:  # idle buckets that refilled completely: dropping them loses nothing
            held, then = next(iter(self._buckets.values()))
            if held + max(0.0, now - then) * self.rate < self.burst:
                break
            self._buckets.popitem(last=False)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
