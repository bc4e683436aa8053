"""When and how long to wait before another attempt of a Cloudauth call."""

from __future__ import annotations

import random
from dataclasses import dataclass

from provisioning.cloudauth._errors import CloudauthError, ThrottledError
from provisioning.pacing import Backoff

__all__ = ["DEFAULT_THROTTLE_PAUSE", "RetryPolicy", "Timeouts"]

# A throttling answer without a Retry-After hint pauses every caller this long: about the
# width of the service's per-second QPS window.
DEFAULT_THROTTLE_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """HTTP timeouts in seconds; on by default (the official SDKs use 5 s connect, 10 s read)."""

    connect: float = 5.0
    read: float = 10.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, bounded in attempts and in total time."""

    max_attempts: int = 4  # one call plus three retries
    base_delay: float = 0.2  # first backoff ceiling; doubles each attempt
    max_delay: float = 5.0  # no single wait longer than this
    total_time: float = 30.0  # give up once the next wait would end past this budget

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.total_time < 0:
            raise ValueError("retry delays and budget must not be negative")

    @property
    def backoff(self) -> Backoff:
        """The schedule: ``base_delay`` doubling up to ``max_delay``, full jitter."""
        return Backoff(self.base_delay, self.max_delay, jitter=1.0)

    def delay(self, attempt: int, error: CloudauthError, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        wait = self.backoff.delay(attempt - 1, rng.random())
        if isinstance(error, ThrottledError):
            hint = error.retry_after if error.retry_after is not None else DEFAULT_THROTTLE_PAUSE
            wait = max(wait, min(hint, self.max_delay))
        return wait

    @classmethod
    def no_retry(cls) -> RetryPolicy:
        """A single attempt."""
        return cls(max_attempts=1)
