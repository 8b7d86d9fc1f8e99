"""Tests of the presets for the learner's hard cases: noisy parity and long-horizon random HMMs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from server.app import create_app
from server.settings import Settings
from shared.automaton import HMM
from shared.presets import load_model, noisy_parity
from shared.presets.noisy_parity import draw_parity_subset

SequenceEnumerator = Callable[..., np.ndarray]


def _parity(bits: np.ndarray, subset: list[int]) -> np.ndarray:
    return bits[:, subset].sum(axis=1) % 2


def test_noisy_parity_default_parameters() -> None:
    model = load_model("noisy-parity")

    assert isinstance(model, HMM)
    assert model.model_id == "noisy-parity"
    assert model.alphabet == ("0", "1")
    assert model.horizon == 25
    assert model.num_states == 4 * 24 + 2
    assert model.metadata["bits"] == 24
    assert model.metadata["noise"] == 0.1
    assert model.metadata["subset"] == draw_parity_subset(24, np.random.default_rng(0))


def test_noisy_parity_parameters_from_spec() -> None:
    model = load_model("noisy-parity:bits=6,noise=0.25,seed=3")

    assert model.horizon == 7
    assert model.metadata["noise"] == 0.25
    assert model.metadata["subset"] == draw_parity_subset(6, np.random.default_rng(3))


def test_noisy_parity_probabilities_sum_to_one(all_sequences: SequenceEnumerator) -> None:
    model = noisy_parity(6, 0.1, np.random.default_rng(0))
    sequences = all_sequences(model)

    total = np.exp(model.log_prob(sequences)).sum()

    assert sequences.shape == (2**7, 7)
    assert total == pytest.approx(1.0, abs=1e-12)


def test_noisy_parity_bits_are_uniform(all_sequences: SequenceEnumerator) -> None:
    model = noisy_parity(6, 0.1, np.random.default_rng(0))
    bits = all_sequences(model, 6)

    probabilities = np.exp(model.log_prob(bits))

    np.testing.assert_allclose(probabilities, 2.0**-6, rtol=1e-12)


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3], ids=["noiseless", "default", "noisy"])
def test_noisy_parity_last_token_law(all_sequences: SequenceEnumerator, noise: float) -> None:
    model = noisy_parity(6, noise, np.random.default_rng(2))
    subset = model.metadata["subset"]
    bits = all_sequences(model, 6)

    laws = model.next_token_probs(bits.tolist())
    parity = _parity(bits, subset)

    np.testing.assert_allclose(laws[np.arange(len(bits)), parity], 1.0 - noise, atol=1e-12)
    np.testing.assert_allclose(laws.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("seed", [2, 4, 9], ids=["subset-from-0", "subset-from-3", "subset-from-1"])
def test_noisy_parity_hankel_rank(all_sequences: SequenceEnumerator, seed: int) -> None:
    model = noisy_parity(6, 0.1, np.random.default_rng(seed))
    first = min(model.metadata["subset"])
    probabilities = np.exp(model.log_prob(all_sequences(model)))

    # Sequences are in lexicographic order, so row h, column f of the reshaped vector is
    # P(h f) for the histories h of length t.
    ranks = [
        int(np.linalg.matrix_rank(probabilities.reshape(2**t, 2 ** (7 - t)), tol=1e-12))
        for t in range(1, 7)
    ]

    assert ranks == [2 if t > first else 1 for t in range(1, 7)]
    assert max(ranks) == 2


def test_noisy_parity_subset_never_empty() -> None:
    subsets = [draw_parity_subset(1, np.random.default_rng(seed)) for seed in range(20)]

    assert subsets == [[0]] * 20


def test_noisy_parity_rejects_bad_bits() -> None:
    with pytest.raises(ValueError, match="bits must be an integer >= 1, got 0"):
        noisy_parity(0, 0.1)


def test_noisy_parity_rejects_bad_noise() -> None:
    with pytest.raises(ValueError, match=r"noise must be a probability in \[0, 1\], got 1.5"):
        noisy_parity(6, 1.5)


def test_noisy_parity_model_info_hides_subset() -> None:
    model = load_model("noisy-parity:bits=6,seed=3")
    settings = Settings(model="noisy-parity:bits=6,seed=3", api_keys=("key-0001",))
    transport = httpx.ASGITransport(app=create_app(settings, model=model))

    async def get_model_info() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/v1/model", headers={"Authorization": "Bearer key-0001"})

    response = asyncio.run(get_model_info())

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "protocol_version", "model_id", "alphabet", "alphabet_size", "horizon", "oracles",
        "limits",
    }
    assert "subset" not in response.text
    assert "metadata" not in response.text


@pytest.mark.parametrize("horizon", [24, 32], ids=["H24", "H32"])
def test_random_hmm_long_horizon_samples(horizon: int) -> None:
    model = load_model(f"random-hmm:states=4,alphabet=4,horizon={horizon},seed=0")

    samples = model.sample((), 100, np.random.default_rng(0))
    log_probs = model.log_prob(samples)

    assert model.horizon == horizon
    assert samples.shape == (100, horizon)
    assert samples.min() >= 0
    assert samples.max() <= 3
    assert np.all(np.isfinite(log_probs))
    assert np.all(log_probs < 0)
