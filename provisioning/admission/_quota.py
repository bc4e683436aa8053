"""Quota use: every key charged, by time, model, sender and work order, in memory (the journal keeps it durably)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from provisioning.admission._refusal import Reason

__all__ = ["DAY_S", "HOUR_S", "ChargeLimit", "Ledger", "Mint"]

HOUR_S: Final = 3600
DAY_S: Final = 24 * HOUR_S  # quotas are rolling windows: "per day" is any 24 hours, not a calendar day


@dataclass(frozen=True, slots=True)
class Mint:
    """One key charged to the quotas: counted from the moment it is about to be minted."""

    device_id: str
    model: str
    work_order: str  # "" when the device was admitted without a work order
    at: float
    row_id: int = 0  # the journal's row, once written
    sender: str = ""  # the topic id (broker login or jig port) the key is issued to


@dataclass(frozen=True, slots=True)
class ChargeLimit:
    """One limit a charge must stay under, for a ledger that counts every agent's charges itself.

    ``scope`` says which charges count: ``line`` (all), ``model``, ``sender`` or ``order`` (the
    work order ``key``, ever: ``window_s`` 0); the others count those at most ``window_s`` old.
    """

    reason: Reason
    scope: Literal["line", "model", "sender", "order"]
    key: str  # the model, sender or work order ("" for the line)
    window_s: int
    limit: int
    message: str  # said to the device when the limit is reached


class Ledger:
    """Keys charged in the last day (line, per model, per sender) and ever per work order."""

    def __init__(self, recent: Iterable[Mint] = (), per_order: Mapping[str, int] | None = None) -> None:
        self._line: list[float] = []
        self._models: dict[str, list[float]] = {}
        self._senders: dict[str, list[float]] = {}
        self._orders: dict[str, int] = dict(per_order or {})
        for mint in recent:
            self._insert(mint)

    def add(self, mint: Mint) -> None:
        """Charge one key."""
        self._insert(mint)
        if mint.work_order:
            self._orders[mint.work_order] = self._orders.get(mint.work_order, 0) + 1

    def remove(self, mint: Mint) -> None:
        """Give back a key that was never minted (the cloud call failed before it)."""
        for times in (self._line, self._models.get(mint.model, []), self._senders.get(mint.sender, [])):
            index = bisect.bisect_left(times, mint.at)
            if index < len(times) and times[index] == mint.at:
                del times[index]
        if mint.work_order and self._orders.get(mint.work_order, 0) > 0:
            self._orders[mint.work_order] -= 1

    def used(self, window_s: int, now: float, model: str | None = None) -> int:
        """Keys charged in the ``window_s`` seconds before ``now`` (the line's, or one model's)."""
        times = self._line if model is None else self._models.get(model, [])
        return len(times) - bisect.bisect_right(times, now - window_s)

    def sender_used(self, window_s: int, now: float, sender: str) -> int:
        """Keys issued to one sender (topic id) in the window."""
        times = self._senders.get(sender, [])
        return len(times) - bisect.bisect_right(times, now - window_s)

    def retry_after(self, window_s: int, limit: int, now: float, model: str | None = None) -> int:
        """Seconds until fewer than ``limit`` keys are charged in the window (0 when that is already so)."""
        return _retry_after(self._line if model is None else self._models.get(model, []), window_s, limit, now)

    def sender_retry_after(self, window_s: int, limit: int, now: float, sender: str) -> int:
        """:meth:`retry_after` for one sender."""
        return _retry_after(self._senders.get(sender, []), window_s, limit, now)

    def order_used(self, order_id: str) -> int:
        """Keys charged to a work order, ever."""
        return self._orders.get(order_id, 0)

    def prune(self, now: float) -> None:
        """Forget times older than a day (nothing reads them), and senders with none left."""
        for times in (self._line, *self._models.values(), *self._senders.values()):
            del times[: bisect.bisect_right(times, now - DAY_S)]
        for sender in [sender for sender, times in self._senders.items() if not times]:
            del self._senders[sender]

    def _insert(self, mint: Mint) -> None:
        bisect.insort(self._line, mint.at)
        bisect.insort(self._models.setdefault(mint.model, []), mint.at)
        if mint.sender:
            bisect.insort(self._senders.setdefault(mint.sender, []), mint.at)


def _retry_after(times: list[float], window_s: int, limit: int, now: float) -> int:
    start = bisect.bisect_right(times, now - window_s)
    over = len(times) - start - limit
    if over < 0:
        return 0
    return max(1, math.ceil(times[start + over] + window_s - now))
