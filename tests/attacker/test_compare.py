"""Tests of the comparison of the learner with the baselines, in process and as a command."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from attacker.baselines import BaselineOptions
from attacker.compare import (
    CSV_COLUMNS,
    ComparisonInputError,
    ComparisonRow,
    comparison_table,
    rows_to_json,
    run_comparison,
)
from attacker.learner import LearnerSettings
from attacker.oracle import Completions, InProcessOracle, Oracle
from shared.automaton import HMM
from shared.distances import DistanceReport
from shared.model import SequenceModel

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_SECONDS = 300


def _two_state_hmm() -> HMM:
    T = np.array([[0.9, 0.1], [0.2, 0.8]])
    O = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])  # noqa: E741 - HMM notation
    return HMM(["a", "b", "c"], 5, np.array([0.6, 0.4]), T, O)


class _LocalJudge:
    """The judge of a server, computed from the model itself."""

    def __init__(self, model: SequenceModel) -> None:
        self.model = model
        self.alphabet = model.alphabet
        self.horizon = model.horizon

    def judge_log_probs(self, sequences: np.ndarray) -> np.ndarray:
        return self.model.log_prob(sequences)

    def sample_reference(self, n: int, seed: int | None = None) -> Completions:
        return Completions.from_samples(self.model.sample((), n, np.random.default_rng(seed)))


class _OracleFactory:
    """Opens in-process oracles over one model and records the budgets asked for."""

    def __init__(self, model: SequenceModel) -> None:
        self.model = model
        self.budgets: list[int] = []

    @contextlib.contextmanager
    def __call__(self, budget: int) -> Iterator[Oracle]:
        self.budgets.append(budget)
        yield InProcessOracle(self.model, np.random.default_rng(len(self.budgets)), budget=budget)


def test_run_comparison_rows_per_budget() -> None:
    model = _two_state_hmm()
    factory = _OracleFactory(model)

    rows = run_comparison(factory, _LocalJudge(model), [3000, 10000],
                          ["liu-moitra", "empirical", "spectral"], LearnerSettings(),
                          BaselineOptions(states=2), sequences=1000, seed=0)

    assert [(row.budget, row.learner) for row in rows] == [
        (3000, "liu-moitra"), (3000, "empirical"), (3000, "spectral"),
        (10000, "liu-moitra"), (10000, "empirical"), (10000, "spectral"),
    ]
    for learner_row, baseline_rows in ((rows[0], rows[1:3]), (rows[3], rows[4:6])):
        assert 0 < learner_row.samples <= learner_row.budget
        assert learner_row.note.startswith("ranks ")
        for row in baseline_rows:
            assert row.samples == learner_row.samples
            assert row.tokens == row.samples * model.horizon
    assert factory.budgets == [3000, rows[0].samples, 10000, rows[3].samples]
    for row in rows:
        assert row.report.method == "exact"
        assert 0.0 <= row.report.tv < 1.0
        assert math.isfinite(row.report.kl)


def test_run_comparison_baselines_alone_spend_budget() -> None:
    model = _two_state_hmm()

    rows = run_comparison(_OracleFactory(model), _LocalJudge(model), [500], ["ngram"],
                          LearnerSettings(), BaselineOptions(), sequences=100)

    assert len(rows) == 1
    assert rows[0].samples == 500
    assert rows[0].requests == 1


@pytest.mark.parametrize(
    ("budgets", "learners", "message"),
    [
        ([1000], ["liu-moitra", "hmm"], "unknown learner 'hmm'"),
        ([], ["empirical"], "budgets must be a non-empty list"),
        ([1000, 0], ["empirical"], "budgets must be a non-empty list of positive"),
        ([1000], [], "learners must name at least one"),
    ],
    ids=["unknown-learner", "no-budget", "zero-budget", "no-learner"],
)
def test_run_comparison_rejects_bad_input(budgets: list[int], learners: list[str],
                                          message: str) -> None:
    model = _two_state_hmm()
    factory = _OracleFactory(model)

    with pytest.raises(ComparisonInputError, match=message):
        run_comparison(factory, _LocalJudge(model), budgets, learners, LearnerSettings(),
                       BaselineOptions(), sequences=100)
    assert factory.budgets == []


def test_comparison_table_shows_infinite_kl() -> None:
    report = DistanceReport(0.25, 0.01, math.inf, math.inf, "monte-carlo", 400)
    row = ComparisonRow(1000, "empirical", 1000, 5000, 1, 0.5, report, "a note")

    data = rows_to_json([row])
    console = Console(record=True, width=200)
    console.print(comparison_table(data, "title"))
    text = console.export_text()

    assert data[0]["kl"] == "inf"
    assert data[0]["tv_upper95"] == pytest.approx(0.25 + 1.96 * 0.01)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert "0.25 ± 0.01" in text
    assert "inf" in text
    assert "a note" in text


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env.pop("LOWRANK_API_KEY", None)
    env.pop("LOWRANK_ADMIN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "attacker.cli", *args], check=False, cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS,
    )


def test_compare_command_writes_csv(serve_module, tmp_path: Path) -> None:
    server = serve_module()
    out = tmp_path / "compare.csv"
    learners = ["liu-moitra", "em", "spectral", "empirical", "ngram"]

    result = _run_cli("compare", server.url, "--api-key", server.api_key, "--admin-key",
                      server.admin_key, "--budgets", "3000,10000", "--learners",
                      ",".join(learners), "--states", "2", "--restarts", "1", "--csv", str(out),
                      "--json")

    assert result.returncode == 0, result.stderr
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        table = list(reader)
    assert [(row["budget"], row["learner"]) for row in table] == [
        (budget, learner) for budget in ("3000", "10000") for learner in learners
    ]
    for row in table:
        assert row["method"] == "exact"
        assert 0.0 <= float(row["tv"]) <= float(row["tv_upper95"]) < 1.0
        assert int(row["samples"]) <= int(row["budget"])
    summary = json.loads(result.stdout)
    assert summary["csv"] == str(out)
    assert [row["learner"] for row in summary["rows"]] == learners * 2


def test_compare_command_rejects_bad_budgets(serve_module) -> None:
    server = serve_module()

    result = _run_cli("compare", server.url, "--api-key", server.api_key, "--admin-key",
                      server.admin_key, "--budgets", "1000,lots")

    assert result.returncode == 2
    assert "--budgets must be comma-separated integers, got '1000,lots'" in result.stderr
