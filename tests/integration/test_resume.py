"""Resuming an attack from its query log: ``lowrank-attack steal --resume`` against real servers.

The target is ``random-hmm:states=3,alphabet=3,horizon=6,seed=0`` with a budget of 300,000
samples.  Its learner makes 15 calls, none above 40,000 samples, so with the server's
default request limits each call is one HTTP request.  The interrupted attack runs against
a server that serves 100,000 samples per 1-second window, which spreads it over about three
seconds, and it is killed with SIGKILL once its log contains five calls (86,470 samples, so
the sixth call waits for the next window).  The rate limit only delays requests, so the
uninterrupted reference runs against a server without it.  Every server is fresh, with its
own ledger, so ``GET /v1/usage`` reports what one attack cost it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from attacker.clone import load_clone

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "test-client-key"
BUDGET = 300_000
SEED = 5
SLOW_SERVER_ARGS = ["--window-seconds", "1", "--samples-per-window", "100000"]
KILL_AFTER_CALLS = 5
REPO_ROOT = Path(__file__).resolve().parents[2]
ATTACK_TIMEOUT_SECONDS = 120.0
# Every sequence of the target: 3 tokens, horizon 6.
ALL_SEQUENCES = np.array(np.meshgrid(*[range(3)] * 6, indexing="ij")).reshape(6, -1).T


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env["LOWRANK_API_KEY"] = CLIENT_KEY
    return env


def _steal_command(url: str, out: Path, log: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "attacker.cli", "steal", url, "--budget", str(BUDGET),
        "--seed", str(SEED), "--out", str(out), "--query-log", str(log), "--json", *extra,
    ]  # fmt: skip


def _steal(url: str, out: Path, log: Path, *extra: str) -> dict:
    result = subprocess.run(
        _steal_command(url, out, log, *extra), cwd=REPO_ROOT, env=_environment(),
        capture_output=True, text=True, timeout=ATTACK_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def _usage(url: str) -> dict:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    return httpx.get(f"{url}/v1/usage", headers=headers, timeout=10).json()


def _records(log: Path) -> list[dict]:
    """Return the complete call records of ``log``, without its header or a torn last line."""
    data = log.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode().splitlines()
    return [json.loads(line) for line in complete[1:]]


def _complete_lines(log: Path) -> int:
    return log.read_bytes().count(b"\n") if log.exists() else 0


def _kill_after_calls(process: subprocess.Popen[bytes], log: Path, calls: int) -> None:
    """Poll ``log`` until it contains ``calls`` records, then SIGKILL the attack's process group."""
    deadline = time.monotonic() + ATTACK_TIMEOUT_SECONDS
    while _complete_lines(log) < calls + 1:
        assert process.poll() is None, "the attack ended before it could be stopped"
        assert time.monotonic() < deadline, f"{log} contains too few calls after the timeout"
        time.sleep(0.005)  # polling interval, not a timing assumption of the test
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in ("time", "seconds")} for record in records]


