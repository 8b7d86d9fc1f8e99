"""Tests of the Prometheus metrics and the ``GET /metrics`` route."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import Metrics

REPO_ROOT = Path(__file__).resolve().parents[2]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Map (sample name, sorted labels) to value for every sample of a text exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_observe_counts_by_labels() -> None:
    metrics = Metrics()

    metrics.observe("/v1/complete", "POST", 200, 0.003, None, samples_served=40)
    metrics.observe("/v1/complete", "POST", 429, 0.001, "rate_limited", samples_served=0)
    metrics.observe(None, "GET", 404, 0.001, "not_found", samples_served=0)

    values = _samples(metrics.render().decode())
    requests = "lowrank_requests_total"
    assert (
        values[(requests, (("method", "POST"), ("route", "/v1/complete"), ("status", "200")))] == 1
    )
    assert values[(requests, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert values[("lowrank_samples_served_total", ())] == 40
    assert values[("lowrank_rejections_total", (("reason", "rate_limited"),))] == 1
    assert values[("lowrank_rejections_total", (("reason", "not_found"),))] == 1
    assert values[("lowrank_request_duration_seconds_count", (("route", "/v1/complete"),))] == 2


def test_metrics_instances_count_separately() -> None:
    first, second = Metrics(), Metrics()

    first.observe("/healthz", "GET", 200, 0.001, None, samples_served=0)

    assert "lowrank_requests_total{" in first.render().decode()
    assert "lowrank_requests_total{" not in second.render().decode()


@pytest.mark.anyio
async def test_metrics_route_reports_requests(client: httpx.AsyncClient, keys) -> None:
    auth = keys.auth(keys.client)
    await client.post("/v1/complete", json={"prompts": [[], [0]], "n": 3}, headers=auth)
    await client.post("/v1/complete", json={"prompts": [[2]]}, headers=auth)
    await client.get("/no/such/path")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = _samples(response.text)
    ok = (
        "lowrank_requests_total",
        (("method", "POST"), ("route", "/v1/complete"), ("status", "200")),
    )
    assert values[ok] == 1
    assert values[("lowrank_samples_served_total", ())] == 6
    assert values[("lowrank_rejections_total", (("reason", "zero_probability_prompt"),))] == 1
    assert values[("lowrank_rejections_total", (("reason", "not_found"),))] == 1
    assert keys.client not in response.text
    assert "key_" not in response.text


@pytest.mark.anyio
async def test_metrics_route_counts_no_samples_for_rejections(make_client, keys) -> None:
    async with make_client(quota_samples=5) as client:
        await client.post(
            "/v1/complete", json={"prompts": [[]], "n": 9}, headers=keys.auth(keys.client)
        )
        text = (await client.get("/metrics")).text

    values = _samples(text)
    assert values[("lowrank_rejections_total", (("reason", "quota_exhausted"),))] == 1
    assert values.get(("lowrank_samples_served_total", ()), 0.0) == 0


_WORKER_SCRIPT = """
import sys
from server.metrics import Metrics
metrics = Metrics()
assert metrics.multiprocess, "PROMETHEUS_MULTIPROC_DIR was not picked up"
metrics.observe("/v1/complete", "POST", 200, 0.01, None, samples_served=int(sys.argv[1]))
"""

_READER_SCRIPT = """
import sys
from server.metrics import Metrics
sys.stdout.write(Metrics().render().decode())
"""


def test_metrics_multiprocess_mode_sums_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}

    def run(script: str, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", script, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    run(_WORKER_SCRIPT, "30")
    run(_WORKER_SCRIPT, "12")
    values = _samples(run(_READER_SCRIPT))

    assert values[("lowrank_samples_served_total", ())] == 42
    ok = (
        "lowrank_requests_total",
        (("method", "POST"), ("route", "/v1/complete"), ("status", "200")),
    )
    assert values[ok] == 2
