"""Tests of the SQLite usage ledger and query audit, on real database files."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from server.ledger import SCHEMA_VERSION, Charge, KeyUsage, Ledger, LedgerError


class StepClock:
    """Wall-clock seconds that grow by one on every read."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _charge(samples: int, prompts: list[list[int]] | None = None, **fields: object) -> Charge:
    return Charge(samples=samples, tokens=3 * samples, prompts=prompts or [[]], **fields)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


def test_ledger_charge_adds_to_totals(path: Path) -> None:
    ledger = Ledger(path)

    ledger.charge("key_a", _charge(5), quota=None)
    usage = ledger.charge("key_a", _charge(7), quota=None)

    assert usage == KeyUsage(requests=2, samples=12, tokens=36)
    assert ledger.usage("key_a") == usage
    assert ledger.usage("key_never_seen") == KeyUsage()


def test_ledger_charge_over_quota_writes_nothing(path: Path) -> None:
    ledger = Ledger(path)
    ledger.charge("key_a", _charge(8), quota=10)

    rejected = ledger.charge("key_a", _charge(3), quota=10)

    assert rejected is None
    assert ledger.usage("key_a") == KeyUsage(requests=1, samples=8, tokens=24)
    assert len(ledger.audit()) == 1


def test_ledger_charge_exactly_to_quota(path: Path) -> None:
    ledger = Ledger(path)

    usage = ledger.charge("key_a", _charge(10), quota=10)

    assert usage is not None
    assert usage.samples == 10


def test_ledger_usage_survives_reopen(path: Path) -> None:
    first = Ledger(path)
    first.charge("key_a", _charge(4), quota=None)
    first.close()

    reopened = Ledger(path)

    assert reopened.usage("key_a") == KeyUsage(requests=1, samples=4, tokens=12)
    assert [entry.charge.samples for entry in reopened.audit()] == [4]


def test_ledger_audit_records_query(path: Path) -> None:
    ledger = Ledger(path, clock=StepClock())
    charge = _charge(6, prompts=[[0, 1], []], n=3, max_tokens=4, seed=2**63 - 1, aggregate=True)

    ledger.charge("key_a", charge, quota=None)

    (entry,) = ledger.audit()
    assert entry.id == 1
    assert entry.time == 1_700_000_001.0
    assert entry.key_id == "key_a"
    assert entry.charge == charge
    assert entry.to_json()["prompts"] == [[0, 1], []]
    assert entry.to_json()["seed"] == 2**63 - 1


def test_ledger_audit_filters_by_key_and_keeps_last(path: Path) -> None:
    ledger = Ledger(path)
    for samples, key in [(1, "key_a"), (2, "key_b"), (3, "key_a"), (4, "key_a")]:
        ledger.charge(key, _charge(samples), quota=None)

    last_two = ledger.audit(key_id="key_a", limit=2)
    everything = ledger.audit()

    assert [entry.charge.samples for entry in last_two] == [3, 4]
    assert [entry.charge.samples for entry in everything] == [1, 2, 3, 4]
    assert [entry.id for entry in everything] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit SET samples = 0", "DELETE FROM audit"],
    ids=["update", "delete"],
)
def test_ledger_audit_is_append_only(path: Path, statement: str) -> None:
    Ledger(path).charge("key_a", _charge(1), quota=None)
    db = sqlite3.connect(path)

    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute(statement)

    assert db.execute("SELECT COUNT(*) FROM audit").fetchone() == (1,)


def test_ledger_uses_wal_journal(path: Path) -> None:
    Ledger(path)

    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]

    assert mode == "wal"


def test_ledger_in_memory_is_private(path: Path) -> None:
    first = Ledger(":memory:")
    second = Ledger(":memory:")

    first.charge("key_a", _charge(2), quota=None)

    assert first.usage("key_a").samples == 2
    assert second.usage("key_a") == KeyUsage()


def test_ledger_missing_directory_is_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"cannot open the usage ledger .*no-such-dir"):
        Ledger(tmp_path / "no-such-dir" / "ledger.sqlite3")


def test_ledger_not_a_database_is_error(path: Path) -> None:
    path.write_text("this is not SQLite\n" * 100)

    with pytest.raises(LedgerError, match="cannot open the usage ledger"):
        Ledger(path)


def test_ledger_newer_schema_is_error(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(LedgerError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        Ledger(path)


def test_ledger_read_only_rejects_foreign_database(path: Path) -> None:
    sqlite3.connect(path).execute("CREATE TABLE other (x)")

    with pytest.raises(LedgerError, match="is not a usage ledger of lowrank-server"):
        Ledger(path, read_only=True)


def test_ledger_read_only_cannot_charge(path: Path) -> None:
    Ledger(path).charge("key_a", _charge(1), quota=None)
    reader = Ledger(path, read_only=True)

    with pytest.raises(LedgerError, match="cannot charge to the usage ledger"):
        reader.charge("key_a", _charge(1), quota=None)

    assert reader.usage("key_a").samples == 1


def test_ledger_rejects_unknown_synchronous(path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous='off'; use one of"):
        Ledger(path, synchronous="off")


def _charge_until_rejected(path: str, quota: int) -> int:
    """Charge 1 sample at a time until the quota rejects one; return the samples charged."""
    ledger = Ledger(path)
    charged = 0
    while ledger.charge("key_shared", _charge(1), quota=quota) is not None:
        charged += 1
    ledger.close()
    return charged


def test_ledger_processes_share_quota_exactly(path: Path) -> None:
    quota, processes = 300, 3
    Ledger(path).close()

    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        counts = list(
            pool.map(_charge_until_rejected, [str(path)] * processes, [quota] * processes)
        )

    ledger = Ledger(path)
    assert sum(counts) == quota
    assert ledger.usage("key_shared") == KeyUsage(requests=quota, samples=quota, tokens=3 * quota)
    assert len(ledger.audit()) == quota
