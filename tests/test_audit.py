"""The audit log: tampering by an insider with database access is detected; the log is append-only."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import audit
from sandbox.audit import AuditLog, compute_entry_hash
from sandbox.datadir import init_data_dir
from sandbox.domain import AuditRecord
from sandbox.identity import public_key_bytes, read_private_key
from sandbox.storage import Database

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def filled(tmp_path: Path) -> tuple[Path, bytes]:
    """A data directory whose audit log holds 100 entries (three checkpoints at every 32)."""
    result = init_data_dir(tmp_path / "sbx")
    cfg = result.config
    db = Database(cfg.db_path)
    key = read_private_key(cfg.audit_key)
    log = AuditLog(db, key, checkpoint_every=32)
    for i in range(100):
        with db.write() as conn:
            log.append(conn, AuditRecord(f"p-{i % 7}", "/sandbox.v1.X/Y", "OK" if i % 5 else "PERMISSION_DENIED",
                                         "" if i % 5 else "WRONG_ROLE", epsilon_nano=i, request_sha256="ab" * 32))
    db.close()
    return cfg.data_dir, public_key_bytes(key.public_key())


def _insider(data_dir: Path) -> sqlite3.Connection:
    """An insider with write access who first drops the append-only triggers."""
    conn = sqlite3.connect(data_dir / "sandbox.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    conn.execute("DROP TRIGGER audit_checkpoints_no_delete")
    return conn


def _verify(data_dir: Path, key: bytes) -> audit.VerifyReport:
    conn = sqlite3.connect(data_dir / "sandbox.db")
    try:
        return audit.verify(conn, key)
    finally:
        conn.close()


def test_intact_log_verifies(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    report = _verify(data_dir, key)
    assert report.ok and report.entries == 100 and report.checkpoints == 3 and report.unsigned_tail == 4


def test_triggers_refuse_update_and_delete(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, _ = filled
    conn = sqlite3.connect(data_dir / "sandbox.db", isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_log SET status = 'OK' WHERE seq = 5")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE seq = 100")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_checkpoints")


def test_edited_row_is_named(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    _insider(data_dir).execute("UPDATE audit_log SET epsilon_nano = 0 WHERE seq = 42")
    report = _verify(data_dir, key)
    assert not report.ok and report.first_bad_seq == 42 and "altered" in report.reason


def test_deleted_row_is_named(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    _insider(data_dir).execute("DELETE FROM audit_log WHERE seq = 17")
    report = _verify(data_dir, key)
    assert not report.ok and report.first_bad_seq == 17


def test_reordered_rows_are_named(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    conn = _insider(data_dir)
    conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = 60")
    conn.execute("UPDATE audit_log SET seq = 60 WHERE seq = 61")
    conn.execute("UPDATE audit_log SET seq = 61 WHERE seq = -1")
    report = _verify(data_dir, key)
    assert not report.ok and report.first_bad_seq == 60


def test_truncated_tail_past_a_checkpoint_is_caught(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    _insider(data_dir).execute("DELETE FROM audit_log WHERE seq > 90")
    report = _verify(data_dir, key)
    assert not report.ok and report.first_bad_seq == 96  # the checkpoint at 96 names a missing entry


def test_rewritten_chain_is_caught_by_signed_checkpoints(filled) -> None:  # type: ignore[no-untyped-def]
    """An insider who edits a row and recomputes every later hash still cannot re-sign the checkpoints."""
    data_dir, key = filled
    conn = _insider(data_dir)
    rows = conn.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
    prev = audit.GENESIS_HASH
    for row in rows:
        seq, time_ms, principal, method, scen, grant, status, code, eps, delta, req, resp, _, _ = row
        if seq == 11:  # i = 10: a refusal the insider wants to hide
            status, code = "OK", ""
        record = AuditRecord(principal, method, status, code, scen, grant, eps, delta, req, resp)
        h = compute_entry_hash(seq, time_ms, record, prev)
        conn.execute("UPDATE audit_log SET status=?, error_code=?, prev_hash=?, entry_hash=? WHERE seq=?",
                     (status, code, prev, h, seq))
        prev = h
    report = _verify(data_dir, key)
    assert not report.ok and report.first_bad_seq == 32 and "checkpoint" in report.reason


def test_forged_checkpoint_signature_is_caught(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    conn = _insider(data_dir)
    conn.execute("DROP TRIGGER audit_checkpoints_no_update")
    conn.execute("UPDATE audit_checkpoints SET signature = zeroblob(64) WHERE seq = 64")
    report = _verify(data_dir, key)
    assert not report.ok and report.first_bad_seq == 64


def test_cli_verify_and_export(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir, _ = filled
    sandbox_cmd = [sys.executable, "-m", "sandbox.cli"]
    ok = subprocess.run([*sandbox_cmd, "audit", "verify", str(data_dir)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "audit log OK" in ok.stdout and "100 entries" in ok.stdout
    out = tmp_path / "audit.jsonl"
    exp = subprocess.run([*sandbox_cmd, "audit", "export", str(data_dir), "-o", str(out)], capture_output=True,
                         text=True, cwd=ROOT)
    assert exp.returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    entries = [e for e in lines if e["kind"] == "entry"]
    assert [e["seq"] for e in entries] == list(range(1, 101))
    assert entries[5]["status"] == "PERMISSION_DENIED" and entries[5]["error_code"] == "WRONG_ROLE"
    assert [c["seq"] for c in lines if c["kind"] == "checkpoint"] == [32, 64, 96]
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    _insider(broken).execute("UPDATE audit_log SET principal_id = 'p-someone-else' WHERE seq = 7")
    bad = subprocess.run([*sandbox_cmd, "audit", "verify", str(broken)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "entry 7" in bad.stdout


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})  # rich boxes wrap at 80 otherwise


def test_a_regulator_verifies_the_exported_file_alone(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The export carries the signed checkpoints: with the published key, the file alone is enough."""
    data_dir, key = filled
    out = tmp_path / "audit.jsonl"
    assert _cli("audit", "export", str(data_dir), "-o", str(out)).returncode == 0
    ok = _cli("audit", "verify", str(out), "--public-key", key.hex())
    assert ok.returncode == 0 and "audit log OK: 100 entries, 3 signed checkpoints" in ok.stdout, ok.stdout + ok.stderr
    stated = _cli("audit", "verify", str(out))  # without a key: the file's own, with a warning
    assert stated.returncode == 0 and "the key the file states" in stated.stderr

    lines = out.read_text().splitlines()
    edited = [json.loads(line) for line in lines]
    edited[8]["principal_id"] = "p-someone-else"  # line 8 is entry 8 (line 0 is the header)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(json.dumps(o, sort_keys=True) for o in edited) + "\n")
    bad = _cli("audit", "verify", str(tampered), "--public-key", key.hex())
    assert bad.returncode == 1 and "entry 8 was altered" in bad.stdout

    # Rewriting the whole chain from entry 8 on defeats the hashes but not the signed checkpoints.
    rehashed = [o for o in edited if o["kind"] != "checkpoint"]
    prev = rehashed[7]["entry_hash"]
    for o in rehashed[8:]:
        if o["kind"] != "entry":
            continue
        record = AuditRecord(**{k: o[k] for k in AuditRecord.__dataclass_fields__})
        o["prev_hash"] = prev
        o["entry_hash"] = prev = compute_entry_hash(o["seq"], o["time_ms"], record, prev)
    checkpoints = [o for o in edited if o["kind"] == "checkpoint"]
    rewritten = tmp_path / "rewritten.jsonl"
    rewritten.write_text("\n".join(json.dumps(o, sort_keys=True) for o in rehashed + checkpoints) + "\n")
    caught = _cli("audit", "verify", str(rewritten), "--public-key", key.hex())
    assert caught.returncode == 1 and "entry 32 differs from its signed checkpoint" in caught.stdout

    # Dropping the checkpoints leaves an unsigned log: it verifies, but says none of it is signed.
    unsigned = tmp_path / "unsigned.jsonl"
    unsigned.write_text("\n".join(json.dumps(o, sort_keys=True) for o in rehashed) + "\n")
    bare = _cli("audit", "verify", str(unsigned), "--public-key", key.hex())
    assert "0 signed checkpoints (100 entries after the last checkpoint)" in bare.stdout


def test_the_wrong_key_is_named_as_a_possibility_and_bad_input_is_one_line(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir, _ = filled
    other = bytes(range(32)).hex()
    wrong = _cli("audit", "verify", str(data_dir), "--public-key", other)
    assert wrong.returncode == 1 and "not the sandbox's audit public key" in wrong.stdout
    junk = _cli("audit", "verify", str(data_dir), "--public-key", "zz")
    assert junk.returncode == 2 and "64 hexadecimal characters" in junk.stderr and "Traceback" not in junk.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    g = _cli("audit", "verify", str(garbage), "--public-key", other)
    assert g.returncode == 2 and "not a readable audit export" in g.stderr and "Traceback" not in g.stderr
    nowhere = _cli("init", "/proc/no-such-place/sbx")
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("error:") and "Traceback" not in nowhere.stderr
