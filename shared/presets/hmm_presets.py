"""Builders of the hidden Markov model presets: the dishonest casino and random dense HMMs.

Notation
--------
S : int
    Number of hidden states.
A : int
    Alphabet size.
H : int
    Horizon.
pi : ndarray, shape (S,)
    Law of the first hidden state.
T : ndarray, shape (S, S)
    Transition matrix.
O : ndarray, shape (S, A)
    Emission matrix.
"""

from __future__ import annotations

import logging

import numpy as np

from shared.automaton import HMM
from shared.model import FloatArray

__all__ = ["CASINO_CITATION", "RANDOM_HMM_FLOOR", "casino", "random_hmm"]

logger = logging.getLogger(__name__)

CASINO_CITATION = (
    "R. Durbin, S. R. Eddy, A. Krogh and G. Mitchison, Biological Sequence Analysis: "
    "Probabilistic Models of Proteins and Nucleic Acids, Cambridge University Press, 1998 "
    "(the occasionally dishonest casino)"
)
# Mass mixed uniformly into every row of a random HMM, so each entry is at least
# RANDOM_HMM_FLOOR / (row length) and every sequence has positive probability.
RANDOM_HMM_FLOOR = 0.05


def casino(horizon: int = 10) -> HMM:
    """Build the occasionally dishonest casino as a 2-state HMM over the faces "1".."6".

    State 0 is the fair die (each face 1/6), state 1 the loaded die (a six with probability
    1/2, each other face 1/10).  The casino switches from fair to loaded with probability
    0.05 and from loaded to fair with probability 0.10 after each roll.

    Parameters
    ----------
    horizon : int
        ``H``, the number of rolls in a sequence; at least 1.

    Returns
    -------
    HMM
        With ``metadata`` giving the source and the initial law.

    Notes
    -----
    The example does not fix the law of the first die, so this preset assumes the
    stationary law of ``T``, ``pi = (2/3, 1/3)``: the casino has been running long before
    the sequence starts.  With it every roll has the same marginal law.
    """
    _check_positive("horizon", horizon)
    T = np.array([[0.95, 0.05], [0.10, 0.90]])
    O = np.array([[1 / 6] * 6, [0.1] * 5 + [0.5]])  # noqa: E741 - standard HMM notation
    # Stationary law: pi_fair * 0.05 = pi_loaded * 0.10.
    pi = np.array([2 / 3, 1 / 3])
    model = HMM([str(face) for face in range(1, 7)], horizon, pi, T, O)
    model.metadata = {
        "source": "occasionally dishonest casino",
        "citation": CASINO_CITATION,
        "states": ["fair", "loaded"],
        "initial_law": "stationary law of T, pi = (2/3, 1/3); the example does not fix it, "
        "and the stationary law makes every roll identically distributed",
    }
    return model


def random_hmm(states: int, alphabet: int, horizon: int, rng: np.random.Generator) -> HMM:
    """Draw a random HMM whose every entry is bounded away from zero.

    Each row of ``pi``, ``T`` and ``O`` is a draw from the flat Dirichlet law, mixed with the
    uniform row: ``row = (1 - RANDOM_HMM_FLOOR) * dirichlet + RANDOM_HMM_FLOOR / k`` for rows of
    length ``k``.  So every prompt has positive probability.

    Parameters
    ----------
    states : int
        ``S``, at least 1.
    alphabet : int
        ``A``, at least 1; tokens are labelled ``"0" .. "A-1"``.
    horizon : int
        ``H``, at least 1.
    rng : numpy.random.Generator
        Source of the parameters.

    Returns
    -------
    HMM
    """
    _check_positive("states", states)
    _check_positive("alphabet", alphabet)
    _check_positive("horizon", horizon)
    pi = _dense_rows(1, states, rng)[0]
    T = _dense_rows(states, states, rng)
    O = _dense_rows(states, alphabet, rng)  # noqa: E741 - standard HMM notation
    model = HMM([str(token) for token in range(alphabet)], horizon, pi, T, O)
    model.metadata = {
        "source": "random dense HMM",
        "construction": f"flat Dirichlet rows mixed with {RANDOM_HMM_FLOOR} uniform mass",
    }
    return model


def _dense_rows(n: int, k: int, rng: np.random.Generator) -> FloatArray:
    """Return ``n`` random probability rows of length ``k``, each entry >= floor / k."""
    rows = rng.dirichlet(np.ones(k), size=n)
    return (1.0 - RANDOM_HMM_FLOOR) * rows + RANDOM_HMM_FLOOR / k


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
