"""Distance between the secret model ``P`` behind a server and a clone ``Q``.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
x : sequence of int, length H
    A full sequence.
P, Q : distributions over ``Σ^H``
    The secret model (scored by the server's judge) and the clone (any sequence model).

Exact scores enumerate the sequences with ``P(x) > 0`` when ``A^H`` is at most
``max_exact``: ``TV = Σ_x max(P(x) - Q(x), 0)`` and ``KL = Σ_x P(x) log(P(x) / Q(x))``,
with stderr 0.
Otherwise Monte Carlo over ``x ~ P`` drawn from the server:
``TV = E[(1 - Q(x)/P(x))_+]`` and ``KL = E[log P(x) - log Q(x)]``, with standard errors.
Both need the server's admin key, which the attack never spends.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from attacker.oracle import Completions
from shared.distances import DistanceReport, distance, mc_from_log_probs
from shared.model import SequenceModel
from shared.protocol import MAX_SEED

__all__ = [
    "Judge",
    "evaluate",
    "evaluate_local",
    "report_to_dict",
    "tv_upper95",
]

logger = logging.getLogger(__name__)

# The two-sided 95% normal quantile: tv + 1.96 stderr is the upper end of the usual
# 95% confidence interval.
_Z95 = 1.96


class Judge(Protocol):
    """Scores under the secret model: what :class:`attacker.client.HttpJudge` provides."""

    alphabet: tuple[str, ...]
    horizon: int

    def judge_log_probs(self, sequences: NDArray[np.integer]) -> NDArray[np.float64]:
        """Return ``log P(x)`` of each row of ``sequences`` (shape (N, H)), ``-inf`` for 0."""
        ...

    def sample_reference(self, n: int, seed: int | None = None) -> Completions:
        """Draw ``n`` sequences ``x ~ P`` as distinct rows with counts."""
        ...


def tv_upper95(report: DistanceReport) -> float:
    """Return the upper end of the 95% confidence interval of the TV, ``tv + 1.96 stderr``."""
    return float(report.tv + _Z95 * report.tv_stderr)


def report_to_dict(report: DistanceReport) -> dict[str, float | int | str]:
    """Return a JSON-ready summary; an infinite KL becomes the string ``"inf"``."""

    def number(value: float) -> float | str:
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return float(value)

    return {
        "tv": number(report.tv),
        "tv_stderr": number(report.tv_stderr),
        "tv_upper95": number(tv_upper95(report)),
        "kl": number(report.kl),
        "kl_stderr": number(report.kl_stderr),
        "method": report.method,
        "sequences": int(report.sequences),
    }


def evaluate(
    model: SequenceModel,
    judge: Judge,
    n: int,
    rng: np.random.Generator,
    max_exact: int = 10**6,
) -> DistanceReport:
    """Score ``model`` (the clone ``Q``) against the server's secret ``P``.

    Parameters
    ----------
    model : SequenceModel
        The clone, or any model over the same alphabet and horizon.
    judge : Judge
        Exact ``log P`` and free samples from ``P``, such as an ``HttpJudge``.
    n : int
        Reference sequences for the Monte Carlo estimate; unused when exact.
    rng : numpy.random.Generator
        Chooses the seed of the reference draw.
    max_exact : int, default 10**6
        Enumerate ``Σ^H`` when ``A^H`` is at most this.

    Returns
    -------
    DistanceReport
        ``method`` is ``"exact"`` or ``"monte-carlo"``.  ``sequences`` counts the
        sequences with ``P(x) > 0`` that were summed, or the reference sequences drawn.

    Raises
    ------
    ValueError
        If the model's alphabet or horizon differs from the server's, or ``n < 2`` for
        Monte Carlo.
    """
    A, H = len(judge.alphabet), judge.horizon
    if (tuple(model.alphabet), model.horizon) != (tuple(judge.alphabet), H):
        raise ValueError(
            f"model has alphabet {list(model.alphabet)} and H={model.horizon} but the "
            f"server's model has {list(judge.alphabet)} and H={H}; score a clone of this "
            "server's model"
        )
    if A**H <= max_exact:
        return _evaluate_exact(model, judge)
    if n < 2:
        raise ValueError(f"Monte Carlo needs at least 2 reference sequences, got n={n}")
    return _evaluate_monte_carlo(model, judge, n, rng)


def _evaluate_exact(model: SequenceModel, judge: Judge) -> DistanceReport:
    """Sum the exact TV and KL terms over every ``x`` with ``P(x) > 0``.

    Sequences are enumerated through a prefix tree: each level extends the surviving
    prefixes by every token, the judge scores the new prefixes, and prefixes with
    ``P = 0`` are dropped.  The clone advances once per prefix, not once per sequence
    and step.
    """
    A, H = len(judge.alphabet), judge.horizon
    prefixes = np.zeros((1, 0), dtype=np.int64)
    log_p = log_q = np.zeros(1)
    states = model.start(1)
    for t in range(H):
        probs = model.token_probs(states, t)
        parents = np.repeat(np.arange(prefixes.shape[0]), A)
        tokens = np.tile(np.arange(A, dtype=np.int64), prefixes.shape[0])
        children = np.concatenate([prefixes[parents], tokens[:, None]], axis=1)
        log_p = judge.judge_log_probs(children)

        kept = np.isfinite(log_p)
        parents, tokens, prefixes, log_p = parents[kept], tokens[kept], children[kept], log_p[kept]
        with np.errstate(divide="ignore"):
            log_q = log_q[parents] + np.log(probs[parents, tokens])
        if t + 1 < H:
            # Rows with Q = 0 advance on a token Q can emit, so every state stays valid;
            # their log Q is already -inf.
            safe = np.where(np.isfinite(log_q), tokens, np.argmax(probs[parents], axis=1))
            states = model.advance(states[parents], t, safe)
        logger.debug("level %d: %d prefixes with P > 0", t + 1, prefixes.shape[0])

    p = np.exp(log_p)
    if abs(float(p.sum()) - 1.0) > 1e-6:
        logger.warning("the judge's probabilities sum to %.9f over all sequences, not 1", p.sum())
    tv = float(np.maximum(p - np.exp(log_q), 0.0).sum())
    kl = math.inf if np.isneginf(log_q).any() else float((p * (log_p - log_q)).sum())
    return DistanceReport(
        tv=tv, tv_stderr=0.0, kl=kl, kl_stderr=0.0, method="exact", sequences=int(p.size)
    )


def _evaluate_monte_carlo(
    model: SequenceModel, judge: Judge, n: int, rng: np.random.Generator
) -> DistanceReport:
    """Estimate TV and KL from ``n`` reference sequences ``x ~ P`` scored by both models."""
    reference = judge.sample_reference(n, seed=int(rng.integers(MAX_SEED)))
    log_p = judge.judge_log_probs(reference.futures)
    log_q = model.log_prob(reference.futures)
    logger.info(
        "scored %d reference sequences (%d distinct)", reference.n, reference.futures.shape[0]
    )
    return mc_from_log_probs(np.repeat(log_p, reference.counts), np.repeat(log_q, reference.counts))


def evaluate_local(
    model: SequenceModel,
    reference_model: SequenceModel,
    n: int,
    rng: np.random.Generator,
    max_exact: int = 10**6,
) -> DistanceReport:
    """Score ``model`` against a local ``reference_model`` with no server involved.

    Parameters are as for :func:`evaluate`, with ``reference_model`` as ``P``.
    """
    return distance(reference_model, model, rng, n=n, max_exact=max_exact)
