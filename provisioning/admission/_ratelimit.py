"""Registrations per device and per transport: token buckets in memory (a restart forgives)."""

from __future__ import annotations

from typing import Final

__all__ = ["TokenBuckets"]

MAX_TRACKED: Final = 100_000  # devices remembered at once; beyond this, full (idle) buckets are dropped


class TokenBuckets:
    """One bucket per key holding up to ``capacity`` tokens, refilled at ``per_second``."""

    def __init__(self, capacity: int, per_second: float) -> None:
        self.capacity, self.per_second = capacity, per_second
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str, now: float) -> float:
        """Take a token for ``key``: 0.0 when there was one, else the seconds until there is."""
        tokens, stamp = self._buckets.get(key, (float(self.capacity), now))
        tokens = min(float(self.capacity), tokens + max(0.0, now - stamp) * self.per_second)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_TRACKED:
                self._drop_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.per_second

    def __len__(self) -> int:
        return len(self._buckets)

    def _drop_full(self, now: float) -> None:
        """A bucket refilled to capacity is the same as no bucket: forget it."""
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self.per_second >= self.capacity:
                del self._buckets[key]
