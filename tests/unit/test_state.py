"""One test class for every state backend (SQLite, PostgreSQL, in memory): the same operations, the same rules.

The PostgreSQL cases run against a real server the suite starts itself (tests/support/postgres.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox import audit
from sandbox.audit import AuditLog
from sandbox.domain import AuditRecord
from sandbox.errors import SandboxError
from sandbox.state import SCHEMA_VERSION, Conflict, State, StateError, open_state

BACKENDS = ["sqlite", "memory", "postgresql"]


@pytest.fixture(params=BACKENDS)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    if request.param == "sqlite":
        db = open_state(tmp_path / "sandbox.db")
    elif request.param == "memory":
        db = open_state("memory:")
    else:
        db = open_state(request.getfixturevalue("pg_database"))
    yield db
    db.close()


def _principal(tx: Any, pid: str, key: bytes, status: str = "active", at: int = 1) -> None:
    tx.principal_insert(pid, "Name", "Org", "applicant", key, status, at, None)


def _grant(tx: Any, gid: str = "g-1", sid: str = "s-1", eps: int = 1000, delta: int = 0, quota: int = 100) -> None:
    if tx.principal_get("p-a") is None:
        _principal(tx, "p-a", b"\x01" * 32)
    tx.scenario_insert(sid, "p-a", b"app", 5)
    tx.grant_insert(gid, sid, b"terms", b"sig", "p-a", 6)
    tx.budget_open(gid, eps, delta, quota)


def _refused(state: State, sql: str) -> None:
    """SQL an insider with the server's own connection might run: the database itself refuses it (triggers)."""
    with pytest.raises(Exception) as refused:
        with state.write() as tx:
            tx.conn.execute(sql)  # type: ignore[attr-defined]
    said = f"{refused.value} {refused.value.__cause__}"  # PostgreSQL's error is the cause of STORAGE_BUSY
    assert any(w in said for w in ("read-only", "immutable", "only grow", "append-only", "cannot be deleted")), said


