"""The budget ledger: exact integers, atomic reservations, never over the cap, equal to the audit log's charges."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest

from clients import ApplicantClient
from sandbox import audit, ledger
from sandbox.audit import AuditLog
from sandbox.config import load_config
from sandbox.domain import AuditRecord, Budget
from sandbox.errors import ErrorCode, SandboxError
from sandbox.identity import read_private_key
from sandbox.state.sqlite import SqliteState as Database
from sandbox.state.sqlite import SqliteTx
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox, apply_dp
from tests.sqlite_raw import raw


def test_units_are_exact_and_rounded_the_safe_way() -> None:
    assert ledger.epsilon_to_nano("0.1", charge=True) == 100_000_000
    assert ledger.epsilon_to_nano(0.1, charge=True) == 100_000_000  # via str(), not the binary float
    assert ledger.epsilon_to_nano("1e-10", charge=True) == 1  # a charge rounds up
    assert ledger.epsilon_to_nano("1e-10", charge=False) == 0  # a cap rounds down
    assert ledger.delta_to_atto("1e-6", charge=True) == 10**12
    for bad in (float("nan"), float("inf"), -1, "x"):
        with pytest.raises(SandboxError):
            ledger.epsilon_to_nano(bad, charge=True)
    with pytest.raises(SandboxError):
        ledger.delta_to_atto(1, charge=True)


@pytest.fixture()
def granted(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real approved grant (epsilon 1, delta 1e-6, quota 1000) in a real data directory; server stopped."""
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    bank = enrol_client(admin, sbx, ApplicantClient, "Bank", ["applicant"])
    scenario = admin.approve(apply_dp(bank, epsilon=1, delta="1e-6", quota=1000).id)  # type: ignore[attr-defined]
    for c in (admin, bank):
        c.close()
    sbx.stop()
    assert scenario.grant is not None
    return sbx.data_dir, scenario.grant.id


def _log(data_dir: Path) -> tuple[Database, AuditLog]:
    db = Database(data_dir / "sandbox.db", busy_timeout_ms=60_000)
    return db, AuditLog(db, read_private_key(load_config(data_dir, environ={}).audit_key))


def _record(i: int) -> AuditRecord:
    return AuditRecord(f"p-test{i}", "/sandbox.v1.Test/Reserve", "OK")


def test_64_concurrent_reservations_never_exceed_the_cap(granted) -> None:  # type: ignore[no-untyped-def]
    data_dir, grant_id = granted
    db, log = _log(data_dir)
    # Spend 0.9 of the 1.0 epsilon first: the budget is nearly spent.
    ledger.reserve_budget(db, log, grant_id, Budget(900_000_000, 0), quota=1, record=_record(0))
    cost = Budget(30_000_000, 10**11)  # epsilon 0.03, delta 1e-7: at most three more fit
    barrier = threading.Barrier(64)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        # Each thread has its own Database object: contention is resolved by SQLite, not by a Python lock.
        own_db, own_log = _log(data_dir)
        barrier.wait()
        try:
            ledger.reserve_budget(own_db, own_log, grant_id, cost, quota=1, record=_record(i))
            result = "ok"
        except SandboxError as exc:
            result = exc.code.value
        finally:
            own_db.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(1, 65)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 64
    assert outcomes.count("ok") == 3
    assert outcomes.count("BUDGET_EXHAUSTED") == 61
    with db.read() as conn:
        state = ledger.budget_state(conn, grant_id)
        charged = audit.sum_charges(conn, grant_id)
    assert state.usage.epsilon_spent_nano == 990_000_000 <= state.cap.epsilon_nano
    assert state.usage.delta_spent_atto == 3 * 10**11 <= state.cap.delta_atto
    assert charged == (state.usage.epsilon_spent_nano, state.usage.delta_spent_atto)
    assert state.usage.quota_used == 4
    log.checkpoint()  # as a server does at shutdown: a signed tree head over every entry
    with db.read() as conn:
        report = audit.verify(conn, bytes.fromhex((data_dir / "keys" / "audit_signing.pub").read_text()))
    assert report.ok and report.entries == report.signed_entries > 4, report.findings
    db.close()


def test_exhausted_budget_says_what_remains_and_charges_nothing(granted) -> None:  # type: ignore[no-untyped-def]
    data_dir, grant_id = granted
    db, log = _log(data_dir)
    ledger.reserve_budget(db, log, grant_id, Budget(750_000_000, 0), quota=1, record=_record(1))
    with pytest.raises(SandboxError) as exc:
        ledger.reserve_budget(db, log, grant_id, Budget(250_000_001, 0), quota=1, record=_record(2))
    assert exc.value.code is ErrorCode.BUDGET_EXHAUSTED
    assert "remaining epsilon 0.25" in exc.value.public_message
    ledger.reserve_budget(db, log, grant_id, Budget(250_000_000, 0), quota=1, record=_record(3))  # exactly the cap
    with db.read() as conn:
        assert ledger.budget_state(conn, grant_id).remaining == Budget(0, 10**12)
        assert audit.sum_charges(conn, grant_id) == (10**9, 0)
    db.close()


def test_quota_and_refund_are_refused(granted) -> None:  # type: ignore[no-untyped-def]
    data_dir, grant_id = granted
    db, log = _log(data_dir)
    with pytest.raises(SandboxError) as exc:
        ledger.reserve_budget(db, log, grant_id, Budget(0, 0), quota=1001, record=_record(1))
    assert exc.value.code is ErrorCode.QUOTA_EXHAUSTED
    with pytest.raises(SandboxError):
        ledger.reserve_budget(db, log, grant_id, Budget(-1, 0), quota=0, record=_record(1))
    ledger.reserve_budget(db, log, grant_id, Budget(5, 0), quota=1, record=_record(2))
    conn = db.connection()
    with pytest.raises(Exception, match="only grow"):
        raw(conn).execute("UPDATE budgets SET epsilon_spent_nano = 0 WHERE grant_id = ?", (grant_id,))
    with pytest.raises(Exception):
        raw(conn).execute("UPDATE budgets SET epsilon_cap_nano = epsilon_cap_nano + 1 WHERE grant_id = ?", (grant_id,))
    with pytest.raises(SandboxError) as exc2:
        ledger.reserve_budget(db, log, "g-nope", Budget(1, 0), quota=1, record=_record(3))
    assert exc2.value.code is ErrorCode.NOT_FOUND
    assert Decimal(ledger.budget_state(SqliteTx(conn), grant_id).usage.epsilon_spent_nano) == 5
    db.close()
