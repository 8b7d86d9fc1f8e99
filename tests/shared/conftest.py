"""Fixtures for the shared tests: hand-sized models and a helper that enumerates ``Σ^L``.

``tiny_hmm`` starts in hidden state 0, which never emits token 2 (``"c"``), so the prompt
``[2]`` has probability zero while ``[0, 2]`` and ``[1, 2]`` are possible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from shared.automaton import HMM
from shared.model import SequenceModel

SequenceEnumerator = Callable[..., np.ndarray]


def _all_sequences(model: SequenceModel, length: int | None = None) -> np.ndarray:
    """Return every sequence of ``length`` (default ``H``) tokens in lexicographic order.

    The shape is (A^length, length).
    """
    length = model.horizon if length is None else length
    rows = itertools.product(range(model.alphabet_size), repeat=length)
    return np.array(list(rows), dtype=np.int64).reshape(model.alphabet_size**length, length)


@pytest.fixture
def all_sequences() -> SequenceEnumerator:
    """The function ``all_sequences(model, length=None)``.

    It is a fixture because, under ``--import-mode=importlib``, test modules cannot import
    conftest.
    """
    return _all_sequences


@pytest.fixture
def tiny_hmm() -> HMM:
    return HMM(
        ["a", "b", "c"],
        3,
        pi=[1.0, 0.0],
        T=[[0.5, 0.5], [0.3, 0.7]],
        O=[[0.8, 0.2, 0.0], [0.1, 0.4, 0.5]],
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)
