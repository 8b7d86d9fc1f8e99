"""Fit the english-words preset: an 8-state categorical HMM over 6-letter English word shapes.

Run ``python -m shared.presets.fit_english_words --out shared/presets/english-words.json``.
It needs the optional ``fit`` extra (``hmmlearn`` and ``wordfreq``); loading the preset does
not.

Notation
--------
S : int
    Number of hidden states, 8.
A : int
    Alphabet size, 27: ``a``..``z`` are tokens 0..25 and ``_`` (end-of-word padding) is 26.
H : int
    Horizon, 6: each word is cut to its first 6 letters or padded with ``_`` to 6.

Procedure: take the ``--vocabulary`` most frequent English words of ``wordfreq`` that consist
of ASCII lowercase letters only, and draw ``--words`` of them independently with probability
proportional to their frequency.  Each word becomes one sequence of ``H`` tokens that starts
from ``pi``, which is exactly how the preset generates sequences.  EM (hmmlearn's
``CategoricalHMM``) runs from ``--restarts`` random starts on the first ``--restart-words``
draws, and the start with the best log-likelihood is refined on all draws.  Finally every row
of ``pi``, ``T`` and ``O`` is mixed with ``--smoothing`` uniform mass, so every prompt has
positive probability (the server rejects prompts of probability zero).

hmmlearn's EM handles one sequence per call, so an iteration costs about 11 microseconds per
word (hmmlearn 0.3.3 with the "scaling" implementation, 2.1 s per iteration on 200,000 words,
on the 2-core development machine).  That is why the restarts run on a subsample.  The
default settings took 2 min 40 s on that machine, with every EM run stopped by its
iteration limit.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.automaton import HMM
from shared.model import FloatArray, IntArray
from shared.modelfile import save_model_file

try:
    import wordfreq
    from hmmlearn.hmm import CategoricalHMM  # type: ignore[import-untyped]
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fitting the english-words preset needs hmmlearn and wordfreq; install them with "
        "pip install 'lowrank-steal[fit]'"
    ) from err

__all__ = ["ALPHABET", "HORIZON", "NUM_STATES", "draw_words", "encode_word", "fit", "main"]

logger = logging.getLogger(__name__)

ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz") + ("_",)
PAD = len(ALPHABET) - 1
HORIZON = 6
NUM_STATES = 8
_WORD = re.compile(r"[a-z]+")


def encode_word(word: str) -> list[int]:
    """Return the ``H`` token ids of ``word``, cut to ``H`` letters or padded with ``_``."""
    tokens = [ord(letter) - ord("a") for letter in word[:HORIZON]]
    return tokens + [PAD] * (HORIZON - len(tokens))


def draw_words(
    vocabulary: int, n: int, rng: np.random.Generator
) -> tuple[IntArray, int]:
    """Draw ``n`` English words by frequency and encode them.

    Parameters
    ----------
    vocabulary : int
        How many of wordfreq's most frequent English words to consider; those with a
        character outside ``a``..``z`` are dropped.
    n : int
        Number of draws.
    rng : numpy.random.Generator

    Returns
    -------
    sequences : ndarray of int64, shape (n, H)
    candidates : int
        Number of distinct words that could be drawn.
    """
    words = [word for word in wordfreq.top_n_list("en", vocabulary) if _WORD.fullmatch(word)]
    frequencies = np.array([wordfreq.word_frequency(word, "en") for word in words])
    table = np.array([encode_word(word) for word in words], dtype=np.int64)
    draws = rng.choice(len(words), size=n, p=frequencies / frequencies.sum())
    return table[draws], len(words)


def _new_hmm(iterations: int, tol: float, random_state: int, init_params: str) -> Any:
    # hmmlearn builds its convergence monitor in the constructor, so n_iter and tol must be
    # given here; changing them on a fitted model has no effect.
    return CategoricalHMM(
        n_components=NUM_STATES,
        n_features=len(ALPHABET),
        implementation="scaling",
        n_iter=iterations,
        tol=tol,
        random_state=random_state,
        init_params=init_params,
    )


def _fit_em(sequences: IntArray, model: Any) -> float:
    """Run EM on ``sequences`` (shape (n, H)); return the log-likelihood per word in nats."""
    lengths = np.full(sequences.shape[0], HORIZON)
    started = time.perf_counter()
    model.fit(sequences.reshape(-1, 1), lengths)
    per_word: float = float(model.score(sequences.reshape(-1, 1), lengths)) / len(sequences)
    logger.info(
        "EM on %d words: log-likelihood %.4f nats per word after %d iterations, converged=%s "
        "(%.0f s)", sequences.shape[0], per_word, model.monitor_.iter, _converged(model),
        time.perf_counter() - started,
    )
    return per_word


def _converged(model: Any) -> bool:
    # hmmlearn's monitor_.converged is also true when EM merely hit n_iter.
    history = model.monitor_.history
    return len(history) >= 2 and bool(history[-1] - history[-2] < model.monitor_.tol)


def fit(
    sequences: IntArray,
    rng: np.random.Generator,
    restarts: int,
    restart_words: int,
    restart_iterations: int,
    refine_iterations: int,
    tolerance: float,
) -> tuple[Any, dict[str, Any]]:
    """Fit the HMM by EM with restarts on a subsample and refinement on all sequences.

    EM stops when an iteration gains less than ``tolerance`` nats per word, or at the
    iteration limit.

    Returns
    -------
    model : hmmlearn.hmm.CategoricalHMM
    report : dict
        Per-word log-likelihoods in nats of each restart and of the refined model.
    """
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    subsample = sequences[:restart_words]
    candidates = []
    for _ in range(restarts):
        candidate = _new_hmm(
            restart_iterations, tolerance * len(subsample), int(rng.integers(2**31)), "ste"
        )
        candidates.append((_fit_em(subsample, candidate), candidate))
    best = max(candidates, key=lambda pair: pair[0])[1]

    # Continue from the best start: copy its parameters instead of initialising anew.
    model = _new_hmm(refine_iterations, tolerance * len(sequences), 0, "")
    model.startprob_ = best.startprob_
    model.transmat_ = best.transmat_
    model.emissionprob_ = best.emissionprob_
    per_word = _fit_em(sequences, model)
    report = {
        "restart_log_likelihood_per_word": [score for score, _ in candidates],
        "em_log_likelihood_per_word": per_word,
        "em_iterations": int(model.monitor_.iter),
        "em_converged": _converged(model),
    }
    return model, report


def smooth(rows: FloatArray, mass: float) -> FloatArray:
    """Mix each probability row (last axis) with ``mass`` of the uniform law."""
    smoothed: FloatArray = (1.0 - mass) * rows + mass / rows.shape[-1]
    return smoothed


def main(argv: Sequence[str] | None = None) -> None:
    """Fit the preset and write the model file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--vocabulary", type=int, default=50_000,
                        help="number of most frequent English words to draw from")
    parser.add_argument("--words", type=int, default=200_000, help="training words drawn")
    parser.add_argument("--restarts", type=int, default=4, help="EM random starts")
    parser.add_argument("--restart-words", type=int, default=20_000,
                        help="draws used by each restart")
    parser.add_argument("--restart-iterations", type=int, default=100,
                        help="EM iterations per restart")
    parser.add_argument("--refine-iterations", type=int, default=30,
                        help="EM iterations of the best start on all draws")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="EM stops when an iteration gains less (nats per word)")
    parser.add_argument("--smoothing", type=float, default=1e-4,
                        help="uniform probability mass mixed into every row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    rng = np.random.default_rng(args.seed)
    sequences, candidates = draw_words(args.vocabulary, args.words, rng)
    logger.info("drew %d words from %d distinct candidates", len(sequences), candidates)
    fitted, report = fit(sequences, rng, args.restarts, args.restart_words,
                         args.restart_iterations, args.refine_iterations, args.tolerance)

    model = HMM(
        ALPHABET,
        HORIZON,
        smooth(fitted.startprob_, args.smoothing),
        smooth(fitted.transmat_, args.smoothing),
        smooth(fitted.emissionprob_, args.smoothing),
    )
    log_likelihood = float(model.log_prob(sequences).sum())
    metadata = {
        "source": "English words drawn by frequency from the 'en' list of wordfreq, "
        f"cut or padded with '_' to {HORIZON} letters, fitted by EM",
        "wordfreq_version": importlib.metadata.version("wordfreq"),
        "hmmlearn_version": importlib.metadata.version("hmmlearn"),
        "numpy_version": np.__version__,
        "seed": args.seed,
        "vocabulary": args.vocabulary,
        "distinct_candidate_words": candidates,
        "training_words": len(sequences),
        "restarts": args.restarts,
        "restart_words": args.restart_words,
        "restart_iterations": args.restart_iterations,
        "refine_iterations": args.refine_iterations,
        "tolerance_per_word": args.tolerance,
        "smoothing": args.smoothing,
        **report,
        "log_likelihood": log_likelihood,
        "log_likelihood_per_word": log_likelihood / len(sequences),
    }
    save_model_file(model, args.out, metadata=metadata)
    print(f"wrote {args.out}: log-likelihood {log_likelihood / len(sequences):.4f} nats per word")


if __name__ == "__main__":
    main()
