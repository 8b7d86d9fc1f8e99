"""The whole attack over HTTP: a real ``lowrank-server`` process, the HTTP oracle, the learner.

The target is ``random-hmm:states=3,alphabet=3,horizon=6,seed=0`` (729 sequences, so the
judge scores the clone exactly).  With a budget of 500,000 samples and the server limits
below, ten attacks over HTTP (sampling seeds 0 to 9) reached TV 0.0078 to 0.0119, so the
bound of 0.03 is 2.5 times the worst of them.  One attack stays under the server's default
window of 1,000,000 samples per 60 s, so no test waits for the rate limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from attacker.client import HttpJudge, HttpOracle
from attacker.clone import load_clone
from attacker.evaluate import evaluate
from attacker.learner import LearnerSettings, learn

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "test-client-key"
ADMIN_KEY = "test-admin-key"
BUDGET = 500_000
TV_BOUND = 0.03
# Small per-request limits, so the attack is split into many concurrent requests.
SERVER_ARGS = ["--max-prompts", "20", "--max-n", "20000", "--max-tokens-per-request", "200000"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _usage(base_url: str) -> dict:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    return httpx.get(f"{base_url}/v1/usage", headers=headers, timeout=10).json()


def test_attack_http_steals_close_clone(start_server, tmp_path: Path) -> None:
    base_url = start_server(MODEL, args=SERVER_ARGS)

    with HttpOracle(base_url, CLIENT_KEY, budget=BUDGET, sampling_seed=0) as oracle:
        clone = learn(oracle, LearnerSettings(), np.random.default_rng(0))
        ledger = oracle.ledger
    clone.save(tmp_path / "clone.json")
    with HttpJudge(base_url, ADMIN_KEY) as judge:
        report = evaluate(
            load_clone(tmp_path / "clone.json"), judge, 1000, np.random.default_rng(0)
        )

    usage = _usage(base_url)
    assert ledger.samples <= BUDGET
    assert ledger.samples > 0.9 * BUDGET
    assert usage["samples"] == ledger.samples
    assert usage["requests"] == ledger.requests
    assert ledger.requests > 10
    assert report.method == "exact"
    assert report.tv < TV_BOUND
    assert np.isfinite(report.kl)


def test_attack_http_command_line_round_trip(start_server, tmp_path: Path) -> None:
    base_url = start_server(MODEL)
    out = tmp_path / "clone.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )

    def attack(*args: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "attacker.cli", *args, "--json"],
            check=False,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    stolen = attack(
        "steal",
        base_url,
        "--api-key",
        CLIENT_KEY,
        "--budget",
        str(BUDGET),
        "--seed",
        "3",
        "--out",
        str(out),
    )
    scores = attack("evaluate", str(out), base_url, "--admin-key", ADMIN_KEY)

    assert stolen["samples"] <= BUDGET
    assert stolen["samples"] == _usage(base_url)["samples"]
    assert scores["method"] == "exact"
    assert scores["tv"] < TV_BOUND
    assert scores["queries"]["samples"] == stolen["samples"]
