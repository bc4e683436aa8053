"""One token bucket per process, shared by every caller of the Cloudauth API.

The service limits calls per Alibaba Cloud account (all RAM users share it), so every
client in the process draws from one bucket (``provisioning.pacing.TokenBucket``, pure
arithmetic on a clock reading); this wrapper reads the clock and sleeps. A throttling answer
holds the whole bucket, so the other callers slow down too instead of hammering the service.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from provisioning.pacing import TokenBucket

__all__ = ["DEFAULT_BURST", "DEFAULT_QPS", "RateLimiter", "shared_rate_limiter"]

# Cloudauth does not publish the limit for these actions; related ID-verification APIs allow
# 5-50 QPS per account, so start at the bottom of that range (config raises it).
DEFAULT_QPS = 5.0
DEFAULT_BURST = 5


class RateLimiter:
    """Token bucket: ``qps`` tokens a second, at most ``burst`` saved; ``qps=None`` means unlimited."""

    def __init__(
        self,
        qps: float | None = DEFAULT_QPS,
        burst: int = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check(qps, burst)
        self._lock = threading.Lock()  # a CLI may share the process-wide limiter between threads
        self._clock = clock
        self._bucket = TokenBucket.full(qps, burst, clock())
        self.qps, self.burst = qps, burst

    def configure(self, qps: float | None, burst: int = DEFAULT_BURST) -> None:
        """Change the rate; takes effect for the next reservation (a hold in place stays)."""
        _check(qps, burst)
        with self._lock:
            bucket = TokenBucket.full(qps, burst, self._clock())
            bucket.held_until = self._bucket.held_until
            self._bucket, self.qps, self.burst = bucket, qps, burst

    def reserve(self) -> float:
        """Take a token now or book the next one; returns the seconds to wait before calling."""
        with self._lock:
            return self._bucket.reserve(self._clock())

    def pause(self, seconds: float) -> None:
        """The service said slow down: nobody calls for ``seconds`` (never shortens a longer pause)."""
        with self._lock:
            self._bucket.hold(self._clock(), seconds)

    async def acquire(self) -> None:
        """Wait for a token."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


def _check(qps: float | None, burst: int) -> None:
    if qps is not None and qps <= 0:
        raise ValueError(f"qps must be positive or None (unlimited), got {qps}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, got {burst}")


_shared = RateLimiter()


def shared_rate_limiter() -> RateLimiter:
    """The process-wide limiter every client uses unless given its own."""
    return _shared
