"""Tests of SequenceModel's derived operations on HMMs and operator models."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from shared.automaton import HMM, OperatorModel
from shared.model import InvalidSequenceError, SequenceModel, ZeroProbabilityPromptError
from shared.presets import casino, random_hmm, rotation_clock

SequenceEnumerator = Callable[..., np.ndarray]

# A chi-square test at this level fails a correct sampler once in 1,000 seeds.
CHI2_P_MIN = 1e-3


def _counts(sequences: np.ndarray, alphabet_size: int) -> np.ndarray:
    """Count each row of ``sequences`` at its index in the lexicographic order of Σ^L."""
    index = np.zeros(sequences.shape[0], dtype=np.int64)
    for column in sequences.T:
        index = index * alphabet_size + column
    return np.bincount(index, minlength=alphabet_size ** sequences.shape[1])


@pytest.mark.parametrize(
    "model",
    [casino(3), rotation_clock(5)],
    ids=["casino-H3", "rotation-clock-H5"],
)
def test_sample_full_sequences_match_exact_law(
    model: SequenceModel, rng: np.random.Generator, all_sequences: SequenceEnumerator
) -> None:
    n = 100_000
    expected = np.exp(model.log_prob(all_sequences(model)))

    counts = _counts(model.sample((), n, rng), model.alphabet_size)

    result = stats.chisquare(counts, n * expected)
    assert result.pvalue > CHI2_P_MIN


def test_sample_next_token_frequencies_within_4_stderr(rng: np.random.Generator) -> None:
    model = random_hmm(4, 3, 8, np.random.default_rng(1))
    prompt = [1, 0, 2]
    n = 50_000
    p = model.next_token_probs([prompt])[0]

    tokens = model.sample(prompt, n, rng, max_tokens=1)[:, 0]

    frequencies = np.bincount(tokens, minlength=3) / n
    stderr = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(frequencies - p) < 4 * stderr)


def test_sample_completion_law_matches_conditional_log_prob(
    rng: np.random.Generator, all_sequences: SequenceEnumerator
) -> None:
    model = rotation_clock(6)
    prompt = [0, 1]
    n = 60_000
    futures = all_sequences(model, 3)
    expected = np.exp(model.log_prob(futures, prompt=prompt))

    counts = _counts(model.sample(prompt, n, rng, max_tokens=3), 2)

    assert expected.sum() == pytest.approx(1.0, abs=1e-12)
    assert stats.chisquare(counts, n * expected).pvalue > CHI2_P_MIN


def test_sample_same_seed_same_output() -> None:
    model = casino(6)

    first = model.sample([5], 100, np.random.default_rng(3))
    second = model.sample([5], 100, np.random.default_rng(3))

    assert first.shape == (100, 5)
    assert np.array_equal(first, second)


@pytest.mark.parametrize(
    "model",
    [casino(4), random_hmm(3, 4, 5, np.random.default_rng(0)), rotation_clock(8)],
    ids=["casino-H4", "random-hmm", "rotation-clock-H8"],
)
def test_log_prob_sums_to_one_over_all_sequences(
    model: SequenceModel, all_sequences: SequenceEnumerator
) -> None:
    total = np.exp(model.log_prob(all_sequences(model))).sum()

    assert total == pytest.approx(1.0, abs=1e-12)


def test_log_prob_of_prefix_is_marginal(all_sequences: SequenceEnumerator) -> None:
    model = random_hmm(3, 3, 4, np.random.default_rng(2))
    full = np.exp(model.log_prob(all_sequences(model)))

    prefixes = np.exp(model.log_prob(all_sequences(model, 2)))

    assert np.allclose(prefixes, full.reshape(9, 9).sum(axis=1), rtol=1e-12, atol=0)


def test_log_prob_with_prompt_is_conditional(all_sequences: SequenceEnumerator) -> None:
    model = rotation_clock(5)
    prompt = [1, 1]
    futures = all_sequences(model, 3)
    joint = np.column_stack([np.tile(prompt, (len(futures), 1)), futures])
    _, log_prompt = model.filter(prompt)

    conditional = model.log_prob(futures, prompt=prompt)

    assert np.allclose(conditional, model.log_prob(joint) - log_prompt, rtol=0, atol=1e-12)


def test_hmm_matches_its_operator_form(all_sequences: SequenceEnumerator) -> None:
    hmm = random_hmm(3, 2, 6, np.random.default_rng(4))
    M = np.einsum("ia,ij->aij", hmm.O, hmm.T)
    operator = OperatorModel(hmm.alphabet, hmm.horizon, hmm.pi, M, np.ones(3))
    sequences = all_sequences(hmm)

    assert np.allclose(hmm.log_prob(sequences), operator.log_prob(sequences), atol=1e-12)


def test_next_token_probs_rows_sum_to_one() -> None:
    model = rotation_clock(6)

    rows = model.next_token_probs([[], [0], [1, 1, 0]])

    assert rows.shape == (3, 2)
    assert np.allclose(rows.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(rows >= 0)


def test_filter_zero_probability_prompt_raises(tiny_hmm: HMM) -> None:
    message = r"prompt \[2\] has probability zero"
    with pytest.raises(ZeroProbabilityPromptError, match=message) as info:
        tiny_hmm.filter([2])

    assert info.value.position == 0
    assert info.value.prompt == [2]


def test_filter_possible_prompt_with_rare_token(tiny_hmm: HMM) -> None:
    _, log_prob = tiny_hmm.filter([0, 2])

    # P(a) = 0.8; the next belief is (0.5, 0.5), so P(c | a) = 0.25.
    assert log_prob == pytest.approx(np.log(0.8 * 0.25))


def test_sample_zero_probability_prompt_raises(
    tiny_hmm: HMM, rng: np.random.Generator
) -> None:
    with pytest.raises(ZeroProbabilityPromptError, match="token 2 at position 0"):
        tiny_hmm.sample([2], 10, rng)


def test_next_token_probs_zero_probability_prompt_raises(tiny_hmm: HMM) -> None:
    with pytest.raises(ZeroProbabilityPromptError, match="token 2 at position 0 cannot start a sequence"):
        tiny_hmm.next_token_probs([[0], [2]])


def test_filter_out_of_range_token_raises(tiny_hmm: HMM) -> None:
    message = r"token 3 at position 1 but A=3; use tokens 0\.\.2"
    with pytest.raises(InvalidSequenceError, match=message):
        tiny_hmm.filter([0, 3])


def test_filter_negative_token_raises(tiny_hmm: HMM) -> None:
    with pytest.raises(InvalidSequenceError, match="token -1 at position 0"):
        tiny_hmm.filter([-1])


def test_filter_prompt_of_horizon_length_raises(tiny_hmm: HMM) -> None:
    with pytest.raises(InvalidSequenceError, match="prompt has 3 tokens but at most 2"):
        tiny_hmm.filter([0, 0, 0])


def test_sample_max_tokens_beyond_horizon_raises(
    tiny_hmm: HMM, rng: np.random.Generator
) -> None:
    with pytest.raises(InvalidSequenceError, match="max_tokens=3 but a prompt of length 1"):
        tiny_hmm.sample([0], 5, rng, max_tokens=3)


def test_log_prob_impossible_sequence_is_minus_inf(tiny_hmm: HMM) -> None:
    log_probs = tiny_hmm.log_prob(np.array([[2, 0, 0], [0, 2, 1]]))

    assert log_probs[0] == -np.inf
    assert np.isfinite(log_probs[1])


def test_log_prob_invalid_row_names_it(tiny_hmm: HMM) -> None:
    with pytest.raises(InvalidSequenceError, match="sequence 1 contains token 5 at position 1"):
        tiny_hmm.log_prob(np.array([[0, 0, 0], [0, 5, 0]]))
