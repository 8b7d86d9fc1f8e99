"""Storage of the rate-limit windows: process memory, or Redis shared by all workers.

Without a Redis URL the windows live in a :class:`ClockedMemoryStorage` of this process.
With one, they live in Redis through the ``limits`` library's ``RedisStorage``, whose Lua
scripts add to a moving window atomically, so every worker and replica that shares the
Redis database enforces one limit per key.

When Redis cannot be reached, the storage raises ``limits.errors.StorageError``; the
limiter then rejects client requests with 503 ``limiter_unavailable`` rather than serve
them unmetered.  :class:`StorageHealth` logs the start of such an outage once at WARNING
and its end at INFO, instead of one line per failed request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from limits.storage import RedisStorage, Storage
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.memory_storage import ClockedMemoryStorage
from server.settings import Settings

__all__ = ["REDIS_TIMEOUT_SECONDS", "StorageHealth", "window_storage"]

logger = logging.getLogger(__name__)

# Socket timeouts of each Redis call.  Requests wait this long on an unresponsive Redis
# before they get a 503; a refused connection fails at once.
REDIS_TIMEOUT_SECONDS = 0.5
# One immediate retry reconnects a pooled connection that Redis closed when it restarted.
# The client's default of 10 retries with backoff (redis-py 8.2) would hold each request
# for seconds during an outage.
REDIS_RETRIES = 1


def window_storage(settings: Settings, clock: Callable[[], float] = time.monotonic) -> Storage:
    """Return the window storage that ``settings`` select.

    Parameters
    ----------
    settings : Settings
        ``redis_url`` selects Redis; without it the windows stay in this process.
    clock : callable returning float, optional
        Time of the in-process storage; default ``time.monotonic``.  Redis storage reads
        ``time.time`` instead.

    Returns
    -------
    limits.storage.Storage
        A storage with moving-window support.  Connecting to Redis waits for the first
        call, so a server can start while Redis is down.
    """
    if settings.redis_url is None:
        return ClockedMemoryStorage(clock)
    # NOTE: the Redis moving window stores one list entry per sample, about 16 bytes each,
    # so a key's sample window can take 16 MB at samples_per_window = 1000000.  A hit of
    # cost 100000 ran a 65 ms Lua script, which blocks Redis meanwhile (Redis 7.0, limits
    # 5.8).  Storing (time, cost) pairs, as ClockedMemoryStorage does, would remove both.
    return RedisStorage(
        settings.redis_url,
        wrap_exceptions=True,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), REDIS_RETRIES),  # type: ignore[arg-type]
    )


class StorageHealth:
    """Health of the window storage after its last call, logged once per change.

    Parameters
    ----------
    clock : callable returning float, optional
        Seconds, used to report how long an outage lasted; default ``time.monotonic``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._down_since: float | None = None

    @property
    def is_down(self) -> bool:
        """Whether the last call to the storage failed."""
        return self._down_since is not None

    def failed(self, error: Exception) -> None:
        """Record a failed call; log a WARNING if the storage was up until now."""
        if self._down_since is None:
            self._down_since = self._clock()
            logger.warning(
                "rate-limit storage unavailable (%s); client requests get 503 "
                "limiter_unavailable until it answers again",
                error,
            )

    def succeeded(self) -> None:
        """Record a successful call; log at INFO if it ends an outage."""
        if self._down_since is not None:
            logger.info(
                "rate-limit storage available again after %.1f s; admitting requests",
                self._clock() - self._down_since,
            )
            self._down_since = None
