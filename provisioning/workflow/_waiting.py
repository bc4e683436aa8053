"""When to tell a device to come back while the line waits for the cloud.

Devices beyond the in-process queue are not all told "in 5 s": that made N waiting devices send
N/5 registers a second, each refused, while the cloud served ``qps`` of them. Each refused
device instead gets its own turn on a virtual timeline, one ``1/qps`` apart after everything
already queued or promised, so the registers coming back arrive at about the rate the cloud
serves them.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_COME_BACK_S", "MIN_COME_BACK_S", "ComeBack"]

MIN_COME_BACK_S: Final = 5  # never sooner: a register costs a round trip and a decode
MAX_COME_BACK_S: Final = 3600  # an hour: a device told longer would rather hear it again later


class ComeBack:
    """Hands out come-back times from the cloud's rate and the queue ahead."""

    def __init__(self, qps: float | None, floor_s: int = MIN_COME_BACK_S) -> None:
        self.qps = qps  # None: unlimited (the queue's length alone decides)
        self.floor_s = floor_s  # the shortest wait handed out (limits.wait_retry_after_s)
        self._promised_until = 0.0  # the last come-back instant handed out

    def after(self, ahead: int, now: float) -> int:
        """Seconds the next refused device should wait, with ``ahead`` devices queued in process."""
        rate = self.qps or float(max(1, ahead))
        start = max(now + ahead / rate, self._promised_until)
        self._promised_until = start + 1.0 / rate
        wait = math.ceil(self._promised_until - now)
        return max(self.floor_s, min(MAX_COME_BACK_S, wait))

    def estimate(self, ahead: int) -> int:
        """A waiting device's expected wait for its turn, without promising anything."""
        rate = self.qps or float(max(1, ahead))
        return max(self.floor_s, min(MAX_COME_BACK_S, math.ceil(ahead / rate)))
