"""Compare the clone's state corrections (kl, clip, none) as the horizon grows.

For each horizon ``H`` the learner steals ``random-hmm:states=4,alphabet=4,horizon=H`` once
in sample mode, with the same budget per step.  That one clone is then scored with each
projection against the secret model.  Distances are exact where ``A^H <= 10^6`` and Monte
Carlo otherwise, on the same reference sequences for all three projections, so their
differences are paired.

Usage::

    python bench/projection_study.py --horizons 8 16 24 32 --budget-per-step 20000 --rank 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from attacker.learner import LearnerSettings, learn
from attacker.oracle import InProcessOracle
from shared.distances import distance
from shared.presets import load_model

logger = logging.getLogger("bench.projection_study")

PROJECTIONS = ("kl", "clip", "none")


def study(
    horizon: int, budget_per_step: int, seed: int, sequences: int, rank: int | None
) -> list[dict[str, object]]:
    """Learn one clone at ``horizon`` and score it with every projection."""
    model = load_model(f"random-hmm:states=4,alphabet=4,horizon={horizon},seed={seed}")
    oracle = InProcessOracle(model, np.random.default_rng(seed), budget=budget_per_step * horizon)
    clone = learn(oracle, LearnerSettings(rank=rank), np.random.default_rng(seed + 1_000))
    rows = []
    for projection in PROJECTIONS:
        report = distance(model, clone.with_projection(projection), np.random.default_rng(seed + 2_000), n=sequences)
        rows.append({
            "horizon": horizon,
            "projection": projection,
            "samples": oracle.ledger.samples,
            "ranks": clone.ranks,
            "method": report.method,
            "tv": report.tv,
            "tv_stderr": report.tv_stderr,
            "kl": report.kl,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--horizons", type=int, nargs="+", default=[8, 16, 24, 32])
    parser.add_argument("--budget-per-step", type=int, default=50_000, help="samples per step of the horizon")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequences", type=int, default=20_000, help="Monte Carlo sequences")
    parser.add_argument("--rank", type=int, default=None, help="rank of every step; default: estimated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for horizon in args.horizons:
        for row in study(horizon, args.budget_per_step, args.seed, args.sequences, args.rank):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
