"""Checks the attacker commands make before they buy anything, against a real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from attacker.baselines import BaselineOptions
from attacker.cli import AttackFailedError, UsageError, run_baseline, run_compare, run_steal

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "test-client-key"
ADMIN_KEY = "test-admin-key"


def _spent(base_url: str) -> int:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    return int(httpx.get(f"{base_url}/v1/usage", headers=headers, timeout=10).json()["samples"])


def test_steal_huge_budget_refused(start_server, tmp_path: Path) -> None:
    base_url = start_server(MODEL)

    with pytest.raises(UsageError, match="must be at most 1,000,000,000,000 samples"):
        run_steal(base_url, CLIENT_KEY, 10**25, tmp_path / "clone.json", {})

    assert _spent(base_url) == 0


def test_steal_too_small_budget_leaves_no_query_log(start_server, tmp_path: Path) -> None:
    # A log left behind would make the corrected command refuse to start.
    base_url = start_server(MODEL)
    log = tmp_path / "clone.queries.jsonl"

    with pytest.raises(UsageError, match="use a budget of at least 18 samples"):
        run_steal(base_url, CLIENT_KEY, 10, tmp_path / "clone.json", {}, query_log=log)

    assert not log.exists()
    assert _spent(base_url) == 0


def test_steal_failure_before_any_query_removes_query_log(start_server, tmp_path: Path) -> None:
    # Probability mode on a server that sells no probabilities fails before any query.
    base_url = start_server(MODEL)
    log = tmp_path / "clone.queries.jsonl"

    with pytest.raises(AttackFailedError, match="probability mode"):
        run_steal(base_url, CLIENT_KEY, 1000, tmp_path / "clone.json", {"mode": "probability"}, query_log=log)

    assert not log.exists()


def test_baseline_over_quota_buys_nothing(start_server, tmp_path: Path) -> None:
    base_url = start_server(MODEL, args=["--quota-samples", "1000"])

    with pytest.raises(UsageError, match="exceeds the 1000 samples left"):
        run_baseline("ngram", base_url, CLIENT_KEY, 2000, tmp_path / "ngram.json", BaselineOptions())

    assert _spent(base_url) == 0
    assert not (tmp_path / "ngram.json").exists()


def test_compare_over_quota_buys_nothing(start_server) -> None:
    base_url = start_server(MODEL, args=["--quota-samples", "5000"])

    with pytest.raises(UsageError, match="need up to 6,000 samples"):
        run_compare(base_url, CLIENT_KEY, ADMIN_KEY, "1000,2000", "liu-moitra,ngram", {}, BaselineOptions())

    assert _spent(base_url) == 0


def test_compare_wrong_admin_key_buys_nothing(start_server) -> None:
    base_url = start_server(MODEL)

    with pytest.raises(UsageError, match="invalid --admin-key"):
        run_compare(base_url, CLIENT_KEY, "not-the-admin-key", "1000", "liu-moitra", {}, BaselineOptions())

    assert _spent(base_url) == 0
