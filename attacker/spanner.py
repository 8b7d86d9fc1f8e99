"""C-approximate barycentric spanners of a finite set of vectors.

Notation
--------
X : ndarray, shape (m, r)
    Candidate vectors, one per row, in an ``r``-dimensional space.
C : float
    Approximation factor, ``C > 1``.
B : ndarray of int, shape (r,)
    Indices of the rows chosen as the spanner.
Lambda : ndarray, shape (m, r)
    Coefficients with ``X = Lambda @ X[B]``.

A set of rows ``X[B]`` is a C-approximate barycentric spanner when every row of ``X`` is a
combination of them with coefficients in ``[-C, C]``.  The construction is the one of Awerbuch
and Kleinberg, "Adaptive routing with end-to-end feedback: distributed learning and geometric
approaches" (STOC 2004).  It starts from a basis of large volume and swaps in any row
that multiplies ``|det X[B]|`` by more than ``C``.  Each swap grows the volume
geometrically, so the loop ends.  Replacing basis row ``j``
by row ``x`` scales ``|det|`` by ``|Lambda_x[j]|`` (Cramer's rule), so the swap test reads
the coefficient matrix directly.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

__all__ = ["Spanner", "barycentric_spanner"]

logger = logging.getLogger(__name__)


class Spanner:
    """Result of :func:`barycentric_spanner`.

    Attributes
    ----------
    indices : ndarray of int64, shape (r,)
        Rows of ``X`` chosen as the spanner, in basis order.
    coefficients : ndarray of float64, shape (m, r)
        ``Lambda`` with ``X ≈ Lambda @ X[indices]``.
    swaps : int
        Number of swaps after the greedy start.
    """

    def __init__(self, indices: NDArray[np.int64], coefficients: NDArray[np.float64], swaps: int):
        self.indices = indices
        self.coefficients = coefficients
        self.swaps = swaps


def barycentric_spanner(
    X: NDArray[np.float64],
    C: float = 2.0,
    eligible: NDArray[np.bool_] | None = None,
    max_swaps: int = 1000,
) -> Spanner:
    """Find a C-approximate barycentric spanner of the rows of ``X``.

    Parameters
    ----------
    X : ndarray, shape (m, r)
        Candidate rows; the spanner has ``r`` rows, so ``X`` must have rank ``r``.
    C : float, default 2.0
        Approximation factor, greater than 1.
    eligible : ndarray of bool, shape (m,), optional
        Rows allowed into the spanner (for example the well-estimated ones).  Coefficients
        are still computed for every row; only eligible rows are guaranteed ``|Lambda| <= C``.
    max_swaps : int, default 1000
        Safety cap on the swap loop.

    Returns
    -------
    Spanner

    Raises
    ------
    ValueError
        If ``C <= 1`` or the eligible rows do not span ``r`` dimensions.
    """
    X = np.asarray(X, dtype=np.float64)
    if not C > 1.0:
        raise ValueError(f"C must be greater than 1 for the swap loop to end, got {C}")
    m, r = X.shape
    allowed = np.ones(m, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if allowed.sum() < r:
        raise ValueError(
            f"only {int(allowed.sum())} eligible rows for a spanner of {r} rows; "
            "lower the rank or sketch more candidates"
        )

    basis = _greedy_basis(X, allowed, r)
    swaps = 0
    while True:
        coefficients = _coefficients(X, basis)
        masked = np.where(allowed[:, None], np.abs(coefficients), 0.0)
        row, position = np.unravel_index(int(np.argmax(masked)), masked.shape)
        if masked[row, position] <= C or swaps >= max_swaps:
            break
        basis[position] = row
        swaps += 1
    if swaps >= max_swaps:
        logger.warning("spanner stopped after max_swaps=%d swaps; coefficients may exceed C", swaps)
    return Spanner(basis.astype(np.int64), coefficients, swaps)


def _greedy_basis(X: NDArray[np.float64], allowed: NDArray[np.bool_], r: int) -> NDArray[np.int64]:
    """Pick ``r`` rows by largest residual norm (pivoted Gram-Schmidt), a max-volume greedy start."""
    residual = X.copy()
    basis = np.empty(r, dtype=np.int64)
    # Rounding leaves residuals of about 1e-16 of the scale where the exact value is zero.
    threshold = (1e-10 * float(np.abs(X).max(initial=0.0))) ** 2
    for j in range(r):
        norms = np.where(allowed, np.einsum("ij,ij->i", residual, residual), -1.0)
        norms[basis[:j]] = -1.0
        pick = int(np.argmax(norms))
        if norms[pick] <= threshold:
            raise ValueError(
                f"the eligible rows span only {j} of the {r} dimensions requested; "
                "lower the rank or sketch more candidates"
            )
        basis[j] = pick
        direction = residual[pick] / np.sqrt(norms[pick])
        residual -= np.outer(residual @ direction, direction)
    return basis


def _coefficients(X: NDArray[np.float64], basis: NDArray[np.int64]) -> NDArray[np.float64]:
    """Solve ``Lambda @ X[basis] = X`` for the (m, r) coefficient matrix."""
    return np.linalg.solve(X[basis].T, X.T).T
