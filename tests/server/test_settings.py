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
