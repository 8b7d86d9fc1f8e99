"""Tests of the presets: names and parameters, and the properties each preset promises."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.automaton import HMM, OperatorModel
from shared.model import SequenceModel
from shared.modelfile import ModelFileError, save_model_file, validate_operator
from shared.presets import (
    PRESET_NAMES,
    casino,
    load_model,
    parse_model_spec,
    random_hmm,
    rotation_clock,
)
from shared.presets.hmm_presets import RANDOM_HMM_FLOOR

SequenceEnumerator = Callable[..., np.ndarray]


def _hankel(model: SequenceModel, all_sequences: SequenceEnumerator, length: int) -> np.ndarray:
    """Return ``P(h f)`` for all ``h`` and ``f`` of up to ``length`` tokens each."""
    words = [all_sequences(model, k) for k in range(length + 1)]
    blocks = []
    for histories in words:
        row = []
        for futures in words:
            pairs = np.concatenate(
                [np.repeat(histories, len(futures), axis=0), np.tile(futures, (len(histories), 1))],
                axis=1,
            )
            row.append(np.exp(model.log_prob(pairs)).reshape(len(histories), len(futures)))
        blocks.append(row)
    return np.block(blocks)


def _numerical_rank(matrix: np.ndarray) -> int:
    singular_values = np.linalg.svd(matrix, compute_uv=False)
    return int(np.sum(singular_values > 1e-10 * singular_values[0]))


@pytest.mark.parametrize("name", PRESET_NAMES, ids=PRESET_NAMES)
def test_load_model_each_preset(name: str) -> None:
    model = load_model(name)

    assert model.model_id == name
    first = model.next_token_probs([[]])[0]
    assert first.shape == (model.alphabet_size,)
    assert first.sum() == pytest.approx(1.0, abs=1e-12)


def test_english_words_shape() -> None:
    model = load_model("english-words")

    assert isinstance(model, HMM)
    assert model.num_states == 8
    assert model.alphabet_size == 27
    assert model.horizon == 6
    assert model.alphabet == tuple(string.ascii_lowercase) + ("_",)


def test_english_words_every_entry_positive() -> None:
    model = load_model("english-words")

    assert isinstance(model, HMM)
    assert model.pi.min() > 0
    assert model.T.min() > 0
    assert model.O.min() > 0


def test_english_words_prefers_real_words() -> None:
    model = load_model("english-words")
    encode = {label: token for token, label in enumerate(model.alphabet)}
    words = np.array([[encode[c] for c in word] for word in ("the___", "qzxjvk")])

    log_probs = model.log_prob(words)

    assert log_probs[0] > np.log(1e-3)
    assert log_probs[0] - log_probs[1] > np.log(1e6)


def test_english_words_metadata_records_fit() -> None:
    metadata = load_model("english-words").metadata

    assert metadata["training_words"] == 200_000
    assert {"wordfreq_version", "hmmlearn_version", "seed", "log_likelihood"} <= set(metadata)


def test_casino_default_and_stationary_start() -> None:
    model = load_model("casino")

    assert isinstance(model, HMM)
    assert model.horizon == 10
    assert model.alphabet == ("1", "2", "3", "4", "5", "6")
    assert np.allclose(model.pi @ model.T, model.pi, atol=1e-15)
    assert "Durbin" in model.metadata["citation"]
    assert "2/3" in model.metadata["initial_law"]


def test_casino_law_of_each_roll() -> None:
    model = casino(5)

    law = model.next_token_probs([[], [5, 5, 5]])

    # Stationary start: P(6) = 2/3 * 1/6 + 1/3 * 1/2 = 5/18 at the first roll.
    assert law[0, 5] == pytest.approx(5 / 18, abs=1e-15)
    # Three sixes make the loaded die more likely, so a fourth six is more likely too.
    assert law[1, 5] > 5 / 18


def test_casino_horizon_parameter() -> None:
    model = load_model("casino:horizon=20")

    assert model.horizon == 20
    assert model.model_id == "casino:horizon=20"


def test_random_hmm_parameters() -> None:
    model = load_model("random-hmm:states=5,alphabet=4,horizon=7,seed=3")

    assert isinstance(model, HMM)
    assert model.num_states == 5
    assert model.alphabet == ("0", "1", "2", "3")
    assert model.horizon == 7
    assert model.model_id == "random-hmm:states=5,alphabet=4,horizon=7,seed=3"


def test_random_hmm_defaults_and_seed() -> None:
    default = load_model("random-hmm")
    same = load_model("random-hmm:seed=0")
    other = load_model("random-hmm:seed=1")

    assert isinstance(default, HMM)
    assert isinstance(same, HMM)
    assert isinstance(other, HMM)
    assert (default.num_states, default.alphabet_size, default.horizon) == (4, 3, 8)
    assert np.array_equal(default.O, same.O)
    assert not np.allclose(default.O, other.O)


@settings(derandomize=True, deadline=None, max_examples=50)
@given(
    states=st.integers(1, 8),
    alphabet=st.integers(1, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_hmm_rows_on_simplex_with_floor(states: int, alphabet: int, seed: int) -> None:
    model = random_hmm(states, alphabet, 3, np.random.default_rng(seed))

    for rows in (model.pi[None, :], model.T, model.O):
        assert np.allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert rows.min() >= RANDOM_HMM_FLOOR / rows.shape[1] * (1 - 1e-12)


def test_rotation_clock_defaults() -> None:
    model = load_model("rotation-clock")

    assert type(model) is OperatorModel
    assert model.dimension == 3
    assert model.alphabet == ("0", "1")
    assert model.horizon == 8


def test_rotation_clock_has_rank_three(all_sequences: SequenceEnumerator) -> None:
    hankel = _hankel(rotation_clock(8), all_sequences, 3)

    assert _numerical_rank(hankel) == 3


def test_casino_hankel_rank_is_two(all_sequences: SequenceEnumerator) -> None:
    # Control for the rank test above: a 2-state HMM has rank at most 2.
    assert _numerical_rank(_hankel(casino(6), all_sequences, 3)) == 2


def test_rotation_clock_normalised(all_sequences: SequenceEnumerator) -> None:
    model = rotation_clock(10, phi=0.45)

    total = np.exp(model.log_prob(all_sequences(model))).sum()

    assert total == pytest.approx(1.0, abs=1e-12)


def test_rotation_clock_reachable_states_are_pure(rng: np.random.Generator) -> None:
    model = rotation_clock(12)
    prefixes = model.sample((), 200, rng, max_tokens=11)

    for prefix in prefixes[:, : 1 + rng.integers(11)]:
        state, _ = model.filter(prefix)
        a, b, c = state[0]
        # A pure state v v^T has trace 1 and determinant 0.
        assert a + b == pytest.approx(1.0, abs=1e-12)
        assert a * b - c * c == pytest.approx(0.0, abs=1e-12)


def test_rotation_clock_passes_path_check() -> None:
    model = rotation_clock(20, phi=0.05)

    validate_operator(model, np.random.default_rng(1), paths=1000)


def test_rotation_clock_quarter_phi_is_fair_coin() -> None:
    model = load_model(f"rotation-clock:phi={np.pi / 4!r}")

    law = model.next_token_probs([[], [0, 0, 1], [1, 1, 1, 1]])

    assert np.allclose(law, 0.5, atol=1e-12)


def test_load_model_from_path_uses_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-model.json"
    save_model_file(random_hmm(2, 2, 3, np.random.default_rng(0)), path)

    model = load_model(str(path))

    assert model.model_id == "my-model"
    assert model.horizon == 3


def test_load_model_clone_file_points_to_load_clone(tmp_path: Path) -> None:
    path = tmp_path / "stolen.json"
    path.write_text('{"format": "lowrank-steal/model", "version": 1, "kind": "clone"}')

    with pytest.raises(ModelFileError, match="attacker.clone.load_clone"):
        load_model(str(path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "gpt-5",
            (
                r"unknown model 'gpt-5': it is not a preset "
                r"\(english-words, casino, random-hmm, rotation-clock, noisy-parity\)"
            ),
        ),
        ("casino:sides=6", "unknown parameter 'sides' for preset casino; its parameters are"),
        ("english-words:horizon=3", "its parameters are none"),
        ("random-hmm:states=x", "parameter states of random-hmm must be an integer, got 'x'"),
        ("rotation-clock:phi=wide", "must be a number, got 'wide'"),
        ("casino:horizon", "parameter 'horizon' of casino has no value"),
        ("casino:horizon=3,horizon=4", "given twice"),
        ("casino:horizon=0", "horizon must be an integer >= 1, got 0"),
        ("random-hmm:states=0", "states must be an integer >= 1"),
        ("rotation-clock:theta=nan", "theta must be a finite angle"),
    ],
    ids=[
        "unknown-name", "unknown-parameter", "no-parameters", "not-integer", "not-number",
        "no-value", "repeated", "zero-horizon", "zero-states", "nan-angle",
    ],
)
def test_load_model_rejects_bad_spec(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_model(spec)


def test_parse_model_spec_typed_in_declared_order() -> None:
    name, parameters = parse_model_spec("random-hmm: seed=2, states=6")

    assert name == "random-hmm"
    assert parameters == {"states": 6, "seed": 2}
    assert list(parameters) == ["states", "seed"]


def test_parse_model_spec_float_parameter() -> None:
    _, parameters = parse_model_spec("rotation-clock:phi=0.25,horizon=4")

    assert parameters == {"horizon": 4, "phi": 0.25}
    assert isinstance(parameters["phi"], float)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("random-hmm:states=100000000", "use states <= 4,096"),
        ("random-hmm:alphabet=100000000", "use alphabet <= 65,536"),
        ("random-hmm:states=4000,alphabet=3000", "use states \\* alphabet <= 10,000,000"),
        ("noisy-parity:bits=100000", "use bits <= 1,023"),
    ],
)
def test_load_model_refuses_sizes_beyond_memory(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_model(spec)
