"""Tests of the clocked in-memory storage through the ``limits`` strategies that use it."""

from __future__ import annotations

from limits import RateLimitItemPerSecond
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from server.memory_storage import ClockedMemoryStorage


def test_moving_window_counts_cost(clock) -> None:
    limiter = MovingWindowRateLimiter(ClockedMemoryStorage(clock))
    item = RateLimitItemPerSecond(10, 5)

    assert limiter.hit(item, "k", cost=7)
    assert not limiter.hit(item, "k", cost=4)
    assert limiter.hit(item, "k", cost=3)
    assert limiter.get_window_stats(item, "k").remaining == 0


def test_moving_window_expires_entries_in_order(clock) -> None:
    limiter = MovingWindowRateLimiter(ClockedMemoryStorage(clock))
    item = RateLimitItemPerSecond(10, 5)
    limiter.hit(item, "k", cost=6)
    clock.advance(2)
    limiter.hit(item, "k", cost=4)

    stats = limiter.get_window_stats(item, "k")
    assert stats.remaining == 0
    assert stats.reset_time == clock() + 3

    clock.advance(3)
    assert limiter.get_window_stats(item, "k").remaining == 6
    clock.advance(2)
    assert limiter.get_window_stats(item, "k").remaining == 10


def test_moving_window_rejects_cost_above_limit(clock) -> None:
    limiter = MovingWindowRateLimiter(ClockedMemoryStorage(clock))

    assert not limiter.hit(RateLimitItemPerSecond(10, 5), "k", cost=11)


def test_moving_window_empty_reports_full_window(clock) -> None:
    limiter = MovingWindowRateLimiter(ClockedMemoryStorage(clock))
    item = RateLimitItemPerSecond(10, 5)

    stats = limiter.get_window_stats(item, "k")

    assert stats.remaining == 10
    assert stats.reset_time == clock() + 5


def test_fixed_window_counter_resets(clock) -> None:
    limiter = FixedWindowRateLimiter(ClockedMemoryStorage(clock))
    item = RateLimitItemPerSecond(2, 10)
    limiter.hit(item, "k")
    limiter.hit(item, "k")

    assert not limiter.test(item, "k")
    clock.advance(10)
    assert limiter.test(item, "k")
    assert limiter.get_window_stats(item, "k").remaining == 2


def test_storage_clear_and_reset(clock) -> None:
    storage = ClockedMemoryStorage(clock)
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(3, 5)
    limiter.hit(item, "a", cost=3)
    limiter.hit(item, "b", cost=3)

    limiter.clear(item, "a")
    assert limiter.get_window_stats(item, "a").remaining == 3
    assert storage.reset() == 1
    assert limiter.get_window_stats(item, "b").remaining == 3
    assert storage.check()
