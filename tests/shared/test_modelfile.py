"""Tests of model files: round trips, validation messages and atomic saving."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.automaton import HMM, OperatorModel
from shared.model import SequenceModel
from shared.modelfile import (
    ModelFileError,
    load_model_file,
    model_from_dict,
    model_to_dict,
    save_model_file,
    validate_operator,
)
from shared.presets import random_hmm, rotation_clock


def _hmm_dict() -> dict[str, Any]:
    return {
        "format": "lowrank-steal/model",
        "version": 1,
        "kind": "hmm",
        "alphabet": ["a", "b", "c"],
        "horizon": 4,
        "pi": [0.6, 0.4],
        "T": [[0.9, 0.1], [0.2, 0.8]],
        "O": [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]],
        "metadata": {"source": "hand-made", "fit": {"seed": 3}},
    }


def _operator_dict() -> dict[str, Any]:
    return model_to_dict(rotation_clock(5))


def _negative_operator_dict() -> dict[str, Any]:
    """A normalised operator model whose state after token 0 gives token 0 probability -0.1."""
    return {
        "format": "lowrank-steal/model",
        "version": 1,
        "kind": "operator",
        "alphabet": ["x", "y"],
        "horizon": 3,
        "sigma": [1.0, 0.0],
        "M": [[[0.0, 0.5], [-0.2, 0.1]], [[0.5, 0.0], [0.5, 0.6]]],
        "tau": [1.0, 1.0],
    }


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    return data


_DELETE = object()

INVALID_CASES = [
    ("not-object", [1, 2], "must be a JSON object"),
    ("format", _with(_hmm_dict(), format="other"), "format is 'other'"),
    ("version-2", _with(_hmm_dict(), version=2), "version is 2 but this program reads version 1"),
    ("version-string", _with(_hmm_dict(), version="1"), "version is '1'"),
    ("clone", _with(_hmm_dict(), kind="clone"), "load it with attacker.clone.load_clone"),
    ("kind", _with(_hmm_dict(), kind="ssm"), "kind is 'ssm' but must be one of hmm, operator"),
    ("missing-O", _with(_hmm_dict(), O=_DELETE), "missing fields O, which a model of kind"),
    ("unknown-field", _with(_hmm_dict(), Pi=[1.0]), "unknown fields Pi"),
    ("alphabet-empty", _with(_hmm_dict(), alphabet=[]), "non-empty list of token labels"),
    ("alphabet-type", _with(_hmm_dict(), alphabet=["a", 3, "c"]), "alphabet entry 1 is 3"),
    (
        "alphabet-duplicate",
        _with(_hmm_dict(), alphabet=["a", "b", "a"]),
        "alphabet entries 0 and 2 are both 'a'",
    ),
    ("horizon-zero", _with(_hmm_dict(), horizon=0), "horizon is 0 but must be an integer >= 1"),
    ("horizon-float", _with(_hmm_dict(), horizon=2.0), "horizon is 2.0"),
    ("horizon-bool", _with(_hmm_dict(), horizon=True), "horizon is True"),
    (
        "T-shape",
        _with(_hmm_dict(), T=[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0]]),
        r"T has shape \(2, 3\) but must have shape \(2, 2\)",
    ),
    (
        "O-columns",
        _with(_hmm_dict(), O=[[0.5, 0.5], [0.1, 0.9]]),
        r"O has shape \(2, 2\) but must have shape \(2, 3\)",
    ),
    ("T-ragged", _with(_hmm_dict(), T=[[0.9, 0.1], [1.0]]), "T must be a nested list of numbers"),
    ("O-text", _with(_hmm_dict(), O=[["x", 0, 0], [0, 0, 1]]), "O must be a nested list"),
    (
        "O-nan",
        _with(_hmm_dict(), O=[[0.5, 0.3, 0.2], [float("nan"), 0.1, 0.9]]),
        r"O\[1, 0\] is nan; every entry must be finite",
    ),
    ("pi-empty", _with(_hmm_dict(), pi=[], T=[], O=[]), "pi is empty"),
    (
        "T-negative",
        _with(_hmm_dict(), T=[[1.1, -0.1], [0.2, 0.8]]),
        r"T\[0\]\[1\] is -0.1; probabilities must be non-negative",
    ),
    (
        "T-row-sum",
        _with(_hmm_dict(), T=[[0.9, 0.1], [0.2, 0.77]]),
        r"T row 1 sums to 0.97, expected 1 within 1e-06; normalise it",
    ),
    ("pi-sum", _with(_hmm_dict(), pi=[0.5, 0.4]), "pi sums to 0.9, expected 1"),
    (
        "O-row-sum",
        _with(_hmm_dict(), O=[[0.5, 0.3, 0.3], [0.1, 0.1, 0.8]]),
        "O row 0 sums to 1.1",
    ),
    ("metadata-type", _with(_hmm_dict(), metadata=[1]), "metadata must be a JSON object"),
    (
        "sigma-tau",
        _with(_operator_dict(), sigma=[2.0, 0.0, 0.0]),
        "sigma @ tau is 2, expected 1 within 1e-08; rescale sigma",
    ),
    (
        "operator-conservation",
        _with(_operator_dict(), tau=[1.0, 1.0, 1e-3]),
        "differs from tau",
    ),
    (
        "M-shape",
        _with(_operator_dict(), M=np.zeros((3, 3, 3)).tolist()),
        r"M has shape \(3, 3, 3\) but must have shape \(2, 3, 3\)",
    ),
    (
        "operator-negative",
        _negative_operator_dict(),
        r"gives token 0 probability -0.1 after the prefix \[0\]",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_model_from_dict_rejects_invalid(data: Any, message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        model_from_dict(data)


def test_model_from_dict_builds_hmm() -> None:
    model = model_from_dict(_hmm_dict())

    assert isinstance(model, HMM)
    assert model.alphabet == ("a", "b", "c")
    assert model.horizon == 4
    assert np.array_equal(model.T, [[0.9, 0.1], [0.2, 0.8]])
    assert model.metadata == {"source": "hand-made", "fit": {"seed": 3}}


def test_model_from_dict_renormalises_rows_within_tolerance() -> None:
    data = _with(_hmm_dict(), T=[[0.9, 0.1 + 5e-7], [0.2, 0.8]])

    model = model_from_dict(data)

    assert isinstance(model, HMM)
    assert model.T.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-15)


def test_model_file_round_trip_hmm(tmp_path: Path) -> None:
    model = model_from_dict(_hmm_dict())
    path = tmp_path / "hmm.json"

    save_model_file(model, path)
    loaded = load_model_file(path)

    assert isinstance(loaded, HMM)
    assert loaded.alphabet == model.alphabet
    assert loaded.horizon == model.horizon
    assert np.array_equal(loaded.pi, model.pi)
    assert np.array_equal(loaded.T, model.T)
    assert np.array_equal(loaded.O, model.O)
    assert loaded.metadata == {"source": "hand-made", "fit": {"seed": 3}}


def test_model_file_round_trip_operator(tmp_path: Path) -> None:
    model = rotation_clock(6, phi=0.2)
    path = tmp_path / "clock.json"

    save_model_file(model, path)
    loaded = load_model_file(path)

    assert type(loaded) is OperatorModel
    assert np.array_equal(loaded.sigma, model.sigma)
    assert np.array_equal(loaded.M, model.M)
    assert np.array_equal(loaded.tau, model.tau)
    assert loaded.metadata["phi"] == 0.2


def test_save_model_file_metadata_argument_replaces_attribute(tmp_path: Path) -> None:
    model = model_from_dict(_hmm_dict())
    path = tmp_path / "hmm.json"

    save_model_file(model, path, metadata={"citation": "none"})

    assert json.loads(path.read_text())["metadata"] == {"citation": "none"}


def test_save_model_file_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    save_model_file(model_from_dict(_hmm_dict()), path)

    save_model_file(rotation_clock(4), path)

    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]
    assert load_model_file(path).kind == "operator"


def test_save_model_file_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    save_model_file(model_from_dict(_hmm_dict()), path)
    before = path.read_bytes()

    with pytest.raises(ValueError, match="Out of range float values"):
        save_model_file(rotation_clock(4), path, metadata={"bad": float("nan")})

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_save_model_file_rejects_invalid_model(tmp_path: Path) -> None:
    model = HMM(["a"], 2, [1.0], [[0.9]], [[1.0]])
    path = tmp_path / "bad.json"

    with pytest.raises(ModelFileError, match="T row 0 sums to 0.9"):
        save_model_file(model, path)

    assert list(tmp_path.iterdir()) == []


def test_model_to_dict_rejects_other_models() -> None:
    class Constant(SequenceModel):
        def start(self, n: int) -> np.ndarray:
            return np.zeros((n, 1))

        def token_probs(self, states: np.ndarray, t: int) -> np.ndarray:
            return np.ones((states.shape[0], 1))

        def advance(self, states: np.ndarray, t: int, tokens: np.ndarray) -> np.ndarray:
            return states

    with pytest.raises(ModelFileError, match="cannot write a Constant"):
        model_to_dict(Constant(["a"], 2))


def test_load_model_file_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"format": "lowrank-steal/model",\n "version": 1,,\n}')

    with pytest.raises(ModelFileError, match="broken.json: not valid JSON at line 2"):
        load_model_file(path)


def test_load_model_file_error_starts_with_path(tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    path.write_text(json.dumps(_with(_hmm_dict(), kind="clone")))

    with pytest.raises(ModelFileError, match=r"^.*clone\.json: this file stores an attacker"):
        load_model_file(path)


def test_load_model_file_missing_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model_file(tmp_path / "absent.json")


def test_validate_operator_accepts_rotation_clock() -> None:
    validate_operator(rotation_clock(12, phi=0.1), np.random.default_rng(0), paths=500)


@settings(derandomize=True, deadline=None, max_examples=40)
@given(
    states=st.integers(1, 5),
    alphabet=st.integers(1, 6),
    horizon=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_model_dict_round_trip_random_hmm(
    states: int, alphabet: int, horizon: int, seed: int
) -> None:
    model = random_hmm(states, alphabet, horizon, np.random.default_rng(seed))

    data = json.loads(json.dumps(model_to_dict(model)))
    loaded = model_from_dict(data)

    assert isinstance(loaded, HMM)
    assert np.allclose(loaded.T, model.T, rtol=1e-15, atol=0)
    assert np.allclose(loaded.O, model.O, rtol=1e-15, atol=0)
    assert loaded.metadata == model.metadata


def test_save_model_file_failed_rename_removes_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()

    with pytest.raises(OSError):
        save_model_file(rotation_clock(4), target)

    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
    assert list(target.iterdir()) == []
