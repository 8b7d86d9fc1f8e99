"""Tests of the keys file: hashed keys, per-key limits, errors naming the entry and field."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest

from server.auth import KeyRing, key_id
from server.keys import KeyLimits, KeysFileError, generate_key, load_keys_file
from server.operator_cli import run_operator_command
from server.settings import Settings

ALICE_KEY = "alice-secret-key"
BOB_KEY = "bob-secret-key"
FILE_ADMIN_KEY = "file-admin-key"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return path


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return _write(
        tmp_path,
        f"""
[keys.alice]
sha256 = "{_sha(ALICE_KEY)}"
requests_per_window = 1
quota_samples = 50

[keys.bob]
sha256 = "{_sha(BOB_KEY)}"
samples_per_window = "unlimited"
""",
    )


def test_load_keys_file_fills_defaults(keys_path: Path) -> None:
    parsed = load_keys_file(keys_path)
    defaults = KeyLimits(requests_per_window=600, samples_per_window=1000, quota_samples=None)

    alice = parsed.keys["alice"].limits(defaults)
    bob = parsed.keys["bob"].limits(defaults)

    assert alice == KeyLimits(requests_per_window=1, samples_per_window=1000, quota_samples=50)
    assert bob == KeyLimits(requests_per_window=600, samples_per_window=None, quota_samples=None)
    assert parsed.admin is None


def test_load_keys_file_logs_key_ids_not_keys(keys_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="server.keys")

    load_keys_file(keys_path)

    assert f"alice={key_id(ALICE_KEY)}" in caplog.text
    assert _sha(ALICE_KEY) not in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[keys.alice]\nsha256 = "abc"\n',
            r"\[keys.alice\] sha256: must be the SHA-256 of the key as 64 lower-case hex",
        ),
        (
            f'[keys.alice]\nsha256 = "{_sha("a")}"\nquota_samples = "lots"\n',
            r"\[keys.alice\] quota_samples: must be an integer >= 0 or "
            r"\"unlimited\" \(got 'lots'\)",
        ),
        (
            f'[keys.bob]\nsha256 = "{_sha("b")}"\nsamples_per_window = 0\n',
            r"\[keys.bob\] samples_per_window: must be an integer >= 1",
        ),
        (
            f'[keys.bob]\nsha256 = "{_sha("b")}"\nrequests_per_window = 2.5\n',
            r"\[keys.bob\] requests_per_window: must be an integer >= 1 \(got 2.5\)",
        ),
        (
            f'[keys.bob]\nsha256 = "{_sha("b")}"\ncolour = "red"\n',
            r"\[keys.bob\] colour: unknown field; a key table takes",
        ),
        ("[keys.carol]\nquota_samples = 5\n", r"\[keys.carol\] sha256: is required"),
        (
            f'[admin]\nsha256 = "{_sha("x")}"\nquota_samples = 5\n',
            r"\[admin\] quota_samples: unknown field; the \[admin\] table takes only sha256",
        ),
        ("[clients]\nx = 1\n", r"clients: unknown table; the file takes \[keys.NAME\] tables"),
        (
            f'[keys.a]\nsha256 = "{_sha("same")}"\n[keys.b]\nsha256 = "{_sha("same")}"\n',
            r"\[keys.b\] sha256 repeats the digest of \[keys.a\]",
        ),
        ("[keys.alice\n", r"is not valid TOML"),
    ],
    ids=[
        "short-digest",
        "quota-word",
        "zero-window",
        "float-limit",
        "unknown-field",
        "missing-digest",
        "admin-with-limit",
        "unknown-table",
        "repeated-digest",
        "not-toml",
    ],
)
def test_load_keys_file_rejects(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(KeysFileError, match=expected) as info:
        load_keys_file(path)

    assert str(path) in str(info.value)


def test_load_keys_file_missing(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match=r"cannot read keys file .*missing\.toml.*--keys-file"):
        load_keys_file(tmp_path / "missing.toml")


def test_keyring_from_keys_file_applies_entry_limits(keys_path: Path) -> None:
    settings = Settings(model="m", keys_file=str(keys_path), requests_per_window=9)

    ring = KeyRing.from_settings(settings)

    alice = ring.identify(f"Bearer {ALICE_KEY}")
    bob = ring.identify(f"Bearer {BOB_KEY}")
    assert alice is not None and bob is not None
    assert alice.key_id == key_id(ALICE_KEY)
    assert alice.limits == KeyLimits(1, 1_000_000, 50)
    assert bob.limits == KeyLimits(9, None, None)
    assert ring.identify(f"Bearer {_sha(ALICE_KEY)}") is None


def test_keyring_combines_file_and_settings_keys(keys_path: Path) -> None:
    settings = Settings(
        model="m", keys_file=str(keys_path), api_keys=("env-key",), admin_key="env-admin"
    )

    ring = KeyRing.from_settings(settings)

    plain = ring.identify("Bearer env-key")
    admin = ring.identify("Bearer env-admin")
    assert plain is not None and plain.limits is None
    assert admin is not None and admin.is_admin
    assert ring.size == 4


def test_keyring_admin_from_keys_file(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[admin]\nsha256 = "{_sha(FILE_ADMIN_KEY)}"\n')

    ring = KeyRing.from_settings(Settings(model="m", keys_file=str(path)))

    assert ring.require_admin(f"Bearer {FILE_ADMIN_KEY}").is_admin


def test_keyring_rejects_admin_configured_twice(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[admin]\nsha256 = "{_sha(FILE_ADMIN_KEY)}"\n')
    settings = Settings(model="m", keys_file=str(path), admin_key="another-admin")

    with pytest.raises(KeysFileError, match=r"has an \[admin\] table but an admin key is also"):
        KeyRing.from_settings(settings)


def test_keyring_rejects_key_in_file_and_settings(keys_path: Path) -> None:
    settings = Settings(model="m", keys_file=str(keys_path), api_keys=(ALICE_KEY,))

    with pytest.raises(KeysFileError, match=f"key {key_id(ALICE_KEY)} is configured twice"):
        KeyRing.from_settings(settings)


def test_generate_key_is_random_and_long() -> None:
    keys = {generate_key() for _ in range(20)}

    assert len(keys) == 20
    assert all(len(key) >= 43 for key in keys)


def test_hash_key_command_prints_table() -> None:
    out = io.StringIO()

    status = run_operator_command(
        ["hash-key", "--name", "alice"], stdin=io.StringIO(ALICE_KEY + "\n"), stdout=out
    )

    assert status == 0
    lines = out.getvalue().splitlines()
    assert lines == [
        f"# key id {key_id(ALICE_KEY)}",
        "[keys.alice]",
        f'sha256 = "{_sha(ALICE_KEY)}"',
    ]


def test_hash_key_command_output_loads(tmp_path: Path) -> None:
    out = io.StringIO()
    run_operator_command(["hash-key", "--generate", "--name", "new"], stdout=out)
    key = out.getvalue().splitlines()[0].removeprefix("# new key, shown only now: ")
    path = _write(tmp_path, out.getvalue())

    ring = KeyRing.from_settings(Settings(model="m", keys_file=str(path)))

    assert ring.identify(f"Bearer {key}") is not None


def test_hash_key_command_empty_input_exits_2(capsys) -> None:
    status = run_operator_command(["hash-key"], stdin=io.StringIO("\n"), stdout=io.StringIO())

    assert status == 2
    assert "no key on standard input" in capsys.readouterr().err


@pytest.mark.anyio
async def test_keys_file_limits_apply_per_key(make_client, keys, keys_path: Path) -> None:
    request = {"prompts": [[]], "n": 2}
    async with make_client(keys_file=str(keys_path)) as client:
        alice = [
            await client.post("/v1/complete", json=request, headers=keys.auth(ALICE_KEY))
            for _ in range(2)
        ]
        plain = [
            await client.post("/v1/complete", json=request, headers=keys.auth(keys.client))
            for _ in range(2)
        ]
        info = await client.get("/v1/model", headers=keys.auth(ALICE_KEY))

    assert [response.status_code for response in alice] == [200, 429]
    assert alice[0].headers["X-RateLimit-Limit"] == "1"
    assert alice[0].json()["usage"]["quota_remaining"] == 48
    assert [response.status_code for response in plain] == [200, 200]
    assert info.json()["limits"]["requests_per_window"] == 1
    assert info.json()["limits"]["quota_samples"] == 50


def test_keyring_rejects_keys_file_without_client_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("")
    settings = Settings(model="test-hmm", keys_file=str(path))

    with pytest.raises(KeysFileError, match="defines no key"):
        KeyRing.from_settings(settings)


def test_hash_key_command_quotes_name_with_space(tmp_path: Path) -> None:
    out = io.StringIO()
    run_operator_command(
        ["hash-key", "--name", "al ice"], stdin=io.StringIO(ALICE_KEY + "\n"), stdout=out
    )
    path = _write(tmp_path, out.getvalue())

    ring = KeyRing.from_settings(Settings(model="m", keys_file=str(path)))

    assert '[keys."al ice"]' in out.getvalue()
    assert ring.identify(f"Bearer {ALICE_KEY}") is not None
