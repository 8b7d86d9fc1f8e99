"""Full-sequence samples bought for the baselines, stored as distinct rows with counts.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon; every sample is a full sequence of ``H`` tokens drawn from the empty prompt.
N : int
    Number of samples.
m : int
    Number of distinct samples.

The baselines spend the learner's unit of cost: one sample is one completion of the empty
prompt, bought through an :class:`~attacker.oracle.Oracle` and charged to its ledger.
Samples are kept as distinct rows in lexicographic order with their counts.  The rows use
the smallest unsigned integer type that can represent ``A`` token ids, because budgets of
tens of millions of samples would not fit in memory as one int64 row per sample.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attacker.oracle import Oracle

__all__ = [
    "BUY_CHUNK_SAMPLES",
    "SAMPLES_PHASE",
    "SampleSet",
    "buy_samples",
    "decode_rows",
    "encode_rows",
]

logger = logging.getLogger(__name__)

# Samples bought per oracle call, so only one chunk is held as int64 rows at a time.
BUY_CHUNK_SAMPLES = 1_000_000
SAMPLES_PHASE = "baseline-samples"


def _token_dtype(alphabet_size: int) -> np.dtype:
    if alphabet_size <= 1 << 8:
        return np.dtype(np.uint8)
    if alphabet_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class SampleSet:
    """A multiset of full sequences: distinct rows in lexicographic order and their counts.

    Attributes
    ----------
    alphabet : tuple of str
        Token labels, length ``A``.
    sequences : ndarray of unsigned int, shape (m, H)
        Distinct sequences, sorted lexicographically.
    counts : ndarray of int64, shape (m,)
        Number of samples equal to each row, all positive.
    """

    alphabet: tuple[str, ...]
    sequences: NDArray[np.integer]
    counts: NDArray[np.int64]

    @property
    def horizon(self) -> int:
        """``H``."""
        return int(self.sequences.shape[1])

    @property
    def n(self) -> int:
        """``N``, the number of samples."""
        return int(self.counts.sum())

    @classmethod
    def from_rows(
        cls,
        alphabet: Sequence[str],
        rows: NDArray[np.integer],
        counts: NDArray[np.integer] | None = None,
    ) -> SampleSet:
        """Merge equal rows of ``rows`` (shape (k, H)) and sort them.

        Parameters
        ----------
        alphabet : sequence of str
        rows : ndarray of int, shape (k, H)
            Token ids in ``0 .. A-1``.
        counts : ndarray of int, shape (k,), optional
            Multiplicity of each row; default 1 each.

        Raises
        ------
        ValueError
            If the shapes disagree, a token is out of range, or a count is not positive.
        """
        A = len(alphabet)
        array = np.asarray(rows)
        if array.ndim != 2 or array.shape[1] < 1:
            raise ValueError(f"rows must have shape (k, H) with H >= 1, got {array.shape}")
        weights = (
            np.ones(array.shape[0], dtype=np.int64)
            if counts is None
            else np.asarray(counts, dtype=np.int64)
        )
        if weights.shape != (array.shape[0],):
            raise ValueError(f"counts has shape {weights.shape}, expected ({array.shape[0]},)")
        if weights.size and weights.min() < 1:
            raise ValueError("every count must be at least 1; drop rows with count 0")
        if array.size and (array.min() < 0 or array.max() >= A):
            raise ValueError(f"rows contain a token outside 0..{A - 1}; A={A}")
        distinct, inverse = _unique_rows(np.ascontiguousarray(array, dtype=_token_dtype(A)))
        merged = np.bincount(inverse, weights=weights, minlength=distinct.shape[0])
        return cls(tuple(alphabet), distinct, np.rint(merged).astype(np.int64))

    @classmethod
    def concatenate(cls, parts: Sequence[SampleSet]) -> SampleSet:
        """Merge several sample sets over the same alphabet and horizon."""
        if not parts:
            raise ValueError("concatenate needs at least one sample set")
        rows = np.concatenate([part.sequences for part in parts])
        counts = np.concatenate([part.counts for part in parts])
        return cls.from_rows(parts[0].alphabet, rows, counts)

    def rows_at(self, indices: NDArray[np.integer]) -> NDArray[np.int64]:
        """Return samples number ``indices`` of the ``N`` samples, counting repeats.

        Parameters
        ----------
        indices : ndarray of int, shape (k,)
            Values in ``0 .. N-1``; a random permutation of them gives a random subset.

        Returns
        -------
        ndarray of int64, shape (k, H)
        """
        chosen = np.asarray(indices, dtype=np.int64)
        if chosen.size and (chosen.min() < 0 or chosen.max() >= self.n):
            raise ValueError(f"sample indices must lie in 0..{self.n - 1}")
        rows = np.searchsorted(np.cumsum(self.counts), chosen, side="right")
        return self.sequences[rows].astype(np.int64)


def _unique_rows(rows: NDArray[np.integer]) -> tuple[NDArray[np.integer], NDArray[np.intp]]:
    """Return the distinct rows in lexicographic order and each row's index among them."""
    H = rows.shape[1]
    if rows.dtype.itemsize == 1:
        # Byte strings compare like token sequences, and sorting them is much faster than
        # sorting the rows of a 2-D array.
        keys = rows.view(np.dtype((np.void, H))).ravel()
        distinct, inverse = np.unique(keys, return_inverse=True)
        return distinct.view(rows.dtype).reshape(-1, H), inverse.ravel()
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    return distinct, inverse.ravel()


