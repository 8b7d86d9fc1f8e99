"""Tests of TV and KL distances: known answers, exact against Monte Carlo, and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.automaton import HMM
from shared.distances import (
    DistanceReport,
    distance,
    exact_distance,
    mc_from_log_probs,
    monte_carlo_distance,
)
from shared.model import SequenceModel
from shared.presets import casino, random_hmm, rotation_clock


def _coin(p_zero: float, horizon: int = 2) -> HMM:
    """An i.i.d. coin: a 1-state HMM emitting token 0 with probability ``p_zero``."""
    return HMM(["0", "1"], horizon, [1.0], [[1.0]], [[p_zero, 1.0 - p_zero]])


def _alternator() -> HMM:
    """A 2-state HMM that emits exactly 0, 1, 0, 1, ..."""
    return HMM(["0", "1"], 2, [1.0, 0.0], [[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])


class LogBeliefHMM(SequenceModel):
    """An HMM whose state is the log of its belief, so ``token_probs`` is non-linear in it."""

    def __init__(self, hmm: HMM) -> None:
        super().__init__(hmm.alphabet, hmm.horizon)
        self.hmm = hmm

    def start(self, n: int) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.hmm.start(n))

    def token_probs(self, states: np.ndarray, t: int) -> np.ndarray:
        return self.hmm.token_probs(np.exp(states), t)

    def advance(self, states: np.ndarray, t: int, tokens: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.hmm.advance(np.exp(states), t, tokens))


@pytest.mark.parametrize(
    "model",
    [casino(5), random_hmm(3, 3, 6, np.random.default_rng(0)), rotation_clock(10)],
    ids=["casino", "random-hmm", "rotation-clock"],
)
def test_exact_distance_model_with_itself_is_zero(model: SequenceModel) -> None:
    report = exact_distance(model, model)

    assert report.tv == 0.0
    assert report.kl == 0.0
    assert report.method == "exact"
    assert report.sequences == model.alphabet_size**model.horizon


def test_exact_distance_iid_coins_known_answer() -> None:
    # P is uniform on {00, 01, 10, 11}; Q gives them 0.64, 0.16, 0.16, 0.04.
    report = exact_distance(_coin(0.5), _coin(0.8))

    assert report.tv == pytest.approx(0.5 * (0.39 + 0.09 + 0.09 + 0.21), abs=1e-15)
    assert report.kl == pytest.approx(math.log(1.5625), abs=1e-15)
    assert report.tv_stderr == 0.0
    assert report.kl_stderr == 0.0


def test_exact_distance_missing_support_gives_infinite_kl() -> None:
    # Q generates only 01, which P generates with probability 1/4.
    report = exact_distance(_coin(0.5), _alternator())

    assert report.tv == pytest.approx(0.75, abs=1e-15)
    assert report.kl == math.inf


def test_exact_distance_prunes_zero_probability_prefixes() -> None:
    # P generates only 01, so one sequence is summed; KL(P || Q) = -log(1/4).
    report = exact_distance(_alternator(), _coin(0.5))

    assert report.sequences == 1
    assert report.tv == pytest.approx(0.75, abs=1e-15)
    assert report.kl == pytest.approx(math.log(4.0), abs=1e-15)


def test_exact_distance_non_linear_model_matches_its_hmm() -> None:
    hmm = HMM(["0", "1", "2"], 4, [1.0, 0.0], [[0.5, 0.5], [0.3, 0.7]],
              [[0.8, 0.2, 0.0], [0.1, 0.4, 0.5]])
    other = random_hmm(2, 3, 4, np.random.default_rng(5))

    direct = exact_distance(other, hmm)
    through_clone = exact_distance(other, LogBeliefHMM(hmm))

    assert through_clone.tv == pytest.approx(direct.tv, abs=1e-12)
    assert direct.kl == through_clone.kl == math.inf


def test_exact_distance_agrees_with_monte_carlo(rng: np.random.Generator) -> None:
    P = random_hmm(3, 3, 6, np.random.default_rng(11))
    Q = random_hmm(3, 3, 6, np.random.default_rng(12))

    exact = exact_distance(P, Q)
    estimate = monte_carlo_distance(P, Q, 40_000, rng)

    assert estimate.method == "monte-carlo"
    assert estimate.sequences == 40_000
    assert abs(estimate.tv - exact.tv) < 4 * estimate.tv_stderr
    assert abs(estimate.kl - exact.kl) < 4 * estimate.kl_stderr
    assert 0 < estimate.tv_stderr < 0.01


def test_monte_carlo_distance_missing_support_gives_infinite_kl(
    rng: np.random.Generator,
) -> None:
    report = monte_carlo_distance(_coin(0.5), _alternator(), 1000, rng)

    assert report.kl == math.inf
    assert report.kl_stderr == math.inf
    assert report.tv == pytest.approx(0.75, abs=4 * report.tv_stderr)


def test_exact_distance_refuses_large_enumeration() -> None:
    model = _coin(0.5, horizon=21)

    with pytest.raises(ValueError, match=r"A\^H = 2\^21 exceeds max_sequences=1000000"):
        exact_distance(model, model, max_sequences=10**6)


@pytest.mark.parametrize(
    ("max_exact", "method"),
    [(2**10, "exact"), (2**10 - 1, "monte-carlo")],
    ids=["at-limit", "over-limit"],
)
def test_distance_chooses_method_by_size(
    max_exact: int, method: str, rng: np.random.Generator
) -> None:
    report = distance(_coin(0.5, 10), _coin(0.6, 10), rng, n=2000, max_exact=max_exact)

    assert report.method == method


def test_distance_rejects_different_alphabets(rng: np.random.Generator) -> None:
    other = HMM(["x", "y"], 2, [1.0], [[1.0]], [[0.5, 0.5]])

    with pytest.raises(ValueError, match=r"P has alphabet \['0', '1'\] but Q has \['x', 'y'\]"):
        distance(_coin(0.5), other, rng)


def test_distance_rejects_different_horizons(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="P has horizon 2 but Q has horizon 3"):
        distance(_coin(0.5), _coin(0.5, 3), rng)


def test_mc_from_log_probs_known_values() -> None:
    log_p = np.log([0.5, 0.5, 0.25, 0.25])
    log_q = np.log([0.25, 1.0, 0.25, 0.5])

    report = mc_from_log_probs(log_p, log_q)

    # TV terms (1 - q/p)_+ are 0.5, 0, 0, 0; KL terms are log 2, -log 2, 0, -log 2.
    assert report.tv == pytest.approx(0.125, abs=1e-15)
    assert report.tv_stderr == pytest.approx(0.25 / 2, abs=1e-15)
    assert report.kl == pytest.approx(-math.log(2) / 4, abs=1e-15)
    assert report == DistanceReport(
        report.tv, report.tv_stderr, report.kl, report.kl_stderr, "monte-carlo", 4
    )


@pytest.mark.parametrize(
    ("log_p", "log_q", "message"),
    [
        ([0.0, -1.0], [0.0], "equal length >= 2"),
        ([0.0], [0.0], "equal length >= 2"),
        ([[0.0, 0.0]], [[0.0, 0.0]], r"shapes \(1, 2\) and \(1, 2\)"),
        ([0.0, -np.inf], [0.0, 0.0], r"log_p\[1\] is -inf; sequences must be drawn from P"),
        ([0.0, -1.0], [np.nan, 0.0], r"log_q\[0\] is nan"),
    ],
    ids=["length-mismatch", "too-short", "two-dimensional", "p-zero", "q-nan"],
)
def test_mc_from_log_probs_rejects_invalid(log_p: list, log_q: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mc_from_log_probs(log_p, log_q)


@settings(derandomize=True, deadline=None, max_examples=30)
@given(
    seed_p=st.integers(0, 2**32 - 1),
    seed_q=st.integers(0, 2**32 - 1),
    states=st.integers(1, 3),
    alphabet=st.integers(2, 3),
    horizon=st.integers(1, 5),
)
def test_exact_distance_bounds_and_pinsker(
    seed_p: int, seed_q: int, states: int, alphabet: int, horizon: int
) -> None:
    P = random_hmm(states, alphabet, horizon, np.random.default_rng(seed_p))
    Q = random_hmm(states, alphabet, horizon, np.random.default_rng(seed_q))

    report = exact_distance(P, Q)

    assert 0.0 <= report.tv <= 1.0
    assert report.kl >= -1e-12
    # Pinsker's inequality: TV <= sqrt(KL / 2).
    assert report.tv <= math.sqrt(max(report.kl, 0.0) / 2) + 1e-12


class _GrowingStateModel(SequenceModel):
    """A test model whose state width changes every step and that never emits token 1 first."""

    def __init__(self) -> None:
        super().__init__(["a", "b"], 3)

    def start(self, n: int) -> np.ndarray:
        return np.ones((n, 1))

    def token_probs(self, states: np.ndarray, t: int) -> np.ndarray:
        law = [1.0, 0.0] if t == 0 else [0.5, 0.5]
        return np.tile(law, (states.shape[0], 1))

    def advance(self, states: np.ndarray, t: int, tokens: np.ndarray) -> np.ndarray:
        if np.any(self.token_probs(states, t)[np.arange(len(tokens)), tokens] == 0):
            raise AssertionError("advanced on a token of probability zero")
        return np.ones((states.shape[0], t + 2))


def test_exact_distance_growing_state_with_zero_probability() -> None:
    P = HMM(["a", "b"], 3, [1.0], [[1.0]], [[0.5, 0.5]])

    report = exact_distance(P, _GrowingStateModel())

    # P puts mass 1/2 on sequences starting with "b", which Q never generates.
    assert report.tv == pytest.approx(0.5, abs=1e-12)
    assert report.kl == np.inf
