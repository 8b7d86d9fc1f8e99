"""The attack under faults: a server restart, 503 responses, and a deadline that is too short.

The target is ``random-hmm:states=3,alphabet=3,horizon=6,seed=0``; its learner makes 12
calls, each one HTTP request under the server's default request limits.  Servers that
serve 100,000 samples per 1-second window stretch an attack of 300,000 samples over about
three seconds, so a fault can land in the middle of it.  The 503 tests wrap the real server
app in :class:`FailEveryOther` and run it with uvicorn on a thread.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.responses import JSONResponse

from attacker.client import DeadlineExceededError, HttpOracle
from attacker.learner import LearnerSettings, learn
from attacker.querylog import LoggedOracle
from server.app import create_app
from server.settings import Settings
from shared.presets import load_model

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "test-client-key"
ADMIN_KEY = "test-admin-key"
BUDGET = 300_000
SEED = 7
SLOW_SERVER_ARGS = ["--window-seconds", "1", "--samples-per-window", "100000"]
REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 120.0
ALL_SEQUENCES = np.array(np.meshgrid(*[range(3)] * 6, indexing="ij")).reshape(6, -1).T


# -- helpers --------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env["LOWRANK_API_KEY"] = CLIENT_KEY
    env["LOWRANK_API_KEYS"] = CLIENT_KEY
    env["LOWRANK_ADMIN_KEY"] = ADMIN_KEY
    return env


def _steal_command(url: str, out: Path, log: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "attacker.cli", "steal", url, "--budget", str(BUDGET),
        "--seed", str(SEED), "--out", str(out), "--query-log", str(log), "--json", *extra,
    ]  # fmt: skip


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO_ROOT, env=_environment(), capture_output=True, text=True,
        timeout=TIMEOUT_SECONDS, check=False,
    )  # fmt: skip


def _usage(url: str) -> dict:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    return httpx.get(f"{url}/v1/usage", headers=headers, timeout=10).json()


def _records(log: Path) -> list[dict]:
    data = log.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].decode().splitlines()[1:]]


def _poll(condition: Any, description: str) -> None:
    """Poll ``condition()`` until it is true; fail after the timeout."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {description}"
        time.sleep(0.005)  # polling interval, not a timing assumption of the test


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcesses:
    """Starts ``python -m server.cli`` on a given port and ledger; kills them all at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, port: int, ledger: Path, args: list[str]) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "server.cli", "--model", MODEL, "--host", "127.0.0.1",
            "--port", str(port), "--ledger", str(ledger), *args,
        ]  # fmt: skip
        with (self.directory / f"server-{len(self.running)}.log").open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=_environment(), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.running.append(process)
        _poll(lambda: _healthy(port) or process.poll() is not None, "the server to start")
        assert process.poll() is None, f"server on port {port} exited during start-up"
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def server_processes(tmp_path: Path) -> Iterator[ServerProcesses]:
    processes = ServerProcesses(tmp_path)
    yield processes
    for process in processes.running:
        processes.kill(process)


class FailEveryOther:
    """ASGI app that returns 503 for every other ``POST /v1/complete`` before ``app`` receives it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.completes = 0
        self.failures = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/complete":
            self.completes += 1
            if self.completes % 2 == 1:
                self.failures += 1
                # Read the body first, so the connection stays usable for the retry.
                while (await receive()).get("more_body", False):
                    pass
                body = {"error": {"code": "unavailable", "message": "injected failure"}}
                await JSONResponse(body, status_code=503)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@pytest.fixture
