"""Model files of the baselines: HMM files for EM, and three kinds of their own.

An EM baseline is an HMM and is saved as an ordinary model file of kind ``"hmm"`` (see
:mod:`shared.modelfile`), which the server can even host.  The other baselines are not
HMMs or operator models, so they have their own kinds in the same envelope::

    {"format": "lowrank-steal/model", "version": 1, "kind": "spectral" | "empirical" | "ngram",
     "alphabet": [label, ...], "horizon": H, "parameters": {...}, "metadata": {...}}

:func:`attacker.clone.load_any_model` reads all of them, so ``lowrank-attack evaluate``
scores a baseline like any clone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.atomicfile import write_text_atomic
from attacker.baselines.empirical import EmpiricalModel
from attacker.baselines.ngram import NgramModel
from attacker.baselines.spectral import SpectralModel
from shared.automaton import HMM
from shared.model import SequenceModel
from shared.modelfile import save_model_file

__all__ = [
    "BASELINE_KINDS",
    "BaselineFileError",
    "baseline_from_dict",
    "baseline_to_dict",
    "save_baseline",
]

logger = logging.getLogger(__name__)

FILE_FORMAT = "lowrank-steal/model"
FILE_VERSION = 1
_MODEL_CLASSES: dict[str, type[EmpiricalModel | NgramModel | SpectralModel]] = {
    "empirical": EmpiricalModel,
    "ngram": NgramModel,
    "spectral": SpectralModel,
}
BASELINE_KINDS: tuple[str, ...] = tuple(_MODEL_CLASSES)
_KEYS = {"format", "version", "kind", "alphabet", "horizon", "parameters", "metadata"}


class BaselineFileError(ValueError):
    """A baseline file that is malformed or describes an invalid model."""


def baseline_to_dict(
    model: EmpiricalModel | NgramModel | SpectralModel, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the JSON-ready dictionary of a spectral, empirical or n-gram model file."""
    return {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "kind": model.kind,
        "alphabet": list(model.alphabet),
        "horizon": model.horizon,
        "parameters": model.parameters(),
        "metadata": dict(model.metadata if metadata is None else metadata),
    }


def baseline_from_dict(data: Any) -> SequenceModel:
    """Validate a baseline file's dictionary and build its model.

    Raises
    ------
    BaselineFileError
        If the envelope or the parameters are invalid; the message names the field.
    """
    if not isinstance(data, dict):
        raise BaselineFileError(f"a baseline file must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _MODEL_CLASSES:
        raise BaselineFileError(f"kind is {kind!r} but must be one of {', '.join(BASELINE_KINDS)}")
    if data.get("format") != FILE_FORMAT or data.get("version") != FILE_VERSION:
        raise BaselineFileError(
            f"format {data.get('format')!r} version {data.get('version')!r} is not "
            f"{FILE_FORMAT!r} version {FILE_VERSION}; this file was not written by this program"
        )
    missing = sorted({"alphabet", "horizon", "parameters"} - set(data))
    unknown = sorted(set(data) - _KEYS)
    if missing or unknown:
        raise BaselineFileError(
            f"a {kind} file has missing fields {missing} and unknown fields {unknown}; "
            f"the fields are {', '.join(sorted(_KEYS))}"
        )
    alphabet, horizon = data["alphabet"], data["horizon"]
    if not isinstance(alphabet, list) or not all(isinstance(label, str) for label in alphabet):
        raise BaselineFileError(f"alphabet must be a list of strings, got {alphabet!r}")
    if type(horizon) is not int or horizon < 1:
        raise BaselineFileError(f"horizon is {horizon!r} but must be an integer >= 1")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BaselineFileError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    try:
        model = _MODEL_CLASSES[kind].from_parameters(alphabet, horizon, data["parameters"])
    except (KeyError, TypeError, ValueError) as err:
        raise BaselineFileError(f"invalid {kind} parameters: {err!r}") from err
    if model.horizon != horizon:
        raise BaselineFileError(
            f"the parameters give horizon {model.horizon} but the horizon field is {horizon}; "
            "make them agree"
        )
    model.metadata = dict(metadata)
    return model


def save_baseline(
    model: SequenceModel, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None
) -> None:
    """Write a baseline model to ``path`` atomically (temporary file, then rename).

    An :class:`~shared.automaton.HMM` becomes a model file of kind ``"hmm"``; a spectral,
    empirical or n-gram model becomes a file of its own kind.

    Raises
    ------
    TypeError
        If ``model`` is of another class.
    """
    path = Path(path)
    if isinstance(model, HMM):
        save_model_file(model, path, metadata)
        return
    if not isinstance(model, (EmpiricalModel, NgramModel, SpectralModel)):
        raise TypeError(
            f"cannot save a {type(model).__name__} as a baseline; expected an HMM or a "
            "spectral, empirical or n-gram model"
        )
    data = baseline_to_dict(model, metadata)
    text = json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n"
    # Parse what will be written, so a file that would not load is never written.
    baseline_from_dict(json.loads(text))

    write_text_atomic(path, text)
    logger.info("saved %s baseline to %s", model.kind, path)
