"""Tests of the affine, box-bounded least-squares fit of sketch rows in a spanner."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from attacker.transfer import fit_transfers, fit_transfers_weighted


def planted_problem(seed: int, k: int, F: int, m: int, spread: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return spanner rows ``R`` (k, F), affine coefficients ``beta`` (m, k) and weights ``w`` (F,).

    The first ``k - 1`` coefficients of each row are uniform on ``[-spread, spread]``, and
    the last one makes the row sum to one.
    """
    rng = np.random.default_rng(seed)
    R = rng.dirichlet(np.ones(F), size=k)
    beta = rng.uniform(-spread, spread, size=(m, k))
    beta[:, -1] = 1.0 - beta[:, :-1].sum(axis=1)
    w = rng.uniform(0.5, 2.0, size=F)
    return R, beta, w


def weighted_residual(beta: np.ndarray, v: np.ndarray, R: np.ndarray, w: np.ndarray) -> float:
    return float(np.sum(((v - beta @ R) * w) ** 2))


@pytest.mark.parametrize(
    ("seed", "k", "F"),
    [(0, 2, 4), (1, 3, 9), (2, 5, 12), (3, 4, 4)],
    ids=["k2-F4", "k3-F9", "k5-F12", "square"],
)
def test_fit_transfers_recovers_planted_coefficients(seed: int, k: int, F: int) -> None:
    R, beta, w = planted_problem(seed, k, F, m=30, spread=0.5)
    inside = np.abs(beta).max(axis=1) <= 2.0
    V = beta @ R

    fitted = fit_transfers(V[inside], R, C=2.0, w=w)

    assert inside.sum() >= 20
    np.testing.assert_allclose(fitted, beta[inside], rtol=0, atol=1e-10)
    np.testing.assert_allclose(fitted.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_fit_transfers_unweighted_default() -> None:
    R, beta, _ = planted_problem(4, 3, 7, m=10, spread=0.4)

    fitted = fit_transfers(beta @ R, R, C=2.0)

    np.testing.assert_allclose(fitted, beta, rtol=0, atol=1e-10)


def test_fit_transfers_single_row_input() -> None:
    R, beta, w = planted_problem(5, 3, 6, m=1, spread=0.3)

    fitted = fit_transfers((beta @ R)[0], R, C=2.0, w=w)

    assert fitted.shape == (1, 3)
    np.testing.assert_allclose(fitted, beta, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_fit_transfers_bound_hit_stays_in_box(seed: int) -> None:
    C = 1.5
    R, beta, w = planted_problem(seed, 3, 9, m=40, spread=2.0)
    outside = np.abs(beta).max(axis=1) > C
    V = beta @ R

    fitted = fit_transfers(V, R, C=C, w=w)

    assert outside.sum() >= 10
    assert np.abs(fitted).max() <= C + 1e-12
    # The equality sum(beta) = 1 is a heavily weighted penalty row in the bounded solver.
    np.testing.assert_allclose(fitted.sum(axis=1), 1.0, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fitted[~outside], beta[~outside], rtol=0, atol=1e-10)


def test_fit_transfers_bound_hit_matches_independent_solver() -> None:
    C = 1.5
    R, beta, w = planted_problem(6, 3, 9, m=40, spread=2.0)
    rng = np.random.default_rng(6)
    V = beta @ R + 0.01 * rng.normal(size=(40, 9))
    rows = np.flatnonzero(np.abs(beta).max(axis=1) > C)[:5]

    fitted = fit_transfers(V[rows], R, C=C, w=w)

    for fit, v in zip(fitted, V[rows]):
        reference = minimize(
            weighted_residual,
            np.full(3, 1.0 / 3.0),
            args=(v, R, w),
            method="SLSQP",
            bounds=[(-C, C)] * 3,
            constraints=[{"type": "eq", "fun": lambda b: np.sum(b) - 1.0}],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert reference.success
        np.testing.assert_allclose(fit, reference.x, rtol=0, atol=1e-5)
        assert weighted_residual(fit, v, R, w) <= reference.fun + 1e-8


def test_fit_transfers_noisy_rows_minimise_weighted_residual() -> None:
    R, beta, w = planted_problem(7, 3, 9, m=20, spread=0.5)
    rng = np.random.default_rng(7)
    V = beta @ R + 0.02 * rng.normal(size=(20, 9))

    fitted = fit_transfers(V, R, C=2.0, w=w)

    # Inside the box the fit is the affine least-squares optimum, so no nearby affine
    # combination fits a row better.
    np.testing.assert_allclose(fitted.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    for fit, v in zip(fitted, V):
        for _ in range(20):
            step = rng.normal(size=3) * 0.05
            other = fit + step - step.mean()
            assert weighted_residual(fit, v, R, w) <= weighted_residual(other, v, R, w) + 1e-12


def multiplicative_parity_problem(seed: int, F: int, rho: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two spanner rows whose entries differ 9 to 1, and a row equal to the first, all with
    multiplicative noise of relative variance ``rho`` (the shape of noisy parity's sketch).

    Returns the noisy rows ``R`` (2, F), the noisy row ``v`` (1, F), and the relative
    variances of both.
    """
    rng = np.random.default_rng(seed)
    high = rng.random(F) < 0.5
    first = np.where(high, 1.8, 0.2) / F
    second = np.where(high, 0.2, 1.8) / F
    truth = np.vstack([first, second])
    noisy = truth * np.exp(rng.normal(0.0, np.sqrt(rho), size=truth.shape))
    v = first * np.exp(rng.normal(0.0, np.sqrt(rho), size=F))
    return noisy, v[None, :], np.full((2, F), rho), np.full((1, F), rho)


def test_fit_transfers_weighted_recovers_exact_coefficients() -> None:
    R, beta, _ = planted_problem(seed=4, k=3, F=9, m=5, spread=0.5)
    relative = np.full((5, 9), 0.01)

    fitted = fit_transfers_weighted(beta @ R, R, 2.0, relative, np.full((3, 9), 0.01))

    np.testing.assert_allclose(fitted, beta, atol=1e-9)


def test_fit_transfers_weighted_beats_unweighted_fit() -> None:
    # The row equals the first spanner row, so the weight it puts on the second is the error.
    errors: dict[str, list[float]] = {"weighted": [], "unweighted": []}
    for seed in range(200):
        R, v, relative_R, relative_v = multiplicative_parity_problem(seed, F=16, rho=0.02)
        errors["weighted"].append(fit_transfers_weighted(v, R, 2.0, relative_v, relative_R)[0, 1])
        errors["unweighted"].append(fit_transfers(v, R, 2.0)[0, 1])
    rmse = {name: float(np.sqrt(np.mean(np.square(values)))) for name, values in errors.items()}

    assert rmse["weighted"] < 0.5 * rmse["unweighted"]


def test_fit_transfers_weighted_stays_affine_in_box() -> None:
    rng = np.random.default_rng(9)
    R = rng.dirichlet(np.ones(6), size=3)
    V = rng.dirichlet(np.ones(6), size=8) * rng.uniform(0.2, 5.0, size=(8, 1))

    fitted = fit_transfers_weighted(V, R, 1.5, np.full((8, 6), 0.05), np.full((3, 6), 0.05))

    np.testing.assert_allclose(fitted.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(fitted).max() <= 1.5 + 1e-6
