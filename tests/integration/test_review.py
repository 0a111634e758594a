"""Review what you approve: steward co-signing, readable training plans, and what was asked on the record.

Every test talks to a real TLS server through the SDK (the module's ``world``: census and credit imported, a bank
and a lab enrolled).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sqlite3
from decimal import Decimal

import pytest

from clients import ApplicantClient, Query, StewardClient, generate_key, public_key_of
from clients import types as t
from clients.errors import AlreadyExists, FailedPrecondition, InternalServerError, InvalidArgument, NotFound
from clients.errors import PermissionDenied
from protos.sandbox.v1 import admin_pb2, common_pb2, he_pb2
from tests.conftest import DATA, SCHEMAS, apply_dp, enrol_client
from tests.sqlite_raw import raw


def _steward(world, name: str) -> StewardClient:  # type: ignore[no-untyped-def]
    return enrol_client(world.admin, world.sbx, StewardClient, name, ["steward"])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bureau(world) -> StewardClient:  # type: ignore[no-untyped-def]
    """The statistics bureau's steward; the census needs its co-signature for grants naming sensitive columns."""
    steward = _steward(world, "Census steward")
    held = world.admin.set_stewardship("adult_census", owner="City Statistics Bureau",
                                       stewards=[steward.principal_id], policy="sensitive")
    assert held.policy == "sensitive" and held.steward_ids == (steward.principal_id,)
    return steward


def _approved(world, columns: list[str], **kw) -> t.Scenario:  # type: ignore[no-untyped-def]
    s = apply_dp(world.bank, datasets={"adult_census": columns}, **kw)
    return world.admin.approve(s.id, epsilon="0.5")


def test_the_catalogue_names_each_datasets_department_and_stewards(world, bureau) -> None:  # type: ignore[no-untyped-def]
    census = next(d for d in world.bank.catalogue() if d.name == "adult_census")
    assert census.stewardship is not None
    assert census.stewardship.owner == "City Statistics Bureau"
    assert census.stewardship.steward_ids == (bureau.principal_id,)
    assert census.stewardship.steward_keys == (bureau.transport.public_key,)


def test_a_grant_naming_a_sensitive_column_waits_for_the_steward(world, bureau) -> None:  # type: ignore[no-untyped-def]
    s = _approved(world, ["age", "sex", "capital_gain"])
    grant = s.grant
    assert grant is not None and grant.awaiting == ("adult_census",) and not grant.cosignatures
    assert grant.terms.cosigners[0].steward_ids == (bureau.principal_id,)
    q = Query("adult_census").count()
    with pytest.raises(FailedPrecondition) as refused:
        world.bank.run_query(grant.id, q, epsilon=0.1)
    assert refused.value.code == "GRANT_AWAITING_COSIGNATURE" and "adult_census" in refused.value.message
    with pytest.raises(PermissionDenied) as offline:  # offline too: the administrator's signature is not enough
        world.bank.verify_grant(grant)
    assert offline.value.code == "GRANT_COSIGNATURE_MISSING"
    assert world.bank.scenario(s.id).usage.epsilon_spent == 0  # type: ignore[union-attr]

    assert s.id in [x.id for x in bureau.steward_scenarios()]
    cosigned = bureau.cosign(grant.id)
    assert cosigned.grant is not None and cosigned.grant.awaiting == ()
    assert [c.steward_id for c in cosigned.grant.cosignatures] == [bureau.principal_id]
    terms = world.bank.verify_grant(cosigned.grant)
    assert terms.cosigners[0].dataset == "adult_census"
    assert world.bank.run_query(grant.id, q, epsilon=0.1).epsilon_charged == Decimal("0.1")
    with pytest.raises(AlreadyExists):
        bureau.cosign(grant.id)


def test_no_cosignature_is_needed_without_a_sensitive_column(world, bureau) -> None:  # type: ignore[no-untyped-def]
    s = _approved(world, ["age", "sex"])
    assert s.grant is not None and s.grant.awaiting == () and s.grant.terms.cosigners == ()
    world.bank.verify_grant(s.grant)
    world.bank.run_query(s.grant.id, Query("adult_census").count(), epsilon=0.1)


def test_terms_that_leave_out_the_steward_are_refused(world, bureau) -> None:  # type: ignore[no-untyped-def]
    s = apply_dp(world.bank, datasets={"adult_census": ["age", "capital_gain"]})
    raw_terms = common_pb2.GrantTerms.FromString(world.admin.grant_terms(s.id))
    assert len(raw_terms.cosigners) == 1
    del raw_terms.cosigners[:]
    terms = raw_terms.SerializeToString(deterministic=True)
    with pytest.raises(InvalidArgument) as refused:
        world.admin.approve_terms(s.id, terms, world.admin.transport.key.sign(terms))
    assert "co-signers" in refused.value.message
    assert world.admin.scenario(s.id).status == "pending"


