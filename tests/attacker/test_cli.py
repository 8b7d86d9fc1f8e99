"""Tests of the ``lowrank-attack`` command line, run as a subprocess against a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from attacker.clone import load_clone

from .conftest import API_KEY

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_SECONDS = 300


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env.pop("LOWRANK_API_KEY", None)
    env.pop("LOWRANK_ADMIN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "attacker.cli", *args],
        check=False,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if "lowrank-attack: error:" in line]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def stolen(tmp_path_factory, request) -> dict:
    """Run one ``steal --json`` against a fresh server; share the result in this module."""
    serve = request.getfixturevalue("serve_module")
    server = serve()
    out = tmp_path_factory.mktemp("steal") / "clone.json"
    result = _run("steal", server.url, "--api-key", server.api_key, "--budget", "20000",
                  "--seed", "1", "--out", str(out), "--json")
    return {"server": server, "out": out, "result": result}


# -- steal: bad input -----------------------------------------------------------------


@pytest.mark.parametrize("budget", ["0", "-3"], ids=["zero", "negative"])
def test_steal_rejects_bad_budget(tmp_path: Path, budget: str) -> None:
    out = tmp_path / "clone.json"

    result = _run("steal", "http://127.0.0.1:9", "--api-key", "k", "--budget", budget,
                  "--out", str(out))

    assert result.returncode == 2
    assert f"--budget must be a positive number of samples, got {budget}" in _error_line(result)
    assert result.stdout == ""
    assert not out.exists()


def test_steal_unreachable_url_fails(tmp_path: Path) -> None:
    out = tmp_path / "clone.json"
    url = f"http://127.0.0.1:{_closed_port()}"

    result = _run("steal", url, "--api-key", "k", "--budget", "100", "--max-retries", "0",
                  "--out", str(out))

    assert result.returncode == 1
    line = _error_line(result)
    assert f"GET {url}/v1/model failed after 1 attempts" in line
    assert "check the URL and that the server is running" in line
    assert not out.exists()


def test_steal_url_without_scheme_is_usage_error(tmp_path: Path) -> None:
    result = _run("steal", "localhost:8000", "--api-key", "k", "--budget", "100",
                  "--out", str(tmp_path / "clone.json"))

    assert result.returncode == 2
    assert "is not an http(s) URL" in _error_line(result)


def test_steal_missing_output_directory_is_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "clone.json"

    result = _run("steal", "http://127.0.0.1:9", "--api-key", "k", "--budget", "100",
                  "--out", str(out))

    assert result.returncode == 2
    assert f"output directory {out.parent} does not exist" in _error_line(result)


def test_steal_unknown_key_fails(serve, tmp_path: Path) -> None:
    server = serve()
    out = tmp_path / "clone.json"

    result = _run("steal", server.url, "--api-key", "wrong-key", "--budget", "100",
                  "--out", str(out))

    assert result.returncode == 1
    assert "server returned 401 invalid_api_key" in _error_line(result)
    assert not out.exists()


# -- steal: success -------------------------------------------------------------------


def test_steal_json_reports_queries(stolen) -> None:
    result, server = stolen["result"], stolen["server"]
    assert result.returncode == 0, result.stderr

    summary = json.loads(result.stdout)
    usage = httpx.get(f"{server.url}/v1/usage",
                      headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10).json()
    for key in ("samples", "requests", "tokens", "ranks", "sketches", "by_phase", "out"):
        assert key in summary
    assert 0 < summary["samples"] <= 20_000
    assert summary["samples"] == usage["samples"]
    assert summary["requests"] == usage["requests"]
    assert len(summary["ranks"]) == 6
    assert len(summary["sketches"]) == 6
    assert sum(row["samples"] for row in summary["by_phase"].values()) == summary["samples"]
    assert summary["out"] == str(stolen["out"])


def test_steal_writes_loadable_clone(stolen) -> None:
    clone = load_clone(stolen["out"])

    assert clone.horizon == 6
    assert clone.alphabet == ("a", "b", "c")
    assert clone.ranks == json.loads(stolen["result"].stdout)["ranks"]


def test_steal_logs_progress_on_stderr(stolen) -> None:
    stderr = stolen["result"].stderr

    assert "INFO attacker.cli: stealing test-hmm" in stderr
    assert "Traceback" not in stderr


def test_steal_prints_table(serve, tmp_path: Path) -> None:
    server = serve()

    result = _run("steal", server.url, "--api-key", server.api_key, "--budget", "5000",
                  "--out", str(tmp_path / "clone.json"))

    assert result.returncode == 0, result.stderr
    assert "ranks per step" in result.stdout
    assert "Spend per phase" in result.stdout


# -- evaluate -------------------------------------------------------------------------


def test_evaluate_json_scores_clone(stolen) -> None:
    server = stolen["server"]

    result = _run("evaluate", str(stolen["out"]), server.url, "--admin-key", server.admin_key,
                  "--json")

    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["method"] == "exact"
    # Sequences of positive probability: none starts with 2, and no 0 follows a 2.
    assert scores["sequences"] == 224
    assert 0.0 <= scores["tv"] < 0.2
    assert scores["tv_stderr"] == 0.0
    assert scores["tv_upper95"] == scores["tv"]
    assert scores["kl"] >= 0.0
    assert scores["kl_stderr"] == 0.0
    assert scores["queries"]["samples"] == json.loads(stolen["result"].stdout)["samples"]


def test_evaluate_missing_clone_is_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"

    result = _run("evaluate", str(path), "http://127.0.0.1:9", "--admin-key", "k")

    assert result.returncode == 2
    assert f"cannot load {path}" in _error_line(result)
    assert "file not found" in _error_line(result)


def test_evaluate_corrupt_clone_is_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    path.write_text('{"kind": "clone", "version": 1, "steps": [', encoding="utf-8")

    result = _run("evaluate", str(path), "http://127.0.0.1:9", "--admin-key", "k")

    assert result.returncode == 2
    assert f"cannot load {path}" in _error_line(result)


def test_evaluate_client_key_is_rejected(stolen) -> None:
    server = stolen["server"]

    result = _run("evaluate", str(stolen["out"]), server.url, "--admin-key", server.api_key)

    assert result.returncode == 1
    assert "403 admin_required" in _error_line(result)


# -- demo -----------------------------------------------------------------------------


def test_demo_json_reports_both_steps() -> None:
    result = _run("demo", "--model", "casino:horizon=6", "--budget", "100000", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == "casino:horizon=6"
    assert 0 < summary["steal"]["samples"] <= 100_000
    assert summary["evaluate"]["method"] == "exact"
    # Five in-process runs at this budget reached TV 0.028 to 0.123.
    assert summary["evaluate"]["tv"] < 0.25
    assert "server stopped" in result.stderr


def test_demo_unknown_model_fails() -> None:
    result = _run("demo", "--model", "no-such-model", "--budget", "100")

    assert result.returncode == 1
    line = _error_line(result)
    assert "the server exited with status 2 during start-up" in line
    assert "unknown model 'no-such-model'" in line


def test_steal_out_directory_is_usage_error(tmp_path: Path) -> None:
    result = _run("steal", "http://127.0.0.1:9", "--api-key", "k", "--budget", "100",
                  "--out", str(tmp_path))

    assert result.returncode == 2
    assert f"--out {tmp_path} is a directory" in _error_line(result)


def test_steal_budget_above_quota_buys_nothing(serve, tmp_path: Path) -> None:
    server = serve(quota_samples=5_000)
    out = tmp_path / "clone.json"

    result = _run("steal", server.url, "--api-key", API_KEY, "--budget", "20000",
                  "--out", str(out))
    usage = httpx.get(f"{server.url}/v1/usage", headers={"Authorization": f"Bearer {API_KEY}"})

    assert result.returncode == 2
    assert "exceeds the 5000 samples left on this key's quota" in _error_line(result)
    assert usage.json()["samples"] == 0
    assert not out.exists()
    assert not (tmp_path / "clone.queries.jsonl").exists()
