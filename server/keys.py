"""The keys file: client keys stored as SHA-256 digests, each with its own limits and quota.

The file is TOML.  Each ``[keys.NAME]`` table is one client key; ``NAME`` is a label for
the operator and appears only in configuration errors.  Logs, responses and the ledger
name a key by its *key id*, ``"key_"`` followed by the first 12 hex digits of its digest,
so renaming an entry keeps its usage::

    [keys.alice]
    sha256 = "4a5c...64 hex digits..."
    requests_per_window = 120      # optional; default --requests-per-window
    samples_per_window = 50000     # optional; an integer or "unlimited"
    quota_samples = 1000000        # optional; lifetime samples, an integer or "unlimited"

    [admin]                        # optional; the admin key has no limits
    sha256 = "..."

The server stores only the digests, never the keys.  To add a key, hash it
with ``lowrank-server hash-key`` (it reads the key from standard input, so the key stays
out of the shell history and the process list) or let ``lowrank-server hash-key
--generate`` make a random one.  Either prints the ``sha256`` line and the key id.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from server.settings import Settings

__all__ = [
    "KEY_ID_HEX_CHARS",
    "ClientKeyEntry",
    "KeyLimits",
    "KeysFile",
    "KeysFileError",
    "generate_key",
    "key_digest",
    "key_id_of_digest",
    "load_keys_file",
]

logger = logging.getLogger(__name__)

KEY_ID_HEX_CHARS = 12
_GENERATED_KEY_BYTES = 32

Unlimited = Literal["unlimited"]
PositiveLimit = Annotated[StrictInt, Field(ge=1)]
NonNegativeLimit = Annotated[StrictInt, Field(ge=0)]


def key_digest(key: str) -> bytes:
    """Return the SHA-256 digest of ``key`` encoded as UTF-8."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id_of_digest(digest: bytes) -> str:
    """Return the public key id of a key digest: ``"key_"`` and its first 12 hex digits."""
    return "key_" + digest.hex()[:KEY_ID_HEX_CHARS]


def generate_key() -> str:
    """Return a new random key of 256 bits, URL-safe base64 without padding."""
    return secrets.token_urlsafe(_GENERATED_KEY_BYTES)


@dataclass(frozen=True)
class KeyLimits:
    """Rate limits and quota of one client key; ``None`` means unlimited.

    Attributes
    ----------
    requests_per_window : int
        Requests per window.
    samples_per_window : int or None
        Samples per window.
    quota_samples : int or None
        Samples the key may ever buy.
    """

    requests_per_window: int
    samples_per_window: int | None
    quota_samples: int | None

    @classmethod
    def defaults(cls, settings: Settings) -> KeyLimits:
        """Return the server-wide limits of ``settings``."""
        return cls(
            settings.requests_per_window, settings.samples_per_window, settings.quota_samples
        )


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the key as 64 lower-case hex digits.",
    )

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256)


class ClientKeyEntry(_Entry):
    """One ``[keys.NAME]`` table; a missing limit takes the server-wide default."""

    requests_per_window: PositiveLimit | None = None
    samples_per_window: PositiveLimit | Unlimited | None = None
    quota_samples: NonNegativeLimit | Unlimited | None = None

    def limits(self, defaults: KeyLimits) -> KeyLimits:
        """Return the limits of this key, filling missing fields from ``defaults``."""
        return KeyLimits(
            requests_per_window=self.requests_per_window or defaults.requests_per_window,
            samples_per_window=_resolve(self.samples_per_window, defaults.samples_per_window),
            quota_samples=_resolve(self.quota_samples, defaults.quota_samples),
        )


class AdminKeyEntry(_Entry):
    """The ``[admin]`` table."""


