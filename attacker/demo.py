"""The one-command demo: start a local server, steal its model, score the clone, stop it.

The server runs as a ``python -m server.cli`` subprocess on a free ``127.0.0.1`` port, with
fresh random keys passed through the environment (so they stay out of the process list)
and its log in a temporary file.  It is stopped in a ``finally`` block, so also after an
error or Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["LocalServer", "ServerStartError", "local_server", "run_demo"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.1
PORT_ATTEMPTS = 3
DEMO_SEQUENCES = 5000


class ServerStartError(RuntimeError):
    """A local server that exited during start-up or did not respond to ``/healthz`` in time."""


@dataclass(frozen=True)
class LocalServer:
    """A running local server and the keys it accepts."""

    url: str
    api_key: str
    admin_key: str


def _free_port() -> int:
    """Return a TCP port that was free on the loopback address a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _last_log_line(path: Path) -> str:
    """Return the last non-empty line of the server's log, which states why it stopped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no server log)"
    return lines[-1].strip() if lines else "(empty server log)"


def _wait_healthy(
    process: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    """Poll ``GET /healthz`` until it returns 200; raise if the process exits or time runs out."""
    deadline = clock() + STARTUP_TIMEOUT_SECONDS
    while clock() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"the server exited with status {process.returncode} during start-up: "
                f"{_last_log_line(log_path)}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        sleep(POLL_INTERVAL_SECONDS)
    raise ServerStartError(
        f"the server at {url} did not respond to /healthz within {STARTUP_TIMEOUT_SECONDS:g} s; "
        f"its last log line: {_last_log_line(log_path)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("server pid %d ignored SIGTERM for %g s; killing it",
                       process.pid, STOP_TIMEOUT_SECONDS)
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextmanager
def local_server(
    model: str,
    server_args: Sequence[str] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[LocalServer]:
    """Run ``lowrank-server`` hosting ``model`` on a free loopback port for the ``with`` block.

    Parameters
    ----------
    model : str
        Preset name, preset with parameters, or model file path.
    server_args : sequence of str
        Extra ``lowrank-server`` options, such as limits.
    clock, sleep : callables
        Time source and wait used while polling ``/healthz``.

    Yields
    ------
    LocalServer
        Its URL and the random client and admin keys.

    Raises
    ------
    ServerStartError
        If the server exits during start-up (for example for an unknown model) or does
        not become healthy in time.  The message quotes the last line of its log.
    """
    api_key, admin_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = dict(os.environ)
    # The source checkout, so that ``server`` imports without an installed package.
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env["LOWRANK_API_KEYS"] = api_key
    env["LOWRANK_ADMIN_KEY"] = admin_key

    with tempfile.TemporaryDirectory(prefix="lowrank-demo-") as directory:
        log_path = Path(directory) / "server.log"
        process, url = _start_process(model, server_args, env, log_path, clock, sleep)
        try:
            yield LocalServer(url, api_key, admin_key)
        finally:
            _stop(process)
            logger.info("server stopped")


def _start_process(
    model: str,
    server_args: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server and wait until it is healthy, on a new port if the first is taken."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _free_port()
        url = f"http://{HOST}:{port}"
        # The demo's usage ledger lives and dies with its scratch folder.
        command = [
            sys.executable, "-m", "server.cli", "--model", model, "--host", HOST,
            "--port", str(port), "--log-level", "WARNING",
            "--ledger", str(log_path.parent / "ledger.sqlite3"), *server_args,
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        logger.info("starting lowrank-server (pid %d) hosting %s at %s", process.pid, model, url)
        try:
            _wait_healthy(process, url, log_path, clock, sleep)
        except ServerStartError:
            _stop(process)
            # Another process may have taken the port between the probe and the bind.
            in_use = "address already in use" in _last_log_line(log_path).lower()
            if not in_use or attempt == PORT_ATTEMPTS:
                raise
            continue
        except BaseException:
            _stop(process)
            raise
        logger.info("server is up")
        return process, url
    raise ServerStartError(f"no free port found in {PORT_ATTEMPTS} attempts")


def run_demo(
    model: str = "english-words", budget: int = 2_000_000, seed: int = 0, out: Path | None = None
) -> dict[str, Any]:
    """Start a local server for ``model``, steal it with ``budget`` samples, score the clone.

    Parameters
    ----------
    model : str
        What the server hosts.
    budget : int
        Samples the attack may buy; the server's quota is set to the same number.
    seed : int
        Seeds the attack and the scoring.
    out : Path, optional
        Where to keep the clone; default a temporary file, deleted afterwards.

    Returns
    -------
    dict
        ``{"model", "steal", "evaluate"}`` with the summaries of both steps.
    """
    from attacker.cli import UsageError, run_evaluate, run_steal

    if budget <= 0:
        raise UsageError(f"--budget must be a positive number of samples, got {budget}")
    # Generous rate limits keep the demo short; the quota shows the budget is never passed.
    server_args = ["--samples-per-window", "unlimited", "--requests-per-window", "1000000",
                   "--quota-samples", str(budget)]
    with local_server(model, server_args) as server, tempfile.TemporaryDirectory() as scratch:
        clone_path = out if out is not None else Path(scratch) / "clone.json"
        steal = run_steal(server.url, server.api_key, budget, clone_path, {}, seed=seed)
        scores = run_evaluate(clone_path, server.url, server.admin_key, DEMO_SEQUENCES, seed)
    if out is None:
        steal["out"] = scores["clone"] = "temporary clone (deleted; pass --out to keep it)"
    return {"model": model, "steal": steal, "evaluate": scores}
