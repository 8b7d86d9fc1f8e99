"""Fixtures that run real ``lowrank-server`` processes on free loopback ports.

``start_server(model, api_keys=..., admin_key=..., args=...)`` launches
``python -m server.cli`` on ``127.0.0.1``, waits until ``GET /healthz`` returns 200, and
returns the base URL.  Keys reach the process through ``LOWRANK_API_KEYS`` and
``LOWRANK_ADMIN_KEY``.  Every process started is terminated when the test ends; its
output goes to a log file under the test's ``tmp_path``, quoted if start-up fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
PORT_ATTEMPTS = 3

StartServer = Callable[..., str]


def _free_port() -> int:
    """Return a TCP port that was free on the loopback address a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _wait_ready(process: subprocess.Popen[bytes], base_url: str) -> bool:
    """Poll ``/healthz`` until it returns 200 (True) or the process exits (False)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # start-up polling interval, not a timing assumption of a test
    raise TimeoutError(f"server at {base_url} not ready after {STARTUP_TIMEOUT_SECONDS} s")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Return a factory that starts a server process and returns its base URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        model: str,
        api_keys: Sequence[str] = ("test-client-key",),
        admin_key: str | None = "test-admin-key",
        args: Sequence[str] = (),
    ) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
        )
        env["LOWRANK_API_KEYS"] = ",".join(api_keys)
        env.pop("LOWRANK_ADMIN_KEY", None)
        if admin_key is not None:
            env["LOWRANK_ADMIN_KEY"] = admin_key

        for attempt in range(PORT_ATTEMPTS):
            port = _free_port()
            log_path = tmp_path / f"server-{len(processes)}.log"
            command = [
                sys.executable,
                "-m",
                "server.cli",
                "--model",
                model,
                "--host",
                HOST,
                "--port",
                str(port),
                *args,
            ]
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            processes.append(process)
            base_url = f"http://{HOST}:{port}"
            try:
                ready = _wait_ready(process, base_url)
            except TimeoutError as error:
                _stop(process)
                pytest.fail(f"{error}; server log:\n{log_path.read_text()[-4000:]}")
            if ready:
                return base_url
            output = log_path.read_text()
            # Another process may have taken the port between the probe and the bind.
            if "address already in use" not in output.lower() or attempt + 1 == PORT_ATTEMPTS:
                pytest.fail(
                    f"server exited with status {process.returncode} during start-up; "
                    f"log:\n{output[-4000:]}"
                )
        raise AssertionError("unreachable: every attempt returns or fails")

    yield start

    for process in processes:
        _stop(process)
