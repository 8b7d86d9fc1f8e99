"""Coefficients of sketch vectors in a spanner: the learner's change of basis.

Notation
--------
k : int
    Number of spanner histories.
F : int
    Number of sketch features.
R : ndarray, shape (k, F)
    Sketch rows of the spanner histories.
v : ndarray, shape (F,)
    Sketch of the history being expressed.
w : ndarray, shape (F,)
    Feature weights (whitening).
beta : ndarray, shape (k,)
    Coefficients with ``v ≈ beta @ R``.
C : float
    Bound on ``|beta_j|``.

Each fit solves the weighted least-squares problem

    minimise || (v - beta R) * w ||^2   subject to   sum(beta) = 1,  |beta_j| <= C.

The affine constraint holds for exact future laws, because every law and every spanner row
has total mass one.  The box is the barycentric-spanner guarantee.  Most rows already
satisfy the box at the equality-constrained optimum, which has a closed form (a KKT system
shared by all rows).  The others go to a bounded least-squares solver.

Sampled-future sketches need weights.  Their entries are chain-rule products of about
``H - t`` estimated factors, so their noise is multiplicative: the relative variance of an
entry (its variance over its square) is the sum of those of its factors.  Entries differ
in size by the ratio of the laws they compare (9 to 1 on noisy parity with noise 0.1), so
unweighted least squares lets the noise of the large entries swamp the small ones.
:func:`fit_transfers_weighted` weighs each feature by the inverse variance of its residual.
On noisy parity with 24 bits this cut the spread of each transfer about fourfold.  It also
removed most of a bias.  A spanner maximises volume, so it picks the most extreme of
several noisy rows of one state.  Unweighted fits then leak a few percent of the belief to
the wrong state at every step.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import lsq_linear

__all__ = ["fit_transfers", "fit_transfers_weighted"]

logger = logging.getLogger(__name__)

# Weight of the row that enforces sum(beta) = 1 in the bounded solver, relative to the data.
_EQUALITY_WEIGHT = 1e4


def fit_transfers(
    V: NDArray[np.float64],
    R: NDArray[np.float64],
    C: float,
    w: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Express each row of ``V`` as an affine combination of the rows of ``R``.

    Parameters
    ----------
    V : ndarray, shape (m, F)
        Sketches to express, one per row.
    R : ndarray, shape (k, F)
        Spanner sketch rows, linearly independent.
    C : float
        Bound on each coefficient's absolute value.
    w : ndarray, shape (F,), optional
        Feature weights; default all ones.

    Returns
    -------
    ndarray of float64, shape (m, k)
        Coefficients ``beta`` for each row, summing to one.
    """
    V = np.atleast_2d(np.asarray(V, dtype=np.float64))
    R = np.asarray(R, dtype=np.float64)
    weights = np.ones(R.shape[1]) if w is None else np.asarray(w, dtype=np.float64)
    Rw = R * weights
    return _solve(Rw @ Rw.T, (V * weights) @ Rw.T, C)


def fit_transfers_weighted(
    V: NDArray[np.float64],
    R: NDArray[np.float64],
    C: float,
    relative_V: NDArray[np.float64],
    relative_R: NDArray[np.float64],
    iterations: int = 2,
) -> NDArray[np.float64]:
    """Express each row of ``V`` in the rows of ``R`` by weighted least squares.

    The entries carry multiplicative noise: an entry of true value ``x`` has variance
    ``x^2 rho``, with ``rho`` given per entry.  Each row is fitted first without weights,
    then again ``iterations`` times with the weight of feature ``f`` set to one over the
    variance of its residual, ``(beta R)_f^2 rho_V[f] + sum_j beta_j^2 R[j, f]^2 rho_R[j, f]``.
    The variances come from the fitted values, not the observed ones, so that an entry
    estimated too small does not get too much weight.

    Parameters
    ----------
    V : ndarray, shape (m, F)
    R : ndarray, shape (k, F)
    C : float
        Bound on each coefficient's absolute value.
    relative_V : ndarray, shape (m, F)
        ``rho`` of the entries of ``V``.
    relative_R : ndarray, shape (k, F)
        ``rho`` of the entries of ``R``.
    iterations : int
        Reweighting rounds.

    Returns
    -------
    ndarray of float64, shape (m, k)
        Coefficients, each row summing to one.
    """
    V = np.atleast_2d(np.asarray(V, dtype=np.float64))
    R = np.asarray(R, dtype=np.float64)
    relative_V = np.atleast_2d(np.asarray(relative_V, dtype=np.float64))
    spanner_noise = R**2 * np.asarray(relative_R, dtype=np.float64)
    beta = fit_transfers(V, R, C)
    for _ in range(iterations):
        for row in range(V.shape[0]):
            fitted = beta[row] @ R
            variance = fitted**2 * relative_V[row] + (beta[row][:, None] ** 2 * spanner_noise).sum(axis=0)
            # A feature whose fitted value is zero would get infinite weight, so variances have a floor.
            variance = np.maximum(variance, 1e-6 * max(float(variance.mean()), 1e-300))
            precision = 1.0 / variance
            beta[row] = _solve((R * precision) @ R.T, ((R * precision) @ V[row])[None, :], C)[0]
    return beta


def _solve(gram: NDArray[np.float64], moments: NDArray[np.float64], C: float) -> NDArray[np.float64]:
    """Minimise ``beta G beta - 2 beta c`` for each row ``c`` of ``moments`` (m, k), subject
    to ``sum(beta) = 1`` and ``|beta_j| <= C``."""
    k = gram.shape[0]
    # Equality-constrained optimum: [G 1; 1^T 0] [beta; mu] = [c; 1].
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = gram
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = np.vstack([moments.T, np.ones((1, moments.shape[0]))])
    beta = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k].T

    outside = np.flatnonzero(np.abs(beta).max(axis=1) > C)
    if outside.size:
        logger.debug("%d of %d transfer rows hit the bound C=%g", outside.size, moments.shape[0], C)
        # With G = L L^T, the residual L^T beta - L^-1 c has the same minimiser, so the
        # bounded problem is a least-squares problem with k features.
        factor = _gram_factor(gram)
        scale = _EQUALITY_WEIGHT * max(float(np.sqrt(np.trace(gram))), 1.0)
        design = np.vstack([factor.T, scale * np.ones((1, k))])
        for row in outside:
            projected = np.linalg.lstsq(factor, moments[row], rcond=None)[0]
            target = np.concatenate([projected, [scale]])
            beta[row] = lsq_linear(design, target, bounds=(-C, C), method="bvls").x
    return beta


def _gram_factor(gram: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return ``L`` with ``L L^T = gram`` for a symmetric positive semidefinite ``gram``."""
    values, vectors = np.linalg.eigh(gram)
    return vectors * np.sqrt(np.maximum(values, 0.0))[None, :]
