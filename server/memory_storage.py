"""In-process rate-limit storage for the ``limits`` library, driven by an injected clock.

``limits.storage.MemoryStorage`` reads the wall clock and runs a background expiry timer,
so tests of window expiry would have to sleep.  This storage implements the same
``Storage`` and ``MovingWindowSupport`` interfaces, which the ``limits`` strategies call,
but reads time from a ``clock`` callable and expires entries lazily on access.

A moving-window entry is stored as one ``(time, amount)`` pair, not ``amount`` copies, so
a hit of cost ``c`` takes constant memory whatever ``c`` is.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from limits.storage import MovingWindowSupport, Storage

__all__ = ["ClockedMemoryStorage"]

logger = logging.getLogger(__name__)


class _Window:
    """Entries of one moving window, oldest first, with their running total."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def expire(self, now: float, expiry: float) -> None:
        # An entry counts while now < its time + expiry.
        while self.entries and self.entries[0][0] + expiry <= now:
            _, amount = self.entries.popleft()
            self.total -= amount


class ClockedMemoryStorage(Storage, MovingWindowSupport):
    """Thread-safe in-memory counters and moving windows with an injected clock.

    Parameters
    ----------
    clock : callable returning float
        Current time in seconds; only differences matter.
    """

    STORAGE_SCHEME = None  # not registered under a URI scheme

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, tuple[int, float]] = {}
        self._windows: dict[str, _Window] = {}

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    # -- fixed-window counters --------------------------------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self._lock:
            now = self._clock()
            count, expires_at = self._counters.get(key, (0, now))
            if expires_at <= now:
                count, expires_at = 0, now + expiry
            count += amount
            self._counters[key] = (count, expires_at)
            return count

    def get(self, key: str) -> int:
        with self._lock:
            count, expires_at = self._counters.get(key, (0, 0.0))
            return count if expires_at > self._clock() else 0

    def get_expiry(self, key: str) -> float:
        with self._lock:
            now = self._clock()
            _, expires_at = self._counters.get(key, (0, now))
            return max(expires_at, now)

    # -- moving windows ---------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        with self._lock:
            now = self._clock()
            window = self._windows.setdefault(key, _Window())
            window.expire(now, expiry)
            if window.total + amount > limit:
                return False
            window.entries.append((now, amount))
            window.total += amount
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        with self._lock:
            now = self._clock()
            window = self._windows.get(key)
            if window is None:
                return now, 0
            window.expire(now, expiry)
            if not window.entries:
                del self._windows[key]
                return now, 0
            return window.entries[0][0], window.total

    # -- housekeeping -----------------------------------------------------------------

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self._counters) + len(self._windows)
            self._counters.clear()
            self._windows.clear()
            return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._counters.pop(key, None)
            self._windows.pop(key, None)