class KeysFile(BaseModel):
    """A parsed keys file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: dict[str, ClientKeyEntry] = Field(default_factory=dict)
    admin: AdminKeyEntry | None = None


class KeysFileError(ValueError):
    """A keys file that cannot be read or is invalid; the message names the entry and field."""


def _resolve(value: int | Unlimited | None, default: int | None) -> int | None:
    if value is None:
        return default
    if value == "unlimited":
        return None
    return value


def load_keys_file(path: str | Path) -> KeysFile:
    """Read and validate the keys file at ``path``.

    Raises
    ------
    KeysFileError
        If the file is missing, is not TOML, has an unknown table or field, a digest that
        is not 64 hex digits, an invalid limit, or the same digest twice.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise KeysFileError(
            f"cannot read keys file {path}: {error.strerror or error}; check --keys-file"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise KeysFileError(f"keys file {path} is not valid TOML: {error}") from error

    try:
        parsed = KeysFile.model_validate(data)
    except ValidationError as error:
        raise KeysFileError(f"invalid keys file {path}: {_describe(error)}") from None

    _check_distinct(parsed, path)
    logger.info(
        "read %d client keys%s from %s: %s",
        len(parsed.keys),
        " and the admin key" if parsed.admin else "",
        path,
        ", ".join(f"{name}={key_id_of_digest(e.digest)}" for name, e in parsed.keys.items()),
    )
    return parsed


_EXPECTED = {
    "requests_per_window": "must be an integer >= 1",
    "samples_per_window": 'must be an integer >= 1 or "unlimited"',
    "quota_samples": 'must be an integer >= 0 or "unlimited"',
    "sha256": "must be the SHA-256 of the key as 64 lower-case hex digits "
    "(see lowrank-server hash-key)",
}
_MAX_PROBLEMS = 3


def _describe(error: ValidationError) -> str:
    """Describe the problems of ``error`` as ``[keys.NAME] field: problem``, one per field."""
    problems: dict[str, str] = {}
    for item in error.errors():
        # Members of a union (int or "unlimited") add a location part each; keep field names.
        location = [str(part) for part in item["loc"]]
        location = [part for part in location if not _is_union_tag(part)]
        if location[:1] == ["keys"] and len(location) >= 2:
            where = f"[keys.{location[1]}] " + ".".join(location[2:])
        elif location[:1] == ["admin"]:
            where = "[admin] " + ".".join(location[1:])
        else:
            where = ".".join(location) or "top level"
        problems.setdefault(where.strip(), _message(item, location))
    listed = [f"{where}: {text}" for where, text in list(problems.items())[:_MAX_PROBLEMS]]
    return "; ".join(listed)


def _is_union_tag(part: str) -> bool:
    return part in ("int", "constrained-int") or part.startswith(("literal[", "function-"))


def _message(item: Any, location: list[str]) -> str:
    kind = item.get("type", "")
    field = location[-1] if location else ""
    if kind == "extra_forbidden" and len(location) == 1:
        return "unknown table; the file takes [keys.NAME] tables and one [admin] table"
    if kind == "extra_forbidden" and location[0] == "admin":
        return "unknown field; the [admin] table takes only sha256"
    if kind == "extra_forbidden":
        return "unknown field; a key table takes " + ", ".join(_EXPECTED)
    if kind == "missing":
        return "is required"
    if field in _EXPECTED:
        return f"{_EXPECTED[field]} (got {item.get('input')!r})"
    return f"{item.get('msg', 'invalid value')} (got {item.get('input')!r})"


def _check_distinct(parsed: KeysFile, path: Path) -> None:
    seen: dict[str, str] = {}
    entries: list[tuple[str, _Entry]] = [(f"[keys.{n}]", e) for n, e in parsed.keys.items()]
    if parsed.admin is not None:
        entries.append(("[admin]", parsed.admin))
    for where, entry in entries:
        if entry.sha256 in seen:
            raise KeysFileError(
                f"invalid keys file {path}: {where} sha256 repeats the digest of "
                f"{seen[entry.sha256]}; give each entry its own key"
            )
        seen[entry.sha256] = where
