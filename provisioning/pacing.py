"""Pacing without I/O: the one backoff schedule and the one token bucket every part of the agent uses.

Both are arithmetic on numbers the caller passes in (a failure count, a random draw, a clock
reading); the runtime does the waiting. Users:

- :class:`Backoff`: Cloudauth retries (``provisioning.cloudauth.RetryPolicy``), MQTT reconnects
  (``agent.mqtt``), upstream report retries (``agent.daemon._upstream``).
- :class:`TokenBucket`: the process-wide Cloudauth rate limit (``agent.cloud.RateLimiter``, which
  books tokens ahead with :meth:`TokenBucket.reserve` and is held by throttling answers), and
  admission's per-sender rate limits (:class:`TokenBuckets`, which refuse with :meth:`TokenBucket.take`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["Backoff", "TokenBucket", "TokenBuckets"]

_MAX_DOUBLINGS: Final = 64  # 2**64 x any sane first delay is past any cap: stop doubling (no float overflow)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: the n-th wait (n = 0, 1, ...) is at most ``min(cap, first * 2**n)``.

    ``jitter`` is the share of that ceiling a random draw may take away: 0 waits exactly the
    ceiling, 0.5 waits between half of it and all of it, 1 ("full jitter") anywhere up to it.
    Jitter keeps clients that failed together (a broker restart, a cloud outage) from coming
    back together.
    """

    first: float
    cap: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < 0:
            raise ValueError("backoff delays must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within 0..1, got {self.jitter}")

    def ceiling(self, n: int) -> float:
        """The longest the ``n``-th wait may be."""
        return min(self.cap, self.first * 2.0 ** min(max(n, 0), _MAX_DOUBLINGS))

    def delay(self, n: int, draw: float) -> float:
        """The ``n``-th wait for a random ``draw`` in [0, 1)."""
        return self.ceiling(n) * (1.0 - self.jitter * draw)


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved; ``rate=None`` is unlimited (only holds apply).

    ``take`` spends a token only when there is one (a refusal costs nothing); ``reserve`` always
    spends one, going into debt, so callers queue in order; ``hold`` lets nothing through for a
    while and leaves the bucket empty after it (a full burst just after a throttling answer
    would be throttled again).
    """

    rate: float | None
    capacity: float
    tokens: float
    stamp: float  # when ``tokens`` was counted
    held_until: float = float("-inf")

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive or None (unlimited), got {self.rate}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity}")

    @classmethod
    def full(cls, rate: float | None, capacity: float, now: float) -> TokenBucket:
        """A bucket holding ``capacity`` tokens at ``now``."""
        return cls(rate, capacity, float(capacity), now)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is (nothing taken then)."""
        start = max(now, self.held_until)
        if self.rate is None:
            return start - now
        self._refill(start)
        if start == now and self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return start - now + max(0.0, 1.0 - self.tokens) / self.rate

    def reserve(self, now: float) -> float:
        """Book the next token, now or later; the seconds to wait before using it."""
        start = max(now, self.held_until)
        if self.rate is None:
            return start - now
        self._refill(start)
        self.tokens -= 1.0
        return start - now + (0.0 if self.tokens >= 0 else -self.tokens / self.rate)

    def hold(self, now: float, seconds: float) -> None:
        """Nothing goes through for ``seconds`` (a longer hold already in place is kept)."""
        until = now + seconds
        if until > self.held_until:
            self.tokens = min(self.tokens, 0.0)
            self.stamp = max(self.stamp, until)
            self.held_until = until

    def idle_full(self, now: float) -> bool:
        """The bucket has refilled to capacity: it is the same as a fresh one."""
        if self.rate is None:
            return now >= self.held_until
        return self.tokens + max(0.0, now - self.stamp) * self.rate >= self.capacity

    def _refill(self, at: float) -> None:
        if self.rate is not None and at > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (at - self.stamp) * self.rate)
            self.stamp = at


class TokenBuckets:
    """One :class:`TokenBucket` per key (a device, a login, a transport), created full; idle full ones are forgotten."""

    def __init__(self, capacity: int, per_second: float, *, max_tracked: int = 100_000) -> None:
        self.capacity, self.per_second, self.max_tracked = capacity, per_second, max_tracked
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> float:
        """Take a token for ``key``: 0.0 when there was one, else the seconds until there is."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(self.per_second, self.capacity, now)
            if len(self._buckets) > self.max_tracked:
                self._drop_full(now)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)

    def _drop_full(self, now: float) -> None:
        """A bucket refilled to capacity is the same as no bucket: forget it."""
        for key in [key for key, bucket in self._buckets.items() if bucket.idle_full(now)]:
            del self._buckets[key]
