"""Tests of the ``lowrank-server`` command line, short of starting uvicorn."""

from __future__ import annotations

import pytest

from server.cli import main, parse_settings
from shared.presets import PRESET_NAMES


def test_parse_settings_reads_flags() -> None:
    settings = parse_settings(
        [
            "--model",
            "some-model",
            "--port",
            "9123",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--admin-key",
            "boss",
            "--probabilities",
            "--samples-per-window",
            "unlimited",
            "--quota-samples",
            "1_000",
            "--max-n",
            "50",
        ]
    )

    assert settings.model == "some-model"
    assert settings.port == 9123
    assert settings.api_keys == ("k1", "k2")
    assert settings.admin_key == "boss"
    assert settings.probabilities is True
    assert settings.samples_per_window is None
    assert settings.quota_samples == 1000
    assert settings.max_samples_per_prompt == 50
    assert settings.requests_per_window == 600


def test_parse_settings_keys_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("LOWRANK_API_KEYS", "env-1,env-2")
    monkeypatch.setenv("LOWRANK_ADMIN_KEY", "env-admin")

    settings = parse_settings(["--model", "m"])

    assert settings.api_keys == ("env-1", "env-2")
    assert settings.admin_key == "env-admin"


def test_parse_settings_without_keys_exits_2(monkeypatch, capsys) -> None:
    monkeypatch.delenv("LOWRANK_API_KEYS", raising=False)
    monkeypatch.delenv("LOWRANK_ADMIN_KEY", raising=False)

    with pytest.raises(SystemExit) as info:
        parse_settings(["--model", "m"])

    assert info.value.code == 2
    assert "no API key configured" in capsys.readouterr().err


def test_parse_settings_bad_limit_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        parse_settings(["--model", "m", "--api-key", "k", "--quota-samples", "lots"])

    assert info.value.code == 2
    assert "expected an integer or 'unlimited', got 'lots'" in capsys.readouterr().err


def test_main_unknown_model_exits_2_listing_presets(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--model", "no-such-model-xyz", "--api-key", "k"])

    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot load model 'no-such-model-xyz'" in err
    for name in PRESET_NAMES:
        assert name in err
