"""Linear sequence models: observable operator models and categorical hidden Markov models.

Notation
--------
A : int
    Alphabet size.
H : int
    Horizon.
d : int
    Dimension of the operator model's state space.
sigma : ndarray, shape (d,)
    Initial row vector.
M : ndarray, shape (A, d, d)
    One operator per token.
tau : ndarray, shape (d,)
    Evaluation vector, with ``sum_o M[o] @ tau = tau`` and ``sigma @ tau = 1``.
S : int
    Number of hidden states of an HMM.
pi : ndarray, shape (S,)
    Law of the first hidden state.
T : ndarray, shape (S, S)
    Transition matrix, ``T[i, j] = P(s_{t+1} = j | s_t = i)``.
O : ndarray, shape (S, A)
    Emission matrix, ``O[i, o] = P(x_t = o | s_t = i)``.

An operator model gives ``P(x_1 ... x_t) = sigma M[x_1] ... M[x_t] tau`` for every ``t <= H``;
the condition on ``tau`` makes these prefix probabilities consistent.  Its rank is at most
``d``.  An HMM is the operator model with ``sigma = pi``, ``M[o] = diag(O[:, o]) T`` and
``tau = 1``; it keeps its own faster belief-state update.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from shared.model import FloatArray, IntArray, SequenceModel

__all__ = ["HMM", "OperatorModel"]

logger = logging.getLogger(__name__)


class OperatorModel(SequenceModel):
    """A stationary observable operator model (a weighted automaton with a fixed horizon).

    States are row vectors ``w`` normalised so that ``w @ tau = 1``; the next-token law is
    ``w @ M[o] @ tau``.  The caller is responsible for the parameters producing non-negative
    probabilities; :func:`shared.modelfile.validate_operator` checks what can be checked.

    Parameters
    ----------
    alphabet : sequence of str, length A
    horizon : int
        ``H``.
    sigma : array_like, shape (d,)
    M : array_like, shape (A, d, d)
    tau : array_like, shape (d,)
    """

    kind = "operator"

    def __init__(
        self,
        alphabet: Sequence[str],
        horizon: int,
        sigma: NDArray[np.floating],
        M: NDArray[np.floating],
        tau: NDArray[np.floating],
    ) -> None:
        super().__init__(alphabet, horizon)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.M = np.asarray(M, dtype=np.float64)
        self.tau = np.asarray(tau, dtype=np.float64)
        d = self.sigma.shape[0]
        if self.M.shape != (self.alphabet_size, d, d) or self.tau.shape != (d,):
            raise ValueError(
                f"operator shapes do not fit A={self.alphabet_size}, d={d}: M has shape "
                f"{self.M.shape} (expected {(self.alphabet_size, d, d)}), tau has shape "
                f"{self.tau.shape} (expected {(d,)})"
            )
        # (d, A): column o is M[o] @ tau, so a batch of next-token laws is one product.
        self._M_tau = np.einsum("aij,j->ia", self.M, self.tau)

    @property
    def dimension(self) -> int:
        """State dimension ``d``, an upper bound on the rank."""
        return int(self.sigma.shape[0])

    def start(self, n: int) -> FloatArray:
        state = self.sigma / float(self.sigma @ self.tau)
        return np.repeat(state[None, :], n, axis=0)

    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        probs = states @ self._M_tau
        # Rounding can leave -1e-17 where the exact value is 0.
        return np.clip(probs, 0.0, None)

    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        new = np.empty_like(states)
        for o in np.unique(tokens):
            rows = tokens == o
            new[rows] = states[rows] @ self.M[o]
        norm = new @ self.tau
        return new / norm[:, None]


class HMM(OperatorModel):
    """A categorical hidden Markov model with a fixed horizon.

    The state is the belief over hidden states before the next emission.

    Parameters
    ----------
    alphabet : sequence of str, length A
    horizon : int
        ``H``.
    pi : array_like, shape (S,)
    T : array_like, shape (S, S)
        Row-stochastic.
    O : array_like, shape (S, A)
        Row-stochastic.
    """

    kind = "hmm"

    def __init__(
        self,
        alphabet: Sequence[str],
        horizon: int,
        pi: NDArray[np.floating],
        T: NDArray[np.floating],
        O: NDArray[np.floating],  # noqa: E741 - standard HMM notation
    ) -> None:
        self.pi = np.asarray(pi, dtype=np.float64)
        self.T = np.asarray(T, dtype=np.float64)
        self.O = np.asarray(O, dtype=np.float64)
        S = self.pi.shape[0]
        if self.T.shape != (S, S) or self.O.ndim != 2 or self.O.shape[0] != S:
            raise ValueError(
                f"HMM shapes do not fit S={S}: T has shape {self.T.shape} (expected {(S, S)}), "
                f"O has shape {self.O.shape} (expected ({S}, A))"
            )
        M = np.einsum("ia,ij->aij", self.O, self.T)
        super().__init__(alphabet, horizon, self.pi, M, np.ones(S))
        # (A, S): row o is O[:, o], so a batch gathers contiguous rows.
        self._O_rows = np.ascontiguousarray(self.O.T)

    @property
    def num_states(self) -> int:
        """Number of hidden states ``S``."""
        return int(self.pi.shape[0])

    def token_probs(self, states: FloatArray, t: int) -> FloatArray:
        return states @ self.O

    def advance(self, states: FloatArray, t: int, tokens: IntArray) -> FloatArray:
        joint = states * self._O_rows[tokens]
        joint /= joint.sum(axis=1, keepdims=True)
        return joint @ self.T
