"""Classical learners fitted to full-sequence samples, for comparison with the learner.

Each baseline is fitted only to samples of whole sequences from the empty prompt, bought through
an :class:`~attacker.oracle.Oracle` with :func:`buy_samples`, so it spends the learner's unit
of cost.  Each returns a :class:`~shared.model.SequenceModel` that :func:`save_baseline`
writes as a model file and :func:`attacker.clone.load_any_model` reads back.

``em``
    Baum-Welch for a categorical HMM with ``S`` states (hmmlearn), best of several seeded
    restarts, within a time limit (:mod:`attacker.baselines.em`).
``spectral``
    The spectral algorithm of Hsu, Kakade and Zhang from pair and triple moments
    (:mod:`attacker.baselines.spectral`).
``empirical``
    The empirical distribution, smoothed along the prefix tree
    (:mod:`attacker.baselines.empirical`).
``ngram``
    An order-``k`` Markov model with add-one smoothing (:mod:`attacker.baselines.ngram`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attacker.baselines.em import EMSettings, MissingDependencyError, fit_em, require_hmmlearn
from attacker.baselines.empirical import (
    DEFAULT_EMPIRICAL_PSEUDOCOUNT,
    EmpiricalModel,
    fit_empirical,
)
from attacker.baselines.files import (
    BASELINE_KINDS,
    BaselineFileError,
    baseline_from_dict,
    save_baseline,
)
from attacker.baselines.ngram import (
    DEFAULT_NGRAM_ORDER,
    DEFAULT_NGRAM_PSEUDOCOUNT,
    MAX_NGRAM_CELLS,
    NgramModel,
    fit_ngram,
)
from attacker.baselines.samples import SampleSet, buy_samples
from attacker.baselines.spectral import SpectralModel, fit_spectral
from shared.model import SequenceModel

__all__ = [
    "BASELINE_KINDS",
    "BASELINE_NAMES",
    "BaselineFileError",
    "BaselineOptions",
    "BaselineResult",
    "EMSettings",
    "EmpiricalModel",
    "MissingDependencyError",
    "NgramModel",
    "SampleSet",
    "SpectralModel",
    "baseline_from_dict",
    "buy_samples",
    "check_baseline_available",
    "check_baseline_inputs",
    "fit_baseline",
    "save_baseline",
]

logger = logging.getLogger(__name__)

BASELINE_NAMES: tuple[str, ...] = ("em", "spectral", "empirical", "ngram")


@dataclass(frozen=True)
class BaselineOptions:
    """Settings shared by the baselines; each baseline reads the ones it needs.

    Attributes
    ----------
    states : int
        ``S`` for ``em`` and ``spectral``.
    order : int
        ``k`` for ``ngram``.
    pseudocount : float or None
        Added to every next-token count by ``empirical`` and ``ngram``; default 0.5 and 1.
    restarts : int
        Random starts of ``em``.
    iterations : int
        Maximum EM iterations per run.
    time_limit : float
        Seconds ``em`` may spend fitting.
    """

    states: int = 4
    order: int = DEFAULT_NGRAM_ORDER
    pseudocount: float | None = None
    restarts: int = 4
    iterations: int = 100
    time_limit: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("states", "restarts", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.order < 0:
            raise ValueError(f"order must be at least 0, got {self.order}")
        if self.pseudocount is not None and not 0 < self.pseudocount < math.inf:
            raise ValueError(f"pseudocount must be a positive number, got {self.pseudocount}")
        if not 0 < self.time_limit < math.inf:
            raise ValueError(
                f"time_limit must be a positive number of seconds, got {self.time_limit}"
            )


@dataclass(frozen=True)
class BaselineResult:
    """A fitted baseline and how it was obtained.

    Attributes
    ----------
    name : str
        One of ``BASELINE_NAMES``.
    model : SequenceModel
    samples : int
        Samples available, ``N``.
    fitted_on : int
        Samples the model was fitted on; below ``samples`` when EM ran out of time.
    seconds : float
        Fitting time, without buying the samples.
    note : str
        A remark for tables, such as "fitted on 2,000 of 20,000 samples within the 60 s
        limit"; empty when there is nothing to remark.
    details : dict
        Fit report of the baseline (JSON-ready).
    """

    name: str
    model: SequenceModel
    samples: int
    fitted_on: int
    seconds: float
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Return the provenance written into the model file."""
        return {
            "baseline": self.name,
            "samples": self.samples,
            "fitted_on": self.fitted_on,
            "seconds": round(self.seconds, 3),
            "note": self.note,
            "details": self.details,
        }


