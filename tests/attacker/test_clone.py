"""Tests of the clone: state tracking, projection modes, atomic saving and loading.

The hand-built clone has ``A = 2`` and ``H = 2``.  Step 0 has one spanner history with
next-token law ``(0.5, 0.5)``.  Step 1 has two spanner histories that emit token 0 and
token 1 for sure.  After token 0 the transfer gives the state ``(1.5, -0.5)``, outside the
valid set, and after token 1 the state ``(0.5, 0.5)``.  Without projection the next-token
law ``(1.5, -0.5)`` is clipped to ``(1, 0)``.  The KL projection moves the state onto the
target ``(1 - eta/2, eta/2)``, which lies in the valid set (here the simplex).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from attacker.clone import Clone, CloneFileError, StepTables, load_any_model, load_clone
from attacker.learner import LearnerSettings, learn
from attacker.oracle import InProcessOracle
from shared.automaton import HMM

ETA = 1e-3  # default weight of the spanner average in the StateProjection target


def random_hmm(S: int, A: int, H: int, seed: int) -> HMM:
    """Return an HMM whose start law, transition rows and emission rows are Dirichlet(1) draws."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(S))
    T = rng.dirichlet(np.ones(S), size=S)
    O = rng.dirichlet(np.ones(A), size=S)  # noqa: E741 - HMM notation
    return HMM([f"t{o}" for o in range(A)], H, pi, T, O)


def all_sequences(A: int, H: int) -> np.ndarray:
    return np.array(list(itertools.product(range(A), repeat=H)), dtype=np.int64)


def hand_clone(projection: str = "kl", smoothing: float = 0.0) -> Clone:
    """Return the hand-built clone of the module docstring."""
    first = np.array([[0.5, 0.5]])
    W = np.array([[[1.5, -0.5]], [[0.5, 0.5]]])
    steps = [
        StepTables([[]], first, first.copy(), W, sketch="empty"),
        StepTables([[0], [1]], np.eye(2), np.eye(2), None, sketch="prefix"),
    ]
    return Clone(["a", "b"], steps, projection, bound=None, smoothing=smoothing)


@pytest.fixture(scope="module")
def learned() -> tuple[HMM, Clone]:
    """A probability-mode clone of a random HMM with S = 3, A = 3, H = 5."""
    model = random_hmm(3, 3, 5, seed=1)
    oracle = InProcessOracle(model, np.random.default_rng(2), probabilities=True)
    clone = learn(oracle, LearnerSettings(sketch="prefix"), np.random.default_rng(3))
    return model, clone


def write_clone_dict(path: Path, clone: Clone, **changes: object) -> None:
    data = clone.to_dict()
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


# -- state tracking and projection modes --------------------------------------------------------


def test_clone_hand_built_no_projection_known_answer() -> None:
    clone = hand_clone("none")

    probabilities = np.exp(clone.log_prob(all_sequences(2, 2)))

    np.testing.assert_allclose(probabilities, [0.5, 0.0, 0.25, 0.25], rtol=0, atol=1e-15)


def test_clone_hand_built_kl_projection_known_answer() -> None:
    clone = hand_clone("kl")

    probabilities = np.exp(clone.log_prob(all_sequences(2, 2)))

    expected = [0.5 * (1 - ETA / 2), 0.5 * ETA / 2, 0.25, 0.25]
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-8)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)


def test_clone_smoothing_mixes_uniform_law() -> None:
    clone = hand_clone("none", smoothing=0.1)

    probabilities = np.exp(clone.log_prob(all_sequences(2, 2)))

    # Second token after "a": 0.9 * (1, 0) + 0.1 * (0.5, 0.5) = (0.95, 0.05).
    np.testing.assert_allclose(probabilities, [0.475, 0.025, 0.25, 0.25], rtol=0, atol=1e-15)


