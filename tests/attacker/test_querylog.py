"""Tests of the query log: writing, replaying, torn lines, header checks and resumed attacks.

Most tests wrap an :class:`InProcessOracle` over the hand-sized HMM of ``conftest.py``.  Its
ledger counts the calls that reach it, so a replay that sends nothing leaves it at zero.
The resumed-attack test runs the learner over HTTP against a real uvicorn server, because
only the HTTP oracle derives its sampling seeds from the call index.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from attacker.client import HttpOracle
from attacker.learner import LearnerSettings, learn
from attacker.oracle import BudgetExceededError, Completions, InProcessOracle
from attacker.querylog import LOG_FORMAT, LoggedOracle, QueryLogError
from shared.automaton import HMM
from shared.presets import load_model

SETTINGS = {"rank": 2, "C": 2.0}


def _inner(hmm: HMM, budget: int | None = 10_000, seed: int = 0) -> InProcessOracle:
    return InProcessOracle(hmm, np.random.default_rng(seed), budget=budget, probabilities=True)


def _logged(inner: InProcessOracle, path: Path, resume: bool = False, **header) -> LoggedOracle:
    fields = {"url": "in-process", "model_id": "test-hmm", "settings": SETTINGS, "seed": 0}
    fields.update(header)
    return LoggedOracle(inner, path, resume, **fields)


def _record_three_calls(hmm: HMM, path: Path) -> tuple[list, LoggedOracle]:
    """Log two sample calls in two phases and one law call; return the responses."""
    with _logged(_inner(hmm), path) as oracle:
        with oracle.ledger.in_phase("candidates"):
            first = oracle.complete([[], [0]], 50, 3)
        with oracle.ledger.in_phase("next-token tables"):
            second = oracle.complete([[1]], 40, 2)
            laws = oracle.next_token_probs([[], [1]])
    return [first, second, laws], oracle


def _assert_same_completions(left: list[Completions], right: list[Completions]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a.futures, b.futures)
        np.testing.assert_array_equal(a.counts, b.counts)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- writing --------------------------------------------------------------------------


def test_logged_oracle_writes_header_and_records(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"

    (first, _, laws), _ = _record_three_calls(hmm, path)

    header, *records = _lines(path)
    assert header["format"] == LOG_FORMAT
    assert header["version"] == 1
    assert header["alphabet"] == ["a", "b", "c"]
    assert header["horizon"] == 6
    assert header["budget"] == 10_000
    assert header["settings"] == SETTINGS
    assert [r["method"] for r in records] == ["complete", "complete", "next_token_probs"]
    assert records[0]["prompts"] == [[], [0]]
    assert records[0]["n"] == 50
    assert records[0]["max_tokens"] == 3
    assert records[0]["samples"] == 100
    assert records[0]["tokens"] == 50 * 3 + 50 * 3
    assert records[0]["phase"] == "candidates"
    assert records[0]["completions"][1]["futures"] == first[1].futures.tolist()
    assert records[0]["completions"][1]["counts"] == first[1].counts.tolist()
    assert records[2]["laws"] == laws.tolist()
    assert records[2]["phase"] == "next-token tables"


def test_logged_oracle_rejects_existing_log_without_resume(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _record_three_calls(hmm, path)
    size = path.stat().st_size

    with pytest.raises(QueryLogError, match=r"log\.jsonl already exists .* --resume"):
        _logged(_inner(hmm), path)

    assert path.stat().st_size == size


def test_logged_oracle_resume_without_log_starts_one(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"

    with _logged(_inner(hmm), path, resume=True) as oracle:
        oracle.complete([[]], 5, 2)

    assert [line.get("method") for line in _lines(path)] == [None, "complete"]
    assert oracle.live.calls == 1


# -- replay ---------------------------------------------------------------------------


def test_logged_oracle_replay_returns_logged_responses(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    (first, second, laws), _ = _record_three_calls(hmm, path)
    inner = _inner(hmm, seed=99)

    with _logged(inner, path, resume=True) as oracle:
        replayed_first = oracle.complete([[], [0]], 50, 3)
        replayed_second = oracle.complete([[1]], 40, 2)
        replayed_laws = oracle.next_token_probs([[], [1]])

    _assert_same_completions(replayed_first, first)
    _assert_same_completions(replayed_second, second)
    np.testing.assert_array_equal(replayed_laws, laws)
    assert replayed_first[0].futures.dtype == np.int64
    assert replayed_second[0].futures.shape[1] == 2


def test_logged_oracle_replay_charges_ledger_and_sends_nothing(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _, original = _record_three_calls(hmm, path)
    size = path.stat().st_size
    inner = _inner(hmm)

    with _logged(inner, path, resume=True) as oracle:
        oracle.complete([[], [0]], 50, 3)
        oracle.complete([[1]], 40, 2)
        oracle.next_token_probs([[], [1]])

    assert inner.ledger.requests == 0
    assert inner.ledger.samples == 0
    assert oracle.ledger.to_dict() == original.ledger.to_dict()
    assert oracle.replayed.calls == 3
    assert oracle.replayed.samples == 100 + 40 + 2
    assert oracle.live.calls == 0
    assert path.stat().st_size == size


def test_logged_oracle_continues_live_after_log(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _record_three_calls(hmm, path)
    inner = _inner(hmm)

    with _logged(inner, path, resume=True) as oracle:
        oracle.complete([[], [0]], 50, 3)
        oracle.complete([[1]], 40, 2)
        oracle.next_token_probs([[], [1]])
        oracle.complete([[0, 0]], 7, 4)

    assert inner.ledger.requests == 1
    assert oracle.ledger.samples == 100 + 40 + 2 + 7
    assert oracle.live.to_dict() == {"calls": 1, "samples": 7, "tokens": 28}
    assert [line.get("n") for line in _lines(path)[1:]] == [50, 40, None, 7]


def test_logged_oracle_mismatch_drops_rest_of_log(hmm, tmp_path: Path, caplog) -> None:
    path = tmp_path / "log.jsonl"
    _record_three_calls(hmm, path)
    inner = _inner(hmm)

    with (
        caplog.at_level(logging.WARNING, logger="attacker.querylog"),
        _logged(inner, path, resume=True) as oracle,
    ):
        oracle.complete([[], [0]], 50, 3)
        oracle.complete([[1]], 41, 2)

    assert "call 1 (complete) differs from the logged call" in caplog.text
    assert "dropping the 2 logged calls" in caplog.text
    assert inner.ledger.requests == 1
    assert oracle.replayed.calls == 1
    assert [line.get("n") for line in _lines(path)[1:]] == [50, 41]


def test_logged_oracle_budget_holds_across_resume(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with _logged(_inner(hmm, budget=100), path) as oracle:
        oracle.complete([[]], 60, 2)
    inner = _inner(hmm, budget=100)

    with _logged(inner, path, resume=True) as oracle:
        oracle.complete([[]], 60, 2)
        with pytest.raises(BudgetExceededError, match="60 of the budget of 100 are spent"):
            oracle.complete([[]], 50, 2)

    assert inner.ledger.requests == 0


def test_logged_oracle_does_not_log_failed_call(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with (
        _logged(_inner(hmm), path) as oracle,
        pytest.raises(ValueError, match="probability zero"),
    ):
        oracle.complete([[2]], 5, 2)

    assert oracle.ledger.samples == 0
    assert len(_lines(path)) == 1


# -- damaged and foreign logs ---------------------------------------------------------


def test_logged_oracle_drops_torn_last_line(hmm, tmp_path: Path, caplog) -> None:
    path = tmp_path / "log.jsonl"
    _record_three_calls(hmm, path)
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    valid = b"".join(lines[:-1])
    path.write_bytes(valid + lines[-1][:25])
    inner = _inner(hmm)

    with (
        caplog.at_level(logging.WARNING, logger="attacker.querylog"),
        _logged(inner, path, resume=True) as oracle,
    ):
        oracle.complete([[], [0]], 50, 3)
        oracle.complete([[1]], 40, 2)
        oracle.next_token_probs([[], [1]])

    assert "dropping the torn last line" in caplog.text
    assert oracle.replayed.calls == 2
    assert oracle.live.calls == 1
    assert inner.ledger.requests == 1
    assert path.read_bytes().startswith(valid)
    assert len(_lines(path)) == 4


def test_logged_oracle_torn_header_starts_new_log(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"format": "lowrank-steal/query-')

    with _logged(_inner(hmm), path, resume=True) as oracle:
        oracle.complete([[]], 5, 2)

    header, record = _lines(path)
    assert header["format"] == LOG_FORMAT
    assert record["n"] == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 1}, "seed: logged 0, now 1"),
        ({"settings": {"rank": 3, "C": 2.0}}, "settings: logged"),
        ({"model_id": "other"}, "model_id: logged 'test-hmm', now 'other'"),
        ({"url": "http://127.0.0.1:9"}, "url: logged 'in-process'"),
    ],
    ids=["seed", "settings", "model", "url"],
)
def test_logged_oracle_rejects_header_mismatch(hmm, tmp_path: Path, change, message) -> None:
    path = tmp_path / "log.jsonl"
    _record_three_calls(hmm, path)

    with pytest.raises(QueryLogError, match="was written by another attack") as error:
        _logged(_inner(hmm), path, resume=True, **change)

    assert message in str(error.value)


def test_logged_oracle_rejects_other_budget(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _record_three_calls(hmm, path)

    with pytest.raises(QueryLogError, match="budget: logged 10000, now 20000"):
        _logged(_inner(hmm, budget=20_000), path, resume=True)


def test_logged_oracle_rejects_damaged_middle_line(hmm, tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    _record_three_calls(hmm, path)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = '{"method": "complete"}\n'
    path.write_text("".join(lines))

    with pytest.raises(QueryLogError, match=r"line 3 of query log .* is not a valid call record"):
        _logged(_inner(hmm), path, resume=True)


def test_logged_oracle_rejects_file_of_other_format(hmm, tmp_path: Path) -> None:
    path = tmp_path / "clone.json"
    path.write_text('{"format": "lowrank-steal/clone", "version": 1}\n')

    with pytest.raises(QueryLogError, match="is not a query log"):
        _logged(_inner(hmm), path, resume=True)


# -- resumed attacks over HTTP --------------------------------------------------------


def test_logged_oracle_resumed_learn_equals_uninterrupted(serve, tmp_path: Path) -> None:
    model = load_model("random-hmm:states=3,alphabet=3,horizon=5,seed=1")
    server = serve(model, max_samples_per_prompt=5000)
    settings = LearnerSettings()
    full_log, cut_log = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"

    def attack(path: Path, resume: bool) -> tuple:
        with (
            HttpOracle(server.url, server.api_key, 50_000, sampling_seed=4) as http,
            LoggedOracle(
                http, path, resume, url=server.url, settings=settings.model_dump(), seed=4
            ) as oracle,
        ):
            clone = learn(oracle, settings, np.random.default_rng(4))
        return clone, oracle, http

    uninterrupted, first, _ = attack(full_log, resume=False)
    lines = full_log.read_text().splitlines(keepends=True)
    kept_lines = len(lines) // 2
    cut_log.write_text("".join(lines[:kept_lines]))
    resumed, second, http = attack(cut_log, resume=True)

    sequences = np.array(np.meshgrid(*[range(3)] * 5)).reshape(5, -1).T
    np.testing.assert_allclose(
        resumed.log_prob(sequences), uninterrupted.log_prob(sequences), rtol=0, atol=1e-12
    )
    assert second.ledger.to_dict() == first.ledger.to_dict()
    assert second.replayed.calls == kept_lines - 1
    assert http.ledger.samples == first.ledger.samples - second.replayed.samples
    assert [json.loads(line)["samples"] for line in cut_log.read_text().splitlines()[1:]] == [
        json.loads(line)["samples"] for line in lines[1:]
    ]