def test_a_forged_or_foreign_cosignature_is_refused(world, bureau) -> None:  # type: ignore[no-untyped-def]
    s = _approved(world, ["age", "capital_loss"])
    assert s.grant is not None
    outsider = _steward(world, "Another department")  # a steward, but not of the census
    with pytest.raises(NotFound):
        outsider.cosign(s.grant.id)
    forged = generate_key().sign(s.grant.terms_bytes)  # signed by a key that is not the steward's
    with pytest.raises(InvalidArgument) as refused:
        bureau.transport.call("/sandbox.v1.StewardService/CosignGrant",
                              admin_pb2.CosignGrantRequest(grant_id=s.grant.id, signature=forged),
                              admin_pb2.CosignGrantResponse)
    assert "does not verify" in refused.value.message
    # The administrator's own signature over the terms is not a co-signature either (another payload).
    with pytest.raises(InvalidArgument):
        bureau.transport.call("/sandbox.v1.StewardService/CosignGrant",
                              admin_pb2.CosignGrantRequest(grant_id=s.grant.id, signature=s.grant.signature),
                              admin_pb2.CosignGrantResponse)
    assert world.admin.scenario(s.id).grant.awaiting == ("adult_census",)  # type: ignore[union-attr]
    # Offline: a co-signature made up by the grantee and attached to the grant does not verify.
    fake = t.Cosignature("adult_census", bureau.principal_id, bureau.transport.public_key, os.urandom(64),
                         dt.datetime.now(dt.timezone.utc))
    with pytest.raises(PermissionDenied):
        world.bank.verify_grant(dataclasses.replace(s.grant, cosignatures=(fake,)))


def test_a_cosignature_written_behind_the_servers_back_activates_nothing(world, bureau) -> None:  # type: ignore[no-untyped-def]
    s = _approved(world, ["age", "capital_gain", "sex"])
    assert s.grant is not None
    conn = sqlite3.connect(world.sbx.data_dir / "sandbox.db", isolation_level=None, timeout=30)
    try:
        raw(conn).execute("INSERT INTO grant_cosignatures VALUES (?, 'adult_census', ?, ?, ?, 0)",
                          (s.grant.id, bureau.principal_id, bureau.transport.public_key, os.urandom(64)))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # nor can one be rewritten or removed
            raw(conn).execute("UPDATE grant_cosignatures SET signature = x'00' WHERE grant_id = ?", (s.grant.id,))
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw(conn).execute("DELETE FROM grant_cosignatures WHERE grant_id = ?", (s.grant.id,))
    finally:
        conn.close()
    with pytest.raises(InternalServerError):
        world.bank.run_query(s.grant.id, Query("adult_census").count(), epsilon=0.1)


