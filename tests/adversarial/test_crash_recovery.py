"""The server killed with SIGKILL, several times, while clients query and score (finding 6 of the attack run).

Each cycle starts ``sandbox serve`` as its own process, runs DP queries (with idempotency keys) and HE scores from
two threads until a number of answers came back, and kills the server with SIGKILL mid-load. Then: its HE worker
processes are gone (none outlives the server); the next start closes what the crash left open. At the end, after
a clean stop: every answer a client received is in the audit log as released, with the exact bytes' hash the
client computed (its receipt); every grant's ledger equals its audited charges; ``sandbox audit verify`` passes;
no process of any of the servers is left.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clients import AdminClient, ApplicantClient, Query, SandboxClientError, generate_key, public_key_of
from tests.conftest import DATA, ROOT, SCHEMAS
from tests.integration.test_he_worker_lifetime import alive, children
from tests.sqlite_raw import raw

pytestmark = pytest.mark.slow
CYCLES = 3
ANSWERS_PER_CYCLE = 12
PUBLIC = {"LIMIT_BAL": -2.0e-6, "AGE": 0.02, "PAY_0": 0.55}


def _serve(data_dir: Path) -> tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "serve", str(data_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.match(r"sandbox listening on (\S+):(\d+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"server did not start: {line!r}")
    return proc, f"127.0.0.1:{match.group(2)}"


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def test_kill_9_under_load_loses_nothing_on_the_record(tmp_path: Path) -> None:
    data_dir = tmp_path / "sbx"
    subprocess.run([sys.executable, "-m", "sandbox.cli", "init", str(data_dir)], check=True, capture_output=True,
                   cwd=ROOT)
    ca, admin_key = data_dir / "tls" / "ca.pem", data_dir / "keys" / "admin.key"
    office_key, bank_key = generate_key(), generate_key()
    received: list[tuple[int, str]] = []  # (receipt seq, sha256 of the answer's bytes) of every answer received
    leftovers: set[int] = set()
    with open(DATA / "credit_default.csv.gz", "rb") as fh:
        credit_ids = [r["ID"] for r in csv.DictReader(gzip.open(fh, "rt"))]
    proc, address = _serve(data_dir)
    try:
        with AdminClient(address, key=admin_key, ca=ca, timeout=120) as admin:
            admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
            admin.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
            for name, key in (("Office", office_key), ("Bank", bank_key)):
                admin.enrol(name=name, organisation=name, roles=["applicant"], public_key=public_key_of(key))
            with ApplicantClient(address, key=office_key, ca=ca) as office:
                s = office.apply(title="Census", purpose="Statistics", legal_basis="Act", kind="DP_QUERY",
                                 datasets={"adult_census": ["age", "sex"]}, epsilon=1000, quota=100_000)
                dp_grant = admin.approve(s.id).grant.id  # type: ignore[union-attr]
            with ApplicantClient(address, key=bank_key, ca=ca) as bank:
                model = bank.submit_model(name="risk", dataset="credit_default", public_features=PUBLIC,
                                          private_features={"own": 1.0})
                s = bank.apply(title="Risk", purpose="Scoring", legal_basis="Consent", kind="HE_SCORING",
                               datasets={"credit_default": ["ID", *PUBLIC]}, model_hash=model, quota=10**6)
                he_grant = admin.approve(s.id).grant.id  # type: ignore[union-attr]
        for cycle in range(CYCLES):
            stop = threading.Event()
            lock = threading.Lock()
            count = [0]

            def keep(result_receipt) -> None:  # type: ignore[no-untyped-def]
                if result_receipt is not None:
                    with lock:
                        received.append((result_receipt.seq, result_receipt.response_sha256))
                        count[0] += 1

            def dp_load(address: str = address, cycle: int = cycle) -> None:
                with ApplicantClient(address, key=office_key, ca=ca, timeout=30) as office:
                    for i in range(10_000):
                        if stop.is_set():
                            return
                        try:
                            r = office.run_query(dp_grant, Query("adult_census").where("age", ">=", 30).count(),
                                                 epsilon=0.01, idempotency_key=f"c{cycle}-{i}")
                            keep(r.receipt)
                        except SandboxClientError:
                            return  # the server is gone

            def he_load(address: str = address, cycle: int = cycle) -> None:
                with ApplicantClient(address, key=bank_key, ca=ca, timeout=60) as bank:
                    try:
                        session = bank.he_session(64)
                    except SandboxClientError:
                        return
                    for i in range(10_000):
                        if stop.is_set():
                            return
                        start = (cycle * 10_000 + i * 64) % (len(credit_ids) - 64)
                        try:
                            r = bank.score(he_grant, model, credit_ids[start:start + 64], np.zeros((64, 1)),
                                           session=session)
                            for receipt in r.receipts:
                                keep(receipt)
                        except SandboxClientError:
                            return

            threads = [threading.Thread(target=dp_load), threading.Thread(target=he_load)]
            for t in threads:
                t.start()
            give_up = time.monotonic() + 300
            while count[0] < ANSWERS_PER_CYCLE and time.monotonic() < give_up:
                time.sleep(0.05)
            assert count[0] >= ANSWERS_PER_CYCLE, "the load never got going"
            family = _descendants(proc.pid)
            assert any("multiprocessing" in cmd for pid, cmd in children(proc.pid).items()), "no HE worker started"
            proc.send_signal(signal.SIGKILL)  # mid-load: the threads' calls in flight fail
            proc.wait()
            stop.set()
            for t in threads:
                t.join(timeout=120)
            give_up = time.monotonic() + 60
            while any(alive(p) for p in family) and time.monotonic() < give_up:
                time.sleep(0.1)
            orphans = {p for p in family if alive(p)}
            leftovers |= orphans
            assert not orphans, f"processes of the killed server still running: {orphans}"
            proc, address = _serve(data_dir)  # start-up closes what the crash left open
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in leftovers:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    assert len(received) >= CYCLES * ANSWERS_PER_CYCLE
    conn = sqlite3.connect(data_dir / "sandbox.db")
    released = {seq: (status, sha) for seq, status, sha in raw(conn).execute(
        "SELECT seq, status, response_sha256 FROM audit_log")}
    for seq, sha in received:
        assert released.get(seq) == ("OK", sha), (seq, released.get(seq), sha)
    lost = raw(conn).execute("SELECT COUNT(*) FROM audit_log WHERE error_code = 'LOST_IN_CRASH'").fetchone()[0]
    assert raw(conn).execute("SELECT COUNT(*) FROM releases WHERE state = 'pending'").fetchone()[0] == 0
    conn.close()
    verify = subprocess.run([sys.executable, "-m", "sandbox.cli", "audit", "verify", str(data_dir)],
                            capture_output=True, text=True, cwd=ROOT)
    assert verify.returncode == 0 and "audit log OK" in verify.stdout, verify.stdout + verify.stderr
    print(f"{len(received)} answers received over {CYCLES} kills; {lost} reservations closed as lost in a crash")
