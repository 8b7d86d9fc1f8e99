"""Tests of the C-approximate barycentric spanner on planted and random point clouds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attacker.spanner import barycentric_spanner

# Slack on |Lambda| <= C for rounding in the linear solve.
COEFFICIENT_SLACK = 1e-9


def point_cloud(seed: int, m: int, r: int, anisotropy: float = 0.0) -> np.ndarray:
    """Return ``m`` Gaussian points in ``r`` dimensions, columns scaled by up to ``10**anisotropy``."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-anisotropy, anisotropy, size=r)
    return rng.normal(size=(m, r)) * scales


def assert_is_spanner(X: np.ndarray, C: float, indices: np.ndarray, coefficients: np.ndarray) -> None:
    m, r = X.shape
    assert indices.shape == (r,)
    assert len(set(indices.tolist())) == r
    assert coefficients.shape == (m, r)
    assert np.abs(coefficients).max() <= C + COEFFICIENT_SLACK
    np.testing.assert_allclose(coefficients @ X[indices], X, rtol=0, atol=1e-9 * np.abs(X).max())


@pytest.mark.parametrize(
    ("seed", "m", "r", "C"),
    [
        (0, 10, 2, 2.0),
        (1, 30, 3, 2.0),
        (2, 60, 5, 1.5),
        (3, 200, 4, 1.1),
        (4, 8, 8, 2.0),
        (5, 40, 1, 2.0),
    ],
    ids=["m10-r2", "m30-r3", "m60-r5-C1.5", "m200-r4-C1.1", "square", "r1"],
)
def test_spanner_random_cloud_coefficients_bounded(seed: int, m: int, r: int, C: float) -> None:
    X = point_cloud(seed, m, r, anisotropy=1.0)

    spanner = barycentric_spanner(X, C)

    assert_is_spanner(X, C, spanner.indices, spanner.coefficients)


def test_spanner_basis_rows_unit_coefficients() -> None:
    X = point_cloud(11, 25, 3)

    spanner = barycentric_spanner(X, 2.0)

    np.testing.assert_allclose(spanner.coefficients[spanner.indices], np.eye(3), rtol=0, atol=1e-12)


@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    r=st.integers(min_value=1, max_value=6),
    extra=st.integers(min_value=0, max_value=40),
    C=st.floats(min_value=1.05, max_value=4.0),
    anisotropy=st.floats(min_value=0.0, max_value=2.0),
)
@settings(derandomize=True, deadline=None, max_examples=80, database=None)
def test_spanner_property_coefficients_bounded(
    seed: int, r: int, extra: int, C: float, anisotropy: float
) -> None:
    X = point_cloud(seed, r + extra, r, anisotropy)

    spanner = barycentric_spanner(X, C)

    assert_is_spanner(X, C, spanner.indices, spanner.coefficients)


@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    r=st.integers(min_value=1, max_value=5),
    extra=st.integers(min_value=0, max_value=30),
    C=st.floats(min_value=1.05, max_value=4.0),
)
@settings(derandomize=True, deadline=None, max_examples=60, database=None)
def test_spanner_property_eligible_mask_respected(seed: int, r: int, extra: int, C: float) -> None:
    rng = np.random.default_rng(seed)
    m = r + extra
    X = point_cloud(seed, m, r, anisotropy=1.0)
    eligible = np.zeros(m, dtype=bool)
    eligible[rng.choice(m, size=int(rng.integers(r, m + 1)), replace=False)] = True

    spanner = barycentric_spanner(X, C, eligible=eligible)

    assert np.all(eligible[spanner.indices])
    assert np.abs(spanner.coefficients[eligible]).max() <= C + COEFFICIENT_SLACK
    np.testing.assert_allclose(
        spanner.coefficients @ X[spanner.indices], X, rtol=0, atol=1e-9 * np.abs(X).max()
    )


def test_spanner_eligible_mask_excludes_largest_rows() -> None:
    # The two far points would win any volume contest, but they are not eligible.
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.6], [50.0, 1.0], [1.0, 50.0]])
    eligible = np.array([True, True, True, False, False])

    spanner = barycentric_spanner(X, 2.0, eligible=eligible)

    assert set(spanner.indices.tolist()) <= {0, 1, 2}
    assert np.abs(spanner.coefficients[:3]).max() <= 2.0 + COEFFICIENT_SLACK
    # The far points are still expressed exactly, with coefficients past C.
    np.testing.assert_allclose(spanner.coefficients @ X[spanner.indices], X, rtol=0, atol=1e-12)
    assert np.abs(spanner.coefficients[3:]).max() > 2.0


def test_spanner_swap_known_answer() -> None:
    # Greedy start: (0.8, 0.8) has the largest norm, then (1, 0).  In that basis
    # (0, 1) = 1.25 (0.8, 0.8) - (1, 0), so C = 1.1 forces one swap and C = 2 none.
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.8]])

    loose = barycentric_spanner(X, 2.0)
    tight = barycentric_spanner(X, 1.1)

    assert loose.indices.tolist() == [2, 0]
    assert loose.swaps == 0
    np.testing.assert_allclose(loose.coefficients[1], [1.25, -1.0], rtol=0, atol=1e-12)
    assert tight.indices.tolist() == [1, 0]
    assert tight.swaps == 1
    np.testing.assert_allclose(tight.coefficients[2], [0.8, 0.8], rtol=0, atol=1e-12)


def test_spanner_rejects_too_few_eligible_rows() -> None:
    X = point_cloud(0, 10, 3)
    eligible = np.zeros(10, dtype=bool)
    eligible[[1, 4]] = True

    with pytest.raises(ValueError, match="only 2 eligible rows for a spanner of 3 rows"):
        barycentric_spanner(X, 2.0, eligible=eligible)


def test_spanner_rejects_rank_deficient_rows_with_zero_residual() -> None:
    # Rows on the line spanned by (1, 2): the second residual is exactly zero.
    X = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])

    with pytest.raises(ValueError, match="span only 1 of the 2 dimensions"):
        barycentric_spanner(X, 2.0)


def test_spanner_rejects_rank_deficient_rows_in_general_position() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 2)) @ rng.normal(size=(2, 3))

    with pytest.raises(ValueError, match="span only 2 of the 3 dimensions"):
        barycentric_spanner(X, 2.0)


def test_spanner_rejects_rank_deficient_eligible_rows() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 3))
    X[:5] = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 3))
    eligible = np.zeros(20, dtype=bool)
    eligible[:5] = True

    with pytest.raises(ValueError, match="span only 2 of the 3 dimensions"):
        barycentric_spanner(X, 2.0, eligible=eligible)


@pytest.mark.parametrize("C", [1.0, 0.5, -2.0, float("nan")], ids=["one", "half", "negative", "nan"])
def test_spanner_rejects_C_not_above_one(C: float) -> None:
    X = point_cloud(0, 5, 2)

    with pytest.raises(ValueError, match="C must be greater than 1"):
        barycentric_spanner(X, C)
