"""The audit log as a transparency log, attacked by an insider who holds the data directory (THREATS.md).

Each attack of the outside run is tried: editing, deleting, reordering; truncating the tail and deleting the
tree heads above it; lowering a charge and recomputing the chain; deleting everything; appending a forged
entry; the same in an export; and all of it again re-signed with the audit key (as if the key had been in the
stolen directory). Offline ``verify`` catches what the key alone proves; a head saved earlier (``--head``, what a
witness keeps) catches the rest. The audit key is outside the data directory, so the first group needs no head.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sandbox import audit
from sandbox.audit import AuditLog, compute_entry_hash
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.domain import AuditRecord
from sandbox.identity import public_key_bytes, read_private_key
from sandbox.state.sqlite import SqliteState as Database
from sandbox.state.sqlite import SqliteTx
from tests.sqlite_raw import raw
from wire import transparency

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def filled(tmp_path: Path) -> tuple[Path, bytes]:
    """A data directory whose audit log holds 100 signed entries, with signed tree heads at 32, 64, 96 and 100."""
    result = init_data_dir(tmp_path / "sbx")
    cfg = result.config
    db = Database(cfg.db_path)
    key = read_private_key(cfg.audit_key)
    log = AuditLog(db, key, checkpoint_every=32, background=False)  # heads exactly at 32, 64, 96
    for i in range(100):
        with db.write() as conn:
            log.append(conn, AuditRecord(f"p-{i % 7}", "/sandbox.v1.X/Y", "OK" if i % 5 else "PERMISSION_DENIED",
                                         "" if i % 5 else "WRONG_ROLE", epsilon_nano=i, request_sha256="ab" * 32,
                                         request="" if i % 3 else f'{{"dataset":"adult_census","n":{i}}}'))
        log.after_commit()
    log.checkpoint()  # as at shutdown
    db.close()
    return cfg.data_dir, public_key_bytes(key.public_key())


def test_the_background_head_signer_outlives_a_database_error(tmp_path: Path) -> None:
    """A head signing that fails with a storage error (a locked or damaged database) is logged; the signer thread
    keeps running and signs at the next crossing of N, so later entries are still covered by heads."""
    cfg = init_data_dir(tmp_path / "sbx").config
    db = Database(cfg.db_path)
    log = AuditLog(db, read_private_key(cfg.audit_key), checkpoint_every=4, background=True)
    real, failures = log.sign_head, []

    def flaky(conn=None):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return real(conn)

    log.sign_head = flaky  # type: ignore[method-assign]
    try:
        for i in range(12):
            with db.write() as conn:
                log.append(conn, AuditRecord("p-1", "/sandbox.v1.X/Y", "OK", "", request_sha256="ab" * 32))
            log.after_commit()
            if i == 3:  # the first crossing (4 entries): its signing fails; wait until it has been tried
                for _ in range(2000):
                    if failures:
                        break
                    threading.Event().wait(0.01)
        assert failures, "the first head signing was never tried"
        for _ in range(3000):  # the crossings at 8 and 12 are signed by the same thread
            head = audit.latest_head(SqliteTx(db.connection()))
            if head is not None and head.size >= 12:
                break
            threading.Event().wait(0.01)
        assert log._signer is not None and log._signer.is_alive()  # noqa: SLF001
        head = audit.latest_head(SqliteTx(db.connection()))
        assert head is not None and head.size == 12
    finally:
        log.close()
        db.close()


def test_a_head_asked_for_inside_a_write_transaction_while_the_background_signer_runs_does_not_deadlock(
        tmp_path: Path) -> None:
    """A handler (GetReceipt) holds the write lock and asks for a head while the background signer is due: the two
    take the write lock and the signing lock in the same order, so both finish."""
    cfg = init_data_dir(tmp_path / "sbx").config
    db = Database(cfg.db_path)
    log = AuditLog(db, read_private_key(cfg.audit_key), checkpoint_every=4, background=True)
    for _ in range(3):
        with db.write() as conn:
            log.append(conn, AuditRecord("p-1", "/sandbox.v1.X/Y", "OK", "", request_sha256="ab" * 32))
        log.after_commit()
    done = threading.Event()

    def handler() -> None:
        with db.write() as conn:
            log.append(conn, AuditRecord("p-1", "/sandbox.v1.X/Y", "OK", "", request_sha256="ab" * 32))
            log.after_commit()  # the fourth entry: the background signer is due (and starts while we hold the lock)
            for _ in range(200):  # let the signer take the signing lock first if it would (the order it had)
                if log._sign_lock.locked():  # noqa: SLF001
                    break
                threading.Event().wait(0.01)
            log.head_on_request(conn)
        done.set()

    t = threading.Thread(target=handler, daemon=True)
    t.start()
    t.join(60)
    try:
        assert done.is_set(), "the handler and the head signer deadlocked"
    finally:
        log.close()
        db.close()


def test_identical_requests_reserved_twice_and_closed_once_leave_one_open(tmp_path: Path) -> None:
    """Two identical RunQuery bodies (no idempotency key) share principal, method and request hash. Reserved twice,
    closed once, then a crash: one is still open, and start-up closes exactly one. A refusal of a third identical
    request (before any reservation) closes nothing."""
    from sandbox import recovery

    cfg = init_data_dir(tmp_path / "sbx").config
    db = Database(cfg.db_path)
    log = AuditLog(db, read_private_key(cfg.audit_key), background=False)
    method, sha = "/sandbox.v1.DpQueryService/RunQuery", "cd" * 32

    def add(status: str, code: str = "", eps: int = 0) -> None:
        with db.write() as conn:
            log.append(conn, AuditRecord("p-1", method, status, code, "s-1", "g-1", eps, 0, sha, ""))

    add("RESERVED", eps=10)
    add("RESERVED", eps=10)
    add("RESOURCE_EXHAUSTED", "BUDGET_EXHAUSTED")  # a third identical request, refused before reserving
    add("OK")  # one of the two is released
    entries = [e for e, _ in audit.iter_entries(SqliteTx(db.connection()))]
    book = audit.Reservations()
    for e in entries:
        book.see(e)
    assert [e.seq for e in book.still_open()] == [2]  # the release closes the earliest (they are indistinguishable)
    assert recovery.close_open_records(log) == 1
    report = audit.verify(SqliteTx(db.connection()), log.public_key)
    assert not any(f.code == audit.RECORDS and "reservation" in f.what for f in report.findings), report.findings
    assert recovery.close_open_records(log) == 0
    db.close()


def _key(data_dir: Path):  # type: ignore[no-untyped-def]
    """The audit signing key, which a thief of the data directory does NOT have (it lives outside it)."""
    return read_private_key(load_config(data_dir, environ={}).audit_key)


def _insider(data_dir: Path) -> sqlite3.Connection:
    """An insider with write access who first drops the append-only triggers."""
    conn = sqlite3.connect(data_dir / "sandbox.db", isolation_level=None)
    for t in ("audit_log_no_update", "audit_log_no_delete", "tree_heads_no_update", "tree_heads_no_delete",
              "head_cosignatures_no_delete"):
        raw(conn).execute(f"DROP TRIGGER {t}")
    return conn


def _rechain(conn: sqlite3.Connection, *, edit=None, key=None) -> None:  # type: ignore[no-untyped-def]
    """Recompute every entry's hash from the first (after ``edit(seq, record) -> record``), re-signing with ``key``
    if given, and (with ``key``) re-sign every remaining tree head over the new entries."""
    prev = audit.GENESIS_HASH
    hashes = []
    columns = ("seq, time_ms, principal_id, method, scenario_id, grant_id, status, error_code, epsilon_nano, "
               "delta_atto, request_sha256, response_sha256, request, signature")
    for row in raw(conn).execute(f"SELECT {columns} FROM audit_log ORDER BY seq").fetchall():
        seq, time_ms, principal, method, scen, grant, status, code, eps, delta, req, resp, asked, sig = row
        record = AuditRecord(principal, method, status, code, scen, grant, eps, delta, req, resp, asked)
        if edit is not None:
            record = edit(seq, record)
        h = compute_entry_hash(seq, time_ms, record, prev)
        if key is not None:
            sig = key.sign(transparency.entry_payload(seq, h))
        raw(conn).execute("UPDATE audit_log SET status=?, error_code=?, epsilon_nano=?, prev_hash=?, entry_hash=?, "
                     "signature=? WHERE seq=?", (record.status, record.error_code, record.epsilon_nano, prev, h, sig,
                                                 seq))
        prev = h
        hashes.append(h)
    if key is not None:
        tree = transparency.Tree(hashes)
        for size, signed_at in raw(conn).execute("SELECT size, signed_at_ms FROM tree_heads").fetchall():
            if size <= len(hashes):
                root = tree.root(size)
                raw(conn).execute("UPDATE tree_heads SET root_hash=?, signature=? WHERE size=?",
                             (root, key.sign(transparency.tree_head_payload(size, root, signed_at)), size))


def _verify(data_dir: Path, key: bytes, saved: transparency.TreeHead | None = None) -> audit.VerifyReport:
    conn = sqlite3.connect(data_dir / "sandbox.db")
    try:
        return audit.verify(SqliteTx(conn), key, saved_head=saved)
    finally:
        conn.close()


def _saved_head(data_dir: Path) -> transparency.TreeHead:
    """What a witness stored: the latest signed head, before the insider acts."""
    conn = sqlite3.connect(data_dir / "sandbox.db")
    try:
        head = audit.latest_head(SqliteTx(conn))
    finally:
        conn.close()
    assert head is not None and head.size == 100
    return head


def _kinds(report: audit.VerifyReport) -> set[str]:
    return {audit.KINDS[f.code] for f in report.findings}


def test_intact_log_verifies(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    report = _verify(data_dir, key, _saved_head(data_dir))
    assert report.ok and report.entries == 100 and report.signed_entries == 100 and report.heads == 4


def test_triggers_refuse_update_and_delete(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, _ = filled
    conn = sqlite3.connect(data_dir / "sandbox.db", isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw(conn).execute("UPDATE audit_log SET status = 'OK' WHERE seq = 5")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw(conn).execute("DELETE FROM audit_log WHERE seq = 100")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw(conn).execute("DELETE FROM tree_heads")


@pytest.mark.parametrize("attack", ["edit", "delete", "reorder", "rewrite what was asked", "erase what was asked"])
def test_edited_deleted_or_reordered_rows_are_named(filled, attack: str) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    conn = _insider(data_dir)
    if attack == "edit":
        raw(conn).execute("UPDATE audit_log SET epsilon_nano = 0 WHERE seq = 42")
    elif attack == "delete":
        raw(conn).execute("DELETE FROM audit_log WHERE seq = 17")
    elif attack == "rewrite what was asked":  # seq 42 asked nothing recorded; give it another request
        raw(conn).execute("""UPDATE audit_log SET request = '{"dataset":"credit_default"}' WHERE seq = 42""")
    elif attack == "erase what was asked":  # seq 43 (i = 42) recorded its request; blank it
        assert raw(conn).execute("SELECT request FROM audit_log WHERE seq = 43").fetchone()[0]
        raw(conn).execute("UPDATE audit_log SET request = '' WHERE seq = 43")
    else:
        raw(conn).execute("UPDATE audit_log SET seq = -1 WHERE seq = 60")
        raw(conn).execute("UPDATE audit_log SET seq = 60 WHERE seq = 61")
        raw(conn).execute("UPDATE audit_log SET seq = 61 WHERE seq = -1")
    report = _verify(data_dir, key)
    expected = {"edit": 42, "delete": 17, "reorder": 60, "rewrite what was asked": 42, "erase what was asked": 43}
    assert report.exit_code == audit.TAMPERED and report.first_bad_seq == expected[attack], report.findings


def test_truncation_with_the_heads_above_deleted_is_caught_by_a_saved_head(filled) -> None:  # type: ignore[no-untyped-def]
    """Finding 3a: the tail truncated and the heads above the new end deleted. Every remaining head still matches
    the prefix, so only a head saved before (a witness's) tells: the log no longer reaches it."""
    data_dir, key = filled
    saved = _saved_head(data_dir)
    conn = _insider(data_dir)
    raw(conn).execute("DELETE FROM audit_log WHERE seq > 90")
    raw(conn).execute("DELETE FROM tree_heads WHERE size > 90")
    alone = _verify(data_dir, key)
    assert _kinds(alone) == {"unsigned tail"}  # without a saved head: entries 65-90 are covered by no head
    report = _verify(data_dir, key, saved)
    assert report.exit_code == audit.TAMPERED and "truncated after a witnessed head" in report.findings[0].what


def test_a_lowered_charge_with_a_recomputed_chain_is_caught_by_the_entry_signatures(filled) -> None:  # type: ignore[no-untyped-def]
    """Finding 3b without the key: the chain is recomputed, the heads from that entry on deleted, but the entries'
    own signatures (the audit key's, which the insider does not hold) no longer match."""
    data_dir, key = filled
    conn = _insider(data_dir)
    _rechain(conn, edit=lambda seq, r: AuditRecord(**{**r.__dict__, "epsilon_nano": 0}) if seq == 50 else r)
    raw(conn).execute("DELETE FROM tree_heads WHERE size >= 50")
    report = _verify(data_dir, key)
    assert report.exit_code == audit.TAMPERED and report.first_bad_seq == 50
    assert "not signed by the audit key" in report.findings[0].what


def test_the_same_re_signed_with_a_stolen_key_is_caught_by_a_saved_head(filled) -> None:  # type: ignore[no-untyped-def]
    """Finding 3b with the key too (as when it lived in the data directory): everything re-signed verifies alone,
    and a head saved before the rewrite catches it."""
    data_dir, key = filled
    saved = _saved_head(data_dir)
    conn = _insider(data_dir)
    _rechain(conn, edit=lambda seq, r: AuditRecord(**{**r.__dict__, "status": "OK", "error_code": ""})
             if seq == 11 else r, key=_key(data_dir))
    assert _verify(data_dir, key).ok  # self-consistent: the key proves nothing more
    report = _verify(data_dir, key, saved)
    assert report.exit_code == audit.TAMPERED and "rewritten after a witnessed head" in report.findings[0].what


def test_deleting_everything_is_an_empty_log_and_a_saved_head_says_more(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    saved = _saved_head(data_dir)
    conn = _insider(data_dir)
    raw(conn).execute("DELETE FROM audit_log")
    raw(conn).execute("DELETE FROM tree_heads")
    report = _verify(data_dir, key)
    assert report.exit_code == audit.EMPTY and _kinds(report) == {"empty"}
    assert _verify(data_dir, key, saved).exit_code == audit.TAMPERED


@pytest.mark.parametrize("signature", ["none", "garbage"])
def test_a_forged_entry_appended_after_the_signed_head_is_caught(filled, signature: str) -> None:  # type: ignore[no-untyped-def]
    """Finding 3d: an entry appended with a correct chain hash but no (or a made-up) audit-key signature."""
    data_dir, key = filled
    conn = _insider(data_dir)
    (prev,) = raw(conn).execute("SELECT entry_hash FROM audit_log WHERE seq = 100").fetchone()
    record = AuditRecord("p-forged", "/sandbox.v1.X/Y", "OK")
    h = compute_entry_hash(101, 1, record, prev)
    sig = None if signature == "none" else os.urandom(64)
    raw(conn).execute("INSERT INTO audit_log (seq, time_ms, principal_id, method, scenario_id, grant_id, status, "
                      "error_code, epsilon_nano, delta_atto, request_sha256, response_sha256, prev_hash, entry_hash, "
                      "signature) VALUES (101, 1, 'p-forged', '/sandbox.v1.X/Y', '', '', 'OK', '', 0, 0, '', "
                 "'', ?, ?, ?)", (prev, h, sig))
    report = _verify(data_dir, key)
    assert report.exit_code == audit.TAMPERED and report.first_bad_seq == 101, report.findings


def test_a_signed_head_with_a_bad_signature_is_caught(filled) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    _insider(data_dir).execute("UPDATE tree_heads SET signature = zeroblob(64) WHERE size = 64")
    report = _verify(data_dir, key)
    assert report.exit_code == audit.TAMPERED and report.first_bad_seq == 64


def test_cli_exit_codes_and_export(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir, key = filled
    out = tmp_path / "audit.jsonl"
    assert _cli("audit", "export", str(data_dir), "-o", str(out)).returncode == 0
    ok = _cli("audit", "verify", str(out), "--public-key", key.hex())
    assert ok.returncode == 0 and "audit log OK: 100 entries (100 signed), 4 signed tree heads" in ok.stdout, ok.stdout
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(_saved_head(data_dir).to_json(key)))
    assert _cli("audit", "verify", str(data_dir), "--head", str(saved)).returncode == 0

    lines = [json.loads(line) for line in out.read_text().splitlines()]

    def write(name: str, objs: list[dict]) -> Path:  # type: ignore[type-arg]
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(o, sort_keys=True) for o in objs) + "\n")
        return path

    # Finding 3e: an export with its last entries and last head dropped, or with every head stripped.
    short = write("short.jsonl", [o for o in lines if not (o["kind"] == "entry" and o["seq"] > 96)
                                  and not (o["kind"] == "tree_head" and o["size"] == 100)])
    assert _cli("audit", "verify", str(short), "--public-key", key.hex()).returncode == 0  # consistent alone
    caught = _cli("audit", "verify", str(short), "--public-key", key.hex(), "--head", str(saved))
    assert caught.returncode == 1 and "truncated after a witnessed head" in caught.stdout, caught.stdout
    stripped = write("stripped.jsonl", [o for o in lines if o["kind"] != "tree_head"])
    bare = _cli("audit", "verify", str(stripped), "--public-key", key.hex())
    assert bare.returncode == 6 and "no signed tree head covers the log" in bare.stdout
    edited = [dict(o) for o in lines]
    edited[8]["principal_id"] = "p-someone-else"  # line 8 is entry 8 (line 0 is the header)
    tampered = write("tampered.jsonl", edited)
    bad = _cli("audit", "verify", str(tampered), "--public-key", key.hex())
    assert bad.returncode == 1 and "entry 8 was altered" in bad.stdout

    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    _insider(broken).execute("UPDATE audit_log SET principal_id = 'p-someone-else' WHERE seq = 7")
    bad = _cli("audit", "verify", str(broken))
    assert bad.returncode == 1 and "entry 7" in bad.stdout
    empty = tmp_path / "empty"
    shutil.copytree(data_dir, empty)
    conn = _insider(empty)
    raw(conn).execute("DELETE FROM audit_log")
    assert _cli("audit", "verify", str(empty)).returncode == 1  # the heads still name entries that are gone
    raw(conn).execute("DELETE FROM tree_heads")
    assert _cli("audit", "verify", str(empty)).returncode == 4


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})  # rich boxes wrap at 80 otherwise


def test_the_wrong_key_is_named_as_a_possibility_and_bad_input_is_one_line(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir, _ = filled
    other = bytes(range(32)).hex()
    wrong = _cli("audit", "verify", str(data_dir), "--public-key", other)
    assert wrong.returncode == 1 and "not signed by the audit key (forged, or the wrong key)" in wrong.stdout
    junk = _cli("audit", "verify", str(data_dir), "--public-key", "zz")
    assert junk.returncode == 2 and "64 hexadecimal characters" in junk.stderr and "Traceback" not in junk.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    g = _cli("audit", "verify", str(garbage), "--public-key", other)
    assert g.returncode == 2 and "not a readable audit export" in g.stderr and "Traceback" not in g.stderr
    nowhere = _cli("init", "/proc/no-such-place/sbx")
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("error:") and "Traceback" not in nowhere.stderr
