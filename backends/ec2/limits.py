"""How fast we may talk to one EC2 region, and when we stop talking to it.

EC2 throttles each account per region with token buckets: one per API action category for
requests, and a second, *resource* bucket for actions that start or stop machines (counted in
instances, not requests). :data:`REQUEST_BUCKETS` and :data:`RESOURCE_BUCKETS` are the defaults
of EC2's published table (an account may have raised limits: ``settings["rate_limits"]``
overrides any of them as ``{"family": [capacity, refill_per_second]}``). We take tokens from our
own copy of the buckets *before* sending, so a burst of launches slows itself down instead of
collecting ``RequestLimitExceeded`` answers; botocore's adaptive retry handles the ones that
still come back (other clients share the account's buckets).

A :class:`CircuitBreaker` opens after ``threshold`` outage-type failures in a row (no answer,
timeouts, 5xx, throttling that outlived the retries, refused credentials): while it is open
nothing is sent, the region's probe fails with :meth:`CircuitBreaker.why` (so the monitor marks the
target *error* with that reason and placement stops choosing it), and after ``cooldown`` seconds
one trial call is let through. A success closes it; a failed trial doubles the cooldown.

Everything here is pure: the caller passes the clock in.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

#: family -> (bucket capacity, refill per second), after EC2's published request limits.
REQUEST_BUCKETS: dict[str, tuple[float, float]] = {
    "describe": (100.0, 20.0),  # non-mutating, filtered or paginated
    "describe-unfiltered": (50.0, 10.0),  # non-mutating without filters or pagination
    "mutate": (50.0, 5.0),  # mutating actions
}

#: resource bucket -> (capacity, refill per second), counted in instances.
RESOURCE_BUCKETS: dict[str, tuple[float, float]] = {
    "run-instances": (1000.0, 2.0),
    "start-instances": (1000.0, 2.0),
    "stop-instances": (1000.0, 20.0),
    "terminate-instances": (1000.0, 20.0),
}

#: EC2 action -> (request family, resource bucket or None). Every call we make is listed here.
OPERATIONS: dict[str, tuple[str, str | None]] = {
    "DescribeInstances": ("describe", None),
    "DescribeVolumes": ("describe", None),
    "GetConsoleOutput": ("describe", None),
    "DescribeAvailabilityZones": ("describe-unfiltered", None),
    "RunInstances": ("mutate", "run-instances"),
    "StartInstances": ("mutate", "start-instances"),
    "StopInstances": ("mutate", "stop-instances"),
    "TerminateInstances": ("mutate", "terminate-instances"),
    "RebootInstances": ("mutate", None),
    "CreateTags": ("mutate", None),
    "CreateVolume": ("mutate", None),
    "AttachVolume": ("mutate", None),
    "DetachVolume": ("mutate", None),
    "DeleteVolume": ("mutate", None),
}


@dataclasses.dataclass(slots=True)
class TokenBucket:
    """A token bucket that lends: :meth:`reserve` always succeeds and says how long to wait.

    Tokens may go below zero; the debt is what later callers wait for, so concurrent callers
    queue in the order they reserved.
    """

    capacity: float
    rate: float
    tokens: float = -1.0
    at: float = 0.0

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.rate <= 0:
            raise ValueError("a token bucket needs a positive capacity and refill rate")
        if self.tokens < 0:
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def reserve(self, n: float, now: float) -> float:
        """Take ``n`` tokens; the seconds to wait before using them (0.0: go now)."""
        self._refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens


class RegionLimits:
    """The request and resource buckets of one region."""

    def __init__(self, overrides: Mapping[str, Any] | None = None, *, start: float = 0.0) -> None:
        sizes = {**REQUEST_BUCKETS, **RESOURCE_BUCKETS}
        for name, value in (overrides or {}).items():
            if name not in sizes:
                raise ValueError(f"unknown rate-limit family '{name}'")
            capacity, rate = value
            sizes[name] = (float(capacity), float(rate))
        self.buckets = {name: TokenBucket(c, r, at=start) for name, (c, r) in sizes.items()}

    def reserve(self, operation: str, count: int, now: float) -> float:
        """Reserve one request (and ``count`` instances where EC2 counts them); seconds to wait."""
        family, resource = OPERATIONS[operation]
        wait = self.buckets[family].reserve(1, now)
        if resource is not None and count > 0:
            wait = max(wait, self.buckets[resource].reserve(count, now))
        return wait


class Circuit(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclasses.dataclass(slots=True)
class CircuitBreaker:
    """Stops calls to a region that keeps failing; see the module docstring."""

    name: str
    threshold: int = 5
    cooldown: float = 30.0
    max_cooldown: float = 300.0
    state: Circuit = Circuit.CLOSED
    failures: int = 0
    last_error: str = ""
    opened_at: float = 0.0
    _wait: float = 0.0
    _trial_until: float = 0.0

    def allow(self, now: float) -> bool:
        """May a call go out now? In half-open state, one trial at a time."""
        if self.state is Circuit.CLOSED:
            return True
        if now < self.opened_at + self._wait:
            return False
        if self.state is Circuit.HALF_OPEN and now < self._trial_until:
            return False
        self.state = Circuit.HALF_OPEN
        self._trial_until = now + self._wait  # a trial that never reports back expires
        return True

    def success(self) -> None:
        self.state = Circuit.CLOSED
        self.failures = 0
        self._wait = 0.0

    def failure(self, error: str, now: float) -> None:
        self.failures += 1
        self.last_error = error[:300]
        if self.state is Circuit.HALF_OPEN:
            self._open(now, min(self.max_cooldown, max(self._wait, self.cooldown) * 2))
        elif self.state is Circuit.CLOSED and self.failures >= self.threshold:
            self._open(now, self.cooldown)

    def _open(self, now: float, wait: float) -> None:
        self.state = Circuit.OPEN
        self.opened_at = now
        self._wait = wait

    def why(self, now: float) -> str:
        """The operator's explanation while the circuit is not closed."""
        left = max(0.0, self.opened_at + self._wait - now)
        return (
            f"circuit open for {self.name}: {self.failures} failed calls in a row, "
            f"last: {self.last_error}; next trial in {left:.0f}s"
        )
