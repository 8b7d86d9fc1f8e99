"""The stolen model: spanner tables, transfers and projected state tracking.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
t : int
    Step, ``0 <= t < H``.
k_t : int
    Number of spanner histories at step ``t``; ``k_0 = 1`` (the empty history).
N_t : ndarray, shape (k_t, A)
    ``N_t[i, o] = P[o | b_i]``, next-token laws of the spanner histories.
W_t : ndarray, shape (A, k_t, k_{t+1})
    Transfers: ``P[. | b_i o] = sum_j W_t[o][i, j] P[. | b'_j]``.
R_t : ndarray, shape (k_t, F_t)
    Sketch rows of the spanner histories, used by the projection.
alpha : ndarray, shape (k_t,)
    State: ``P[. | x] = sum_i alpha_i P[. | b_i]`` for the history ``x`` emitted so far.

The next-token law is ``q = alpha @ N_t``; after emitting ``o``, Bayes' rule gives
``alpha'_j = sum_i alpha_i N_t[i, o] W_t[o][i, j] / q(o)``.  Before each step the state is
corrected by the chosen projection:

``kl``
    States outside the valid set ``K_t`` are replaced by their relative-entropy projection
    onto it (:mod:`attacker.projection`).
``clip``
    Coefficients are clipped into ``[-C', C']`` and renormalised to sum to one.
``none``
    The state evolves by Bayes' rule alone.

In every mode negative next-token mass is clipped and the law renormalised, since a law
with negative entries cannot be sampled.  The clone's probability of a sequence is the product of the
next-token laws it samples from, so it is a normalised distribution that can be scored
exactly.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from attacker.projection import StateProjection
from shared.atomicfile import write_text_atomic
from shared.model import FloatArray, IntArray, SequenceModel

__all__ = ["CLONE_KIND", "Clone", "CloneFileError", "StepTables", "load_any_model", "load_clone"]

logger = logging.getLogger(__name__)

CLONE_KIND = "clone"
FILE_FORMAT = "lowrank-steal/model"
FILE_VERSION = 1

Projection = Literal["kl", "clip", "none"]


class CloneFileError(ValueError):
    """A clone file that cannot be read or does not describe a valid clone."""


@dataclass
class StepTables:
    """Everything the clone learned about one step ``t``.

    Attributes
    ----------
    histories : list of list of int
        Spanner histories ``b_1 .. b_k``.
    N : ndarray, shape (k_t, A)
    R : ndarray, shape (k_t, F_t)
    W : ndarray, shape (A, k_t, k_{t+1}), or None at the last step
    sketch : str
        Which sketch produced the spanner (``"prefix"``, ``"sampled-future"``, ``"empty"``).
    """

    histories: list[list[int]]
    N: FloatArray
    R: FloatArray
    W: FloatArray | None = None
    sketch: str = "prefix"
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of spanner histories."""
        return int(self.N.shape[0])


