"""Fixtures for the attacker tests: a real uvicorn server, in this process, on a free port.

``serve(model=None, **settings)`` builds the server app around a given model (any
:class:`~shared.model.SequenceModel`, default the HMM below), runs it with uvicorn on a
thread bound to a free ``127.0.0.1`` port, and returns a :class:`LiveServer`.  The rate-limit windows read the
server's :class:`FakeClock`, so a test can pass the clock's ``advance`` to the client as its
sleep and see retries succeed without waiting.  Every server is stopped after the test.

The hand-sized HMM starts in hidden state 0, which never emits token 2, so the prompt
``[2]`` has probability zero.  Its first-token law is ``(0.8, 0.2, 0)``, and after the
prompt ``[1]`` the next-token law is ``(0.4, 0.25, 0.35)``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import uvicorn

from server.app import create_app
from server.settings import Settings
from shared.automaton import HMM
from shared.model import SequenceModel

API_KEY = "attacker-test-key"
ADMIN_KEY = "attacker-test-admin"
HORIZON = 6
STARTUP_TIMEOUT_SECONDS = 10.0


class FakeClock:
    """Seconds that move only when a test advances them; shared by server and client."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record a client's backoff and move the server's time forward by it."""
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class LiveServer:
    """A running server: its URL, keys, clock and hosted model."""

    url: str
    clock: FakeClock
    model: SequenceModel
    settings: Settings
    api_key: str = API_KEY
    admin_key: str = ADMIN_KEY


def make_hmm(horizon: int = HORIZON) -> HMM:
    """Return the hand-sized HMM of the module docstring."""
    pi = np.array([1.0, 0.0])
    T = np.array([[0.5, 0.5], [0.0, 1.0]])
    O = np.array([[0.8, 0.2, 0.0], [0.0, 0.3, 0.7]])
    return HMM(["a", "b", "c"], horizon, pi, T, O)


def _run_in_thread(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    # With proto=IPPROTO_TCP asyncio sets TCP_NODELAY on accepted connections; with the
    # default proto 0 it does not, and every response waits about 40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.01)  # start-up polling interval, not a timing assumption of a test
    return server, thread, port


@pytest.fixture
def hmm() -> HMM:
    """The hand-sized HMM of the module docstring."""
    return make_hmm()


class ServerPool:
    """Starts servers on demand and stops them all at teardown."""

    def __init__(self) -> None:
        self._running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def __call__(self, model: SequenceModel | None = None, **overrides: Any) -> LiveServer:
        model = model if model is not None else make_hmm()
        values: dict[str, Any] = {
            "model": "test-hmm",
            "api_keys": (API_KEY,),
            "admin_key": ADMIN_KEY,
            "log_level": "WARNING",
        }
        values.update(overrides)
        settings = Settings(**values)
        clock = FakeClock()
        app = create_app(settings, model=model, clock=clock)
        server, thread, port = _run_in_thread(app)
        self._running.append((server, thread))
        return LiveServer(f"http://127.0.0.1:{port}", clock, model, settings)

    def stop_all(self) -> None:
        for server, thread in self._running:
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture
def serve() -> Iterator[ServerPool]:
    """Return a factory ``serve(model=None, **settings) -> LiveServer``; stops them all after."""
    pool = ServerPool()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def serve_module() -> Iterator[ServerPool]:
    """As ``serve``, but the servers live until the test module ends."""
    pool = ServerPool()
    yield pool
    pool.stop_all()
