"""Run the learner and the baselines on one target at several budgets, and tabulate TV and KL.

At each budget ``B``:

1. the Liu-Moitra learner (``liu-moitra``) learns a clone through an oracle with budget
   ``B`` and is scored;
2. the baselines share one purchase of full-sequence samples from the empty prompt.  Its
   size is what the learner spent at this budget (at most ``B``), or ``B`` when the learner
   is not compared.  Each baseline is fitted to it and scored.

Every model is scored by the same judge on the same reference sequences (one seed per
budget), so the rows of one budget share their Monte Carlo noise.  A row records the
samples, tokens and requests that produced the model.  For baselines these are the
shared purchase, and ``seconds`` is the purchase time plus the baseline's fitting time.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from attacker.baselines import (
    BASELINE_NAMES,
    BaselineOptions,
    buy_samples,
    check_baseline_available,
    check_baseline_inputs,
    fit_baseline,
)
from attacker.client import HttpJudge, HttpOracle
from attacker.evaluate import Judge, evaluate, tv_upper95
from attacker.learner import LearnerSettings, learn
from attacker.oracle import Oracle
from shared.distances import DistanceReport

__all__ = [
    "CSV_COLUMNS",
    "LEARNER_NAME",
    "METHOD_NAMES",
    "ComparisonInputError",
    "ComparisonRow",
    "compare_over_http",
    "comparison_table",
    "rows_to_json",
    "run_comparison",
    "write_csv",
]

logger = logging.getLogger(__name__)

LEARNER_NAME = "liu-moitra"
METHOD_NAMES: tuple[str, ...] = (LEARNER_NAME, *BASELINE_NAMES)
CSV_COLUMNS: tuple[str, ...] = (
    "budget", "learner", "samples", "tokens", "requests", "seconds", "tv", "tv_stderr",
    "tv_upper95", "kl", "kl_stderr", "method", "sequences", "note",
)

OracleFactory = Callable[[int], AbstractContextManager[Oracle]]


class ComparisonInputError(ValueError):
    """An invalid budget list, learner name or baseline option, found before any query."""


@dataclass(frozen=True)
class ComparisonRow:
    """The score of one learner at one budget and what the model cost.

    Attributes
    ----------
    budget : int
        The budget ``B`` of this round, in samples.
    learner : str
        One of ``METHOD_NAMES``.
    samples, tokens, requests : int
        Queries that produced the model.
    seconds : float
        Wall-clock time to buy the queries and fit the model.
    report : DistanceReport
        TV and KL from the target to the model.
    note : str
        A remark, such as the ranks of the clone or the share of samples EM could use.
    """

    budget: int
    learner: str
    samples: int
    tokens: int
    requests: int
    seconds: float
    report: DistanceReport
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the row as the CSV's columns; an infinite KL stays ``inf``."""
        report = self.report
        return {
            "budget": self.budget,
            "learner": self.learner,
            "samples": self.samples,
            "tokens": self.tokens,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "tv": report.tv,
            "tv_stderr": report.tv_stderr,
            "tv_upper95": tv_upper95(report),
            "kl": report.kl,
            "kl_stderr": report.kl_stderr,
            "method": report.method,
            "sequences": report.sequences,
            "note": self.note,
        }


