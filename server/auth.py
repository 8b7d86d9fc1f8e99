"""API keys: Bearer authentication, key ids, and the admin key.

Clients send ``Authorization: Bearer <key>``.  The server stores only SHA-256 digests of
the configured keys and compares digests with :func:`hmac.compare_digest`, against every
configured key, so the time taken does not depend on how much of a key matched.  Logs and
responses name a key by its *key id*, a prefix of its digest; they never contain a key.

Keys come from the settings (``--api-key``, ``LOWRANK_API_KEYS``, ``--admin-key``,
``LOWRANK_ADMIN_KEY``), which get the server-wide limits, and from a keys file
(:mod:`server.keys`), whose entries may set their own limits and quota.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from server.errors import ApiError
from server.keys import KeyLimits, KeysFileError, key_digest, key_id_of_digest, load_keys_file
from server.settings import Settings

__all__ = ["KeyRing", "Principal", "key_id"]

logger = logging.getLogger(__name__)

_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lowrank-steal"'}


def key_id(key: str) -> str:
    """Return the public id of ``key``: ``"key_"`` and the first 12 hex digits of its SHA-256."""
    return key_id_of_digest(key_digest(key))


@dataclass(frozen=True)
class Principal:
    """The caller behind an accepted key.

    Attributes
    ----------
    key_id : str
        Public id of the key.
    is_admin : bool
        Whether the key is the admin key.
    limits : KeyLimits or None
        Limits of a client key from the keys file; ``None`` for the server-wide limits
        (and for the admin key, to which no limits apply).
    """

    key_id: str
    is_admin: bool
    limits: KeyLimits | None = None


class KeyRing:
    """The configured keys, checked in constant time per key.

    Parameters
    ----------
    api_keys : iterable of str
        Keys of ordinary clients, with the server-wide limits.
    admin_key : str, optional
        The admin key.
    digests : iterable of (bytes, Principal), optional
        More keys given by their SHA-256 digest, such as the entries of a keys file.

    Raises
    ------
    ValueError
        If two keys have the same digest; the message names their key id.
    """

    def __init__(
        self,
        api_keys: Iterable[str],
        admin_key: str | None,
        digests: Iterable[tuple[bytes, Principal]] = (),
    ) -> None:
        entries = [(key_digest(key), Principal(key_id(key), is_admin=False)) for key in api_keys]
        if admin_key is not None:
            entries.append((key_digest(admin_key), Principal(key_id(admin_key), True)))
        entries.extend(digests)

        seen: set[bytes] = set()
        for digest, principal in entries:
            if digest in seen:
                raise ValueError(
                    f"key {principal.key_id} is configured twice (on the command line or "
                    "in the environment, and in the keys file); configure each key once"
                )
            seen.add(digest)
        self._entries = entries

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """Return the keys of ``settings``, reading its keys file if it names one.

        Raises
        ------
        KeysFileError
            If the keys file is invalid, or configures the admin key while the settings
            do too, or repeats a key given on the command line or in the environment.
        """
        if settings.keys_file is None:
            return cls(settings.api_keys, settings.admin_key)

        path = Path(settings.keys_file)
        parsed = load_keys_file(path)
        if not parsed.keys and parsed.admin is None and not settings.api_keys:
            raise KeysFileError(
                f"keys file {path} defines no key and none is given by --api-key or "
                "LOWRANK_API_KEYS; add a [keys.NAME] table (see lowrank-server hash-key)"
            )
        defaults = KeyLimits.defaults(settings)
        digests = [
            (entry.digest, Principal(key_id_of_digest(entry.digest), False, entry.limits(defaults)))
            for entry in parsed.keys.values()
        ]
        if parsed.admin is not None:
            if settings.admin_key is not None:
                raise KeysFileError(
                    f"keys file {path} has an [admin] table but an admin key is also given "
                    "by --admin-key or LOWRANK_ADMIN_KEY; configure the admin key once"
                )
            admin = parsed.admin.digest
            digests.append((admin, Principal(key_id_of_digest(admin), is_admin=True)))
        try:
            return cls(settings.api_keys, settings.admin_key, digests)
        except ValueError as error:
            raise KeysFileError(f"keys file {path}: {error}") from error

    @property
    def size(self) -> int:
        """Number of configured keys, the admin key included."""
        return len(self._entries)

    def identify(self, authorization: str | None) -> Principal | None:
        """Return the caller of an ``Authorization`` header value, or None if not accepted."""
        token = _bearer_token(authorization)
        if token is None:
            return None
        presented = key_digest(token)
        found = None
        # Compare against every key, without stopping at a match, to keep timing flat.
        for digest, principal in self._entries:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found

    def authenticate(self, authorization: str | None) -> Principal:
        """Return the caller of an ``Authorization`` header value.

        Raises
        ------
        ApiError
            401 ``missing_api_key`` without a header, 401 ``invalid_api_key`` for a
            malformed header or an unknown key.
        """
        if authorization is None or not authorization.strip():
            raise ApiError(
                401,
                "missing_api_key",
                "missing API key; send the header 'Authorization: Bearer <key>'",
                headers=_BEARER_CHALLENGE,
            )
        if _bearer_token(authorization) is None:
            raise ApiError(
                401,
                "invalid_api_key",
                "malformed Authorization header; use the form 'Bearer <key>'",
                headers=_BEARER_CHALLENGE,
            )
        principal = self.identify(authorization)
        if principal is None:
            raise ApiError(
                401,
                "invalid_api_key",
                "unknown API key; check the key given to you by the operator",
                headers=_BEARER_CHALLENGE,
            )
        return principal

    def require_admin(self, authorization: str | None) -> Principal:
        """Return the caller if its key is the admin key.

        Raises
        ------
        ApiError
            401 as :meth:`authenticate`, or 403 ``admin_required`` for a client key.
        """
        principal = self.authenticate(authorization)
        if not principal.is_admin:
            raise ApiError(
                403,
                "admin_required",
                "this route requires the admin key; client keys cannot use it",
            )
        return principal


def _bearer_token(authorization: str | None) -> str | None:
    """Return the token of a ``Bearer <token>`` header value, or None if it has another form."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token
