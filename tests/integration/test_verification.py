"""Verification (核验): exact answers to claims about one entity, through the templates a grant pins.

Every test talks to a real TLS server through the SDK. The module's server holds the bundled credit data (integer
ids) and a small licence register made here (string ids, a categorical, a string, a sensitive and a core column),
so that every template kind and column type is tried against answers computed here from the same rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import AdminClient, ApplicantClient, StewardClient
from clients import types as t
from clients import verify as vf
from clients.errors import (
    FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, SandboxClientError,
)
from protos.sandbox.v1 import verify_pb2
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox
from wire import verification as wv

VERIFY = "/sandbox.v1.VerificationService/"
STATUSES = ["valid", "suspended", "expired"]


def _licence_rows() -> list[dict[str, str]]:
    rows = []
    for i in range(300):
        rows.append({"person_id": f"P{i:04d}-{(i * 7919) % 10007:05d}", "licence_no": f"LIC-{(i * 104729) % 999983:06d}",
                     "status": STATUSES[i % 3], "income": f"{1000.0 + 37.5 * i:.1f}", "points": str(i % 13),
                     "note": f"n{i}"})
    return rows


LICENCES = _licence_rows()
LICENCE_SCHEMA = '''
name = "licences"
description = "Driving licence register (synthetic, made by the test)."
[[columns]]
name = "person_id"
type = "string"
level = "identifier"
[[columns]]
name = "licence_no"
type = "string"
level = "internal"
[[columns]]
name = "status"
type = "categorical"
level = "open"
categories = ["valid", "suspended", "expired"]
[[columns]]
name = "income"
type = "float"
level = "internal"
lower = 0
upper = 100000
[[columns]]
name = "points"
type = "integer"
level = "sensitive"
lower = 0
upper = 12
[[columns]]
name = "note"
type = "string"
level = "core"
'''


def _csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@dataclass
class Env:
    sbx: object
    admin: AdminClient
    bank: ApplicantClient
    credit: list[dict[str, str]]
    data_dir: Path

    def grant(self, dataset: str, columns: list[str], templates: dict[str, str], *, quota: int = 1000,
              approve: dict | None = None, **settings) -> str:  # type: ignore[type-arg]
        s = self.bank.apply(title="Checks", purpose="Verify applicants' declarations", legal_basis="PIPL art. 13",
                            kind="VERIFICATION", datasets={dataset: columns}, quota=quota,
                            verification={"id_column": "ID" if dataset == "credit_default" else "person_id",
                                          "templates": templates, **settings})
        approved = self.admin.approve(s.id, **(approve or {}))
        assert approved.grant is not None
        return approved.grant.id


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("verify")
    sbx = start_sandbox(tmp)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
    schema = tmp / "licences.toml"
    schema.write_text(LICENCE_SCHEMA)
    admin.import_dataset(schema, _csv(LICENCES))
    bank = enrol_client(admin, sbx, ApplicantClient, "Bank", ["applicant"])
    with gzip.open(DATA / "credit_default.csv.gz", "rt") as f:
        credit = [r for _, r in zip(range(400), csv.DictReader(f))]
    yield Env(sbx, admin, bank, credit, sbx.data_dir)  # type: ignore[arg-type]
    for c in (admin, bank):
        c.close()
    sbx.stop()


def _consent(i: int) -> str:
    return f"AUTH-2026-{i:06d}"


def _quota_used(env: Env, grant_id: str) -> int:
    s = next(s for s in env.bank.scenarios() if s.grant is not None and s.grant.id == grant_id)
    assert s.usage is not None
    return s.usage.quota_used


# -- every template kind, against answers computed here ----------------------------------------------------------------

def test_every_template_kind_answers_exactly_what_the_rows_say(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE", "PAY_0", "LIMIT_BAL"], {
        "age": "AGE == ?", "adult": "AGE >= 30", "limit_pct": "|LIMIT_BAL - ?| <= 10%",
        "limit_abs": "|LIMIT_BAL - ?| <= 5000", "both": "AGE > 25 and PAY_0 == ?"}, quota=5000, per_entity_limit=5)
    rows = env.credit[:120]
    claimed_age = [int(r["AGE"]) + (3 if i % 4 == 0 else 0) for i, r in enumerate(rows)]
    age = env.bank.verify(g, "age", [(r["ID"], a, _consent(i)) for i, (r, a) in enumerate(zip(rows, claimed_age))])
    assert age.results == tuple("MATCH" if a == int(r["AGE"]) else "NO_MATCH" for r, a in zip(rows, claimed_age))
    assert 0 < age.matches < len(rows)

    adult = env.bank.verify(g, "adult", [(r["ID"], [], _consent(i)) for i, r in enumerate(rows)])
    assert adult.results == tuple("MATCH" if int(r["AGE"]) >= 30 else "NO_MATCH" for r in rows)

    factors = [0.95, 1.05, 1.2, 0.8, 1.0]
    claims = [float(r["LIMIT_BAL"]) * factors[i % 5] for i, r in enumerate(rows)]
    pct = env.bank.verify(g, "limit_pct", [(r["ID"], c, _consent(i)) for i, (r, c) in enumerate(zip(rows, claims))])
    assert pct.results == tuple("MATCH" if abs(float(r["LIMIT_BAL"]) - c) <= 0.1 * float(r["LIMIT_BAL"]) else "NO_MATCH"
                                for r, c in zip(rows, claims))
    assert set(pct.results) == {"MATCH", "NO_MATCH"}

    offsets = [0, 4000, 6000, -5000, -7000]
    near = [float(r["LIMIT_BAL"]) + offsets[i % 5] for i, r in enumerate(rows)]
    absolute = env.bank.verify(g, "limit_abs", [(r["ID"], c, _consent(i)) for i, (r, c) in enumerate(zip(rows, near))])
    assert absolute.results == tuple("MATCH" if abs(offsets[i % 5]) <= 5000 else "NO_MATCH" for i in range(len(rows)))

    pays = [int(r["PAY_0"]) if i % 3 else (int(r["PAY_0"]) + 1) % 10 for i, r in enumerate(rows)]
    both = env.bank.verify(g, "both", [(r["ID"], p, _consent(i)) for i, (r, p) in enumerate(zip(rows, pays))])
    assert both.results == tuple("MATCH" if int(r["AGE"]) > 25 and int(r["PAY_0"]) == p else "NO_MATCH"
                                 for r, p in zip(rows, pays))
    assert both.quota_used == 5 * len(rows) == _quota_used(env, g)


def test_categorical_string_and_float_columns_with_string_ids(env: Env) -> None:
    g = env.grant("licences", ["person_id", "status", "licence_no", "income"], {
        "status": "status == ?", "valid": 'status == "valid"', "licence": "licence_no == ? and status != \"expired\"",
        "income": "|income - ?| <= 2.5%"}, per_entity_limit=4)
    rows = LICENCES[:60]
    claimed = [STATUSES[(i + (i % 2)) % 3] for i in range(len(rows))]
    status = env.bank.verify(g, "status", [(r["person_id"], c, _consent(i)) for i, (r, c) in enumerate(zip(rows, claimed))])
    assert status.results == tuple("MATCH" if r["status"] == c else "NO_MATCH" for r, c in zip(rows, claimed))
    valid = env.bank.verify(g, "valid", [(r["person_id"], [], _consent(i)) for i, r in enumerate(rows)])
    assert valid.results == tuple("MATCH" if r["status"] == "valid" else "NO_MATCH" for r in rows)
    lic = env.bank.verify(g, "licence", [(r["person_id"], r["licence_no"], _consent(i)) for i, r in enumerate(rows)])
    assert lic.results == tuple("MATCH" if r["status"] != "expired" else "NO_MATCH" for r in rows)
    incomes = [float(r["income"]) * (1.02 if i % 2 else 1.04) for i, r in enumerate(rows)]
    inc = env.bank.verify(g, "income", [(r["person_id"], x, _consent(i)) for i, (r, x) in enumerate(zip(rows, incomes))])
    assert inc.results == tuple("MATCH" if i % 2 else "NO_MATCH" for i in range(len(rows)))


# -- what may be asked --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("columns, templates, settings, code", [
    (["person_id", "note"], {"x": "note == ?"}, {}, "COLUMN_CORE"),
    (["person_id", "points"], {"x": "points == ?"}, {}, "COLUMN_NOT_NAMED"),  # sensitive without the setting
    (["person_id", "status"], {"x": 'status != "other"'}, {}, "INVALID_ARGUMENT"),  # not a category
    (["person_id", "income"], {"x": "income >= 0"}, {}, "INVALID_ARGUMENT"),  # holds for everyone: membership only
    (["person_id", "status"], {"x": "person_id == ?"}, {}, "INVALID_ARGUMENT"),  # the identifier is not a condition
    (["person_id"], {"x": "status == ?"}, {}, "INVALID_ARGUMENT"),  # a column the application does not name
    (["person_id", "status"], {"x": "status < ?"}, {}, "INVALID_ARGUMENT"),  # a claim compared with == only
    (["status"], {"x": "status == ?"}, {}, "INVALID_ARGUMENT"),  # the identifier must be named
    (["person_id", "income"], {"x": "|income - ?| <= 5%"}, {"private_mode": True}, "INVALID_ARGUMENT"),  # no equality
    (["person_id", "status"], {"x": "status == ?"}, {"per_entity_limit": 21}, "INVALID_ARGUMENT"),
])
def test_applications_that_ask_too_much_are_refused(env: Env, columns, templates, settings, code) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SandboxClientError) as refused:
        env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION",
                       datasets={"licences": columns}, quota=100,
                       verification={"id_column": "person_id", "templates": templates, **settings})
    assert refused.value.code == code


def test_sensitive_columns_need_the_setting_and_private_mode_a_lower_quota(env: Env) -> None:
    g = env.grant("licences", ["person_id", "points"], {"points": "points == ?"}, allow_sensitive=True)
    assert env.bank.verify(g, "points", [(LICENCES[5]["person_id"], 5, _consent(1))]).results == ("MATCH",)
    with pytest.raises(InvalidArgument, match="at most 20000"):
        env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION",
                       datasets={"licences": ["person_id", "status"]}, quota=20_001,
                       verification={"id_column": "person_id", "templates": {"s": "status == ?"}, "private_mode": True})
    with pytest.raises(InvalidArgument, match="spends no privacy budget"):
        env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION", epsilon=1,
                       datasets={"licences": ["person_id", "status"]}, quota=10,
                       verification={"id_column": "person_id", "templates": {"s": "status == ?"}})


def test_the_grant_pins_the_templates_and_the_review_may_narrow_them(env: Env) -> None:
    s = env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION",
                       datasets={"licences": ["person_id", "status", "licence_no"]}, quota=50,
                       verification={"id_column": "person_id", "per_entity_limit": 5,
                                     "templates": {"status": "status==?", "licence": "licence_no == ?"}})
    assert s.verification is not None and s.verification.template("status") == t.CheckTemplate("status", "status == ?")
    pending = next(p for p in env.admin.pending() if p.id == s.id)
    assert pending.verification is not None and [x.name for x in pending.verification.templates] == ["status", "licence"]
    approved = env.admin.approve(s.id, templates=["status"], per_entity_limit=2)
    assert approved.grant is not None and approved.grant.terms.verification is not None
    terms = approved.grant.terms.verification
    assert [x.name for x in terms.templates] == ["status"] and terms.per_entity_limit == 2
    with pytest.raises(PermissionDenied) as outside:
        env.bank.verify(approved.grant.id, "licence", [(LICENCES[0]["person_id"], "LIC-000000", _consent(1))])
    assert outside.value.code == "OUTSIDE_GRANT" and "status" in str(outside.value)
    # A grant that widens what was asked (a template never applied for) is refused by the server.
    other = env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION",
                           datasets={"licences": ["person_id", "status"]}, quota=50,
                           verification={"id_column": "person_id", "templates": {"status": "status == ?"}})
    terms_pb = env.admin.grant_terms(other.id)
    from protos.sandbox.v1 import common_pb2
    widened = common_pb2.GrantTerms.FromString(terms_pb)
    widened.verification.templates.add(name="extra", expression='status == "valid"')
    widened.verification.reveal_unknown = True
    raw = widened.SerializeToString(deterministic=True)
    with pytest.raises(InvalidArgument) as refused:
        env.admin.approve_terms(other.id, raw, env.admin.transport.key.sign(raw))
    assert refused.value.code == "INVALID_TERMS"


# -- how often, about whom ------------------------------------------------------------------------------------------------

def test_the_quota_counts_checks_and_a_refused_batch_costs_nothing(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"}, quota=10)
    rows = env.credit[:11]
    with pytest.raises(ResourceExhausted) as over:
        env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(i)) for i, r in enumerate(rows)])
    assert over.value.code == "QUOTA_EXHAUSTED" and _quota_used(env, g) == 0
    done = env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(i)) for i, r in enumerate(rows[:10])])
    assert done.results == ("MATCH",) * 10 and (done.quota_used, done.quota_cap) == (10, 10)
    with pytest.raises(ResourceExhausted):
        env.bank.verify(g, "age", [(rows[10]["ID"], rows[10]["AGE"], _consent(10))])


def test_the_per_entity_limit_stops_a_binary_search_through_claims(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "LIMIT_BAL", "AGE"], {"limit": "|LIMIT_BAL - ?| <= 1%", "age": "AGE == ?"})
    person = env.credit[7]["ID"]
    lo, hi = 0.0, 1_000_000.0
    for i in range(3):  # three halvings of the range, as a binary search would ask
        mid = (lo + hi) / 2
        env.bank.verify(g, "limit", [(person, mid, _consent(i))])
        lo, hi = (lo, mid) if i % 2 else (mid, hi)
    with pytest.raises(ResourceExhausted) as limited:  # the fourth check of the person, through any template
        env.bank.verify(g, "age", [(person, env.credit[7]["AGE"], _consent(9))])
    assert limited.value.code == "ENTITY_LIMIT"
    used = _quota_used(env, g)
    # Repeating one person inside a batch counts each time; an unknown id counts too (no membership answer).
    with pytest.raises(ResourceExhausted):
        env.bank.verify(g, "age", [(env.credit[8]["ID"], 30 + k, _consent(k)) for k in range(4)])
    for k in range(3):
        assert env.bank.verify(g, "age", [("29999999", 30 + k, _consent(k))]).results == ("NO_MATCH",)
    with pytest.raises(ResourceExhausted):
        env.bank.verify(g, "age", [("29999999", 40, _consent(5))])
    assert _quota_used(env, g) == used + 3
    assert env.bank.verify(g, "age", [(env.credit[8]["ID"], env.credit[8]["AGE"], _consent(1))]).results == ("MATCH",)


def test_unknown_ids_look_like_false_claims_unless_the_grant_says_otherwise(env: Env) -> None:
    items = [("99999901", "30", _consent(1)), (env.credit[0]["ID"], "99", _consent(2)),
             (env.credit[1]["ID"], env.credit[1]["AGE"], _consent(3))]
    hidden = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    assert env.bank.verify(hidden, "age", items).results == ("NO_MATCH", "NO_MATCH", "MATCH")
    shown = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"}, reveal_unknown=True)
    assert env.bank.verify(shown, "age", items).results == ("UNKNOWN_ENTITY", "NO_MATCH", "MATCH")


def test_every_check_of_a_person_needs_a_consent_reference(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    r = env.credit[3]
    with pytest.raises(InvalidArgument) as missing:
        env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(1)), (env.credit[4]["ID"], "30", "")])
    assert missing.value.code == "CONSENT_REQUIRED" and "1 of the 2" in str(missing.value)
    with pytest.raises(InvalidArgument) as malformed:
        env.bank.verify(g, "age", [(r["ID"], r["AGE"], "AUTH 1; DROP")])
    assert malformed.value.code == "INVALID_ARGUMENT"
    assert _quota_used(env, g) == 0
    env.bank.verify(g, "age", [(r["ID"], r["AGE"], "AUTH-2026-000777")])
    entry = list(env.admin.audit_entries(method="Verify", grant_id=g))[-1]
    doc = json.loads(entry.request)
    assert doc["consents"] == 1 and doc["items"] == 1
    assert set(doc) == {"grant_id", "template", "items", "consents", "items_sha256"}  # counts and a digest only
    assert "AUTH-2026-000777" not in entry.request
    assert doc["items_sha256"] == wv.batch_digest([(r["ID"], [r["AGE"]], "AUTH-2026-000777")])


@pytest.mark.parametrize("template, claim, entity, why", [
    ("age", "thirty", None, "must be an integer"),
    ("age", "30.5", None, "must be an integer"),
    ("age", "17", None, "outside its declared bounds"),
    ("age", "101", None, "outside its declared bounds"),
    ("age", "30", "ID-12", "whole numbers"),
    ("age", "30", "1" * 19, "whole numbers"),
    ("age", ["30", "31"], None, "takes 1 claimed value"),
    ("status", "revoked", "P0000-00000", "not a category"),
])
def test_bad_claims_and_ids_are_refused_clearly_and_charge_nothing(env: Env, template, claim, entity, why) -> None:  # type: ignore[no-untyped-def]
    if template == "status":
        g = env.grant("licences", ["person_id", "status"], {"status": "status == ?"})
    else:
        g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    with pytest.raises(InvalidArgument, match=why):
        env.bank.verify(g, template, [(entity or env.credit[0]["ID"], claim, _consent(1))])
    assert _quota_used(env, g) == 0
    assert env.bank.whoami().id == env.bank.principal_id  # the server keeps serving


def test_an_empty_batch_and_an_oversized_one_are_refused_by_the_server(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"}, quota=20_000)
    with pytest.raises(InvalidArgument, match="1 to 10000 items"):
        env.bank.transport.call(VERIFY + "Verify", verify_pb2.VerifyRequest(grant_id=g, template="age"),
                                verify_pb2.VerifyResponse)
    items = [verify_pb2.VerifyItem(entity_id=str(i + 1), claim=["30"], consent_ref=_consent(i)) for i in range(10_001)]
    with pytest.raises(InvalidArgument, match="1 to 10000 items"):
        env.bank.transport.call(VERIFY + "Verify", verify_pb2.VerifyRequest(grant_id=g, template="age", items=items),
                                verify_pb2.VerifyResponse, timeout=60)
    assert _quota_used(env, g) == 0


def test_revocation_and_other_callers_are_refused_at_once(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    item = [(env.credit[0]["ID"], env.credit[0]["AGE"], _consent(1))]
    assert env.bank.verify(g, "age", item).results == ("MATCH",)
    other = enrol_client(env.admin, env.sbx, ApplicantClient, "Other bank", ["applicant"])
    with pytest.raises(PermissionDenied) as stranger:
        other.verify(g, "age", item)
    assert stranger.value.code == "NOT_GRANTEE"
    scenario = next(s for s in env.bank.scenarios() if s.grant is not None and s.grant.id == g)
    env.admin.revoke(g, "consent withdrawn")
    with pytest.raises(PermissionDenied) as revoked:
        env.bank.verify(g, "age", item)
    assert revoked.value.code == "GRANT_REVOKED" and scenario.status == "approved"
    other.close()


def test_a_steward_co_signs_verification_grants_where_the_dataset_asks(env: Env) -> None:
    steward = enrol_client(env.admin, env.sbx, StewardClient, "Licence office", ["steward"])
    env.admin.set_stewardship("licences", owner="Transport Bureau", stewards=[steward.principal_id], policy="always")
    try:
        s = env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION",
                           datasets={"licences": ["person_id", "status"]}, quota=10,
                           verification={"id_column": "person_id", "templates": {"status": "status == ?"}})
        queued = next(x for x in steward.steward_scenarios() if x.id == s.id)
        assert queued.verification is not None and queued.verification.templates[0].expression == "status == ?"
        g = env.admin.approve(s.id).grant
        assert g is not None
        with pytest.raises(FailedPrecondition):
            env.bank.verify(g.id, "status", [(LICENCES[0]["person_id"], "valid", _consent(1))])
        steward.cosign(g.id)
        assert env.bank.verify(g.id, "status", [(LICENCES[0]["person_id"], "valid", _consent(1))]).results == ("MATCH",)
    finally:
        env.admin.set_stewardship("licences", owner="Transport Bureau", stewards=[steward.principal_id],
                                  policy="never")
        steward.close()


# -- certificates ------------------------------------------------------------------------------------------------------

def _published_key(env: Env) -> bytes:
    from sandbox.config import load_config
    from wire.keys import read_public_key

    return read_public_key(load_config(env.data_dir, flags={}, environ={}).audit_public_key)


def test_a_certificate_verifies_offline_and_online_and_an_edited_one_fails(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    r = env.credit[11]
    result = env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(11)), (env.credit[12]["ID"], "99", _consent(12))],
                             certificates=True)
    assert result.results == ("MATCH", "NO_MATCH") and len(result.certificates) == 2
    cert = result.certificates[0]
    key = _published_key(env)
    assert cert.audit_public_key == key and cert.result == "MATCH"
    doc = cert.document
    assert doc["grant_id"] == g and doc["template"] == "age" and doc["expression"] == "AGE == ?"
    assert r["ID"] not in {str(v) for v in doc.values()} and _consent(11) not in json.dumps(doc)  # digests only
    import hashlib
    assert doc["entity_sha256"] != hashlib.sha256(r["ID"].encode()).hexdigest()  # salted: not a lookup table
    text = cert.to_file()

    offline = vf.certificate_check(text, key, entity_id=r["ID"], claim=r["AGE"], consent_ref=_consent(11))
    assert offline.valid, offline.problems
    assert not vf.certificate_check(text, key, entity_id=env.credit[12]["ID"]).valid  # about another person
    assert not vf.certificate_check(text, key, claim="99").valid  # about another claim

    online = env.bank.check_certificate(text, audit_public_key=key)
    assert online.valid, online.problems
    assert online.entry is not None and online.entry.seq == cert.audit_seq and online.entry.grant_id == g
    assert online.head is not None and online.head.size >= cert.audit_seq

    # A third party (any enrolled principal) can check it online too.
    third = enrol_client(env.admin, env.sbx, ApplicantClient, "Landlord", ["applicant"])
    assert third.check_certificate(text, audit_public_key=key).valid
    third.close()

    edited = json.loads(text)
    edited["certificate"]["result"] = "MATCH" if cert.result == "NO_MATCH" else "NO_MATCH"
    forged = json.dumps(edited)
    assert "signature does not verify" in vf.certificate_check(forged, key).problems[0]
    assert not env.bank.check_certificate(forged, audit_public_key=key).valid
    flipped = json.loads(result.certificates[1].to_file())
    flipped["certificate"]["result"] = "MATCH"
    assert not vf.certificate_check(json.dumps(flipped), key).valid

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    wrong = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not vf.certificate_check(text, wrong).valid
    assert not env.bank.check_certificate(text, audit_public_key=wrong).valid


def test_the_server_refuses_to_prove_a_certificate_it_did_not_sign(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    r = env.credit[20]
    cert = env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(20))], certificates=True).certificates[0]
    doc = cert.document
    doc["audit_seq"] = 1  # points the certificate at another entry: the signature no longer covers it
    body = wv.certificate_json(doc)
    with pytest.raises(InvalidArgument) as refused:
        env.bank.transport.call(VERIFY + "CheckCertificate", verify_pb2.CheckCertificateRequest(
            certificate=verify_pb2.Certificate(json=body, signature=cert.signature)), verify_pb2.VerifyResponse)
    assert refused.value.code == "CERTIFICATE_INVALID"
    # Signed by another key over the same bytes: refused as well.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    other = Ed25519PrivateKey.generate().sign(wv.certificate_payload(cert.json))
    with pytest.raises(InvalidArgument):
        env.bank.transport.call(VERIFY + "CheckCertificate", verify_pb2.CheckCertificateRequest(
            certificate=verify_pb2.Certificate(json=cert.json, signature=other)), verify_pb2.VerifyResponse)


# -- private mode ---------------------------------------------------------------------------------------------------------

def test_private_mode_answers_as_plain_mode_and_the_server_keeps_no_id_or_claim(
    env: Env, caplog: pytest.LogCaptureFixture,
) -> None:
    g = env.grant("licences", ["person_id", "licence_no", "status"],
                  {"licence": "licence_no == ?", "both": "licence_no == ? and status == ?"}, quota=2000, private_mode=True)
    rows = LICENCES[100:160]
    fresh = [f"Q{i:04d}-ZZ{i:03d}" for i in range(10)]  # ids the server never held: only this test knows them
    claims = [r["licence_no"] if i % 3 else f"LIC-FAKE{i:03d}" for i, r in enumerate(rows)]
    items = [(r["person_id"], c, _consent(i)) for i, (r, c) in enumerate(zip(rows, claims))]
    items += [(e, f"LIC-NONE{i:03d}", _consent(90 + i)) for i, e in enumerate(fresh)]
    caplog.set_level(logging.DEBUG)
    private = env.bank.verify(g, "licence", items, private=True)
    plain = env.bank.verify(g, "licence", items)
    assert private.private and private.results == plain.results
    assert private.results.count("MATCH") == sum(1 for i in range(len(rows)) if i % 3) and private.quota_used == 70
    pairs = [(r["person_id"], [r["licence_no"], r["status"]], _consent(i)) for i, r in enumerate(rows[:20])]
    pairs[0] = (pairs[0][0], [pairs[0][1][0], "expired" if pairs[0][1][1] != "expired" else "valid"], pairs[0][2])
    two = env.bank.verify(g, "both", pairs, private=True)
    assert two.results == env.bank.verify(g, "both", pairs).results and two.results[0] == "NO_MATCH"

    sent: list[bytes] = []
    invoke = env.bank.transport.invoke_raw

    def spy(method, body, *args, **kw):  # type: ignore[no-untyped-def]
        sent.append(body)
        return invoke(method, body, *args, **kw)

    env.bank.transport.invoke_raw = spy  # type: ignore[method-assign]
    try:
        secret = env.bank.verify(g, "licence", [(e, f"LIC-HIDDEN{i}", _consent(i)) for i, e in enumerate(fresh)],
                                 private=True)
    finally:
        env.bank.transport.invoke_raw = invoke  # type: ignore[method-assign]
    assert sent and all(s.encode() not in body for body in sent for s in fresh)  # never sent at all
    assert all(b"LIC-HIDDEN" not in body for body in sent)
    assert secret.results == ("NO_MATCH",) * len(fresh)
    leaked = [s for s in [*fresh, *(f"LIC-HIDDEN{i}" for i in range(len(fresh)))]
              if any(s in rec.getMessage() for rec in caplog.records)]
    assert leaked == []
    assert any("VerifyPrivate" in rec.getMessage() for rec in caplog.records)  # the server's log was captured
    for entry in env.admin.audit_entries(method="VerifyPrivate", grant_id=g):
        assert all(s not in entry.request for s in fresh) and "LIC-HIDDEN" not in entry.request
        assert json.loads(entry.request).get("points") in (len(items), 20, len(fresh))
    stored = b"".join(p.read_bytes() for p in env.data_dir.rglob("*") if p.is_file())
    assert all(s.encode() not in stored for s in [*fresh, *(f"LIC-HIDDEN{i}" for i in range(len(fresh)))])
    # The plain-mode batch above did put those ids in front of the server; a private id that never went through
    # plain mode is in no file at all (checked for 'LIC-HIDDEN*' above, and for ids below).
    assert b"Q0000-ZZ000" not in b"".join(e.request.encode() for e in env.admin.audit_entries(grant_id=g))


def test_private_mode_refuses_malformed_points_and_other_templates(env: Env) -> None:
    g = env.grant("licences", ["person_id", "licence_no", "income"],
                  {"licence": "licence_no == ?", "income": "|income - ?| <= 5%"}, quota=100, private_mode=True)
    good = wv.raise_to(wv.random_scalar(), [wv.to_point(b"\x01" * 64)])[0]

    def send(points: list[bytes], refs: list[str] | None = None, template: str = "licence") -> None:
        env.bank.transport.call(VERIFY + "VerifyPrivate", verify_pb2.VerifyPrivateRequest(
            grant_id=g, template=template, blinded=points,
            consent_refs=[_consent(i) for i in range(len(points))] if refs is None else refs),
            verify_pb2.VerifyPrivateResponse)

    for bad in (b"", b"\x00" * 32, good[:31], good + b"\x00", b"\xff" * 32, bytes(range(32))):
        with pytest.raises(InvalidArgument, match="not a valid Ristretto255"):
            send([good, bad])
    with pytest.raises(InvalidArgument, match="1 to 10000"):
        send([])
    with pytest.raises(InvalidArgument) as consent:
        send([good], refs=[])
    assert consent.value.code == "CONSENT_REQUIRED"
    with pytest.raises(PermissionDenied, match="not an equality template"):
        send([good], template="income")
    with pytest.raises(InvalidArgument, match="no certificates"):
        env.bank.verify(g, "licence", [(LICENCES[0]["person_id"], "x", _consent(1))], private=True, certificates=True)
    assert _quota_used(env, g) == 0
    send([good])  # the server keeps serving
    assert _quota_used(env, g) == 1
    plain_only = env.grant("licences", ["person_id", "licence_no"], {"licence": "licence_no == ?"})
    with pytest.raises(PermissionDenied, match="private mode"):
        env.bank.transport.call(VERIFY + "GetPrivateSet", verify_pb2.GetPrivateSetRequest(
            grant_id=plain_only, template="licence"), verify_pb2.GetPrivateSetResponse)


def test_the_private_set_hides_the_row_count_and_is_the_same_each_time(env: Env) -> None:
    g = env.grant("licences", ["person_id", "licence_no"], {"licence": "licence_no == ?"}, quota=100, private_mode=True)
    call = lambda: env.bank.transport.call(VERIFY + "GetPrivateSet", verify_pb2.GetPrivateSetRequest(  # noqa: E731
        grant_id=g, template="licence"), verify_pb2.GetPrivateSetResponse)
    first, second = call(), call()
    assert first.points == second.points and first.size == len(first.points) // 32 == 4096  # 300 rows, padded
    points = [first.points[i:i + 32] for i in range(0, len(first.points), 32)]
    assert points == sorted(points) and len(set(points)) == len(points) and all(wv.valid_point(p) for p in points)
    assert _quota_used(env, g) == 0  # the set is free: it is the same for every call


def test_arbitrary_items_get_an_answer_or_a_clear_refusal_never_internal(env: Env) -> None:
    """Random ids, claims and consent references (hypothesis) against a real grant of each column type."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from clients.errors import InternalServerError

    g = env.grant("licences", ["person_id", "status", "income", "licence_no"],
                  {"status": "status == ?", "both": "licence_no == ? and |income - ?| <= 1%"}, quota=100_000,
                  per_entity_limit=20)
    text = st.text(max_size=80)

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.sampled_from(["status", "both", "nope", ""]),
           st.lists(st.tuples(text, st.lists(text, max_size=3), text), max_size=5))
    def run(template: str, items: list[tuple[str, list[str], str]]) -> None:
        req = verify_pb2.VerifyRequest(grant_id=g, template=template, items=[
            verify_pb2.VerifyItem(entity_id=e, claim=c, consent_ref=r) for e, c, r in items])
        try:
            env.bank.transport.call(VERIFY + "Verify", req, verify_pb2.VerifyResponse)
        except InternalServerError:
            raise
        except SandboxClientError as exc:
            assert exc.status in ("INVALID_ARGUMENT", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"), exc

    run()
    assert env.bank.whoami().id == env.bank.principal_id


def test_a_wrong_inclusion_proof_or_another_batchs_entry_is_caught_by_the_holder(env: Env) -> None:
    from clients.client import _certificate_inclusion
    from protos.sandbox.v1 import audit_pb2

    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    r = env.credit[30]
    cert = env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(30))], certificates=True).certificates[0]
    key = _published_key(env)
    assert env.bank.check_certificate(cert, audit_public_key=key).valid  # waits for a head that covers the entry
    resp = env.bank.transport.call(VERIFY + "CheckCertificate", verify_pb2.CheckCertificateRequest(
        certificate=verify_pb2.Certificate(json=cert.json, signature=cert.signature)), audit_pb2.GetReceiptResponse)
    assert _certificate_inclusion(resp, cert.document, key)[0] == []
    bent = audit_pb2.GetReceiptResponse.FromString(resp.SerializeToString())
    if bent.inclusion.path:
        bent.inclusion.path[0] = bytes(32)
    else:  # a one-entry tree has no path: claim a sibling that is not there
        bent.inclusion.path.append(bytes(32))
    assert "the inclusion proof does not lead to the signed head" in _certificate_inclusion(bent, cert.document, key)[0]
    other = dict(cert.document, batch_sha256="00" * 32)
    assert _certificate_inclusion(resp, other, key)[0] == ["the log's entry records another batch"]
    moved = audit_pb2.GetReceiptResponse.FromString(resp.SerializeToString())
    moved.entry.request = moved.entry.request.replace('"items":1', '"items":2')
    assert "the entry's hash does not match its fields" in _certificate_inclusion(moved, cert.document, key)[0]


