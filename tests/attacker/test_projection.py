"""Tests of the relative-entropy projection of clone states onto the valid set ``K``.

``K = {alpha : sum(alpha) = 1, |alpha_i| <= C', alpha @ R >= 0, alpha @ N >= 0}``.  The
planted cases put a true state ``z = weights @ R`` (a convex combination of non-negative
rows, so inside ``K``), move it along a direction with zero sum past the point where
``alpha @ R`` turns negative, and project.  The target the projection compares with is computed here as
:class:`StateProjection` computes it: ``alpha @ R`` truncated at zero, renormalised and
mixed with ``eta`` of the clipped, renormalised average of the rows of ``R``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attacker.projection import StateProjection

# Slack for the Pythagorean inequality and the simplex sum, in nats and probability.
KL_SLACK = 1e-9
SUM_SLACK = 1e-12


def planted_case(
    seed: int, k: int, F: int, A: int = 3, overshoot: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``R`` (k, F), ``N`` (k, A), convex ``weights`` (k,) and a state outside ``K`` (k,).

    The state is ``weights + overshoot * s * direction``, where ``s`` is the step at which
    ``(weights + s * direction) @ R`` first reaches zero in some feature.
    """
    rng = np.random.default_rng(seed)
    R = rng.dirichlet(2.0 * np.ones(F), size=k)
    N = rng.dirichlet(np.ones(A), size=k)
    weights = rng.dirichlet(np.ones(k))
    direction = rng.normal(size=k)
    direction -= direction.mean()
    slope = direction @ R
    exit_step = np.min((weights @ R)[slope < 0] / -slope[slope < 0])
    return R, N, weights, weights + overshoot * exit_step * direction


def projection_target(projection: StateProjection, alpha: np.ndarray) -> np.ndarray:
    """Return the smoothed, truncated sketch of ``alpha`` that the projection aims at."""
    rho = np.clip(alpha @ projection.R, 0.0, None)
    average = np.clip(projection.R.mean(axis=0), 0.0, None)
    average /= average.sum()
    return (1.0 - projection.eta) * rho / rho.sum() + projection.eta * average


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """Return ``KL(p || q)`` in nats for probability vectors, ``inf`` where ``q`` misses mass of ``p``."""
    support = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[support] * np.log(p[support] / q[support])))


