"""The Liu–Moitra learner: barycentric spanners of sketched future laws, step by step.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
t : int
    Step; histories of step ``t`` have ``t`` tokens.
B_t : list of tuple of int
    Spanner histories of step ``t``; ``B_0 = [()]``.
G_t : list of tuple of int
    Candidate histories: the extensions ``b o`` of ``B_{t-1}`` (plus typical histories).
L : int
    Future length of the prefix-event sketch; ``ell = min(L, H - t)``.
C : float
    Spanner approximation factor and bound on the transfer coefficients.
N_t, W_t, R_t
    Next-token tables, transfers and spanner sketch rows, as in :mod:`attacker.clone`.

For ``t = 1 .. H-1`` the learner sketches the candidates, estimates the rank, picks a
C-approximate barycentric spanner ``B_t``, expresses every extension ``b o`` of ``B_{t-1}``
in it (the transfers ``W_{t-1}``) and tabulates the next-token laws ``N_t`` of ``B_t``.

Two oracle modes exist.  In *probability* mode every quantity is computed from exact
next-token laws, so the clone reproduces the target exactly.  In *sample* mode (the
paper's setting) the learner buys completions and reuses each one for every statistic it
informs: ``n`` completions of ``b`` with ``L + 1`` tokens give ``N_t[b]``, the sketch of
``b`` and, split by their first token ``o``, the sketches of all extensions ``b o``.  Each
extension gets at least a minimum number of samples, and the budget of a step then goes to
the spanner histories, whose tables every state of the clone is built from.

Reference: Allen Liu and Ankur Moitra, "Model Stealing for Any Low-Rank Language Model",
arXiv:2411.07536 (2024).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from attacker.clone import Clone, StepTables
from attacker.oracle import Completions, Oracle
from attacker.future_sketch import draw_futures, estimate_future_sketch, plan_future_prompts
from attacker.rank import (
    RankEstimate,
    column_weights,
    estimate_rank_exact,
    estimate_rank_from_counts,
    estimate_rank_with_noise,
)
from attacker.sketch import (
    chain_rule_probability,
    next_token_counts,
    prefix_event_counts,
    sampled_future_sketch,
)
from attacker.spanner import barycentric_spanner
from attacker.transfer import fit_transfers, fit_transfers_weighted

__all__ = ["LearnerSettings", "learn"]

logger = logging.getLogger(__name__)

History = tuple[int, ...]
FloatArray = NDArray[np.float64]


class LearnerSettings(BaseModel):
    """Settings of the learner; every default is an engineering choice, not a paper value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int | None = Field(
        default=None, ge=1, description="Rank to use at every step; default: estimate it from the noise floor."
    )
    C: float = Field(default=2.0, gt=1.0, description="Barycentric spanner factor.")
    future_length: int = Field(default=2, ge=1, le=4, description="L of the prefix-event sketch.")
    sketch: Literal["auto", "prefix", "sampled-future"] = "auto"
    mode: Literal["auto", "sample", "probability"] = Field(
        default="auto", description="auto: probability mode where the target offers it."
    )
    projection: Literal["kl", "clip", "none"] = "kl"
    projection_bound: float | None = Field(
        default=None, gt=0, description="C' of the projection set; None: no box."
    )
    extension_min_samples: int | None = Field(
        default=None, ge=1, description="Samples every extension gets at least; default: from the budget."
    )
    spanner_min_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Candidates with fewer samples than this share of the median are kept out "
        "of the spanner, because a spanner maximises volume and noisy rows have more of it.",
    )
    sketch_futures: int = Field(default=16, ge=1, description="m of the sampled-future sketch.")
    probe_futures: int = Field(default=8, ge=1, description="Futures of the probe that decides on the sampled-future sketch.")
    probe_samples: int = Field(
        default=32, ge=2,
        description="Minimum samples per prompt of that probe (it buys 8 per token of future when that is more), "
        "and the least of the full sketch.",
    )
    future_sketch_share: float = Field(
        default=0.9, gt=0, lt=1,
        description="Share of a step's budget that a sampled-future sketch may spend; the rest tops up the tables.",
    )
    typical_histories: int = Field(
        default=8, ge=0, description="Full samples whose prefixes join the candidates of every step."
    )
    rank_factor: float = Field(default=1.0, gt=0, description="Noise-floor multiple for the rank.")
    smoothing: float | None = Field(
        default=None, ge=0, lt=1, description="Uniform mass in the clone's laws; default 1e-4 in sample mode, 0 otherwise."
    )
    pseudocount: float = Field(default=0.5, ge=0, description="Added to next-token counts in sample mode.")


