"""Code shared by the server and the attacker: sequence models, model files, presets, distances.

Modules
-------
shared.model
    :class:`SequenceModel`, the batched state-machine interface, with sampling, exact
    log-probabilities and next-token laws; the errors for invalid and impossible prompts.
shared.automaton
    :class:`OperatorModel` and its subclass :class:`HMM`.
shared.modelfile
    Versioned JSON model files, validated on load and saved atomically.
shared.presets
    Shipped models by name (``load_model("casino:horizon=20")``) and their builders.
shared.distances
    Total variation and Kullback-Leibler distances, exact or by Monte Carlo.
shared.protocol
    Pydantic schemas of the HTTP wire protocol.

Nothing in this package touches the network, and files are read and written only through
:mod:`shared.modelfile`.
"""

from __future__ import annotations

import logging

from shared.automaton import HMM, OperatorModel
from shared.distances import (
    DistanceReport,
    distance,
    exact_distance,
    monte_carlo_distance,
)
from shared.model import InvalidSequenceError, SequenceModel, ZeroProbabilityPromptError
from shared.modelfile import ModelFileError, load_model_file, save_model_file
from shared.presets import PRESET_NAMES, load_model

__all__ = [
    "HMM",
    "PRESET_NAMES",
    "DistanceReport",
    "InvalidSequenceError",
    "ModelFileError",
    "OperatorModel",
    "SequenceModel",
    "ZeroProbabilityPromptError",
    "distance",
    "exact_distance",
    "load_model",
    "load_model_file",
    "monte_carlo_distance",
    "save_model_file",
]

logger = logging.getLogger(__name__)
