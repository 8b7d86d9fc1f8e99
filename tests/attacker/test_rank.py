"""Tests of the rank estimates: exact sketch matrices and sampled frequency counts."""

from __future__ import annotations

import numpy as np
import pytest

from attacker.rank import column_weights, estimate_rank_exact, estimate_rank_from_counts


def planted_laws(seed: int, k: int, F: int, r: int) -> np.ndarray:
    """Return ``k`` probability rows over ``F`` features, mixtures of ``r`` generic laws."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(r), size=k) @ rng.dirichlet(2.0 * np.ones(F), size=r)


def sample_counts(laws: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([rng.multinomial(n, law) for law in laws], dtype=np.float64)


@pytest.mark.parametrize("r", [1, 2, 3, 5], ids=["r1", "r2", "r3", "r5"])
def test_estimate_rank_exact_finds_planted_rank(r: int) -> None:
    V = planted_laws(r, 30, 16, r)

    estimate = estimate_rank_exact(V)

    assert estimate.rank == r
    assert estimate.basis.shape == (16, r)
    assert estimate.singular_values[r - 1] > 1e3 * estimate.noise_floor
    if r < 16:
        assert estimate.singular_values[r] <= estimate.noise_floor


def test_estimate_rank_exact_basis_spans_whitened_rows() -> None:
    V = planted_laws(8, 20, 12, 3)
    w = column_weights(V, np.ones(20))

    estimate = estimate_rank_exact(V)

    X = V * w
    np.testing.assert_allclose(estimate.basis.T @ estimate.basis, np.eye(3), rtol=0, atol=1e-12)
    np.testing.assert_allclose(X @ estimate.basis @ estimate.basis.T, X, rtol=0, atol=1e-10)


def test_estimate_rank_exact_max_rank_caps() -> None:
    V = planted_laws(9, 20, 12, 4)

    estimate = estimate_rank_exact(V, max_rank=2)

    assert estimate.rank == 2
    assert estimate.basis.shape == (12, 2)


def test_estimate_rank_exact_max_rank_above_rank_ignored() -> None:
    V = planted_laws(10, 20, 12, 2)

    estimate = estimate_rank_exact(V, max_rank=6)

    assert estimate.rank == 2


def test_column_weights_known_answer() -> None:
    V = np.array([[0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    n = np.array([100.0, 300.0])

    w = column_weights(V, n, floor=0.0)

    # Sample-weighted means: (50 + 30) / 400, (50 + 90) / 400, (0 + 180) / 400.
    np.testing.assert_allclose(w, 1.0 / np.sqrt([0.2, 0.35, 0.45]), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3], ids=["seed0", "seed1", "seed2", "seed3"])
def test_estimate_rank_from_counts_planted_rank_two(seed: int) -> None:
    laws = planted_laws(seed, 12, 9, 2)
    counts = sample_counts(laws, 20_000, seed)

    estimate = estimate_rank_from_counts(counts, np.random.default_rng(seed))

    assert estimate.rank == 2
    assert estimate.basis.shape == (9, 2)
    assert estimate.singular_values[1] > estimate.noise_floor
    assert estimate.singular_values[2] <= estimate.noise_floor


@pytest.mark.parametrize("seed", [0, 1, 2, 3], ids=["seed0", "seed1", "seed2", "seed3"])
def test_estimate_rank_from_counts_identical_laws_rank_one(seed: int) -> None:
    law = np.random.default_rng(100 + seed).dirichlet(2.0 * np.ones(9))
    counts = sample_counts(np.repeat(law[None, :], 12, axis=0), 20_000, seed)

    estimate = estimate_rank_from_counts(counts, np.random.default_rng(seed))

    assert estimate.rank == 1
    assert estimate.singular_values[1] <= estimate.noise_floor


def test_rank_from_counts_uses_given_rank() -> None:
    laws = planted_laws(4, 12, 9, 2)
    counts = sample_counts(laws, 20_000, 4)

    estimate = estimate_rank_from_counts(counts, np.random.default_rng(4), max_rank=4)

    # Sampling noise makes every singular value positive, so the rank asked for is kept.
    assert estimate.rank == 4
    assert estimate.basis.shape == (9, 4)


def test_estimate_rank_from_counts_row_without_samples() -> None:
    laws = planted_laws(5, 10, 9, 2)
    counts = np.vstack([sample_counts(laws, 20_000, 5), np.zeros((1, 9))])

    estimate = estimate_rank_from_counts(counts, np.random.default_rng(5))

    assert estimate.rank == 2
    assert np.all(np.isfinite(estimate.singular_values))
    assert np.isfinite(estimate.noise_floor)


def test_rank_noise_floor_scales_with_factor() -> None:
    laws = planted_laws(6, 12, 9, 2)
    counts = sample_counts(laws, 20_000, 6)

    base = estimate_rank_from_counts(counts, np.random.default_rng(6), factor=1.0)
    doubled = estimate_rank_from_counts(counts, np.random.default_rng(6), factor=2.0)

    assert doubled.noise_floor == pytest.approx(2.0 * base.noise_floor, rel=1e-12)
