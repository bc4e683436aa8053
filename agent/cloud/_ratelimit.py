"""One token bucket per process, shared by every caller of the Cloudauth API.

The service limits calls per Alibaba Cloud account (all RAM users share it), so every
client in the process draws from one bucket. ``reserve`` is pure arithmetic on a clock
reading; callers sleep for what it returns. A throttling answer pushes the whole bucket's
next slot back, so the other callers slow down too instead of hammering the service.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

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
        self._lock = threading.Lock()
        self._clock = clock
        self._tokens = 0.0
        self._stamp = clock()
        self._paused_until = 0.0
        self.configure(qps, burst)

    def configure(self, qps: float | None, burst: int = DEFAULT_BURST) -> None:
        """Change the rate; takes effect for the next reservation."""
        if qps is not None and qps <= 0:
            raise ValueError(f"qps must be positive or None (unlimited), got {qps}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        with self._lock:
            self.qps = qps
            self.burst = burst
            self._tokens = float(burst)

    def reserve(self) -> float:
        """Take a token now or book the next one; returns the seconds to wait before calling."""
        with self._lock:
            now = self._clock()
            if self.qps is None:
                return max(0.0, self._paused_until - now)
            start = max(now, self._paused_until)
            self._tokens = min(float(self.burst), self._tokens + (start - self._stamp) * self.qps)
            self._stamp = start
            self._tokens -= 1.0
            wait_for_token = 0.0 if self._tokens >= 0 else -self._tokens / self.qps
            return start - now + wait_for_token

    def pause(self, seconds: float) -> None:
        """The service said slow down: nobody calls for ``seconds`` (never shortens a longer pause)."""
        with self._lock:
            now = self._clock()
            until = now + seconds
            if until > self._paused_until:
                # After a pause the bucket starts empty: a full burst would just be throttled again.
                self._tokens = min(self._tokens, 0.0)
                self._stamp = until
                self._paused_until = until

    async def acquire(self) -> None:
        """Wait for a token."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


_shared = RateLimiter()


def shared_rate_limiter() -> RateLimiter:
    """The process-wide limiter every client uses unless given its own."""
    return _shared
