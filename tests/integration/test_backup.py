"""Backups taken while the server serves, and restores that check them first (备份留痕)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients import AdminClient, ApplicantClient, Query, generate_key, public_key_of
from clients.errors import SandboxClientError
from sandbox import audit
from sandbox.backup import BackupError, backup, check, restore
from sandbox.cli import app
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.server import start_server
from sandbox.state import open_state
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.slow


def _verify(data_dir: Path) -> audit.VerifyReport:
    cfg = load_config(data_dir, environ={})
    db = open_state(cfg.state_location)
    try:
        with db.read() as tx:
            return audit.verify(tx, bytes.fromhex(cfg.audit_public_key.read_text().strip()))
    finally:
        db.close()


def test_a_backup_taken_while_serving_restores_verifies_and_continues(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    office = enrol_client(admin, sbx, ApplicantClient, "Office", ["applicant"])
    s = office.apply(title="Stats", purpose="Official statistics", legal_basis="Statistics Act",  # type: ignore[attr-defined]
                     kind="DP_QUERY", datasets={"adult_census": ["age"]}, epsilon=1.0, quota=100)
    grant = admin.approve(s.id).grant
    office.run_query(grant.id, Query("adult_census").count(), epsilon=0.25)  # type: ignore[attr-defined]

    # Calls keep coming while the backup is taken: it must still be one consistent snapshot.
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                office.whoami()  # type: ignore[attr-defined]
            except SandboxClientError:
                pass

    busy = threading.Thread(target=traffic)
    busy.start()
    try:
        result = CliRunner().invoke(app, ["backup", str(sbx.data_dir), str(tmp_path / "bk")])
    finally:
        stop.set()
        busy.join(60)
    assert result.exit_code == 0, result.output
    assert "signed with the audit key" in result.output
    spent_then = office.scenario(s.id).usage  # type: ignore[attr-defined]
    sbx.stop()
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["state"] == "sqlite" and len(manifest["datasets"]) == 1
    assert not any("audit_signing.key" in f for f in manifest["files"])  # the signing key never leaves its place
    assert [f for f in manifest["files"] if f.startswith("state")] == ["state.sqlite"]  # self-contained, no WAL

    restored = tmp_path / "restored"
    result = CliRunner().invoke(app, ["restore", str(tmp_path / "bk"), str(restored)])
    assert result.exit_code == 0, result.output
    report = _verify(restored)
    assert report.entries == manifest["audit_entries"] and report.entries == report.signed_entries
    assert all(f.code != audit.TAMPERED for f in report.findings), report.findings
    running = start_server(load_config(restored, flags={"port": 0}, environ={}))
    try:
        again = ApplicantClient(f"127.0.0.1:{running.port}", key=office.transport.key,  # type: ignore[attr-defined]
                                ca=restored / "tls" / "ca.pem")
        usage = again.scenario(s.id).usage
        assert usage is not None and spent_then is not None
        assert usage.epsilon_spent == spent_then.epsilon_spent and usage.quota_used == spent_then.quota_used
        res = again.run_query(grant.id, Query("adult_census").count(), epsilon=0.25)  # the datasets came along
        assert float(res.epsilon_charged) == pytest.approx(0.25)
        again.close()
    finally:
        running.stop(grace=1)
    after = _verify(restored)
    assert after.ok, after.findings  # the log continued from the restored entries, every head verifies
    assert after.entries > report.entries
    admin.close()
    office.close()  # type: ignore[attr-defined]


def test_an_altered_backup_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    with sbx.admin() as admin:
        admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    cfg = load_config(sbx.data_dir, environ={})
    backup(cfg, tmp_path / "bk", state=sbx.running.db)
    sbx.stop()
    public = bytes.fromhex(cfg.audit_public_key.read_text().strip())
    assert check(tmp_path / "bk", public).manifest["audit_entries"] >= 1

    column = next((tmp_path / "bk" / "datasets").rglob("age.npy"))
    column.write_bytes(column.read_bytes()[:-8] + b"\x00" * 8)  # one value changed
    with pytest.raises(BackupError, match="differs from the manifest"):
        restore(tmp_path / "bk", tmp_path / "r1", public_key=public)
    assert not (tmp_path / "r1").exists()

    manifest = tmp_path / "bk" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["files"][str(column.relative_to(tmp_path / "bk"))]["sha256"] = "0" * 64  # the manifest edited to match
    manifest.write_text(json.dumps(doc))
    with pytest.raises(BackupError, match="signature does not verify"):
        restore(tmp_path / "bk", tmp_path / "r2", public_key=public)
    (tmp_path / "bk" / "extra.txt").write_text("planted")
    with pytest.raises(BackupError):
        check(tmp_path / "bk", public)
    assert not (tmp_path / "r2").exists()


def test_a_postgresql_backup_restores_into_an_empty_database(tmp_path: Path, postgres_server,  # type: ignore[no-untyped-def]
                                                             pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # pg_dump and pg_restore of the same PostgreSQL as the server (the system's or the bundled one).
    monkeypatch.setenv("PATH", f"{postgres_server.binaries.bin_dir}:{os.environ['PATH']}")
    first = init_data_dir(tmp_path / "a", state=pg_database)
    running = start_server(load_config(first.config.data_dir, flags={"port": 0}, environ={}))
    try:
        address, ca = f"127.0.0.1:{running.port}", first.config.data_dir / "tls" / "ca.pem"
        admin = AdminClient(address, key=first.admin_key_path, ca=ca)
        admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
        key = generate_key()
        admin.enrol(name="Office", organisation="Office", roles=["applicant"], public_key=public_key_of(key))
        office = ApplicantClient(address, key=key, ca=ca)
        s = office.apply(title="Stats", purpose="Official statistics", legal_basis="Statistics Act",
                         kind="DP_QUERY", datasets={"adult_census": ["age"]}, epsilon=1.0, quota=100)
        grant = admin.approve(s.id).grant
        assert grant is not None
        office.run_query(grant.id, Query("adult_census").count(), epsilon=0.25)
        report = backup(load_config(first.config.data_dir, environ={}), tmp_path / "bk", state=running.db)
        admin.close()
    finally:
        running.stop(grace=1)
    assert report.datasets == 1 and (tmp_path / "bk" / "state.pgdump").exists()
    with fresh_database(postgres_server.url) as target:
        with pytest.raises(BackupError, match="--state"):
            restore(tmp_path / "bk", tmp_path / "r0")
        restore(tmp_path / "bk", tmp_path / "restored", state=target)
        restored = start_server(load_config(tmp_path / "restored", flags={"port": 0}, environ={}))
        try:
            again = ApplicantClient(f"127.0.0.1:{restored.port}", key=office.transport.key,  # type: ignore[attr-defined]
                                    ca=tmp_path / "restored" / "tls" / "ca.pem")
            usage = again.scenario(s.id).usage
            assert usage is not None and float(usage.epsilon_spent) == pytest.approx(0.25)
            again.run_query(grant.id, Query("adult_census").count(), epsilon=0.25)
            again.close()
        finally:
            restored.stop(grace=1)
        after = _verify(tmp_path / "restored")
        assert after.ok, after.findings
        assert after.entries > report.entries
    office.close()  # type: ignore[attr-defined]