def threaded_servers() -> Iterator[Any]:
    """Return ``start(app) -> url`` running ``app`` with uvicorn on a thread; stop all after."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        _poll(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert thread.is_alive(), "uvicorn exited during start-up"
        return f"http://127.0.0.1:{port}"

    yield start

    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


def _app() -> Any:
    settings = Settings(
        model=MODEL, api_keys=(CLIENT_KEY,), admin_key=ADMIN_KEY, ledger=":memory:",
        log_level="WARNING",
    )  # fmt: skip
    return create_app(settings, model=load_model(MODEL))


def _learn_over_http(url: str, **options: Any) -> tuple[Any, HttpOracle]:
    with HttpOracle(url, CLIENT_KEY, BUDGET, sampling_seed=SEED, **options) as oracle:
        clone = learn(oracle, LearnerSettings(), np.random.default_rng(SEED))
    return clone, oracle


# -- server restart -------------------------------------------------------------------


def test_client_faults_survives_server_restart(server_processes, tmp_path: Path) -> None:
    port, ledger = _free_port(), tmp_path / "ledger.sqlite3"
    url = f"http://127.0.0.1:{port}"
    server = server_processes.start(port, ledger, SLOW_SERVER_ARGS)
    out, log, stderr_path = tmp_path / "clone.json", tmp_path / "clone.jsonl", tmp_path / "attack.log"

    # Eight retries back off for at least 45 s in total (from 0.25 s, doubling, capped at
    # 15 s), which leaves room for a slow restart.  The default five allow at least 7.75 s.
    with stderr_path.open("wb") as stderr:
        attack = subprocess.Popen(
            _steal_command(url, out, log, "--max-retries", "8"), cwd=REPO_ROOT,
            env=_environment(), stdout=subprocess.PIPE, stderr=stderr, start_new_session=True,
        )  # fmt: skip
    try:
        _poll(lambda: log.exists() and log.read_bytes().count(b"\n") >= 3, "two logged calls")
        server_processes.kill(server)
        # The server is down until the attack has seen a refused connection and backs off.
        _poll(lambda: b"ConnectError" in stderr_path.read_bytes(), "a refused connection")
        server_processes.start(port, ledger, SLOW_SERVER_ARGS)
        stdout, _ = attack.communicate(timeout=TIMEOUT_SECONDS)
    finally:
        if attack.poll() is None:
            os.killpg(attack.pid, signal.SIGKILL)
            attack.wait(timeout=10)

    assert attack.returncode == 0, stderr_path.read_text()[-4000:]
    summary = json.loads(stdout)
    records = _records(log)
    charged = _usage(url)["samples"]
    assert summary["retries"] >= 1
    assert summary["samples"] <= BUDGET
    assert summary["samples"] == sum(record["samples"] for record in records)
    # A request in flight at the kill may be charged twice: before the kill and on retry.
    assert summary["samples"] <= charged <= summary["samples"] + max(r["samples"] for r in records)
    assert summary["query_log"]["replayed"]["calls"] == 0


# -- 5xx ------------------------------------------------------------------------------


def test_client_faults_retries_every_other_503(threaded_servers) -> None:
    flaky = FailEveryOther(_app())
    flaky_url, plain_url = threaded_servers(flaky), threaded_servers(_app())

    clone, oracle = _learn_over_http(flaky_url, backoff_base=0.01, max_retries=1)
    reference, _ = _learn_over_http(plain_url)

    assert flaky.failures >= 12
    assert oracle.retries == flaky.failures
    assert oracle.ledger.samples <= BUDGET
    np.testing.assert_allclose(
        clone.log_prob(ALL_SEQUENCES), reference.log_prob(ALL_SEQUENCES), rtol=0, atol=1e-12
    )


def test_client_faults_retry_past_deadline_raises(threaded_servers) -> None:
    url = threaded_servers(FailEveryOther(_app()))

    with (
        HttpOracle(
            url, CLIENT_KEY, BUDGET, backoff_base=30.0, deadline=time.monotonic() + 5.0
        ) as oracle,
        pytest.raises(DeadlineExceededError, match="would start after the deadline"),
    ):
        oracle.complete([[]], 10, 2)

    assert oracle.retries == 0


def test_client_faults_request_after_deadline_not_sent(threaded_servers, tmp_path: Path) -> None:
    url = threaded_servers(_app())
    clock = [100.0]
    with (
        HttpOracle(url, CLIENT_KEY, BUDGET, deadline=150.0, clock=lambda: clock[0]) as http,
        LoggedOracle(http, tmp_path / "log.jsonl") as oracle,
    ):
        oracle.complete([[]], 10, 2)
        clock[0] = 150.0
        with pytest.raises(DeadlineExceededError, match="not sent: the deadline has passed"):
            oracle.complete([[]], 10, 2)

    assert http.ledger.samples == 10
    assert len(_records(tmp_path / "log.jsonl")) == 1


# -- deadline -------------------------------------------------------------------------


def test_client_faults_short_deadline_then_resume(start_server, tmp_path: Path) -> None:
    url = start_server(MODEL, api_keys=(CLIENT_KEY,), args=SLOW_SERVER_ARGS)
    out, log = tmp_path / "clone.json", tmp_path / "clone.jsonl"

    stopped = _run(_steal_command(url, out, log, "--deadline", "1"))
    logged = _records(log)
    resumed = _run(_steal_command(url, out, log, "--resume"))

    assert stopped.returncode == 1
    assert "stopped at the --deadline of 1 s" in stopped.stderr
    assert f"the query log {log} keeps every completed call" in stopped.stderr
    assert "--resume" in stopped.stderr
    assert stopped.stdout == ""
    assert len(logged) >= 1
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    summary = json.loads(resumed.stdout)
    assert summary["query_log"]["replayed"]["calls"] == len(logged)
    assert summary["query_log"]["live"]["calls"] >= 1
    assert summary["samples"] <= BUDGET
    assert out.exists()
