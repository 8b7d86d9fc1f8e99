"""Durability of the usage ledger: a server killed with SIGKILL mid-traffic loses no charge.

Several clients keep requests in flight while the test kills the server with SIGKILL.
Afterwards the ledger file must account for every sample the clients received, so nothing
served goes uncharged.  It may charge at most one unanswered request per client, the one
in flight.  Every charge must have its audit row, and a server restarted on the same file
must report the same usage and quota.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "test-client-key"
CLIENTS = 8
SAMPLES_PER_REQUEST = 2000
MAX_REQUESTS_PER_CLIENT = 400
RESPONSES_BEFORE_KILL = 40
QUOTA = 10_000_000
REPO_ROOT = Path(__file__).resolve().parents[2]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Traffic:
    """Counts the samples that clients received and signals when enough responses came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses = 0
        self.samples = 0
        self.enough = threading.Event()

    def received(self, samples: int) -> None:
        with self._lock:
            self.responses += 1
            self.samples += samples
            if self.responses >= RESPONSES_BEFORE_KILL:
                self.enough.set()


def _client_loop(base_url: str, traffic: Traffic) -> None:
    """Send requests until the server stops responding or a bounded count is reached."""
    request = {"prompts": [[]], "n": SAMPLES_PER_REQUEST}
    with httpx.Client(base_url=base_url, headers=_auth(CLIENT_KEY), timeout=30) as client:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            try:
                response = client.post("/v1/complete", json=request)
                body = response.json()
            except (httpx.TransportError, json.JSONDecodeError):
                return
            if response.status_code != 200:
                raise AssertionError(f"unexpected response {response.status_code}: {body}")
            traffic.received(len(body["choices"][0]["completions"]))
    traffic.enough.set()


def _ledger_totals(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        requests, samples = db.execute("SELECT requests, samples FROM usage").fetchone()
        audit_rows, audit_samples = db.execute(
            "SELECT COUNT(*), SUM(samples) FROM audit"
        ).fetchone()
    finally:
        db.close()
    return {
        "requests": requests,
        "samples": samples,
        "audit_rows": audit_rows,
        "audit_samples": audit_samples,
    }


def test_durability_sigkill_loses_no_charge(launch_server, tmp_path: Path) -> None:
    ledger = tmp_path / "durable-ledger.sqlite3"
    args = ["--ledger", str(ledger), "--quota-samples", str(QUOTA)]
    server = launch_server(MODEL, args=args)
    traffic = Traffic()

    with ThreadPoolExecutor(CLIENTS) as pool:
        loops = [pool.submit(_client_loop, server.base_url, traffic) for _ in range(CLIENTS)]
        traffic.enough.wait(timeout=60)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        for loop in loops:
            loop.result()
    totals = _ledger_totals(ledger)

    assert server.process.returncode == -signal.SIGKILL
    assert traffic.responses >= RESPONSES_BEFORE_KILL
    # Nothing served goes uncharged ...
    assert totals["samples"] >= traffic.samples
    # ... and nothing is charged beyond the one request each client had in flight.
    assert totals["samples"] <= traffic.samples + CLIENTS * SAMPLES_PER_REQUEST
    assert totals["requests"] * SAMPLES_PER_REQUEST == totals["samples"]
    assert totals["audit_rows"] == totals["requests"]
    assert totals["audit_samples"] == totals["samples"]

    restarted = launch_server(MODEL, args=args)
    with httpx.Client(base_url=restarted.base_url, headers=_auth(CLIENT_KEY), timeout=10) as client:
        usage = client.get("/v1/usage").json()
        after = client.post("/v1/complete", json={"prompts": [[]], "n": 1})

    assert usage["requests"] == totals["requests"]
    assert usage["samples"] == totals["samples"]
    assert usage["quota_remaining"] == QUOTA - totals["samples"]
    assert after.json()["usage"]["quota_remaining"] == QUOTA - totals["samples"] - 1


def test_durability_audit_command_reads_ledger(launch_server, tmp_path: Path) -> None:
    ledger = tmp_path / "audited-ledger.sqlite3"
    server = launch_server(MODEL, args=["--ledger", str(ledger)])
    requests = [
        {"prompts": [[0], [1, 2]], "n": 3, "seed": 5},
        {"prompts": [[]], "n": 1, "max_tokens": 2, "aggregate": True},
    ]
    with httpx.Client(base_url=server.base_url, headers=_auth(CLIENT_KEY), timeout=10) as client:
        for request in requests:
            assert client.post("/v1/complete", json=request).status_code == 200
        key_id = client.get("/v1/usage").json()["key_id"]

    # The server is still running: the audit command reads next to it.
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "audit", "--ledger", str(ledger), "--limit", "5"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [entry["key_id"] for entry in entries] == [key_id, key_id]
    assert [entry["prompts"] for entry in entries] == [[[0], [1, 2]], [[]]]
    assert [entry["samples"] for entry in entries] == [6, 1]
    assert [entry["seed"] for entry in entries] == [5, None]
    assert [entry["max_tokens"] for entry in entries] == [None, 2]
    assert [entry["aggregate"] for entry in entries] == [False, True]