def buy_samples(
    oracle: Oracle, n: int, chunk_samples: int = BUY_CHUNK_SAMPLES
) -> SampleSet:
    """Buy ``n`` full sequences from the empty prompt, charged to phase ``baseline-samples``.

    Parameters
    ----------
    oracle : Oracle
    n : int
        Number of samples, at least 1.
    chunk_samples : int
        Samples per call to :meth:`Oracle.complete`.

    Raises
    ------
    BudgetExceededError
        If ``n`` samples do not fit in the oracle's budget; nothing is bought then.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 sample, got {n}")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be at least 1, got {chunk_samples}")
    oracle.ledger.reserve(n)
    parts = []
    bought = 0
    with oracle.ledger.in_phase(SAMPLES_PHASE):
        while bought < n:
            size = min(chunk_samples, n - bought)
            completions = oracle.complete([()], size, oracle.horizon)[0]
            part = SampleSet.from_rows(oracle.alphabet, completions.futures, completions.counts)
            parts.append(part)
            bought += size
            logger.info("bought %d of %d samples", bought, n)
    return SampleSet.concatenate(parts)


def encode_rows(rows: NDArray[np.integer]) -> dict[str, Any]:
    """Pack a 2-D array of non-negative token ids into a JSON-ready dictionary.

    The bytes of the array in its smallest unsigned type (little-endian, row-major) are
    written in base64, about 1.4 bytes per token for ``A <= 256``, where a JSON list of
    numbers takes about 3.
    """
    array = np.asarray(rows)
    if array.ndim != 2:
        raise ValueError(f"rows must be a 2-D array, got shape {array.shape}")
    top = int(array.max()) + 1 if array.size else 1
    packed = np.ascontiguousarray(array, dtype=_token_dtype(top).newbyteorder("<"))
    return {
        "dtype": packed.dtype.name,
        "shape": list(packed.shape),
        "base64": base64.b64encode(packed.tobytes()).decode("ascii"),
    }


def decode_rows(data: Mapping[str, Any]) -> NDArray[np.int64]:
    """Unpack a dictionary written by :func:`encode_rows`.

    Raises
    ------
    ValueError
        If a field is missing, the type is not an unsigned or int64 type, or the byte
        count does not match the shape.
    """
    try:
        dtype = np.dtype(str(data["dtype"])).newbyteorder("<")
        shape = tuple(int(n) for n in data["shape"])
        raw = base64.b64decode(str(data["base64"]), validate=True)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"packed rows need dtype, shape and base64 fields that parse: {err}"
        ) from err
    if dtype.name not in ("uint8", "uint16", "int64") or len(shape) != 2:
        raise ValueError(
            f"packed rows have dtype {dtype.name} and shape {shape}; expected uint8, uint16 "
            "or int64 and a shape (m, H)"
        )
    if len(raw) != shape[0] * shape[1] * dtype.itemsize:
        raise ValueError(
            f"packed rows hold {len(raw)} bytes but shape {shape} of {dtype.name} needs "
            f"{shape[0] * shape[1] * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.int64)
