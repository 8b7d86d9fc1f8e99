"""Numerical rank of a sketch matrix against a measured noise floor.

Notation
--------
k : int
    Number of candidate histories (rows).
F : int
    Number of sketch features (columns).
V : ndarray, shape (k, F)
    Sketch rows, each an estimate of a linear image of a future law.
n : ndarray, shape (k,)
    Samples behind each row.
w : ndarray, shape (F,)
    Column weights ``1 / sqrt(mean feature value)``.
X : ndarray, shape (k, F)
    The whitened matrix ``diag(sqrt(n)) V diag(w)``.
r : int
    Estimated rank.

Scaling rows and columns by positive numbers leaves the rank of the exact matrix unchanged,
but it makes the sampling noise of ``X`` roughly uniform.  A row of frequencies from ``n``
samples has noise of size ``sqrt(p / n)`` in a feature of mean ``p``.  The noise floor is
measured rather than modelled: the samples of every row are split in two by binomial
thinning, and half the difference of the two halves has the same law as the noise of the
full estimate.  Singular values of ``X`` above ``factor`` times the largest singular value
of that difference count towards the rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "RankEstimate",
    "column_weights",
    "estimate_rank_exact",
    "estimate_rank_from_counts",
    "estimate_rank_with_noise",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankEstimate:
    """Rank of a sketch matrix and the evidence behind it.

    Attributes
    ----------
    rank : int
        ``r``.
    singular_values : ndarray, shape (min(k, F),)
        Singular values of the whitened matrix, descending.
    noise_floor : float
        Threshold the singular values were compared with.
    basis : ndarray, shape (F, r)
        Top ``r`` right singular vectors, the subspace the spanner works in.
    """

    rank: int
    singular_values: NDArray[np.float64]
    noise_floor: float
    basis: NDArray[np.float64]


def column_weights(V: NDArray[np.float64], n: NDArray[np.float64], floor: float = 1e-12) -> NDArray[np.float64]:
    """Return ``w = 1 / sqrt(pbar + floor)``, where ``pbar`` is the sample-weighted column mean."""
    pbar = (n[:, None] * np.abs(V)).sum(axis=0) / max(float(n.sum()), 1.0)
    return 1.0 / np.sqrt(pbar + floor)


def estimate_rank_from_counts(
    counts: NDArray[np.float64],
    rng: np.random.Generator,
    max_rank: int | None = None,
    factor: float = 1.5,
    splits: int = 3,
) -> RankEstimate:
    """Estimate the rank of a matrix of empirical frequencies.

    Parameters
    ----------
    counts : ndarray, shape (k, F)
        Row ``i`` counts the features over the ``n_i`` samples of candidate ``i``.
    rng : numpy.random.Generator
        Randomness for the split into halves.
    max_rank : int, optional
        The rank the user gave (``--rank``): used as it is, unless the matrix has fewer
        non-zero singular values.  Without it the rank is estimated from the noise floor.
    factor : float, default 1.5
        Multiple of the noise floor a singular value must pass.
    splits : int, default 3
        Independent splits; the largest noise level is used.

    Returns
    -------
    RankEstimate
    """
    n = counts.sum(axis=1)
    usable = n >= 2
    V = np.where(usable[:, None], counts / np.maximum(n, 1.0)[:, None], 0.0)
    w = column_weights(V, n)
    scale = np.sqrt(n)[:, None] * w[None, :]
    X = V * scale
    _, sigma, Vt = np.linalg.svd(X, full_matrices=False)

    noise = 0.0
    for _ in range(splits):
        half = rng.binomial(counts.astype(np.int64), 0.5).astype(np.float64)
        rest = counts - half
        n1 = np.maximum(half.sum(axis=1), 1.0)
        n2 = np.maximum(rest.sum(axis=1), 1.0)
        E = np.where(usable[:, None], (half / n1[:, None] - rest / n2[:, None]) / 2.0, 0.0) * scale
        noise = max(noise, float(np.linalg.norm(E, 2)))

    return _rank_above_floor(sigma, Vt, factor * noise, max_rank)


def estimate_rank_with_noise(
    X: NDArray[np.float64],
    noise: NDArray[np.float64],
    max_rank: int | None = None,
    factor: float = 1.0,
) -> RankEstimate:
    """Estimate the rank of ``X`` (shape (k, F)) given a matrix with the law of its noise.

    Parameters
    ----------
    X : ndarray, shape (k, F)
        Estimated matrix.
    noise : ndarray, shape (k, F)
        A draw with the same law as ``X`` minus its expectation, such as half the
        difference of two independent half-sample estimates.
    max_rank : int, optional
        The rank the user gave; see :func:`estimate_rank_from_counts`.
    factor : float, default 1.0
        Multiple of the noise's largest singular value a singular value must pass.
    """
    _, sigma, Vt = np.linalg.svd(X, full_matrices=False)
    return _rank_above_floor(sigma, Vt, factor * float(np.linalg.norm(noise, 2)), max_rank)


def _rank_above_floor(
    sigma: NDArray[np.float64], Vt: NDArray[np.float64], floor: float, max_rank: int | None
) -> RankEstimate:
    rank = int(np.sum(sigma > floor)) if max_rank is None else min(max_rank, int(np.sum(sigma > 0)))
    rank = max(rank, 1)
    logger.debug("rank %d: singular values %s, noise floor %.3g", rank, np.round(sigma[:12], 2), floor)
    return RankEstimate(rank, sigma, floor, Vt[:rank].T)


def estimate_rank_exact(
    V: NDArray[np.float64], max_rank: int | None = None, rtol: float = 1e-8
) -> RankEstimate:
    """Estimate the rank of an exactly computed sketch matrix (probability-oracle mode).

    Parameters
    ----------
    V : ndarray, shape (k, F)
    max_rank : int, optional
    rtol : float, default 1e-8
        Singular values below ``rtol`` times the largest are rounding error.
    """
    w = column_weights(V, np.ones(V.shape[0]))
    _, sigma, Vt = np.linalg.svd(V * w[None, :], full_matrices=False)
    floor = rtol * float(sigma[0]) if sigma.size else 0.0
    rank = max(int(np.sum(sigma > floor)), 1)
    if max_rank is not None:
        rank = min(rank, max_rank)
    return RankEstimate(rank, sigma, floor, Vt[:rank].T)