def check_baseline_available(name: str) -> None:
    """Raise before anything is bought if baseline ``name`` is unknown or cannot run here.

    Raises
    ------
    ValueError
        If ``name`` is not a baseline.
    MissingDependencyError
        If ``name`` is ``em`` and hmmlearn is missing.
    """
    if name not in BASELINE_NAMES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINE_NAMES)}")
    if name == "em":
        require_hmmlearn()


def check_baseline_inputs(
    name: str, alphabet_size: int, horizon: int, options: BaselineOptions
) -> None:
    """Raise ValueError if baseline ``name`` cannot be fitted to a target of this shape.

    ``spectral`` needs ``H >= 3``; ``ngram`` needs a count table of at most
    ``MAX_NGRAM_CELLS`` cells.
    """
    if name == "spectral" and horizon < 3:
        raise ValueError(f"the spectral baseline needs a horizon of at least 3, got H={horizon}")
    if name == "ngram":
        cells = sum(alphabet_size**j for j in range(options.order + 1)) * alphabet_size
        if cells > MAX_NGRAM_CELLS:
            raise ValueError(
                f"an order-{options.order} model over A={alphabet_size} tokens needs {cells:,} "
                f"counts, more than {MAX_NGRAM_CELLS:,}; lower --order"
            )


def fit_baseline(
    name: str,
    samples: SampleSet,
    options: BaselineOptions,
    rng: np.random.Generator,
    clock: Callable[[], float] = time.monotonic,
) -> BaselineResult:
    """Fit baseline ``name`` to ``samples``.

    Parameters
    ----------
    name : str
        One of ``BASELINE_NAMES``.
    samples : SampleSet
    options : BaselineOptions
    rng : numpy.random.Generator
        Used by ``em`` (shuffling, random starts) and ``spectral`` (noise floor).
    clock : callable returning seconds
        Times the fit, and plans EM's use of its time limit.

    Raises
    ------
    ValueError
        For an unknown name or options the baseline cannot use.
    MissingDependencyError
        If ``em`` is requested without hmmlearn.
    """
    check_baseline_available(name)
    check_baseline_inputs(name, len(samples.alphabet), samples.horizon, options)
    started = clock()
    model: SequenceModel
    if name == "em":
        settings = EMSettings(
            states=options.states, restarts=options.restarts, iterations=options.iterations,
            time_limit=options.time_limit,
        )
        model, details = fit_em(samples, settings, rng, clock)
    elif name == "spectral":
        model, details = fit_spectral(samples, options.states, rng=rng)
    elif name == "empirical":
        pseudocount = options.pseudocount
        model, details = fit_empirical(
            samples, DEFAULT_EMPIRICAL_PSEUDOCOUNT if pseudocount is None else pseudocount
        )
    else:
        pseudocount = options.pseudocount
        if pseudocount is None:
            pseudocount = DEFAULT_NGRAM_PSEUDOCOUNT
        model, details = fit_ngram(samples, options.order, pseudocount)
    seconds = clock() - started

    fitted_on = int(details["fitted_on"])
    note = ""
    if fitted_on < samples.n:
        note = (
            f"fitted on {fitted_on:,} of {samples.n:,} samples within the "
            f"{options.time_limit:g} s limit"
        )
    result = BaselineResult(name, model, samples.n, fitted_on, seconds, note, details)
    model.metadata = result.metadata()
    logger.info("fitted %s baseline on %d of %d samples in %.1f s", name, fitted_on, samples.n,
                seconds)
    return result