def learn(oracle: Oracle, settings: LearnerSettings, rng: np.random.Generator) -> Clone:
    """Learn a clone of the oracle's model.

    Parameters
    ----------
    oracle : Oracle
        Query access to the target; its ledger's budget bounds the spending.
    settings : LearnerSettings
    rng : numpy.random.Generator
        Randomness for sketches and rank splits.

    Returns
    -------
    Clone

    Raises
    ------
    ValueError
        If sample mode is requested without a budget, or probability mode on a target
        without a probability oracle.
    """
    mode = settings.mode
    if mode == "auto":
        mode = "probability" if oracle.supports_probabilities else "sample"
    if mode == "probability" and not oracle.supports_probabilities:
        raise ValueError("probability mode needs a target with the probability oracle; use mode='sample'")
    started = time.monotonic()
    if mode == "probability":
        steps = _ExactLearner(oracle, settings, rng).run()
        smoothing = 0.0 if settings.smoothing is None else settings.smoothing
    else:
        if oracle.ledger.budget is None:
            raise ValueError("sample mode needs a budget; set one on the oracle (--budget)")
        steps = _SampleLearner(oracle, settings, rng).run()
        smoothing = 1e-4 if settings.smoothing is None else settings.smoothing

    metadata = {
        "settings": settings.model_dump(),
        "mode": mode,
        "ledger": oracle.ledger.to_dict(),
        "seconds": round(time.monotonic() - started, 3),
    }
    clone = Clone(oracle.alphabet, steps, settings.projection, settings.projection_bound, smoothing, metadata)
    logger.info(
        "learned clone: ranks %s, %d samples, %d requests in %.1f s",
        clone.ranks, oracle.ledger.samples, oracle.ledger.requests, metadata["seconds"],
    )
    return clone


# -- probability mode -------------------------------------------------------------------------


class _ProbabilityCache:
    """Exact next-token laws, each prompt bought once (counts the queries saved)."""

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.laws: dict[History, FloatArray] = {}
        self.saved = 0

    def __call__(self, prompts: Sequence[History]) -> FloatArray:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.laws]
        self.saved += len(prompts) - len(missing)
        for start in range(0, len(missing), 1000):
            batch = missing[start : start + 1000]
            for prompt, law in zip(batch, self.oracle.next_token_probs(batch)):
                self.laws[prompt] = law
        return np.array([self.laws[p] for p in prompts]).reshape(len(prompts), -1)


class _ExactLearner:
    """Learner for targets that reveal exact next-token laws."""

    def __init__(self, oracle: Oracle, settings: LearnerSettings, rng: np.random.Generator):
        self.oracle = oracle
        self.settings = settings
        self.rng = rng
        self.probs = _ProbabilityCache(oracle)
        self.A = oracle.alphabet_size
        self.H = oracle.horizon

    def run(self) -> list[StepTables]:
        with self.oracle.ledger.in_phase("next-token tables"):
            N = self.probs([()])
        steps = [StepTables([[]], N, N.copy(), sketch="empty")]
        spanner: list[History] = [()]
        for t in range(1, self.H):
            candidates = [b + (o,) for i, b in enumerate(spanner) for o in range(self.A) if N[i, o] > 0]
            with self.oracle.ledger.in_phase("sketches"):
                V, sketch = self._sketch(candidates)
            rank = estimate_rank_exact(V, self.settings.rank)
            w = column_weights(V, np.ones(len(candidates)))
            chosen = barycentric_spanner((V * w) @ rank.basis, self.settings.C).indices
            R = V[chosen]
            steps[-1].W = self._transfers(spanner, N, candidates, V, R, w)
            spanner = [candidates[i] for i in chosen]
            with self.oracle.ledger.in_phase("next-token tables"):
                N = self.probs(spanner)
            steps.append(StepTables([list(b) for b in spanner], N, R, sketch=sketch,
                                    diagnostics={"candidates": len(candidates)}))
            logger.info("step %d: %d candidates, rank %d (%s sketch), %d queries so far",
                        t, len(candidates), rank.rank, sketch, self.oracle.ledger.samples)
        return steps

    def _sketch(self, candidates: list[History]) -> tuple[FloatArray, str]:
        t = len(candidates[0])
        if self.settings.sketch == "prefix":
            ell = min(self.settings.future_length, self.H - t)
            strings = [tuple(int(c) for c in np.unravel_index(i, (self.A,) * ell)) for i in range(self.A**ell)]
            return chain_rule_probability(candidates, strings, self.probs), "prefix"
        sketch = sampled_future_sketch(candidates, self.H, self.settings.sketch_futures, self.probs, self.rng)
        return sketch.vectors, "sampled-future"

    def _transfers(self, spanner, N, candidates, V, R, w) -> FloatArray:
        index = {c: i for i, c in enumerate(candidates)}
        W = np.full((self.A, len(spanner), R.shape[0]), 1.0 / R.shape[0])
        beta = fit_transfers(V, R, self.settings.C, w)
        for i, b in enumerate(spanner):
            for o in range(self.A):
                if b + (o,) in index:
                    W[o, i] = beta[index[b + (o,)]]
        return W


