"""Tests of the query ledger, the in-process oracle and the aggregation of completions.

The hand-sized HMM starts in hidden state 0, which never emits token 2, so the prompt
``(2,)`` has probability zero.  Its first-token law is ``(0.8, 0.2, 0)``, and after the
prompt ``(1,)`` the next-token law is ``0.5 * (0.8, 0.2, 0) + 0.5 * (0, 0.3, 0.7)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from attacker.oracle import (
    BudgetExceededError,
    Completions,
    InProcessOracle,
    Ledger,
    OracleError,
    ZeroProbabilityPromptError,
)
from shared.automaton import HMM

HORIZON = 6


def make_hmm() -> HMM:
    """Return the hand-sized HMM of the module docstring."""
    pi = np.array([1.0, 0.0])
    T = np.array([[0.5, 0.5], [0.0, 1.0]])
    O = np.array([[0.8, 0.2, 0.0], [0.0, 0.3, 0.7]])  # noqa: E741 - HMM notation
    return HMM(["a", "b", "c"], HORIZON, pi, T, O)


# -- Ledger -------------------------------------------------------------------------------


def test_ledger_reserve_accepts_exact_budget() -> None:
    ledger = Ledger(budget=100)
    ledger.charge(60, 120)

    ledger.reserve(40)

    assert ledger.remaining == 40


def test_ledger_reserve_rejects_past_budget() -> None:
    ledger = Ledger(budget=100)
    ledger.charge(60, 120)

    with pytest.raises(BudgetExceededError, match="query of 41 samples rejected: 60 of the budget of 100"):
        ledger.reserve(41)

    assert ledger.samples == 60


def test_ledger_reserve_unlimited_without_budget() -> None:
    ledger = Ledger()

    ledger.reserve(10**12)

    assert ledger.remaining is None


def test_ledger_charge_per_phase() -> None:
    ledger = Ledger(budget=1000)

    with ledger.in_phase("sketches"):
        ledger.charge(3, 6)
        ledger.charge(4, 8)
    with ledger.in_phase("spanner"):
        ledger.charge(5, 10, requests=2)
    ledger.charge(1, 1)

    assert ledger.by_phase == {
        "sketches": {"samples": 7, "tokens": 14, "requests": 2},
        "spanner": {"samples": 5, "tokens": 10, "requests": 2},
        "other": {"samples": 1, "tokens": 1, "requests": 1},
    }
    assert (ledger.samples, ledger.tokens, ledger.requests) == (13, 25, 5)
    assert ledger.remaining == 987


def test_ledger_in_phase_restores_after_error() -> None:
    ledger = Ledger()

    with pytest.raises(RuntimeError, match="inner failure"):
        with ledger.in_phase("outer"):
            with ledger.in_phase("inner"):
                raise RuntimeError("inner failure")

    assert ledger.phase == "other"


def test_ledger_in_phase_nested_restores_outer() -> None:
    ledger = Ledger()

    with ledger.in_phase("outer"):
        with ledger.in_phase("inner"):
            ledger.charge(2, 2)
        ledger.charge(3, 3)

    assert ledger.by_phase["inner"]["samples"] == 2
    assert ledger.by_phase["outer"]["samples"] == 3


def test_ledger_to_dict_is_a_copy() -> None:
    ledger = Ledger(budget=50)
    with ledger.in_phase("sketches"):
        ledger.charge(5, 10)

    snapshot = ledger.to_dict()
    with ledger.in_phase("sketches"):
        ledger.charge(5, 10)

    assert snapshot == {
        "budget": 50,
        "samples": 5,
        "tokens": 10,
        "requests": 1,
        "by_phase": {"sketches": {"samples": 5, "tokens": 10, "requests": 1}},
    }


# -- Completions ----------------------------------------------------------------------------


def test_completions_from_samples_sums_counts() -> None:
    samples = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [2, 2]])

    completions = Completions.from_samples(samples)

    np.testing.assert_array_equal(completions.futures, [[0, 1], [1, 0], [2, 2]])
    np.testing.assert_array_equal(completions.counts, [1, 3, 1])
    assert completions.n == 5
    assert completions.futures.dtype == np.int64
    assert completions.counts.dtype == np.int64


def test_completions_from_samples_empty_keeps_width() -> None:
    completions = Completions.from_samples(np.zeros((0, 3), dtype=np.int64))

    assert completions.futures.shape == (0, 3)
    assert completions.counts.shape == (0,)
    assert completions.n == 0


# -- InProcessOracle ------------------------------------------------------------------------


def test_in_process_complete_charges_ledger() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(0), budget=1000)
    prompts = [(), (0,), (0, 1, 0, 0)]

    with oracle.ledger.in_phase("candidates"):
        results = oracle.complete(prompts, n=50, max_tokens=3)

    # The last prompt leaves H - 4 = 2 tokens, so its completions are cut to 2.
    assert [batch.futures.shape[1] for batch in results] == [3, 3, 2]
    assert [batch.n for batch in results] == [50, 50, 50]
    assert oracle.ledger.samples == 150
    assert oracle.ledger.tokens == 50 * (3 + 3 + 2)
    assert oracle.ledger.requests == 1
    assert oracle.ledger.by_phase == {"candidates": {"samples": 150, "tokens": 400, "requests": 1}}


def test_in_process_complete_follows_model_law() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(1))
    n = 20_000

    (batch,) = oracle.complete([()], n=n, max_tokens=1)

    frequencies = np.zeros(3)
    frequencies[batch.futures[:, 0]] = batch.counts / n
    expected = np.array([0.8, 0.2, 0.0])
    # Four binomial standard deviations of a frequency estimated from n samples.
    tolerance = 4.0 * np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(frequencies - expected) <= tolerance)
    assert frequencies[2] == 0.0


def test_in_process_complete_same_seed_same_samples() -> None:
    first = InProcessOracle(make_hmm(), np.random.default_rng(7)).complete([(1,)], n=200, max_tokens=4)
    second = InProcessOracle(make_hmm(), np.random.default_rng(7)).complete([(1,)], n=200, max_tokens=4)

    np.testing.assert_array_equal(first[0].futures, second[0].futures)
    np.testing.assert_array_equal(first[0].counts, second[0].counts)


def test_in_process_complete_past_budget_sends_nothing() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(0), budget=100)
    oracle.complete([()], n=60, max_tokens=2)

    with pytest.raises(BudgetExceededError, match="query of 60 samples rejected: 60 of the budget of 100"):
        oracle.complete([(), (0,)], n=30, max_tokens=2)

    assert (oracle.ledger.samples, oracle.ledger.tokens, oracle.ledger.requests) == (60, 120, 1)
    assert oracle.ledger.remaining == 40


def test_in_process_complete_zero_probability_prompt_charges_nothing() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(0), budget=100)

    with pytest.raises(ZeroProbabilityPromptError, match=r"prompt \[2\] has probability zero"):
        oracle.complete([(2,)], n=10, max_tokens=2)

    assert (oracle.ledger.samples, oracle.ledger.tokens, oracle.ledger.requests) == (0, 0, 0)


def test_in_process_next_token_probs_known_answer() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(0), budget=10, probabilities=True)

    with oracle.ledger.in_phase("next-token tables"):
        laws = oracle.next_token_probs([(), (1,)])

    np.testing.assert_allclose(laws, [[0.8, 0.2, 0.0], [0.4, 0.25, 0.35]], rtol=0, atol=1e-12)
    assert (oracle.ledger.samples, oracle.ledger.tokens, oracle.ledger.requests) == (2, 2, 1)
    assert oracle.ledger.by_phase["next-token tables"]["samples"] == 2


def test_in_process_next_token_probs_past_budget_rejected() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(0), budget=1, probabilities=True)

    with pytest.raises(BudgetExceededError, match="query of 2 samples rejected"):
        oracle.next_token_probs([(), (1,)])

    assert oracle.ledger.samples == 0


def test_in_process_next_token_probs_disabled_raises() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(0))

    with pytest.raises(OracleError, match="no probability oracle; run the learner in sample mode"):
        oracle.next_token_probs([()])

    assert oracle.supports_probabilities is False
    assert oracle.ledger.requests == 0


def test_in_process_oracle_exposes_model_shape() -> None:
    oracle = InProcessOracle(make_hmm(), np.random.default_rng(0))

    assert oracle.alphabet == ("a", "b", "c")
    assert oracle.alphabet_size == 3
    assert oracle.horizon == HORIZON