def test_granted_settings_must_stand_on_their_own(env: Env) -> None:
    """Terms that keep a sensitive template but drop the setting that allows it, or drop a template's column."""
    from protos.sandbox.v1 import common_pb2

    s = env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION",
                       datasets={"licences": ["person_id", "points", "status"]}, quota=50,
                       verification={"id_column": "person_id", "allow_sensitive": True,
                                     "templates": {"points": "points == ?", "status": "status == ?"}})
    for edit, why in ((lambda v, d: setattr(v, "allow_sensitive", False), "sensitive column"),
                      (lambda v, d: d.columns.remove("status"), "must keep what the templates read")):
        terms = common_pb2.GrantTerms.FromString(env.admin.grant_terms(s.id))
        edit(terms.verification, terms.datasets[0])
        raw = terms.SerializeToString(deterministic=True)
        with pytest.raises(InvalidArgument, match=why) as refused:
            env.admin.approve_terms(s.id, raw, env.admin.transport.key.sign(raw))
        assert refused.value.code == "INVALID_TERMS"
    assert env.admin.approve(s.id, templates=["status"]).grant is not None  # dropping the template itself is fine


def test_a_refused_later_batch_keeps_the_charged_answers_and_flags_can_be_switched_off(env: Env) -> None:
    s = env.bank.apply(title="Checks", purpose="Verify", legal_basis="PIPL", kind="VERIFICATION",
                       datasets={"credit_default": ["ID", "AGE"]}, quota=10_005,
                       verification={"id_column": "ID", "templates": {"age": "AGE == ?"}, "reveal_unknown": True})
    approved = env.admin.approve(s.id, reveal_unknown=False)
    assert approved.grant is not None and approved.grant.terms.verification is not None
    assert approved.grant.terms.verification.reveal_unknown is False
    g = approved.grant.id
    assert env.bank.verify(g, "age", [("99999901", 30, _consent(1))]).results == ("NO_MATCH",)  # switched off
    items = [(str(i + 1), 30, _consent(i)) for i in range(10_010)]  # the second batch passes the quota
    with pytest.raises(ResourceExhausted) as refused:
        env.bank.verify(g, "age", items)
    partial = refused.value.partial
    assert partial is not None and len(partial.results) == 10_000 and partial.quota_used == 10_001
    assert _quota_used(env, g) == 10_001


