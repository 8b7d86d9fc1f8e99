"""Versioned JSON model files: conversion, validation on load, and atomic saving.

A model file is one JSON object::

    {"format": "lowrank-steal/model", "version": 1, "kind": "hmm" | "operator",
     "alphabet": [label, ...], "horizon": H, <parameters>, "metadata": {...}}

with parameters ``"pi"``, ``"T"``, ``"O"`` for ``kind = "hmm"`` and ``"sigma"``, ``"M"``,
``"tau"`` for ``kind = "operator"``.  ``metadata`` is optional and free-form (source,
citation, fit settings); it is kept on the model as the ``metadata`` attribute and written
back unchanged.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
S : int
    Number of hidden states of an HMM; ``pi`` (S,), ``T`` (S, S), ``O`` (S, A).
d : int
    Dimension of an operator model; ``sigma`` (d,), ``M`` (A, d, d), ``tau`` (d,).

Loading checks everything that the probabilities depend on and names the offending entry.
An HMM's rows must lie on the probability simplex within ``STOCHASTIC_ATOL``; such rows are
then rescaled to sum to 1 exactly.  An operator model must satisfy ``sigma @ tau = 1`` and
``sum_o M[o] @ tau = tau`` within ``OPERATOR_ATOL``.  Non-negative probabilities of an
operator model cannot be checked exhaustively, so :func:`validate_operator` checks them along
random paths.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.atomicfile import write_text_atomic
from shared.automaton import HMM, OperatorModel
from shared.model import FloatArray, SequenceModel

__all__ = [
    "FORMAT",
    "VERSION",
    "ModelFileError",
    "load_model_file",
    "model_from_dict",
    "model_to_dict",
    "save_model_file",
    "validate_operator",
]

logger = logging.getLogger(__name__)

FORMAT = "lowrank-steal/model"
VERSION = 1
KINDS = ("hmm", "operator")
STOCHASTIC_ATOL = 1e-6
OPERATOR_ATOL = 1e-8
# A next-token probability below -NEGATIVE_ATOL is an error; above it, rounding noise.
NEGATIVE_ATOL = 1e-9
VALIDATION_PATHS = 256
VALIDATION_SEED = 0

_PARAMETERS = {"hmm": ("pi", "T", "O"), "operator": ("sigma", "M", "tau")}
_COMMON_KEYS = ("format", "version", "kind", "alphabet", "horizon", "metadata")


class ModelFileError(ValueError):
    """A model file or model dictionary that is malformed or describes an invalid model."""


# -- conversion ----------------------------------------------------------------------------


def model_to_dict(model: SequenceModel) -> dict[str, Any]:
    """Convert an HMM or operator model to the JSON-ready dictionary of a model file.

    Parameters
    ----------
    model : HMM or OperatorModel
        Its ``metadata`` attribute, if present, is copied into ``"metadata"``.

    Returns
    -------
    dict
        Plain lists, ints, floats and strings only.

    Raises
    ------
    ModelFileError
        If the model is of another class, such as an attacker's clone.
    """
    if isinstance(model, HMM):
        parameters = {"pi": model.pi.tolist(), "T": model.T.tolist(), "O": model.O.tolist()}
    elif isinstance(model, OperatorModel):
        parameters = {
            "sigma": model.sigma.tolist(),
            "M": model.M.tolist(),
            "tau": model.tau.tolist(),
        }
    else:
        raise ModelFileError(
            f"cannot write a {type(model).__name__} as a model file, only HMM and "
            "OperatorModel; save a clone with its own save() method"
        )
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kind": model.kind,
        "alphabet": list(model.alphabet),
        "horizon": model.horizon,
        **parameters,
    }
    metadata = getattr(model, "metadata", None)
    if metadata:
        data["metadata"] = dict(metadata)
    return data


def model_from_dict(data: Any) -> OperatorModel:
    """Validate the dictionary of a model file and build its model.

    Parameters
    ----------
    data : dict
        As produced by :func:`model_to_dict` or parsed from a model file.

    Returns
    -------
    HMM or OperatorModel
        With a ``metadata`` attribute (an empty dict if the file has none).

    Raises
    ------
    ModelFileError
        If a field is missing, unknown, or of the wrong type or shape, or if the parameters
        do not define a probability distribution.  The message names the entry and the fix.
    """
    kind = _check_header(data)
    alphabet = _check_alphabet(data["alphabet"])
    horizon = _check_horizon(data["horizon"])
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ModelFileError(
            f"metadata must be a JSON object, got {type(metadata).__name__}; "
            "write it as {\"key\": value, ...} or leave it out"
        )

    model: OperatorModel
    if kind == "hmm":
        pi, T, O = _check_hmm(data, len(alphabet))  # noqa: E741 - standard HMM notation
        model = HMM(alphabet, horizon, pi, T, O)
    else:
        sigma, M, tau = _check_operator_arrays(data, len(alphabet))
        model = OperatorModel(alphabet, horizon, sigma, M, tau)
        validate_operator(model, np.random.default_rng(VALIDATION_SEED))
    model.metadata = dict(metadata)
    return model


# -- files ---------------------------------------------------------------------------------


def load_model_file(path: str | os.PathLike[str]) -> SequenceModel:
    """Read, validate and build the model stored at ``path``.

    Raises
    ------
    OSError
        If the file cannot be read.
    ModelFileError
        If it is not valid JSON or not a valid model file; the message starts with the path.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from err
    try:
        model = model_from_dict(data)
    except ModelFileError as err:
        raise ModelFileError(f"{path}: {err}") from err
    logger.info("loaded %s model from %s (A=%d, H=%d)", model.kind, path, model.alphabet_size,
                model.horizon)
    return model


