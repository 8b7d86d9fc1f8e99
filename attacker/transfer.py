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
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import lsq_linear

__all__ = ["fit_transfers"]

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
    k = R.shape[0]
    weights = np.ones(R.shape[1]) if w is None else np.asarray(w, dtype=np.float64)
    Rw = R * weights
    Vw = V * weights

    # Equality-constrained least squares: [G 1; 1^T 0] [beta; mu] = [R_w v_w; 1].
    kkt = np.zeros((k + 1, k + 1))
    kkt[:k, :k] = Rw @ Rw.T
    kkt[:k, k] = 1.0
    kkt[k, :k] = 1.0
    rhs = np.vstack([Rw @ Vw.T, np.ones((1, V.shape[0]))])
    solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    beta = solution[:k].T

    outside = np.flatnonzero(np.abs(beta).max(axis=1) > C)
    if outside.size:
        logger.debug("%d of %d transfer rows hit the bound C=%g", outside.size, V.shape[0], C)
    scale = _EQUALITY_WEIGHT * max(float(np.linalg.norm(Rw)), 1.0)
    design = np.vstack([Rw.T, scale * np.ones((1, k))])
    for row in outside:
        target = np.concatenate([Vw[row], [scale]])
        fit = lsq_linear(design, target, bounds=(-C, C), method="bvls")
        beta[row] = fit.x
    return beta
