"""Tests of admission control: moving windows, costs, Retry-After, quotas, and their headers."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.auth import Principal
from server.errors import ApiError
from server.ledger import Charge, KeyUsage, Ledger
from server.limiter import Limiter
from server.window_storage import StorageHealth, window_storage

CLIENT = Principal("key_client", is_admin=False)
ADMIN = Principal("key_admin", is_admin=True)


def _charge(samples: int) -> Charge:
    return Charge(samples=samples, tokens=samples, prompts=[[]], n=samples)


def _limiter(make_settings, clock, **overrides) -> Limiter:
    return Limiter(make_settings(**overrides), Ledger(":memory:"), clock)


def test_limiter_admits_within_request_window(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, requests_per_window=3)

    usages = [limiter.admit(CLIENT, _charge(10)) for _ in range(3)]

    assert [usage.requests for usage in usages] == [1, 2, 3]
    assert usages[-1].samples == 30


def test_limiter_rejects_request_over_window_with_retry_after(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, requests_per_window=2, window_seconds=60)
    limiter.admit(CLIENT, _charge(1))
    clock.advance(15)
    limiter.admit(CLIENT, _charge(1))
    clock.advance(5)

    with pytest.raises(ApiError, match=r"rate limit reached .* requests \(2 per 60 s\)") as info:
        limiter.admit(CLIENT, _charge(1))

    assert info.value.status_code == 429
    assert info.value.code == "rate_limited"
    # The first request leaves the window 60 s after it was made, 40 s from now.
    assert info.value.headers["Retry-After"] == "40"


def test_limiter_admits_again_after_retry_after(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, requests_per_window=1, window_seconds=10)
    limiter.admit(CLIENT, _charge(1))
    with pytest.raises(ApiError) as info:
        limiter.admit(CLIENT, _charge(1))

    clock.advance(float(info.value.headers["Retry-After"]))

    assert limiter.admit(CLIENT, _charge(1)).requests == 2


def test_limiter_charges_samples_by_cost(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, samples_per_window=100, window_seconds=30)
    limiter.admit(CLIENT, _charge(60))
    clock.advance(10)

    with pytest.raises(ApiError, match=r"samples \(100 per 30 s\).*costs 1 request and 41") as info:
        limiter.admit(CLIENT, _charge(41))

    assert info.value.headers["Retry-After"] == "20"
    assert limiter.admit(CLIENT, _charge(40)).samples == 100


def test_limiter_rejected_request_charges_nothing(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, samples_per_window=100)
    limiter.admit(CLIENT, _charge(90))

    with pytest.raises(ApiError):
        limiter.admit(CLIENT, _charge(20))

    assert limiter.ledger.usage(CLIENT.key_id).requests == 1
    assert limiter.headers(CLIENT)["X-RateLimit-Remaining"] == str(600 - 1)
    assert limiter.headers(CLIENT)["X-RateLimit-Samples-Remaining"] == "10"


def test_limiter_request_larger_than_window_is_413(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, samples_per_window=100)

    with pytest.raises(ApiError, match="costs 101 samples but one window allows 100") as info:
        limiter.admit(CLIENT, _charge(101))

    assert info.value.status_code == 413
    assert info.value.code == "request_too_large"


def test_limiter_quota_exhausted(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, quota_samples=50)
    limiter.admit(CLIENT, _charge(50))

    with pytest.raises(ApiError, match="has 0 of its 50 samples left.*no retry will help") as info:
        limiter.admit(CLIENT, _charge(1))

    assert info.value.status_code == 429
    assert info.value.code == "quota_exhausted"
    assert "Retry-After" not in info.value.headers


def test_limiter_quota_partly_left_names_amount(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, quota_samples=50)
    limiter.admit(CLIENT, _charge(45))

    with pytest.raises(ApiError, match="request at most 5 samples"):
        limiter.admit(CLIENT, _charge(10))

    assert limiter.quota_remaining(CLIENT) == 5


def test_limiter_quota_survives_window_reset(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, quota_samples=10, window_seconds=1)
    limiter.admit(CLIENT, _charge(10))
    clock.advance(3600)

    with pytest.raises(ApiError, match="sample quota exhausted"):
        limiter.admit(CLIENT, _charge(1))


def test_limiter_admin_is_exempt(make_settings, clock) -> None:
    limiter = _limiter(
        make_settings, clock, requests_per_window=1, samples_per_window=5, quota_samples=5
    )

    usages = [limiter.admit(ADMIN, _charge(100)) for _ in range(3)]

    assert usages[-1].samples == 300
    assert limiter.quota_remaining(ADMIN) is None


def test_limiter_keys_are_independent(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, requests_per_window=1)
    limiter.admit(CLIENT, _charge(1))

    usage = limiter.admit(Principal("key_other", is_admin=False), _charge(1))

    assert usage.requests == 1


def test_limiter_headers_for_unknown_caller_show_full_window(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, requests_per_window=9, window_seconds=30)

    headers = limiter.headers(None)

    assert headers["X-RateLimit-Limit"] == "9"
    assert headers["X-RateLimit-Remaining"] == "9"
    assert headers["X-RateLimit-Reset"] == "30"


def test_limiter_headers_count_down(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, requests_per_window=9, window_seconds=30)
    limiter.admit(CLIENT, _charge(1))
    clock.advance(12.5)

    headers = limiter.headers(CLIENT)

    assert headers["X-RateLimit-Remaining"] == "8"
    assert headers["X-RateLimit-Reset"] == "18"


def test_limiter_without_sample_window_omits_sample_headers(make_settings, clock) -> None:
    limiter = _limiter(make_settings, clock, samples_per_window=None)

    assert "X-RateLimit-Samples-Limit" not in limiter.headers(CLIENT)
    assert limiter.admit(CLIENT, _charge(10**6)).samples == 10**6


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=7), st.integers(min_value=1, max_value=40)),
        min_size=1,
        max_size=60,
    )
)
def test_limiter_never_exceeds_window_or_quota(make_settings, steps) -> None:
    window, per_window, max_requests, quota = 10, 100, 6, 400
    now = [0.0]
    limiter = Limiter(
        make_settings(
            requests_per_window=max_requests,
            samples_per_window=per_window,
            window_seconds=window,
            quota_samples=quota,
        ),
        Ledger(":memory:"),
        lambda: now[0],
    )
    admitted: list[tuple[float, int]] = []

    for wait, cost in steps:
        now[0] += wait
        recent = [c for t, c in admitted if t > now[0] - window]
        spent = sum(c for _, c in admitted)
        try:
            limiter.admit(CLIENT, _charge(cost))
        except ApiError as error:
            # A rejection must be justified by the window or the quota.
            if error.code == "quota_exhausted":
                assert spent + cost > quota
            else:
                assert error.code == "rate_limited"
                assert sum(recent) + cost > per_window or len(recent) >= max_requests
            continue
        admitted.append((now[0], cost))
        assert sum(recent) + cost <= per_window
        assert len(recent) + 1 <= max_requests

    assert sum(c for _, c in admitted) <= quota
    assert limiter.ledger.usage(CLIENT.key_id).samples == sum(c for _, c in admitted)


@pytest.mark.anyio
async def test_complete_rate_limited_has_retry_after_and_headers(make_client, keys, clock) -> None:
    request = {"prompts": [[]], "n": 2}
    async with make_client(requests_per_window=2, window_seconds=60) as client:
        first = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
        clock.advance(10)
        second = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
        clock.advance(5)
        third = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limited"
    assert "retry after 45 s" in third.json()["error"]["message"]
    assert third.headers["Retry-After"] == "45"
    assert third.headers["X-RateLimit-Limit"] == "2"
    assert third.headers["X-RateLimit-Remaining"] == "0"
    assert third.headers["X-RateLimit-Reset"] == "45"


@pytest.mark.anyio
async def test_complete_admitted_after_window_passes(make_client, keys, clock) -> None:
    request = {"prompts": [[]]}
    async with make_client(requests_per_window=1, window_seconds=20) as client:
        await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
        rejected = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
        clock.advance(int(rejected.headers["Retry-After"]))
        retried = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    assert rejected.status_code == 429
    assert retried.status_code == 200


@pytest.mark.anyio
async def test_complete_sample_window_costs_prompts_times_n(make_client, keys) -> None:
    async with make_client(samples_per_window=100) as client:
        first = await client.post(
            "/v1/complete", json={"prompts": [[], [0]], "n": 40}, headers=keys.auth(keys.client)
        )
        second = await client.post(
            "/v1/complete", json={"prompts": [[], [0]], "n": 11}, headers=keys.auth(keys.client)
        )

    assert first.headers["X-RateLimit-Samples-Remaining"] == "20"
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limited"
    assert "22 samples" in second.json()["error"]["message"]


@pytest.mark.anyio
async def test_complete_quota_exhausted(make_client, keys) -> None:
    request = {"prompts": [[]], "n": 30}
    async with make_client(quota_samples=60) as client:
        ok = [
            await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
            for _ in range(2)
        ]
        refused = await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))

    assert [response.status_code for response in ok] == [200, 200]
    assert ok[0].json()["usage"]["quota_remaining"] == 30
    assert ok[1].json()["usage"]["quota_remaining"] == 0
    assert refused.status_code == 429
    body = refused.json()["error"]
    assert body["code"] == "quota_exhausted"
    assert "0 of its 60 samples left" in body["message"]
    assert "Retry-After" not in refused.headers
    assert "X-RateLimit-Remaining" in refused.headers


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_limiter_unreachable_redis_is_503_and_charges_nothing(make_settings, caplog) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    ledger = Ledger(":memory:")
    limiter = Limiter(settings, ledger, time.time, window_storage(settings))
    caplog.set_level(logging.INFO, logger="server.window_storage")

    errors = []
    for _ in range(3):
        with pytest.raises(
            ApiError, match=r"storage cannot be reached.*nothing was charged"
        ) as info:
            limiter.admit(CLIENT, _charge(5))
        errors.append(info.value)

    assert {(error.status_code, error.code) for error in errors} == {(503, "limiter_unavailable")}
    assert errors[0].headers["Retry-After"] == "1"
    assert ledger.usage(CLIENT.key_id) == KeyUsage()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "rate-limit storage unavailable" in warnings[0].getMessage()


def test_limiter_headers_during_outage_report_nothing_left(make_settings) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    limiter = Limiter(settings, Ledger(":memory:"), time.time, window_storage(settings))

    headers = limiter.headers(CLIENT)

    assert headers["X-RateLimit-Limit"] == "600"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Reset"] == "1"


def test_limiter_admin_needs_no_storage(make_settings) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    limiter = Limiter(settings, Ledger(":memory:"), time.time, window_storage(settings))

    usage = limiter.admit(ADMIN, _charge(7))

    assert usage.samples == 7


def test_storage_health_logs_outage_once_and_recovery(clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server.window_storage")
    health = StorageHealth(clock)

    health.succeeded()
    health.failed(ConnectionError("refused"))
    clock.advance(4.5)
    health.failed(ConnectionError("refused again"))
    down = health.is_down
    health.succeeded()
    health.succeeded()

    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert down is True
    assert health.is_down is False
    assert len(messages) == 2
    assert messages[0][0] == logging.WARNING
    assert "unavailable (refused)" in messages[0][1]
    assert messages[1] == (
        logging.INFO,
        "rate-limit storage available again after 4.5 s; admitting requests",
    )


def test_limiter_ledger_failure_is_503(make_settings, clock, tmp_path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    limiter = Limiter(make_settings(), Ledger(path, read_only=True), clock)

    with pytest.raises(ApiError, match="usage ledger cannot be reached") as info:
        limiter.admit(CLIENT, _charge(1))

    assert info.value.status_code == 503
    assert info.value.code == "ledger_unavailable"
