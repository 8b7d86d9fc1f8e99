"""Sequence models over a finite alphabet with a fixed horizon, and their shared algorithms.

Notation
--------
A : int
    Alphabet size; tokens are the integers ``0 .. A-1``.
H : int
    Horizon: every sequence of the model has exactly ``H`` tokens.
h : sequence of int
    A history (prompt), ``len(h) < H``.
f : sequence of int
    A future (completion) of a history.
t : int
    Time step, the number of tokens emitted so far.

Every model is a (possibly non-linear) state machine: ``start`` gives the state before the
first token, ``token_probs`` the law of the next token in each state, and ``advance`` the
state after emitting a token.  Sampling, exact log-probabilities and next-token laws of
prompts are built on these three operations, vectorised over a batch of states, so that
``n`` completions of one prompt advance together without a Python loop over samples.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "InvalidSequenceError",
    "SequenceModel",
    "ZeroProbabilityPromptError",
    "validate_tokens",
]

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class InvalidSequenceError(ValueError):
    """A prompt or sequence that does not fit the model's alphabet or horizon."""


class ZeroProbabilityPromptError(ValueError):
    """A prompt that the model generates with probability zero, so it has no conditional law."""

    def __init__(self, prompt: Sequence[int], position: int) -> None:
        self.prompt = list(prompt)
        self.position = position
        where = "cannot start a sequence" if position == 0 else "cannot follow the tokens before it"
        super().__init__(
            f"prompt {self.prompt} has probability zero: token {self.prompt[position]} at "
            f"position {position} {where}; use a prompt the model can generate"
        )


def validate_tokens(
    tokens: Sequence[int] | NDArray[np.integer], alphabet_size: int, max_length: int, what: str
) -> IntArray:
    """Convert ``tokens`` to an int64 array and check its symbols and length.

    Parameters
    ----------
    tokens : sequence of int, shape (T,)
        The token ids to check.
    alphabet_size : int
        ``A``; valid ids are ``0 .. A-1``.
    max_length : int
        The largest allowed ``T``.
    what : str
        A name for the value in error messages, such as ``"prompt"``.

    Returns
    -------
    ndarray of int64, shape (T,)

    Raises
    ------
    InvalidSequenceError
        If a token is outside ``0 .. A-1`` or ``T > max_length``.
    """
    array = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if array.size > max_length:
        raise InvalidSequenceError(
            f"{what} has {array.size} tokens but at most {max_length} are allowed; shorten it"
        )
    bad = np.flatnonzero((array < 0) | (array >= alphabet_size))
    if bad.size:
        position = int(bad[0])
        raise InvalidSequenceError(
            f"{what} contains token {int(array[position])} at position {position} but "
            f"A={alphabet_size}; use tokens 0..{alphabet_size - 1}"
        )
    return array


