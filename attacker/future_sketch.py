"""The sampled-future sketch estimated from sampled completions alone.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
t : int
    Length of the candidate histories.
g, h : tuple of int
    Candidate histories; ``k`` of them.
f_l : tuple of int
    Sampled futures of ``H - t`` tokens, ``l = 1 .. m``.
D : ndarray, shape (m,)
    ``D[f_l] = mean_g P[f_l | g]``.
v_h : ndarray, shape (m,)
    ``v_h[l] = P[f_l | h] / (m D[f_l])``.

Futures are drawn from ``D`` by buying one full completion of a uniformly chosen candidate
per future.  ``P[f | h]`` is the chain-rule product of next-token probabilities
``P[f_j | h f_<j]``, each estimated from ``n`` one-token completions of the prompt
``h f_<j``.  Every distinct prompt is bought once and shared by all futures with that
prefix.  Each completion bought runs to the horizon, so it also counts for the deeper
prompts it passes through, and a prompt ``j`` tokens deep collects about twice the samples
bought for it.  Splitting the samples of each prompt in two by binomial thinning gives two
independent estimates of the sketch, whose half difference measures its noise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from attacker.oracle import Completions, Oracle

__all__ = ["EstimatedFutureSketch", "estimate_future_sketch", "plan_future_prompts"]

logger = logging.getLogger(__name__)

History = tuple[int, ...]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class EstimatedFutureSketch:
    """A sampled-future sketch estimated from samples.

    Attributes
    ----------
    futures : list of tuple of int, length m
    vectors : ndarray, shape (k, m)
        ``v_h`` from all samples.
    noise : ndarray, shape (k, m)
        Half the difference of the sketches from the two halves of the samples.
    relative : ndarray, shape (k, m)
        Delta-method relative variance of each entry of ``vectors`` (its variance over its
        square): the sum over the chain's factors of ``(1 - p) / (p n)``.
    samples_per_prompt : int
        ``n``.
    """

    futures: list[History]
    vectors: FloatArray
    noise: FloatArray
    relative: FloatArray
    samples_per_prompt: int


def draw_futures(
    oracle: Oracle, candidates: Sequence[History], m: int, rng: np.random.Generator
) -> list[History]:
    """Buy ``m`` full completions, each of a uniformly chosen candidate (samples from ``D``)."""
    t = len(candidates[0])
    owners = rng.integers(0, len(candidates), size=m)
    chosen, counts = np.unique(owners, return_counts=True)
    futures: list[History] = []
    by_count: dict[int, list[int]] = {}
    for owner, count in zip(chosen, counts):
        by_count.setdefault(int(count), []).append(int(owner))
    for count, owner_list in sorted(by_count.items()):
        prompts = [candidates[i] for i in owner_list]
        for batch in oracle.complete(prompts, count, oracle.horizon - t):
            for row, times in zip(batch.futures, batch.counts):
                futures.extend([tuple(int(x) for x in row)] * int(times))
    return futures


def plan_future_prompts(candidates: Sequence[History], futures: Sequence[History]) -> list[History]:
    """List the distinct prompts ``h f_<j`` whose next-token laws the sketch needs."""
    prompts: dict[History, None] = {}
    for h in candidates:
        for f in futures:
            for j in range(len(f)):
                prompts[h + f[:j]] = None
    return list(prompts)


def estimate_future_sketch(
    oracle: Oracle,
    candidates: Sequence[History],
    futures: Sequence[History],
    n: int,
    rng: np.random.Generator,
) -> EstimatedFutureSketch:
    """Estimate the sampled-future sketch of ``candidates`` on the given ``futures``.

    Parameters
    ----------
    oracle : Oracle
        Sells the completions; costs ``n`` samples per distinct prompt.
    candidates : sequence of tuple of int, length k
    futures : sequence of tuple of int, length m
        Drawn from ``D`` (see :func:`draw_futures`).
    n : int
        Samples bought per prompt.
    rng : numpy.random.Generator
        Randomness of the split into halves.

    Returns
    -------
    EstimatedFutureSketch
    """
    prompts = plan_future_prompts(candidates, futures)
    row_of = {prompt: row for row, prompt in enumerate(prompts)}
    A = oracle.alphabet_size
    counts = np.zeros((len(prompts), A))
    half = np.zeros((len(prompts), A))
    by_length: dict[int, list[History]] = {}
    for prompt in prompts:
        by_length.setdefault(oracle.horizon - len(prompt), []).append(prompt)
    for length, group in sorted(by_length.items()):
        for start in range(0, len(group), 1000):
            batch = group[start : start + 1000]
            for prompt, completions in zip(batch, oracle.complete(batch, n, length)):
                _credit(prompt, completions, row_of, counts, half, rng)

    rows, tokens = _chain_entries(candidates, futures, row_of)
    estimates = []
    for table in (counts, half, counts - half):
        laws = table / np.maximum(table.sum(axis=1, keepdims=True), 1.0)
        estimates.append(_sketch_vectors(laws[rows, tokens].prod(axis=2)))
    full, first, second = estimates
    # Relative variance of each estimated factor, with a pseudocount so that a factor seen
    # zero times still counts as uncertain.
    totals = counts.sum(axis=1, keepdims=True)
    smoothed = (counts + 0.5) / (totals + 1.0)
    relative = (1.0 - smoothed) / (smoothed * np.maximum(totals, 1.0))
    chains = relative[rows, tokens].sum(axis=2)
    return EstimatedFutureSketch(list(futures), full, (first - second) / 2.0, chains, n)


def _credit(
    prompt: History,
    completions: Completions,
    row_of: dict[History, int],
    counts: FloatArray,
    half: FloatArray,
    rng: np.random.Generator,
) -> None:
    """Count each completion of ``prompt`` as a next-token sample of every needed prompt it
    passes through: a completion of ``q`` that starts with ``x`` is also one of ``q x``."""
    first_half = rng.binomial(completions.counts, 0.5)
    for row, times, in_first in zip(completions.futures, completions.counts, first_half):
        current = prompt
        for token in row:
            index = row_of.get(current)
            if index is None:
                break
            counts[index, token] += times
            half[index, token] += in_first
            current = current + (int(token),)


def _chain_entries(
    candidates: Sequence[History],
    futures: Sequence[History],
    row_of: dict[History, int],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Locate the factors of every chain: the table rows of ``h f_<j`` and the tokens ``f_j``.

    Returns two arrays of shape (k, m, H - t), so ``table[rows, tokens]`` lists the factors
    ``table[h f_<j, f_j]`` of each candidate and future.
    """
    depth = len(futures[0])
    rows = np.empty((len(candidates), len(futures), depth), dtype=np.int64)
    tokens = np.broadcast_to(np.array(futures, dtype=np.int64).reshape(1, len(futures), depth), rows.shape)
    for i, h in enumerate(candidates):
        for l, f in enumerate(futures):
            rows[i, l] = [row_of[h + f[:j]] for j in range(depth)]
    return rows, tokens


def _sketch_vectors(probabilities: FloatArray) -> FloatArray:
    """Turn chain-rule probabilities ``P[f_l | h]`` (k, m) into ``v_h[l] = P[f_l | h] / (m D[f_l])``."""
    m = probabilities.shape[1]
    D = probabilities.mean(axis=0)
    return probabilities / (m * np.maximum(D, 1e-300))[None, :]
