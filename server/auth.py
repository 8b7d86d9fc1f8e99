"""API keys: Bearer authentication, key ids, and the admin key.

Clients send ``Authorization: Bearer <key>``.  The server stores only SHA-256 digests of
the configured keys and compares digests with :func:`hmac.compare_digest`, against every
configured key, so the time taken does not depend on how much of a key matched.  Logs and
responses name a key by its *key id*, a prefix of its digest; they never contain a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from server.errors import ApiError

__all__ = ["KeyRing", "Principal", "key_id"]

logger = logging.getLogger(__name__)

_KEY_ID_HEX_CHARS = 12
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lowrank-steal"'}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id(key: str) -> str:
    """Return the public id of ``key``: ``"key_"`` and the first 12 hex digits of its SHA-256."""
    return "key_" + _digest(key).hex()[:_KEY_ID_HEX_CHARS]


@dataclass(frozen=True)
class Principal:
    """The caller behind an accepted key.

    Attributes
    ----------
    key_id : str
        Public id of the key.
    is_admin : bool
        Whether the key is the admin key.
    """

    key_id: str
    is_admin: bool


class KeyRing:
    """The configured keys, checked in constant time per key.

    Parameters
    ----------
    api_keys : iterable of str
        Keys of ordinary clients.
    admin_key : str, optional
        The admin key.
    """

    def __init__(self, api_keys: Iterable[str], admin_key: str | None) -> None:
        self._entries = [(_digest(key), Principal(key_id(key), is_admin=False)) for key in api_keys]
        if admin_key is not None:
            self._entries.append((_digest(admin_key), Principal(key_id(admin_key), True)))

    def identify(self, authorization: str | None) -> Principal | None:
        """Return the caller of an ``Authorization`` header value, or None if not accepted."""
        token = _bearer_token(authorization)
        if token is None:
            return None
        presented = _digest(token)
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
