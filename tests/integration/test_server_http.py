"""End-to-end tests of a real ``lowrank-server`` process over loopback HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from shared.automaton import HMM
from shared.modelfile import save_model_file

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "test-client-key"
ADMIN_KEY = "test-admin-key"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_server_http_complete_basic(start_server) -> None:
    base_url = start_server(MODEL)

    with httpx.Client(base_url=base_url, headers=_auth(CLIENT_KEY), timeout=10) as client:
        info = client.get("/v1/model").json()
        response = client.post("/v1/complete", json={"prompts": [[], [0]], "n": 8, "seed": 1})
        again = client.post("/v1/complete", json={"prompts": [[], [0]], "n": 8, "seed": 1})

    horizon = info["horizon"]
    assert info["alphabet_size"] == 3
    assert horizon == 6
    assert response.status_code == 200
    body = response.json()
    assert [len(choice["completions"]) for choice in body["choices"]] == [8, 8]
    assert {len(row) for row in body["choices"][0]["completions"]} == {horizon}
    assert {len(row) for row in body["choices"][1]["completions"]} == {horizon - 1}
    assert body["usage"]["samples"] == 16
    assert again.json()["choices"] == body["choices"]
    assert response.headers["X-RateLimit-Remaining"] == "599"


def test_server_http_rate_limit_429(start_server) -> None:
    base_url = start_server(MODEL, args=["--requests-per-window", "2", "--window-seconds", "300"])

    with httpx.Client(base_url=base_url, headers=_auth(CLIENT_KEY), timeout=10) as client:
        statuses = [
            client.post("/v1/complete", json={"prompts": [[]]}).status_code for _ in range(2)
        ]
        limited = client.post("/v1/complete", json={"prompts": [[]]})

    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 300
    assert limited.headers["X-RateLimit-Limit"] == "2"
    assert limited.headers["X-RateLimit-Remaining"] == "0"


def test_server_http_bad_inputs(start_server) -> None:
    base_url = start_server(MODEL)

    with httpx.Client(base_url=base_url, timeout=10) as client:
        no_key = client.post("/v1/complete", json={"prompts": [[]]})
        malformed = client.post(
            "/v1/complete",
            content=b"{not json",
            headers={**_auth(CLIENT_KEY), "Content-Type": "application/json"},
        )
        bad_token = client.post(
            "/v1/complete", json={"prompts": [[0, 9]]}, headers=_auth(CLIENT_KEY)
        )
        too_long = client.post(
            "/v1/complete", json={"prompts": [[0] * 6]}, headers=_auth(CLIENT_KEY)
        )
        judge = client.post(
            "/v1/judge/logprob", json={"sequences": [[0]]}, headers=_auth(CLIENT_KEY)
        )

    cases = [
        (no_key, 401, "missing_api_key"),
        (malformed, 400, "malformed_json"),
        (bad_token, 422, "invalid_token"),
        (too_long, 422, "prompt_too_long"),
        (judge, 403, "admin_required"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert "X-RateLimit-Reset" in response.headers
    assert "token 9" in bad_token.json()["error"]["message"]


def test_server_http_judge_with_admin_key(start_server) -> None:
    base_url = start_server(MODEL)

    with httpx.Client(base_url=base_url, headers=_auth(ADMIN_KEY), timeout=10) as client:
        sampled = client.post("/v1/complete", json={"prompts": [[]], "n": 3, "seed": 2}).json()
        sequences = sampled["choices"][0]["completions"]
        judged = client.post("/v1/judge/logprob", json={"sequences": sequences})

    assert judged.status_code == 200
    log_probs = judged.json()["log_probs"]
    assert len(log_probs) == 3
    assert all(value is not None and value <= 0.0 for value in log_probs)


def test_server_cli_unknown_model_exits_2() -> None:
    repo_root = Path(__file__).resolve().parents[2]
    python_path = os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "LOWRANK_API_KEYS": CLIENT_KEY}

    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "--model", "no-such-preset-xyz"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "cannot load model 'no-such-preset-xyz'" in result.stderr
    assert "random-hmm" in result.stderr


def test_server_http_serves_model_file(start_server, tmp_path: Path) -> None:
    path = tmp_path / "secret-model.json"
    model = HMM(["x", "y"], 4, [0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], [[0.7, 0.3], [0.1, 0.9]])
    save_model_file(model, path)
    base_url = start_server(str(path))

    with httpx.Client(base_url=base_url, headers=_auth(ADMIN_KEY), timeout=10) as client:
        info = client.get("/v1/model").json()
        judged = client.post("/v1/judge/logprob", json={"sequences": [[0, 1, 1, 0]]}).json()

    assert info["alphabet"] == ["x", "y"]
    assert info["horizon"] == 4
    assert info["model_id"] == "secret-model"
    expected = model.log_prob(np.array([[0, 1, 1, 0]]))[0]
    assert judged["log_probs"][0] == pytest.approx(expected, rel=1e-12)
