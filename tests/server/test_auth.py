"""Tests of Bearer-key authentication and key ids."""

from __future__ import annotations

import hashlib

import pytest

from server.auth import KeyRing, key_id
from server.errors import ApiError


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(["alpha-key", "beta-key"], admin_key="root-key")


def test_key_id_is_digest_prefix() -> None:
    expected = "key_" + hashlib.sha256(b"alpha-key").hexdigest()[:12]

    assert key_id("alpha-key") == expected
    assert "alpha" not in key_id("alpha-key")


def test_keyring_identifies_client_and_admin(ring: KeyRing) -> None:
    client = ring.identify("Bearer beta-key")
    admin = ring.identify("bearer   root-key")

    assert client is not None and client.key_id == key_id("beta-key")
    assert not client.is_admin
    assert admin is not None and admin.is_admin


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer wrong", "Basic alpha-key", "alpha-key", "Bearer alpha-key x"],
    ids=["none", "empty", "no-token", "wrong", "basic", "no-scheme", "extra-word"],
)
def test_keyring_identify_rejects(ring: KeyRing, header: str | None) -> None:
    assert ring.identify(header) is None


def test_authenticate_missing_header(ring: KeyRing) -> None:
    with pytest.raises(ApiError, match="missing API key") as info:
        ring.authenticate(None)

    assert info.value.status_code == 401
    assert info.value.code == "missing_api_key"


def test_authenticate_unknown_key(ring: KeyRing) -> None:
    with pytest.raises(ApiError, match="unknown API key") as info:
        ring.authenticate("Bearer gamma-key")

    assert info.value.code == "invalid_api_key"
    assert "gamma" not in info.value.message


def test_require_admin_rejects_client(ring: KeyRing) -> None:
    with pytest.raises(ApiError, match="requires the admin key") as info:
        ring.require_admin("Bearer alpha-key")

    assert info.value.status_code == 403
    assert info.value.code == "admin_required"


def test_require_admin_accepts_admin(ring: KeyRing) -> None:
    assert ring.require_admin("Bearer root-key").is_admin


def test_keyring_without_admin_key(ring: KeyRing) -> None:
    no_admin = KeyRing(["alpha-key"], admin_key=None)

    with pytest.raises(ApiError, match="requires the admin key"):
        no_admin.require_admin("Bearer alpha-key")
