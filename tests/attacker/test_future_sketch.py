"""Tests of the sampled-future sketch estimated from one-token completions."""

from __future__ import annotations

import numpy as np
import pytest

from attacker.future_sketch import estimate_future_sketch, plan_future_prompts
from attacker.oracle import InProcessOracle
from shared.presets import load_model

MODEL = "noisy-parity:bits=4,noise=0.1,seed=0"
CANDIDATES = [(0, 0), (0, 1), (1, 0), (1, 1)]
FUTURES = [(0, 1, 1), (1, 1, 0), (0, 0, 0), (1, 0, 1)]


def exact_sketch(candidates: list[tuple[int, ...]], futures: list[tuple[int, ...]]) -> np.ndarray:
    """``P[f_l | h] / (m D[f_l])`` from the model's exact probabilities, shape (k, m)."""
    model = load_model(MODEL)
    sequences = np.array(futures)
    probabilities = np.array([np.exp(model.log_prob(sequences, prompt=h)) for h in candidates])
    return probabilities / (len(futures) * probabilities.mean(axis=0))[None, :]


@pytest.fixture(scope="module")
def repeated() -> list:
    """Fifty independent estimates with 200 samples per prompt."""
    model = load_model(MODEL)
    sketches = []
    for seed in range(50):
        oracle = InProcessOracle(model, np.random.default_rng(seed), budget=10**7)
        sketches.append(estimate_future_sketch(oracle, CANDIDATES, FUTURES, 200, np.random.default_rng(seed)))
    return sketches


def test_estimate_future_sketch_bills_n_per_distinct_prompt() -> None:
    model = load_model(MODEL)
    oracle = InProcessOracle(model, np.random.default_rng(0), budget=10**7)

    estimate_future_sketch(oracle, CANDIDATES, FUTURES, 100, np.random.default_rng(0))

    assert oracle.ledger.samples == 100 * len(plan_future_prompts(CANDIDATES, FUTURES))


def test_estimate_future_sketch_converges_to_exact_sketch() -> None:
    model = load_model(MODEL)
    oracle = InProcessOracle(model, np.random.default_rng(1), budget=10**8)

    sketch = estimate_future_sketch(oracle, CANDIDATES, FUTURES, 200_000, np.random.default_rng(1))

    np.testing.assert_allclose(sketch.vectors, exact_sketch(CANDIDATES, FUTURES), rtol=0.03)


def test_estimate_future_sketch_relative_variance_matches_spread(repeated: list) -> None:
    # The delta-method variance of each entry, against the spread of the entries over
    # independent repetitions: both relative to the exact value.
    exact = exact_sketch(CANDIDATES, FUTURES)
    observed = np.var([s.vectors / exact for s in repeated], axis=0).mean()
    predicted = np.mean([s.relative for s in repeated])

    assert 0.6 < observed / predicted < 1.6


def test_estimate_future_sketch_split_half_noise_matches_spread(repeated: list) -> None:
    spread = np.var([s.vectors for s in repeated], axis=0).mean()
    noise = np.mean([s.noise**2 for s in repeated])

    assert 0.6 < noise / spread < 1.6
