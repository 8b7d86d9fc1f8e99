"""The name the server publishes for its model, which must not reveal preset parameters."""

from __future__ import annotations

from typing import Any

import pytest

from server.app import public_model_id
from shared.automaton import HMM

from .conftest import ClientFactory, Keys

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("model_id", "published"),
    [
        ("noisy-parity:bits=24,noise=0.1,seed=7", "noisy-parity"),
        ("random-hmm:states=4,seed=3", "random-hmm"),
        ("english-words", "english-words"),
    ],
    ids=["parity-seed", "random-hmm-seed", "plain-name"],
)
def test_public_model_id_drops_parameters(model_id: str, published: str) -> None:
    assert public_model_id(model_id) == published


async def test_model_route_hides_preset_seed(
    make_client: ClientFactory, keys: type[Keys], model: HMM
) -> None:
    model.model_id = "random-hmm:states=2,seed=99"

    async with make_client() as client:
        response = await client.get("/v1/model", headers=keys.auth(keys.client))

    body: dict[str, Any] = response.json()
    assert response.status_code == 200
    assert body["model_id"] == "random-hmm"
    assert "99" not in response.text


async def test_model_route_uses_configured_model_id(
    make_client: ClientFactory, keys: type[Keys]
) -> None:
    async with make_client(model_id="provider-model-v1") as client:
        response = await client.get("/v1/model", headers=keys.auth(keys.client))

    assert response.json()["model_id"] == "provider-model-v1"
