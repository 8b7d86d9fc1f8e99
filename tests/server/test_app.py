"""Route tests of the server app over httpx's ASGI transport: successful requests."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from server.app import create_app
from server.auth import key_id
from server.ledger import KeyUsage, Ledger
from shared.automaton import HMM
from shared.protocol import CompleteResponse, JudgeResponse, ModelInfo, UsageReport

pytestmark = pytest.mark.anyio

RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


async def test_model_info_lists_public_metadata_only(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/model")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "protocol_version",
        "model_id",
        "alphabet",
        "alphabet_size",
        "horizon",
        "oracles",
        "limits",
    }
    info = ModelInfo.model_validate(body)
    assert info.model_id == "test-hmm"
    assert info.alphabet == ["a", "b", "c"]
    assert info.alphabet_size == 3
    assert info.horizon == 6
    assert info.oracles.samples is True
    assert info.oracles.probabilities is False
    assert info.limits is None


async def test_model_info_never_leaks_parameters(client, keys, model: HMM) -> None:
    text = (await client.get("/v1/model", headers=keys.auth(keys.client))).text

    for word in ("pi", '"T"', '"O"', "rank", "num_states", "transition", "emission"):
        assert word not in text
    for value in (0.8, 0.7, 0.3):
        assert str(value) not in text


async def test_model_info_includes_limits_of_key(make_client, keys) -> None:
    async with make_client(requests_per_window=7, quota_samples=500) as client:
        body = (await client.get("/v1/model", headers=keys.auth(keys.client))).json()

    assert body["limits"]["requests_per_window"] == 7
    assert body["limits"]["quota_samples"] == 500
    assert body["limits"]["window_seconds"] == 60


async def test_model_info_shows_admin_unlimited(client, keys) -> None:
    body = (await client.get("/v1/model", headers=keys.auth(keys.admin))).json()

    assert body["limits"]["requests_per_window"] is None
    assert body["limits"]["samples_per_window"] is None
    assert body["limits"]["quota_samples"] is None


async def test_complete_returns_n_rows_per_prompt(client, keys) -> None:
    request = {"prompts": [[], [0], [0, 1, 1]], "n": 5}

    response = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    assert response.status_code == 200
    body = CompleteResponse.model_validate(response.json())
    assert body.model_id == "test-hmm"
    assert [choice.index for choice in body.choices] == [0, 1, 2]
    lengths = [6, 5, 3]
    for choice, length in zip(body.choices, lengths, strict=True):
        assert choice.completions is not None
        assert len(choice.completions) == 5
        assert all(len(row) == length for row in choice.completions)
        assert all(0 <= token < 3 for row in choice.completions for token in row)
        assert choice.counts is None
    assert body.usage.samples == 15
    assert body.usage.tokens == 5 * sum(lengths)
    assert body.usage.quota_remaining is None


async def test_complete_cuts_max_tokens_to_horizon(client, keys) -> None:
    request = {"prompts": [[0], [0, 0, 0, 0]], "n": 2, "max_tokens": 3}

    body = (await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))).json()

    assert [len(choice["completions"][0]) for choice in body["choices"]] == [3, 2]
    assert body["usage"]["tokens"] == 2 * (3 + 2)


async def test_complete_same_seed_same_output(client, keys) -> None:
    request = {"prompts": [[], [1]], "n": 50, "seed": 1234}

    first = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
    second = await client.post("/v1/complete", json=request, headers=keys.auth(keys.other))

    assert first.json()["choices"] == second.json()["choices"]


async def test_complete_without_seed_differs(client, keys) -> None:
    request = {"prompts": [[]], "n": 50}

    first = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
    second = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    assert first.json()["choices"] != second.json()["choices"]


async def test_complete_aggregate_counts_sum_to_n(client, keys) -> None:
    request = {"prompts": [[], [0, 1]], "n": 400, "aggregate": True, "seed": 7}

    body = (await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))).json()

    for choice in body["choices"]:
        assert sum(choice["counts"]) == 400
        assert len(choice["counts"]) == len(choice["completions"])
        rows = [tuple(row) for row in choice["completions"]]
        assert len(set(rows)) == len(rows)
        assert rows == sorted(rows)


async def test_complete_aggregate_matches_raw_samples(client, keys) -> None:
    request = {"prompts": [[1]], "n": 300, "seed": 99}

    raw = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
    aggregated = await client.post(
        "/v1/complete", json={**request, "aggregate": True}, headers=keys.auth(keys.client)
    )

    rows, counts = np.unique(
        np.array(raw.json()["choices"][0]["completions"]), axis=0, return_counts=True
    )
    choice = aggregated.json()["choices"][0]
    assert choice["completions"] == rows.tolist()
    assert choice["counts"] == counts.tolist()


@pytest.mark.parametrize("prompt", [[], [1]], ids=["empty-prompt", "prompt-1"])
async def test_complete_first_token_frequencies_match_law(
    client, keys, model: HMM, prompt: list[int]
) -> None:
    n = 20_000
    request = {"prompts": [prompt], "n": n, "max_tokens": 1, "seed": 5}

    body = (await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))).json()

    first = np.array(body["choices"][0]["completions"])[:, 0]
    frequencies = np.bincount(first, minlength=3) / n
    law = model.next_token_probs([prompt])[0]
    stderr = np.sqrt(law * (1 - law) / n)
    assert np.all(np.abs(frequencies - law) <= 4 * stderr + 1e-12), (frequencies, law)


async def test_complete_large_request_runs_in_threadpool(client, keys) -> None:
    # 5000 samples x 6 tokens passes the inline threshold, so this takes the worker thread path.
    request = {"prompts": [[]], "n": 5000, "aggregate": True, "seed": 3}

    response = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    assert response.status_code == 200
    assert sum(response.json()["choices"][0]["counts"]) == 5000


async def test_complete_next_token_probs_exact(make_client, keys, model: HMM) -> None:
    prompts = [[], [1], [0, 2]]
    async with make_client(probabilities=True) as client:
        response = await client.post(
            "/v1/complete",
            json={"prompts": prompts, "next_token_probs": True},
            headers=keys.auth(keys.client),
        )

    assert response.status_code == 200
    body = response.json()
    laws = np.array([choice["next_token_probs"] for choice in body["choices"]])
    np.testing.assert_allclose(laws, model.next_token_probs(prompts), rtol=0, atol=1e-15)
    np.testing.assert_allclose(laws[1], [0.4, 0.25, 0.35], atol=1e-12)
    assert body["choices"][0]["completions"] is None
    assert body["usage"]["samples"] == 3


async def test_complete_admin_key_skips_limits(make_client, keys) -> None:
    async with make_client(requests_per_window=1, quota_samples=1) as client:
        statuses = [
            (
                await client.post(
                    "/v1/complete", json={"prompts": [[]], "n": 10}, headers=keys.auth(keys.admin)
                )
            ).status_code
            for _ in range(3)
        ]

    assert statuses == [200, 200, 200]


async def test_judge_matches_model_log_prob(client, keys, model: HMM) -> None:
    sequences = [[0, 0, 1, 2, 2, 1], [1, 1], [], [2, 0], [0, 1, 2]]

    response = await client.post(
        "/v1/judge/logprob", json={"sequences": sequences}, headers=keys.auth(keys.admin)
    )

    assert response.status_code == 200
    body = JudgeResponse.model_validate(response.json())
    assert body.log_probs[3] is None  # token 2 cannot come first
    assert body.log_probs[2] == 0.0
    for i in (0, 1, 4):
        expected = model.log_prob(np.array([sequences[i]]))[0]
        assert body.log_probs[i] == pytest.approx(expected, rel=1e-12)


async def test_usage_reports_totals(make_client, keys) -> None:
    async with make_client(quota_samples=1000) as client:
        await client.post(
            "/v1/complete", json={"prompts": [[], [0]], "n": 10}, headers=keys.auth(keys.client)
        )
        response = await client.get("/v1/usage", headers=keys.auth(keys.client))

    report = UsageReport.model_validate(response.json())
    assert report.key_id.startswith("key_")
    assert report.requests == 1
    assert report.samples == 20
    assert report.tokens == 10 * (6 + 5)
    assert report.quota_remaining == 980
    assert report.limits.quota_samples == 1000


async def test_usage_is_per_key(client, keys) -> None:
    await client.post(
        "/v1/complete", json={"prompts": [[]], "n": 3}, headers=keys.auth(keys.client)
    )

    report = (await client.get("/v1/usage", headers=keys.auth(keys.other))).json()

    assert report["samples"] == 0


async def test_healthz_needs_no_key(client) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_id": "test-hmm"}


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        ("GET", "/healthz", None),
        ("GET", "/v1/model", "client"),
        ("GET", "/v1/usage", "client"),
        ("GET", "/v1/usage", None),
        ("GET", "/missing", None),
        ("POST", "/v1/judge/logprob", "client"),
    ],
    ids=["healthz", "model", "usage", "usage-no-key", "not-found", "judge-forbidden"],
)
async def test_every_response_has_rate_limit_headers(
    client, keys, method: str, path: str, key: str | None
) -> None:
    headers = keys.auth(getattr(keys, key)) if key else {}

    response = await client.request(method, path, headers=headers, json={"sequences": [[0]]})

    for name in RATE_LIMIT_HEADERS:
        assert name in response.headers, name
    assert response.headers["X-RateLimit-Limit"] == "600"


async def test_openapi_lists_routes(client) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    assert {"/v1/model", "/v1/complete", "/v1/judge/logprob", "/v1/usage", "/healthz"} <= set(paths)
    assert "429" in paths["/v1/complete"]["post"]["responses"]


class _BrokenHMM(HMM):
    """An HMM whose sampler fails after the request was charged."""

    def sample(self, *args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("sampler failed")


async def test_complete_charges_before_sampling(model: HMM, keys, make_settings) -> None:
    broken = _BrokenHMM(model.alphabet, model.horizon, model.pi, model.T, model.O)
    ledger = Ledger(":memory:")
    app = create_app(make_settings(), model=broken, ledger=ledger)
    transport = httpx.ASGITransport(app=app)

    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/v1/complete", json={"prompts": [[0]], "n": 4}, headers=keys.auth(keys.client)
        )

    assert response.status_code == 500
    assert ledger.usage(key_id(keys.client)) == KeyUsage(requests=1, samples=4, tokens=20)
    assert [entry.charge.prompts for entry in ledger.audit()] == [[[0]]]


async def test_usage_survives_app_restart(make_client, keys, tmp_path) -> None:
    settings = {"ledger": str(tmp_path / "ledger.sqlite3"), "quota_samples": 50}
    request = {"prompts": [[]], "n": 30}
    async with make_client(**settings) as client:
        first = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    async with make_client(**settings) as client:
        report = (await client.get("/v1/usage", headers=keys.auth(keys.client))).json()
        rejected = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    assert first.status_code == 200
    assert report["samples"] == 30
    assert report["quota_remaining"] == 20
    assert rejected.status_code == 429
    assert rejected.json()["error"]["code"] == "quota_exhausted"


async def test_complete_audits_admin_queries(model: HMM, keys, make_settings) -> None:
    ledger = Ledger(":memory:")
    app = create_app(make_settings(), model=model, ledger=ledger)
    transport = httpx.ASGITransport(app=app)

    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.post(
            "/v1/complete",
            json={"prompts": [[1]], "n": 2, "max_tokens": 3, "seed": 11},
            headers=keys.auth(keys.admin),
        )

    (entry,) = ledger.audit()
    assert entry.key_id == key_id(keys.admin)
    assert (entry.charge.n, entry.charge.max_tokens, entry.charge.seed) == (2, 3, 11)
    assert entry.charge.tokens == 6
