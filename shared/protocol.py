"""Schemas of the v1 wire protocol, shared by the server and the attacker.

All messages are JSON.  Token ids are integers ``0 .. A-1``; ``GET /v1/model`` maps them to
labels.  Field names on the wire are words (``alphabet_size``, ``horizon``), never the
notation letters used inside the code.  Requests forbid unknown fields so that a misspelt
option fails loudly instead of being ignored.  The static bounds here are the protocol's;
a server may enforce tighter limits of its own and reports them in ``ModelInfo.limits``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "PROTOCOL_VERSION",
    "Choice",
    "CompleteRequest",
    "CompleteResponse",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "JudgeRequest",
    "JudgeResponse",
    "Limits",
    "ModelInfo",
    "Oracles",
    "Usage",
    "UsageReport",
]

PROTOCOL_VERSION = 1

# Hard ceilings of the protocol itself; servers usually configure lower ones.
MAX_PROMPTS = 10_000
MAX_SAMPLES_PER_PROMPT = 10_000_000
MAX_JUDGE_SEQUENCES = 100_000
MAX_SEED = 2**63 - 1


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Request(_Message):
    # Strict types: a request with ``true`` as a token id or ``"1"`` as ``n`` is rejected
    # instead of silently converted.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Oracles(_Message):
    """Kinds of query the server sells."""

    samples: bool = Field(description="Sampled completions of a prompt.")
    probabilities: bool = Field(description="Exact next-token law of a prompt.")


class Limits(_Message):
    """Limits that apply to the calling key; ``null`` means unlimited."""

    requests_per_window: int | None = Field(description="Requests allowed per window.")
    samples_per_window: int | None = Field(description="Samples allowed per window.")
    window_seconds: int = Field(description="Length of the rate-limit window in seconds.")
    quota_samples: int | None = Field(description="Total samples the key may ever buy.")
    max_prompts_per_request: int
    max_samples_per_prompt: int
    max_tokens_per_request: int = Field(
        description="Upper bound on prompts x n x max_tokens for one request."
    )


class ModelInfo(_Message):
    """Public metadata of the hosted model; never its parameters or rank."""

    protocol_version: int = PROTOCOL_VERSION
    model_id: str
    alphabet: list[str] = Field(description="Label of each token id, in id order.")
    alphabet_size: int
    horizon: int = Field(description="Length of every full sequence.")
    oracles: Oracles
    limits: Limits | None = Field(default=None, description="Limits of the calling key.")


class CompleteRequest(_Request):
    """``POST /v1/complete``: sampled completions, or next-token laws, of prompts."""

    prompts: list[list[int]] = Field(
        min_length=1,
        max_length=MAX_PROMPTS,
        description="Token-id prefixes, each shorter than the horizon. [] is the empty prompt.",
    )
    n: int = Field(
        default=1, ge=1, le=MAX_SAMPLES_PER_PROMPT, description="Samples per prompt."
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per completion; default: up to the horizon. Longer than the "
        "remaining horizon of a prompt is cut to it.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Makes the sampling reproducible; absent means fresh randomness.",
    )
    aggregate: bool = Field(
        default=False,
        description="Return each distinct completion once with its count.",
    )
    next_token_probs: bool = Field(
        default=False,
        description="Return the exact next-token law of each prompt instead of samples "
        "(only where the probability oracle is enabled); n, max_tokens, seed and "
        "aggregate must then keep their defaults.",
    )

    @model_validator(mode="after")
    def _laws_take_no_sampling_options(self) -> CompleteRequest:
        if self.next_token_probs:
            ignored = {
                "n": self.n != 1,
                "max_tokens": self.max_tokens is not None,
                "seed": self.seed is not None,
                "aggregate": self.aggregate,
            }
            ignored_names = [name for name, is_set in ignored.items() if is_set]
            if ignored_names:
                raise ValueError(
                    f"next_token_probs returns exact laws, so {', '.join(ignored_names)} would be "
                    "ignored; remove them or set next_token_probs to false"
                )
        return self


class Choice(_Message):
    """Completions of one prompt."""

    index: int = Field(description="Position of the prompt in the request.")
    completions: list[list[int]] | None = Field(
        default=None, description="One row per sample, or per distinct completion if aggregated."
    )
    counts: list[int] | None = Field(
        default=None, description="With aggregate: how many samples each completion stands for."
    )
    next_token_probs: list[float] | None = Field(
        default=None, description="With next_token_probs: P(token | prompt) for each token id."
    )


class Usage(_Message):
    """Cost of a request and the quota left after it."""

    samples: int = Field(description="Samples charged: prompts x n (one per prompt for laws).")
    tokens: int = Field(description="Tokens returned.")
    quota_remaining: int | None = Field(description="Samples left on the key's quota.")


class CompleteResponse(_Message):
    model_id: str
    choices: list[Choice]
    usage: Usage


class JudgeRequest(_Request):
    """``POST /v1/judge/logprob``: exact log-probabilities (admin only)."""

    sequences: list[list[int]] = Field(
        min_length=1,
        max_length=MAX_JUDGE_SEQUENCES,
        description="Full sequences or prefixes, each at most the horizon long.",
    )


class JudgeResponse(_Message):
    model_id: str
    log_probs: list[float | None] = Field(
        description="Natural log of P(sequence) for each sequence; null where it is zero."
    )


class UsageReport(_Message):
    """``GET /v1/usage``: the caller's consumption and limits."""

    key_id: str
    requests: int
    samples: int
    tokens: int
    quota_remaining: int | None
    limits: Limits


class Health(_Message):
    status: Literal["ok"] = "ok"
    model_id: str


class ErrorDetail(_Message):
    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="What was wrong, with the value and how to fix it.")


class ErrorBody(_Message):
    error: ErrorDetail
