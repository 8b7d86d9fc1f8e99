"""EM (Baum-Welch) for a categorical HMM, with seeded restarts and a time limit.

Notation
--------
S : int
    Number of hidden states.
A : int
    Alphabet size.
H : int
    Horizon; every sample is one sequence of ``H`` tokens that starts from ``pi``.
pi, T, O
    Law of the first hidden state (S,), transition matrix (S, S) and emission matrix
    (S, A).
N : int
    Number of samples bought; EM may use fewer, see below.

The fit runs hmmlearn's ``CategoricalHMM`` (``implementation="scaling"``).  hmmlearn
handles one sequence at a time, so an iteration costs about the same for every sequence,
whether or not it repeats.  A pilot iteration on a few sequences measures that cost.
From it the fit plans how many sequences it can afford within ``time_limit`` seconds:

1. ``restarts`` random starts (see :meth:`_EMFit.random_start`), each for at most
   ``iterations`` iterations on the first ``restart_sequences`` of the shuffled samples
   (fewer if they would take more than half the time limit);
2. the start with the best log-likelihood refined on as many of the shuffled samples as the
   remaining time allows, up to all ``N``.

The plan is an estimate: EM runs can stop early by ``tolerance``, and the cost per sequence
varies.  Finally every row of ``pi``, ``T`` and ``O`` is mixed with ``smoothing`` of the
uniform law, so every sequence has positive probability and the KL to the target stays
finite.

hmmlearn is optional (the ``fit`` extra); :func:`require_hmmlearn` raises a
:class:`MissingDependencyError` whose message gives the install command.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from attacker.baselines.samples import SampleSet
from shared.automaton import HMM
from shared.model import FloatArray

__all__ = ["EMSettings", "MissingDependencyError", "fit_em", "require_hmmlearn"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class MissingDependencyError(ImportError):
    """An optional package that a baseline needs is not installed."""


class EMSettings(BaseModel):
    """Settings of the EM baseline; the defaults are engineering choices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    states: int = Field(default=4, ge=1, description="S, the number of hidden states.")
    restarts: int = Field(default=4, ge=1, description="Random starts; the best is refined.")
    iterations: int = Field(default=100, ge=1, description="Maximum EM iterations per run.")
    tolerance: float = Field(
        default=1e-4, gt=0, description="Stop when an iteration gains less, in nats per sequence."
    )
    restart_sequences: int = Field(
        default=10_000, ge=1, description="Samples each random start is fitted on."
    )
    pilot_sequences: int = Field(
        default=2_000, ge=1, description="Samples of the timed first iteration."
    )
    smoothing: float = Field(
        default=1e-3, ge=0, lt=1, description="Uniform mass mixed into pi, T and O."
    )
    time_limit: float = Field(default=3600.0, gt=0, description="Seconds the fit may take.")


def require_hmmlearn() -> Any:
    """Import and return hmmlearn's ``CategoricalHMM``.

    Raises
    ------
    MissingDependencyError
        If hmmlearn is not installed.
    """
    try:
        from hmmlearn.hmm import CategoricalHMM  # type: ignore[import-untyped]
    except ImportError as err:
        raise MissingDependencyError(
            'the em baseline needs hmmlearn, which is not installed; install it with '
            'pip install -e ".[fit]"'
        ) from err
    return CategoricalHMM


