"""Tests of the body-size cap, the access log, and the last-resort 500 response."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from server.app import create_app
from shared.automaton import HMM

pytestmark = pytest.mark.anyio


async def test_body_over_content_length_limit_is_413(make_client, keys) -> None:
    body = json.dumps({"prompts": [[0] * 3] * 400}).encode()
    async with make_client(max_body_bytes=2048, max_prompts_per_request=1000) as client:
        response = await client.post(
            "/v1/complete",
            content=body,
            headers={**keys.auth(keys.client), "Content-Type": "application/json"},
        )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert f"has {len(body)} bytes" in response.json()["error"]["message"]
    assert "at most 2048" in response.json()["error"]["message"]
    assert "X-RateLimit-Limit" in response.headers


async def test_streamed_body_over_limit_is_413(make_client, keys) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompts": ['
        for _ in range(300):
            yield b"[0, 0], "
        yield b"[0]]}"

    async with make_client(max_body_bytes=1024) as client:
        response = await client.post(
            "/v1/complete",
            content=chunks(),
            headers={**keys.auth(keys.client), "Content-Type": "application/json"},
        )

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "at most 1024" in response.json()["error"]["message"]


async def test_body_under_limit_is_served(make_client, keys) -> None:
    async with make_client(max_body_bytes=1024) as client:
        response = await client.post(
            "/v1/complete", json={"prompts": [[0]]}, headers=keys.auth(keys.client)
        )

    assert response.status_code == 200


async def test_access_log_names_key_id_not_key(client, keys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server.middleware")

    await client.post(
        "/v1/complete", json={"prompts": [[]], "n": 4}, headers=keys.auth(keys.client)
    )
    await client.post("/v1/complete", json={"prompts": [[2]]}, headers=keys.auth(keys.client))

    records = [r for r in caplog.records if r.name == "server.middleware"]
    assert len(records) == 2
    ok, rejected = (record.getMessage() for record in records)
    assert records[0].levelno == logging.INFO
    assert "key=key_" in ok
    assert "status=200" in ok
    assert "samples=4" in ok
    assert records[1].levelno == logging.WARNING
    assert "status=422 code=zero_probability_prompt" in rejected
    assert keys.client not in caplog.text


class _BrokenHMM(HMM):
    """An HMM whose sampler fails, to reach the unhandled-error path."""

    def sample(self, *args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("sampler exploded")


async def test_unhandled_error_is_json_500(model: HMM, keys, make_settings, caplog) -> None:
    broken = _BrokenHMM(model.alphabet, model.horizon, model.pi, model.T, model.O)
    app = create_app(make_settings(), model=broken)
    transport = httpx.ASGITransport(app=app)

    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/v1/complete", json={"prompts": [[]]}, headers=keys.auth(keys.client)
        )

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "exploded" not in response.text
    assert "X-RateLimit-Remaining" in response.headers
    assert "sampler exploded" in caplog.text
