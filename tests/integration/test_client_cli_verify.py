"""``sandbox-client verify``, ``verify-certificate``, ``apply --file`` with ``[verification]`` and the review of a
verification scenario, against a real TLS server (in-process through typer's CliRunner, keys made by ``keygen``)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients import ApplicantClient
from clients.signing import load_key
from tests.conftest import ROOT, Sandbox
from tests.integration.test_client_cli import Run, enrolled, found, invoke, no_traceback, run  # noqa: F401 (fixture)
from tests.integration.test_client_cli_compute import imported, one_line_refusal
from tests.integration.test_he_integration import credit_rows

EXAMPLE = ROOT / "examples" / "application-verify.toml"
CERT_NAME = re.compile(r"^cert-(\d+)-(\d+)\.json$")


@dataclass(frozen=True)
class Granted:
    bank: Path  # the applicant's key
    scenario: str
    grant: str
    audit_key: Path  # the sandbox's published audit public key (sandbox init wrote it)


def apply_file(run: Run, bank: Path, path: Path) -> str:
    r = run("apply", "--file", path, key=bank)
    assert r.exit_code == 0, r.output
    return found(r"applied: (s-[0-9a-f]+)\s+status pending", r.output).group(1)


def approve(run: Run, scenario: str, *narrowing: str) -> str:
    r = run("approve", scenario, *narrowing)
    assert r.exit_code == 0, r.output
    return found(r"grant (g-[0-9a-f]+): VERIFICATION", r.output).group(1)


@pytest.fixture()
def granted(run: Run, sandbox: Sandbox, tmp_path: Path) -> Granted:  # noqa: F811
    """The bank applied with the example TOML; the administrator granted it as applied for."""
    imported(run, "credit_default")
    bank = enrolled(run, tmp_path, "Bank")
    scenario = apply_file(run, bank, EXAMPLE)
    return Granted(bank, scenario, approve(run, scenario), sandbox.data_dir / "keys" / "audit_signing.pub")


def write_claims(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def age_claims(n: int) -> tuple[list[list[str]], list[str]]:
    """``n`` real card holders spread over the file, out of file order; every 4th declares an age 3 years off.
    Rows are (entity_id, consent_ref, claim); with the results the true ages give."""
    picked = credit_rows()[::997][:n][::-1]
    rows, expected = [], []
    for i, r in enumerate(picked):
        false = i % 4 == 3
        rows.append([r["ID"], f"AUTH-2026-{i:06d}", str(int(r["AGE"]) + (3 if false else 0))])
        expected.append("NO_MATCH" if false else "MATCH")
    return rows, expected


def verify_entries(sandbox: Sandbox) -> int:
    """How many audit entries Verify calls left (every call that reaches a handler, allowed or refused, has one)."""
    with sandbox.admin() as admin:
        return len(list(admin.audit_entries(method="Verify")))


# --- apply and review ------------------------------------------------------------------------------------------


def test_the_example_application_is_reviewed_with_its_templates_and_narrowed_on_approval(
        run: Run, sandbox: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    imported(run, "credit_default")
    bank = enrolled(run, tmp_path, "Bank")
    scenario = apply_file(run, bank, EXAMPLE)
    review = run("pending")
    assert review.exit_code == 0, review.output
    found(r"kind\s+│\s+VERIFICATION", review.output)
    found(r"entities by ID; at most 3 check\(s\) of one entity per grant", review.output)
    found(r"age: AGE == \?\s+\(AGE equals the claimed value\)", review.output)
    found(r"repaid: PAY_0 == \?\s+\(PAY_0 equals the claimed value\)", review.output)
    found(r"over_25: AGE >= 25\s+\(fixed: AGE >= 25\)", review.output)
    found(r"unknown ids: answered NO_MATCH", review.output)
    found(r"private mode: no", review.output)
    [pending] = json.loads(run("pending", "--json").output)
    assert pending["verification"]["templates"] == [{"name": "age", "expression": "AGE == ?"},
                                                    {"name": "repaid", "expression": "PAY_0 == ?"},
                                                    {"name": "over_25", "expression": "AGE >= 25"}]

    r = run("approve", scenario, "--template", "age", "--template", "nosuch")  # not applied for: nothing signed
    assert r.exit_code == 1 and "nosuch" in r.output, r.output
    r = run("approve", scenario, "--template", "age", "--template", "repaid", "--per-entity-limit", "2")
    assert r.exit_code == 0, r.output
    found(r"checks: age \(AGE == \?\), repaid \(PAY_0 == \?\); at most 2 check\(s\) of one entity", r.output)
    status = run("status", scenario, key=bank)
    assert status.exit_code == 0, status.output
    granted_rows = status.output[status.output.index("granted checks (pinned)"):]
    found(r"at most 2 check\(s\) of one entity", granted_rows)
    assert "age: AGE == ?" in granted_rows and "over_25" not in granted_rows.split("approved by")[0]
    found(r"signature\s+│\s+verified against the administrators' keys", status.output)


def test_a_verification_table_with_wrong_types_or_kind_is_a_usage_error(run: Run, sandbox: Sandbox,
                                                                         tmp_path: Path) -> None:  # noqa: F811
    bank = enrolled(run, tmp_path, "Bank")
    text = EXAMPLE.read_text(encoding="utf-8")
    quoted = tmp_path / "quoted.toml"  # "false" as a string must not turn private mode on
    quoted.write_text(text.replace("private_mode = false", 'private_mode = "false"'), encoding="utf-8")
    r = run("apply", "--file", quoted, key=bank)
    assert r.exit_code == 2 and "[verification] private_mode must be true or false" in r.output, r.output
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(text.replace("reveal_unknown = false", "reveal_unkown = true"), encoding="utf-8")
    r = run("apply", "--file", unknown, key=bank)
    assert r.exit_code == 2 and "[verification] takes only" in r.output, r.output
    r = run("apply", "--file", EXAMPLE, "--kind", "DP_QUERY", key=bank)
    assert r.exit_code == 2 and "needs a [verification] table, and only it takes one" in r.output, r.output
    with ApplicantClient(sandbox.address, key=load_key(bank), ca=sandbox.ca) as client:
        assert client.scenarios() == []  # nothing reached the server


# --- verify ----------------------------------------------------------------------------------------------------


def test_verify_writes_one_result_per_claim_in_order_with_a_certificate_each(
        run: Run, sandbox: Sandbox, granted: Granted, tmp_path: Path) -> None:  # noqa: F811
    rows, expected = age_claims(20)
    rows.append(["99999999", "AUTH-2026-999999", "40"])  # not a card holder: NO_MATCH, like a false claim
    expected.append("NO_MATCH")
    claims = write_claims(tmp_path / "claims.csv", ["consent_ref", "claim", "entity_id"],  # any column order
                          [[c, v, e] for e, c, v in rows])
    out, certs = tmp_path / "results.csv", tmp_path / "certs"
    r = run("verify", "--grant", granted.grant, "--template", "age", "--claims", claims, "-o", out,
            "--certificates", certs, key=granted.bank)
    assert r.exit_code == 0, r.output
    matches = expected.count("MATCH")
    found(rf"checked 21 claim\(s\) through 'age' \(AGE == \?\): {matches} MATCH, {21 - matches} NO_MATCH", r.output)
    found(rf"quota used 21 / 5000; results in .*results.csv; 21 certificate\(s\) in .*certs", r.output)

    written = read_csv(out)
    assert [list(w) for w in written] == [["entity_id", "result", "certificate"]] * 21
    assert [w["entity_id"] for w in written] == [e for e, _, _ in rows]
    assert [w["result"] for w in written] == expected
    names = [w["certificate"] for w in written]
    assert sorted(p.name for p in certs.iterdir()) == sorted(names)
    assert [int(CERT_NAME.match(n).group(2)) for n in names] == list(range(1, 22))  # type: ignore[union-attr]
    assert len({CERT_NAME.match(n).group(1) for n in names}) == 1  # type: ignore[union-attr]  (one call's entry)
    for w, (entity, consent, claim) in zip(written, rows):
        doc = json.loads((certs / w["certificate"]).read_text())["certificate"]
        assert doc["result"] == w["result"] and doc["template"] == "age"
        assert not {entity, consent, claim} & {v for v in doc.values() if isinstance(v, str)}  # salted digests only
    assert "AUTH-2026" not in "".join(p.read_text() for p in certs.iterdir())

    pay = write_claims(tmp_path / "pay.csv", ["entity_id", "consent_ref", "claim"], [[rows[0][0], "AUTH-1", "9"]])
    again = run("verify", "--grant", granted.grant, "--template", "repaid", "--claims", pay, "-o",
                tmp_path / "pay.csv.out", "--json", key=granted.bank)
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["checked"] == 1 and summary["quota_used"] == 22 and summary["private"] is False
    assert summary["results"]["MATCH"] + summary["results"]["NO_MATCH"] == 1 and summary["certificates"] == []


def test_a_template_outside_the_grant_and_a_bad_claims_file_are_refused_before_anything_is_sent(
        run: Run, sandbox: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    imported(run, "credit_default")
    bank = enrolled(run, tmp_path, "Bank")
    grant = approve(run, apply_file(run, bank, EXAMPLE), "--template", "age", "--template", "repaid")
    rows, _ = age_claims(3)
    claims = write_claims(tmp_path / "claims.csv", ["entity_id", "consent_ref", "claim"], rows)
    out = tmp_path / "results.csv"

    r = run("verify", "--grant", grant, "--template", "over_25", "--claims", claims, "-o", out, key=bank)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"refused: template 'over_25' is not in grant {grant}; it allows age (AGE == ?), "
                               "repaid (PAY_0 == ?)"), r.output
    no_traceback(r)
    r = run("verify", "--grant", "g-" + "0" * 32, "--template", "age", "--claims", claims, "-o", out, key=bank)
    assert r.exit_code == 1 and "no grant of yours has the id" in r.output, r.output

    two = write_claims(tmp_path / "two.csv", ["entity_id", "consent_ref", "claim1"], rows)  # made for another template
    r = run("verify", "--grant", grant, "--template", "age", "--claims", two, "-o", out, key=bank)
    assert r.exit_code == 2, r.output
    assert "needs the header entity_id,consent_ref,claim" in r.output and "unexpected claim1" in r.output, r.output
    unconsented = write_claims(tmp_path / "noconsent.csv", ["entity_id", "consent_ref", "claim"],
                               [rows[0], [rows[1][0], "", rows[1][2]]])
    r = run("verify", "--grant", grant, "--template", "age", "--claims", unconsented, "-o", out, key=bank)
    assert r.exit_code == 2 and "line 3: no consent_ref" in r.output, r.output
    for bad_out in (tmp_path / "missing" / "results.csv", tmp_path, claims):
        r = run("verify", "--grant", grant, "--template", "age", "--claims", claims, "-o", bad_out, key=bank)
        assert r.exit_code == 2 and "--out" in r.output, r.output
    r = run("verify", "--grant", grant, "--template", "age", "--claims", claims, "-o", out, "--private",
            "--certificates", tmp_path / "c", key=bank)
    assert r.exit_code == 2 and "private mode issues no certificates" in r.output, r.output
    assert verify_entries(sandbox) == 0 and not out.exists()

    r = run("verify", "--grant", grant, "--template", "age", "--claims", claims, "-o", out, key=bank)
    assert r.exit_code == 0 and verify_entries(sandbox) > 0, r.output  # the same files, now right, are sent


def test_the_per_entity_limit_refuses_a_fourth_check_of_one_person_in_one_line(
        run: Run, sandbox: Sandbox, granted: Granted, tmp_path: Path) -> None:  # noqa: F811
    person = credit_rows()[123]
    out = tmp_path / "results.csv"
    guesses = [g for g in ("-2", "-1", "0", "1", "2") if g != person["PAY_0"]]
    for n, guess in enumerate(guesses[:4], start=1):  # guessing a person's repayment status value by value
        claims = write_claims(tmp_path / f"guess{n}.csv", ["entity_id", "consent_ref", "claim"],
                              [[person["ID"], f"AUTH-2026-{n:06d}", guess]])
        r = run("verify", "--grant", granted.grant, "--template", "repaid", "--claims", claims, "-o", out,
                key=granted.bank)
        if n <= 3:
            assert r.exit_code == 0 and "0 MATCH, 1 NO_MATCH" in r.output, r.output
    one_line_refusal(r, "RESOURCE_EXHAUSTED")
    assert r.output.rstrip().endswith("[ENTITY_LIMIT]"), r.output
    assert read_csv(out) == [{"entity_id": person["ID"], "result": "NO_MATCH"}]  # the third answer, untouched


def test_a_refusal_after_the_first_batch_keeps_the_answers_already_given(
        run: Run, sandbox: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    """10,010 claims go in two calls (10,000 a call); a quota of 10,005 lets the first through and refuses the
    second: the 10,000 answers the bank was charged for are written, and the command says what happened."""
    imported(run, "credit_default")
    bank = enrolled(run, tmp_path, "Bank")
    toml = tmp_path / "big.toml"
    toml.write_text(EXAMPLE.read_text(encoding="utf-8").replace("quota = 5000", "quota = 10005"), encoding="utf-8")
    grant = approve(run, apply_file(run, bank, toml))
    people = credit_rows()[:10_010]
    claims = write_claims(tmp_path / "claims.csv", ["entity_id", "consent_ref", "claim"],
                          [[p["ID"], f"AUTH-2026-{i:06d}", p["AGE"]] for i, p in enumerate(people)])
    out = tmp_path / "results.csv"
    r = run("verify", "--grant", grant, "--template", "age", "--claims", claims, "-o", out, key=bank)
    assert r.exit_code == 1, r.output
    found(r"checked 10000 claim\(s\) through 'age' \(AGE == \?\): 10000 MATCH, 0 NO_MATCH", r.output)
    found(r"refused \(RESOURCE_EXHAUSTED\): .*; the first 10000 of 10010 results were written", r.output)
    written = read_csv(out)
    assert [w["entity_id"] for w in written] == [p["ID"] for p in people[:10_000]]
    assert {w["result"] for w in written} == {"MATCH"}


def test_private_mode_from_the_command_line_answers_as_the_plain_mode_does(
        run: Run, sandbox: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    imported(run, "credit_default")
    bank = enrolled(run, tmp_path, "Bank")
    toml = tmp_path / "private.toml"
    toml.write_text(EXAMPLE.read_text(encoding="utf-8").replace("private_mode = false", "private_mode = true")
                    .replace('over_25 = "AGE >= 25"', 'both = "AGE == ? and PAY_0 == ?"'), encoding="utf-8")
    scenario = apply_file(run, bank, toml)
    found(r"both: AGE == \? and PAY_0 == \?\s+\(AGE equals the claimed value; PAY_0 equals the claimed value\)",
          run("pending").output)
    found(r"private mode: allowed", run("pending").output)
    grant = approve(run, scenario)
    picked = credit_rows()[::1499][:12]
    rows = [[p["ID"], f"AUTH-2026-{i:06d}", p["AGE"], str(int(p["PAY_0"]) + (1 if i % 3 == 0 else 0))]
            for i, p in enumerate(picked)]
    expected = ["NO_MATCH" if i % 3 == 0 else "MATCH" for i in range(len(rows))]
    claims = write_claims(tmp_path / "claims.csv", ["entity_id", "consent_ref", "claim1", "claim2"], rows)
    results = {}
    for mode in ("plain", "private"):
        out = tmp_path / f"{mode}.csv"
        r = run("verify", "--grant", grant, "--template", "both", "--claims", claims, "-o", out, "--json",
                *(["--private"] if mode == "private" else []), key=bank)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["private"] is (mode == "private")
        results[mode] = [w["result"] for w in read_csv(out)]
    assert results["plain"] == results["private"] == expected
    with sandbox.admin() as admin:  # the private call's audit entries hold no id, only counts and digests
        entries = list(admin.audit_entries(method="VerifyPrivate"))
    assert entries and all(json.loads(e.request)["points"] == len(rows) for e in entries)
    recorded = {str(v) for e in entries for v in json.loads(e.request).values()}
    assert not recorded & {p["ID"] for p in picked} and "AUTH-2026" not in str(entries), entries


# --- verify-certificate ----------------------------------------------------------------------------------------


@pytest.fixture()
def certificate(run: Run, granted: Granted, tmp_path: Path) -> tuple[Path, list[str]]:  # noqa: F811
    """One MATCH certificate and its (entity id, consent reference, claim)."""
    rows, _ = age_claims(1)
    claims = write_claims(tmp_path / "claims.csv", ["entity_id", "consent_ref", "claim"], rows)
    r = run("verify", "--grant", granted.grant, "--template", "age", "--claims", claims, "-o",
            tmp_path / "results.csv", "--certificates", tmp_path / "certs", key=granted.bank)
    assert r.exit_code == 0, r.output
    [cert] = list((tmp_path / "certs").iterdir())
    return cert, rows[0]


def test_a_certificate_verifies_offline_and_online_against_the_published_key(
        run: Run, granted: Granted, certificate: tuple[Path, list[str]], tmp_path: Path) -> None:  # noqa: F811
    cert, (entity, consent, claim) = certificate
    about = ("--entity-id", entity, "--claim", claim, "--consent-ref", consent)
    r = invoke("verify-certificate", cert, "--public-key-file", granted.audit_key, *about)  # no server, key or CA
    assert r.exit_code == 0, r.output
    found(rf"VALID: MATCH for template 'age' \(AGE == \?\) under grant {granted.grant} on credit_default", r.output)
    assert "it is about the entity, claim, consent reference given" in r.output
    r = invoke("verify-certificate", cert, "--public-key", granted.audit_key.read_text().strip())
    assert r.exit_code == 0 and "not checked against an entity" in r.output, r.output

    r = run("verify-certificate", cert, "--public-key-file", granted.audit_key, "--online", *about, key=granted.bank)
    assert r.exit_code == 0, r.output
    found(r"online: audit entry (\d+) records this check's batch and is included in the signed tree head of (\d+) "
          r"entries \(inclusion proof checked\)", r.output)
    doc = json.loads(cert.read_text())["certificate"]
    as_json = json.loads(run("verify-certificate", cert, "--public-key-file", granted.audit_key, "--online",
                             "--json", key=granted.bank).output)
    assert as_json["valid"] is True and as_json["entry"]["seq"] == doc["audit_seq"]
    assert as_json["head"]["size"] > doc["audit_seq"]

    for flag, value, reason in (("--entity-id", str(int(entity) + 1), "about another entity"),
                                ("--claim", str(int(claim) + 1), "about another claim"),
                                ("--consent-ref", "AUTH-2026-424242", "names another consent reference")):
        r = invoke("verify-certificate", cert, "--public-key-file", granted.audit_key, flag, value)
        assert r.exit_code == 1 and r.output.startswith("NOT VALID: ") and reason in r.output, r.output


def test_an_edited_certificate_or_another_key_fails(
        run: Run, granted: Granted, certificate: tuple[Path, list[str]], tmp_path: Path) -> None:  # noqa: F811
    cert, _ = certificate
    text = cert.read_text()
    edited = tmp_path / "edited.json"
    edited.write_text(text.replace('"result": "MATCH"', '"result": "NO_MATCH"'))
    assert edited.read_text() != text
    for extra in ((), ("--online",)):
        r = run("verify-certificate", edited, "--public-key-file", granted.audit_key, *extra, key=granted.bank)
        assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
        assert r.output.startswith("NOT VALID: the signature does not verify with the sandbox's key"), r.output
    other = tmp_path / "other.key"
    assert invoke("keygen", other).exit_code == 0  # the key a forger would publish
    r = invoke("verify-certificate", cert, "--public-key-file", other.with_suffix(".pub"))
    assert r.exit_code == 1 and "the signature does not verify" in r.output, r.output
    restated = tmp_path / "restated.json"  # a file that states the other key is still checked against the given one
    doc = json.loads(text)
    restated.write_text(json.dumps({**doc, "stated_audit_public_key": other.with_suffix(".pub").read_text().strip()}))
    assert invoke("verify-certificate", restated, "--public-key-file", granted.audit_key).exit_code == 0
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    r = invoke("verify-certificate", garbage, "--public-key-file", granted.audit_key)
    assert r.exit_code == 1 and r.output.startswith("NOT VALID: not a certificate file"), r.output
    r = invoke("verify-certificate", cert)
    assert r.exit_code == 2 and "give exactly one of --public-key and --public-key-file" in r.output, r.output
