"""Tests of server settings and reading keys from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.settings import Settings


def test_settings_from_env_reads_keys() -> None:
    env = {"LOWRANK_API_KEYS": " k1, k2 ,,", "LOWRANK_ADMIN_KEY": "boss"}

    settings = Settings.from_env(env, model="m")

    assert settings.api_keys == ("k1", "k2")
    assert settings.admin_key == "boss"


def test_settings_explicit_keys_override_env() -> None:
    env = {"LOWRANK_API_KEYS": "k1", "LOWRANK_ADMIN_KEY": "boss"}

    settings = Settings.from_env(env, model="m", api_keys=("mine",), admin_key="chief")

    assert settings.api_keys == ("mine",)
    assert settings.admin_key == "chief"


def test_settings_require_some_key() -> None:
    with pytest.raises(ValidationError, match="no API key configured; pass --api-key"):
        Settings.from_env({}, model="m")


def test_settings_reject_admin_key_as_client_key() -> None:
    with pytest.raises(ValidationError, match="admin key is also listed as an API key"):
        Settings(model="m", api_keys=("same",), admin_key="same")


@pytest.mark.parametrize("key", ["", "has space", "a,b"], ids=["empty", "space", "comma"])
def test_settings_reject_bad_key(key: str) -> None:
    with pytest.raises(ValidationError, match="API key 0"):
        Settings(model="m", api_keys=(key,))


def test_settings_repr_hides_keys() -> None:
    settings = Settings(model="m", api_keys=("secret-1",), admin_key="secret-2")

    assert "secret" not in repr(settings)


def test_settings_are_frozen() -> None:
    settings = Settings(model="m", api_keys=("k",))

    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [("requests_per_window", 0), ("max_prompts_per_request", 10**6), ("window_seconds", 0)],
    ids=["zero-requests", "prompts-over-protocol", "zero-window"],
)
def test_settings_reject_out_of_range(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(model="m", api_keys=("k",), **{field: value})


def test_settings_workers_need_redis() -> None:
    with pytest.raises(ValidationError, match="workers=2 needs --redis-url"):
        Settings(model="m", api_keys=("k",), workers=2, ledger="ledger.sqlite3")


def test_settings_workers_need_ledger_file() -> None:
    with pytest.raises(ValidationError, match="workers=2 needs a ledger file"):
        Settings(model="m", api_keys=("k",), workers=2, redis_url="redis://127.0.0.1:6379/0")


def test_settings_reject_other_storage_url_without_echoing_it() -> None:
    with pytest.raises(ValidationError, match="must start with redis://") as info:
        Settings(model="m", api_keys=("k",), redis_url="memcached://user:hunter2@host")

    assert "hunter2" not in str(info.value.errors()[0]["msg"])


def test_settings_keys_file_alone_is_enough() -> None:
    settings = Settings(model="m", keys_file="keys.toml")

    assert settings.api_keys == ()


def test_settings_redis_url_from_env() -> None:
    env = {"LOWRANK_API_KEYS": "k1", "LOWRANK_REDIS_URL": "redis://127.0.0.1:7000/2"}

    settings = Settings.from_env(env, model="m")

    assert settings.redis_url == "redis://127.0.0.1:7000/2"


def test_settings_worker_env_round_trip() -> None:
    settings = Settings(
        model="m",
        api_keys=("k1", "k2"),
        admin_key="boss",
        workers=3,
        redis_url="redis://127.0.0.1:7000/0",
        ledger="/tmp/ledger.sqlite3",
        quota_samples=5,
    )

    restored = Settings.from_worker_env({"LOWRANK_SERVER_SETTINGS": settings.to_worker_env()})

    assert restored == settings


def test_settings_from_worker_env_missing() -> None:
    with pytest.raises(RuntimeError, match="LOWRANK_SERVER_SETTINGS is not set"):
        Settings.from_worker_env({})