# -- sample mode ------------------------------------------------------------------------------


class _SampleLearner:
    """Learner that only buys sampled completions (the paper's query model)."""

    def __init__(self, oracle: Oracle, settings: LearnerSettings, rng: np.random.Generator):
        self.oracle = oracle
        self.settings = settings
        self.rng = rng
        self.A = oracle.alphabet_size
        self.H = oracle.horizon
        self.L = settings.future_length
        self.pools: dict[History, list[Completions]] = {}
        self.typical: dict[int, list[History]] = {}
        self.future_found = False
        # Guess of the rank of the steps not learned yet, updated after every step.
        self.expected_rank = min(8, self.A ** min(self.L, self.H))

    # Budget helpers.

    def _share(self, t: int, k: int) -> int:
        """Samples step ``t`` may spend, if this step has ``k`` spanner histories.

        Every spanner history of every step should end with about the same number of
        samples.  So step ``t`` gets ``k`` parts of what is left, and each later step is
        expected to need as many parts as the rank cap (or the last rank seen).  Once the
        sampled-future sketch is in use, a step that needs it weighs ``H - t`` times more,
        because each of its candidates costs a chain of ``H - t`` prompts per future.
        """
        # NOTE: every step spends its whole share, so the learner never stops buying where more
        # samples no longer help.  Caps from a target TV starved early steps into false ranks.
        remaining = self.oracle.ledger.remaining or 0
        rank = max(self.settings.rank or self.expected_rank, 1)
        weights = [rank * self._cost_weight(s) for s in range(t + 1, self.H)]
        own = k * self._cost_weight(t)
        return int(remaining * own / (own + sum(weights)))

    def _cost_weight(self, t: int) -> int:
        """Relative cost of step ``t``: ``H - t`` with the sampled-future sketch, else 1."""
        future = self.future_found or self.settings.sketch == "sampled-future"
        return self.H - t if future and t > 0 and self.H - t > self.L else 1

    def _buy(self, additional: dict[History, int], max_tokens: int) -> None:
        """Buy ``additional[h]`` more completions of each ``h``, grouped by request size."""
        by_size: dict[int, list[History]] = {}
        for h, n in additional.items():
            if n > 0:
                by_size.setdefault(int(n), []).append(h)
        for n, prompts in sorted(by_size.items()):
            remaining = self.oracle.ledger.remaining or 0
            prompts = prompts[: remaining // n] if n else []
            if not prompts:
                continue
            for h, batch in zip(prompts, self.oracle.complete(prompts, n, max_tokens)):
                self.pools.setdefault(h, []).append(batch)

    def _inherit(self, parent: History) -> None:
        """Give each extension ``parent o`` the completions of ``parent`` that start with ``o``."""
        for batch in self.pools.get(parent, []):
            if batch.futures.shape[1] < 2:
                continue
            for o in np.unique(batch.futures[:, 0]):
                rows = batch.futures[:, 0] == o
                child = parent + (int(o),)
                self.pools.setdefault(child, []).append(
                    Completions(batch.futures[rows, 1:], batch.counts[rows])
                )

    def _n(self, h: History, length: int = 1) -> int:
        """Count the completions of ``h`` with at least ``length`` tokens."""
        return sum(b.n for b in self.pools.get(h, []) if b.futures.shape[1] >= length)

    # The loop.

    def run(self) -> list[StepTables]:
        ledger = self.oracle.ledger
        with ledger.in_phase("candidates"):
            self._buy_typical()
        with ledger.in_phase("next-token tables"):
            self._buy({(): self._share(0, 1)}, min(self.L + 1, self.H))
        if self._n(()) == 0:
            raise ValueError(
                f"a budget of {ledger.budget} samples leaves none for the empty prompt; "
                f"use a budget of at least {self.H * self.A} samples"
            )
        N = self._table([()])
        steps = [StepTables([[]], N, N.copy(), sketch="empty")]
        spanner: list[History] = [()]
        for t in range(1, self.H):
            step, spanner = self._step(t, spanner, steps[-1])
            steps.append(step)
            keep = set(spanner)
            self.pools = {h: pool for h, pool in self.pools.items() if h in keep}
        return steps

    def _step(self, t: int, previous: list[History], last: StepTables) -> tuple[StepTables, list[History]]:
        """Learn step ``t``: candidates, sketch, spanner, transfers into it, tables."""
        ledger = self.oracle.ledger
        share = self._share(t, self.expected_rank)
        step_start = ledger.samples
        ell = min(self.L, self.H - t)

        # Candidates: extensions seen in the completions of B_{t-1}, then typical histories.
        for b in previous:
            self._inherit(b)
        extensions = [b + (o,) for b in previous for o in range(self.A) if self._n(b + (o,)) > 0]
        typical = [h for h in self.typical.get(t, []) if h not in set(extensions)]
        candidates = extensions + typical
        minimum = self.settings.extension_min_samples or max(20, share // (20 * len(candidates)))
        with ledger.in_phase("candidates"):
            # Inherited completions are a token shorter than their parent's, and those shorter
            # than ell cannot sketch the candidate, so only long enough ones count here.
            self._buy({c: minimum - self._n(c, ell) for c in candidates}, min(self.L + 1, self.H - t))
        counts = np.array([prefix_event_counts(self.pools.get(c, []), ell, self.A) for c in candidates])
        sketched = counts.sum(axis=1) > 0
        if not sketched.any():
            raise ValueError(
                f"the budget of {ledger.budget} samples ran out at step {t} of {self.H}; raise --budget"
            )
        candidates = [c for c, keep in zip(candidates, sketched) if keep]
        counts = counts[sketched]
        extension_count = int(sketched[: len(extensions)].sum())

        # Sketch and spanner: prefix events, unless they cannot see the rank.
        chosen, rank = self._spanner(counts)
        sketch = "prefix"
        V: FloatArray | None = None
        relative: FloatArray | None = None
        if self._wants_future_sketch(t, candidates, rank):
            # Each candidate costs a chain of prompts per future, so this sketch keeps to the
            # extensions, which the transfers need anyway.
            with ledger.in_phase("sketches"):
                future = self._future_sketch(
                    candidates[:extension_count], share - (ledger.samples - step_start), rank
                )
            if future is not None:
                candidates, counts = candidates[:extension_count], counts[:extension_count]
                V, relative, estimate = future
                w = np.ones(V.shape[1])
                chosen = self._choose(V, w, estimate, np.ones(len(candidates)))
                sketch, rank = "sampled-future", estimate.rank
                # State that prefix events missed once can stay hidden for many steps, and a
                # probe can miss it, so later steps keep this sketch.
                self.future_found = True
        self.expected_rank = len(chosen)

        # Tables of the spanner histories, from their completions topped up to equal counts.
        left = share - (ledger.samples - step_start)
        target = self._spanner_target([candidates[i] for i in chosen], left)
        with ledger.in_phase("next-token tables"):
            self._buy(target, min(self.L + 1, self.H - t))
        if V is None:
            for i in chosen:
                counts[i] = prefix_event_counts(self.pools[candidates[i]], ell, self.A)
            V = counts / counts.sum(axis=1, keepdims=True)
            w = column_weights(V, counts.sum(axis=1))
        last.W = self._transfers(previous, candidates, V, chosen, w, relative)
        spanner = [candidates[i] for i in chosen]
        N = self._table(spanner)

        # The projection checks the next-token laws only: they pool every sample of a
        # spanner history, while longer events are too noisy to rule states out.
        step = StepTables(
            [list(b) for b in spanner], N, N.copy(), sketch=sketch,
            diagnostics={"candidates": len(candidates), "typical": len(typical), "rank_estimate": rank,
                         "samples": [self._n(b) for b in spanner]},
        )
        logger.info("step %d: %d candidates, rank %d (%s sketch), %d samples so far",
                    t, len(candidates), len(chosen), sketch, ledger.samples)
        return step, spanner

    def _buy_typical(self) -> None:
        """Buy full sequences from the empty prompt; their prefixes become typical histories."""
        count = self.settings.typical_histories
        if count == 0 or self.H < 2:
            return
        (batch,) = self.oracle.complete([()], count, self.H)
        for t in range(1, self.H):
            prefixes = {tuple(int(x) for x in row[:t]) for row in batch.futures}
            self.typical[t] = sorted(prefixes)

    def _wants_future_sketch(self, t: int, candidates: list[History], detected: int) -> bool:
        """Decide whether step ``t`` needs the sampled-future sketch.

        The prefix events see everything when they cover the whole future.  Otherwise
        ``auto`` switches when they find fewer dimensions than the rank the user gave, or
        when they find a single one (no structure at all) and a small probe with sampled
        futures finds more.  Once switched, it stays switched.
        """
        if self.settings.sketch == "prefix" or self.H - t <= self.L:
            return False
        if self.settings.sketch == "sampled-future" or self.future_found:
            return True
        if self.settings.rank is not None:
            return detected < self.settings.rank
        return detected == 1

    def _future_sketch(
        self, candidates: list[History], budget: int, detected: int
    ) -> tuple[FloatArray, FloatArray, RankEstimate] | None:
        """Buy the sampled-future sketch of ``candidates`` with about ``budget`` samples.

        Returns the sketch rows, the relative variance of their entries and the rank estimate, or
        None when a probe shows no more dimensions than the prefix events found.
        """
        settings = self.settings
        if settings.sketch == "auto" and settings.rank is None and not self.future_found:
            # A chain of H - t factors from n samples each has a relative variance of about
            # (H - t) / n, so the probe buys more samples per prompt for longer futures.  With a
            # fixed 32, a 24-bit parity went unseen at the first step that carried it.
            depth = self.H - len(candidates[0])
            probe_n = max(settings.probe_samples, _PROBE_SAMPLES_PER_FACTOR * depth)
            probe = self._estimate_future(candidates[: 2 * detected + 6], settings.probe_futures,
                                          probe_n, cap=budget // 4)
            if probe is None or probe[2].rank <= detected:
                if probe is None:
                    logger.info("no budget for a probe with sampled futures; keeping the prefix sketch")
                else:
                    logger.info("probe with sampled futures finds rank %d; keeping the prefix sketch",
                                probe[2].rank)
                return None
        return self._estimate_future(candidates, settings.sketch_futures, budget=budget, cap=budget)

    def _estimate_future(
        self,
        candidates: list[History],
        m: int,
        n: int | None = None,
        budget: int | None = None,
        cap: int | None = None,
    ) -> tuple[FloatArray, FloatArray, RankEstimate] | None:
        """Buy a sampled-future sketch with ``n`` samples per prompt.

        Without ``n``, a share of ``budget`` is split evenly over the distinct prompts.  The
        sketch never spends more than ``cap`` samples.
        """
        remaining = self.oracle.ledger.remaining or 0
        if cap is not None:
            remaining = min(remaining, cap)
        if remaining < m:
            return None
        futures = draw_futures(self.oracle, candidates, m, self.rng)
        prompts = plan_future_prompts(candidates, futures)
        if n is None:
            share = self.settings.future_sketch_share * (budget or 0)
            n = max(self.settings.probe_samples, int(share / max(len(prompts), 1)))
        n = min(n, (remaining - m) // max(len(prompts), 1))
        if n < self.settings.probe_samples:
            # Fewer samples per prompt make the chain-rule products mostly noise.
            return None
        sketch = estimate_future_sketch(self.oracle, candidates, futures, n, self.rng)
        if not np.any(sketch.vectors):
            return None
        estimate = estimate_rank_with_noise(
            sketch.vectors, sketch.noise, self.settings.rank, 1.5 * self.settings.rank_factor
        )
        logger.info("sampled-future sketch: %d candidates, %d futures, %d prompts x %d samples, rank %d",
                    len(candidates), m, len(prompts), n, estimate.rank)
        return sketch.vectors, sketch.relative, estimate

    def _spanner(self, counts: FloatArray) -> tuple[list[int], int]:
        """Estimate the rank and choose the spanner rows among well-sampled candidates.

        Returns the chosen rows and the number of singular values above the noise floor,
        which can differ from the number of rows when the user gave the rank.
        """
        estimate = estimate_rank_from_counts(counts, self.rng, self.settings.rank, self.settings.rank_factor)
        logger.debug("singular values %s, noise floor %.3g",
                     np.round(estimate.singular_values[:12], 1), estimate.noise_floor)
        # A stricter count decides whether the prefix events see any structure at all:
        # at the floor itself, pure noise passes for a second dimension half of the time.
        detected = max(int(np.sum(estimate.singular_values > 1.5 * estimate.noise_floor)), 1)
        n = counts.sum(axis=1)
        V = counts / n[:, None]
        return self._choose(V, column_weights(V, n), estimate, n), detected

    def _choose(
        self, V: FloatArray, w: FloatArray, estimate: RankEstimate, n: FloatArray
    ) -> list[int]:
        """Pick a barycentric spanner of the rows of ``V`` (feature weights ``w``) in the
        estimated subspace, among the rows with enough samples ``n``."""
        eligible = n >= self.settings.spanner_min_share * np.median(n)
        Y = (V * w) @ estimate.basis
        try:
            return [int(i) for i in barycentric_spanner(Y, self.settings.C, eligible).indices]
        except ValueError:
            pass
        # Too few well-sampled rows span the subspace: allow every row, at the rank they have.
        r = int(np.linalg.matrix_rank(Y))
        if r == 0:
            return [int(np.argmax(n))]
        try:
            return [int(i) for i in barycentric_spanner(Y[:, :r], self.settings.C).indices]
        except ValueError:
            return [int(np.argmax(n))]

    def _spanner_target(self, spanner: list[History], budget: int) -> dict[History, int]:
        """Split ``budget`` so the spanner histories end with sample counts as equal as possible."""
        # Only completions long enough to sketch the children next step count.
        length = min(self.L + 1, self.H - len(spanner[0]))
        have = np.array([self._n(b, length) for b in spanner], dtype=np.int64)
        budget = max(int(budget), 0)
        level = have.max() if budget == 0 else _water_level(have, budget)
        return {b: int(max(level - n, 0)) for b, n in zip(spanner, have)}

    def _table(self, spanner: list[History]) -> FloatArray:
        counts = np.array([next_token_counts(self.pools[b], self.A) for b in spanner])
        counts += self.settings.pseudocount
        return counts / counts.sum(axis=1, keepdims=True)

    def _transfers(self, previous, candidates, V, chosen, w, relative=None) -> FloatArray:
        """Fit ``W_{t-1}``: every extension of ``previous`` in the spanner rows ``V[chosen]``.

        Sampled-future rows come with the ``relative`` variance of their entries: their
        chain-rule noise is multiplicative and calls for weighted fits (see
        :mod:`attacker.transfer`).  A spanner history is its own row, so its coefficients
        are exact.
        """
        index = {c: i for i, c in enumerate(candidates)}
        R = V[chosen]
        if relative is not None:
            beta = fit_transfers_weighted(V, R, self.settings.C, relative, relative[chosen])
        else:
            beta = fit_transfers(V, R, self.settings.C, w)
        beta[chosen] = np.eye(len(chosen))
        W = np.empty((self.A, len(previous), R.shape[0]))
        for o in range(self.A):
            known = [i for i, b in enumerate(previous) if b + (o,) in index]
            fallback = beta[[index[previous[i] + (o,)] for i in known]].mean(axis=0) if known else None
            for i, b in enumerate(previous):
                if b + (o,) in index:
                    W[o, i] = beta[index[b + (o,)]]
                else:
                    # Never observed: N[i, o] of the previous step is only the pseudocount, so the row barely matters.
                    W[o, i] = fallback if fallback is not None else 1.0 / R.shape[0]
        return W


# Samples per prompt and per factor of the chain that the probe buys at least.
_PROBE_SAMPLES_PER_FACTOR = 8


def _water_level(have: NDArray[np.int64], budget: int) -> int:
    """Return the level ``x`` with ``sum(max(x - have, 0)) ≈ budget`` (water filling)."""
    order = np.sort(have)
    for j in range(len(order)):
        level = (budget + order[: j + 1].sum()) / (j + 1)
        if j + 1 == len(order) or level <= order[j + 1]:
            return int(level)
    return int(order[-1])
