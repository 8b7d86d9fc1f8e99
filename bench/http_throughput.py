"""Samples per second served over HTTP with large batches, against in-process sampling.

One command measures, for the same model and batch size ``n``:

1. the in-process sampling rate, ``model.sample(prompt, n, rng)`` in a loop;
2. the in-process rate of the server's whole job, sampling plus encoding the JSON body
   (:func:`server.sampling.serve_plan`), which bounds what HTTP can reach;
3. the rate a client receives over HTTP from a ``lowrank-server`` that this script
   starts on ``127.0.0.1`` (one worker, a ledger in a temporary directory, limits that
   the run cannot reach), with raw completions and with ``aggregate: true``.

It prints one line per measurement with samples per second and the fraction of the
in-process sampling rate.  The client runs on the same machine and reads each body
without parsing it (the first body of each mode is parsed and checked), so the HTTP
figures include the client's share of the CPU.

The measurements take turns for ``--rounds`` rounds, and each line reports its best
round, so that load from other processes on the machine affects every line alike.

Usage::

    python bench/http_throughput.py --model english-words --n 100000 --requests 5 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from server.sampling import SamplingPlan, serve_plan  # noqa: E402
from shared.model import SequenceModel  # noqa: E402
from shared.presets import load_model  # noqa: E402

logger = logging.getLogger("bench.http_throughput")

HOST = "127.0.0.1"
BENCH_KEY = "bench-throughput-key"
STARTUP_TIMEOUT_SECONDS = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="english-words", help="preset or model file")
    parser.add_argument("--n", type=int, default=100_000, help="samples per request")
    parser.add_argument(
        "--requests", type=int, default=5, help="timed requests (or in-process calls) per round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the in-process sampler")
    return parser.parse_args(argv)


def in_process_rate(model: SequenceModel, n: int, repeats: int, seed: int) -> float:
    """Return samples per second of ``model.sample([], n, rng)``."""
    rng = np.random.default_rng(seed)
    model.sample([], n, rng)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        model.sample([], n, rng)
    return n * repeats / (time.perf_counter() - began)


def serve_plan_rate(
    model: SequenceModel, n: int, repeats: int, seed: int, aggregate: bool
) -> float:
    """Return samples per second of the server's sampling and JSON encoding, in process."""
    rng = np.random.default_rng(seed)
    plan = SamplingPlan([[]], n, [model.horizon], False, aggregate, n, n * model.horizon)
    serve_plan(model, plan, rng, "bench", None)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        serve_plan(model, plan, rng, "bench", None)
    return n * repeats / (time.perf_counter() - began)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(model: str, n: int, horizon: int) -> Iterator[str]:
    """Start ``lowrank-server`` on a free loopback port; yield its URL; stop it after."""
    with tempfile.TemporaryDirectory(prefix="lowrank-bench-") as directory:
        port = _free_port()
        command = [
            sys.executable, "-m", "server.cli",
            "--model", model,
            "--host", HOST,
            "--port", str(port),
            "--ledger", str(Path(directory) / "ledger.sqlite3"),
            "--requests-per-window", "1000000000",
            "--samples-per-window", "unlimited",
            "--max-n", str(n),
            "--max-tokens-per-request", str(n * horizon),
            "--max-body-bytes", str(1 << 20),
        ]  # fmt: skip
        env = {**os.environ, "LOWRANK_API_KEYS": BENCH_KEY, "PYTHONPATH": str(REPO_ROOT)}
        log_path = Path(directory) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://{HOST}:{port}"
        try:
            _wait_ready(process, url, log_path)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited during start-up:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} not ready after {STARTUP_TIMEOUT_SECONDS} s")


def http_rate(url: str, n: int, requests: int, aggregate: bool) -> float:
    """Return samples per second received over HTTP in ``requests`` sequential requests."""
    body = {"prompts": [[]], "n": n, "aggregate": aggregate}
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        first = client.post("/v1/complete", json=body)
        first.raise_for_status()
        _check_body(first.content, n, aggregate)
        began = time.perf_counter()
        for _ in range(requests):
            response = client.post("/v1/complete", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}: {response.text[:300]}")
        elapsed = time.perf_counter() - began
    return n * requests / elapsed


def _check_body(content: bytes, n: int, aggregate: bool) -> None:
    choice = json.loads(content)["choices"][0]
    served = sum(choice["counts"]) if aggregate else len(choice["completions"])
    if served != n:
        raise RuntimeError(f"the server returned {served} samples, expected {n}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    model = load_model(args.model)
    logger.info(
        "model %s (A=%d, H=%d), n=%d", args.model, model.alphabet_size, model.horizon, args.n
    )
    n, requests, seed = args.n, args.requests, args.seed

    best: dict[str, float] = {}
    with running_server(args.model, n, model.horizon) as url:
        measurements: list[tuple[str, Callable[[], float]]] = [
            ("in-process model.sample", lambda: in_process_rate(model, n, requests, seed)),
            (
                "in-process sample + JSON, raw rows",
                lambda: serve_plan_rate(model, n, requests, seed, aggregate=False),
            ),
            (
                "in-process sample + JSON, aggregate",
                lambda: serve_plan_rate(model, n, requests, seed, aggregate=True),
            ),
            ("HTTP, 1 worker, raw rows", lambda: http_rate(url, n, requests, aggregate=False)),
            ("HTTP, 1 worker, aggregate", lambda: http_rate(url, n, requests, aggregate=True)),
        ]
        for round_index in range(args.rounds):
            for name, measure in measurements:
                best[name] = max(best.get(name, 0.0), measure())
            logger.info("round %d of %d done", round_index + 1, args.rounds)

    base = best["in-process model.sample"]
    print(f"{'measurement':<40} {'samples/s':>12} {'fraction':>9}")
    for name, rate in best.items():
        print(f"{name:<40} {rate:>12,.0f} {rate / base:>9.2f}")


if __name__ == "__main__":
    main()
