"""The narrow interface through which the learner queries a secret model, and its ledger.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
h : tuple of int
    A prompt (history), ``len(h) < H``.
L : int
    Tokens per requested completion.

The learner queries the target only through :class:`Oracle`: ``complete`` (the sample oracle, billed per sample)
and ``next_token_probs`` (the probability oracle, billed one sample per prompt, where the
target offers it).  Every implementation charges a :class:`Ledger`, which refuses a query
before it is sent if it would take spending past the budget.  :class:`InProcessOracle` wraps
a local :class:`~shared.model.SequenceModel` for fast experiments and tests;
:mod:`attacker.client` speaks HTTP to a server.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from shared.model import SequenceModel, ZeroProbabilityPromptError

__all__ = [
    "BudgetExceededError",
    "Completions",
    "InProcessOracle",
    "Ledger",
    "Oracle",
    "OracleError",
    "ZeroProbabilityPromptError",
]

logger = logging.getLogger(__name__)


class OracleError(RuntimeError):
    """A query failed for a reason other than the budget or a zero-probability prompt."""


class BudgetExceededError(OracleError):
    """A query would take spending past the hard budget, so it was not sent."""


@dataclass(frozen=True)
class Completions:
    """Distinct completions of one prompt with their counts.

    Attributes
    ----------
    futures : ndarray of int64, shape (m, L)
        Distinct completions, one per row.
    counts : ndarray of int64, shape (m,)
        Number of samples equal to each row; sums to the ``n`` requested.
    """

    futures: NDArray[np.int64]
    counts: NDArray[np.int64]

    @property
    def n(self) -> int:
        """Total number of samples."""
        return int(self.counts.sum())

    @classmethod
    def from_samples(cls, samples: NDArray[np.integer]) -> Completions:
        """Aggregate a (n, L) array of samples into distinct rows and counts."""
        array = np.asarray(samples, dtype=np.int64)
        if array.shape[0] == 0:
            return cls(array.reshape(0, array.shape[1]), np.zeros(0, dtype=np.int64))
        futures, counts = np.unique(array, axis=0, return_counts=True)
        return cls(futures.astype(np.int64), counts.astype(np.int64))


@dataclass
class Ledger:
    """Running account of what the queries cost, overall and per phase.

    Parameters
    ----------
    budget : int or None
        Hard cap on samples; ``None`` means unlimited.

    Attributes
    ----------
    samples, tokens, requests : int
        Totals so far.  ``samples`` is the unit of the theory; ``tokens`` is what a
        provider bills.  ``requests`` counts HTTP requests, or calls for in-process oracles.
    by_phase : dict
        ``{phase: {"samples": ..., "tokens": ..., "requests": ...}}``.
    """

    budget: int | None = None
    samples: int = 0
    tokens: int = 0
    requests: int = 0
    by_phase: dict[str, dict[str, int]] = field(default_factory=dict)
    phase: str = "other"

    @property
    def remaining(self) -> int | None:
        """Samples left in the budget, or ``None`` when unlimited."""
        return None if self.budget is None else self.budget - self.samples

    def reserve(self, samples: int) -> None:
        """Raise :class:`BudgetExceededError` unless ``samples`` more fit in the budget."""
        if self.budget is not None and self.samples + samples > self.budget:
            raise BudgetExceededError(
                f"query of {samples} samples rejected: {self.samples} of the budget of "
                f"{self.budget} are spent; raise --budget or request fewer samples"
            )

    def charge(self, samples: int, tokens: int, requests: int = 1) -> None:
        """Record a completed query under the current phase."""
        self.samples += samples
        self.tokens += tokens
        self.requests += requests
        row = self.by_phase.setdefault(self.phase, {"samples": 0, "tokens": 0, "requests": 0})
        row["samples"] += samples
        row["tokens"] += tokens
        row["requests"] += requests

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        """Charge the queries made inside the ``with`` block to phase ``name``."""
        previous, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = previous

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready copy of the ledger."""
        return {
            "budget": self.budget,
            "samples": self.samples,
            "tokens": self.tokens,
            "requests": self.requests,
            "by_phase": {k: dict(v) for k, v in self.by_phase.items()},
        }


class Oracle(abc.ABC):
    """Query access to a secret sequence model.

    Attributes
    ----------
    alphabet : tuple of str
        Token labels, length ``A``.
    horizon : int
        ``H``.
    supports_probabilities : bool
        Whether :meth:`next_token_probs` is available.
    ledger : Ledger
        Spending so far.
    """

    alphabet: tuple[str, ...]
    horizon: int
    supports_probabilities: bool
    ledger: Ledger

    @property
    def alphabet_size(self) -> int:
        """``A``."""
        return len(self.alphabet)

    @abc.abstractmethod
    def complete(
        self, prompts: Sequence[Sequence[int]], n: int, max_tokens: int
    ) -> list[Completions]:
        """Sample ``n`` completions of each prompt.

        Parameters
        ----------
        prompts : sequence of sequences of int
            Histories of positive probability, each shorter than ``H``.
        n : int
            Samples per prompt; the query costs ``len(prompts) * n`` samples.
        max_tokens : int
            ``L``; cut to ``H - len(h)`` for each prompt ``h``.

        Returns
        -------
        list of Completions
            One per prompt, in order.

        Raises
        ------
        BudgetExceededError
            Before anything is sent, if the query does not fit the budget.
        ZeroProbabilityPromptError
            If a prompt has probability zero.
        """

    def next_token_probs(self, prompts: Sequence[Sequence[int]]) -> NDArray[np.float64]:
        """Return the exact next-token law of each prompt, shape (len(prompts), A).

        Raises
        ------
        OracleError
            If the target offers no probability oracle.
        """
        raise OracleError(
            "this target offers no probability oracle; run the learner in sample mode"
        )


class InProcessOracle(Oracle):
    """An oracle over a local model, billed exactly as the HTTP server bills.

    Parameters
    ----------
    model : SequenceModel
        The secret model.
    rng : numpy.random.Generator
        Randomness for the samples.
    budget : int, optional
        Hard cap on samples.
    probabilities : bool, default False
        Whether to offer the probability oracle.
    """

    def __init__(
        self,
        model: SequenceModel,
        rng: np.random.Generator,
        budget: int | None = None,
        probabilities: bool = False,
    ) -> None:
        self.model = model
        self.rng = rng
        self.alphabet = model.alphabet
        self.horizon = model.horizon
        self.supports_probabilities = probabilities
        self.ledger = Ledger(budget=budget)

    def complete(
        self, prompts: Sequence[Sequence[int]], n: int, max_tokens: int
    ) -> list[Completions]:
        lengths = [min(max_tokens, self.horizon - len(p)) for p in prompts]
        self.ledger.reserve(n * len(prompts))
        results = []
        for prompt, length in zip(prompts, lengths):
            samples = self.model.sample(prompt, n, self.rng, max_tokens=length)
            results.append(Completions.from_samples(samples))
        self.ledger.charge(n * len(prompts), n * sum(lengths))
        return results

    def next_token_probs(self, prompts: Sequence[Sequence[int]]) -> NDArray[np.float64]:
        if not self.supports_probabilities:
            return super().next_token_probs(prompts)
        self.ledger.reserve(len(prompts))
        probs = self.model.next_token_probs(prompts)
        self.ledger.charge(len(prompts), len(prompts))
        return probs
