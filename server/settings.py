"""Settings of the model server: which model it hosts, where it listens, its keys and limits.

API keys may also come from the environment, so that they stay out of the process list:

``LOWRANK_API_KEYS``
    Comma-separated API keys of paying clients.
``LOWRANK_ADMIN_KEY``
    The admin key.  It alone may call ``POST /v1/judge/logprob``, and on ``POST
    /v1/complete`` it is exempt from rate limits and the sample quota.

Values given explicitly (command-line flags) take precedence over the environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.protocol import MAX_JUDGE_SEQUENCES, MAX_PROMPTS, MAX_SAMPLES_PER_PROMPT

__all__ = ["ADMIN_KEY_ENV", "API_KEYS_ENV", "Settings"]

logger = logging.getLogger(__name__)

API_KEYS_ENV = "LOWRANK_API_KEYS"
ADMIN_KEY_ENV = "LOWRANK_ADMIN_KEY"

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

    @model_validator(mode="after")
    def _check_keys_together(self) -> Settings:
        if not self.api_keys and self.admin_key is None:
            raise ValueError(
                f"no API key configured; pass --api-key or set {API_KEYS_ENV} "
                f"(and optionally {ADMIN_KEY_ENV})"
            )
        if self.admin_key is not None and self.admin_key in self.api_keys:
            raise ValueError("the admin key is also listed as an API key; use different keys")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **values: Any) -> Settings:
        """Build settings from ``values``, filling the keys from the environment.

        ``api_keys`` comes from ``LOWRANK_API_KEYS`` unless ``values`` gives a non-empty
        one, and ``admin_key`` from ``LOWRANK_ADMIN_KEY`` unless ``values`` gives one.

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
        return cls(**merged)


def _check_key(key: str, what: str) -> None:
    """Raise ValueError if ``key`` is empty or contains whitespace or a comma."""
    if not key:
        raise ValueError(f"{what} is empty; use a non-empty key")
    if any(char.isspace() or char == "," for char in key):
        raise ValueError(f"{what} contains whitespace or a comma; use a key without them")
