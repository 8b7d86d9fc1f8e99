"""Unit tests of request planning and sampling, without HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.errors import ApiError
from server.sampling import aggregate_rows, plan_request, serve_plan, validate_sequences
from shared.automaton import HMM, OperatorModel
from shared.protocol import CompleteRequest, CompleteResponse


def test_plan_counts_samples_and_tokens(model: HMM, make_settings) -> None:
    request = CompleteRequest(prompts=[[], [0, 1], [0, 1, 1, 2, 2]], n=4, max_tokens=3)

    plan = plan_request(model, request, make_settings())

    assert plan.lengths == [3, 3, 1]
    assert plan.samples == 12
    assert plan.tokens == 4 * 7


def test_plan_token_limit_uses_cut_lengths(model: HMM, make_settings) -> None:
    # 10 x (1 + 1) tokens fit a limit of 20 although 10 x 2 x max_tokens would not.
    request = CompleteRequest(prompts=[[0] * 5, [0] * 5], n=10, max_tokens=50)

    plan = plan_request(model, request, make_settings(max_tokens_per_request=20))

    assert plan.tokens == 20


def test_plan_reports_first_zero_probability_prompt(model: HMM, make_settings) -> None:
    request = CompleteRequest(prompts=[[0], [0, 2, 0], [2]])

    with pytest.raises(ApiError, match="prompt 1 has probability zero.*position 2") as info:
        plan_request(model, request, make_settings())

    assert info.value.code == "zero_probability_prompt"


def test_plan_next_token_probs_charges_one_per_prompt(model: HMM, make_settings) -> None:
    request = CompleteRequest(prompts=[[], [1]], next_token_probs=True)

    plan = plan_request(model, request, make_settings(probabilities=True))

    assert plan.probabilities
    assert plan.samples == 2


def test_validate_sequences_allows_full_length_for_judge(model: HMM) -> None:
    validate_sequences(model, [[0] * 6], model.horizon, "sequence")

    with pytest.raises(ApiError, match="prompt 0 has 6 tokens"):
        validate_sequences(model, [[0] * 6], model.horizon - 1, "prompt")


def test_serve_plan_same_generator_seed_same_body(model: HMM, make_settings) -> None:
    plan = plan_request(model, CompleteRequest(prompts=[[], [0]], n=30), make_settings())

    first = serve_plan(model, plan, np.random.default_rng(11), "m", None)
    second = serve_plan(model, plan, np.random.default_rng(11), "m", None)
    third = serve_plan(model, plan, np.random.default_rng(12), "m", None)

    assert first == second
    assert first != third


def test_serve_plan_body_matches_schema(model: HMM, make_settings) -> None:
    request = CompleteRequest(prompts=[[1]], n=200, aggregate=True)
    plan = plan_request(model, request, make_settings())

    body = CompleteResponse.model_validate(
        json.loads(serve_plan(model, plan, np.random.default_rng(0), "m", 17))
    )

    assert body.usage.quota_remaining == 17
    assert sum(body.choices[0].counts or []) == 200


def test_serve_plan_operator_model(make_settings) -> None:
    # The HMM of the fixture written as a generic operator model: the server needs no HMM.
    hmm = HMM(["a", "b"], 4, [0.5, 0.5], [[0.9, 0.1], [0.1, 0.9]], [[0.9, 0.1], [0.2, 0.8]])
    operator = OperatorModel(hmm.alphabet, hmm.horizon, hmm.sigma, hmm.M, hmm.tau)
    plan = plan_request(
        operator, CompleteRequest(prompts=[[0]], n=20_000, max_tokens=1), make_settings()
    )

    body = json.loads(serve_plan(operator, plan, np.random.default_rng(3), "m", None))

    frequency = np.mean(np.array(body["choices"][0]["completions"])[:, 0] == 0)
    law = hmm.next_token_probs([[0]])[0, 0]
    assert abs(frequency - law) <= 4 * np.sqrt(law * (1 - law) / 20_000)


@pytest.mark.parametrize(
    ("alphabet_size", "length"), [(3, 6), (2, 70)], ids=["base-a-codes", "row-unique-fallback"]
)
def test_aggregate_rows_matches_numpy_unique(alphabet_size: int, length: int) -> None:
    rng = np.random.default_rng(8)
    samples = rng.integers(0, alphabet_size, size=(500, length)).astype(np.int64)
    samples[250:] = samples[:250]  # make sure rows repeat

    rows, counts = aggregate_rows(samples, alphabet_size)

    expected_rows, expected_counts = np.unique(samples, axis=0, return_counts=True)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(counts, expected_counts)
    assert counts.sum() == 500


def test_complete_request_rejects_sampling_options_with_laws() -> None:
    with pytest.raises(ValueError, match="so n, aggregate would be ignored"):
        CompleteRequest(prompts=[[]], n=50, aggregate=True, next_token_probs=True)
