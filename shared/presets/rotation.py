"""The rotation clock: a rank-3 operator model of a measured, rotating two-level system.

Notation
--------
rho : ndarray, shape (2, 2)
    State, a real density matrix (symmetric, positive semidefinite, trace 1).
R(theta) : ndarray, shape (2, 2)
    Rotation of the plane by the angle ``theta``.
K_o : ndarray, shape (2, 2)
    Kraus operator of token ``o``: ``K_0 = R(theta) diag(cos phi, sin phi)`` and
    ``K_1 = R(theta) diag(sin phi, cos phi)``, so ``K_0^T K_0 + K_1^T K_1 = I``.
d : int
    State dimension, 3: a symmetric matrix ``[[a, c], [c, b]]`` has coordinates
    ``(a, b, c)``.
sigma, M, tau
    The operator model: ``sigma`` (3,) holds the coordinates of the initial
    ``rho_0 = diag(1, 0)``; row ``i`` of ``M[o]`` (A, 3, 3) holds the coordinates of
    ``K_o E_i K_o^T`` for the basis matrices ``E_0 = diag(1, 0)``, ``E_1 = diag(0, 1)``
    and ``E_2 = [[0, 1], [1, 0]]``; ``tau = (1, 1, 0)`` is the trace.

The process emits token ``o`` with probability ``tr(K_o rho K_o^T)`` and moves to
``K_o rho K_o^T`` divided by that probability.  The measurement pulls the state towards one
axis and the rotation turns it, so the law of the next token keeps oscillating.  With a pure
``rho_0`` every reachable state is pure, ``rho = v v^T`` for a unit vector ``v``.  These states
lie on a circle in the plane ``a + b = 1``.

Why no HMM generates the same process once the horizon is unbounded.  Suppose an HMM with
any number of hidden states did.  The map that sends a hidden-state belief to the law of the
futures it predicts carries the non-negative vectors in the span of the reachable beliefs
onto a polyhedral cone ``C`` in our 3-dimensional state space.  ``C`` contains every
reachable state, so it spans the space.  It contains no line, because ``tau`` is positive on
it, and every ``M[o]`` maps it into itself.  Let ``r e^{±i psi}`` be the eigenvalues of
``K_0``.  Then ``M[0]`` has the eigenvalues ``r^2`` and ``r^2 e^{±2i psi}``.  If ``psi / pi``
is irrational, the powers of ``M[0] / r^2`` accumulate at a whole circle group of rotations
of one plane.  Each of these maps ``C`` onto itself and so permutes the finitely many
extreme rays of ``C``.  A connected group can only permute them trivially.  But a rotation
by an angle strictly between 0 and pi has a single real eigenvector direction, so it cannot
fix three independent rays, which is a contradiction.

The horizon does not save an HMM with few states.  If an HMM with ``S`` states gives every
sequence of length ``H >= S + 2`` the same probability as this model, then both give the same
probability to every prefix of length up to ``S + 2``.  Two linear models of dimensions 3 and
``S`` that agree on all words up to that length agree on all words, because the rows
``(sigma_1 M_1[x], sigma_2 M_2[x])`` of the combined model span their final space after at most
``S + 2`` tokens.  So the HMM would generate the unbounded process, which is impossible.  With
the default ``H = 8`` this rules out every HMM with at most 6 states.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from shared.automaton import OperatorModel
from shared.model import FloatArray

__all__ = ["DEFAULT_PHI", "DEFAULT_THETA", "rotation_clock"]

logger = logging.getLogger(__name__)

DEFAULT_PHI = 0.3
# pi times the inverse golden ratio, an irrational multiple of pi.
DEFAULT_THETA = math.pi * (math.sqrt(5.0) - 1.0) / 2.0

# Symmetric 2x2 basis: rho = a E_0 + b E_1 + c E_2 has coordinates (a, b, c).
_BASIS = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])


def rotation_clock(
    horizon: int = 8, phi: float = DEFAULT_PHI, theta: float = DEFAULT_THETA
) -> OperatorModel:
    """Build the rotation clock over the tokens "0" and "1".

    Parameters
    ----------
    horizon : int
        ``H``, at least 1.
    phi : float
        Measurement angle in radians.  ``phi`` near 0 makes the measurement sharp;
        ``phi = pi/4`` makes both tokens equally likely in every state (rank 1).
    theta : float
        Rotation angle in radians.

    Returns
    -------
    OperatorModel
        ``d = 3``; rank 3 for the default angles.

    Notes
    -----
    NOTE: the argument in the module docstring needs ``psi / pi`` irrational, where ``psi``
    is the argument of an eigenvalue of ``K_0``.  For a fixed ``theta`` this holds for all but
    countably many ``phi``, but it is not proved for the default angles, for which
    ``psi / pi`` is about 0.6403.  Floating-point arithmetic cannot decide it.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    for name, value in (("phi", phi), ("theta", theta)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite angle in radians, got {value!r}")

    rotation = np.array(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    )
    c, s = math.cos(phi), math.sin(phi)
    kraus = [rotation @ np.diag([c, s]), rotation @ np.diag([s, c])]
    M = np.stack([_superoperator(K) for K in kraus])
    sigma = _coordinates(np.array([[1.0, 0.0], [0.0, 0.0]]))
    tau = np.array([1.0, 1.0, 0.0])

    model = OperatorModel(["0", "1"], horizon, sigma, M, tau)
    model.metadata = {
        "source": "rotation clock: a measured, rotating two-level system",
        "phi": phi,
        "theta": theta,
        "initial_state": "rho_0 = diag(1, 0)",
    }
    return model


def _coordinates(rho: FloatArray) -> FloatArray:
    """Return ``(a, b, c)`` for the symmetric matrix ``[[a, c], [c, b]]``."""
    return np.array([rho[0, 0], rho[1, 1], rho[0, 1]])


def _superoperator(K: FloatArray) -> FloatArray:
    """Return the (3, 3) matrix of ``rho -> K rho K^T`` acting on coordinate rows."""
    return np.stack([_coordinates(K @ E @ K.T) for E in _BASIS])
