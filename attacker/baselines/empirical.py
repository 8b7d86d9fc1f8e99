"""The empirical distribution of the samples, smoothed along a prefix tree.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
h : tuple of int
    A history, ``len(h) < H``.
c(h) : int
    Number of samples that start with ``h``; ``c(()) = N``.
eps : float
    Pseudocount added to every next token.

The model's next-token law after ``h`` is ``(c(h o) + eps) / (c(h) + A eps)``; after a
history no sample starts with it is uniform.  The probability of a sequence is the product
of these laws, so the model is normalised by construction, gives every sequence positive
probability when ``eps > 0`` (so KL stays finite), and equals the empirical distribution of
the samples when ``eps = 0``.

The prefix tree is not built.  The distinct samples are kept sorted, so the samples that
start with ``h`` form one block of rows ``[lo, hi)``, and this block is the model's state.
The block of ``h o`` is found by binary search in column ``len(h)`` of that block.  Memory is the
samples themselves, ``m x H`` bytes for ``A <= 256``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attacker.baselines.samples import SampleSet, decode_rows, encode_rows
from shared.model import FloatArray, IntArray, SequenceModel

__all__ = ["DEFAULT_EMPIRICAL_PSEUDOCOUNT", "EmpiricalModel", "fit_empirical"]

logger = logging.getLogger(__name__)

# The Krichevsky-Trofimov pseudocount, the usual choice for sequential prediction.
DEFAULT_EMPIRICAL_PSEUDOCOUNT = 0.5


class EmpiricalModel(SequenceModel):
    """The smoothed empirical distribution of a sample set.

    Parameters
    ----------
    alphabet : sequence of str, length A
    sequences : ndarray of int, shape (m, H)
        Distinct samples in lexicographic order.
    counts : ndarray of int, shape (m,)
        Multiplicity of each row.
    pseudocount : float
        ``eps >= 0``.

    Notes
    -----
    A state is the block ``[lo, hi)`` of rows that start with the history, stored as two
    floats (exact for ``m < 2**53``).
    """

    kind = "empirical"

    def __init__(
        self,
        alphabet: Sequence[str],
        sequences: NDArray[np.integer],
        counts: NDArray[np.integer],
        pseudocount: float = DEFAULT_EMPIRICAL_PSEUDOCOUNT,
    ) -> None:
        rows = np.asarray(sequences)
        super().__init__(alphabet, rows.shape[1] if rows.ndim == 2 else 0)
        if pseudocount < 0 or not np.isfinite(pseudocount):
            raise ValueError(f"pseudocount must be a finite number >= 0, got {pseudocount!r}")
        checked = SampleSet.from_rows(self.alphabet, rows, counts)
        if checked.sequences.shape[0] != rows.shape[0]:
            logger.debug("merged %d repeated rows", rows.shape[0] - checked.sequences.shape[0])
        self.sequences = checked.sequences
        self.counts = checked.counts
        self.pseudocount = float(pseudocount)
        # cumulative[i] = samples in rows 0 .. i-1, so a block [lo, hi) contains
        # cumulative[hi] - cumulative[lo] samples.
        self._cumulative = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.float64)

    @property
    def n(self) -> int:
        """Number of samples ``N``."""
        return int(self.counts.sum())

    def start(self, n: int) -> FloatArray:
        return np.tile([0.0, float(self.sequences.shape[0])], (n, 1))

    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        lo, hi = states[:, 0].astype(np.int64), states[:, 1].astype(np.int64)
        column = self.sequences[:, t]
        bounds = np.stack(
            [_lower_bound(column, lo, hi, o) for o in range(self.alphabet_size)] + [hi], axis=1
        )
        child = self._cumulative[bounds[:, 1:]] - self._cumulative[bounds[:, :-1]]
        total = child.sum(axis=1, keepdims=True)
        eps = self.pseudocount
        with np.errstate(invalid="ignore", divide="ignore"):
            probs: FloatArray = (child + eps) / (total + self.alphabet_size * eps)
        # A history that no sample starts with, with eps = 0, gets the uniform law.
        unseen = (total[:, 0] + self.alphabet_size * eps) == 0
        probs[unseen] = 1.0 / self.alphabet_size
        return probs

    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        lo, hi = states[:, 0].astype(np.int64), states[:, 1].astype(np.int64)
        column = self.sequences[:, t]
        new_lo = _lower_bound(column, lo, hi, tokens)
        new_hi = _lower_bound(column, lo, hi, tokens + 1)
        return np.stack([new_lo, new_hi], axis=1).astype(np.float64)

    def parameters(self) -> dict[str, Any]:
        """Return the JSON-ready parameters of a model file (without the envelope)."""
        return {
            "sequences": encode_rows(self.sequences),
            "counts": self.counts.tolist(),
            "pseudocount": self.pseudocount,
        }

    @classmethod
    def from_parameters(
        cls, alphabet: Sequence[str], horizon: int, data: dict[str, Any]
    ) -> EmpiricalModel:
        """Build the model from the fields written by :meth:`parameters`.

        Raises
        ------
        ValueError
            If a field is missing or does not fit the alphabet and horizon.
        """
        rows = decode_rows(data["sequences"])
        if rows.shape[1] != horizon:
            raise ValueError(f"sequences have {rows.shape[1]} tokens but the horizon is {horizon}")
        return cls(alphabet, rows, np.asarray(data["counts"]), float(data["pseudocount"]))


def _lower_bound(
    column: NDArray[np.integer],
    lo: NDArray[np.int64],
    hi: NDArray[np.int64],
    value: int | NDArray[np.int64],
) -> NDArray[np.int64]:
    """Return, for each block ``[lo_i, hi_i)``, the first row whose token is at least ``value``.

    ``column`` must be sorted within each block.  Every block is bisected at once.
    """
    lo, hi = lo.copy(), hi.copy()
    target = np.broadcast_to(np.asarray(value, dtype=np.int64), lo.shape)
    active = lo < hi
    last = max(column.shape[0] - 1, 0)
    while active.any():
        mid = (lo + hi) // 2
        below = active & (column[np.minimum(mid, last)].astype(np.int64) < target)
        lo = np.where(below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
        active = lo < hi
    return lo


def fit_empirical(
    samples: SampleSet, pseudocount: float = DEFAULT_EMPIRICAL_PSEUDOCOUNT
) -> tuple[EmpiricalModel, dict[str, Any]]:
    """Build the smoothed empirical distribution of ``samples``.

    Returns
    -------
    model : EmpiricalModel
    details : dict
        ``fitted_on`` (all samples), ``distinct`` sequences and the ``pseudocount``.
    """
    model = EmpiricalModel(samples.alphabet, samples.sequences, samples.counts, pseudocount)
    details = {
        "fitted_on": samples.n,
        "distinct": int(samples.sequences.shape[0]),
        "pseudocount": float(pseudocount),
    }
    return model, details
