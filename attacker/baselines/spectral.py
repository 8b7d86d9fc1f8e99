"""Spectral learning of an HMM from the moments of token pairs and triples.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon, at least 3.
d : int
    Dimension of the learned operators: at most ``S`` requested states and ``A``, and
    lower when ``P21`` has fewer singular values above the sampling noise.
P1 : ndarray, shape (A,)
    ``P1[i] = P(x_1 = i)``, the law of the first token.
Pbar1 : ndarray, shape (A,)
    ``Pbar1[i] = P(x_s = i)`` averaged over the window starts ``s = 1 .. H-2``.
P21 : ndarray, shape (A, A)
    ``P21[i, j] = P(x_{s+1} = i, x_s = j)`` averaged over the same ``s``.
P3x1 : ndarray, shape (A, A, A)
    ``P3x1[x][i, j] = P(x_{s+2} = i, x_{s+1} = x, x_s = j)`` averaged over the same ``s``.
U : ndarray, shape (A, d)
    Top ``d`` left singular vectors of ``P21``.
b1, binf : ndarray, shape (d,)
    ``b1 = U^T P1`` and ``binf = (P21^T U)^+ Pbar1``.
B : ndarray, shape (A, d, d)
    ``B[x] = U^T P3x1[x] (U^T P21)^+``.

Hsu, Kakade and Zhang show that ``P(x_1 .. x_t) = binf^T B[x_t] ... B[x_1] b1`` for an HMM
with ``d`` states whose emission matrix has rank ``d`` and whose transition matrix has
rank ``d``.  They estimate all moments from the first three tokens.  Here the pair and
triple moments average all windows of consecutive tokens, which uses ``H - 2`` times more
data.  That is still exact for an HMM whose transitions and emissions do not change with
time, even when its hidden-state law does.  The averages then equal the moments of an HMM
started from the average hidden-state law ``pibar``.  ``binf = (U^T O)^{-T} 1`` only uses
that ``Pbar1 = O pibar`` and ``P21 = O T diag(pibar) O^T`` come from the same ``pibar``.  ``b1``
still uses the true first-token law.

The learned operators define a weighted automaton whose "probabilities" can be negative.
:class:`SpectralModel` turns it into a normalised distribution: the next-token law is the
automaton's law with negative values set to 0, renormalised, and mixed with ``floor`` of
the uniform law.  Conditioning that law on a token is not the same as conditioning the
automaton, so the model's probability of a sequence is near the automaton's only where
the automaton is nearly a proper distribution.

References
----------
D. Hsu, S. M. Kakade and T. Zhang, "A spectral algorithm for learning hidden Markov
models", Journal of Computer and System Sciences 78(5), 1460-1480, 2012 (COLT 2009);
Algorithm 1 and Lemma 3.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attacker.baselines.samples import SampleSet
from shared.model import FloatArray, IntArray, SequenceModel

__all__ = [
    "DEFAULT_SPECTRAL_FLOOR",
    "NOISE_FLOOR_FACTOR",
    "SpectralModel",
    "estimate_moments",
    "fit_spectral",
]

logger = logging.getLogger(__name__)

# Uniform mass mixed into every next-token law, so every sequence keeps positive probability.
DEFAULT_SPECTRAL_FLOOR = 1e-3
# Singular values of P21 at most NOISE_FLOOR_FACTOR times its measured noise are dropped.
# The noise is measured by splitting the samples in two by binomial thinning: half the
# difference of the two estimates of P21 has about the law of the error E of the full
# estimate, and by Weyl's inequality no singular value moves by more than ||E||_2.  The
# factor 3 is an engineering choice.  The worst-case bound ||E||_F <= 1 / sqrt(N) was tried
# first and dropped real states: on english-words with 2,000,000 samples it kept d = 5 of 8
# and scored TV 0.49, against 0.18 with all 8.
NOISE_FLOOR_FACTOR = 3.0
# A state whose normaliser binf^T B[x] b is below this fraction of |B[x] b| has lost its
# sign, so it is rescaled by its 1-norm instead of divided by that normaliser.
_RELATIVE_NORMALISER = 1e-12


class SpectralModel(SequenceModel):
    """The observable-operator model learned by the spectral algorithm, with clipped laws.

    Parameters
    ----------
    alphabet : sequence of str, length A
    horizon : int
        ``H``.
    b1 : array_like, shape (d,)
    binf : array_like, shape (d,)
    B : array_like, shape (A, d, d)
    floor : float
        Uniform mass in ``[0, 1)`` mixed into every next-token law.

    Notes
    -----
    The state is the column vector ``b_t = B[x_t] ... B[x_1] b1``, divided by
    ``binf^T b_t`` (the automaton's probability of the history), and stored as a row.
    """

    kind = "spectral"

    def __init__(
        self,
        alphabet: Sequence[str],
        horizon: int,
        b1: NDArray[np.floating],
        binf: NDArray[np.floating],
        B: NDArray[np.floating],
        floor: float = DEFAULT_SPECTRAL_FLOOR,
    ) -> None:
        super().__init__(alphabet, horizon)
        self.b1 = np.asarray(b1, dtype=np.float64)
        self.binf = np.asarray(binf, dtype=np.float64)
        self.B = np.asarray(B, dtype=np.float64)
        d = self.b1.shape[0] if self.b1.ndim == 1 else -1
        if d < 1 or self.binf.shape != (d,) or self.B.shape != (self.alphabet_size, d, d):
            raise ValueError(
                f"spectral shapes do not fit A={self.alphabet_size}: b1 {self.b1.shape}, binf "
                f"{self.binf.shape} and B {self.B.shape}; expected (d,), (d,) and (A, d, d)"
            )
        for name, array in (("b1", self.b1), ("binf", self.binf), ("B", self.B)):
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} contains a value that is not finite")
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor must lie in [0, 1), got {floor!r}")
        self.floor = float(floor)
        # (d, A): column x is B[x]^T binf, so the automaton's next-token values of a batch
        # of states are one product.
        self._scores = np.einsum("xij,i->jx", self.B, self.binf)

    @property
    def dimension(self) -> int:
        """``d``."""
        return int(self.b1.shape[0])

    def start(self, n: int) -> FloatArray:
        return np.repeat(self._normalised(self.b1[None, :]), n, axis=0)

    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        values = np.clip(states @ self._scores, 0.0, None)
        total = values.sum(axis=1, keepdims=True)
        A = self.alphabet_size
        with np.errstate(invalid="ignore", divide="ignore"):
            laws = np.where(total > 0, values / total, 1.0 / A)
        mixed: FloatArray = (1.0 - self.floor) * laws + self.floor / A
        return mixed

    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        new = np.empty_like(states)
        for x in np.unique(tokens):
            rows = tokens == x
            new[rows] = states[rows] @ self.B[x].T
        return self._normalised(new)

    def _normalised(self, states: FloatArray) -> FloatArray:
        """Divide each state by ``binf^T b``, or by its 1-norm where that is nearly 0."""
        normaliser = states @ self.binf
        size = np.abs(states).sum(axis=1)
        weak = np.abs(normaliser) <= _RELATIVE_NORMALISER * size * np.abs(self.binf).max()
        divisor = np.where(weak, size, normaliser)
        divisor = np.where(divisor == 0, 1.0, divisor)
        normalised: FloatArray = states / divisor[:, None]
        return normalised

    def parameters(self) -> dict[str, Any]:
        """Return the JSON-ready parameters of a model file (without the envelope)."""
        return {
            "b1": self.b1.tolist(),
            "binf": self.binf.tolist(),
            "B": self.B.tolist(),
            "floor": self.floor,
        }

    @classmethod
    def from_parameters(
        cls, alphabet: Sequence[str], horizon: int, data: dict[str, Any]
    ) -> SpectralModel:
        """Build the model from the fields written by :meth:`parameters`."""
        return cls(alphabet, horizon, np.asarray(data["b1"]), np.asarray(data["binf"]),
                   np.asarray(data["B"]), float(data["floor"]))


def estimate_moments(
    samples: SampleSet, pooled: bool = True
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Estimate ``P1``, ``Pbar1``, ``P21`` and ``P3x1`` from the sample frequencies.

    Parameters
    ----------
    samples : SampleSet
        Full sequences, ``H >= 3``.
    pooled : bool
        Average the windows starting at every position ``s = 1 .. H-2``; with False, use
        only the first window (``Pbar1 = P1``).

    Returns
    -------
    P1 : ndarray, shape (A,)
    Pbar1 : ndarray, shape (A,)
    P21 : ndarray, shape (A, A)
    P3x1 : ndarray, shape (A, A, A)
        Indexed ``[x, i, j]`` as in the module docstring.
    """
    A, H = len(samples.alphabet), samples.horizon
    if H < 3:
        raise ValueError(f"the spectral baseline needs H >= 3 to see token triples, got H={H}")
    x = samples.sequences.astype(np.int64)
    weights = samples.counts.astype(np.float64)
    starts = range(H - 2) if pooled else range(1)
    windows = float(samples.n * len(starts))

    P1 = np.bincount(x[:, 0], weights=weights, minlength=A) / samples.n
    Pbar1 = np.zeros(A)
    pairs = np.zeros(A * A)
    triples = np.zeros(A * A * A)
    for s in starts:
        Pbar1 += np.bincount(x[:, s], weights=weights, minlength=A)
        pairs += np.bincount(x[:, s + 1] * A + x[:, s], weights=weights, minlength=A * A)
        index = (x[:, s + 2] * A + x[:, s + 1]) * A + x[:, s]
        triples += np.bincount(index, weights=weights, minlength=A**3)
    P21 = pairs.reshape(A, A) / windows
    # triples is indexed [i, x, j]; move the middle token first.
    P3x1 = triples.reshape(A, A, A).transpose(1, 0, 2) / windows
    return P1, Pbar1 / windows, P21, P3x1


def fit_spectral(
    samples: SampleSet,
    states: int,
    pooled: bool = True,
    floor: float = DEFAULT_SPECTRAL_FLOOR,
    rng: np.random.Generator | None = None,
) -> tuple[SpectralModel, dict[str, Any]]:
    """Learn the observable operators of an HMM with ``states`` hidden states.

    Parameters
    ----------
    samples : SampleSet
        Full sequences, ``H >= 3``.
    states : int
        ``S``.  The operators have dimension ``d``: the number of singular values of
        ``P21`` above ``NOISE_FLOOR_FACTOR`` times its measured noise, at most ``S`` and ``A`` (``P21`` has
        rank at most ``A``), and at least 1.
    pooled : bool
        See :func:`estimate_moments`.
    floor : float
        See :class:`SpectralModel`.
    rng : numpy.random.Generator, optional
        Splits the samples in two to measure the noise; default ``default_rng(0)``.

    Returns
    -------
    model : SpectralModel
    details : dict
        ``fitted_on``, the dimension ``d`` and the singular values of ``P21``.

    References
    ----------
    Hsu, Kakade and Zhang (2012), Algorithm 1.
    """
    if states < 1:
        raise ValueError(f"states must be at least 1, got {states}")
    A = len(samples.alphabet)
    P1, Pbar1, P21, P3x1 = estimate_moments(samples, pooled)
    left, singular_values, _ = np.linalg.svd(P21)
    noise_floor = NOISE_FLOOR_FACTOR * _pair_moment_noise(samples, pooled, rng or np.random.default_rng(0))
    d = max(1, min(states, int(np.sum(singular_values > noise_floor))))
    if d < states:
        logger.warning(
            "the spectral baseline keeps d=%d of the %d states asked: P21 has A=%d singular "
            "values, of which %d exceed the noise floor %.3g",
            d, states, A, int(np.sum(singular_values > noise_floor)), noise_floor,
        )
    U = left[:, :d]
    b1 = U.T @ P1
    binf = np.linalg.pinv(P21.T @ U) @ Pbar1
    projected_inverse = np.linalg.pinv(U.T @ P21)
    B = np.stack([U.T @ P3x1[x] @ projected_inverse for x in range(A)])

    model = SpectralModel(samples.alphabet, samples.horizon, b1, binf, B, floor)
    details = {
        "fitted_on": samples.n,
        "dimension": d,
        "noise_floor": float(noise_floor),
        "pooled_windows": bool(pooled),
        "singular_values": [float(v) for v in singular_values],
    }
    return model, details


def _pair_moment_noise(samples: SampleSet, pooled: bool, rng: np.random.Generator) -> float:
    """Estimate the spectral norm of the sampling error of ``P21`` from a split into halves."""
    first = rng.binomial(samples.counts, 0.5)
    halves = []
    for counts in (first, samples.counts - first):
        keep = counts > 0
        if not keep.any():
            return 0.0
        half = SampleSet(samples.alphabet, samples.sequences[keep], counts[keep].astype(np.int64))
        halves.append(estimate_moments(half, pooled)[2])
    return float(np.linalg.norm((halves[0] - halves[1]) / 2.0, 2))
