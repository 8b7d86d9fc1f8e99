"""Tests of the ``lowrank-server`` command line, short of starting uvicorn."""

from __future__ import annotations

import json

import pytest

from server.cli import main, parse_settings
from server.ledger import Charge, Ledger
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


def test_parse_settings_storage_flags() -> None:
    settings = parse_settings(
        [
            "--model",
            "m",
            "--api-key",
            "k",
            "--workers",
            "2",
            "--redis-url",
            "redis://127.0.0.1:6390/1",
            "--ledger",
            "/var/lib/lowrank/ledger.sqlite3",
            "--ledger-sync",
            "full",
            "--keys-file",
            "keys.toml",
        ]
    )

    assert settings.workers == 2
    assert settings.redis_url == "redis://127.0.0.1:6390/1"
    assert settings.ledger == "/var/lib/lowrank/ledger.sqlite3"
    assert settings.ledger_sync == "full"
    assert settings.keys_file == "keys.toml"


def test_parse_settings_default_ledger_is_file() -> None:
    settings = parse_settings(["--model", "m", "--api-key", "k"])

    assert settings.ledger == "lowrank-ledger.sqlite3"
    assert settings.ledger_sync == "normal"


def test_parse_settings_workers_without_redis_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        parse_settings(["--model", "m", "--api-key", "k", "--workers", "2"])

    assert info.value.code == 2
    assert "workers=2 needs --redis-url" in capsys.readouterr().err


def test_main_invalid_keys_file_exits_2(tmp_path, capsys) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[keys.alice]\nsha256 = "xyz"\n')

    with pytest.raises(SystemExit) as info:
        main(["--model", PRESET_NAMES[0], "--keys-file", str(keys_file)])

    assert info.value.code == 2
    assert "[keys.alice] sha256: must be the SHA-256" in capsys.readouterr().err


def test_main_unopenable_ledger_exits_2(tmp_path, capsys) -> None:
    ledger = tmp_path / "missing-dir" / "ledger.sqlite3"

    with pytest.raises(SystemExit) as info:
        main(["--model", PRESET_NAMES[0], "--api-key", "k", "--ledger", str(ledger)])

    assert info.value.code == 2
    assert "cannot open the usage ledger" in capsys.readouterr().err


def test_main_audit_prints_json_lines(tmp_path, capsys) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    ledger.charge("key_a", Charge(samples=2, tokens=4, prompts=[[0]], n=2), quota=None)
    ledger.charge("key_b", Charge(samples=1, tokens=6, prompts=[[]], seed=9), quota=None)
    ledger.close()

    with pytest.raises(SystemExit) as info:
        main(["audit", "--ledger", str(path), "--key-id", "key_b"])

    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["key_id"] == "key_b"
    assert entry["seed"] == 9
    assert entry["prompts"] == [[]]


def test_main_audit_missing_ledger_exits_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["audit", "--ledger", str(tmp_path / "none.sqlite3")])

    assert info.value.code == 2
    assert "no ledger file" in capsys.readouterr().err
