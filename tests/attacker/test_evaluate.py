"""Tests of clone scoring through a real server's judge (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attacker.client import HttpJudge
from attacker.evaluate import (
    evaluate,
    evaluate_local,
    report_to_dict,
    tv_upper95,
)
from attacker.learner import LearnerSettings, learn
from attacker.oracle import InProcessOracle
from shared.automaton import HMM
from shared.distances import DistanceReport

# Sequences of positive probability under the server's HMM: the first token is not 2, and
# no 0 follows a 2, because hidden state 1 is absorbing and never emits 0.
POSITIVE_SEQUENCES = 224


def _other_hmm(horizon: int = 6) -> HMM:
    """A model near the server's HMM, with full support, so its KL to it is finite."""
    pi = np.array([0.9, 0.1])
    T = np.array([[0.6, 0.4], [0.1, 0.9]])
    O = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    return HMM(["a", "b", "c"], horizon, pi, T, O)


def _narrow_hmm() -> HMM:
    """A model that never emits token 2, which the server's model does."""
    pi = np.array([1.0, 0.0])
    T = np.array([[0.5, 0.5], [0.0, 1.0]])
    O = np.array([[0.8, 0.2, 0.0], [0.0, 1.0, 0.0]])
    return HMM(["a", "b", "c"], 6, pi, T, O)


@pytest.fixture
def judge(serve):
    server = serve()
    with HttpJudge(server.url, server.admin_key) as judge:
        yield judge


def test_evaluate_exact_model_against_itself(judge, hmm) -> None:
    report = evaluate(hmm, judge, n=100, rng=np.random.default_rng(0))

    assert report.method == "exact"
    assert report.sequences == POSITIVE_SEQUENCES
    assert report.tv < 1e-12
    assert abs(report.kl) < 1e-12
    assert report.tv_stderr == 0.0


def test_evaluate_exact_matches_local(judge, hmm) -> None:
    other = _other_hmm()

    remote = evaluate(other, judge, n=100, rng=np.random.default_rng(0))
    local = evaluate_local(other, hmm, n=100, rng=np.random.default_rng(0))

    assert remote.method == local.method == "exact"
    assert remote.sequences == local.sequences
    assert remote.tv == pytest.approx(local.tv, abs=1e-12)
    assert remote.kl == pytest.approx(local.kl, abs=1e-12)


def test_evaluate_monte_carlo_agrees_with_exact(judge) -> None:
    other = _other_hmm()

    exact = evaluate(other, judge, n=4000, rng=np.random.default_rng(0))
    sampled = evaluate(other, judge, n=4000, rng=np.random.default_rng(1), max_exact=0)

    assert sampled.method == "monte-carlo"
    assert sampled.sequences == 4000
    assert exact.tv > 0.05
    assert sampled.tv_stderr > 0.0
    assert abs(sampled.tv - exact.tv) < 4 * sampled.tv_stderr
    assert abs(sampled.kl - exact.kl) < 4 * sampled.kl_stderr
    assert tv_upper95(sampled) == pytest.approx(sampled.tv + 1.96 * sampled.tv_stderr)


def test_evaluate_zero_probability_gives_infinite_kl(judge) -> None:
    report = evaluate(_narrow_hmm(), judge, n=100, rng=np.random.default_rng(0))

    assert math.isinf(report.kl)
    assert 0.0 < report.tv < 1.0
    assert report_to_dict(report)["kl"] == "inf"


def test_evaluate_rejects_other_horizon(judge) -> None:
    expected = (
        r"model has alphabet \['a', 'b', 'c'\] and H=5 but the server's model has .* and H=6"
    )
    with pytest.raises(ValueError, match=expected):
        evaluate(_other_hmm(horizon=5), judge, n=100, rng=np.random.default_rng(0))


def test_report_to_dict_fields() -> None:
    report = DistanceReport(
        tv=0.1, tv_stderr=0.01, kl=0.2, kl_stderr=0.02, method="monte-carlo", sequences=500
    )

    summary = report_to_dict(report)

    assert summary == {
        "tv": 0.1,
        "tv_stderr": 0.01,
        "tv_upper95": pytest.approx(0.1196),
        "kl": 0.2,
        "kl_stderr": 0.02,
        "method": "monte-carlo",
        "sequences": 500,
    }


def test_evaluate_exact_scores_learned_clone(judge, hmm) -> None:
    oracle = InProcessOracle(hmm, np.random.default_rng(0), budget=20_000)
    clone = learn(oracle, LearnerSettings(), np.random.default_rng(0))

    remote = evaluate(clone, judge, n=100, rng=np.random.default_rng(0))
    local = evaluate_local(clone, hmm, n=100, rng=np.random.default_rng(0))

    assert remote.method == "exact"
    assert remote.sequences == POSITIVE_SEQUENCES
    assert remote.tv == pytest.approx(local.tv, abs=1e-12)
    assert remote.kl == pytest.approx(local.kl, abs=1e-12)
    assert 0.0 < remote.tv < 0.2


def test_evaluate_exact_clone_missing_support(judge) -> None:
    # A probability-mode clone of a model without token 2 has no smoothing, so it gives
    # probability zero to sequences the server's model generates, while its state
    # dimension changes from step to step.
    oracle = InProcessOracle(_narrow_hmm(), np.random.default_rng(0), probabilities=True)
    clone = learn(oracle, LearnerSettings(), np.random.default_rng(0))

    report = evaluate(clone, judge, n=100, rng=np.random.default_rng(0))
    reference = evaluate(_narrow_hmm(), judge, n=100, rng=np.random.default_rng(0))

    assert clone.ranks != [clone.ranks[0]] * len(clone.ranks)
    assert math.isinf(report.kl)
    assert report.tv == pytest.approx(reference.tv, abs=1e-9)
