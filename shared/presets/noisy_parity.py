"""The noisy-parity preset: uniform random bits followed by a noisy parity of a secret subset.

Notation
--------
n : int
    Number of uniform bits (the ``bits`` parameter); the horizon is ``H = n + 1``.
J : set of int
    The secret subset of bit positions ``0 .. n-1``.
eta : float
    Noise: the last token is ``XOR_{j in J} x_j`` flipped with probability ``eta``.
S : int
    Number of hidden states, ``4 n + 2``.
pi, T, O
    Law of the first hidden state (S,), transition matrix (S, S) and emission matrix
    (S, 2) of the categorical HMM.

The process is a stationary categorical HMM whose hidden state carries the clock.  State
``(t, p, b)`` for ``t < n`` emits bit ``b`` at position ``t``, where ``p`` is the parity of
the bits of ``J`` emitted before position ``t``.  It moves to ``(t+1, p XOR [t in J] b, b')``
with ``b'`` uniform, so transitions never depend on what was emitted.  After the last bit
the chain enters ``(n, p)``, which emits ``p`` with probability ``1 - eta`` and ``1 - p``
with probability ``eta``.

Rank.  After a history ``h`` of ``t`` bits the law of the future depends on ``h`` only
through ``p``, so every Hankel matrix (histories of length ``t`` against their futures) has
rank at most 2.  It has rank exactly 2 when ``eta != 1/2`` and ``J`` contains a position
before ``t``, because then both parities occur and give different laws of the last token.
For ``t <= min J`` every history has ``p = 0`` and the rank is 1.

Hardness.  Unconditional samples are labelled examples of a parity with noise, so learning
this model from samples alone is as hard as learning parity with noise; Mossel and Roch
reduce learning noisy parities to learning HMMs this way.  A learner that can sample
completions of chosen prompts is not bound by that reduction.

References
----------
E. Mossel and S. Roch, "Learning nonsingular phylogenies and hidden Markov models",
Proceedings of the 37th ACM Symposium on Theory of Computing (STOC), 2005, 366-375.
"""

from __future__ import annotations

import logging

import numpy as np

from shared.automaton import HMM

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_NOISE",
    "NOISY_PARITY_CITATION",
    "draw_parity_subset",
    "noisy_parity",
]

logger = logging.getLogger(__name__)

DEFAULT_BITS = 24
DEFAULT_NOISE = 0.1
NOISY_PARITY_CITATION = (
    "E. Mossel and S. Roch, Learning nonsingular phylogenies and hidden Markov models, "
    "STOC 2005: learning this model from samples is as hard as learning parity with noise"
)


def draw_parity_subset(bits: int, rng: np.random.Generator) -> list[int]:
    """Draw the secret subset: each position in with probability 1/2, redrawn until non-empty.

    Parameters
    ----------
    bits : int
        ``n``, at least 1.
    rng : numpy.random.Generator

    Returns
    -------
    list of int
        Sorted positions in ``0 .. n-1``.
    """
    while True:
        mask = rng.random(bits) < 0.5
        if mask.any():
            return [int(j) for j in np.flatnonzero(mask)]


def noisy_parity(
    bits: int = DEFAULT_BITS, noise: float = DEFAULT_NOISE, rng: np.random.Generator | None = None
) -> HMM:
    """Build the noisy-parity HMM over the tokens "0" and "1".

    Parameters
    ----------
    bits : int
        ``n``, the number of uniform bits; the horizon is ``n + 1``.
    noise : float
        ``eta`` in ``[0, 1]``, the probability that the last token is the flipped parity.
    rng : numpy.random.Generator, optional
        Draws the secret subset; default ``numpy.random.default_rng(0)``.

    Returns
    -------
    HMM
        ``S = 4 n + 2`` states.  ``metadata["subset"]`` is the secret subset.

    Notes
    -----
    NOTE: the subset is a function of the seed, and the preset code is public.  Anyone who
    learns the seed can rebuild the subset, so a secret instance needs a seed that is kept
    secret.  The server publishes only the preset name, never its parameters.
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
        raise ValueError(f"bits must be an integer >= 1, got {bits!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be a probability in [0, 1], got {noise!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    subset = draw_parity_subset(int(bits), rng)
    in_subset = np.zeros(bits, dtype=bool)
    in_subset[subset] = True

    S = 4 * bits + 2
    final = 4 * bits  # index of (n, p) is final + p

    def index(t: int, p: int, b: int) -> int:
        return 4 * t + 2 * p + b

    pi = np.zeros(S)
    pi[[index(0, 0, 0), index(0, 0, 1)]] = 0.5
    T = np.zeros((S, S))
    O = np.zeros((S, 2))  # noqa: E741 - standard HMM notation
    for t in range(bits):
        for p in (0, 1):
            for b in (0, 1):
                row = index(t, p, b)
                O[row, b] = 1.0
                next_p = p ^ (b if in_subset[t] else 0)
                if t + 1 < bits:
                    T[row, [index(t + 1, next_p, 0), index(t + 1, next_p, 1)]] = 0.5
                else:
                    T[row, final + next_p] = 1.0
    for p in (0, 1):
        O[final + p, p] = 1.0 - noise
        O[final + p, 1 - p] = noise
        # The horizon ends in these states; the self-loop only keeps T row-stochastic.
        T[final + p, final + p] = 1.0

    model = HMM(["0", "1"], bits + 1, pi, T, O)
    model.metadata = {
        "source": "noisy parity",
        "citation": NOISY_PARITY_CITATION,
        "bits": int(bits),
        "noise": float(noise),
        "subset": subset,
    }
    logger.debug("built noisy parity with %d bits, noise %g and S=%d", bits, noise, S)
    return model