def test_clone_with_projection_switches_mode() -> None:
    clone = hand_clone("kl")

    plain = clone.with_projection("none")

    assert plain.projection == "none"
    assert clone.projection == "kl"
    assert plain.steps is clone.steps
    assert plain.metadata == clone.metadata
    # The states differ only after "a", where the projection acts.
    log_kl = clone.log_prob(np.array([[0, 1]]))[0]
    log_plain = plain.log_prob(np.array([[0, 1]]))[0]
    assert log_plain == -np.inf
    assert log_kl == pytest.approx(np.log(0.5 * ETA / 2), abs=1e-5)


def test_clone_with_projection_exact_clone_unchanged(learned: tuple[HMM, Clone]) -> None:
    _, clone = learned
    sequences = all_sequences(3, 5)

    log_kl = clone.log_prob(sequences)

    for mode in ("clip", "none"):
        np.testing.assert_allclose(clone.with_projection(mode).log_prob(sequences), log_kl, rtol=0, atol=1e-12)


def test_clone_rejects_unknown_projection() -> None:
    with pytest.raises(ValueError, match="projection must be 'kl', 'clip' or 'none', got 'l2'"):
        hand_clone("l2")


def test_clone_summary_properties(learned: tuple[HMM, Clone]) -> None:
    _, clone = learned

    assert len(clone.ranks) == 5
    assert clone.ranks[0] == 1
    assert max(clone.ranks) == 3
    assert clone.sketches == ["empty"] + ["prefix"] * 4
    assert clone.ledger["samples"] > 0
    assert clone.metadata["mode"] == "probability"


# -- saving --------------------------------------------------------------------------------


def test_clone_save_load_round_trip_exact(learned: tuple[HMM, Clone], tmp_path: Path) -> None:
    _, clone = learned
    path = tmp_path / "clone.json"
    sequences = all_sequences(3, 5)

    clone.save(path)
    loaded = load_clone(path)

    np.testing.assert_array_equal(loaded.log_prob(sequences), clone.log_prob(sequences))
    assert loaded.ranks == clone.ranks
    assert loaded.sketches == clone.sketches
    assert loaded.ledger == clone.ledger
    assert loaded.projection == clone.projection
    assert loaded.alphabet == clone.alphabet
    for original, copy in zip(clone.steps, loaded.steps):
        np.testing.assert_array_equal(copy.N, original.N)
        np.testing.assert_array_equal(copy.R, original.R)
        assert copy.histories == original.histories


def test_clone_save_load_hand_built_keeps_mode(tmp_path: Path) -> None:
    clone = hand_clone("none", smoothing=0.1)
    path = tmp_path / "hand.json"

    clone.save(path)
    loaded = load_clone(path)

    assert loaded.projection == "none"
    assert loaded.smoothing == 0.1
    np.testing.assert_array_equal(loaded.log_prob(all_sequences(2, 2)), clone.log_prob(all_sequences(2, 2)))


def test_clone_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"

    hand_clone("kl").save(path)
    hand_clone("none").save(path)

    assert sorted(os.listdir(tmp_path)) == ["clone.json"]
    assert load_clone(path).projection == "none"


def test_clone_save_missing_directory_raises(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "clone.json"

    with pytest.raises(FileNotFoundError):
        hand_clone().save(path)

    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_clone_save_onto_directory_removes_temporary(tmp_path: Path) -> None:
    # The rename onto a directory fails after the temporary file is written.
    directory = tmp_path / "occupied"
    directory.mkdir()
    (directory / "keep.txt").write_text("x", encoding="utf-8")

    with pytest.raises(IsADirectoryError):
        hand_clone().save(directory)

    assert sorted(os.listdir(tmp_path)) == ["occupied"]
    assert os.listdir(directory) == ["keep.txt"]


def test_clone_save_unserialisable_metadata_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    hand_clone("kl").save(path)
    before = path.read_bytes()
    broken = hand_clone("none")
    broken.metadata["not json"] = {1, 2}

    with pytest.raises(TypeError, match="not JSON serializable"):
        broken.save(path)

    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["clone.json"]


# -- loading errors -------------------------------------------------------------------------


def test_load_clone_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CloneFileError, match="file not found: .*absent.json"):
        load_clone(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read .*corrupt.json: Expecting property name"),
        ("", "cannot read .*corrupt.json: Expecting value"),
        ("[1, 2, 3]", "corrupt.json does not contain a JSON object"),
    ],
    ids=["broken-json", "empty", "json-array"],
)
def test_load_clone_corrupt_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "corrupt.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(CloneFileError, match=message):
        load_clone(path)


