"""End-to-end through the SDK against a real TLS server: the whole scenario life and every refusal."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import pytest

from clients import (
    AdminClient, AlreadyExists, ApplicantClient, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied,
    ResearcherClient, ResourceExhausted, Unauthenticated, Unavailable, generate_key, public_key_of,
)
from clients.schema_file import load_schema_file
from protos.sandbox.v1 import applicant_pb2
from tests.conftest import DATA, SCHEMAS, Sandbox, enrol_client, start_sandbox

WHOAMI = "/sandbox.v1.ApplicantService/WhoAmI"

TINY_SCHEMA = """
name = "tiny"
description = "A small table with one column at every level"
[[columns]]
name = "person_id"
type = "string"
level = "identifier"
[[columns]]
name = "age"
type = "integer"
level = "open"
lower = 0
upper = 120
[[columns]]
name = "region"
type = "categorical"
level = "open"
categories = ["north", "south"]
[[columns]]
name = "income"
type = "float"
level = "internal"
lower = 0
upper = 1000000
[[columns]]
name = "diagnosis"
type = "categorical"
level = "sensitive"
categories = ["a", "b"]
[[columns]]
name = "tax_id"
type = "string"
level = "core"
"""
TINY_CSV = b"person_id,age,region,income,diagnosis,tax_id\n" + b"".join(
    f"id{i},{20 + i % 50},{'north' if i % 2 else 'south'},{1000.0 * i},{'a' if i % 3 else 'b'},T{i}\n".encode()
    for i in range(200)
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("integration")
    sbx = start_sandbox(tmp)
    admin = sbx.admin()
    schema_path = tmp / "tiny.toml"
    schema_path.write_text(TINY_SCHEMA)
    tiny = admin.import_dataset(schema_path, TINY_CSV)
    bank = enrol_client(admin, sbx, ApplicantClient, "Bank", ["applicant"])
    other = enrol_client(admin, sbx, ApplicantClient, "Insurer", ["applicant"])
    lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
    yield sbx, admin, bank, other, lab, tiny.dataset.version
    for c in (admin, bank, other, lab):
        c.close()
    sbx.stop()


def apply_tiny(client: ApplicantClient, columns=("age", "region", "income"), **kw):  # type: ignore[no-untyped-def]
    args = dict(title="Regional income", purpose="Income statistics by region", legal_basis="Statistics Act",
                kind="DP_QUERY", datasets={"tiny": list(columns)}, epsilon=2, delta="1e-6", quota=10)
    args.update(kw)
    return client.apply(**args)


def test_enrol_import_apply_approve(env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, bank, _, _, version = env
    assert bank.whoami().roles == ("applicant",)
    cat = {d.name: d for d in bank.catalogue()}
    assert cat["tiny"].version == version
    # 200 rows plus discrete Laplace noise (scale 1 / 0.1 = 10), rounded to two significant digits: |noise| > 150
    # has probability e^-15 (test_catalogue_privacy checks that small counts are not shown exactly).
    assert 50 <= cat["tiny"].approx_rows <= 350
    assert [c.level for c in cat["tiny"].columns] == ["identifier", "open", "open", "internal", "sensitive", "core"]
    s = apply_tiny(bank)
    assert s.status == "pending" and s.datasets[0].version == version
    assert s.id in {p.id for p in admin.pending()}
    approved = admin.approve(s.id)
    assert approved.status == "approved" and approved.grant is not None
    terms = bank.verify_grant(approved.grant)
    assert terms.grantee_id == bank.principal_id and terms.epsilon == 2 and str(terms.delta) == "0.000001"
    assert s.id not in {p.id for p in admin.pending()}
    ok = bank.check_access(approved.grant.id, kind="DP_QUERY", dataset="tiny", columns=["age", "income"])
    assert ok.usage is not None and ok.usage.quota_used == 0


def test_reject_then_approve_is_failed_precondition(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    s = apply_tiny(bank)
    rejected = admin.reject(s.id, "purpose too broad")
    assert rejected.status == "rejected" and rejected.decision_reason == "purpose too broad"
    assert bank.scenario(s.id).status == "rejected"
    with pytest.raises(FailedPrecondition) as exc:
        admin.approve(s.id)
    assert exc.value.code == "SCENARIO_NOT_PENDING"


def test_second_grant_for_one_scenario_is_already_exists(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    s = apply_tiny(bank)
    admin.approve(s.id)
    with pytest.raises(AlreadyExists) as exc:
        admin.approve(s.id, epsilon=1)
    assert exc.value.code == "GRANT_EXISTS"


def test_narrowing_is_signed_and_widening_refused(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    s = apply_tiny(bank)
    with pytest.raises(InvalidArgument) as exc:
        admin.approve(s.id, epsilon=3)
    assert exc.value.code == "INVALID_TERMS"
    with pytest.raises(InvalidArgument):
        admin.approve(s.id, columns={"tiny": ["age", "diagnosis"]})
    g = admin.approve(s.id, columns={"tiny": ["age"]}, epsilon="0.5", quota=3).grant
    assert g is not None and g.terms.datasets[0].columns == ("age",)
    assert g.terms.epsilon == pytest.approx(0.5) and g.terms.quota == 3
    with pytest.raises(PermissionDenied) as exc2:
        bank.check_access(g.id, kind="DP_QUERY", dataset="tiny", columns=["income"])
    assert exc2.value.code == "OUTSIDE_GRANT"


def test_core_column_is_refused_in_every_application(env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, _, lab, _ = env
    for kind, client in (("DP_QUERY", bank), ("HE_SCORING", bank), ("FL_TRAINING", lab)):
        with pytest.raises(PermissionDenied) as exc:
            apply_tiny(client, columns=("age", "tax_id"), kind=kind, model_hash="ab" * 32)
        assert exc.value.code == "COLUMN_CORE"


def test_sensitive_column_only_when_named(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    star = apply_tiny(bank, columns=("*",))
    assert set(star.datasets[0].columns) == {"age", "region", "income"}  # no identifier, sensitive or core
    grant = admin.approve(star.id).grant
    assert grant is not None
    with pytest.raises(PermissionDenied) as exc:
        bank.check_access(grant.id, kind="DP_QUERY", dataset="tiny", columns=["age", "diagnosis"])
    assert exc.value.code == "COLUMN_NOT_NAMED"
    named = apply_tiny(bank, columns=("*", "diagnosis"))
    assert "diagnosis" in named.datasets[0].columns
    g2 = admin.approve(named.id).grant
    assert g2 is not None
    bank.check_access(g2.id, kind="DP_QUERY", dataset="tiny", columns=["diagnosis"])


def test_identifier_only_for_he_scoring(env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, _, _, _ = env
    with pytest.raises(PermissionDenied) as exc:
        apply_tiny(bank, columns=("person_id", "age"))
    assert exc.value.code == "COLUMN_LEVEL_FORBIDDEN"
    with pytest.raises(NotFound):  # the identifier passes the level rule; the model must be registered
        apply_tiny(bank, columns=("person_id", "age"), kind="HE_SCORING", model_hash="cd" * 32)


def test_wrong_role(env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, bank, _, lab, _ = env
    with pytest.raises(PermissionDenied) as exc:
        AdminClient(sbx.address, key=bank.transport.key, ca=sbx.ca).pending()
    assert exc.value.code == "WRONG_ROLE"
    with pytest.raises(PermissionDenied) as exc2:
        apply_tiny(lab, kind="DP_QUERY")  # DP queries are for applicants, not researchers
    assert exc2.value.code == "WRONG_ROLE"
    with pytest.raises(PermissionDenied):
        AdminClient(sbx.address, key=bank.transport.key, ca=sbx.ca).audit_head()


def test_unknown_column_and_bad_budget_are_invalid_argument(env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, _, _, _ = env
    with pytest.raises(InvalidArgument):
        apply_tiny(bank, columns=("age", "no_such_column"))
    with pytest.raises(InvalidArgument):
        apply_tiny(bank, epsilon=0)
    with pytest.raises(InvalidArgument):
        apply_tiny(bank, epsilon=float("nan"))
    with pytest.raises(InvalidArgument):
        apply_tiny(bank, delta=1)
    with pytest.raises(NotFound):
        bank.apply(title="t", purpose="p", legal_basis="b", datasets={"nope": ["*"]}, epsilon=1)


def test_revoked_grant_stops_at_once(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    g = admin.approve(apply_tiny(bank).id).grant
    assert g is not None
    bank.check_access(g.id, kind="DP_QUERY", dataset="tiny", columns=["age"])
    assert admin.revoke(g.id, "purpose ended").status == "revoked"
    with pytest.raises(PermissionDenied) as exc:
        bank.check_access(g.id, kind="DP_QUERY", dataset="tiny", columns=["age"])
    assert exc.value.code == "GRANT_REVOKED"
    with pytest.raises(FailedPrecondition) as again:
        admin.revoke(g.id, "twice")
    assert again.value.code == "GRANT_ALREADY_REVOKED"


def _server_interceptor(sbx: Sandbox):  # type: ignore[no-untyped-def]
    """The running server's SigningInterceptor, whose clock gives every handler its ``now``."""
    assert sbx.running.interceptor is not None
    return sbx.running.interceptor