def test_the_response_hash_on_the_record_cannot_be_matched_against_guessed_results(env: Env) -> None:
    """A reader of the log sees each answer's SHA-256: a one-item batch must not be decidable by hashing the two
    possible answers."""
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    r = env.credit[40]
    env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(40))])
    entry = [e for e in env.admin.audit_entries(method="Verify", grant_id=g) if e.status == "OK"][-1]
    import hashlib
    for result in (verify_pb2.MATCH, verify_pb2.NO_MATCH):
        for used in range(0, 3):
            guess = verify_pb2.VerifyResponse(results=[result], quota_used=used, quota_cap=1000,
                                              audit_public_key=_published_key(env))
            assert hashlib.sha256(guess.SerializeToString()).hexdigest() != entry.response_sha256


def test_a_certificate_names_the_person_however_the_integer_id_was_written(env: Env) -> None:
    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    r = env.credit[41]
    cert = env.bank.verify(g, "age", [("00" + r["ID"], r["AGE"], _consent(41))], certificates=True).certificates[0]
    key = _published_key(env)
    assert vf.certificate_check(cert, key, entity_id=r["ID"]).valid
    assert vf.certificate_check(cert, key, entity_id="0" + r["ID"]).valid
    assert not vf.certificate_check(cert, key, entity_id=env.credit[42]["ID"]).valid
    again = env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(41))], certificates=True).certificates[0]
    assert vf.certificate_check(again, key, entity_id=r["ID"], claim=r["AGE"], consent_ref=_consent(41)).valid
    for field in ("entity_sha256", "claim_sha256", "consent_sha256"):  # salted: two certificates do not link
        assert again.document[field] != cert.document[field]


def test_a_batch_is_read_once_before_the_write_lock(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The items are read in the warm-up (outside the write lock) and the handler takes that reading; a bad batch
    is still refused by the handler with its reason."""
    from sandbox import verification

    g = env.grant("credit_default", ["ID", "AGE"], {"age": "AGE == ?"})
    reads: list[int] = []
    real = verification._read_items

    def counted(*args, **kw):  # type: ignore[no-untyped-def]
        reads.append(len(args[-1].items))
        return real(*args, **kw)

    monkeypatch.setattr(verification, "_read_items", counted)
    rows = env.credit[50:60]
    result = env.bank.verify(g, "age", [(r["ID"], r["AGE"], _consent(i)) for i, r in enumerate(rows)])
    assert result.results == ("MATCH",) * 10 and reads == [10]
    with pytest.raises(InvalidArgument, match="outside its declared bounds"):
        env.bank.verify(g, "age", [(rows[0]["ID"], 150, _consent(1))])
    assert reads == [10, 1, 1]  # the warm-up gave up; the handler read it again and said why
    assert _quota_used(env, g) == 10