def test_load_clone_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    hand_clone().save(path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")

    with pytest.raises(CloneFileError, match="cannot read .*clone.json"):
        load_clone(path)


def test_load_clone_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    path.write_bytes(b"\xff\xfe\x00\x81")

    with pytest.raises(CloneFileError, match="cannot read .*clone.json"):
        load_clone(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "hmm"}, "kind is 'hmm', expected 'clone'"),
        ({"kind": None}, "kind is None, expected 'clone'"),
        ({"version": 2}, "version 2 is not supported; expected 1"),
        ({"projection": "l2"}, "invalid clone: projection must be"),
        ({"alphabet": None}, "invalid clone"),
    ],
    ids=["model-kind", "no-kind", "version", "projection", "alphabet"],
)
def test_load_clone_wrong_header(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    path = tmp_path / "clone.json"
    write_clone_dict(path, hand_clone(), **changes)

    with pytest.raises(CloneFileError, match=f"clone.json: {message}"):
        load_clone(path)


def test_load_clone_missing_steps(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    data = hand_clone().to_dict()
    del data["steps"]
    path.write_text(json.dumps(data), encoding="utf-8")

    with pytest.raises(CloneFileError, match="invalid clone: 'steps'"):
        load_clone(path)


def step_variant(step: int, **changes: object) -> list[dict[str, object]]:
    steps = hand_clone().to_dict()["steps"]
    steps[step].update(changes)
    return steps


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (step_variant(0, W=[[[1.0]], [[1.0]]]), r"step 0: W has shape \(2, 1, 1\), expected \(2, 1, 2\)"),
        (step_variant(0, W=None), r"step 0: W has shape None, expected \(2, 1, 2\)"),
        (step_variant(1, N=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), r"step 1: N has shape \(2, 3\), expected \(k, 2\)"),
        (step_variant(1, R=[[1.0, 0.0]]), r"step 1: R has shape \(1, 2\), expected \(2, F\)"),
        (step_variant(1, N=[[float("nan"), 0.0], [0.0, 1.0]]), "step 1: N contains a value that is not finite"),
        (step_variant(0, W=[[[float("inf"), 0.0]], [[0.5, 0.5]]]), "step 0: W contains a value that is not finite"),
    ],
    ids=["W-shape", "W-missing", "N-width", "R-rows", "N-nan", "W-inf"],
)
def test_load_clone_invalid_tables(tmp_path: Path, steps: list[dict[str, object]], message: str) -> None:
    path = tmp_path / "clone.json"
    write_clone_dict(path, hand_clone(), steps=steps)

    with pytest.raises(CloneFileError, match=message):
        load_clone(path)


# -- load_any_model -------------------------------------------------------------------------


def test_load_any_model_reads_clone(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    clone = hand_clone("none")
    clone.save(path)

    loaded = load_any_model(path)

    assert isinstance(loaded, Clone)
    np.testing.assert_array_equal(loaded.log_prob(all_sequences(2, 2)), clone.log_prob(all_sequences(2, 2)))


def test_load_any_model_invalid_clone_names_file(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    write_clone_dict(path, hand_clone(), version=7)

    with pytest.raises(CloneFileError, match="clone.json: version 7 is not supported"):
        load_any_model(path)


def test_load_any_model_reads_model_file(tmp_path: Path) -> None:
    modelfile = pytest.importorskip("shared.modelfile")
    model = random_hmm(2, 3, 4, seed=5)
    path = tmp_path / "model.json"
    modelfile.save_model_file(model, path)

    loaded = load_any_model(path)

    assert loaded.kind == "hmm"
    sequences = all_sequences(3, 4)
    np.testing.assert_allclose(loaded.log_prob(sequences), model.log_prob(sequences), rtol=1e-12, atol=0)
