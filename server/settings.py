"""Settings of the model server: which model it hosts, where it listens, its keys and limits.

API keys may also come from the environment, so that they stay out of the process list:

``LOWRANK_API_KEYS``
    Comma-separated API keys of paying clients.
``LOWRANK_ADMIN_KEY``
    The admin key.  It alone may call ``POST /v1/judge/logprob``, and on ``POST
    /v1/complete`` it is exempt from rate limits and the sample quota.
``LOWRANK_REDIS_URL``
    The Redis URL, which may contain a password.

Values given explicitly (command-line flags) take precedence over the environment.

Client keys with their own limits and quota come from a keys file (``keys_file``, see
:mod:`server.keys`).  The usage ledger is an SQLite database at ``ledger``.  Its default
here, ``":memory:"``, keeps usage in process memory for tests and embedding.  The
``lowrank-server`` command defaults to a file instead, so that quotas survive restarts.  With
``redis_url`` set, the rate-limit windows live in Redis and several workers or replicas
share them; ``workers > 1`` requires it and a ledger file.

Settings reach the processes of a multi-worker server as JSON in ``LOWRANK_SERVER_SETTINGS``
(:meth:`Settings.to_worker_env`, :meth:`Settings.from_worker_env`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.protocol import MAX_JUDGE_SEQUENCES, MAX_PROMPTS, MAX_SAMPLES_PER_PROMPT

__all__ = [
    "ADMIN_KEY_ENV",
    "API_KEYS_ENV",
    "IN_MEMORY_LEDGER",
    "REDIS_URL_ENV",
    "SETTINGS_ENV",
    "Settings",
]

logger = logging.getLogger(__name__)

API_KEYS_ENV = "LOWRANK_API_KEYS"
ADMIN_KEY_ENV = "LOWRANK_ADMIN_KEY"
REDIS_URL_ENV = "LOWRANK_REDIS_URL"
SETTINGS_ENV = "LOWRANK_SERVER_SETTINGS"
IN_MEMORY_LEDGER = ":memory:"
REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")
MAX_WORKERS = 64

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class Settings(BaseModel):
    """Configuration of one server process.

    A limit of ``None`` means unlimited.  Rate limits use a moving window of
    ``window_seconds`` per API key; the quota is a lifetime total per key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        min_length=1, description="Preset name, preset with parameters, or model file path."
    )
    model_id: str | None = Field(
        default=None,
        min_length=1,
        description="Name published for the model; default: the preset name without its "
        "parameters (they may include a secret seed), or the model file's name.",
    )
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    api_keys: tuple[str, ...] = Field(default=(), repr=False, description="Client API keys.")
    admin_key: str | None = Field(default=None, repr=False, description="The admin key.")
    requests_per_window: int = Field(default=600, ge=1, description="Requests per key per window.")
    samples_per_window: int | None = Field(
        default=1_000_000, ge=1, description="Samples per key per window."
    )
    window_seconds: int = Field(default=60, ge=1, description="Rate-limit window in seconds.")
    quota_samples: int | None = Field(default=None, ge=0, description="Lifetime samples per key.")
    max_prompts_per_request: int = Field(default=1000, ge=1, le=MAX_PROMPTS)
    max_samples_per_prompt: int = Field(default=100_000, ge=1, le=MAX_SAMPLES_PER_PROMPT)
    max_tokens_per_request: int = Field(
        default=5_000_000, ge=1, description="Upper bound on n x (tokens per prompt) summed."
    )
    max_judge_sequences: int = Field(default=10_000, ge=1, le=MAX_JUDGE_SEQUENCES)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Request body cap.")
    probabilities: bool = Field(default=False, description="Sell exact next-token laws.")
    log_level: LogLevel = "INFO"
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS, description="uvicorn worker processes.")
    redis_url: str | None = Field(
        default=None, repr=False, description="Redis URL of the shared rate-limit windows."
    )
    ledger: str = Field(
        default=IN_MEMORY_LEDGER,
        min_length=1,
        description="SQLite file of the usage ledger and query audit; ':memory:' for none.",
    )
    ledger_sync: Literal["normal", "full"] = Field(
        default="normal",
        description="'full' syncs every charge to disk, surviving power loss as well as crashes.",
    )
    keys_file: str | None = Field(
        default=None, description="TOML file of hashed client keys with per-key limits."
    )

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for index, key in enumerate(keys):
            _check_key(key, f"API key {index}")
        if len(set(keys)) != len(keys):
            raise ValueError("API keys must be distinct; remove the repeated key")
        return keys

    @field_validator("admin_key")
    @classmethod
    def _check_admin_key(cls, key: str | None) -> str | None:
        if key is not None:
            _check_key(key, "the admin key")
        return key

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(REDIS_SCHEMES):
            # The URL may carry a password, so the message does not quote it.
            raise ValueError(
                "the Redis URL must start with "
                + ", ".join(REDIS_SCHEMES)
                + "; use for example redis://127.0.0.1:6379/0"
            )
        return url

    @model_validator(mode="after")
    def _check_keys_together(self) -> Settings:
        if not self.api_keys and self.admin_key is None and self.keys_file is None:
            raise ValueError(
                f"no API key configured; pass --api-key, set {API_KEYS_ENV} "
                f"(and optionally {ADMIN_KEY_ENV}), or pass --keys-file"
            )
        if self.admin_key is not None and self.admin_key in self.api_keys:
            raise ValueError("the admin key is also listed as an API key; use different keys")
        return self

    @model_validator(mode="after")
    def _check_workers_share_state(self) -> Settings:
        if self.workers == 1:
            return self
        if self.redis_url is None:
            raise ValueError(
                f"workers={self.workers} needs --redis-url: without Redis each worker keeps "
                "its own rate-limit windows, so every key would get the limits once per worker"
            )
        if self.ledger == IN_MEMORY_LEDGER:
            raise ValueError(
                f"workers={self.workers} needs a ledger file (--ledger PATH): an in-memory "
                "ledger is private to one worker, so quotas would not be shared"
            )
        return self

    def to_worker_env(self) -> str:
        """Return these settings as the JSON value of ``LOWRANK_SERVER_SETTINGS``.

        The JSON contains the configured keys, so it belongs only in the environment of
        the server's own worker processes.
        """
        return self.model_dump_json()

    @classmethod
    def from_worker_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings that :meth:`to_worker_env` wrote.

        Raises
        ------
        RuntimeError
            If ``LOWRANK_SERVER_SETTINGS`` is not set; the variable is set by
            ``lowrank-server --workers N`` and not meant to be set by hand.
        """
        env = os.environ if environ is None else environ
        raw = env.get(SETTINGS_ENV)
        if raw is None:
            raise RuntimeError(
                f"{SETTINGS_ENV} is not set; start multi-worker servers with "
                "'lowrank-server --workers N', which passes the settings to each worker"
            )
        return cls.model_validate_json(raw)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **values: Any) -> Settings:
        """Build settings from ``values``, filling the keys from the environment.

        ``api_keys`` comes from ``LOWRANK_API_KEYS`` unless ``values`` gives a non-empty
        one, ``admin_key`` from ``LOWRANK_ADMIN_KEY`` and ``redis_url`` from
        ``LOWRANK_REDIS_URL`` unless ``values`` gives them.

        Parameters
        ----------
        environ : mapping, optional
            Environment to read; default ``os.environ``.
        **values
            Any :class:`Settings` field.
        """
        env = os.environ if environ is None else environ
        merged = dict(values)
        if not merged.get("api_keys"):
            raw = env.get(API_KEYS_ENV, "")
            merged["api_keys"] = tuple(key.strip() for key in raw.split(",") if key.strip())
        if merged.get("admin_key") is None and env.get(ADMIN_KEY_ENV, "").strip():
            merged["admin_key"] = env[ADMIN_KEY_ENV].strip()
        if merged.get("redis_url") is None and env.get(REDIS_URL_ENV, "").strip():
            merged["redis_url"] = env[REDIS_URL_ENV].strip()
        return cls(**merged)


def _check_key(key: str, what: str) -> None:
    """Raise ValueError if ``key`` is empty or contains whitespace or a comma."""
    if not key:
        raise ValueError(f"{what} is empty; use a non-empty key")
    if any(char.isspace() or char == "," for char in key):
        raise ValueError(f"{what} contains whitespace or a comma; use a key without them")