def close_rows(k: int, F: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``k`` probability rows within about 5% of a common row, so large coefficients stay valid."""
    base = rng.dirichlet(5.0 * np.ones(F))
    rows = base * (1.0 + 0.05 * rng.normal(size=(k, F)))
    return rows / rows.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("seed", "k", "F"),
    [(0, 2, 5), (1, 3, 8), (2, 4, 10), (3, 5, 12)],
    ids=["k2", "k3", "k4", "k5"],
)
def test_project_rows_convex_state_unchanged(seed: int, k: int, F: int) -> None:
    R, N, weights, _ = planted_case(seed, k, F)
    projection = StateProjection(R, N, bound=2.0)

    projected = projection.project_rows(weights[None, :])

    assert projection.contains(weights[None, :]).tolist() == [True]
    np.testing.assert_array_equal(projected[0], weights)


def test_project_rows_signed_state_inside_unchanged() -> None:
    rng = np.random.default_rng(4)
    projection = StateProjection(close_rows(2, 6, rng), close_rows(2, 3, rng), bound=None)
    alpha = np.array([[3.0, -2.0]])

    projected = projection.project_rows(alpha)

    assert projection.contains(alpha).tolist() == [True]
    np.testing.assert_array_equal(projected, alpha)


@pytest.mark.parametrize(
    ("seed", "k", "F", "overshoot", "bound"),
    [
        (0, 2, 6, 1.5, None),
        (1, 3, 8, 1.5, None),
        (2, 3, 8, 3.0, 3.0),
        (3, 4, 10, 1.5, None),
        (4, 4, 10, 3.0, None),
        (5, 5, 12, 10.0, None),
        (6, 5, 12, 3.0, 4.0),
        (7, 3, 8, 10.0, None),
    ],
    ids=["k2", "k3", "k3-box", "k4", "k4-far", "k5-far", "k5-box", "k3-far"],
)
def test_project_planted_kl_to_truth_does_not_grow(
    seed: int, k: int, F: int, overshoot: float, bound: float | None
) -> None:
    R, N, weights, alpha = planted_case(seed, k, F, overshoot=overshoot)
    projection = StateProjection(R, N, bound)
    truth = weights @ R

    projected = projection.project_rows(alpha[None, :])[0]

    assert projection.contains(alpha[None, :]).tolist() == [False]
    assert projection.contains(projected[None, :]).tolist() == [True]
    assert kl(truth, projected @ R) <= kl(truth, projection_target(projection, alpha)) + KL_SLACK


@pytest.mark.xfail(
    strict=True,
    reason="SLSQP stops where (alpha @ R) is 5e-11 in one feature, while the minimiser has "
    "8e-10 there. The objective is only 5e-10 above the minimum, but KL(truth || projection) "
    "rises to 2.34 nats, above KL(truth || target) = 2.22",
)
def test_project_planted_near_boundary_kl_does_not_grow() -> None:
    R, N, weights, alpha = planted_case(89, 4, 10, overshoot=1.5)
    projection = StateProjection(R, N, bound=None)
    truth = weights @ R

    projected = projection.project_rows(alpha[None, :])[0]

    assert kl(truth, projected @ R) <= kl(truth, projection_target(projection, alpha)) + KL_SLACK


def test_project_identity_rows_known_answer() -> None:
    # With R = I the set K is the simplex, and the target itself lies in it.
    N = np.random.default_rng(0).dirichlet(np.ones(3), size=3)
    projection = StateProjection(np.eye(3), N, bound=None)
    alpha = np.array([1.3, -0.5, 0.2])

    projected = projection.project(alpha)

    expected = (1.0 - projection.eta) * np.array([1.3, 0.0, 0.2]) / 1.5 + projection.eta / 3.0
    np.testing.assert_allclose(projected, expected, rtol=0, atol=1e-7)


def test_project_box_violation_moves_to_bound() -> None:
    rng = np.random.default_rng(4)
    projection = StateProjection(close_rows(2, 6, rng), close_rows(2, 3, rng), bound=2.5)
    alpha = np.array([[3.0, -2.0]])

    projected = projection.project_rows(alpha)

    # alpha @ R and alpha @ N stay positive along the segment, so only the box binds.
    assert projection.contains(alpha).tolist() == [False]
    np.testing.assert_allclose(projected, [[2.5, -1.5]], rtol=0, atol=1e-8)


def test_project_rows_mixed_batch() -> None:
    R, N, weights, alpha = planted_case(2, 3, 8)
    projection = StateProjection(R, N, bound=None)
    batch = np.vstack([weights, alpha, weights, alpha])

    projected = projection.project_rows(batch)

    np.testing.assert_array_equal(projected[0], weights)
    np.testing.assert_array_equal(projected[2], weights)
    np.testing.assert_array_equal(projected[1], projected[3])
    assert projection.contains(projected).tolist() == [True, True, True, True]
    # The input batch is not modified.
    np.testing.assert_array_equal(batch[1], alpha)


def test_contains_tolerates_rounding_only() -> None:
    R = np.eye(2)
    projection = StateProjection(R, R, bound=None, tol=1e-9)

    inside = projection.contains(np.array([[1.0 + 5e-10, -5e-10], [1.0 + 1e-6, -1e-6]]))

    assert inside.tolist() == [True, False]


@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    k=st.integers(min_value=2, max_value=5),
    extra_features=st.integers(min_value=0, max_value=8),
    overshoot=st.floats(min_value=1.1, max_value=10.0),
    bound=st.sampled_from([None, 3.0, 5.0]),
)
@settings(derandomize=True, deadline=None, max_examples=50, database=None)
def test_project_property_output_inside_and_idempotent(
    seed: int, k: int, extra_features: int, overshoot: float, bound: float | None
) -> None:
    R, N, weights, alpha = planted_case(seed, k, k + extra_features, overshoot=overshoot)
    projection = StateProjection(R, N, bound)

    once = projection.project_rows(alpha[None, :])
    twice = projection.project_rows(once)

    assert projection.contains(once).tolist() == [True]
    assert abs(float(once.sum()) - 1.0) <= SUM_SLACK
    if bound is not None:
        assert np.abs(once).max() <= bound + projection.tol
    np.testing.assert_array_equal(twice, once)