def run_comparison(
    open_oracle: OracleFactory,
    judge: Judge,
    budgets: Sequence[int],
    learners: Sequence[str],
    settings: LearnerSettings,
    options: BaselineOptions,
    sequences: int,
    seed: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> list[ComparisonRow]:
    """Learn and score every method in ``learners`` at every budget.

    Parameters
    ----------
    open_oracle : callable
        ``open_oracle(budget)`` returns a context manager that yields a fresh oracle with
        that budget and closes it afterwards.
    judge : Judge
        Scores models against the target.
    budgets : sequence of int
        Budgets in samples, each at least 1.
    learners : sequence of str
        Names from ``METHOD_NAMES``.
    settings : LearnerSettings
        Settings of the learner.
    options : BaselineOptions
        Settings of the baselines.
    sequences : int
        Reference sequences of each Monte Carlo score.
    seed : int
        Seeds the learner, the baselines and the reference draw of each budget.
    clock : callable returning seconds

    Returns
    -------
    list of ComparisonRow
        By budget, then in the order of ``learners``.

    Raises
    ------
    ComparisonInputError
        For an unknown learner name, an empty list or a budget below 1, before any query.
    MissingDependencyError
        If ``em`` is requested without hmmlearn, before any query.
    """
    _check_inputs(budgets, learners)
    rows: list[ComparisonRow] = []
    for budget in budgets:
        baseline_samples = budget
        if LEARNER_NAME in learners:
            row = _run_learner(open_oracle, judge, budget, settings, sequences, seed, clock)
            rows.append(row)
            baseline_samples = row.samples
        baselines = [name for name in learners if name != LEARNER_NAME]
        if baselines and baseline_samples > 0:
            rows.extend(
                _run_baselines(open_oracle, judge, budget, baseline_samples, baselines, options,
                               sequences, seed, clock)
            )
    return rows


def compare_over_http(
    url: str,
    api_key: str,
    admin_key: str,
    budgets: Sequence[int],
    learners: Sequence[str],
    settings: LearnerSettings,
    options: BaselineOptions,
    sequences: int,
    seed: int = 0,
    **client_options: Any,
) -> tuple[str, list[ComparisonRow]]:
    """Run :func:`run_comparison` against the server at ``url``.

    Each learner and each purchase of baseline samples gets its own
    :class:`~attacker.client.HttpOracle` with the budget of that round; the admin key
    scores the models through :class:`~attacker.client.HttpJudge`.

    Parameters
    ----------
    client_options
        Connection settings for both clients, such as ``max_concurrency``.

    Returns
    -------
    model_id : str
        The server's name for its model.
    rows : list of ComparisonRow

    Raises
    ------
    ComparisonInputError
        For invalid inputs, or a baseline that cannot fit the server's model, before any
        query is bought.
    MissingDependencyError
        If ``em`` is requested without hmmlearn.
    OracleError
        If the server fails or rejects a key.
    """
    _check_inputs(budgets, learners)
    try:
        judge = HttpJudge(url, admin_key, **client_options)
    except ValueError as exc:
        raise ComparisonInputError(str(exc)) from exc
    with judge:
        for name in learners:
            if name != LEARNER_NAME:
                try:
                    check_baseline_inputs(name, len(judge.alphabet), judge.horizon, options)
                except ValueError as exc:
                    raise ComparisonInputError(str(exc)) from exc

        def open_oracle(budget: int) -> HttpOracle:
            return HttpOracle(url, api_key, budget, sampling_seed=seed, **client_options)

        rows = run_comparison(open_oracle, judge, budgets, learners, settings, options,
                              sequences, seed)
        return judge.model_info.model_id, rows


def rows_to_json(rows: Sequence[ComparisonRow]) -> list[dict[str, Any]]:
    """Return the rows as JSON-ready dictionaries; infinite values become ``"inf"``."""

    def value(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return str(item)
        return item

    return [{key: value(item) for key, item in row.to_dict().items()} for row in rows]


def _check_inputs(budgets: Sequence[int], learners: Sequence[str]) -> None:
    """Raise ComparisonInputError for bad budgets or names, MissingDependencyError for em."""
    if not budgets or min(budgets) < 1:
        raise ComparisonInputError(
            f"budgets must be a non-empty list of positive sample counts, got {list(budgets)}"
        )
    if not learners:
        raise ComparisonInputError(f"learners must name at least one of {', '.join(METHOD_NAMES)}")
    for name in learners:
        if name not in METHOD_NAMES:
            raise ComparisonInputError(
                f"unknown learner {name!r}; choose from {', '.join(METHOD_NAMES)}"
            )
        if name != LEARNER_NAME:
            check_baseline_available(name)


def _score(model: Any, judge: Judge, sequences: int, seed: int) -> DistanceReport:
    # The same seed at every row of a budget draws the same reference sequences.
    return evaluate(model, judge, sequences, np.random.default_rng(seed))


def _run_learner(
    open_oracle: OracleFactory, judge: Judge, budget: int, settings: LearnerSettings,
    sequences: int, seed: int, clock: Callable[[], float],
) -> ComparisonRow:
    started = clock()
    with open_oracle(budget) as oracle:
        clone = learn(oracle, settings, np.random.default_rng(seed))
        ledger = oracle.ledger
    seconds = clock() - started
    report = _score(clone, judge, sequences, seed)
    logger.info("%s at budget %d: TV %.4g from %d samples", LEARNER_NAME, budget, report.tv,
                ledger.samples)
    note = "ranks " + " ".join(str(rank) for rank in clone.ranks)
    return ComparisonRow(budget, LEARNER_NAME, ledger.samples, ledger.tokens, ledger.requests,
                         seconds, report, note)


def _run_baselines(
    open_oracle: OracleFactory, judge: Judge, budget: int, n: int, names: Sequence[str],
    options: BaselineOptions, sequences: int, seed: int, clock: Callable[[], float],
) -> list[ComparisonRow]:
    started = clock()
    with open_oracle(n) as oracle:
        samples = buy_samples(oracle, n)
        ledger = oracle.ledger
    bought = clock() - started
    rows = []
    for name in names:
        result = fit_baseline(name, samples, options, np.random.default_rng(seed), clock)
        report = _score(result.model, judge, sequences, seed)
        logger.info("%s at budget %d: TV %.4g from %d samples", name, budget, report.tv, n)
        rows.append(ComparisonRow(budget, name, ledger.samples, ledger.tokens, ledger.requests,
                                  bought + result.seconds, report, result.note))
    return rows


def write_csv(rows: Sequence[ComparisonRow], path: str | os.PathLike[str]) -> None:
    """Write the rows with the columns ``CSV_COLUMNS`` to ``path`` atomically."""
    path = Path(path)
    temporary: Path | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", newline="", dir=path.parent, prefix=f".{path.name}.",
            suffix=".tmp", delete=False,
        ) as handle:
            temporary = Path(handle.name)
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row.to_dict())
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise
    logger.info("wrote %d rows to %s", len(rows), path)


def comparison_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """Return rows (as from :func:`rows_to_json`) as a rich table of TV, KL and cost."""
    table = Table(title=title)
    for column in ("budget", "learner", "samples", "tokens", "seconds", "TV", "TV 95% upper",
                   "KL (nats)", "note"):
        table.add_column(column, justify="left" if column in ("learner", "note") else "right")
    for row in rows:
        table.add_row(
            f"{row['budget']:,}", row["learner"], f"{row['samples']:,}", f"{row['tokens']:,}",
            f"{row['seconds']:.1f}", _with_error(row["tv"], row["tv_stderr"]),
            _with_error(row["tv_upper95"], 0.0), _with_error(row["kl"], row["kl_stderr"]),
            row["note"],
        )
    return table


def _with_error(value: float | str, stderr: float | str) -> str:
    if isinstance(value, str) or not math.isfinite(value):
        return str(value)
    if isinstance(stderr, str) or stderr == 0:
        return f"{value:.3g}"
    return f"{value:.3g} ± {stderr:.2g}"

