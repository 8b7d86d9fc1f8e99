"""Tests of the sketches: string indices, prefix-event counts, chain-rule probabilities and
the sampled-future sketch.

The hand-sized HMM starts in hidden state 0, which never emits token 2, so every future
that starts with token 2 has probability zero after the empty history.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attacker.oracle import Completions
from attacker.sketch import (
    chain_rule_probability,
    next_token_counts,
    prefix_event_counts,
    sampled_future_sketch,
    string_index,
)
from shared.automaton import HMM


def random_hmm(S: int, A: int, H: int, seed: int) -> HMM:
    """Return an HMM whose start law, transition rows and emission rows are Dirichlet(1) draws."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(S))
    T = rng.dirichlet(np.ones(S), size=S)
    O = rng.dirichlet(np.ones(A), size=S)  # noqa: E741 - HMM notation
    return HMM([f"t{o}" for o in range(A)], H, pi, T, O)


def hand_hmm() -> HMM:
    """Return the hand-sized HMM of the module docstring, horizon 6."""
    pi = np.array([1.0, 0.0])
    T = np.array([[0.5, 0.5], [0.0, 1.0]])
    O = np.array([[0.8, 0.2, 0.0], [0.0, 0.3, 0.7]])  # noqa: E741 - HMM notation
    return HMM(["a", "b", "c"], 6, pi, T, O)


def exact_conditional(model: HMM, history: tuple[int, ...], future: tuple[int, ...]) -> float:
    """Return ``P[future | history]`` from the model's own log-probability."""
    return float(np.exp(model.log_prob(np.array([future]), prompt=history)[0]))


class RecordingLaws:
    """Next-token laws of a real model that records every prompt it was asked for."""

    def __init__(self, model: HMM) -> None:
        self.model = model
        self.asked: list[tuple[int, ...]] = []

    def __call__(self, prompts):
        self.asked.extend(tuple(p) for p in prompts)
        return self.model.next_token_probs(prompts)


# -- string_index and counts ------------------------------------------------------------


def test_string_index_known_answers() -> None:
    futures = np.array([[0, 0, 2], [0, 1, 0], [1, 0, 1], [2, 1, 0]], dtype=np.int64)

    np.testing.assert_array_equal(string_index(futures, 2, 3), [0, 1, 3, 7])
    np.testing.assert_array_equal(string_index(futures, 3, 3), [2, 3, 10, 21])
    np.testing.assert_array_equal(string_index(futures, 1, 3), [0, 0, 1, 2])
    np.testing.assert_array_equal(string_index(futures, 0, 3), [0, 0, 0, 0])


def test_string_index_matches_unravel_order() -> None:
    # The probability-mode prefix sketch lists strings in np.unravel_index order.
    A, length = 3, 3
    strings = np.array([np.unravel_index(i, (A,) * length) for i in range(A**length)], dtype=np.int64)

    np.testing.assert_array_equal(string_index(strings, length, A), np.arange(A**length))


def make_pool() -> list[Completions]:
    return [
        Completions(np.array([[0, 1], [1, 1]], dtype=np.int64), np.array([3, 2], dtype=np.int64)),
        Completions(np.array([[0, 1, 2]], dtype=np.int64), np.array([4], dtype=np.int64)),
        Completions(np.array([[2]], dtype=np.int64), np.array([5], dtype=np.int64)),
        Completions(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)),
    ]


def test_prefix_event_counts_known_answer() -> None:
    counts = prefix_event_counts(make_pool(), 2, 3)

    # "01" three times plus the first two tokens of "012" four times, and "11" twice.
    # The one-token batch is too short for two-token events.
    expected = np.zeros(9)
    expected[1] = 7.0
    expected[4] = 2.0
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == 9.0


def test_next_token_counts_known_answer() -> None:
    counts = next_token_counts(make_pool(), 3)

    np.testing.assert_array_equal(counts, [7.0, 2.0, 5.0])


def test_prefix_event_counts_empty_pool() -> None:
    counts = prefix_event_counts([], 2, 2)

    np.testing.assert_array_equal(counts, np.zeros(4))


# -- chain_rule_probability ---------------------------------------------------------------


def test_chain_rule_probability_matches_log_prob() -> None:
    model = random_hmm(3, 3, 6, seed=3)
    histories = [(0, 1), (2, 2), (1, 0)]
    futures = [(0,), (1, 2), (2, 0, 1), (0, 0, 0, 2), (1, 1, 2, 0)]

    probabilities = chain_rule_probability(histories, futures, model.next_token_probs)

    expected = np.array([[exact_conditional(model, h, f) for f in futures] for h in histories])
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-12, atol=0)


def test_chain_rule_probability_zero_factor_stops_queries() -> None:
    model = hand_hmm()
    laws = RecordingLaws(model)
    futures = [(2, 0, 1), (0, 2), (1, 1)]

    probabilities = chain_rule_probability([()], futures, laws)

    # Asking for the prompt (2,) would raise ZeroProbabilityPromptError.
    assert (2,) not in laws.asked
    assert (2, 0) not in laws.asked
    expected = [exact_conditional(model, (), f) for f in futures]
    np.testing.assert_allclose(probabilities[0], expected, rtol=1e-12, atol=0)
    assert probabilities[0, 0] == 0.0
    assert probabilities[0, 1] == pytest.approx(0.8 * 0.5 * 0.7, rel=1e-12)