def fit_em(
    samples: SampleSet,
    settings: EMSettings,
    rng: np.random.Generator,
    clock: Clock = time.monotonic,
) -> tuple[HMM, dict[str, Any]]:
    """Fit a categorical HMM to ``samples`` by EM within ``settings.time_limit``.

    Parameters
    ----------
    samples : SampleSet
    settings : EMSettings
    rng : numpy.random.Generator
        Shuffles the samples and seeds each random start.
    clock : callable returning seconds
        Times the runs against the time limit.

    Returns
    -------
    model : HMM
        Smoothed.
    details : dict
        ``fitted_on`` (samples the final model was fitted on), ``restart_sequences``,
        per-sequence log-likelihoods in nats, iterations of the final run, and the measured
        seconds per sequence and iteration.

    Raises
    ------
    MissingDependencyError
        If hmmlearn is not installed.
    ValueError
        If every random start ends with a non-finite log-likelihood.
    """
    fit = _EMFit(samples, settings, rng, clock)
    order = rng.permutation(samples.n)
    restart_n = fit.restart_size(samples.rows_at(order[: settings.pilot_sequences]))
    restart_rows = samples.rows_at(order[:restart_n])
    best_score, best, scores = fit.restarts(restart_rows)

    final, fitted_on, iterations = best, restart_n, int(best.monitor_.iter)
    fit_n = fit.refine_size(int(best.monitor_.iter))
    if fit_n > restart_n:
        refined = fit.refine(best, samples.rows_at(order[:fit_n]))
        if refined is not None:
            final, best_score, iterations = refined
            fitted_on = fit_n

    s = settings.smoothing
    model = HMM(samples.alphabet, samples.horizon, _smooth(final.startprob_, s),
                _smooth(final.transmat_, s), _smooth(final.emissionprob_, s))
    details = {
        "fitted_on": fitted_on,
        "states": settings.states,
        "restart_sequences": restart_n,
        "restart_log_likelihoods": scores,
        "log_likelihood_per_sequence": best_score,
        "iterations": iterations,
        "seconds_per_sequence_iteration": fit.rate,
        "seconds": clock() - fit.started,
    }
    return model, details


# Iterations per hmmlearn call during the refinement; the deadline is checked between calls.
_REFINE_BLOCK = 5