class Clone(SequenceModel):
    """A low-rank model learned from queries.

    Parameters
    ----------
    alphabet : sequence of str
    steps : list of StepTables, length H
    projection : {"kl", "clip", "none"}
        State correction before each step.
    bound : float or None
        ``C'`` of the projection set, and the clip bound of ``"clip"``.
    smoothing : float
        Weight of the uniform law mixed into every next-token law, so that no token gets
        probability zero (keeps the KL to the target finite).
    metadata : dict
        Settings, ledger, ranks and timings, stored with the clone.
    """

    kind = CLONE_KIND

    def __init__(
        self,
        alphabet: list[str] | tuple[str, ...],
        steps: list[StepTables],
        projection: Projection = "kl",
        bound: float | None = None,
        smoothing: float = 0.0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(alphabet, len(steps))
        if projection not in ("kl", "clip", "none"):
            raise ValueError(f"projection must be 'kl', 'clip' or 'none', got {projection!r}")
        self.steps = steps
        self.projection = projection
        self.bound = bound
        self.smoothing = float(smoothing)
        self.metadata = dict(metadata or {})
        self._projections = [StateProjection(s.R, s.N, bound) for s in steps]

    @property
    def clip_bound(self) -> float:
        """Box of the ``"clip"`` correction: ``C'`` if set, else the spanner factor ``C``."""
        if self.bound is not None:
            return float(self.bound)
        return float(self.metadata.get("settings", {}).get("C", 2.0))

    # -- summary ----------------------------------------------------------------------

    @property
    def ranks(self) -> list[int]:
        """``k_t`` for each step."""
        return [s.k for s in self.steps]

    @property
    def sketches(self) -> list[str]:
        """Which sketch ran at each step."""
        return [s.sketch for s in self.steps]

    @property
    def ledger(self) -> dict[str, Any]:
        """What the queries behind this clone cost."""
        return dict(self.metadata.get("ledger", {}))

    def with_projection(self, projection: Projection) -> Clone:
        """Return the same clone with another state correction."""
        return Clone(self.alphabet, self.steps, projection, self.bound, self.smoothing, self.metadata)

    # -- the state machine ------------------------------------------------------------

    def start(self, n: int) -> FloatArray:
        return np.ones((n, 1))

    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        q = np.clip(states @ self.steps[t].N, 0.0, None)
        total = q.sum(axis=1, keepdims=True)
        uniform = np.full_like(q, 1.0 / self.alphabet_size)
        q = np.where(total > 0, q / np.where(total > 0, total, 1.0), uniform)
        if self.smoothing:
            q = (1.0 - self.smoothing) * q + self.smoothing * uniform
        return q

    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        step = self.steps[t]
        if step.W is None:
            raise ValueError(f"step {t} is the last one (H={self.horizon}); nothing follows it")
        new = np.empty((states.shape[0], step.W.shape[2]))
        for o in np.unique(tokens):
            rows = tokens == o
            new[rows] = (states[rows] * step.N[:, o]) @ step.W[o]
        total = new.sum(axis=1, keepdims=True)
        degenerate = np.abs(total[:, 0]) < 1e-12
        new = new / np.where(degenerate[:, None], 1.0, total)
        new[degenerate] = 1.0 / new.shape[1]
        return self._correct(new, t + 1)

    def _correct(self, alpha: FloatArray, t: int) -> FloatArray:
        """Apply the chosen projection to states about to take step ``t``."""
        if self.projection == "kl":
            return self._projections[t].project_rows(alpha)
        if self.projection == "clip":
            clipped = np.clip(alpha, -self.clip_bound, self.clip_bound)
            total = clipped.sum(axis=1, keepdims=True)
            return np.where(np.abs(total) > 1e-12, clipped / np.where(total == 0, 1.0, total), alpha)
        return alpha

    # -- files ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready description of the clone."""
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "kind": CLONE_KIND,
            "alphabet": list(self.alphabet),
            "horizon": self.horizon,
            "projection": self.projection,
            "bound": self.bound,
            "smoothing": self.smoothing,
            "steps": [
                {
                    "histories": s.histories,
                    "sketch": s.sketch,
                    "N": s.N.tolist(),
                    "R": s.R.tolist(),
                    "W": None if s.W is None else s.W.tolist(),
                    "diagnostics": s.diagnostics,
                }
                for s in self.steps
            ],
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the clone to ``path`` atomically (temporary file, then rename)."""
        write_text_atomic(path, json.dumps(self.to_dict(), allow_nan=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clone:
        """Build a clone from :meth:`to_dict` output, checking shapes."""
        if data.get("kind") != CLONE_KIND:
            raise CloneFileError(f"kind is {data.get('kind')!r}, expected 'clone'")
        if data.get("version") != FILE_VERSION:
            raise CloneFileError(f"version {data.get('version')!r} is not supported; expected {FILE_VERSION}")
        try:
            alphabet = [str(a) for a in data["alphabet"]]
            steps = [_step_from_dict(i, raw, len(alphabet)) for i, raw in enumerate(data["steps"])]
            clone = cls(
                alphabet, steps, data.get("projection", "kl"), data.get("bound"),
                float(data.get("smoothing", 0.0)), data.get("metadata", {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CloneFileError(f"invalid clone: {error}") from error
        for t in range(len(steps) - 1):
            W = steps[t].W
            if W is None or W.shape != (len(alphabet), steps[t].k, steps[t + 1].k):
                raise CloneFileError(
                    f"step {t}: W has shape {None if W is None else W.shape}, expected "
                    f"{(len(alphabet), steps[t].k, steps[t + 1].k)}"
                )
        return clone


def _step_from_dict(t: int, raw: dict[str, Any], A: int) -> StepTables:
    N = np.asarray(raw["N"], dtype=np.float64)
    R = np.asarray(raw["R"], dtype=np.float64)
    W = None if raw.get("W") is None else np.asarray(raw["W"], dtype=np.float64)
    if N.ndim != 2 or N.shape[1] != A:
        raise CloneFileError(f"step {t}: N has shape {N.shape}, expected (k, {A})")
    if R.ndim != 2 or R.shape[0] != N.shape[0]:
        raise CloneFileError(f"step {t}: R has shape {R.shape}, expected ({N.shape[0]}, F)")
    for name, array in (("N", N), ("R", R), ("W", W)):
        if array is not None and not np.all(np.isfinite(array)):
            raise CloneFileError(f"step {t}: {name} contains a value that is not finite")
    return StepTables(raw["histories"], N, R, W, raw.get("sketch", "prefix"), raw.get("diagnostics", {}))


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as error:
        raise CloneFileError(f"file not found: {path}") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CloneFileError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise CloneFileError(f"{path} does not contain a JSON object")
    return data


def load_clone(path: str | os.PathLike[str]) -> Clone:
    """Load a clone saved by :meth:`Clone.save`.

    Raises
    ------
    CloneFileError
        If the file is missing, unreadable, not JSON, or not a valid clone.
    """
    data = _read_json(path)
    try:
        return Clone.from_dict(data)
    except CloneFileError as error:
        raise CloneFileError(f"{path}: {error}") from error


def load_any_model(path: str | os.PathLike[str]) -> SequenceModel:
    """Load a clone, a model file (``kind`` hmm or operator) or a baseline from ``path``.

    Baselines of kind spectral, empirical or ngram are read by
    :func:`attacker.baselines.baseline_from_dict`.
    """
    data = _read_json(path)
    if data.get("kind") == CLONE_KIND:
        try:
            return Clone.from_dict(data)
        except CloneFileError as error:
            raise CloneFileError(f"{path}: {error}") from error
    from attacker.baselines import BASELINE_KINDS, BaselineFileError, baseline_from_dict

    if data.get("kind") in BASELINE_KINDS:
        try:
            return baseline_from_dict(data)
        except BaselineFileError as error:
            raise CloneFileError(f"{path}: {error}") from error
    from shared.modelfile import ModelFileError, model_from_dict

    try:
        return model_from_dict(data)
    except ModelFileError as error:
        raise CloneFileError(f"{path}: {error}") from error