class SequenceModel(abc.ABC):
    """A distribution over ``Σ^H`` given as a batched state machine.

    Subclasses implement :meth:`start`, :meth:`token_probs` and :meth:`advance`; every
    other method is derived from them.

    Parameters
    ----------
    alphabet : sequence of str
        Labels of the ``A`` tokens.
    horizon : int
        ``H``, the length of every sequence.
    """

    def __init__(self, alphabet: Sequence[str], horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        if len(alphabet) < 1:
            raise ValueError("alphabet must contain at least one token label")
        self.alphabet: tuple[str, ...] = tuple(str(label) for label in alphabet)
        self.horizon = int(horizon)
        # Name the server publishes, and provenance read from or written to model files.
        self.model_id: str = ""
        self.metadata: dict[str, Any] = {}

    @property
    def alphabet_size(self) -> int:
        """Number of tokens, ``A``."""
        return len(self.alphabet)

    # -- the state machine ------------------------------------------------------------

    @abc.abstractmethod
    def start(self, n: int) -> FloatArray:
        """Return ``n`` copies of the state before the first token, shape (n, d)."""

    @abc.abstractmethod
    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        """Return the next-token law in each state.

        Parameters
        ----------
        states : ndarray, shape (n, d)
            States after ``t`` tokens.
        t : int
            Number of tokens emitted so far, ``0 <= t < H``.

        Returns
        -------
        ndarray of float64, shape (n, A)
            Rows are probability vectors.
        """

    @abc.abstractmethod
    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        """Return the states after emitting ``tokens[i]`` in ``states[i]`` at step ``t``.

        Callers only pass tokens of positive probability in their state.
        """

    # -- derived operations -------------------------------------------------------------

    def filter(self, prompt: Sequence[int]) -> tuple[FloatArray, float]:
        """Run the model along ``prompt`` and return its state and log-probability.

        Returns
        -------
        state : ndarray, shape (1, d)
        log_prob : float
            ``log P(prompt)`` in nats.

        Raises
        ------
        InvalidSequenceError
            If the prompt has a bad token or ``len(prompt) >= H``.
        ZeroProbabilityPromptError
            If ``P(prompt) = 0``.
        """
        tokens = validate_tokens(prompt, self.alphabet_size, self.horizon - 1, "prompt")
        state = self.start(1)
        log_prob = 0.0
        for t, token in enumerate(tokens):
            p = float(self.token_probs(state, t)[0, token])
            if not p > 0.0:
                raise ZeroProbabilityPromptError(tokens.tolist(), t)
            log_prob += float(np.log(p))
            state = self.advance(state, t, np.array([token], dtype=np.int64))
        return state, log_prob

    def next_token_probs(self, prompts: Sequence[Sequence[int]]) -> FloatArray:
        """Return the exact law of the next token after each prompt.

        Parameters
        ----------
        prompts : sequence of sequences of int
            Each shorter than ``H`` and of positive probability.

        Returns
        -------
        ndarray of float64, shape (len(prompts), A)
        """
        rows = np.empty((len(prompts), self.alphabet_size))
        for i, prompt in enumerate(prompts):
            state, _ = self.filter(prompt)
            rows[i] = self.token_probs(state, len(prompt))[0]
        return rows

    def sample(
        self,
        prompt: Sequence[int],
        n: int,
        rng: np.random.Generator,
        max_tokens: int | None = None,
    ) -> IntArray:
        """Draw ``n`` independent completions of ``prompt``.

        The prompt is filtered once; then all ``n`` paths advance together.

        Parameters
        ----------
        prompt : sequence of int
            A history of positive probability, ``len(prompt) < H``.
        n : int
            Number of completions.
        rng : numpy.random.Generator
            Source of randomness.
        max_tokens : int, optional
            Completion length ``L``; default and maximum ``H - len(prompt)``.

        Returns
        -------
        ndarray of int64, shape (n, L)
        """
        state, _ = self.filter(prompt)
        t0 = len(prompt)
        length = self.horizon - t0 if max_tokens is None else int(max_tokens)
        if not 0 <= length <= self.horizon - t0:
            raise InvalidSequenceError(
                f"max_tokens={length} but a prompt of length {t0} leaves "
                f"{self.horizon - t0} tokens; use 1..{self.horizon - t0}"
            )
        out = np.empty((n, length), dtype=np.int64)
        states = np.repeat(state, n, axis=0)
        for step in range(length):
            probs = self.token_probs(states, t0 + step)
            tokens = _draw_categorical(probs, rng)
            out[:, step] = tokens
            if step + 1 < length:
                states = self.advance(states, t0 + step, tokens)
        return out

    def log_prob(self, sequences: NDArray[np.integer], prompt: Sequence[int] = ()) -> FloatArray:
        """Return ``log P(x | prompt)`` for each row ``x`` of ``sequences``.

        Rows may be shorter than the remaining horizon; then the value is the log-probability
        of that prefix of the completion.  A token of probability zero gives ``-inf``.

        Parameters
        ----------
        sequences : ndarray of int, shape (N, T)
            ``T <= H - len(prompt)``.
        prompt : sequence of int, optional
            A history of positive probability.

        Returns
        -------
        ndarray of float64, shape (N,)
            Log-probabilities in nats.
        """
        x = np.asarray(sequences, dtype=np.int64)
        if x.ndim != 2:
            raise InvalidSequenceError(f"sequences must be a 2-D array, got shape {x.shape}")
        state, _ = self.filter(prompt)
        t0 = len(prompt)
        if x.shape[1] > self.horizon - t0:
            raise InvalidSequenceError(
                f"sequences have {x.shape[1]} tokens but a prompt of length {t0} leaves "
                f"{self.horizon - t0}; shorten them"
            )
        bad_rows = np.flatnonzero(((x < 0) | (x >= self.alphabet_size)).any(axis=1))
        if bad_rows.size:
            row = int(bad_rows[0])
            validate_tokens(x[row], self.alphabet_size, self.horizon - t0, f"sequence {row}")
        n, length = x.shape
        total = np.zeros(n)
        alive = np.ones(n, dtype=bool)
        states = np.repeat(state, n, axis=0)
        for step in range(length):
            probs = self.token_probs(states, t0 + step)
            p = probs[np.arange(n), x[:, step]]
            with np.errstate(divide="ignore"):
                total += np.log(np.where(alive, p, 1.0))
            alive &= p > 0
            if step + 1 < length:
                # Dead rows keep advancing on a harmless token so the batch stays rectangular.
                safe = np.where(alive, x[:, step], np.argmax(probs, axis=1))
                states = self.advance(states, t0 + step, safe)
        total[~alive] = -np.inf
        return total


def _draw_categorical(probs: FloatArray, rng: np.random.Generator) -> IntArray:
    """Draw one token per row of ``probs`` (shape (n, A)) by inverting the cumulative sum."""
    cumulative = np.cumsum(probs, axis=1)
    # 1 - U lies in (0, 1], so a token of probability zero is never drawn.
    u = (1.0 - rng.random(probs.shape[0])) * cumulative[:, -1]
    tokens = (cumulative < u[:, None]).sum(axis=1)
    return np.minimum(tokens, probs.shape[1] - 1).astype(np.int64)
