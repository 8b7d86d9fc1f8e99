"""Total variation and Kullback-Leibler distances between two sequence models.

Notation
--------
A : int
    Alphabet size, shared by both models.
H : int
    Horizon, shared by both models.
P, Q : SequenceModel
    The reference model (usually the secret one) and the model compared with it (usually a
    clone).  ``P(x)`` is the probability of a full sequence ``x`` in ``Σ^H``.
TV : float
    ``TV(P, Q) = 1/2 sum_x |P(x) - Q(x)| = sum_{x: P(x) > 0} (P(x) - Q(x))_+``.
KL : float
    ``KL(P || Q) = sum_{x: P(x) > 0} P(x) log(P(x) / Q(x))`` in nats; infinite when some
    ``x`` has ``P(x) > 0 = Q(x)``.

The second form of ``TV`` needs only sequences with ``P(x) > 0`` and equals the first when
both laws sum to 1.  :func:`exact_distance` enumerates ``Σ^H`` one position at a time and
drops prefixes of probability zero under ``P``.  :func:`monte_carlo_distance` draws
``x ~ P`` and averages ``(1 - Q(x)/P(x))_+`` and ``log P(x) - log Q(x)``, whose means are
``TV`` and ``KL``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from shared.model import FloatArray, IntArray, SequenceModel

__all__ = [
    "DistanceReport",
    "check_comparable",
    "distance",
    "exact_distance",
    "mc_from_log_probs",
    "monte_carlo_distance",
]

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = 100_000
DEFAULT_MAX_EXACT = 10**6
# Sequences drawn per batch by monte_carlo_distance, to bound memory.
BATCH_SIZE = 65_536


@dataclass(frozen=True)
class DistanceReport:
    """Distances from ``P`` to ``Q`` and how they were computed.

    Attributes
    ----------
    tv : float
        Total variation distance, in [0, 1].
    tv_stderr : float
        Standard error of ``tv``; 0 when exact.
    kl : float
        ``KL(P || Q)`` in nats; ``inf`` when ``Q`` misses a sequence that ``P`` generates.
    kl_stderr : float
        Standard error of ``kl``; 0 when exact, ``inf`` when ``kl`` is infinite.
    method : {"exact", "monte-carlo"}
    sequences : int
        Sequences of positive probability under ``P`` that were summed (exact) or drawn
        (Monte Carlo).
    """

    tv: float
    tv_stderr: float
    kl: float
    kl_stderr: float
    method: Literal["exact", "monte-carlo"]
    sequences: int


def check_comparable(P: SequenceModel, Q: SequenceModel) -> None:
    """Raise ValueError unless ``P`` and ``Q`` have the same alphabet and horizon."""
    if P.alphabet != Q.alphabet:
        raise ValueError(
            f"P has alphabet {list(P.alphabet)} but Q has {list(Q.alphabet)}; distances "
            "need the same token labels in the same order"
        )
    if P.horizon != Q.horizon:
        raise ValueError(
            f"P has horizon {P.horizon} but Q has horizon {Q.horizon}; distances need "
            "models of the same horizon"
        )


def distance(
    P: SequenceModel,
    Q: SequenceModel,
    rng: np.random.Generator,
    n: int = DEFAULT_SAMPLES,
    max_exact: int = DEFAULT_MAX_EXACT,
) -> DistanceReport:
    """Compute TV and KL exactly when ``A^H <= max_exact``, otherwise by Monte Carlo.

    Parameters
    ----------
    P, Q : SequenceModel
    rng : numpy.random.Generator
        Used only by the Monte Carlo method.
    n : int
        Sequences drawn by the Monte Carlo method.
    max_exact : int
        Largest ``A^H`` that is enumerated.
    """
    check_comparable(P, Q)
    if P.alphabet_size**P.horizon <= max_exact:
        return exact_distance(P, Q, max_sequences=max_exact)
    return monte_carlo_distance(P, Q, n, rng)


def exact_distance(
    P: SequenceModel, Q: SequenceModel, max_sequences: int = 10 * DEFAULT_MAX_EXACT
) -> DistanceReport:
    """Compute TV and KL by enumerating every sequence of positive probability under ``P``.

    Each step extends all surviving prefixes by every token at once, so the work is a few
    array operations per position.  Memory grows like ``A^H`` times the state dimension.

    Parameters
    ----------
    P, Q : SequenceModel
        ``Q`` may be any SequenceModel, including a non-linear clone; it is advanced only
        on tokens of positive probability under ``Q``.
    max_sequences : int
        Refuse to enumerate when ``A^H`` is larger.

    Raises
    ------
    ValueError
        If the models are not comparable or ``A^H > max_sequences``.
    """
    check_comparable(P, Q)
    A, H = P.alphabet_size, P.horizon
    if A**H > max_sequences:
        raise ValueError(
            f"A^H = {A}^{H} exceeds max_sequences={max_sequences}; use monte_carlo_distance "
            "or raise max_sequences if memory allows"
        )

    log_p, log_q = _enumerate_log_probs(P, Q)

    p = np.exp(log_p)
    tv = float(np.sum(np.maximum(p - np.exp(log_q), 0.0)))
    if np.all(np.isfinite(log_q)):
        kl = float(np.sum(p * (log_p - log_q)))
    else:
        kl = math.inf
    logger.debug("exact distance over %d sequences: TV=%.6g KL=%.6g", p.size, tv, kl)
    return DistanceReport(tv, 0.0, kl, 0.0, "exact", int(p.size))


def _enumerate_log_probs(P: SequenceModel, Q: SequenceModel) -> tuple[FloatArray, FloatArray]:
    """Return ``log P(x)`` and ``log Q(x)`` for every ``x`` in ``Σ^H`` with ``P(x) > 0``."""
    states_p, states_q = P.start(1), Q.start(1)
    log_p, log_q = np.zeros(1), np.zeros(1)
    for t in range(P.horizon):
        probs_p = P.token_probs(states_p, t)
        probs_q = Q.token_probs(states_q, t)
        parents, tokens = np.nonzero(probs_p > 0)
        with np.errstate(divide="ignore"):
            log_p = log_p[parents] + np.log(probs_p[parents, tokens])
            log_q = log_q[parents] + np.log(probs_q[parents, tokens])
        if t + 1 == P.horizon:
            break
        states_p = P.advance(states_p[parents], t, tokens)
        states_q = _advance_alive(Q, states_q[parents], t, tokens, np.isfinite(log_q))
    return log_p, log_q


def _advance_alive(
    model: SequenceModel, states: FloatArray, t: int, tokens: IntArray, alive: NDArray[np.bool_]
) -> FloatArray:
    """Advance the rows of ``states`` flagged by ``alive`` on their tokens.

    Rows of probability zero advance on their most likely token instead, so later
    next-token laws stay finite and the state size can change between steps, as a
    clone's does.  Their log-probability is already ``-inf``.
    """
    if alive.all():
        return model.advance(states, t, tokens)
    likely = np.argmax(model.token_probs(states, t), axis=1)
    return model.advance(states, t, np.where(alive, tokens, likely))


def monte_carlo_distance(
    P: SequenceModel, Q: SequenceModel, n: int, rng: np.random.Generator
) -> DistanceReport:
    """Estimate TV and KL from ``n`` sequences drawn from ``P``.

    Parameters
    ----------
    P, Q : SequenceModel
    n : int
        Number of sequences, at least 2.
    rng : numpy.random.Generator

    Returns
    -------
    DistanceReport
        With standard errors ``std / sqrt(n)``.
    """
    check_comparable(P, Q)
    if n < 2:
        raise ValueError(f"n must be at least 2 to estimate a standard error, got {n}")
    log_p = np.empty(n)
    log_q = np.empty(n)
    for start in range(0, n, BATCH_SIZE):
        stop = min(start + BATCH_SIZE, n)
        x = P.sample((), stop - start, rng)
        log_p[start:stop] = P.log_prob(x)
        log_q[start:stop] = Q.log_prob(x)
    return mc_from_log_probs(log_p, log_q)


def mc_from_log_probs(log_p: ArrayLike, log_q: ArrayLike) -> DistanceReport:
    """Estimate TV and KL from log-probabilities of sequences drawn from ``P``.

    Parameters
    ----------
    log_p : array_like of float, shape (n,)
        ``log P(x_i)`` in nats for ``x_i ~ P``; finite, since ``P`` generated ``x_i``.
    log_q : array_like of float, shape (n,)
        ``log Q(x_i)`` in nats; ``-inf`` where ``Q(x_i) = 0``.

    Returns
    -------
    DistanceReport
        ``method = "monte-carlo"``; ``kl`` and ``kl_stderr`` are ``inf`` if any ``log_q`` is
        ``-inf``.

    Raises
    ------
    ValueError
        If the arrays are not 1-D of equal length ``n >= 2``, a ``log_p`` is not finite, or a
        ``log_q`` is NaN or ``+inf``.
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    if log_p.ndim != 1 or log_p.shape != log_q.shape or log_p.size < 2:
        raise ValueError(
            f"log_p and log_q must be 1-D arrays of equal length >= 2, got shapes "
            f"{log_p.shape} and {log_q.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(log_p))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"log_p[{i}] is {log_p[i]}; sequences must be drawn from P, so every log_p is finite"
        )
    bad = np.flatnonzero(np.isnan(log_q) | (log_q == np.inf))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"log_q[{i}] is {log_q[i]}; it must be a log-probability <= 0 or -inf")

    n = log_p.size
    with np.errstate(over="ignore"):
        tv_terms = np.maximum(1.0 - np.exp(log_q - log_p), 0.0)
    tv = float(tv_terms.mean())
    tv_stderr = float(tv_terms.std(ddof=1) / math.sqrt(n))
    kl_terms = log_p - log_q
    if np.all(np.isfinite(kl_terms)):
        kl = float(kl_terms.mean())
        kl_stderr = float(kl_terms.std(ddof=1) / math.sqrt(n))
    else:
        kl = kl_stderr = math.inf
    return DistanceReport(tv, tv_stderr, kl, kl_stderr, "monte-carlo", n)
