"""The one backoff schedule and the one token bucket, on numbers alone (no clock, no loop)."""

from __future__ import annotations

import pytest

from provisioning.pacing import Backoff, TokenBucket, TokenBuckets


def test_backoff_doubles_from_first_up_to_the_cap() -> None:
    backoff = Backoff(first=0.5, cap=30.0)
    assert [backoff.ceiling(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.ceiling(10_000) == 30.0  # no overflow however long the outage


@pytest.mark.parametrize(("jitter", "low"), [(0.0, 8.0), (0.5, 4.0), (1.0, 0.0)])
def test_jitter_takes_at_most_its_share_of_the_ceiling(jitter: float, low: float) -> None:
    backoff = Backoff(first=1.0, cap=300.0, jitter=jitter)
    assert backoff.delay(3, 0.0) == 8.0  # a draw of 0 waits the whole ceiling
    assert backoff.delay(3, 0.999999) == pytest.approx(low, abs=1e-4)


@pytest.mark.parametrize("bad", [{"first": -1.0, "cap": 1.0}, {"first": 1.0, "cap": 1.0, "jitter": 1.5}])
def test_a_nonsense_schedule_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"negative|jitter"):
        Backoff(**bad)


def test_take_spends_only_when_there_is_a_token() -> None:
    bucket = TokenBucket.full(rate=2.0, capacity=2, now=0.0)
    assert [bucket.take(0.0), bucket.take(0.0)] == [0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # refused: nothing spent
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0


def test_reserve_books_ahead_so_callers_queue_in_order() -> None:
    bucket = TokenBucket.full(rate=10.0, capacity=1, now=0.0)
    assert [bucket.reserve(0.0) for _ in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_a_hold_stops_everything_and_leaves_the_bucket_empty() -> None:
    bucket = TokenBucket.full(rate=10.0, capacity=5, now=0.0)
    bucket.hold(0.0, 2.0)
    assert bucket.take(1.0) == pytest.approx(1.0 + 0.1)  # after the hold, and then a token must refill
    assert bucket.reserve(0.0) == pytest.approx(2.1)
    bucket.hold(0.0, 0.5)  # a shorter hold never shortens a longer one
    assert bucket.held_until == 2.0


def test_unlimited_honours_only_holds() -> None:
    bucket = TokenBucket.full(rate=None, capacity=1, now=0.0)
    assert [bucket.take(0.0) for _ in range(100)] == [0.0] * 100
    bucket.hold(0.0, 1.5)
    assert bucket.reserve(0.0) == pytest.approx(1.5)


def test_keyed_buckets_are_independent_and_idle_full_ones_are_forgotten() -> None:
    buckets = TokenBuckets(1, 1.0, max_tracked=3)
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == pytest.approx(1.0)
    assert buckets.take("b", 0.0) == 0.0  # another key: its own budget
    for key in "cde":
        buckets.take(key, 10.0)
    assert len(buckets) <= 3  # the refilled ones went when the map grew past its bound
    assert buckets.take("a", 10.0) == 0.0  # forgotten is the same as full
