"""Versioned schema migrations: a data directory of the previous release upgrades (a newer one is refused:
tests/unit/test_state.py, on SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clients import ApplicantClient, Query
from sandbox import audit
from sandbox.config import load_config
from sandbox.server import start_server
from sandbox.state import SCHEMA_VERSION, open_state
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox

pytestmark = pytest.mark.slow


def _as_previous_release(db_file: Path) -> None:
    """The previous release wrote the same tables but recorded no schema version (and its meta table was empty)."""
    conn = sqlite3.connect(db_file)
    conn.execute("DELETE FROM meta")
    conn.commit()
    conn.close()


def test_a_data_directory_of_the_previous_release_upgrades_and_keeps_everything(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    office = enrol_client(admin, sbx, ApplicantClient, "Office", ["applicant"])
    s = office.apply(title="Stats", purpose="Official statistics", legal_basis="Statistics Act",  # type: ignore[attr-defined]
                     kind="DP_QUERY", datasets={"adult_census": ["age"]}, epsilon=1.0, quota=10)
    grant = admin.approve(s.id).grant
    office.run_query(grant.id, Query("adult_census").count(), epsilon=0.5)  # type: ignore[attr-defined]
    sbx.stop()
    db_file = sbx.data_dir / "sandbox.db"
    _as_previous_release(db_file)

    sbx.running = start_server(load_config(sbx.data_dir, flags={"port": 0}, environ={}))
    try:
        again = ApplicantClient(sbx.address, key=office.transport.key, ca=sbx.ca)  # type: ignore[attr-defined]
        usage = again.scenario(s.id).usage
        assert usage is not None and float(usage.epsilon_spent) == pytest.approx(0.5) and usage.quota_used == 1
        again.run_query(grant.id, Query("adult_census").count(), epsilon=0.5)
        with pytest.raises(Exception) as exhausted:
            again.run_query(grant.id, Query("adult_census").count(), epsilon=0.5)
        assert getattr(exhausted.value, "code", "") == "BUDGET_EXHAUSTED"
        again.close()
    finally:
        sbx.stop()
    conn = sqlite3.connect(db_file)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()
    cfg = load_config(sbx.data_dir, environ={})
    db = open_state(cfg.state_location)
    try:
        with db.read() as tx:
            report = audit.verify(tx, bytes.fromhex(cfg.audit_public_key.read_text().strip()))
    finally:
        db.close()
    assert report.ok, report.findings
    admin.close()
    office.close()  # type: ignore[attr-defined]

