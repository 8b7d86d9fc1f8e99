"""Fixtures that run real ``lowrank-server`` and ``redis-server`` processes on loopback.

``start_server(model, api_keys=..., admin_key=..., args=...)`` launches
``python -m server.cli`` on ``127.0.0.1``, waits until ``GET /healthz`` returns 200, and
returns the base URL.  ``launch_server`` takes the same arguments and returns a
:class:`ServerProcess` with the process too, for tests that kill it.  Keys reach the
process through ``LOWRANK_API_KEYS`` and ``LOWRANK_ADMIN_KEY``.  Unless ``args`` name a
``--ledger``, each server gets a fresh ledger file under the test's ``tmp_path``.  Every
process started runs in its own process group, which is terminated when the test ends.
Its output goes to a log file under ``tmp_path``, quoted if start-up fails.

``redis_server()`` starts a ``redis-server`` without persistence on a free loopback port
and returns a :class:`RedisProcess` that can be stopped and started again on that port.
Tests that use it are skipped when the ``redis-server`` binary is not installed
(Debian package ``redis-server``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
PORT_ATTEMPTS = 3

StartServer = Callable[..., str]


def free_port() -> int:
    """Return a TCP port that was free on the loopback address a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process group of ``process`` (its workers too), then kill it if needed."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
    # Workers of a killed server would outlive it; end whatever is left of its group.
    _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


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


@dataclass
class ServerProcess:
    """A running server: its base URL, process and log file."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Return the server's output so far."""
        return self.log_path.read_text(errors="replace")


LaunchServer = Callable[..., ServerProcess]


@pytest.fixture
def launch_server(tmp_path: Path) -> Iterator[LaunchServer]:
    """Return a factory that starts a server process and returns a :class:`ServerProcess`."""
    processes: list[subprocess.Popen[bytes]] = []

    def launch(
        model: str,
        api_keys: Sequence[str] = ("test-client-key",),
        admin_key: str | None = "test-admin-key",
        args: Sequence[str] = (),
    ) -> ServerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
        )
        env["LOWRANK_API_KEYS"] = ",".join(api_keys)
        env.pop("LOWRANK_ADMIN_KEY", None)
        if admin_key is not None:
            env["LOWRANK_ADMIN_KEY"] = admin_key
        args = list(args)
        if "--ledger" not in args:
            args += ["--ledger", str(tmp_path / f"ledger-{len(processes)}.sqlite3")]

        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
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
                    command,
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            processes.append(process)
            base_url = f"http://{HOST}:{port}"
            try:
                ready = _wait_ready(process, base_url)
            except TimeoutError as error:
                _stop(process)
                pytest.fail(f"{error}; server log:\n{log_path.read_text()[-4000:]}")
            if ready:
                return ServerProcess(base_url, process, log_path)
            output = log_path.read_text()
            # Another process may have taken the port between the probe and the bind.
            if "address already in use" not in output.lower() or attempt + 1 == PORT_ATTEMPTS:
                pytest.fail(
                    f"server exited with status {process.returncode} during start-up; "
                    f"log:\n{output[-4000:]}"
                )
        raise AssertionError("unreachable: every attempt returns or fails")

    yield launch

    for process in processes:
        _stop(process)


@pytest.fixture
def start_server(launch_server: LaunchServer) -> StartServer:
    """Return a factory that starts a server process and returns its base URL."""

    def start(
        model: str,
        api_keys: Sequence[str] = ("test-client-key",),
        admin_key: str | None = "test-admin-key",
        args: Sequence[str] = (),
    ) -> str:
        return launch_server(model, api_keys, admin_key, args).base_url

    return start


@dataclass
class RedisProcess:
    """A ``redis-server`` without persistence on a fixed loopback port."""

    binary: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start the server on :attr:`port` and wait until it replies to PING."""
        log_path = self.directory / f"redis-{self.starts}.log"
        self.starts += 1
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; log:\n{log_path.read_text()}")
            time.sleep(0.02)  # start-up polling interval, not a timing assumption of a test

    def stop(self) -> None:
        """Stop the server and wait until it has exited."""
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[[], RedisProcess]]:
    """Return a factory that starts a ``redis-server``; skip the test if none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    started: list[RedisProcess] = []

    def start() -> RedisProcess:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        redis = RedisProcess(binary, free_port(), directory)
        started.append(redis)
        redis.start()
        return redis

    yield start

    for redis in started:
        redis.stop()
