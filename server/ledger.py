"""Usage ledger: requests, samples and tokens consumed by each API key.

The sample quota of a key is checked against this ledger.  It lives in process memory,
so usage and quotas reset when the server restarts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

__all__ = ["KeyUsage", "MemoryLedger"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyUsage:
    """Totals of one key since the ledger started.

    Attributes
    ----------
    requests : int
        Admitted ``POST /v1/complete`` requests.
    samples : int
        Samples charged (prompts x n, or one per prompt for next-token laws).
    tokens : int
        Tokens returned.
    """

    requests: int = 0
    samples: int = 0
    tokens: int = 0


class MemoryLedger:
    """Thread-safe per-key usage totals kept in memory."""

    # TODO: a SQLite-backed ledger with this interface will make quotas survive restarts.

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, KeyUsage] = {}

    def usage(self, key_id: str) -> KeyUsage:
        """Return the totals of ``key_id`` (all zero for a key never seen)."""
        with self._lock:
            return self._usage.get(key_id, KeyUsage())

    def charge_samples(self, key_id: str, samples: int, quota: int | None) -> KeyUsage | None:
        """Add one request of ``samples`` samples unless it would pass ``quota``.

        Parameters
        ----------
        key_id : str
            The paying key.
        samples : int
            Samples the request costs.
        quota : int or None
            Lifetime sample quota of the key; ``None`` means unlimited.

        Returns
        -------
        KeyUsage or None
            The new totals, or ``None`` (and nothing charged) if the quota would be passed.
        """
        with self._lock:
            usage = self._usage.get(key_id, KeyUsage())
            if quota is not None and usage.samples + samples > quota:
                return None
            usage = KeyUsage(usage.requests + 1, usage.samples + samples, usage.tokens)
            self._usage[key_id] = usage
            return usage

    def add_tokens(self, key_id: str, tokens: int) -> KeyUsage:
        """Add ``tokens`` returned tokens to ``key_id`` and return the new totals."""
        with self._lock:
            usage = self._usage.get(key_id, KeyUsage())
            usage = KeyUsage(usage.requests, usage.samples, usage.tokens + tokens)
            self._usage[key_id] = usage
            return usage
