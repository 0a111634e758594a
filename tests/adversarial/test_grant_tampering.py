"""An insider who edits a stored grant (with the table's trigger dropped) gets nothing from it: every call
re-checks the terms' signature against the approving administrator's enrolled key (``grants.verify_stored``),
also after the same grant was checked, and so cached, before the edit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clients import ApplicantClient, Query
from clients.errors import InternalServerError
from protos.sandbox.v1 import common_pb2
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox


def test_a_grant_whose_stored_terms_were_edited_is_refused(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    office = enrol_client(admin, sbx, ApplicantClient, "Office", ["applicant"])
    s = office.apply(title="Stats", purpose="Official statistics", legal_basis="Statistics Act",  # type: ignore[attr-defined]
                     kind="DP_QUERY", datasets={"adult_census": ["age"]}, epsilon=1.0, quota=100)
    grant = admin.approve(s.id).grant
    office.run_query(grant.id, Query("adult_census").count(), epsilon=0.1)  # type: ignore[attr-defined]

    conn = sqlite3.connect(sbx.data_dir / "sandbox.db", isolation_level=None)
    conn.execute("DROP TRIGGER grants_terms_immutable")
    (terms,) = conn.execute("SELECT terms FROM grants WHERE id = ?", (grant.id,)).fetchone()
    widened = common_pb2.GrantTerms.FromString(terms)
    widened.quota = 10**6  # a bigger allowance the administrator never signed
    conn.execute("UPDATE grants SET terms = ? WHERE id = ?", (widened.SerializeToString(), grant.id))
    conn.close()
    with pytest.raises(InternalServerError):
        office.run_query(grant.id, Query("adult_census").count(), epsilon=0.1)  # type: ignore[attr-defined]
    entries = [e for e in admin.audit_entries() if e.grant_id == grant.id and e.method.endswith("RunQuery")]
    assert entries[-1].status == "INTERNAL" and entries[-1].epsilon == 0  # refused, audited, nothing charged
    office.close()  # type: ignore[attr-defined]
    admin.close()
    sbx.stop()