def test_resume_after_sigkill_spends_as_uninterrupted(start_server, tmp_path: Path) -> None:
    reference_url = start_server(MODEL)
    reference = _steal(reference_url, tmp_path / "reference.json", tmp_path / "reference.jsonl")
    reference_records = _records(tmp_path / "reference.jsonl")
    url = start_server(MODEL, args=SLOW_SERVER_ARGS)
    out, log = tmp_path / "clone.json", tmp_path / "clone.jsonl"

    with (tmp_path / "killed.log").open("wb") as stderr:
        process = subprocess.Popen(
            _steal_command(url, out, log), cwd=REPO_ROOT, env=_environment(),
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )  # fmt: skip
        try:
            _kill_after_calls(process, log, KILL_AFTER_CALLS)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
    logged = len(_records(log))
    spent_before_kill = _usage(url)["samples"]
    clone_written_before_end = out.exists()
    resumed = _steal(url, out, log, "--resume")

    # The call in flight at the kill may have been charged and is bought again on resume.
    in_flight = reference_records[logged]["samples"]
    extra = _usage(url)["samples"] - _usage(reference_url)["samples"]
    assert not clone_written_before_end
    assert logged >= KILL_AFTER_CALLS
    assert logged < len(reference_records)
    assert spent_before_kill >= sum(r["samples"] for r in reference_records[:logged])
    assert resumed["query_log"]["replayed"]["calls"] == logged
    assert resumed["query_log"]["live"]["calls"] == len(reference_records) - logged
    assert resumed["samples"] == reference["samples"]
    assert resumed["tokens"] == reference["tokens"]
    assert resumed["requests"] == reference["requests"]
    assert resumed["by_phase"] == reference["by_phase"]
    assert 0 <= extra <= in_flight
    assert _usage(reference_url)["samples"] == reference["samples"]
    assert _without_times(_records(log)) == _without_times(reference_records)

    clone, reference_clone = load_clone(out), load_clone(tmp_path / "reference.json")
    assert clone.ledger["samples"] == reference["samples"]
    np.testing.assert_allclose(
        clone.log_prob(ALL_SEQUENCES), reference_clone.log_prob(ALL_SEQUENCES), rtol=0, atol=1e-12
    )


def test_resume_same_seed_runs_are_identical(start_server, tmp_path: Path) -> None:
    runs = []
    for name in ("first", "second"):
        url = start_server(MODEL)
        summary = _steal(url, tmp_path / f"{name}.json", tmp_path / f"{name}.jsonl")
        runs.append((summary, _usage(url), load_clone(tmp_path / f"{name}.json"),
                     _records(tmp_path / f"{name}.jsonl")))
    (first, first_usage, first_clone, first_log), (second, second_usage, second_clone, second_log) = runs

    assert first["samples"] == second["samples"]
    assert first["by_phase"] == second["by_phase"]
    assert first_usage["samples"] == second_usage["samples"] == first["samples"]
    assert _without_times(first_log) == _without_times(second_log)
    np.testing.assert_allclose(
        first_clone.log_prob(ALL_SEQUENCES), second_clone.log_prob(ALL_SEQUENCES), rtol=0, atol=1e-12
    )


def test_resume_without_flag_rejects_default_log(start_server, tmp_path: Path) -> None:
    url = start_server(MODEL)
    out = tmp_path / "clone.json"
    command = _steal_command(url, out, tmp_path / "unused.jsonl")
    del command[command.index("--query-log") : command.index("--query-log") + 2]
    first = subprocess.run(
        command, cwd=REPO_ROOT, env=_environment(), capture_output=True, text=True,
        timeout=ATTACK_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    log = tmp_path / "clone.queries.jsonl"
    size = log.stat().st_size

    second = subprocess.run(
        command, cwd=REPO_ROOT, env=_environment(), capture_output=True, text=True,
        timeout=ATTACK_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip

    assert first.returncode == 0, first.stderr[-4000:]
    assert json.loads(first.stdout)["query_log"]["path"] == str(log)
    assert second.returncode == 2
    assert f"query log {log} already exists and is not empty" in second.stderr
    assert "--resume" in second.stderr
    assert log.stat().st_size == size


def test_resume_with_other_seed_is_rejected(start_server, tmp_path: Path) -> None:
    url = start_server(MODEL)
    out, log = tmp_path / "clone.json", tmp_path / "clone.jsonl"
    _steal(url, out, log)
    spent = _usage(url)["samples"]
    command = _steal_command(url, out, log, "--resume")
    command[command.index("--seed") + 1] = str(SEED + 1)

    result = subprocess.run(
        command, cwd=REPO_ROOT, env=_environment(), capture_output=True, text=True,
        timeout=ATTACK_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert f"seed: logged {SEED}, now {SEED + 1}" in result.stderr
    assert "was written by another attack" in result.stderr
    assert _usage(url)["samples"] == spent
