"""Shipped secret models, looked up by name, by name with parameters, or by model file path.

``load_model`` accepts:

* a preset name: ``"english-words"``, ``"casino"``, ``"random-hmm"``, ``"rotation-clock"``,
  ``"noisy-parity"``;
* a preset name with parameters: ``"random-hmm:states=4,alphabet=3,horizon=8,seed=0"``,
  ``"casino:horizon=20"``, ``"rotation-clock:horizon=8,phi=0.3"``,
  ``"noisy-parity:bits=24,noise=0.1,seed=0"``; omitted parameters take their defaults;
* the path of a model file (see :mod:`shared.modelfile`).

Presets
-------
english-words
    Categorical HMM with 8 states over ``a``..``z`` and ``_`` (end-of-word padding), horizon 6,
    fitted by EM to English words drawn by frequency.  It is stored in ``english-words.json``,
    which ``python -m shared.presets.fit_english_words`` rebuilds.
casino
    The occasionally dishonest casino, a 2-state HMM over the faces ``1``..``6``.
random-hmm
    A random HMM with every entry bounded away from zero.
rotation-clock
    A rank-3 operator model that no HMM with at most ``H - 2`` states generates.
noisy-parity
    ``bits`` uniform bits, then the parity of a secret subset of them flipped with
    probability ``noise``: a rank-2 HMM with ``4 bits + 2`` states that is as hard to learn
    from samples alone as parity with noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from shared.model import SequenceModel
from shared.modelfile import load_model_file
from shared.presets.hmm_presets import casino, random_hmm
from shared.presets.noisy_parity import DEFAULT_BITS, DEFAULT_NOISE, noisy_parity
from shared.presets.rotation import DEFAULT_PHI, DEFAULT_THETA, rotation_clock

__all__ = [
    "PRESET_NAMES",
    "casino",
    "load_model",
    "noisy_parity",
    "parse_model_spec",
    "random_hmm",
    "rotation_clock",
]

logger = logging.getLogger(__name__)

ParameterValue = int | float
_Builder = Callable[[Mapping[str, ParameterValue]], SequenceModel]


def _load_english_words(parameters: Mapping[str, ParameterValue]) -> SequenceModel:
    resource = resources.files(__name__).joinpath("english-words.json")
    with resources.as_file(resource) as path:
        return load_model_file(path)


def _build_casino(parameters: Mapping[str, ParameterValue]) -> SequenceModel:
    return casino(int(parameters["horizon"]))


def _check_size(name: str, value: int, largest: int) -> None:
    """Refuse a size parameter whose model would not fit in memory."""
    if value > largest:
        raise ValueError(
            f"{name}={value} is too large: the model would not fit in memory; use {name} <= {largest:,}"
        )


def _build_random_hmm(parameters: Mapping[str, ParameterValue]) -> SequenceModel:
    _check_size("states", int(parameters["states"]), MAX_STATES)
    _check_size("alphabet", int(parameters["alphabet"]), MAX_ALPHABET)
    _check_size("states * alphabet", int(parameters["states"]) * int(parameters["alphabet"]), MAX_EMISSIONS)
    rng = np.random.default_rng(int(parameters["seed"]))
    return random_hmm(
        int(parameters["states"]), int(parameters["alphabet"]), int(parameters["horizon"]), rng
    )


def _build_rotation_clock(parameters: Mapping[str, ParameterValue]) -> SequenceModel:
    return rotation_clock(
        int(parameters["horizon"]), float(parameters["phi"]), float(parameters["theta"])
    )


def _build_noisy_parity(parameters: Mapping[str, ParameterValue]) -> SequenceModel:
    _check_size("bits", int(parameters["bits"]), (MAX_STATES - 2) // 4)
    rng = np.random.default_rng(int(parameters["seed"]))
    return noisy_parity(int(parameters["bits"]), float(parameters["noise"]), rng)


# Size limits of the built presets: T alone has MAX_STATES^2 entries (128 MiB of float64).
MAX_STATES = 4096
MAX_ALPHABET = 65_536
MAX_EMISSIONS = 10_000_000

# name -> (builder, default of each parameter; the default's type is the parameter's type)
_PRESETS: dict[str, tuple[_Builder, dict[str, ParameterValue]]] = {
    "english-words": (_load_english_words, {}),
    "casino": (_build_casino, {"horizon": 10}),
    "random-hmm": (
        _build_random_hmm,
        {"states": 4, "alphabet": 3, "horizon": 8, "seed": 0},
    ),
    "rotation-clock": (
        _build_rotation_clock,
        {"horizon": 8, "phi": DEFAULT_PHI, "theta": DEFAULT_THETA},
    ),
    "noisy-parity": (
        _build_noisy_parity,
        {"bits": DEFAULT_BITS, "noise": DEFAULT_NOISE, "seed": 0},
    ),
}
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def load_model(name_or_path: str) -> SequenceModel:
    """Build a preset or load a model file, and set its ``model_id`` attribute.

    Parameters
    ----------
    name_or_path : str
        A preset name, optionally with parameters after a colon, or a model file path.

    Returns
    -------
    SequenceModel
        ``model_id`` is the preset name with the parameters given (not the defaults), or the
        file name without its extension.

    Raises
    ------
    ValueError
        If the string is neither a preset nor an existing file, or a parameter is unknown
        or malformed.
    shared.modelfile.ModelFileError
        If the file is not a valid model file.
    """
    name, _, _ = name_or_path.partition(":")
    if name in _PRESETS:
        name, requested = parse_model_spec(name_or_path)
        builder, defaults = _PRESETS[name]
        model = builder({**defaults, **requested})
        model_id = name
        if requested:
            model_id += ":" + ",".join(f"{key}={value!r}" for key, value in requested.items())
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(
                f"unknown model {name_or_path!r}: it is not a preset "
                f"({', '.join(PRESET_NAMES)}) and no file exists at that path"
            )
        model = load_model_file(path)
        model_id = path.stem
    model.model_id = model_id
    logger.info("loaded model %s (A=%d, H=%d)", model_id, model.alphabet_size, model.horizon)
    return model


def parse_model_spec(spec: str) -> tuple[str, dict[str, ParameterValue]]:
    """Split ``"name:key=value,..."`` into the preset name and its typed parameters.

    Parameters are returned in the preset's declared order, converted to the type of their
    default.

    Raises
    ------
    ValueError
        If the preset is unknown, or a parameter is unknown, repeated or not a number.
    """
    name, _, text = spec.partition(":")
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {', '.join(PRESET_NAMES)}")
    defaults = _PRESETS[name][1]
    requested: dict[str, ParameterValue] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise ValueError(f"parameter {item!r} of {name} has no value; write {item}=VALUE")
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(
                f"unknown parameter {key!r} for preset {name}; its parameters are {allowed}"
            )
        if key in requested:
            raise ValueError(f"parameter {key!r} of {name} is given twice; give it once")
        requested[key] = _convert(name, key, value, type(defaults[key]))
    return name, {key: requested[key] for key in defaults if key in requested}


def _convert(name: str, key: str, value: str, kind: type) -> ParameterValue:
    try:
        return int(value) if kind is int else float(value)
    except ValueError as err:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"parameter {key} of {name} must be {expected}, got {value!r}") from err
