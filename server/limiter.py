"""Per-key admission control: request and sample rate limits, and the lifetime sample quota.

Each client key has two moving windows of ``window_seconds`` (``limits`` library,
moving-window strategy): one counts admitted requests, the other samples, where a request
of ``n`` samples for each of ``m`` prompts costs ``m * n`` (one per prompt for next-token
laws).  A request is admitted only if it fits both windows and the quota; a rejected
request charges nothing.  The admin key is exempt from all three.

Rate-limit headers describe the request window:

``X-RateLimit-Limit``
    Requests allowed per window.
``X-RateLimit-Remaining``
    Requests left in the current window.
``X-RateLimit-Reset``
    Seconds until the oldest request leaves the window (a full window when it is empty).

With a sample window configured, ``X-RateLimit-Samples-Limit`` and
``X-RateLimit-Samples-Remaining`` describe it the same way.  Callers without a valid key,
and the admin key, are charged nothing, so they see the configured limit as remaining and
a full window as reset.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter

from server.auth import Principal
from server.errors import ApiError
from server.ledger import KeyUsage, MemoryLedger
from server.memory_storage import ClockedMemoryStorage
from server.settings import Settings
from shared.protocol import Limits

__all__ = ["Limiter", "WindowState"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowState:
    """One rate-limit window of one key.

    Attributes
    ----------
    limit : int
        Units (requests or samples) allowed per window.
    remaining : int
        Units left now.
    reset_seconds : int
        Seconds until the oldest charge leaves the window.
    """

    limit: int
    remaining: int
    reset_seconds: int


class Limiter:
    """Admission control over a ``limits`` storage and a usage ledger.

    Parameters
    ----------
    settings : Settings
        Limits to enforce.
    ledger : MemoryLedger
        Per-key usage totals; the quota is checked against it.
    clock : callable returning float
        Current time in seconds.
    storage : limits.storage.Storage, optional
        Window storage with moving-window support; default an in-process
        :class:`ClockedMemoryStorage` on ``clock``.  A shared storage such as the
        ``limits`` Redis storage lets several processes share the windows, but it
        reads its own clock instead of ``clock``.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: MemoryLedger,
        clock: Callable[[], float],
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._clock = clock
        self._strategy = MovingWindowRateLimiter(storage or ClockedMemoryStorage(clock))
        window = settings.window_seconds
        self._requests = RateLimitItemPerSecond(
            settings.requests_per_window, window, namespace="requests"
        )
        self._samples: RateLimitItem | None = None
        if settings.samples_per_window is not None:
            self._samples = RateLimitItemPerSecond(
                settings.samples_per_window, window, namespace="samples"
            )

    # -- reporting --------------------------------------------------------------------

    def limits_for(self, principal: Principal) -> Limits:
        """Return the limits that apply to ``principal`` (``None`` where unlimited)."""
        s = self.settings
        exempt = principal.is_admin
        return Limits(
            requests_per_window=None if exempt else s.requests_per_window,
            samples_per_window=None if exempt else s.samples_per_window,
            window_seconds=s.window_seconds,
            quota_samples=None if exempt else s.quota_samples,
            max_prompts_per_request=s.max_prompts_per_request,
            max_samples_per_prompt=s.max_samples_per_prompt,
            max_tokens_per_request=s.max_tokens_per_request,
        )

    def quota_remaining(self, principal: Principal) -> int | None:
        """Return the samples left on the quota of ``principal``, or None if unlimited."""
        quota = self.settings.quota_samples
        if principal.is_admin or quota is None:
            return None
        return max(0, quota - self.ledger.usage(principal.key_id).samples)

    def window(self, item: RateLimitItem, principal: Principal | None) -> WindowState:
        """Return the state of window ``item`` for ``principal`` (full for None or admin)."""
        if principal is None or principal.is_admin:
            return WindowState(item.amount, item.amount, self.settings.window_seconds)
        stats = self._strategy.get_window_stats(item, principal.key_id)
        reset = max(0, math.ceil(stats.reset_time - self._clock()))
        return WindowState(item.amount, max(0, stats.remaining), reset)

    def headers(self, principal: Principal | None) -> dict[str, str]:
        """Return the rate-limit headers for a response to ``principal``."""
        requests = self.window(self._requests, principal)
        headers = {
            "X-RateLimit-Limit": str(requests.limit),
            "X-RateLimit-Remaining": str(requests.remaining),
            "X-RateLimit-Reset": str(requests.reset_seconds),
        }
        if self._samples is not None:
            samples = self.window(self._samples, principal)
            headers["X-RateLimit-Samples-Limit"] = str(samples.limit)
            headers["X-RateLimit-Samples-Remaining"] = str(samples.remaining)
        return headers

    # -- admission --------------------------------------------------------------------

    def admit(self, principal: Principal, samples: int) -> KeyUsage:
        """Charge one request of ``samples`` samples to ``principal``, or reject it.

        Returns
        -------
        KeyUsage
            The key's totals after the charge.

        Raises
        ------
        ApiError
            413 ``request_too_large`` if ``samples`` exceeds one whole sample window;
            429 ``quota_exhausted`` if it exceeds the quota left; 429 ``rate_limited``
            (with ``Retry-After``) if a window has no room now.
        """
        if principal.is_admin:
            return self._charge(principal, samples, quota=None)

        self._check_fits_window(samples)
        self._check_quota(principal, samples)
        self._check_windows(principal, samples)

        self._strategy.hit(self._requests, principal.key_id)
        if self._samples is not None:
            self._strategy.hit(self._samples, principal.key_id, cost=samples)
        return self._charge(principal, samples, self.settings.quota_samples)

    def _charge(self, principal: Principal, samples: int, quota: int | None) -> KeyUsage:
        usage = self.ledger.charge_samples(principal.key_id, samples, quota)
        if usage is None:
            self._check_quota(principal, samples)
            raise RuntimeError(f"quota check for {principal.key_id} passed but charging failed")
        return usage

    def _check_fits_window(self, samples: int) -> None:
        if self._samples is not None and samples > self._samples.amount:
            raise ApiError(
                413,
                "request_too_large",
                f"request costs {samples} samples but one window allows "
                f"{self._samples.amount} samples per {self.settings.window_seconds} s; split "
                f"it into requests of at most {self._samples.amount} samples",
            )

    def _check_quota(self, principal: Principal, samples: int) -> None:
        left = self.quota_remaining(principal)
        if left is None or samples <= left:
            return
        quota = self.settings.quota_samples
        advice = (
            "no retry will help; ask the operator for more quota"
            if left == 0
            else f"request at most {left} samples, or ask the operator for more quota"
        )
        raise ApiError(
            429,
            "quota_exhausted",
            f"sample quota exhausted: key {principal.key_id} has {left} of its {quota} "
            f"samples left and this request costs {samples}; {advice}",
        )

    def _check_windows(self, principal: Principal, samples: int) -> None:
        key = principal.key_id
        blocked: list[tuple[str, RateLimitItem]] = []
        if not self._strategy.test(self._requests, key):
            blocked.append(("requests", self._requests))
        if self._samples is not None and not self._strategy.test(self._samples, key, cost=samples):
            blocked.append(("samples", self._samples))
        if not blocked:
            return

        # NOTE: Retry-After is the time until the oldest charge leaves the window.  A
        # request that needs several old charges to expire may be rejected again then,
        # because the window stats of the limits library report only the oldest charge.
        retry_after = max(max(self.window(item, principal).reset_seconds, 1) for _, item in blocked)
        names = " and ".join(
            f"{name} ({item.amount} per {item.get_expiry()} s)" for name, item in blocked
        )
        raise ApiError(
            429,
            "rate_limited",
            f"rate limit reached for key {key}: {names}; this request costs 1 request and "
            f"{samples} samples; retry after {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