class TestState:
    def test_principals_are_unique_by_id_and_by_key(self, state: State) -> None:
        with state.write() as tx:
            _principal(tx, "p-a", b"\x01" * 32, at=2)
            _principal(tx, "p-b", b"\x02" * 32, status="pending", at=1)
        with state.write() as tx, pytest.raises(Conflict):
            _principal(tx, "p-c", b"\x01" * 32)
        with state.write() as tx, pytest.raises(Conflict):
            _principal(tx, "p-a", b"\x03" * 32)
        with state.read() as tx:
            assert [r[0] for r in tx.principal_list()] == ["p-b", "p-a"]  # by creation time
            assert tx.principal_count("pending") == 1
            row = tx.principal_get("p-a")
            assert row is not None and row[4] == b"\x01" * 32 and row[7] == 0
        with state.write() as tx:
            tx.principal_update("p-b", status="active", roles="researcher", active_since_ms=9)
        with state.read() as tx:
            assert tx.principal_get("p-b") == ("p-b", "Name", "Org", "researcher", b"\x02" * 32, "active", 1, 9)
            assert tx.principal_get("p-zzz") is None

    def test_a_failed_write_leaves_nothing(self, state: State) -> None:
        with pytest.raises(RuntimeError), state.write() as tx:
            _principal(tx, "p-a", b"\x01" * 32)
            raise RuntimeError("the handler failed")
        with state.read() as tx:
            assert tx.principal_list() == []

    def test_a_conflict_does_not_spoil_the_transaction(self, state: State) -> None:
        with state.write() as tx:
            tx.nonce_claim("p-a", "n1", 10)
            with pytest.raises(Conflict):
                tx.nonce_claim("p-a", "n1", 11)
            tx.nonce_claim("p-a", "n2", 12)  # the transaction goes on (PostgreSQL would abort it on an error)
        with state.write() as tx:
            with pytest.raises(Conflict):
                tx.nonce_claim("p-a", "n2", 13)
            tx.nonce_claim("p-b", "n2", 13)  # another principal's nonce space
            assert tx.nonce_prune(12) == 1
            tx.nonce_claim("p-a", "n1", 14)  # pruned: its timestamp can no longer pass anyway

    def test_nonces_are_claimed_once_under_concurrency(self, state: State) -> None:
        wins: list[int] = []

        def claim(i: int) -> None:
            try:
                with state.write() as tx:
                    tx.nonce_claim("p-a", "same", i)
                wins.append(i)
            except Conflict:
                pass

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(wins) == 1

    def test_datasets_in_import_order_and_read_only(self, state: State) -> None:
        with state.write() as tx:
            tx.dataset_insert("people", "v1", "{}", 10, 1000, "p-a", "c1", 12)
            tx.dataset_insert("census", "v9", "{}", 20, 500, "p-a", "c9", 19)
            tx.dataset_insert("people", "v2", "{}", 11, 1000, "p-a", "c2", 13)
        with state.write() as tx, pytest.raises(Conflict):
            tx.dataset_insert("people", "v1", "{}", 1, 1, "p-a", "cx", 1)
        with state.read() as tx:
            assert [r[1] for r in tx.dataset_rows()] == ["v1", "v9", "v2"]
            assert [r[1] for r in tx.dataset_rows("people")] == ["v1", "v2"]
            assert tx.dataset_get("people", "v2") == ("people", "v2", "{}", 11, 1000, 13)
            assert tx.dataset_exists("people", "nope", "c2") and not tx.dataset_exists("census", "v1", "c1")
        if state.kind != "memory":
            _refused(state, "UPDATE datasets SET public_rows = 0")

    def test_one_scenario_one_grant(self, state: State) -> None:
        with state.write() as tx:
            _grant(tx)
            tx.scenario_insert("s-2", "p-a", b"app2", 7)
        with state.write() as tx, pytest.raises(Conflict):
            tx.grant_insert("g-2", "s-1", b"other terms", b"sig", "p-a", 8)
        with state.write() as tx:
            tx.scenario_decide("s-1", "approved", decided_by="p-a", decided_at_ms=9)
            tx.grant_revoke("g-1", 10, "misuse")
            tx.scenario_decide("s-1", "revoked", reason="misuse")
        with state.read() as tx:
            assert tx.grant_for_scenario("s-1") == ("g-1", b"terms", b"sig", 10, "misuse")
            assert tx.grant_for_scenario("s-2") is None
            assert [r[0] for r in tx.scenario_list(status="pending")] == ["s-2"]
            assert [r[0] for r in tx.scenario_list(applicant_id="p-a")] == ["s-1", "s-2"]
            assert tx.scenario_get("s-1") == ("s-1", "p-a", b"app", "revoked", "misuse", 5)
        if state.kind != "memory":
            _refused(state, "UPDATE grants SET terms = x'00'" if state.kind == "sqlite"
                         else "UPDATE grants SET terms = '\\x00'::bytea")

    def test_budget_reservations_never_pass_the_cap_under_concurrency(self, state: State) -> None:
        with state.write() as tx:
            _grant(tx, eps=10_000, delta=5, quota=1000)
        outcomes: list[bool] = []
        lock = threading.Lock()

        def reserve() -> None:
            with state.write() as tx:
                ok = tx.budget_reserve("g-1", 900, 0, 1)
            with lock:
                outcomes.append(ok)

        threads = [threading.Thread(target=reserve) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert outcomes.count(True) == 11  # 11 * 900 <= 10,000 < 12 * 900
        with state.write() as tx:
            assert tx.budget_get("g-1") == (10_000, 5, 1000, 9900, 0, 11)
            assert not tx.budget_reserve("g-1", 0, 6, 0)  # delta over its cap
            assert not tx.budget_reserve("g-nope", 1, 0, 0)
            assert tx.budget_spends() == [("g-1", 9900, 0)]
        if state.kind != "memory":
            _refused(state, "UPDATE budgets SET epsilon_spent_nano = 0")  # never refunded

    def test_idempotency_records_are_exact(self, state: State) -> None:
        with state.write() as tx:
            _grant(tx)
            tx.release_open("g-1", "k1", "sha-1", 5)
            tx.release_open("g-1", "k2", "sha-2", 5)
            with pytest.raises(Conflict):
                tx.release_open("g-1", "k1", "sha-other", 6)
        with state.write() as tx:
            tx.release_close("g-1", "k1", "done", b"answer")
            tx.release_close("g-1", "k1", "done")  # closing again keeps the answer
        with state.read() as tx:
            assert tx.release_get("g-1", "k1") == ("sha-1", "done", b"answer")
            assert tx.release_count("pending") == 1
        with state.write() as tx:
            assert tx.release_mark_lost() == 1
        with state.read() as tx:
            assert tx.release_get("g-1", "k2") == ("sha-2", "lost", None)
            assert tx.release_get("g-1", "k3") is None

    def test_registry_entries_keep_the_first_content(self, state: State) -> None:
        with state.write() as tx:
            _principal(tx, "p-a", b"\x01" * 32)
            tx.content_put("models", "d1", "{a}", "p-a", 1)
            tx.content_put("models", "d1", "{b}", "p-a", 2)
            tx.content_put("plans", "d1", "{plan}", "p-a", 3)
        with state.read() as tx:
            assert tx.content_get("models", "d1") == ("{a}", "p-a")
            assert tx.content_get("plans", "d1") == ("{plan}", "p-a")
            assert tx.content_get("models", "d2") is None

    def test_he_batches_are_counted_per_grant(self, state: State) -> None:
        with state.write() as tx:
            _grant(tx)
            _grant(tx, gid="g-2", sid="s-2")
            tx.he_batch_insert(7, "g-1", b"\x00" * 8)
            tx.he_batch_insert(3, "g-1", b"\x01" * 16)
            tx.he_batch_insert(5, "g-2", b"\x02" * 8)
            with pytest.raises(Conflict):
                tx.he_batch_insert(7, "g-2", b"")
        with state.read() as tx:
            assert tx.he_batch_count("g-1") == 2 and tx.he_batch_exists(3) and not tx.he_batch_exists(4)
            assert sorted(tx.he_batches("g-1")) == [b"\x00" * 8, b"\x01" * 16]

    def test_training_jobs_newest_first_and_fixed_once_ended(self, state: State) -> None:
        with state.write() as tx:
            _grant(tx)
            for i, (owner, at) in enumerate((("p-a", 10), ("p-b", 30), ("p-a", 20))):
                tx.training_job_insert(f"j-{i}", owner, "g-1", "plan", "ds", "{}", "{plan}", 5, 100, 0, at,
                                       "srv-1")
            with pytest.raises(Conflict):
                tx.training_job_insert("j-0", "p-a", "g-1", "plan", "ds", "{}", "{plan}", 5, 100, 0, 1, "srv-1")
        with state.write() as tx, pytest.raises(StateError):
            tx.training_job_insert("j-9", "p-a", "g-nope", "plan", "ds", "{}", "{plan}", 5, 100, 0, 1, "srv-1")
        with state.read() as tx:
            assert [r[0] for r in tx.training_job_list(10)] == ["j-1", "j-2", "j-0"]
            assert [r[0] for r in tx.training_job_list(10, owner_id="p-a")] == ["j-2", "j-0"]
            assert [r[0] for r in tx.training_job_list(1)] == ["j-1"]
            assert tx.training_job_get("j-0") == ("j-0", "p-a", "g-1", "plan", "ds", "{}", "starting", 0, 5, 0.0,
                                                  100, 0, 10, 10, "srv-1", "")
            assert tx.training_job_plan("j-0") == ("{plan}", None) and tx.training_job_get("j-x") is None
        with state.write() as tx:
            assert tx.training_job_update("j-0", state="running", round=1, rounds=5, epsilon_spent=0.25,
                                          message="", heartbeat_at_ms=40)
            tx.training_event_append("j-0", '{"round": 1}')
            tx.training_event_append("j-0", '{"round": 2}')
            tx.training_event_append("j-1", '{"round": 1}')
            assert tx.training_job_beat("srv-1", 50) == 3 and tx.training_job_beat("srv-2", 50) == 0
            assert tx.training_job_update("j-0", state="completed", round=2, rounds=5, epsilon_spent=0.5,
                                          message="done", heartbeat_at_ms=60, result='{"params": []}')
            assert not tx.training_job_update("j-0", state="failed", round=2, rounds=5, epsilon_spent=0.5,
                                              message="again", heartbeat_at_ms=70)  # ended: kept as it ended
        with state.read() as tx:
            assert tx.training_events("j-0") == ['{"round": 1}', '{"round": 2}']
            assert tx.training_job_get("j-0")[6:10] == ("completed", 2, 5, 0.5)  # type: ignore[index]
            assert tx.training_job_plan("j-0") == ("{plan}", '{"params": []}')
            assert tx.training_job_stale(51) == ["j-1", "j-2"]  # open and silent since 50
            assert tx.training_job_stale(50) == []
        if state.kind != "memory":
            _refused(state, "UPDATE training_jobs SET message = 'x' WHERE id = 'j-0'")
            _refused(state, "DELETE FROM training_events")

    def test_tree_heads_keep_the_first_and_cosignatures_need_a_head(self, state: State) -> None:
        with state.write() as tx:
            tx.head_insert(4, "r4", 10, b"s4")
            tx.head_insert(4, "other", 11, b"x")
            tx.head_insert(2, "r2", 9, b"s2")
            tx.cosignature_insert(4, "w-1", b"k", 10, b"c", 12)
            tx.cosignature_insert(4, "w-1", b"k", 10, b"again", 13)
        with state.write() as tx, pytest.raises(StateError):
            tx.cosignature_insert(99, "w-1", b"k", 10, b"c", 12)
        with state.read() as tx:
            assert tx.head_latest() == (4, "r4", 10, b"s4")
            assert [h[0] for h in tx.head_list()] == [2, 4] and tx.head_get(3) is None
            assert tx.cosignature_list() == [(4, "w-1", b"k", 10, b"c")] == tx.cosignature_list(4)
        if state.kind != "memory":
            _refused(state, "DELETE FROM tree_heads")

    def test_one_linear_audit_log_under_concurrent_appends(self, state: State) -> None:
        key = Ed25519PrivateKey.generate()
        log = AuditLog(state, key, checkpoint_every=8, background=False)

        def append(i: int) -> None:
            with state.write() as tx:
                log.append(tx, AuditRecord(f"p-{i}", "/m", "OK", "", "", "g-1" if i % 2 else "", i, 0, "r", ""))
            log.after_commit()

        threads = [threading.Thread(target=append, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        log.checkpoint()
        with state.read() as tx:
            entries = [e for e, _ in audit.iter_entries(tx)]
            assert [e.seq for e in entries] == list(range(1, 33))
            assert tx.audit_charges("g-1") == (sum(range(1, 32, 2)), 0)
            assert tx.audit_size() == 32 and tx.audit_tail() == (32, entries[-1].entry_hash)
            report = audit.verify(tx, log.public_key)
        assert report.entries == 32 == report.signed_entries and report.heads >= 1
        assert all(f.code == audit.RECORDS for f in report.findings)  # only: no ledger rows for g-1 here
        if state.kind != "memory":
            statements = ["UPDATE audit_log SET status = 'X'", "DELETE FROM audit_log"]
            if state.kind == "postgresql":  # TRUNCATE skips row triggers: a statement trigger refuses it
                statements += ["TRUNCATE audit_log", "TRUNCATE tree_heads CASCADE", "TRUNCATE budgets CASCADE"]
            for sql in statements:
                _refused(state, sql)

    def test_committed_reads_do_not_see_the_open_write(self, state: State) -> None:
        with state.write() as tx:
            tx.meta_put("k", "v1")
        with state.write() as tx:
            tx.meta_put("k", "v2")
            with state.read() as same:
                assert same.meta_get("k") == "v2"  # a read inside the write is that write
            with state.committed() as other:
                assert other.meta_get("k") == "v1"
        with state.committed() as tx:
            assert tx.meta_get("k") == "v2"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_state_written_by_a_newer_release_is_refused(backend: str, request: pytest.FixtureRequest,
                                                       tmp_path: Path) -> None:
    where = str(tmp_path / "sandbox.db") if backend == "sqlite" else request.getfixturevalue("pg_database")
    db = open_state(where)
    with db.write() as tx:
        assert tx.meta_get("schema_version") == str(SCHEMA_VERSION)
        tx.meta_put("schema_version", str(SCHEMA_VERSION + 1))
    db.close()
    with pytest.raises(SandboxError) as refused:
        open_state(where)
    assert "newer than this release" in refused.value.log_detail
