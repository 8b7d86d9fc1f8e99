"""An n-gram model of the samples with add-one (Laplace) smoothing.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
k : int
    Order: the next token depends on the last ``k`` tokens, or on the whole history while
    it is shorter than ``k``.
c(u) : int
    Number of times the context ``u`` occurs in the samples, counted at every position.
alpha : float
    Pseudocount, 1 for add-one smoothing.

The next-token law after a context ``u`` is ``(c(u o) + alpha) / (c(u) + A alpha)``.  Contexts
shorter than ``k`` occur only at the start of a sequence, so the first ``k`` positions keep
their own laws.  From position ``k`` on, the law does not depend on the position.

A context of ``j <= k`` tokens is the integer ``offset_j + sum_i u_i A^(j-1-i)``, with
``offset_j = A^0 + ... + A^(j-1)``; the counts are one dense (contexts, A) table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attacker.baselines.samples import SampleSet
from shared.model import FloatArray, IntArray, SequenceModel

__all__ = ["DEFAULT_NGRAM_ORDER", "DEFAULT_NGRAM_PSEUDOCOUNT", "MAX_NGRAM_CELLS", "NgramModel",
           "fit_ngram"]

logger = logging.getLogger(__name__)

DEFAULT_NGRAM_ORDER = 2
DEFAULT_NGRAM_PSEUDOCOUNT = 1.0
# Largest count table (contexts x A) that is built: 8 bytes a cell, so 80 MB.
MAX_NGRAM_CELLS = 10_000_000


def _offsets(A: int, k: int) -> NDArray[np.int64]:
    """Return ``offset_0 .. offset_k`` and the number of contexts as the last entry."""
    sizes = [A**j for j in range(k + 1)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


class NgramModel(SequenceModel):
    """An order-``k`` Markov model of the tokens with smoothed counts.

    Parameters
    ----------
    alphabet : sequence of str, length A
    horizon : int
        ``H``.
    order : int
        ``k >= 0``.
    counts : ndarray of float, shape (contexts, A)
        ``c(u o)`` for each context ``u`` of up to ``k`` tokens.
    pseudocount : float
        ``alpha > 0``.

    Notes
    -----
    The state is the integer value of the last ``min(t, k)`` tokens, stored as a float.
    """

    kind = "ngram"

    def __init__(
        self,
        alphabet: Sequence[str],
        horizon: int,
        order: int,
        counts: NDArray[np.floating],
        pseudocount: float = DEFAULT_NGRAM_PSEUDOCOUNT,
    ) -> None:
        super().__init__(alphabet, horizon)
        A = self.alphabet_size
        if order < 0:
            raise ValueError(f"order must be >= 0, got {order}")
        if not pseudocount > 0 or not np.isfinite(pseudocount):
            raise ValueError(f"pseudocount must be a finite number > 0, got {pseudocount!r}")
        self.order = int(order)
        self._offsets = _offsets(A, self.order)
        table = np.asarray(counts, dtype=np.float64)
        expected = (int(self._offsets[-1]), A)
        if table.shape != expected:
            raise ValueError(f"counts has shape {table.shape}, expected {expected} for k={order}")
        if not np.all(np.isfinite(table)) or table.min(initial=0.0) < 0:
            raise ValueError("counts must be finite and non-negative")
        self.counts = table
        self.pseudocount = float(pseudocount)
        self._laws = (table + pseudocount) / (table.sum(axis=1, keepdims=True) + A * pseudocount)

    def start(self, n: int) -> FloatArray:
        return np.zeros((n, 1))

    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        rows = self._offsets[min(t, self.order)] + states[:, 0].astype(np.int64)
        laws: FloatArray = self._laws[rows]
        return laws

    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        value = states[:, 0].astype(np.int64) * self.alphabet_size + tokens
        if t + 1 > self.order:
            value %= self.alphabet_size**self.order
        return value[:, None].astype(np.float64)

    def parameters(self) -> dict[str, Any]:
        """Return the JSON-ready parameters of a model file (without the envelope)."""
        return {
            "order": self.order,
            "counts": self.counts.tolist(),
            "pseudocount": self.pseudocount,
        }

    @classmethod
    def from_parameters(
        cls, alphabet: Sequence[str], horizon: int, data: dict[str, Any]
    ) -> NgramModel:
        """Build the model from the fields written by :meth:`parameters`."""
        counts = np.asarray(data["counts"], dtype=np.float64)
        return cls(alphabet, horizon, int(data["order"]), counts, float(data["pseudocount"]))


def fit_ngram(
    samples: SampleSet,
    order: int = DEFAULT_NGRAM_ORDER,
    pseudocount: float = DEFAULT_NGRAM_PSEUDOCOUNT,
) -> tuple[NgramModel, dict[str, Any]]:
    """Count the order-``k`` contexts of ``samples`` and build the smoothed model.

    Raises
    ------
    ValueError
        If the count table would have more than ``MAX_NGRAM_CELLS`` cells.
    """
    A, H = len(samples.alphabet), samples.horizon
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    offsets = _offsets(A, order)
    cells = int(offsets[-1]) * A
    if cells > MAX_NGRAM_CELLS:
        raise ValueError(
            f"an order-{order} model over A={A} tokens needs {cells:,} counts, more than "
            f"{MAX_NGRAM_CELLS:,}; lower the order"
        )

    rows = samples.sequences.astype(np.int64)
    weights = samples.counts.astype(np.float64)
    flat = np.zeros(cells)
    value = np.zeros(rows.shape[0], dtype=np.int64)
    for t in range(H):
        context = offsets[min(t, order)] + value
        flat += np.bincount(context * A + rows[:, t], weights=weights, minlength=cells)
        value = value * A + rows[:, t]
        if t + 1 > order:
            value %= A**order

    model = NgramModel(samples.alphabet, H, order, flat.reshape(-1, A), pseudocount)
    details = {"fitted_on": samples.n, "order": int(order), "pseudocount": float(pseudocount)}
    return model, details
