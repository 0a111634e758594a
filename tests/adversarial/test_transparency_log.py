"""The audit log as a transparency log through a real server: receipts, witnesses, and an insider who rewrites.

An applicant checks that what it received is in the log the sandbox signed (its receipt). An auditor's witness
stores the heads it checks and countersigns them. Then an insider holding the data directory truncates, deletes,
rewrites (re-signing with the audit key, as if it had been in the directory) or appends a forged entry while the
server is down; at the next run the witness fails, and ``sandbox audit verify --head`` with the witness's head
fails offline. The ledger refilled by hand is caught by ``verify`` too.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients import ApplicantClient, AuditorClient, NotFound, PermissionDenied, Query, generate_key, public_key_of
from clients.cli import app as client_app
from clients.types import Receipt
from clients.witness import WitnessError, witness
from sandbox.config import load_config
from sandbox.identity import read_private_key
from sandbox.state.sqlite import SqliteTx
from tests.conftest import DATA, ROOT, SCHEMAS, enrol_client, start_sandbox
from tests.adversarial.test_audit import _insider, _rechain
from tests.sqlite_raw import raw


def _world(tmp_path: Path):  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    office = enrol_client(admin, sbx, ApplicantClient, "Statistics office", ["applicant"])
    key = generate_key()
    admin.enrol(name="Regulator", organisation="Market regulator", roles=["auditor"], public_key=public_key_of(key))
    auditor = AuditorClient(sbx.address, key=key, ca=sbx.ca)
    s = office.apply(title="Census statistics", purpose="Official statistics", legal_basis="Statistics Act",  # type: ignore[attr-defined]
                     kind="DP_QUERY", datasets={"adult_census": ["age", "sex"]}, epsilon=5, quota=100)
    grant = admin.approve(s.id).grant.id  # type: ignore[union-attr]
    return sbx, admin, office, auditor, grant


def _published_key(sbx) -> bytes:  # type: ignore[no-untyped-def]
    return bytes.fromhex((sbx.data_dir / "keys" / "audit_signing.pub").read_text())


def test_a_receipt_proves_what_was_received_and_only_to_its_holder(tmp_path: Path) -> None:
    sbx, admin, office, auditor, grant = _world(tmp_path)
    try:
        result = office.run_query(grant, Query("adult_census").count(), epsilon=0.5)
        assert result.receipt is not None and result.receipt.method.endswith("RunQuery")
        checked = office.verify_receipt(result.receipt, audit_public_key=_published_key(sbx))
        assert checked.entry.seq == result.receipt.seq and checked.entry.status == "OK"
        assert checked.entry.response_sha256 == result.receipt.response_sha256
        assert checked.head.size >= result.receipt.seq
        # Another answer than the one recorded, or the entry of someone else: no.
        with pytest.raises(PermissionDenied, match="records another answer"):
            office.verify_receipt(Receipt(result.receipt.seq, result.receipt.method, "00" * 32))
        stranger = enrol_client(admin, sbx, ApplicantClient, "Stranger", ["applicant"])
        with pytest.raises(NotFound):  # another applicant's entry does not exist, as far as it can tell
            stranger.verify_receipt(result.receipt.seq)  # type: ignore[attr-defined]
        stranger.close()  # type: ignore[attr-defined]
        with pytest.raises(PermissionDenied, match="not this principal's"):  # an auditor gets the proof of any
            auditor.verify_receipt(result.receipt.seq)  # entry, but it is not the auditor's receipt
        with pytest.raises(PermissionDenied, match="not signed by the audit key"):  # a key that is not the sandbox's
            office.verify_receipt(result.receipt, audit_public_key=public_key_of(generate_key()))
        # A refusal carries its receipt too.
        with pytest.raises(Exception) as refused:
            office.run_query(grant, Query("adult_census").count(), epsilon=100)
        receipt = getattr(refused.value, "receipt", None)
        assert receipt is not None and office.verify_receipt(receipt).entry.error_code == "BUDGET_EXHAUSTED"
    finally:
        for c in (admin, office, auditor):
            c.close()  # type: ignore[attr-defined]
        sbx.stop()


def test_receipts_and_head_requests_do_not_sign_a_head_each(tmp_path: Path) -> None:
    """Every GetReceipt / GetAuditHead call is itself audited, so the log always outgrows the last head; signing a
    new head for each call would grow the heads (each verified one by one) with calls. At most one head a second
    is signed on request; a receipt no head covers yet is retried by the SDK until one does."""
    sbx, admin, office, auditor, grant = _world(tmp_path)
    try:
        result = office.run_query(grant, Query("adult_census").count(), epsilon=0.1)
        assert result.receipt is not None
        started = time.monotonic()
        with sqlite3.connect(sbx.data_dir / "sandbox.db") as conn:
            before = raw(conn).execute("SELECT COUNT(*) FROM tree_heads").fetchone()[0]
        calls = 0
        for _ in range(30):
            office.verify_receipt(result.receipt)
            auditor.audit_head()
            calls += 2
        latest = office.whoami()  # one more entry, then its receipt: no head covers it until one is signed
        assert latest is not None
        entries = auditor.audit_entries()
        mine = [e for e in entries if e.principal_id == office.principal_id]
        checked = office.verify_receipt(mine[-1].seq)
        assert checked.head.size >= mine[-1].seq
        elapsed = time.monotonic() - started
        with sqlite3.connect(sbx.data_dir / "sandbox.db") as conn:
            signed = raw(conn).execute("SELECT COUNT(*) FROM tree_heads").fetchone()[0] - before
        # One a second on request, one every 32 entries in the background (the calls write about 62 entries).
        assert signed <= elapsed + 2 + (calls + 10) // 32, (signed, elapsed, calls)
        assert signed < calls // 2
    finally:
        for c in (admin, office, auditor):
            c.close()  # type: ignore[attr-defined]
        sbx.stop()


def _stop_tamper_restart(sbx, tamper) -> None:  # type: ignore[no-untyped-def]
    """The insider acts while the server is down; then the server starts again on the same port."""
    from sandbox.server import start_server

    sbx.stop()
    tamper(_insider(sbx.data_dir))
    sbx.running = start_server(load_config(sbx.data_dir, flags={"port": sbx.running.port}, environ={}))


@pytest.mark.parametrize("attack", ["truncate", "delete everything", "rewrite re-signed", "forged append"])
def test_the_witness_catches_an_insider_after_a_witnessed_head(tmp_path: Path, attack: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sandbox import audit as server_audit

    monkeypatch.setattr(server_audit, "ON_REQUEST_INTERVAL_MS", 0)  # witness runs seconds apart, not milliseconds
    sbx, admin, office, auditor, grant = _world(tmp_path)
    state = tmp_path / "witness"
    try:
        for _ in range(3):
            office.run_query(grant, Query("adult_census").count(), epsilon=0.5)
        first = witness(auditor, state, _published_key(sbx))
        assert first.previous is None and first.head is not None
        office.run_query(grant, Query("adult_census").count(), epsilon=0.5)
        second = witness(auditor, state)  # the key is pinned now
        assert second.previous == first.head and second.grew_by > 0
        cosigned = {(c.size, c.witness_id) for c in server_audit.cosignatures(SqliteTx(sbx.running.db.connection()))}
        assert {(first.head.size, auditor.principal_id), (second.head.size, auditor.principal_id)} <= cosigned  # type: ignore[union-attr]
        saved = state / "head.json"
        size = second.head.size  # type: ignore[union-attr]
        key = read_private_key(load_config(sbx.data_dir, environ={}).audit_key)

        def tamper(conn: sqlite3.Connection) -> None:
            if attack == "truncate":
                raw(conn).execute("DELETE FROM audit_log WHERE seq > ?", (size - 3,))
                raw(conn).execute("DELETE FROM tree_heads WHERE size > ?", (size - 3,))
            elif attack == "delete everything":
                raw(conn).execute("DELETE FROM head_cosignatures")
                raw(conn).execute("DELETE FROM audit_log")
                raw(conn).execute("DELETE FROM tree_heads")
            elif attack == "rewrite re-signed":  # hide the charges: as if the key had been stolen with the directory
                from sandbox.domain import AuditRecord

                _rechain(conn, key=key, edit=lambda seq, r: AuditRecord(**{**r.__dict__, "epsilon_nano": 0}))
            else:
                (prev,) = raw(conn).execute("SELECT entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
                from sandbox.audit import compute_entry_hash
                from sandbox.domain import AuditRecord

                n = raw(conn).execute("SELECT MAX(seq) FROM audit_log").fetchone()[0] + 1
                forged = AuditRecord(office.principal_id, "/sandbox.v1.DpQueryService/RunQuery", "OK")  # type: ignore[attr-defined]
                h = compute_entry_hash(n, 1, forged, prev)
                raw(conn).execute("INSERT INTO audit_log (seq, time_ms, principal_id, method, scenario_id, grant_id, "
                                  "status, error_code, epsilon_nano, delta_atto, request_sha256, response_sha256, "
                                  "prev_hash, entry_hash, signature) "
                                  "VALUES (?, 1, ?, ?, '', '', 'OK', '', 0, 0, '', '', ?, ?, NULL)",
                             (n, forged.principal_id, forged.method, prev, h))

        _stop_tamper_restart(sbx, tamper)
        with pytest.raises((WitnessError, Exception)) as caught:
            witness(auditor, state)
        assert isinstance(caught.value, WitnessError) or getattr(caught.value, "code", "") == "AUDIT_DAMAGED"
        assert json.loads(saved.read_text())["size"] == size  # the stored head is kept
        # The CLI says so with exit 1, and offline verification against the witness's head fails too.
        r = CliRunner().invoke(client_app, ["--server", sbx.address, "--key", str(_auditor_key(tmp_path, auditor)),
                                            "--ca", str(sbx.ca), "audit", "witness", "--state", str(state)])
        assert r.exit_code == 1 and "WITNESS FAILED" in r.output, r.output
        sbx.stop()
        v = subprocess.run([sys.executable, "-m", "sandbox.cli", "audit", "verify", str(sbx.data_dir), "--head",
                            str(saved)], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "COLUMNS": "200"})
        assert v.returncode == 1 and "tampered" in v.stdout, v.stdout
    finally:
        for c in (admin, office, auditor):
            c.close()  # type: ignore[attr-defined]
        sbx.stop()


def _auditor_key(tmp_path: Path, auditor: AuditorClient) -> Path:
    """The auditor's key as a file, for the command line."""
    from clients.signing import save_key

    path = tmp_path / "auditor.key"
    if not path.exists():
        save_key(auditor.transport.key, path)
    return path


