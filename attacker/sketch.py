"""Representative vectors (sketches) of the future laws of histories.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
t : int
    Length of the histories being sketched.
h, g : tuple of int
    Histories of length ``t``; ``g`` ranges over the candidates.
f : tuple of int
    A future of ``H - t`` tokens.
ell : int
    Length of the prefix events, ``min(L, H - t)``.
m : int
    Number of sampled futures.
D : ndarray, shape (m,)
    ``D[f_l] = mean_g P[f_l | g]``, the law the futures were drawn from.
v_h : ndarray, shape (F,)
    The sketch of history ``h``; ``F = A**ell`` or ``m``.

Two sketches are offered.  The *prefix-event* sketch of ``h`` is the law of its next ``ell``
tokens, one feature per token string, estimated from the completions of ``h``.  It is cheap,
and exact for models whose rank shows within ``ell`` tokens.  The *sampled-future* sketch
draws futures ``f_1 .. f_m`` from ``D`` and sets ``v_h[l] = P[f_l | h] / (m D[f_l])``, where
``P[f | h]`` is the chain-rule product of next-token probabilities.  Linear relations among
the future laws carry over to both sketches, because each is a linear image of ``P[. | h]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from attacker.oracle import Completions

__all__ = [
    "SampledFutureSketch",
    "chain_rule_probability",
    "next_token_counts",
    "prefix_event_counts",
    "sampled_future_sketch",
    "string_index",
]

logger = logging.getLogger(__name__)

History = tuple[int, ...]
ProbabilityFunction = Callable[[Sequence[History]], NDArray[np.float64]]


def string_index(futures: NDArray[np.int64], length: int, A: int) -> NDArray[np.int64]:
    """Map the first ``length`` tokens of each row to an index in ``0 .. A**length - 1``.

    Parameters
    ----------
    futures : ndarray of int64, shape (n, L)
        ``L >= length``.

    Returns
    -------
    ndarray of int64, shape (n,)
        Base-``A`` number whose most significant digit is the first token.
    """
    index = np.zeros(futures.shape[0], dtype=np.int64)
    for j in range(length):
        index = index * A + futures[:, j]
    return index


def prefix_event_counts(
    pool: Sequence[Completions], length: int, A: int
) -> NDArray[np.float64]:
    """Count the strings of the first ``length`` tokens over a history's completions.

    Completions shorter than ``length`` are skipped.

    Returns
    -------
    ndarray of float64, shape (A**length,)
        Counts; their sum is the number of completions used.
    """
    counts = np.zeros(A**length)
    for batch in pool:
        if batch.futures.shape[1] < length or batch.counts.size == 0:
            continue
        np.add.at(counts, string_index(batch.futures, length, A), batch.counts)
    return counts


def next_token_counts(pool: Sequence[Completions], A: int) -> NDArray[np.float64]:
    """Count the first token over all completions of a history, shape (A,)."""
    return prefix_event_counts(pool, 1, A)


def chain_rule_probability(
    histories: Sequence[History],
    futures: Sequence[History],
    probs_fn: ProbabilityFunction,
) -> NDArray[np.float64]:
    """Compute ``P[f | h]`` for every history and future by the chain rule.

    Parameters
    ----------
    histories : sequence of tuple of int, length k
    futures : sequence of tuple of int, length m
    probs_fn : callable
        Maps a list of prompts to their next-token laws, shape (len(prompts), A).  Each
        distinct prompt is asked for once.

    Returns
    -------
    ndarray of float64, shape (k, m)
        Zero where a factor is zero; prompts after a zero factor are never asked.
    """
    result = np.ones((len(histories), len(futures)))
    longest = max((len(f) for f in futures), default=0)
    for j in range(longest):
        pairs = [
            (i, l)
            for i in range(len(histories))
            for l, f in enumerate(futures)
            if len(f) > j and result[i, l] > 0.0
        ]
        if not pairs:
            break
        prompts = [histories[i] + tuple(futures[l][:j]) for i, l in pairs]
        distinct = list(dict.fromkeys(prompts))
        laws = probs_fn(distinct)
        row_of = {prompt: row for row, prompt in enumerate(distinct)}
        for (i, l), prompt in zip(pairs, prompts):
            result[i, l] *= laws[row_of[prompt], futures[l][j]]
    return result


class SampledFutureSketch:
    """Sampled-future sketch of a set of candidate histories.

    Attributes
    ----------
    futures : list of tuple of int, length m
        The sampled futures ``f_l``.
    vectors : ndarray, shape (k, m)
        ``v_h`` for each candidate, one per row.
    D : ndarray, shape (m,)
        Mixture probability of each future.
    """

    def __init__(self, futures: list[History], vectors: NDArray[np.float64], D: NDArray[np.float64]):
        self.futures = futures
        self.vectors = vectors
        self.D = D


def sampled_future_sketch(
    candidates: Sequence[History],
    horizon: int,
    m: int,
    probs_fn: ProbabilityFunction,
    rng: np.random.Generator,
) -> SampledFutureSketch:
    """Build the sampled-future sketch of ``candidates`` with exact next-token laws.

    Futures are drawn from ``D``, the uniform mixture of the candidates' future laws, by
    choosing a candidate uniformly and sampling its completion token by token from
    ``probs_fn``.

    Parameters
    ----------
    candidates : sequence of tuple of int, length k
        Histories of one length ``t`` and positive probability.
    horizon : int
        ``H``; futures have ``H - t`` tokens.
    m : int
        Number of futures.
    probs_fn : callable
        Exact next-token laws of a list of prompts.
    rng : numpy.random.Generator

    Returns
    -------
    SampledFutureSketch
    """
    t = len(candidates[0])
    owners = rng.integers(0, len(candidates), size=m)
    futures: list[list[int]] = [[] for _ in range(m)]
    for _ in range(horizon - t):
        prompts = [tuple(candidates[owners[l]]) + tuple(futures[l]) for l in range(m)]
        laws = probs_fn(list(dict.fromkeys(prompts)))
        row_of = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}
        for l, prompt in enumerate(prompts):
            law = laws[row_of[prompt]]
            futures[l].append(int(rng.choice(law.size, p=law / law.sum())))
    future_tuples = [tuple(f) for f in futures]

    probabilities = chain_rule_probability(candidates, future_tuples, probs_fn)
    D = probabilities.mean(axis=0)
    vectors = probabilities / (m * D[None, :])
    return SampledFutureSketch(future_tuples, vectors, D)
