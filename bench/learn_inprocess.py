"""Learn a clone of a preset through the in-process oracle and print its distance as JSON.

The in-process oracle bills exactly as the HTTP server does, so the figures match an attack
over HTTP with the same budget.  Only the transport is skipped.

Usage::

    python bench/learn_inprocess.py "noisy-parity:bits=24,noise=0.1,seed=0" --budget 20000000
    python bench/learn_inprocess.py english-words --budget 2000000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

from attacker.learner import LearnerSettings, learn
from attacker.oracle import InProcessOracle
from shared.distances import distance
from shared.presets import load_model

logger = logging.getLogger("bench.learn_inprocess")


def run(model_name: str, budget: int, seed: int, sequences: int, settings: LearnerSettings) -> dict[str, object]:
    """Learn one clone with ``seed`` and return its cost and distance to the preset."""
    model = load_model(model_name)
    oracle = InProcessOracle(model, np.random.default_rng(seed), budget=budget)
    started = time.perf_counter()
    clone = learn(oracle, settings, np.random.default_rng(seed + 1_000))
    seconds = time.perf_counter() - started
    report = distance(model, clone, np.random.default_rng(seed + 2_000), n=sequences)
    return {
        "model": model_name,
        "seed": seed,
        "budget": budget,
        "samples": oracle.ledger.samples,
        "tokens": oracle.ledger.tokens,
        "ranks": clone.ranks,
        "sketches": clone.sketches,
        "by_phase": oracle.ledger.by_phase,
        "learn_seconds": round(seconds, 2),
        "method": report.method,
        "sequences": report.sequences,
        "tv": report.tv,
        "tv_stderr": report.tv_stderr,
        "tv_upper95": report.tv + 1.96 * report.tv_stderr,
        "kl": report.kl,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="preset name, with parameters, or model file")
    parser.add_argument("--budget", type=int, required=True, help="samples the learner may buy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--sequences", type=int, default=20_000, help="Monte Carlo sequences")
    parser.add_argument("--rank", type=int, default=None, help="rank of every step; default: estimated")
    parser.add_argument("--sketch", default="auto", choices=["auto", "prefix", "sampled-future"])
    parser.add_argument("--projection", default="kl", choices=["kl", "clip", "none"])
    parser.add_argument("--future-sketch-share", type=float, default=None,
                        help="share of a step's budget a sampled-future sketch may spend")
    parser.add_argument("--typical-histories", type=int, default=None,
                        help="full samples whose prefixes join the candidates")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    overrides = {
        name: value
        for name, value in (
            ("future_sketch_share", args.future_sketch_share),
            ("typical_histories", args.typical_histories),
        )
        if value is not None
    }
    settings = LearnerSettings(rank=args.rank, sketch=args.sketch, projection=args.projection, **overrides)
    for seed in args.seeds:
        print(json.dumps(run(args.model, args.budget, seed, args.sequences, settings)), flush=True)


if __name__ == "__main__":
    main()