def test_a_damaged_witness_state_is_a_witness_failure_not_a_bad_key(tmp_path: Path) -> None:
    sbx, admin, office, auditor, grant = _world(tmp_path)
    state = tmp_path / "witness"
    try:
        witness(auditor, state, _published_key(sbx))
        (state / "head.json").write_text("{not json")
        with pytest.raises(WitnessError, match="stored head .* is unreadable"):
            witness(auditor, state)
        result = CliRunner().invoke(client_app, ["--server", sbx.address, "--key", str(_auditor_key(tmp_path, auditor)),
                                                 "--ca", str(sbx.ca), "audit", "witness", "--state", str(state)])
        assert result.exit_code == 1 and "WITNESS FAILED" in result.output and "unreadable" in result.output, \
            result.output
    finally:
        for c in (admin, office, auditor):
            c.close()  # type: ignore[attr-defined]
        sbx.stop()


def test_verify_flags_a_refilled_ledger(tmp_path: Path) -> None:
    """Finding 3: a ledger refilled to zero spent was not detected; verify now compares every grant's ledger with
    the charges its audit entries record."""
    sbx, admin, office, auditor, grant = _world(tmp_path)
    try:
        office.run_query(grant, Query("adult_census").count(), epsilon=1)
    finally:
        for c in (admin, office, auditor):
            c.close()  # type: ignore[attr-defined]
        sbx.stop()

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sandbox.cli", "audit", "verify", str(sbx.data_dir)],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})

    assert verify().returncode == 0
    conn = sqlite3.connect(sbx.data_dir / "sandbox.db", isolation_level=None)
    raw(conn).execute("DROP TRIGGER budgets_never_refund")
    raw(conn).execute("UPDATE budgets SET epsilon_spent_nano = 0 WHERE grant_id = ?", (grant,))
    conn.close()
    refilled = verify()
    assert refilled.returncode == 3 and f"grant {grant}: the ledger records epsilon 0" in refilled.stdout, refilled.stdout
