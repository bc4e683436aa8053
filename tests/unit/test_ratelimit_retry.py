"""The shared token bucket and the backoff policy, on a hand-driven clock."""

from __future__ import annotations

import random

import pytest

from agent.cloud import RateLimiter
from provisioning.cloudauth import RequestTimeout, RetryPolicy, ThrottledError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=10, burst=3, clock=clock)
    waits = [limiter.reserve() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])


def test_tokens_refill_with_time_but_not_past_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=2, burst=2, clock=clock)
    limiter.reserve()
    limiter.reserve()
    clock.now += 60
    assert [limiter.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])


def test_n_callers_in_one_second_match_qps() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=5, burst=1, clock=clock)
    waits = [limiter.reserve() for _ in range(11)]
    assert max(waits) == pytest.approx(2.0)  # 11 calls at 5/s with one saved token take 2 s


def test_pause_holds_everyone_and_restarts_empty() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=10, burst=5, clock=clock)
    limiter.pause(2.0)
    assert limiter.reserve() == pytest.approx(2.1)
    limiter.pause(0.5)  # a shorter pause never shortens the longer one
    assert limiter.reserve() == pytest.approx(2.2)


def test_unlimited_still_honours_pause() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=None, clock=clock)
    assert limiter.reserve() == 0.0
    limiter.pause(1.5)
    assert limiter.reserve() == pytest.approx(1.5)


@pytest.mark.parametrize(("qps", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bad_rates_are_refused(qps: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"qps must be positive|burst must be at least 1"):
        RateLimiter(qps=qps, burst=burst)


def test_backoff_is_capped_full_jitter() -> None:
    policy = RetryPolicy(base_delay=0.2, max_delay=1.0)
    rng = random.Random(7)
    error = RequestTimeout("t")
    for attempt, ceiling in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (10, 1.0)]:
        samples = [policy.delay(attempt, error, rng) for _ in range(200)]
        assert min(samples) >= 0
        assert max(samples) <= ceiling
        assert max(samples) > ceiling * 0.8  # jitter spans the range


def test_throttling_waits_at_least_the_hint() -> None:
    policy = RetryPolicy(base_delay=0.01, max_delay=5.0)
    rng = random.Random(1)
    assert policy.delay(1, ThrottledError("t", retry_after=2.5), rng) >= 2.5
    assert policy.delay(1, ThrottledError("t"), rng) >= 1.0
    assert policy.delay(1, ThrottledError("t", retry_after=60), rng) <= 5.0