def save_model_file(
    model: SequenceModel,
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` to ``path`` atomically.

    The JSON is written to a temporary file in the same folder, flushed to disk and then
    renamed over ``path`` with :func:`os.replace`, so readers see the old file or the new one,
    never a partial one.  The model is validated first, so a file that would not load is never
    written.

    Parameters
    ----------
    model : HMM or OperatorModel
    path : path-like
        Destination; its folder must exist.
    metadata : mapping, optional
        Replaces the model's own ``metadata`` attribute in the file.

    Raises
    ------
    ModelFileError
        If the model cannot be stored or is invalid.
    TypeError, ValueError
        If the metadata is not JSON-serialisable (for example a set, or a NaN float).
    """
    path = Path(path)
    data = model_to_dict(model)
    if metadata is not None:
        data["metadata"] = dict(metadata)
    model_from_dict(data)
    text = _format_json(data) + "\n"

    write_text_atomic(path, text)
    logger.info("saved %s model to %s", data["kind"], path)


def _format_json(data: Mapping[str, Any]) -> str:
    """Serialise a model dictionary with one top-level field, and one matrix row, per line."""
    fields = [f" {json.dumps(key)}: {_format_value(value, '  ')}" for key, value in data.items()]
    return "{\n" + ",\n".join(fields) + "\n}"


def _format_value(value: Any, indent: str) -> str:
    if isinstance(value, list) and value and all(isinstance(item, list) for item in value):
        rows = [indent + _format_value(item, indent + " ") for item in value]
        return "[\n" + ",\n".join(rows) + "\n" + indent[:-1] + "]"
    if isinstance(value, dict) and value:
        return json.dumps(value, indent=1, allow_nan=False).replace("\n", "\n" + indent[:-1])
    return json.dumps(value, allow_nan=False)


# -- validation ----------------------------------------------------------------------------


def validate_operator(
    model: OperatorModel, rng: np.random.Generator, paths: int = VALIDATION_PATHS
) -> None:
    """Check that an operator model gives non-negative next-token probabilities.

    Operator models can assign negative "probabilities" to some sequences, and no finite test
    rules that out.  This walks ``paths`` random paths of length ``H`` and checks every
    next-token law on the way.  Each path picks its next token uniformly among the tokens of
    positive probability, which visits rare branches more often than sampling from the model.

    Parameters
    ----------
    model : OperatorModel
    rng : numpy.random.Generator
        Chooses the paths; a fixed seed makes the check reproducible.
    paths : int
        Number of paths.

    Raises
    ------
    ModelFileError
        Naming the first path prefix and token whose probability is below ``-NEGATIVE_ATOL``.
    """
    # The model's own token_probs clips negative values, so recompute them unclipped.
    M_tau = np.einsum("aij,j->ia", model.M, model.tau)
    states = model.start(paths)
    prefixes = np.empty((paths, 0), dtype=np.int64)
    for t in range(model.horizon):
        probs = states @ M_tau
        bad_rows, bad_tokens = np.nonzero(probs < -NEGATIVE_ATOL)
        if bad_rows.size:
            row, token = int(bad_rows[0]), int(bad_tokens[0])
            raise ModelFileError(
                f"operator model gives token {token} probability {probs[row, token]:.3g} after "
                f"the prefix {prefixes[row].tolist()}; a valid model has non-negative "
                "probabilities, so fix M or sigma"
            )
        tokens = _uniform_positive_choice(probs, rng)
        prefixes = np.column_stack([prefixes, tokens])
        if t + 1 < model.horizon:
            states = model.advance(states, t, tokens)


def _uniform_positive_choice(probs: FloatArray, rng: np.random.Generator) -> NDArray[np.int64]:
    """Pick, for each row of ``probs`` (shape (n, A)), a uniform token among its positive ones."""
    positive = probs > 0
    keys = np.where(positive, rng.random(probs.shape), -1.0)
    tokens: NDArray[np.int64] = np.argmax(keys, axis=1).astype(np.int64)
    return tokens


def _check_header(data: Any) -> str:
    """Check format, version, kind and the set of keys; return the kind."""
    if not isinstance(data, dict):
        raise ModelFileError(f"a model file must be a JSON object, got {type(data).__name__}")

    if data.get("format") != FORMAT:
        raise ModelFileError(
            f"format is {data.get('format')!r} but must be {FORMAT!r}; this is not a "
            "lowrank-steal model file"
        )
    version = data.get("version")
    if type(version) is not int or version != VERSION:
        raise ModelFileError(
            f"version is {version!r} but this program reads version {VERSION}; convert the "
            "file or upgrade lowrank-steal"
        )

    kind = data.get("kind")
    if kind == "clone":
        raise ModelFileError(
            "this file stores an attacker's clone, not a model; load it with "
            "attacker.clone.load_clone"
        )
    if kind not in KINDS:
        raise ModelFileError(f"kind is {kind!r} but must be one of {', '.join(KINDS)}")

    allowed = set(_COMMON_KEYS) | set(_PARAMETERS[kind])
    missing = [key for key in ("alphabet", "horizon", *_PARAMETERS[kind]) if key not in data]
    if missing:
        raise ModelFileError(
            f"missing fields {', '.join(missing)}, which a model of kind {kind!r} needs"
        )
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ModelFileError(
            f"unknown fields {', '.join(unknown)} for kind {kind!r}; allowed fields are "
            f"{', '.join(sorted(allowed))} (put extra information under metadata)"
        )
    return str(kind)


def _check_alphabet(alphabet: Any) -> list[str]:
    if not isinstance(alphabet, list) or not alphabet:
        raise ModelFileError(
            f"alphabet must be a non-empty list of token labels, got {alphabet!r}"
        )
    for i, label in enumerate(alphabet):
        if not isinstance(label, str):
            raise ModelFileError(f"alphabet entry {i} is {label!r}; labels must be strings")
    seen: dict[str, int] = {}
    for i, label in enumerate(alphabet):
        if label in seen:
            raise ModelFileError(
                f"alphabet entries {seen[label]} and {i} are both {label!r}; labels must be "
                "unique"
            )
        seen[label] = i
    return list(alphabet)


def _check_horizon(horizon: Any) -> int:
    if type(horizon) is not int or horizon < 1:
        raise ModelFileError(f"horizon is {horizon!r} but must be an integer >= 1")
    return horizon


def _as_array(data: Mapping[str, Any], key: str, shape: tuple[int | None, ...]) -> FloatArray:
    """Convert ``data[key]`` to a finite float array of ``shape`` (None matches any size)."""
    try:
        array = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ModelFileError(
            f"{key} must be a nested list of numbers with shape {_shape_text(shape)}: {err}"
        ) from err
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape)
    ):
        raise ModelFileError(
            f"{key} has shape {array.shape} but must have shape {_shape_text(shape)}"
        )
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise ModelFileError(f"{key}{list(index)} is {array[index]}; every entry must be finite")
    return array


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if n is None else str(n) for n in shape) + ")"


def _check_hmm(data: Mapping[str, Any], A: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return ``pi``, ``T``, ``O`` after checking shapes, signs and row sums."""
    pi = _as_array(data, "pi", (None,))
    S = pi.shape[0]
    if S < 1:
        raise ModelFileError("pi is empty; an HMM needs at least one state")
    T = _as_array(data, "T", (S, S))
    O = _as_array(data, "O", (S, A))  # noqa: E741 - standard HMM notation
    for name, rows in (("pi", pi[None, :]), ("T", T), ("O", O)):
        _check_stochastic_rows(name, rows, is_vector=name == "pi")
    return _normalise(pi), _normalise(T), _normalise(O)


def _check_stochastic_rows(name: str, rows: FloatArray, is_vector: bool) -> None:
    negative = np.argwhere(rows < 0)
    if negative.size:
        i, j = (int(k) for k in negative[0])
        where = f"{name}[{j}]" if is_vector else f"{name}[{i}][{j}]"
        raise ModelFileError(
            f"{where} is {rows[i, j]:.6g}; probabilities must be non-negative"
        )
    sums = rows.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > STOCHASTIC_ATOL)
    if bad.size:
        i = int(bad[0])
        subject = name if is_vector else f"{name} row {i}"
        raise ModelFileError(
            f"{subject} sums to {sums[i]:.9g}, expected 1 within {STOCHASTIC_ATOL:g}; "
            "normalise it"
        )


def _normalise(array: FloatArray) -> FloatArray:
    """Rescale rows that are within tolerance of the simplex to sum to 1 exactly."""
    normalised: FloatArray = array / array.sum(axis=-1, keepdims=True)
    return normalised


def _check_operator_arrays(
    data: Mapping[str, Any], A: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return ``sigma``, ``M``, ``tau`` after checking shapes and the normalisation identities."""
    sigma = _as_array(data, "sigma", (None,))
    d = sigma.shape[0]
    if d < 1:
        raise ModelFileError("sigma is empty; an operator model needs dimension d >= 1")
    M = _as_array(data, "M", (A, d, d))
    tau = _as_array(data, "tau", (d,))

    total = float(sigma @ tau)
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=OPERATOR_ATOL):
        raise ModelFileError(
            f"sigma @ tau is {total:.12g}, expected 1 within {OPERATOR_ATOL:g}; rescale sigma"
        )
    residual = M.sum(axis=0) @ tau - tau
    bad = np.flatnonzero(np.abs(residual) > OPERATOR_ATOL)
    if bad.size:
        i = int(bad[0])
        raise ModelFileError(
            f"(sum_o M[o] @ tau)[{i}] differs from tau[{i}] = {tau[i]:.12g} by "
            f"{residual[i]:.3g}, more than {OPERATOR_ATOL:g}; the operators must conserve "
            "total probability, so fix M or tau"
        )
    return sigma, M, tau
