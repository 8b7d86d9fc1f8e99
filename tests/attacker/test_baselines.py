"""Tests of the baselines: samples, the four fits, their model files and the baseline command."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attacker.baselines import (
    BaselineFileError,
    BaselineOptions,
    EmpiricalModel,
    MissingDependencyError,
    NgramModel,
    SampleSet,
    SpectralModel,
    baseline_from_dict,
    buy_samples,
    fit_baseline,
    save_baseline,
)
from attacker.baselines.em import EMSettings, fit_em, require_hmmlearn
from attacker.baselines.samples import decode_rows, encode_rows
from attacker.baselines.spectral import fit_spectral
from attacker.cli import run_evaluate
from attacker.clone import CloneFileError, load_any_model
from attacker.oracle import BudgetExceededError, InProcessOracle
from shared.automaton import HMM
from shared.distances import exact_distance
from shared.model import SequenceModel
from shared.presets import load_model, noisy_parity

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_SECONDS = 300


def _all_sequences(model: SequenceModel) -> np.ndarray:
    rows = itertools.product(range(model.alphabet_size), repeat=model.horizon)
    return np.array(list(rows), dtype=np.int64)


def _two_state_hmm(horizon: int = 6) -> HMM:
    """A sticky 2-state HMM whose states favour opposite tokens."""
    T = np.array([[0.9, 0.1], [0.2, 0.8]])
    O = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])  # noqa: E741 - HMM notation
    return HMM(["a", "b", "c"], horizon, np.array([0.6, 0.4]), T, O)


def _samples(model: SequenceModel, n: int, seed: int) -> SampleSet:
    oracle = InProcessOracle(model, np.random.default_rng(seed), budget=n)
    return buy_samples(oracle, n)


def _exact_samples(model: SequenceModel, scale: float = 1e13) -> SampleSet:
    """Counts proportional to the exact probabilities: sample moments equal the true ones."""
    rows = _all_sequences(model)
    counts = np.rint(np.exp(model.log_prob(rows)) * scale).astype(np.int64)
    keep = counts > 0
    return SampleSet.from_rows(model.alphabet, rows[keep], counts[keep])


# -- samples ------------------------------------------------------------------------------


def test_sample_set_merges_and_sorts_rows() -> None:
    rows = np.array([[1, 0, 2], [0, 2, 1], [1, 0, 2], [0, 2, 0]])

    samples = SampleSet.from_rows(("a", "b", "c"), rows, np.array([1, 2, 3, 4]))

    np.testing.assert_array_equal(samples.sequences, [[0, 2, 0], [0, 2, 1], [1, 0, 2]])
    np.testing.assert_array_equal(samples.counts, [4, 2, 4])
    assert samples.n == 10
    assert samples.horizon == 3
    np.testing.assert_array_equal(samples.rows_at(np.array([0, 3, 4, 9])),
                                  [[0, 2, 0], [0, 2, 0], [0, 2, 1], [1, 0, 2]])


def test_sample_set_rejects_token_outside_alphabet() -> None:
    with pytest.raises(ValueError, match=r"token outside 0\.\.1; A=2"):
        SampleSet.from_rows(("0", "1"), np.array([[0, 2]]))


def test_encode_rows_round_trip() -> None:
    rows = np.random.default_rng(0).integers(0, 300, size=(7, 5))

    packed = encode_rows(rows)

    assert packed["dtype"] == "uint16"
    np.testing.assert_array_equal(decode_rows(json.loads(json.dumps(packed))), rows)


def test_buy_samples_charges_ledger_by_chunk() -> None:
    oracle = InProcessOracle(_two_state_hmm(), np.random.default_rng(0), budget=1000)

    samples = buy_samples(oracle, 1000, chunk_samples=300)

    assert samples.n == 1000
    assert oracle.ledger.samples == 1000
    assert oracle.ledger.tokens == 6000
    assert oracle.ledger.requests == 4
    assert oracle.ledger.by_phase["baseline-samples"]["samples"] == 1000


def test_buy_samples_over_budget_buys_nothing() -> None:
    oracle = InProcessOracle(_two_state_hmm(), np.random.default_rng(0), budget=999)

    with pytest.raises(BudgetExceededError, match="budget of 999"):
        buy_samples(oracle, 1000, chunk_samples=300)
    assert oracle.ledger.samples == 0


# -- empirical and n-gram -------------------------------------------------------------------


@pytest.mark.parametrize("pseudocount", [0.0, 0.5], ids=["raw", "kt"])
def test_empirical_model_is_normalised(pseudocount: float) -> None:
    samples = _samples(_two_state_hmm(), 500, seed=1)
    model = EmpiricalModel(samples.alphabet, samples.sequences, samples.counts, pseudocount)

    total = np.exp(model.log_prob(_all_sequences(model))).sum()

    assert total == pytest.approx(1.0, abs=1e-12)


def test_empirical_model_matches_sample_frequencies() -> None:
    samples = _samples(_two_state_hmm(), 500, seed=2)
    model = EmpiricalModel(samples.alphabet, samples.sequences, samples.counts, 0.0)

    probabilities = np.exp(model.log_prob(samples.sequences))

    np.testing.assert_allclose(probabilities, samples.counts / samples.n, rtol=1e-12)


def test_empirical_next_token_law_is_smoothed_count() -> None:
    rows = np.array([[0, 1, 1], [0, 1, 0], [0, 0, 2], [2, 2, 2]])
    model = EmpiricalModel(("a", "b", "c"), rows, np.array([3, 1, 2, 4]), pseudocount=0.5)

    laws = model.next_token_probs([[0], [0, 1], [1]])

    # c(0) = 6 with children (0: 2, 1: 4, 2: 0); c(0 1) = 4 with (1, 3, 0); c(1) = 0.
    np.testing.assert_allclose(laws[0], np.array([2.5, 4.5, 0.5]) / 7.5)
    np.testing.assert_allclose(laws[1], np.array([1.5, 3.5, 0.5]) / 5.5)
    np.testing.assert_allclose(laws[2], np.full(3, 1 / 3))


def test_ngram_model_counts_contexts() -> None:
    rows = np.array([[0, 1, 1], [1, 1, 0]])
    samples = SampleSet.from_rows(("a", "b"), rows, np.array([2, 1]))

    result = fit_baseline("ngram", samples, BaselineOptions(order=1), np.random.default_rng(0))
    laws = result.model.next_token_probs([[], [0], [1], [0, 1]])

    # First tokens: a twice, b once.  After a: b twice.  After b: b three times, a once.
    np.testing.assert_allclose(laws[0], np.array([3, 2]) / 5)
    np.testing.assert_allclose(laws[1], np.array([1, 3]) / 4)
    np.testing.assert_allclose(laws[2], np.array([2, 4]) / 6)
    np.testing.assert_allclose(laws[3], laws[2])
    total = np.exp(result.model.log_prob(_all_sequences(result.model))).sum()
    assert total == pytest.approx(1.0, abs=1e-12)


def test_ngram_rejects_huge_table() -> None:
    samples = SampleSet.from_rows([str(i) for i in range(30)], np.zeros((2, 6), dtype=np.int64))

    with pytest.raises(ValueError, match="lower --order"):
        fit_baseline("ngram", samples, BaselineOptions(order=5), np.random.default_rng(0))


# -- spectral -------------------------------------------------------------------------------


def test_spectral_exact_moments_recover_hmm() -> None:
    model = _two_state_hmm()

    learned, details = fit_spectral(_exact_samples(model), states=2, floor=0.0)

    assert details["dimension"] == 2
    assert exact_distance(model, learned).tv < 1e-9


def test_spectral_first_window_matches_pooled_on_exact_moments() -> None:
    model = _two_state_hmm()
    samples = _exact_samples(model)

    first, _ = fit_spectral(samples, states=2, pooled=False, floor=0.0)
    pooled, _ = fit_spectral(samples, states=2, pooled=True, floor=0.0)

    sequences = _all_sequences(model)
    np.testing.assert_allclose(first.log_prob(sequences), pooled.log_prob(sequences), atol=1e-7)


def test_spectral_recovers_well_conditioned_hmm() -> None:
    model = _two_state_hmm()
    samples = _samples(model, 4000, seed=3)

    result = fit_baseline("spectral", samples, BaselineOptions(states=2), np.random.default_rng(0))
    report = exact_distance(model, result.model)

    # Measured 0.0171 for these seeds; the bound leaves a factor 2.
    assert report.tv < 0.035
    assert np.isfinite(report.kl)


def test_spectral_drops_dimensions_below_noise() -> None:
    # Consecutive windows of noisy parity are uniform and independent bits, so P21 has
    # rank 1 and its second singular value is sampling noise.
    model = noisy_parity(6, 0.1, np.random.default_rng(0))
    samples = _samples(model, 2000, seed=7)

    learned, details = fit_spectral(samples, states=2)

    assert details["dimension"] == 1
    assert details["singular_values"][1] < details["noise_floor"]
    assert exact_distance(model, learned).tv == pytest.approx(0.4, abs=0.05)


def test_spectral_keeps_weak_states_above_measured_noise() -> None:
    # english-words has P21 singular values 0.183, 0.042, 0.031, 0.023, 0.0045, 0.0019,
    # 0.0015, then noise near 2e-4.  The worst-case floor 3 / sqrt(N) = 0.0055 at this N
    # would keep only four of them.
    model = load_model("english-words")
    samples = _samples(model, 300_000, seed=1)

    _, details = fit_spectral(samples, states=8, rng=np.random.default_rng(1))

    assert details["dimension"] >= 5
    assert details["noise_floor"] < 0.5 * 3.0 / np.sqrt(samples.n)


def test_spectral_rejects_short_horizon() -> None:
    samples = _samples(_two_state_hmm(horizon=2), 100, seed=0)

    with pytest.raises(ValueError, match="needs a horizon of at least 3, got H=2"):
        fit_baseline("spectral", samples, BaselineOptions(states=2), np.random.default_rng(0))


# -- EM -------------------------------------------------------------------------------------


def test_em_recovers_two_state_hmm() -> None:
    model = _two_state_hmm()
    samples = _samples(model, 2000, seed=4)
    options = BaselineOptions(states=2, restarts=2, iterations=100)

    result = fit_baseline("em", samples, options, np.random.default_rng(0))
    report = exact_distance(model, result.model)

    assert isinstance(result.model, HMM)
    assert result.fitted_on == 2000
    assert result.note == ""
    # Measured 0.0233 for these seeds; the bound leaves a factor 2.
    assert report.tv < 0.047
    assert np.all(result.model.O >= 1e-3 / 3)


class _TickingClock:
    """Seconds that advance by ``tick`` at every reading, so the EM plan is reproducible."""

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_em_time_limit_fits_subset() -> None:
    samples = _samples(_two_state_hmm(), 3000, seed=5)
    settings = EMSettings(states=2, restarts=1, iterations=20, pilot_sequences=100,
                          restart_sequences=200, time_limit=60.0)

    model, details = fit_em(samples, settings, np.random.default_rng(0), _TickingClock(5.0))

    # The pilot reads 5 s for 100 sequences, so the starts may use at most
    # 60 / 2 / 20 * 100 / 5 = 30 sequences.
    assert details["restart_sequences"] <= 30
    assert details["restart_sequences"] <= details["fitted_on"] < 3000
    assert isinstance(model, HMM)


def test_em_time_limit_note() -> None:
    samples = _samples(_two_state_hmm(), 3000, seed=5)
    options = BaselineOptions(states=2, restarts=1, iterations=20, time_limit=60.0)

    result = fit_baseline("em", samples, options, np.random.default_rng(0), _TickingClock(5.0))

    assert result.fitted_on < 3000
    assert result.note == f"fitted on {result.fitted_on:,} of 3,000 samples within the 60 s limit"
    assert result.metadata()["fitted_on"] == result.fitted_on


def test_em_without_hmmlearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were missing.
    monkeypatch.setitem(sys.modules, "hmmlearn", None)
    monkeypatch.setitem(sys.modules, "hmmlearn.hmm", None)

    with pytest.raises(MissingDependencyError, match=r'pip install -e "\.\[fit\]"'):
        require_hmmlearn()


def test_fit_baseline_rejects_unknown_name() -> None:
    samples = _samples(_two_state_hmm(), 10, seed=0)

    with pytest.raises(ValueError, match="unknown baseline 'hmm'; choose one of em, spectral"):
        fit_baseline("hmm", samples, BaselineOptions(), np.random.default_rng(0))


def test_baseline_options_reject_zero_states() -> None:
    with pytest.raises(ValueError, match="states must be at least 1, got 0"):
        BaselineOptions(states=0)


# -- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["em", "spectral", "empirical", "ngram"])
def test_baseline_file_round_trip(name: str, tmp_path: Path) -> None:
    target = _two_state_hmm()
    samples = _samples(target, 1000, seed=6)
    options = BaselineOptions(states=2, restarts=1, iterations=20)
    result = fit_baseline(name, samples, options, np.random.default_rng(0))
    path = tmp_path / f"{name}.json"

    save_baseline(result.model, path, result.metadata())
    loaded = load_any_model(path)

    sequences = _all_sequences(target)
    np.testing.assert_allclose(loaded.log_prob(sequences), result.model.log_prob(sequences),
                               rtol=1e-12)
    assert loaded.metadata["baseline"] == name
    assert loaded.metadata["fitted_on"] == 1000
    assert exact_distance(target, loaded).tv == pytest.approx(
        exact_distance(target, result.model).tv, abs=1e-12
    )


def test_baseline_file_rejects_unknown_field(tmp_path: Path) -> None:
    model = SpectralModel(("a", "b"), 3, np.ones(1), np.ones(1), np.full((2, 1, 1), 0.5))
    path = tmp_path / "spectral.json"
    save_baseline(model, path)
    data = json.loads(path.read_text())
    data["extra"] = 1
    path.write_text(json.dumps(data))

    with pytest.raises(CloneFileError, match="unknown fields \\['extra'\\]"):
        load_any_model(path)


def test_baseline_file_rejects_bad_counts() -> None:
    model = NgramModel(("a", "b"), 3, 0, np.array([[1.0, 2.0]]))
    data = {"format": "lowrank-steal/model", "version": 1, "kind": "ngram",
            "alphabet": ["a", "b"], "horizon": 3, "parameters": model.parameters()}
    data["parameters"]["counts"] = [[1.0, -2.0]]

    with pytest.raises(BaselineFileError, match="counts must be finite and non-negative"):
        baseline_from_dict(data)


# -- the baseline command -------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env.pop("LOWRANK_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "attacker.cli", *args], check=False, cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS,
    )


@pytest.mark.parametrize("name", ["em", "spectral", "empirical", "ngram"])
def test_baseline_command_writes_scoreable_file(name: str, serve_module, tmp_path: Path) -> None:
    server = serve_module()
    out = tmp_path / f"{name}.json"

    result = _run_cli("baseline", name, server.url, "--api-key", server.api_key, "--budget",
                      "2000", "--states", "2", "--restarts", "1", "--seed", "1", "--out",
                      str(out), "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["baseline"] == name
    assert summary["samples"] == 2000
    assert summary["tokens"] == 2000 * 6
    assert summary["fitted_on"] == 2000
    scores = run_evaluate(out, server.url, server.admin_key)
    assert scores["method"] == "exact"
    local = exact_distance(server.model, load_any_model(out))
    assert scores["tv"] == pytest.approx(local.tv, abs=1e-9)
    assert 0.0 <= scores["tv"] < 1.0


def test_baseline_command_rejects_zero_budget(serve_module, tmp_path: Path) -> None:
    server = serve_module()

    result = _run_cli("baseline", "empirical", server.url, "--api-key", server.api_key,
                      "--budget", "0", "--out", str(tmp_path / "model.json"))

    assert result.returncode == 2
    assert "--budget must be a positive number of samples, got 0" in result.stderr
    assert not (tmp_path / "model.json").exists()