def test_expired_grant(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A grant is refused once its validity ends. The expiry is reached by moving the server's clock on
    (by less than the signature clock window), not by sleeping past a short validity: a grant valid for
    1.5 s was expired before its first use whenever the machine stalled for that long."""
    sbx, admin, bank, _, _, _ = env
    s = apply_tiny(bank)
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60)
    g = admin.approve(s.id, valid_until=until).grant
    assert g is not None
    bank.check_access(g.id, kind="DP_QUERY", dataset="tiny", columns=["age"])
    monkeypatch.setattr(_server_interceptor(sbx), "_clock", lambda: time.time() + 120)  # inside the 300 s window
    with pytest.raises(PermissionDenied) as exc:
        bank.check_access(g.id, kind="DP_QUERY", dataset="tiny", columns=["age"])
    assert exc.value.code == "GRANT_EXPIRED"


def test_grant_of_another_and_outside_kind(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, other, _, _ = env
    g = admin.approve(apply_tiny(bank).id).grant
    assert g is not None
    with pytest.raises(PermissionDenied) as exc:
        other.check_access(g.id, kind="DP_QUERY", dataset="tiny", columns=["age"])
    assert exc.value.code == "NOT_GRANTEE"
    with pytest.raises(PermissionDenied) as exc2:
        other.check_access("g-" + "0" * 32, kind="DP_QUERY", dataset="tiny", columns=["age"])
    assert exc2.value.code == "NOT_GRANTEE"  # a missing grant looks like someone else's
    with pytest.raises(NotFound):
        other.scenario(g.terms.scenario_id)
    with pytest.raises(PermissionDenied) as exc3:
        bank.check_access(g.id, kind="HE_SCORING", dataset="tiny", columns=["age"])
    assert exc3.value.code == "OUTSIDE_GRANT"


def test_grant_verifies_offline_and_tampering_is_caught(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    g = admin.approve(apply_tiny(bank).id).grant
    assert g is not None
    keys = [p.public_key for p in bank.administrator_keys()]
    assert bank.verify_grant(g, keys).scenario_id == g.terms.scenario_id
    tampered = bytearray(g.terms_bytes)
    tampered[-1] ^= 1
    from dataclasses import replace
    with pytest.raises(PermissionDenied):
        bank.verify_grant(replace(g, terms_bytes=bytes(tampered)), keys)
    with pytest.raises(PermissionDenied):
        bank.verify_grant(g, [public_key_of(generate_key())])


# --- authentication -------------------------------------------------------------------------------------------


def _raw_whoami(client: ApplicantClient, metadata) -> object:  # type: ignore[no-untyped-def]
    return client.transport.invoke_raw(WHOAMI, b"", metadata, applicant_pb2.WhoAmIResponse)


def test_unsigned_request(env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, _, _, _ = env
    with pytest.raises(Unauthenticated) as exc:
        _raw_whoami(bank, [])
    assert exc.value.code == "SIGNATURE_MISSING"


def test_bad_signature_and_body_swap(env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, bank, _, _, _ = env
    forger = ApplicantClient(sbx.address, key=generate_key(), ca=sbx.ca, principal_id=bank.principal_id)
    with pytest.raises(Unauthenticated) as exc:
        forger.whoami()
    assert exc.value.code == "SIGNATURE_INVALID"
    # A genuine signature over one body does not cover another.
    body = applicant_pb2.GetScenarioRequest(scenario_id="s-1").SerializeToString()
    md = bank.transport.sign("/sandbox.v1.ApplicantService/GetScenario", body)
    other = applicant_pb2.GetScenarioRequest(scenario_id="s-2").SerializeToString()
    with pytest.raises(Unauthenticated):
        bank.transport.invoke_raw("/sandbox.v1.ApplicantService/GetScenario", other, md,
                                  applicant_pb2.GetScenarioResponse)
    # Nor another method.
    md2 = bank.transport.sign("/sandbox.v1.ApplicantService/ListCatalogue", b"")
    with pytest.raises(Unauthenticated):
        _raw_whoami(bank, md2)


def test_unknown_principal(env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, _, _, _, _ = env
    with pytest.raises(Unauthenticated) as exc:
        ApplicantClient(sbx.address, key=generate_key(), ca=sbx.ca).whoami()
    assert exc.value.code == "UNKNOWN_PRINCIPAL"


def test_replayed_nonce(env) -> None:  # type: ignore[no-untyped-def]
    _, _, bank, _, _, _ = env
    md = bank.transport.sign(WHOAMI, b"")
    _raw_whoami(bank, md)
    with pytest.raises(Unauthenticated) as exc:
        _raw_whoami(bank, md)
    assert exc.value.code == "NONCE_REPLAYED"


# Well outside the 300 s window: at +301 s a request that took more than a second to reach the server
# (a loaded CI machine, a TLS handshake) arrived inside the window and was accepted.
@pytest.mark.parametrize("offset_s", [-360, 360, -3600])
def test_skewed_clock(env, offset_s: int) -> None:  # type: ignore[no-untyped-def]
    sbx, _, bank, _, _, _ = env
    skewed = ApplicantClient(sbx.address, key=bank.transport.key, ca=sbx.ca)
    skewed.transport.clock = lambda: time.time() + offset_s
    with pytest.raises(Unauthenticated) as exc:
        skewed.whoami()
    assert exc.value.code == "CLOCK_SKEW"
    skewed.transport.clock = lambda: time.time() + (offset_s / abs(offset_s)) * 200
    assert skewed.whoami().id == bank.principal_id  # inside the five-minute window


def test_refusals_are_audited(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    with pytest.raises(Unauthenticated):
        _raw_whoami(bank, [])
    entries = list(admin.audit_entries())
    last_refusal = [e for e in entries if e.method == WHOAMI and e.error_code == "SIGNATURE_MISSING"]
    assert last_refusal and last_refusal[-1].status == "UNAUTHENTICATED"
    assert all(e.request_sha256 for e in entries)
    assert {"OK", "PERMISSION_DENIED", "UNAUTHENTICATED"} <= {e.status for e in entries}


def test_self_registration_needs_approval(env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, _, _, _, _ = env
    newcomer = ApplicantClient(sbx.address, key=generate_key(), ca=sbx.ca)
    p = newcomer.register(name="Credit union", organisation="CU", roles=["applicant"])
    assert p.status == "pending"
    assert newcomer.whoami().status == "pending"
    with pytest.raises(PermissionDenied) as exc:
        newcomer.catalogue()
    assert exc.value.code == "PRINCIPAL_INACTIVE"
    with pytest.raises(AlreadyExists):
        newcomer.register(name="Credit union", organisation="CU", roles=["applicant"])
    admin.approve_principal(p.id)
    assert {d.name for d in newcomer.catalogue()} >= {"tiny"}
    admin.suspend_principal(p.id, "audit finding")
    with pytest.raises(PermissionDenied):
        newcomer.catalogue()
    with pytest.raises(PermissionDenied):  # self-registration can never make an administrator
        ApplicantClient(sbx.address, key=generate_key(), ca=sbx.ca).register(
            name="Mallory", organisation="M", roles=["admin"])


def test_import_errors_name_no_value(env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, _, _, _, _ = env
    schema = load_schema_file_from_text(sbx.data_dir.parent / "t2.toml", TINY_SCHEMA.replace('"tiny"', '"tiny2"'))
    bad = TINY_CSV + b"idX,ZZSECRET42,north,1.0,a,T\n"
    with pytest.raises(InvalidArgument) as exc:
        admin.import_dataset(schema, bad)
    assert exc.value.code == "ROWS_REJECTED" and "ZZSECRET42" not in str(exc.value)
    assert "tiny2" not in {d.name for d in admin.catalogue()}  # all or nothing
    result = admin.import_dataset(schema, bad, max_rejected=1)
    assert result.rejected_count == 1 and result.rejected[0].column == "age"
    assert "ZZSECRET42" not in result.rejected[0].reason
    with pytest.raises(AlreadyExists):
        admin.import_dataset(schema, bad, max_rejected=1)


def load_schema_file_from_text(path: Path, text: str):  # type: ignore[no-untyped-def]
    path.write_text(text)
    return load_schema_file(path)


def test_health_and_reflection_need_no_signature(env) -> None:  # type: ignore[no-untyped-def]
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    sbx, _, bank, _, _, _ = env
    assert bank.health() == "SERVING"
    assert bank.health("sandbox.v1.AdminService") == "SERVING"
    channel = grpc.secure_channel(sbx.address, grpc.ssl_channel_credentials(sbx.ca.read_bytes()))
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"sandbox.v1.AdminService", "sandbox.v1.ApplicantService", "sandbox.v1.AuditService",
            "grpc.health.v1.Health"} <= services
    channel.close()


# --- servers of their own ------------------------------------------------------------------------------------


def test_replay_after_restart_and_reflection_off(tmp_path: Path) -> None:
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    sbx = start_sandbox(tmp_path, reflection=False)
    try:
        admin = sbx.admin()
        md = admin.transport.sign(WHOAMI, b"")
        admin.transport.invoke_raw(WHOAMI, b"", md, applicant_pb2.WhoAmIResponse)
        admin.close()
        sbx.restart()
        admin = sbx.admin()
        with pytest.raises(Unauthenticated) as exc:
            admin.transport.invoke_raw(WHOAMI, b"", md, applicant_pb2.WhoAmIResponse)
        assert exc.value.code == "NONCE_REPLAYED"
        assert admin.whoami().roles == ("admin",)
        channel = grpc.secure_channel(sbx.address, grpc.ssl_channel_credentials(sbx.ca.read_bytes()))
        with pytest.raises(grpc.RpcError) as off:
            list(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert off.value.code() is grpc.StatusCode.UNIMPLEMENTED
        channel.close()
        admin.close()
    finally:
        sbx.stop()


def test_an_import_over_its_limit_is_resource_exhausted(tmp_path: Path) -> None:
    """An import has its own limit (max_import_bytes), on its stream and on its CSV once decompressed; it streams in
    messages under max_message_bytes however large it is."""
    sbx = start_sandbox(tmp_path, max_message_bytes=64 * 1024, max_import_bytes=1024 * 1024)
    try:
        with sbx.admin() as admin:
            with pytest.raises(ResourceExhausted) as sent:  # 1.05 MB of gzip: refused on its signed size
                admin.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
            assert sent.value.code == "MESSAGE_TOO_LARGE"
            with pytest.raises(InvalidArgument) as unpacked:  # 0.6 MB of gzip, 5.3 MB of CSV
                admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
            assert unpacked.value.code == "INVALID_CSV" and "larger than 1 MiB" in unpacked.value.message
            assert admin.catalogue() == []
            assert [p for p in (sbx.data_dir / "datasets").rglob("*") if not p.is_dir()] == []
            schema = load_schema_file_from_text(tmp_path / "tiny.toml", TINY_SCHEMA)
            rows = b"".join(f"id{i},{i % 100},north,{i}.5,a,T{i}\n".encode() for i in range(9000))
            big = TINY_CSV.split(b"\n", 1)[0] + b"\n" + rows  # about 250 KB: several 64 KiB messages
            assert admin.import_dataset(schema, big).rows_imported == 9000
            assert admin.whoami().roles == ("admin",)  # and the server keeps serving
    finally:
        sbx.stop()


def test_a_client_stream_over_the_upload_limit_is_refused_before_anything_else(tmp_path: Path) -> None:
    """The boundary caps a client stream's total size (max_message_bytes), not only each of its messages."""
    from protos.sandbox.v1 import he_pb2

    limit = 64 * 1024
    method = "/sandbox.v1.HeScoringService/RegisterContext"
    sbx = start_sandbox(tmp_path, max_message_bytes=limit)
    try:
        with sbx.admin() as admin:
            small = he_pb2.ContextChunk(profile="x", data=b"\0" * 1000)
            with pytest.raises(PermissionDenied) as under:  # under the limit: on to the role check
                admin.transport.call_stream(method, [small, small], he_pb2.RegisterContextResponse)
            assert under.value.code == "WRONG_ROLE"
            half = he_pb2.ContextChunk(profile="x", data=b"\0" * (limit // 2))  # each message fits, three do not
            with pytest.raises(ResourceExhausted) as over:
                admin.transport.call_stream(method, [half, half, half], he_pb2.RegisterContextResponse)
            assert over.value.code == "MESSAGE_TOO_LARGE"
            audited = [e.error_code for e in admin.audit_entries() if e.method == method]
            assert audited == ["WRONG_ROLE", "MESSAGE_TOO_LARGE"]
            assert admin.whoami().roles == ("admin",)  # and the server keeps serving
    finally:
        sbx.stop()


def _sandbox_with_bank(tmp_path: Path, **overrides):  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path, **overrides)
    admin = sbx.admin()
    return sbx, admin


def test_unwritable_audit_log_fails_closed(tmp_path: Path) -> None:
    sbx, admin = _sandbox_with_bank(tmp_path)
    try:
        key = generate_key()
        db = sqlite3.connect(sbx.data_dir / "sandbox.db", isolation_level=None)
        db.execute("CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'disk'); END")
        with pytest.raises(Unavailable) as exc:
            admin.enrol(name="Bank", organisation="Bank", roles=["applicant"], public_key=public_key_of(key))
        assert exc.value.code == "AUDIT_UNAVAILABLE"
        with pytest.raises(Unavailable):
            admin.whoami()
        db.execute("DROP TRIGGER audit_broken")
        # Nothing was released or written while the audit log was down.
        assert public_key_of(key) not in {p.public_key for p in admin.principals()}
        admin.enrol(name="Bank", organisation="Bank", roles=["applicant"], public_key=public_key_of(key))
        db.close()
    finally:
        admin.close()
        sbx.stop()


def test_locked_database_is_unavailable(tmp_path: Path) -> None:
    sbx, admin = _sandbox_with_bank(tmp_path, busy_timeout_ms=300)
    try:
        admin.whoami()
        db = sqlite3.connect(sbx.data_dir / "sandbox.db", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        with pytest.raises(Unavailable):
            admin.whoami()
        db.execute("ROLLBACK")
        db.close()
        assert admin.whoami().roles == ("admin",)
    finally:
        admin.close()
        sbx.stop()


def test_claimed_principal_is_sanitised_in_the_audit(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, bank, _, _, _ = env
    md = [(k, v if k != "x-sandbox-principal" else "evil'; DROP TABLE audit_log;--") for k, v in
          bank.transport.sign(WHOAMI, b"")]
    with pytest.raises(Unauthenticated):
        _raw_whoami(bank, md)
    refused = [e for e in admin.audit_entries() if e.status == "UNAUTHENTICATED"]
    assert refused[-1].principal_id == "?" and refused[-1].error_code == "UNKNOWN_PRINCIPAL"


def test_an_unexpected_failure_is_internal_with_no_detail_and_audited(env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from clients import InternalServerError
    from sandbox import catalogue

    _, admin, bank, _, _, _ = env

    def broken(conn):  # type: ignore[no-untyped-def]
        raise RuntimeError("ZZSECRET42 /srv/sandbox/sandbox.db SELECT * FROM principals")

    monkeypatch.setattr(catalogue, "list_catalogue", broken)
    with pytest.raises(InternalServerError) as exc:
        bank.catalogue()
    assert exc.value.message == "internal error" and exc.value.code == "INTERNAL"
    assert "ZZSECRET42" not in str(exc.value) and "SELECT" not in str(exc.value)
    last = [e for e in admin.audit_entries() if e.method.endswith("ListCatalogue")][-1]
    assert last.status == "INTERNAL" and last.principal_id == bank.principal_id


def test_a_flood_of_unauthenticated_calls_is_refused_without_filling_the_audit_log(tmp_path: Path) -> None:
    """Each unauthenticated refusal is audited up to a per-peer budget a minute; beyond it, still refused, not written."""
    sbx = start_sandbox(tmp_path, unauthenticated_audits_per_minute=5)
    try:
        with sbx.admin() as admin:
            outsider = ApplicantClient(sbx.address, key=generate_key(), ca=sbx.ca)
            before = {e.seq for e in admin.audit_entries()}
            for _ in range(12):
                with pytest.raises(Unauthenticated):
                    _raw_whoami(outsider, [])  # no signature at all
            new = [e for e in admin.audit_entries() if e.seq not in before]
            refused = [e for e in new if e.status == "UNAUTHENTICATED"]
            # 5 audited, or fewer than 12 if the test straddled a minute boundary (a fresh budget of 5 then)
            assert 5 <= len(refused) <= 10 and all(e.error_code == "SIGNATURE_MISSING" for e in refused)
            # Authenticated calls are unaffected: audited as always, refusals included.
            assert admin.whoami().roles == ("admin",)
            with pytest.raises(PermissionDenied):
                admin.check_access("g-" + "0" * 32, kind="DP_QUERY", dataset="x", columns=["y"])
            statuses = [e.status for e in admin.audit_entries() if e.seq not in before][-2:]
            assert statuses == ["OK", "PERMISSION_DENIED"]
            outsider.close()
    finally:
        sbx.stop()