def test_only_an_active_steward_can_be_named(world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        world.admin.set_stewardship("credit_default", owner="Credit bureau", stewards=[world.bank.principal_id],
                                    policy="always")
    with pytest.raises(InvalidArgument):
        world.admin.set_stewardship("credit_default", owner="Credit bureau", stewards=[], policy="always")
    with pytest.raises(NotFound):
        world.admin.set_stewardship("no_such_table", owner="x", stewards=[], policy="never")
    with pytest.raises(PermissionDenied):  # administrators set stewardship, nobody else
        world.bank.transport.call("/sandbox.v1.AdminService/SetStewardship",
                                  admin_pb2.SetStewardshipRequest(
                                      dataset="adult_census", owner="me", policy=common_pb2.COSIGN_NEVER),
                                  admin_pb2.SetStewardshipResponse)


def test_training_plans_are_readable_by_reviewers_and_grantees_only(world, bureau) -> None:  # type: ignore[no-untyped-def]
    world.admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    health = _steward(world, "Health steward")
    world.admin.set_stewardship("rand_hie", owner="Health Commission", stewards=[health.principal_id],
                                policy="always")
    plan = world.lab.register_plan(dataset="rand_hie", features=["xage", "female"], label="meddol",
                                   label_threshold=100)
    s = world.lab.apply(title="Spending model", purpose="Federated model of medical spending",
                        legal_basis="Research Act", kind="FL_TRAINING",
                        datasets={"rand_hie": ["xage", "female", "meddol"]}, epsilon=2, delta="1e-6",
                        quota=5, valid_for=dt.timedelta(days=30), model_hash=plan)
    for reader in (world.admin, world.lab, health):
        read = reader.training_plan(plan)
        assert (read.plan_hash, read.features, read.label, read.label_threshold) == (
            plan, ("xage", "female"), "meddol", 100.0)
    for outsider in (world.bank, bureau):  # neither submitted it, holds a grant for it, nor stewards its dataset
        with pytest.raises(NotFound):
            outsider.training_plan(plan)
    assert s.id in [x.id for x in health.steward_scenarios()]
    assert s.id not in [x.id for x in bureau.steward_scenarios()]
    assert s.id in [p.id for p in world.admin.pending()]
    approved = world.admin.approve(s.id)  # policy "always": the health steward must co-sign
    assert approved.grant is not None and approved.grant.awaiting == ("rand_hie",)
    with pytest.raises(NotFound):
        world.admin.training_plan("0" * 64)


def test_what_was_asked_is_on_the_record(world, bureau) -> None:  # type: ignore[no-untyped-def]
    s = _approved(world, ["age", "education", "sex"])
    assert s.grant is not None
    q = Query("adult_census").where("age", ">=", 30).group_by("sex").count()
    world.bank.run_query(s.grant.id, q, epsilon=0.2)
    with pytest.raises(PermissionDenied):  # a refused call is described too
        world.bank.run_query(s.grant.id, Query("adult_census").sum("capital_gain"), epsilon=0.1)
    entries = list(world.admin.audit_entries(grant_id=s.grant.id, method="RunQuery"))
    assert [e.status for e in entries] == ["RESERVED", "OK", "PERMISSION_DENIED"]
    asked = json.loads(entries[1].request)
    assert asked["query"]["dataset"] == "adult_census" and asked["query"]["group_by"] == ["sex"]
    assert asked["query"]["filters"][0]["column"] == "age" and asked["epsilon"] == 0.2
    assert json.loads(entries[2].request)["query"]["aggregates"][0]["column"] == "capital_gain"
    assert {e.principal_name for e in entries} == {"Bank"}
    by_name = list(world.admin.audit_entries(principal="bank", status="OK"))
    assert by_name and {e.principal_id for e in by_name} == {world.bank.principal_id}
    approval = next(world.admin.audit_entries(method="ApproveScenario", grant_id=s.grant.id))
    assert json.loads(approval.request)["grant_id"] == s.grant.id
    later = list(world.admin.audit_entries(since=entries[-1].time, grant_id=s.grant.id))
    assert later and all(e.time >= entries[-1].time for e in later)
    assert list(world.admin.audit_entries(method="NoSuchMethod")) == []


def test_audit_descriptions_never_carry_an_entity_id_or_a_key(world) -> None:  # type: ignore[no-untyped-def]
    key = generate_key()
    world.admin.enrol(name="Insurer", organisation="Insurer Ltd", roles=["applicant"], public_key=public_key_of(key))
    insurer = ApplicantClient(world.sbx.address, key=key, ca=world.sbx.ca)
    enrolled = next(world.admin.audit_entries(method="EnrolPrincipal", principal=world.admin.principal_id))
    assert public_key_of(key).hex() not in enrolled.request and insurer.principal_id in list(
        x.request for x in world.admin.audit_entries(method="EnrolPrincipal"))[-1]
    ids = ["ID-000123", "ID-000456"]
    with pytest.raises(NotFound):  # no such HE context: refused, but described
        insurer.transport.call("/sandbox.v1.HeScoringService/Score",
                               he_pb2.ScoreRequest(
                                   grant_id="g-none", context_id="c", model_hash="0" * 64, entity_ids=ids,
                                   encrypted_features=[b"\x01" * 100]),
                               he_pb2.ScoreResponse)
    scored = list(world.admin.audit_entries(method="Score", principal=insurer.principal_id))[-1]
    doc = json.loads(scored.request)
    assert doc["entities"] == 2 and len(doc["entity_ids_sha256"]) == 64
    assert all(i not in scored.request for i in ids) and doc["encrypted_features"] == [{"bytes": 100}]
    insurer.close()


def test_exports_carry_what_was_asked(world, bureau) -> None:  # type: ignore[no-untyped-def]
    """An export (what a regulator verifies offline) keeps each entry's request, and verifying it recomputes
    the hashes that cover it."""
    import io

    from sandbox import audit
    from sandbox.state import open_read_only

    s = _approved(world, ["age", "sex"])
    assert s.grant is not None
    world.bank.run_query(s.grant.id, Query("adult_census").where("age", "<", 40).count(), epsilon=0.1)
    db = open_read_only(world.sbx.data_dir / "sandbox.db")
    try:
        with db.read() as tx:
            buf = io.StringIO()
            audit.export_jsonl(tx, buf)
    finally:
        db.close()
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    asked = [x["request"] for x in lines if x.get("kind") == "entry" and x.get("grant_id") == s.grant.id
             and x["method"].endswith("RunQuery")]
    assert asked and all(json.loads(a)["query"]["filters"][0]["column"] == "age" for a in asked)
    exported = audit.read_export(buf.getvalue().splitlines())
    assert all(audit.compute_entry_hash(e.seq, e.time_ms, e.record, e.prev_hash) == e.entry_hash
               for e, _ in exported.entries)
