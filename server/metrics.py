"""Prometheus metrics of the server, served as text at ``GET /metrics``.

Metrics
-------
``lowrank_requests_total{route, method, status}``
    Finished requests.  ``route`` is the route template (``/v1/complete``), or
    ``unmatched`` for a path no route serves, so that unknown paths cannot grow the
    number of series.
``lowrank_request_duration_seconds{route}``
    Histogram of the time from receiving a request to finishing its response.
``lowrank_samples_served_total``
    Samples returned by successful ``POST /v1/complete`` requests (one per prompt for
    next-token laws).
``lowrank_rejections_total{reason}``
    Responses with status 400 or more, by error code (``rate_limited``,
    ``quota_exhausted``, ``limiter_unavailable``, ``invalid_request``, ...).

No metric is labelled by key, so ``/metrics`` needs no key and reveals no client.

With several worker processes, each worker answers ``/metrics`` alone, so the metrics use
prometheus-client's multiprocess mode: ``lowrank-server --workers N`` points the
``PROMETHEUS_MULTIPROC_DIR`` environment variable at an empty directory before it starts
the workers, each worker writes its values there, and every scrape sums all workers.  The
variable must be set before ``prometheus_client`` is first imported in a process.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["MULTIPROC_DIR_ENV", "Metrics"]

logger = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "unmatched"
# Sampling takes from well under a millisecond (n = 1) to seconds (large batches).
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """The server's counters and latency histogram, and their text exposition.

    Multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR`` was set as this process
    first imported ``prometheus_client``, because that import fixes where values live.

    Notes
    -----
    In single-process mode every instance has its own registry, so several apps in one
    process (as in tests) count separately.  In multiprocess mode all instances in all
    processes that share the directory add to the same values.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))
        # In multiprocess mode the values live in files, and a registry is built per scrape.
        self._registry = None if self.multiprocess else CollectorRegistry()
        self.requests = Counter(
            "lowrank_requests",
            "Finished requests, by route template, method and status.",
            ["route", "method", "status"],
            registry=self._registry,
        )
        self.latency = Histogram(
            "lowrank_request_duration_seconds",
            "Time from receiving a request to finishing its response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self._registry,
        )
        self.samples = Counter(
            "lowrank_samples_served",
            "Samples returned by successful completion requests.",
            registry=self._registry,
        )
        self.rejections = Counter(
            "lowrank_rejections",
            "Responses with status 400 or more, by error code.",
            ["reason"],
            registry=self._registry,
        )

    def observe(
        self,
        route: str | None,
        method: str,
        status: int,
        seconds: float,
        error_code: str | None,
        samples_served: int,
    ) -> None:
        """Record one finished request.

        Parameters
        ----------
        route : str or None
            Route template; None for a path that no route serves.
        method : str
        status : int
        seconds : float
            Time from receiving the request to finishing the response.
        error_code : str or None
            Error code of a response with status 400 or more.
        samples_served : int
            Samples the response returned.
        """
        route = route or UNMATCHED_ROUTE
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.rejections.labels(error_code or f"http_{status}").inc()
        if samples_served:
            self.samples.inc(samples_served)

    def render(self) -> bytes:
        """Return all metrics in the Prometheus text format."""
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
