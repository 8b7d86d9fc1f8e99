"""Route tests of rejected requests: exact status, error code, and a message naming the value."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.anyio

KEYS = {
    "client": "client-key-0001",
    "admin": "admin-key-0001",
    "wrong": "not-a-configured-key",
}


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"} if key else {}


def _assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    for fragment in fragments:
        assert fragment in body["error"]["message"], body["error"]["message"]


COMPLETE_CASES: list[tuple[str, dict[str, Any], int, str, tuple[str, ...]]] = [
    (
        "unknown-token",
        {"prompts": [[0], [0, 3]]},
        422,
        "invalid_token",
        ("prompt 1", "token 3", "position 1", "0..2"),
    ),
    ("negative-token", {"prompts": [[-1]]}, 422, "invalid_token", ("token -1", "0..2")),
    ("huge-token", {"prompts": [[10**30]]}, 422, "invalid_token", (str(10**30),)),
    (
        "prompt-as-long-as-horizon",
        {"prompts": [[], [0] * 6]},
        422,
        "prompt_too_long",
        ("prompt 1", "6 tokens", "H=6", "at most 5"),
    ),
    (
        "zero-probability",
        {"prompts": [[0], [2, 1]]},
        422,
        "zero_probability_prompt",
        ("prompt 1", "token 2 at position 0"),
    ),
    (
        "zero-probability-later",
        {"prompts": [[0, 0, 1], [0, 2, 0]]},
        422,
        "zero_probability_prompt",
        ("prompt 1", "token 0 at position 2"),
    ),
    (
        "n-zero",
        {"prompts": [[]], "n": 0},
        422,
        "invalid_request",
        ("n", "greater than or equal to 1", "got 0"),
    ),
    (
        "n-above-server-max",
        {"prompts": [[]], "n": 101},
        422,
        "invalid_request",
        ("n=101", "max_samples_per_prompt=100"),
    ),
    (
        "n-above-protocol-max",
        {"prompts": [[]], "n": 10**8},
        422,
        "invalid_request",
        ("n", str(10**8)),
    ),
    (
        "too-many-prompts",
        {"prompts": [[]] * 9},
        422,
        "invalid_request",
        ("9 prompts", "max_prompts_per_request=8"),
    ),
    (
        "too-many-tokens",
        {"prompts": [[]] * 4, "n": 100},
        413,
        "request_too_large",
        ("2400 tokens", "max_tokens_per_request=2000"),
    ),
    ("no-prompts", {"prompts": []}, 422, "invalid_request", ("prompts", "at least 1")),
    ("prompts-missing", {"n": 2}, 422, "invalid_request", ("prompts is required",)),
    ("prompt-not-list", {"prompts": ["abc"]}, 422, "invalid_request", ("prompts[0]", "'abc'")),
    (
        "unknown-field",
        {"prompts": [[]], "temperature": 0.5},
        422,
        "invalid_request",
        ("unknown field temperature",),
    ),
    ("negative-seed", {"prompts": [[]], "seed": -1}, 422, "invalid_request", ("seed", "got -1")),
    (
        "probabilities-disabled",
        {"prompts": [[]], "next_token_probs": True},
        403,
        "probabilities_disabled",
        ("disabled",),
    ),
]


@pytest.mark.parametrize(
    ("request_body", "status", "code", "fragments"),
    [case[1:] for case in COMPLETE_CASES],
    ids=[case[0] for case in COMPLETE_CASES],
)
async def test_complete_rejects_bad_request(
    make_client, request_body: dict[str, Any], status: int, code: str, fragments: tuple[str, ...]
) -> None:
    limits = {
        "max_samples_per_prompt": 100,
        "max_prompts_per_request": 8,
        "max_tokens_per_request": 2000,
    }
    async with make_client(**limits) as client:
        response = await client.post("/v1/complete", json=request_body, headers=_headers("client"))

    _assert_error(response, status, code, *fragments)


async def test_complete_rejected_request_is_not_charged(client) -> None:
    await client.post(
        "/v1/complete", json={"prompts": [[0], [2]], "n": 5}, headers=_headers("client")
    )

    usage = (await client.get("/v1/usage", headers=_headers("client"))).json()

    assert usage["samples"] == 0
    assert usage["requests"] == 0


async def test_complete_malformed_json(client) -> None:
    response = await client.post(
        "/v1/complete",
        content=b'{"prompts": [[0]], "n": ',
        headers={**_headers("client"), "Content-Type": "application/json"},
    )

    _assert_error(response, 400, "malformed_json", "not valid JSON", "character 24")


@pytest.mark.parametrize(
    "body",
    [b'{"prompts": [[0]], "n": "\xff\xfe"}', b"[" * 5000 + b"]" * 5000],
    ids=["not-utf8", "nested-too-deep"],
)
async def test_complete_undecodable_body(client, body: bytes) -> None:
    response = await client.post(
        "/v1/complete",
        content=body,
        headers={**_headers("client"), "Content-Type": "application/json"},
    )

    _assert_error(response, 400, "malformed_json", "could not be decoded", "UTF-8")


async def test_complete_non_json_content_type(client) -> None:
    response = await client.post(
        "/v1/complete",
        content=b'{"prompts": [[0]]}',
        headers={**_headers("client"), "Content-Type": "text/plain"},
    )

    _assert_error(response, 415, "unsupported_media_type", "text/plain")


async def test_complete_json_array_body(client) -> None:
    response = await client.post("/v1/complete", json=[[0]], headers=_headers("client"))

    _assert_error(response, 422, "invalid_request", "body", "[[0]]")


async def test_complete_empty_body(client) -> None:
    response = await client.post("/v1/complete", headers=_headers("client"))

    _assert_error(response, 422, "invalid_request", "request body is missing")


AUTH_CASES = [
    ("missing-key", {}, 401, "missing_api_key", "Authorization: Bearer"),
    ("wrong-key", _headers("wrong"), 401, "invalid_api_key", "unknown API key"),
    ("wrong-scheme", {"Authorization": "Basic abc"}, 401, "invalid_api_key", "Bearer <key>"),
    ("empty-bearer", {"Authorization": "Bearer "}, 401, "invalid_api_key", "Bearer <key>"),
]


@pytest.mark.parametrize(
    ("headers", "status", "code", "fragment"),
    [case[1:] for case in AUTH_CASES],
    ids=[case[0] for case in AUTH_CASES],
)
async def test_complete_rejects_bad_key(
    client, headers: dict[str, str], status: int, code: str, fragment: str
) -> None:
    response = await client.post("/v1/complete", json={"prompts": [[]]}, headers=headers)

    _assert_error(response, status, code, fragment)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_error_message_never_echoes_key(client) -> None:
    response = await client.post("/v1/complete", json={"prompts": [[]]}, headers=_headers("wrong"))

    assert KEYS["wrong"] not in response.text


async def test_model_info_rejects_wrong_key(client) -> None:
    response = await client.get("/v1/model", headers=_headers("wrong"))

    _assert_error(response, 401, "invalid_api_key")


async def test_usage_requires_key(client) -> None:
    response = await client.get("/v1/usage")

    _assert_error(response, 401, "missing_api_key")


@pytest.mark.parametrize("key", ["client", None], ids=["client-key", "no-key"])
async def test_judge_requires_admin_key(client, key: str | None) -> None:
    response = await client.post(
        "/v1/judge/logprob", json={"sequences": [[0]]}, headers=_headers(key)
    )

    if key is None:
        _assert_error(response, 401, "missing_api_key")
    else:
        _assert_error(response, 403, "admin_required", "admin key")


JUDGE_CASES = [
    (
        "too-long",
        {"sequences": [[0], [0] * 7]},
        422,
        "sequence_too_long",
        ("sequence 1", "7 tokens", "at most 6"),
    ),
    ("bad-token", {"sequences": [[0, 5]]}, 422, "invalid_token", ("sequence 0", "token 5")),
    (
        "too-many",
        {"sequences": [[0]] * 4},
        422,
        "invalid_request",
        ("4 sequences", "max_judge_sequences=3"),
    ),
    ("empty", {"sequences": []}, 422, "invalid_request", ("sequences",)),
]


@pytest.mark.parametrize(
    ("request_body", "status", "code", "fragments"),
    [case[1:] for case in JUDGE_CASES],
    ids=[case[0] for case in JUDGE_CASES],
)
async def test_judge_rejects_bad_request(
    make_client, request_body: dict[str, Any], status: int, code: str, fragments: tuple[str, ...]
) -> None:
    async with make_client(max_judge_sequences=3) as client:
        response = await client.post(
            "/v1/judge/logprob", json=request_body, headers=_headers("admin")
        )

    _assert_error(response, status, code, *fragments)


async def test_unknown_path_is_json_404(client) -> None:
    response = await client.get("/v2/complete")

    _assert_error(response, 404, "not_found", "/v2/complete")


async def test_wrong_method_is_json_405(client) -> None:
    response = await client.get("/v1/complete")

    _assert_error(response, 405, "method_not_allowed", "GET")
