"""Serving ``POST /v1/judge/logprob``: exact log-probabilities of sequences, for scoring clones.

Only the admin key may call it.  Each sequence is a full sequence of ``H`` tokens or a
prefix of one; its value is ``log P(x)`` in nats, or ``None`` where ``P(x) = 0``.
Sequences of equal length are scored together in one vectorised pass.
"""

from __future__ import annotations

import logging

import numpy as np

from server.errors import ApiError
from server.sampling import validate_sequences
from server.settings import Settings
from shared.model import SequenceModel
from shared.protocol import JudgeRequest

__all__ = ["judge_log_probs"]

logger = logging.getLogger(__name__)


def judge_log_probs(
    model: SequenceModel, request: JudgeRequest, settings: Settings
) -> list[float | None]:
    """Return ``log P(x)`` for each sequence of ``request``, ``None`` where ``P(x) = 0``.

    Raises
    ------
    ApiError
        422 ``invalid_request`` for more sequences than ``max_judge_sequences``;
        422 ``sequence_too_long`` or ``invalid_token`` for a bad sequence.
    """
    sequences = request.sequences
    if len(sequences) > settings.max_judge_sequences:
        raise ApiError(
            422,
            "invalid_request",
            f"{len(sequences)} sequences exceed this server's max_judge_sequences="
            f"{settings.max_judge_sequences}; split them across requests",
        )
    validate_sequences(model, sequences, model.horizon, "sequence")

    by_length: dict[int, list[int]] = {}
    for index, sequence in enumerate(sequences):
        by_length.setdefault(len(sequence), []).append(index)
    log_probs: list[float | None] = [None] * len(sequences)
    for length, indices in by_length.items():
        rows = np.array([sequences[i] for i in indices], dtype=np.int64)
        rows = rows.reshape(len(indices), length)
        values = model.log_prob(rows)
        for index, value in zip(indices, values.tolist(), strict=True):
            log_probs[index] = None if value == float("-inf") else value
    return log_probs
