"""Per-key admission control: request and sample rate limits, and the lifetime sample quota.

Each client key has two moving windows of ``window_seconds`` (``limits`` library,
moving-window strategy): one counts admitted requests, the other samples, where a request
of ``n`` samples for each of ``m`` prompts costs ``m * n`` (one per prompt for next-token
laws).  A request is admitted only if it fits both windows and the quota; a rejected
request charges nothing.  The admin key is exempt from all three, but its requests are
still charged to the ledger and audited.  Keys from a keys file may have limits of their
own; the others share the server-wide ones.

The windows live in the storage that :mod:`server.window_storage` picks: this process's
memory, or Redis shared by all workers.  When that storage fails, client requests get 503
``limiter_unavailable`` and nothing is charged or served.  The quota and the totals live in
the :class:`~server.ledger.Ledger`; when it fails, requests get 503 ``ledger_unavailable``.

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
from typing import TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter

from server.auth import Principal
from server.errors import ApiError
from server.keys import KeyLimits
from server.ledger import Charge, KeyUsage, Ledger, LedgerError
from server.memory_storage import ClockedMemoryStorage
from server.settings import Settings
from server.window_storage import StorageHealth
from shared.protocol import Limits

__all__ = ["Limiter", "WindowState"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Retry-After of a 503: a Redis restart or a busy ledger usually clears within seconds.
UNAVAILABLE_RETRY_SECONDS = 1


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
        Server-wide limits, for keys without limits of their own.
    ledger : Ledger
        Per-key usage totals and the audit; the quota is checked against it.
    clock : callable returning float
        Current time in seconds, as the storage reads it.
    storage : limits.storage.Storage, optional
        Window storage with moving-window support; default an in-process
        :class:`ClockedMemoryStorage` on ``clock``.  A shared storage such as the
        ``limits`` Redis storage lets several processes share the windows, but it reads
        ``time.time``, so ``clock`` must then be ``time.time`` too.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        clock: Callable[[], float],
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._clock = clock
        self._strategy = MovingWindowRateLimiter(storage or ClockedMemoryStorage(clock))
        self._defaults = KeyLimits.defaults(settings)
        self._items: dict[KeyLimits, tuple[RateLimitItem, RateLimitItem | None]] = {}
        self.health = StorageHealth()

    # -- limits of a key --------------------------------------------------------------

    def key_limits(self, principal: Principal | None) -> KeyLimits:
        """Return the limits of a client key (server-wide ones for None or a plain key)."""
        if principal is None or principal.limits is None:
            return self._defaults
        return principal.limits

    def _windows(self, principal: Principal | None) -> tuple[RateLimitItem, RateLimitItem | None]:
        """Return the request window and the sample window (None if unlimited) of a key."""
        limits = self.key_limits(principal)
        items = self._items.get(limits)
        if items is None:
            window = self.settings.window_seconds
            requests = RateLimitItemPerSecond(
                limits.requests_per_window, window, namespace="requests"
            )
            samples = None
            if limits.samples_per_window is not None:
                samples = RateLimitItemPerSecond(
                    limits.samples_per_window, window, namespace="samples"
                )
            items = self._items[limits] = (requests, samples)
        return items

    # -- reporting --------------------------------------------------------------------

    def limits_for(self, principal: Principal) -> Limits:
        """Return the limits that apply to ``principal`` (``None`` where unlimited)."""
        s = self.settings
        exempt = principal.is_admin
        limits = self.key_limits(principal)
        return Limits(
            requests_per_window=None if exempt else limits.requests_per_window,
            samples_per_window=None if exempt else limits.samples_per_window,
            window_seconds=s.window_seconds,
            quota_samples=None if exempt else limits.quota_samples,
            max_prompts_per_request=s.max_prompts_per_request,
            max_samples_per_prompt=s.max_samples_per_prompt,
            max_tokens_per_request=s.max_tokens_per_request,
        )

    def quota_remaining(self, principal: Principal, usage: KeyUsage | None = None) -> int | None:
        """Return the samples left on the quota of ``principal``, or None if unlimited.

        Reads the ledger unless ``usage``, the key's current totals, is given.

        Raises
        ------
        ApiError
            503 ``ledger_unavailable`` if the ledger cannot be read.
        """
        quota = self.key_limits(principal).quota_samples
        if principal.is_admin or quota is None:
            return None
        if usage is None:
            usage = self.usage(principal)
        return max(0, quota - usage.samples)

    def usage(self, principal: Principal) -> KeyUsage:
        """Return the totals of ``principal``; 503 ``ledger_unavailable`` if unreadable."""
        return self._ledger_call(self.ledger.usage, principal.key_id)

    def window(self, item: RateLimitItem, principal: Principal | None) -> WindowState:
        """Return the state of window ``item`` for ``principal`` (full for None or admin).

        Raises
        ------
        ApiError
            503 ``limiter_unavailable`` if the window storage cannot be reached.
        """
        if principal is None or principal.is_admin:
            return WindowState(item.amount, item.amount, self.settings.window_seconds)
        stats = self._storage_call(self._strategy.get_window_stats, item, principal.key_id)
        reset = max(0, math.ceil(stats.reset_time - self._clock()))
        return WindowState(item.amount, max(0, stats.remaining), reset)

    def headers(self, principal: Principal | None) -> dict[str, str]:
        """Return the rate-limit headers for a response to ``principal``.

        While the window storage is down, the headers report no requests remaining and a
        reset after the 503's ``Retry-After``, without calling the storage again.
        """
        requests_item, samples_item = self._windows(principal)
        items = [("", requests_item)]
        if samples_item is not None:
            items.append(("Samples-", samples_item))
        headers: dict[str, str] = {}
        for prefix, item in items:
            state = self._window_or_unknown(item, principal)
            headers[f"X-RateLimit-{prefix}Limit"] = str(state.limit)
            headers[f"X-RateLimit-{prefix}Remaining"] = str(state.remaining)
            if not prefix:
                headers["X-RateLimit-Reset"] = str(state.reset_seconds)
        return headers

    def _window_or_unknown(self, item: RateLimitItem, principal: Principal | None) -> WindowState:
        unknown = WindowState(item.amount, 0, UNAVAILABLE_RETRY_SECONDS)
        if self.health.is_down and principal is not None and not principal.is_admin:
            return unknown
        try:
            return self.window(item, principal)
        except ApiError:
            return unknown

    # -- admission --------------------------------------------------------------------

    def admit(self, principal: Principal, charge: Charge) -> KeyUsage:
        """Charge ``charge`` to ``principal``, or reject it without charging anything.

        Returns
        -------
        KeyUsage
            The key's totals after the charge.

        Raises
        ------
        ApiError
            413 ``request_too_large`` if the charge exceeds one whole sample window.
            429 ``quota_exhausted`` if it exceeds the quota left.  429 ``rate_limited``
            (with ``Retry-After``) if a window has no room now.  503
            ``limiter_unavailable`` or ``ledger_unavailable`` (with ``Retry-After``) if
            the window storage or the ledger cannot be reached.
        """
        if principal.is_admin:
            return self._charge(principal, charge, quota=None)

        samples = charge.samples
        requests_item, samples_item = self._windows(principal)
        self._check_fits_window(samples_item, samples)
        self._check_quota(principal, samples)

        # hit() adds to a window atomically and fails rather than overfill it, even when
        # several workers share the window.  The sample window is tested first so that a
        # request it rejects takes no place in the request window.
        key = principal.key_id
        if samples_item is not None and not self._storage_call(
            self._strategy.test, samples_item, key, cost=samples
        ):
            self._reject_rate_limited(principal, samples, [("samples", samples_item)])
        if not self._storage_call(self._strategy.hit, requests_item, key):
            self._reject_rate_limited(principal, samples, [("requests", requests_item)])
        if samples_item is not None and not self._storage_call(
            self._strategy.hit, samples_item, key, cost=samples
        ):
            # NOTE: the request window keeps this request's entry although the request is
            # rejected.  It happens only when another worker takes the last samples of the
            # window between the test and this hit, and it errs towards admitting less.
            self._reject_rate_limited(principal, samples, [("samples", samples_item)])
        return self._charge(principal, charge, self.key_limits(principal).quota_samples)

    def _charge(self, principal: Principal, charge: Charge, quota: int | None) -> KeyUsage:
        usage = self._ledger_call(self.ledger.charge, principal.key_id, charge, quota)
        if usage is None:
            # Another worker spent the quota since _check_quota read it.  The window
            # entries taken above stay: they err towards admitting less.
            self._check_quota(principal, charge.samples)
            raise RuntimeError(f"quota check for {principal.key_id} passed but charging failed")
        return usage

    def _check_fits_window(self, samples_item: RateLimitItem | None, samples: int) -> None:
        if samples_item is not None and samples > samples_item.amount:
            raise ApiError(
                413,
                "request_too_large",
                f"request costs {samples} samples but one window allows "
                f"{samples_item.amount} samples per {self.settings.window_seconds} s; split "
                f"it into requests of at most {samples_item.amount} samples",
            )

    def _check_quota(self, principal: Principal, samples: int) -> None:
        left = self.quota_remaining(principal)
        if left is None or samples <= left:
            return
        quota = self.key_limits(principal).quota_samples
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

    def _reject_rate_limited(
        self, principal: Principal, samples: int, blocked: list[tuple[str, RateLimitItem]]
    ) -> None:
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
            f"rate limit reached for key {principal.key_id}: {names}; this request costs 1 "
            f"request and {samples} samples; retry after {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    # -- failures of the storage and the ledger ---------------------------------------

    def _storage_call(self, function: Callable[..., _T], *args: object, **kwargs: int) -> _T:
        """Call the window storage through ``function``; 503 if the storage fails."""
        try:
            result = function(*args, **kwargs)
        except StorageError as error:
            self.health.failed(error.storage_error)
            raise ApiError(
                503,
                "limiter_unavailable",
                "the rate limiter's storage cannot be reached, so no request can be "
                f"metered; nothing was charged; retry after {UNAVAILABLE_RETRY_SECONDS} s",
                headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)},
            ) from error
        self.health.succeeded()
        return result

    def _ledger_call(self, function: Callable[..., _T], *args: object) -> _T:
        """Call the ledger through ``function``; 503 ``ledger_unavailable`` if it fails."""
        try:
            return function(*args)
        except LedgerError as error:
            logger.error("%s", error)
            raise ApiError(
                503,
                "ledger_unavailable",
                "the usage ledger cannot be reached; nothing was charged; retry after "
                f"{UNAVAILABLE_RETRY_SECONDS} s",
                headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)},
            ) from error