def test_chain_rule_probability_asks_each_prompt_once() -> None:
    model = random_hmm(2, 2, 6, seed=4)
    laws = RecordingLaws(model)
    futures = [f for f in itertools.product(range(2), repeat=3)]

    chain_rule_probability([(0,), (1,)], futures, laws)

    assert len(laws.asked) == len(set(laws.asked))
    # Two histories, each with 1 + 2 + 4 distinct prompts along the futures of length 3.
    assert len(laws.asked) == 2 * 7


def test_chain_rule_probability_full_futures_sum_to_one() -> None:
    model = random_hmm(3, 2, 5, seed=5)
    futures = [f for f in itertools.product(range(2), repeat=3)]

    probabilities = chain_rule_probability([(0, 1), (1, 1)], futures, model.next_token_probs)

    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)


# -- sampled_future_sketch ----------------------------------------------------------------


def all_histories(model: HMM, t: int) -> list[tuple[int, ...]]:
    return [h for h in itertools.product(range(model.alphabet_size), repeat=t)]


def test_sampled_future_sketch_vectors_are_scaled_probabilities() -> None:
    model = random_hmm(3, 3, 6, seed=6)
    candidates = all_histories(model, 2)
    m = 16

    sketch = sampled_future_sketch(candidates, model.horizon, m, model.next_token_probs, np.random.default_rng(6))

    assert len(sketch.futures) == m
    assert all(len(f) == model.horizon - 2 for f in sketch.futures)
    exact = np.array([[exact_conditional(model, g, f) for f in sketch.futures] for g in candidates])
    np.testing.assert_allclose(sketch.D, exact.mean(axis=0), rtol=1e-12, atol=0)
    assert np.all(sketch.D > 0)
    np.testing.assert_allclose(sketch.vectors, exact / (m * sketch.D), rtol=1e-10, atol=0)


def test_sampled_future_sketch_mean_row_sums_to_one() -> None:
    # mean_g v_g[l] = mean_g P[f_l | g] / (m D[f_l]) = 1 / m for every future.
    model = random_hmm(3, 3, 6, seed=7)
    candidates = all_histories(model, 2)

    sketch = sampled_future_sketch(candidates, model.horizon, 40, model.next_token_probs, np.random.default_rng(7))

    np.testing.assert_allclose(sketch.vectors.mean(axis=0), np.full(40, 1.0 / 40), rtol=1e-12, atol=0)


def test_sampled_future_sketch_linear_relations_carry_over() -> None:
    # P[. | h] = belief(h) @ P[. | hidden state], so a belief that is an affine combination
    # of three others gives the same combination of sketch vectors.
    model = random_hmm(3, 3, 6, seed=8)
    candidates = all_histories(model, 2)
    beliefs = np.array([model.filter(h)[0][0] for h in candidates])

    sketch = sampled_future_sketch(candidates, model.horizon, 32, model.next_token_probs, np.random.default_rng(8))

    basis = [0, 4, 8]
    assert np.linalg.matrix_rank(beliefs[basis], tol=1e-6) == 3
    coefficients = np.linalg.solve(beliefs[basis].T, beliefs.T).T
    scale = np.abs(sketch.vectors).max()
    np.testing.assert_allclose(coefficients @ sketch.vectors[basis], sketch.vectors, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("S", [1, 2, 3], ids=["S1", "S2", "S3"])
def test_sampled_future_sketch_rank_equals_model_rank(S: int) -> None:
    model = random_hmm(S, 3, 6, seed=10 + S)
    candidates = all_histories(model, 2)

    sketch = sampled_future_sketch(candidates, model.horizon, 48, model.next_token_probs, np.random.default_rng(S))

    singular_values = np.linalg.svd(sketch.vectors, compute_uv=False)
    assert singular_values[S - 1] > 1e-6 * singular_values[0]
    assert np.all(singular_values[S:] < 1e-10 * singular_values[0])


def test_sampled_future_sketch_same_seed_same_futures() -> None:
    model = random_hmm(2, 3, 5, seed=9)
    candidates = all_histories(model, 1)

    first = sampled_future_sketch(candidates, 5, 20, model.next_token_probs, np.random.default_rng(9))
    second = sampled_future_sketch(candidates, 5, 20, model.next_token_probs, np.random.default_rng(9))

    assert first.futures == second.futures
    np.testing.assert_array_equal(first.vectors, second.vectors)


def test_sampled_future_sketch_skips_impossible_futures() -> None:
    # After the empty history the hand HMM never emits token 2 first, so no drawn future
    # may start with it.
    model = hand_hmm()

    sketch = sampled_future_sketch([()], model.horizon, 50, model.next_token_probs, np.random.default_rng(10))

    assert all(f[0] != 2 for f in sketch.futures)
    assert np.all(sketch.vectors > 0)
    np.testing.assert_allclose(sketch.vectors.sum(), 1.0, rtol=1e-12)
