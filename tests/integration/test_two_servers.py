"""Two sandbox servers on one PostgreSQL database, as a city runs them behind one address.

Both are real TLS servers on free ports; clients talk to them through the SDK. The database is a real
PostgreSQL server the suite starts itself (tests/support/postgres.py).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import AdminClient, ApplicantClient, Query, generate_key, public_key_of
from clients.errors import PermissionDenied, ResourceExhausted, SandboxClientError, Unauthenticated
from protos.sandbox.v1 import applicant_pb2
from sandbox import audit
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.server import RunningServer, start_server
from sandbox.state import open_state
from tests.conftest import DATA, SCHEMAS

pytestmark = pytest.mark.slow

WHOAMI = "/sandbox.v1.ApplicantService/WhoAmI"
CALLS = 64
EPSILON = 0.1
#: The grant holds 0.9 of what the calls ask for together: 57 fit, 7 must be refused.
BUDGET = 0.9 * CALLS * EPSILON
FIT = 57


@dataclass
class Pair:
    url: str
    dirs: tuple[Path, Path]
    servers: list[RunningServer]
    admin_key: Path

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.servers[i].port}"

    def ca(self) -> Path:
        return self.dirs[0] / "tls" / "ca.pem"

    def admin(self, i: int) -> AdminClient:
        return AdminClient(self.address(i), key=self.admin_key, ca=self.ca(), timeout=120)

    def client(self, i: int, key: object) -> ApplicantClient:
        return ApplicantClient(self.address(i), key=key, ca=self.ca(), timeout=120)  # type: ignore[arg-type]


@pytest.fixture()
def pair(tmp_path: Path, pg_database: str) -> Iterator[Pair]:
    first = init_data_dir(tmp_path / "a", state=pg_database)
    second = tmp_path / "b"
    # The second server: the first's keys, certificates and settings; its datasets are the first's directory
    # (one directory every server mounts), its state the same database.
    shutil.copytree(first.config.data_dir, second, ignore=shutil.ignore_patterns("datasets"))
    shared = {"datasets_path": str(first.config.data_dir / "datasets"), "port": 0}
    servers = [start_server(load_config(first.config.data_dir, flags={"port": 0}, environ={}))]
    servers.append(start_server(load_config(second, flags=shared, environ={})))
    yield Pair(pg_database, (first.config.data_dir, second), servers, first.admin_key_path)
    for s in servers:
        s.stop(grace=1)


def test_two_servers_share_budgets_nonces_revocations_and_one_audit_log(pair: Pair) -> None:
    admin_a, admin_b = pair.admin(0), pair.admin(1)
    admin_a.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    key = generate_key()
    admin_b.enrol(name="Statistics office", organisation="Office", roles=["applicant"], public_key=public_key_of(key))
    office = [pair.client(0, key), pair.client(1, key)]
    # What one server imported and enrolled, the other serves.
    assert [d.name for d in office[1].catalogue()] == ["adult_census"]
    scenario = office[1].apply(title="Census statistics", purpose="Official statistics", legal_basis="Statistics Act",
                               kind="DP_QUERY", datasets={"adult_census": ["age", "sex"]}, epsilon=BUDGET, quota=1000)
    grant = admin_a.approve(scenario.id).grant
    assert grant is not None

    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CALLS)

    def run(i: int) -> None:
        start.wait(120)
        try:
            office[i % 2].run_query(grant.id, Query("adult_census").count(), epsilon=EPSILON)
            result = "OK"
        except SandboxClientError as exc:
            result = exc.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CALLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(set(outcomes)) == ["BUDGET_EXHAUSTED", "OK"], outcomes
    assert outcomes.count("OK") == FIT and outcomes.count("BUDGET_EXHAUSTED") == CALLS - FIT
    spent = office[0].scenario(scenario.id).usage
    assert spent is not None and float(spent.epsilon_spent) == pytest.approx(FIT * EPSILON)
    with pytest.raises(ResourceExhausted):
        office[1].run_query(grant.id, Query("adult_census").count(), epsilon=EPSILON)

    # A nonce used on one server is refused on the other.
    signed = office[0].transport.sign(WHOAMI, b"")
    office[0].transport.invoke_raw(WHOAMI, b"", signed, applicant_pb2.WhoAmIResponse)
    with pytest.raises(Unauthenticated) as replay:
        office[1].transport.invoke_raw(WHOAMI, b"", signed, applicant_pb2.WhoAmIResponse)
    assert replay.value.code == "NONCE_REPLAYED"

    # A revocation through one server refuses the next call on the other.
    second = office[0].apply(title="More statistics", purpose="Official statistics", legal_basis="Statistics Act",
                             kind="DP_QUERY", datasets={"adult_census": ["age"]}, epsilon=1.0, quota=10)
    g2 = admin_b.approve(second.id).grant
    assert g2 is not None
    office[0].run_query(g2.id, Query("adult_census").count(), epsilon=0.1)
    admin_b.revoke(g2.id, reason="the office asked")
    with pytest.raises(PermissionDenied) as revoked:
        office[0].run_query(g2.id, Query("adult_census").count(), epsilon=0.1)
    assert revoked.value.code == "GRANT_REVOKED"

    for c in (*office, admin_a, admin_b):
        c.close()
    for s in pair.servers:
        s.stop(grace=1)  # each signs a final tree head
    pair.servers.clear()
    # One valid log: one chain, every entry signed, heads from both servers, the ledger equal to its charges.
    db = open_state(pair.url)
    try:
        with db.read() as tx:
            public = bytes.fromhex((pair.dirs[0] / "keys" / "audit_signing.pub").read_text().strip())
            report = audit.verify(tx, public)
            charged = audit.sum_charges(tx, grant.id)
    finally:
        db.close()
    assert report.ok, report.findings
    assert report.entries > CALLS * 2 and report.entries == report.signed_entries
    assert charged[0] == pytest.approx(FIT * EPSILON * 1e9, abs=FIT * 10) and charged[1] == 0


def test_verification_limits_and_certificates_hold_across_two_servers(pair: Pair) -> None:
    """One entity checked on both servers counts once per check; a certificate one server issued, the other proves;
    both servers derive the same private-mode key, so a private batch may go to either."""
    admin_a, admin_b = pair.admin(0), pair.admin(1)
    admin_a.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
    key = generate_key()
    admin_b.enrol(name="Bank", organisation="Bank", roles=["applicant"], public_key=public_key_of(key))
    bank = [pair.client(0, key), pair.client(1, key)]
    s = bank[0].apply(title="Loan checks", purpose="Verify declared ages", legal_basis="Applicants' consent",
                      kind="VERIFICATION", datasets={"credit_default": ["ID", "AGE"]}, quota=100,
                      verification={"id_column": "ID", "templates": {"age": "AGE == ?"}, "private_mode": True})
    grant = admin_b.approve(s.id).grant
    assert grant is not None
    for i in range(3):  # ID 1 is 24 years old in the bundled data
        assert bank[i % 2].verify(grant.id, "age", [("1", 24 + i, f"AUTH-{i}")]).results[0] == (
            "MATCH" if i == 0 else "NO_MATCH")
    for b in bank:
        with pytest.raises(ResourceExhausted) as limited:
            b.verify(grant.id, "age", [("1", 30, "AUTH-9")])
        assert limited.value.code == "ENTITY_LIMIT"
    cert = bank[0].verify(grant.id, "age", [("2", 26, "AUTH-10")], certificates=True).certificates[0]
    public = bytes.fromhex((pair.dirs[0] / "keys" / "audit_signing.pub").read_text().strip())
    assert bank[1].check_certificate(cert, audit_public_key=public).valid
    items = [(str(i), 20 + i % 40, f"AUTH-{i}") for i in range(3, 23)]
    assert bank[0].verify(grant.id, "age", items, private=True).results == bank[1].verify(
        grant.id, "age", items, private=True).results == bank[0].verify(grant.id, "age", items).results
    for c in (*bank, admin_a, admin_b):
        c.close()
