"""Serving ``POST /v1/complete``: validate the prompts, then sample or return next-token laws.

Notation
--------
A : int
    Alphabet size; token ids are ``0 .. A-1``.
H : int
    Horizon, the length of every full sequence.
h : list of int
    A prompt, ``len(h) < H``.
L : int
    Tokens per completion of ``h``: ``min(max_tokens, H - len(h))``.

:func:`plan_request` checks everything that can make a request fail before anything is
charged: server limits, token ids, prompt lengths and zero-probability prompts.
:func:`serve_plan` then draws the completions with one ``numpy`` generator per request,
seeded from the request's ``seed`` when given, so the same request with the same seed
returns the same output.  It returns the encoded JSON body, because building and encoding
a large body is as slow as sampling it and belongs in the same worker thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from server.errors import ApiError
from server.settings import Settings
from shared.model import SequenceModel, ZeroProbabilityPromptError
from shared.protocol import CompleteRequest

__all__ = [
    "SamplingPlan",
    "aggregate_rows",
    "check_positive_probability",
    "plan_request",
    "serve_plan",
    "validate_sequences",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingPlan:
    """A validated ``POST /v1/complete`` request.

    Attributes
    ----------
    prompts : list of list of int
        The prompts, in request order.
    n : int
        Samples per prompt (unused for next-token laws).
    lengths : list of int
        ``L`` for each prompt.
    probabilities : bool
        Whether to return next-token laws instead of samples.
    aggregate : bool
        Whether to return distinct completions with counts.
    samples : int
        Samples charged: ``len(prompts) * n``, or ``len(prompts)`` for laws.
    tokens : int
        Tokens returned: ``n * sum(lengths)``, or ``len(prompts)`` for laws.
    """

    prompts: list[list[int]]
    n: int
    lengths: list[int]
    probabilities: bool
    aggregate: bool
    samples: int
    tokens: int


def plan_request(
    model: SequenceModel, request: CompleteRequest, settings: Settings
) -> SamplingPlan:
    """Validate ``request`` against the server limits and the model.

    Raises
    ------
    ApiError
        422 ``invalid_request`` for too many prompts or ``n`` over the server maximum;
        403 ``probabilities_disabled``; 422 ``invalid_token`` or ``prompt_too_long`` for
        a bad prompt; 413 ``request_too_large`` when ``n * sum(L)`` exceeds
        ``max_tokens_per_request``; 422 ``zero_probability_prompt``.
    """
    prompts = request.prompts
    if len(prompts) > settings.max_prompts_per_request:
        raise ApiError(
            422,
            "invalid_request",
            f"{len(prompts)} prompts exceed this server's max_prompts_per_request="
            f"{settings.max_prompts_per_request}; split them across requests",
        )
    if request.next_token_probs:
        if not settings.probabilities:
            raise ApiError(
                403,
                "probabilities_disabled",
                "the probability oracle is disabled on this server; "
                "request samples (next_token_probs=false) instead",
            )
        validate_sequences(model, prompts, model.horizon - 1, "prompt")
        check_positive_probability(model, prompts)
        count = len(prompts)
        return SamplingPlan(prompts, 1, [1] * count, True, False, count, count)

    if request.n > settings.max_samples_per_prompt:
        raise ApiError(
            422,
            "invalid_request",
            f"n={request.n} exceeds this server's max_samples_per_prompt="
            f"{settings.max_samples_per_prompt}; use n in 1..{settings.max_samples_per_prompt} "
            "and split larger batches across requests",
        )
    validate_sequences(model, prompts, model.horizon - 1, "prompt")

    max_tokens = model.horizon if request.max_tokens is None else request.max_tokens
    lengths = [min(max_tokens, model.horizon - len(prompt)) for prompt in prompts]
    tokens = request.n * sum(lengths)
    if tokens > settings.max_tokens_per_request:
        raise ApiError(
            413,
            "request_too_large",
            f"request would return {tokens} tokens (n={request.n} times {sum(lengths)} "
            f"tokens over {len(prompts)} prompts) but this server allows "
            f"max_tokens_per_request={settings.max_tokens_per_request}; lower n or "
            "max_tokens, or split the prompts across requests",
        )
    check_positive_probability(model, prompts)
    return SamplingPlan(
        prompts, request.n, lengths, False, request.aggregate, len(prompts) * request.n, tokens
    )


def validate_sequences(
    model: SequenceModel, sequences: Sequence[Sequence[int]], max_length: int, what: str
) -> None:
    """Check the length and token ids of each sequence.

    Works on the Python integers, so ids too large for int64 are reported, not overflowed.

    Parameters
    ----------
    model : SequenceModel
        Gives ``A`` and ``H``.
    sequences : sequence of sequences of int
        Prompts or judged sequences.
    max_length : int
        Longest allowed sequence: ``H - 1`` for prompts, ``H`` for judged sequences.
    what : str
        ``"prompt"`` or ``"sequence"``; picks the error code and names the value.

    Raises
    ------
    ApiError
        422 ``prompt_too_long`` or ``sequence_too_long``, or 422 ``invalid_token``.
    """
    size = model.alphabet_size
    for index, sequence in enumerate(sequences):
        if len(sequence) > max_length:
            raise ApiError(
                422,
                f"{what}_too_long",
                f"{what} {index} has {len(sequence)} tokens but the horizon is "
                f"H={model.horizon}, so a {what} may have at most {max_length}; shorten it",
            )
        if sequence and (min(sequence) < 0 or max(sequence) >= size):
            position = next(i for i, token in enumerate(sequence) if not 0 <= token < size)
            raise ApiError(
                422,
                "invalid_token",
                f"{what} {index} contains token {sequence[position]} at position {position} "
                f"but the alphabet has A={size} tokens; use token ids 0..{size - 1}",
            )


def check_positive_probability(model: SequenceModel, prompts: Sequence[Sequence[int]]) -> None:
    """Raise 422 ``zero_probability_prompt`` for the first prompt the model cannot generate.

    Prompts of equal length are scored together with :meth:`SequenceModel.log_prob`.
    """
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        if prompt:
            by_length.setdefault(len(prompt), []).append(index)
    bad: list[int] = []
    for indices in by_length.values():
        rows = np.array([prompts[i] for i in indices], dtype=np.int64)
        log_p = model.log_prob(rows)
        bad.extend(indices[int(j)] for j in np.flatnonzero(np.isneginf(log_p)))
    if not bad:
        return

    index = min(bad)
    try:
        model.filter(prompts[index])
    except ZeroProbabilityPromptError as error:
        position = error.position
    else:
        position = len(prompts[index]) - 1
    where = "cannot start a sequence" if position == 0 else "cannot follow the tokens before it"
    raise ApiError(
        422,
        "zero_probability_prompt",
        f"prompt {index} has probability zero under the model: token "
        f"{prompts[index][position]} at position {position} {where}; use a prompt the "
        "model can generate (a prefix of a sampled completion)",
    )


def serve_plan(
    model: SequenceModel,
    plan: SamplingPlan,
    rng: np.random.Generator,
    model_id: str,
    quota_remaining: int | None,
) -> bytes:
    """Sample (or compute laws for) ``plan`` and return the JSON ``CompleteResponse`` body.

    Parameters
    ----------
    model : SequenceModel
        The hosted model.
    plan : SamplingPlan
        A validated, already charged request.
    rng : numpy.random.Generator
        Randomness for all prompts, used in prompt order.
    model_id : str
        Public id of the model.
    quota_remaining : int or None
        Samples left on the caller's quota after this request.

    Returns
    -------
    bytes
        UTF-8 JSON.
    """
    if plan.probabilities:
        laws = model.next_token_probs(plan.prompts)
        choices = [_choice(i, next_token_probs=row.tolist()) for i, row in enumerate(laws)]
    else:
        choices = [
            _sample_choice(model, index, prompt, plan, length, rng)
            for index, (prompt, length) in enumerate(zip(plan.prompts, plan.lengths, strict=True))
        ]
    body = {
        "model_id": model_id,
        "choices": choices,
        "usage": {
            "samples": plan.samples,
            "tokens": plan.tokens,
            "quota_remaining": quota_remaining,
        },
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _sample_choice(
    model: SequenceModel,
    index: int,
    prompt: list[int],
    plan: SamplingPlan,
    length: int,
    rng: np.random.Generator,
) -> dict[str, object]:
    samples = model.sample(prompt, plan.n, rng, max_tokens=length)
    if not plan.aggregate:
        return _choice(index, completions=samples.tolist())
    futures, counts = aggregate_rows(samples, model.alphabet_size)
    return _choice(index, completions=futures.tolist(), counts=counts.tolist())


def aggregate_rows(
    samples: NDArray[np.int64], alphabet_size: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return the distinct rows of ``samples`` in lexicographic order, with their counts.

    Parameters
    ----------
    samples : ndarray of int64, shape (n, L)
        Token ids in ``0 .. A-1``.
    alphabet_size : int
        ``A``.

    Returns
    -------
    rows : ndarray of int64, shape (m, L)
    counts : ndarray of int64, shape (m,)
        Sums to ``n``.
    """
    length = samples.shape[1]
    if length == 0 or alphabet_size**length >= 2**62:
        rows, counts = np.unique(samples, axis=0, return_counts=True)
        return rows.astype(np.int64), counts.astype(np.int64)

    # Each row read as a base-A number: the codes sort like the rows, and np.unique on
    # one int64 column is far faster than on rows (axis=0).
    place = alphabet_size ** np.arange(length - 1, -1, -1, dtype=np.int64)
    codes, counts = np.unique(samples @ place, return_counts=True)
    rows = (codes[:, None] // place[None, :]) % alphabet_size
    return rows.astype(np.int64), counts.astype(np.int64)


def _choice(
    index: int,
    completions: list[list[int]] | None = None,
    counts: list[int] | None = None,
    next_token_probs: list[float] | None = None,
) -> dict[str, object]:
    """Return one ``Choice`` as a plain dict (pydantic validation of large bodies is slow)."""
    return {
        "index": index,
        "completions": completions,
        "counts": counts,
        "next_token_probs": next_token_probs,
    }
