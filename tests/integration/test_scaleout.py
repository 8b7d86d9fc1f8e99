"""Scale-out over real processes: two uvicorn workers sharing rate limits in a real Redis.

Each test starts its own ``redis-server`` (no persistence) and ``lowrank-server`` on free
loopback ports, and is skipped when ``redis-server`` is not installed.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "test-client-key"
CLIENTS = 32
REQUESTS_PER_CLIENT = 5
SAMPLES_PER_REQUEST = 5
SAMPLE_LIMIT = 200


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _metric(text: str, name: str) -> float:
    """Return the value of the unlabelled sample ``name`` in a text exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise KeyError(f"no sample {name} in the metrics")


def _client_run(base_url: str) -> list[tuple[int, int]]:
    """Send the requests of one client; return (status, samples received) per request."""
    results = []
    with httpx.Client(base_url=base_url, headers=_auth(CLIENT_KEY), timeout=30) as client:
        for _ in range(REQUESTS_PER_CLIENT):
            response = client.post("/v1/complete", json={"prompts": [[]], "n": SAMPLES_PER_REQUEST})
            samples = 0
            if response.status_code == 200:
                completions = response.json()["choices"][0]["completions"]
                samples = len(completions)
            results.append((response.status_code, samples))
    return results


def test_scaleout_two_workers_share_sample_window(launch_server, redis_server) -> None:
    redis = redis_server()
    server = launch_server(
        MODEL,
        args=[
            "--workers", "2",
            "--redis-url", redis.url,
            "--samples-per-window", str(SAMPLE_LIMIT),
            "--requests-per-window", "100000",
            "--window-seconds", "3600",
        ],
    )  # fmt: skip

    with ThreadPoolExecutor(CLIENTS) as pool:
        runs = list(pool.map(_client_run, [server.base_url] * CLIENTS))
    with httpx.Client(base_url=server.base_url, headers=_auth(CLIENT_KEY), timeout=10) as client:
        usage = client.get("/v1/usage").json()
        metrics = client.get("/metrics").text

    results = [result for run in runs for result in run]
    statuses = [status for status, _ in results]
    admitted = sum(samples for _, samples in results)
    # 800 samples are asked for, four times the limit: separate windows per worker
    # would admit up to twice the limit.
    assert admitted <= SAMPLE_LIMIT
    assert admitted == SAMPLE_LIMIT, "the clients asked for more than enough to fill the window"
    assert statuses.count(429) == len(results) - SAMPLE_LIMIT // SAMPLES_PER_REQUEST
    assert set(statuses) == {200, 429}
    assert usage["samples"] == admitted
    assert _metric(metrics, "lowrank_samples_served_total") == admitted

    serving_pids = set(re.findall(r" (\d+) server\.middleware: key=key_\w+ POST", server.log()))
    assert len(serving_pids) == 2, "both workers should have answered completion requests"


def test_scaleout_redis_outage_gives_503_then_recovers(launch_server, redis_server) -> None:
    redis = redis_server()
    server = launch_server(MODEL, args=["--redis-url", redis.url])
    request = {"prompts": [[]], "n": 3}

    with httpx.Client(base_url=server.base_url, headers=_auth(CLIENT_KEY), timeout=10) as client:
        before = client.post("/v1/complete", json=request)
        redis.stop()
        during = [client.post("/v1/complete", json=request) for _ in range(3)]
        usage_during = client.get("/v1/usage").json()
        redis.start()
        after = client.post("/v1/complete", json=request)
        usage_after = client.get("/v1/usage").json()

    assert before.status_code == 200
    for response in during:
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limiter_unavailable"
        assert "choices" not in response.json()
        assert response.headers["Retry-After"] == "1"
        assert response.headers["X-RateLimit-Remaining"] == "0"
    assert usage_during["samples"] == 3
    assert after.status_code == 200
    assert len(after.json()["choices"][0]["completions"]) == 3
    assert usage_after["samples"] == 6

    log = server.log()
    assert len(re.findall(r"WARNING .* rate-limit storage unavailable", log)) == 1
    assert len(re.findall(r"INFO .* rate-limit storage available again", log)) == 1
    assert CLIENT_KEY not in log
