"""Tests of the HTTP oracle and judge against a real uvicorn server on 127.0.0.1.

The server hosts the hand-sized HMM of ``conftest.py``: first-token law ``(0.8, 0.2, 0)``,
next-token law ``(0.4, 0.25, 0.35)`` after ``[1]``, and ``[2]`` of probability zero.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from attacker.client import (
    AuthenticationError,
    HttpJudge,
    HttpOracle,
    QuotaExhaustedError,
    RateLimitedError,
    RequestLimits,
    ServerError,
    ServerUnreachableError,
    plan_requests,
)
from attacker.oracle import BudgetExceededError, OracleError
from shared.model import FloatArray, IntArray, SequenceModel, ZeroProbabilityPromptError


def _server_usage(server) -> dict:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    return httpx.get(f"{server.url}/v1/usage", headers=headers, timeout=10).json()


def _samples_per_prompt(plan, count: int) -> list[int]:
    totals = [0] * count
    for request in plan:
        for index in request.indices:
            totals[index] += request.n
    return totals


class FlakyModel(SequenceModel):
    """Wraps a model and raises in ``sample`` for its first ``failures`` calls."""

    def __init__(self, model: SequenceModel, failures: int) -> None:
        super().__init__(model.alphabet, model.horizon)
        self.model = model
        self.failures = failures

    def start(self, n: int) -> FloatArray:
        return self.model.start(n)

    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        return self.model.token_probs(states, t)

    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        return self.model.advance(states, t, tokens)

    def sample(self, prompt: Sequence[int], n: int, rng, max_tokens=None) -> IntArray:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("simulated sampling failure")
        return super().sample(prompt, n, rng, max_tokens)


# -- planning -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "n", "limits"),
    [
        ([2] * 7, 120, RequestLimits(3, 50, 400)),
        ([5, 1, 3, 2], 10, RequestLimits(1000, 1000, 12)),
        ([4] * 10, 1000, RequestLimits(4, 10_000, 10**9, max_samples=900)),
        ([1], 7, RequestLimits(1, 1, 1)),
    ],
    ids=["prompts-and-n", "tokens", "samples-window", "one-sample-requests"],
)
def test_plan_requests_respects_limits(lengths, n, limits) -> None:
    plan = plan_requests(lengths, n, limits)

    assert _samples_per_prompt(plan, len(lengths)) == [n] * len(lengths)
    for request in plan:
        k = len(request.indices)
        assert k <= limits.max_prompts
        assert request.n <= limits.max_samples_per_prompt
        assert request.max_tokens == max(lengths[i] for i in request.indices)
        assert k * request.n * request.max_tokens <= limits.max_tokens
        assert limits.max_samples is None or k * request.n <= limits.max_samples


def test_plan_requests_rejects_completion_over_token_limit() -> None:
    with pytest.raises(OracleError, match="allows 3 tokens per request but one completion has 4"):
        plan_requests([4], 1, RequestLimits(10, 10, 3))


# -- metadata and keys ----------------------------------------------------------------


def test_http_oracle_reads_model_metadata(serve) -> None:
    server = serve(max_prompts_per_request=7, max_samples_per_prompt=11, probabilities=True)

    with HttpOracle(server.url, server.api_key, budget=100) as oracle:
        assert oracle.alphabet == ("a", "b", "c")
        assert oracle.horizon == 6
        assert oracle.supports_probabilities is True
        assert oracle.request_limits.max_prompts == 7
        assert oracle.request_limits.max_samples_per_prompt == 11
        assert oracle.ledger.budget == 100


def test_http_oracle_rejects_unknown_key(serve) -> None:
    server = serve()

    with pytest.raises(AuthenticationError, match="401 invalid_api_key.*check the key"):
        HttpOracle(server.url, "not-a-key", budget=100)


@pytest.mark.parametrize("budget", [0, -5], ids=["zero", "negative"])
def test_http_oracle_rejects_bad_budget(budget: int) -> None:
    with pytest.raises(ValueError, match=f"budget must be a positive number of samples, got {budget}"):
        HttpOracle("http://127.0.0.1:9", "key", budget=budget)


def test_http_oracle_rejects_url_without_scheme() -> None:
    with pytest.raises(ValueError, match="not an http\\(s\\) URL"):
        HttpOracle("127.0.0.1:8000", "key", budget=10)


def test_http_oracle_unreachable_server_retries_then_fails() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)

    with pytest.raises(ServerUnreachableError, match="failed after 3 attempts.*ConnectError"):
        HttpOracle(f"http://127.0.0.1:{port}", "key", budget=10, max_retries=2, sleep=record)
    assert len(delays) == 2
    assert 0.25 <= delays[0] <= 0.5
    assert 0.5 <= delays[1] <= 1.0


# -- sampling -------------------------------------------------------------------------


def test_complete_splits_requests_within_server_limits(serve) -> None:
    server = serve(max_prompts_per_request=2, max_samples_per_prompt=30, max_tokens_per_request=150)
    prompts = [[], [0], [1], [0, 1], [1, 1]]

    with HttpOracle(server.url, server.api_key, budget=10_000, sampling_seed=1) as oracle:
        results = oracle.complete(prompts, n=70, max_tokens=3)
        expected_plan = plan_requests([3] * 5, 70, oracle.request_limits)
        ledger = oracle.ledger

    usage = _server_usage(server)
    assert len(expected_plan) > 5
    assert [c.n for c in results] == [70] * 5
    assert [c.futures.shape[1] for c in results] == [3] * 5
    assert ledger.requests == len(expected_plan)
    assert ledger.samples == 350
    assert ledger.tokens == 350 * 3
    assert usage["samples"] == ledger.samples
    assert usage["requests"] == ledger.requests


def test_complete_cuts_completions_at_horizon(serve) -> None:
    server = serve()

    with HttpOracle(server.url, server.api_key, budget=100) as oracle:
        results = oracle.complete([[0, 0, 0, 0], []], n=5, max_tokens=4)

    assert results[0].futures.shape[1] == 2
    assert results[1].futures.shape[1] == 4
    assert oracle.ledger.tokens == 5 * 2 + 5 * 4


def test_complete_follows_model_law(serve) -> None:
    server = serve()

    with HttpOracle(server.url, server.api_key, budget=20_000, sampling_seed=3) as oracle:
        (result,) = oracle.complete([[1]], n=20_000, max_tokens=1)

    frequencies = np.zeros(3)
    np.add.at(frequencies, result.futures[:, 0], result.counts)
    frequencies /= frequencies.sum()
    # Binomial stderr at n = 20000 is at most 0.0036, so 0.02 is over 5 stderr.
    np.testing.assert_allclose(frequencies, [0.4, 0.25, 0.35], atol=0.02)


def test_complete_same_sampling_seed_same_samples(serve) -> None:
    server = serve(max_samples_per_prompt=40)
    outputs = []
    for _ in range(2):
        with HttpOracle(server.url, server.api_key, budget=1000, sampling_seed=11) as oracle:
            outputs.append(oracle.complete([[], [0]], n=100, max_tokens=6))

    for first, second in zip(*outputs):
        np.testing.assert_array_equal(first.futures, second.futures)
        np.testing.assert_array_equal(first.counts, second.counts)


def test_complete_budget_never_exceeded(serve) -> None:
    server = serve()

    with HttpOracle(server.url, server.api_key, budget=100) as oracle:
        oracle.complete([[], [0]], n=30, max_tokens=2)
        with pytest.raises(BudgetExceededError, match="60 of the budget of 100 are spent"):
            oracle.complete([[], [0]], n=30, max_tokens=2)
        oracle.complete([[1]], n=40, max_tokens=2)
        with pytest.raises(BudgetExceededError, match="query of 1 samples rejected"):
            oracle.complete([[]], n=1, max_tokens=1)
        ledger = oracle.ledger

    usage = _server_usage(server)
    assert ledger.samples == 100
    assert usage["samples"] == 100
    assert usage["requests"] == ledger.requests == 2


def test_complete_budget_holds_across_threads(serve) -> None:
    server = serve()
    outcomes: list[str] = []

    with HttpOracle(server.url, server.api_key, budget=250) as oracle:

        def buy() -> None:
            try:
                oracle.complete([[]], n=100, max_tokens=2)
                outcomes.append("bought")
            except BudgetExceededError:
                outcomes.append("refused")

        threads = [threading.Thread(target=buy) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        spent = oracle.ledger.samples

    assert sorted(outcomes) == ["bought", "bought", "refused", "refused"]
    assert spent == 200
    assert _server_usage(server)["samples"] == 200


def test_complete_works_inside_running_event_loop(serve) -> None:
    server = serve()

    async def caller(oracle: HttpOracle) -> int:
        return oracle.complete([[]], n=10, max_tokens=2)[0].n

    with HttpOracle(server.url, server.api_key, budget=100) as oracle:
        assert asyncio.run(caller(oracle)) == 10


def test_complete_retries_rate_limit_after_retry_after(serve, caplog) -> None:
    caplog.set_level(logging.INFO, logger="attacker.client")
    server = serve(requests_per_window=2, window_seconds=10)

    with HttpOracle(
        server.url, server.api_key, budget=1000, max_concurrency=1, sleep=server.clock.sleep,
        rng=np.random.default_rng(0),
    ) as oracle:
        oracle.request_limits = RequestLimits(1, 1000, 10**6)  # one prompt per request
        results = oracle.complete([[], [0], [1], [0, 0], [1, 1]], n=10, max_tokens=2)
        retries = oracle.retries

    # Requests 1-2 pass at t=0; 3 waits out the 10 s window; 4 fits next to it; 5 waits again.
    assert [c.n for c in results] == [10] * 5
    assert retries == 2
    assert len(server.clock.sleeps) == 2
    for delay in server.clock.sleeps:
        assert 10.0 <= delay <= 10.5
    assert _server_usage(server)["requests"] == 5
    retry_lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(retry_lines) == 2
    assert "429 rate_limited; retrying in 10." in retry_lines[0]
    assert "rate-limit wait 1" in retry_lines[0]


def test_complete_retry_after_over_maximum_raises(serve) -> None:
    server = serve(requests_per_window=1, window_seconds=100)

    with HttpOracle(
        server.url, server.api_key, budget=100, max_retry_after=50, sleep=server.clock.sleep
    ) as oracle:
        oracle.complete([[]], n=1, max_tokens=1)
        with pytest.raises(RateLimitedError, match="asks to wait 100 s.*max_retry_after=50 s"):
            oracle.complete([[]], n=1, max_tokens=1)

    assert server.clock.sleeps == []


def test_complete_quota_exhausted_not_retried(serve) -> None:
    server = serve(quota_samples=50)

    with HttpOracle(server.url, server.api_key, budget=1000, sleep=server.clock.sleep) as oracle:
        oracle.complete([[]], n=40, max_tokens=1)
        with pytest.raises(QuotaExhaustedError, match="429 quota_exhausted.*10 of its 50 samples left"):
            oracle.complete([[]], n=20, max_tokens=1)
        spent = oracle.ledger.samples

    assert server.clock.sleeps == []
    assert spent == 40


def test_complete_retries_server_error(serve, hmm) -> None:
    server = serve(model=FlakyModel(hmm, failures=2))

    with HttpOracle(server.url, server.api_key, budget=100, sleep=server.clock.sleep) as oracle:
        (result,) = oracle.complete([[]], n=10, max_tokens=2)
        retries = oracle.retries

    assert result.n == 10
    assert retries == 2


def test_complete_server_error_after_retries_raises(serve, hmm) -> None:
    server = serve(model=FlakyModel(hmm, failures=10))

    with HttpOracle(
        server.url, server.api_key, budget=100, max_retries=1, sleep=server.clock.sleep
    ) as oracle:
        with pytest.raises(ServerError, match="server returned 500"):
            oracle.complete([[]], n=10, max_tokens=2)
        assert oracle.retries == 1


def test_complete_zero_probability_prompt_raises(serve) -> None:
    server = serve()

    expected = r"prompt \[2, 1\] has probability zero"
    with HttpOracle(server.url, server.api_key, budget=100, sleep=server.clock.sleep) as oracle:
        with pytest.raises(ZeroProbabilityPromptError, match=expected) as caught:
            oracle.complete([[0], [2, 1], [1]], n=5, max_tokens=1)
        spent = oracle.ledger.samples

    assert caught.value.prompt == [2, 1]
    assert caught.value.position == 0
    assert spent == 0
    assert server.clock.sleeps == []


def test_complete_rejects_token_outside_alphabet(serve) -> None:
    server = serve()

    with (
        HttpOracle(server.url, server.api_key, budget=100) as oracle,
        pytest.raises(ValueError, match="prompt 1 contains token 3 at position 0 but A=3"),
    ):
        oracle.complete([[0], [3]], n=5, max_tokens=1)


# -- next-token laws ------------------------------------------------------------------


def test_next_token_probs_returns_exact_laws(serve) -> None:
    server = serve(probabilities=True, max_prompts_per_request=1)

    with HttpOracle(server.url, server.api_key, budget=10) as oracle:
        laws = oracle.next_token_probs([[], [1]])
        ledger = oracle.ledger

    np.testing.assert_allclose(laws, [[0.8, 0.2, 0.0], [0.4, 0.25, 0.35]], atol=1e-12)
    assert ledger.samples == 2
    assert ledger.requests == 2


def test_next_token_probs_disabled_raises(serve) -> None:
    server = serve(probabilities=False)

    with (
        HttpOracle(server.url, server.api_key, budget=10) as oracle,
        pytest.raises(OracleError, match="offers no probability oracle"),
    ):
        oracle.next_token_probs([[]])


# -- judge ----------------------------------------------------------------------------


def test_judge_log_probs_match_model(serve, hmm) -> None:
    server = serve()
    sequences = np.array([[0, 0, 0, 0, 0, 0], [0, 1, 2, 2, 1, 2], [2, 0, 0, 0, 0, 0]])

    with HttpJudge(server.url, server.admin_key, judge_batch_size=2) as judge:
        full = judge.judge_log_probs(sequences)
        prefix = judge.judge_log_probs(np.array([[1, 2]]))

    np.testing.assert_array_equal(full, hmm.log_prob(sequences))
    assert np.isneginf(full[2])
    np.testing.assert_array_equal(prefix, hmm.log_prob(np.array([[1, 2]])))


def test_judge_rejects_client_key(serve) -> None:
    server = serve()

    with (
        HttpJudge(server.url, server.api_key) as judge,
        pytest.raises(AuthenticationError, match="403 admin_required: this route requires the admin key; client keys cannot use it$"),
    ):
        judge.judge_log_probs(np.zeros((1, 6), dtype=np.int64))


def test_sample_reference_is_free_and_reproducible(serve) -> None:
    server = serve(max_samples_per_prompt=300)

    with HttpJudge(server.url, server.admin_key) as judge:
        first = judge.sample_reference(1000, seed=5)
        second = judge.sample_reference(1000, seed=5)

    assert first.n == 1000
    assert first.futures.shape[1] == 6
    np.testing.assert_array_equal(first.futures, second.futures)
    np.testing.assert_array_equal(first.counts, second.counts)
    assert _server_usage(server)["samples"] == 0