class _EMFit:
    """The phases of one EM fit: timing, random starts and refinement before a deadline."""

    def __init__(
        self, samples: SampleSet, settings: EMSettings, rng: np.random.Generator, clock: Clock
    ) -> None:
        self.CategoricalHMM = require_hmmlearn()
        self.samples = samples
        self.settings = settings
        self.rng = rng
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + settings.time_limit
        # Seconds per sequence and EM iteration, first from the pilot, then measured.
        self.rate = 0.0

    def new_hmm(self, n_iter: int, n: int, init_params: str = "ste", seed: int = 0) -> Any:
        # hmmlearn builds its convergence monitor in the constructor, so n_iter and tol
        # (on the total log-likelihood of the n sequences) must be given here.
        return self.CategoricalHMM(
            n_components=self.settings.states, n_features=len(self.samples.alphabet),
            implementation="scaling", n_iter=n_iter, tol=self.settings.tolerance * n,
            random_state=seed, init_params=init_params,
        )

    def restart_size(self, pilot_rows: NDArray[np.int64]) -> int:
        """Time one iteration on ``pilot_rows``; return the samples each start may use.

        The starts may take at most half the time limit if every one runs all iterations.
        """
        pilot = self.new_hmm(1, pilot_rows.shape[0], seed=int(self.rng.integers(2**31)))
        began = self.clock()
        _run_em(pilot, pilot_rows)
        self.rate = max(self.clock() - began, 1e-9) / pilot_rows.shape[0]
        settings = self.settings
        half = max(self.deadline - self.clock(), 0.0) / 2
        affordable = int(half / (settings.restarts * settings.iterations * self.rate))
        return max(1, min(self.samples.n, settings.restart_sequences, affordable))

    def random_start(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Draw ``pi``, ``T`` and ``O`` for one random start.

        ``pi`` is uniform, each row of ``T`` is half the identity and half a flat Dirichlet
        draw, and each row of ``O`` is a flat Dirichlet draw.  Sticky transitions avoid
        the plateau where EM settles on states that alternate at every step.  hmmlearn's
        own start (Dirichlet rows with concentration ``1/S``) ended there in 6 of 8 seeded
        runs on the casino HMM (H = 6, 4000 samples, hmmlearn 0.3.3), this start in 1 of 8.
        """
        S, A = self.settings.states, len(self.samples.alphabet)
        pi = np.full(S, 1.0 / S)
        T = 0.5 * np.eye(S) + 0.5 * self.rng.dirichlet(np.ones(S), size=S)
        O = self.rng.dirichlet(np.ones(A), size=S)  # noqa: E741 - standard HMM notation
        return pi, T, O

    def restarts(self, rows: NDArray[np.int64]) -> tuple[float, Any, list[float]]:
        """Run every random start on ``rows``; return the best score and model, and all scores."""
        runs = []
        began, sweeps = self.clock(), 0
        for restart in range(self.settings.restarts):
            candidate = self.new_hmm(self.settings.iterations, rows.shape[0], init_params="")
            candidate.startprob_, candidate.transmat_, candidate.emissionprob_ = self.random_start()
            score = _run_em(candidate, rows)
            # One more pass over the data scores the fitted model.
            sweeps += int(candidate.monitor_.iter) + 1
            logger.info(
                "EM start %d: %.4f nats per sequence after %d iterations", restart, score,
                candidate.monitor_.iter,
            )
            if math.isfinite(score):
                runs.append((score, candidate))
        self.rate = max(self.clock() - began, 1e-9) / (sweeps * rows.shape[0])
        if not runs:
            raise ValueError(
                "every EM start ended with a non-finite log-likelihood; try another --seed "
                "or fewer --states"
            )
        best_score, best = max(runs, key=lambda pair: pair[0])
        return best_score, best, [score for score, _ in runs]

    def refine_size(self, expected_iterations: int) -> int:
        """Return how many samples a refinement of ``expected_iterations`` can use in time."""
        left = max(self.deadline - self.clock(), 0.0)
        per_sample = max(expected_iterations + 1, 2) * self.rate
        fit_n = min(self.samples.n, int(left / per_sample))
        logger.info(
            "EM: %.3g s per sequence and iteration, so the refinement uses %d of %d samples",
            self.rate, fit_n, self.samples.n,
        )
        return fit_n

    def refine(
        self, start: Any, rows: NDArray[np.int64]
    ) -> tuple[Any, float, int] | None:
        """Continue EM from ``start`` on ``rows`` until it converges or the time is up.

        Returns
        -------
        (model, score, iterations), or None if not even one block fits before the deadline.
        """
        n = rows.shape[0]
        model, score, done = start, -math.inf, 0
        while done < self.settings.iterations:
            block = min(_REFINE_BLOCK, self.settings.iterations - done)
            if self.clock() + (block + 1) * n * self.rate > self.deadline:
                logger.info("EM refinement stopped by the time limit after %d iterations", done)
                break
            step = self.new_hmm(block, n, init_params="")
            step.startprob_, step.transmat_ = model.startprob_, model.transmat_
            step.emissionprob_ = model.emissionprob_
            score = _run_em(step, rows)
            model, done = step, done + int(step.monitor_.iter)
            history = list(step.monitor_.history)
            gained_little = len(history) >= 2 and history[-1] - history[-2] < step.monitor_.tol
            if step.monitor_.iter < block or gained_little:
                break
        if done == 0:
            return None
        logger.info("EM refinement: %.4f nats per sequence after %d iterations", score, done)
        return model, score, done


def _run_em(model: Any, sequences: NDArray[np.int64]) -> float:
    """Fit ``model`` to ``sequences`` (shape (n, H)); return the log-likelihood per sequence."""
    n, H = sequences.shape
    X = sequences.reshape(-1, 1)
    lengths = np.full(n, H)
    with np.errstate(divide="ignore", invalid="ignore"):
        model.fit(X, lengths)
        score = float(model.score(X, lengths)) / n
    return score


def _smooth(rows: FloatArray, mass: float) -> FloatArray:
    """Mix each probability row (last axis) with ``mass`` of the uniform law."""
    array = np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=0.0, posinf=0.0)
    array = np.clip(array, 0.0, None)
    total = array.sum(axis=-1, keepdims=True)
    # A row EM left empty (a state it never visits) becomes uniform.
    array = np.where(total > 0, array / np.where(total > 0, total, 1.0), 1.0 / array.shape[-1])
    smoothed: FloatArray = (1.0 - mass) * array + mass / array.shape[-1]
    return smoothed
