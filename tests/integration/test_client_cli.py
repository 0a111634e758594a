"""The ``sandbox-client`` command against a real TLS server, run in-process through typer's CliRunner."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from clients import DeadlineExceeded, ResearcherClient, generate_key
from clients.cli import app
from clients.signing import load_key, principal_id_for, public_key_of
from protos.sandbox.v1 import fl_pb2, he_pb2
from tests.conftest import DATA, ROOT, SCHEMAS, Sandbox

Run = Callable[..., Result]
# Wide enough that rich never wraps a cell we assert on; no SANDBOX_* from the developer's shell.
ENV = {"COLUMNS": "250", "SANDBOX_KEY": None, "SANDBOX_CA": None, "SANDBOX_SERVER": None}


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture()
def run(sandbox: Sandbox) -> Run:
    """Run one command signed with ``key`` (default: the first administrator's) against the sandbox."""
    def _run(*args: str | Path, key: Path | None = None) -> Result:
        return invoke("--server", sandbox.address, "--key", key or sandbox.admin_key_path, "--ca", sandbox.ca, *args)
    return _run


def enrolled(run: Run, tmp_path: Path, name: str, role: str = "applicant") -> Path:
    """A fresh key, enrolled by the administrator through the CLI."""
    key = tmp_path / f"{name.lower()}.key"
    assert invoke("keygen", key).exit_code == 0
    r = run("enrol", "--name", name, "--organisation", f"{name} Ltd", "--role", role,
            "--public-key-file", key.with_suffix(".pub"))
    assert r.exit_code == 0, r.output
    return key


def import_census(run: Run) -> Result:
    r = run("import", SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    assert r.exit_code == 0, r.output
    return r


def found(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text)
    assert m is not None, f"{pattern!r} not in:\n{text}"
    return m


def no_traceback(r: Result) -> None:
    assert "Traceback" not in r.output
    assert isinstance(r.exception, SystemExit)


def test_keygen_writes_a_private_key_0600_and_its_public_hex(tmp_path: Path) -> None:
    path = tmp_path / "bank.key"
    r = invoke("keygen", path)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = public_key_of(load_key(path))
    assert path.with_suffix(".pub").read_text().strip() == public.hex()
    assert principal_id_for(public) in r.output and public.hex() in r.output

    before = path.read_bytes()
    again = invoke("keygen", path)
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
    assert path.read_bytes() == before


def test_enrolled_key_can_say_who_it_is(run: Run, tmp_path: Path) -> None:
    key = enrolled(run, tmp_path, "Bank")
    r = run("whoami", key=key)
    assert r.exit_code == 0, r.output
    assert principal_id_for(public_key_of(load_key(key))) in r.output
    assert "Bank (Bank Ltd)" in r.output and "applicant" in r.output and "active" in r.output

    listed = run("principals")
    assert "Bank Ltd" in listed.output and "Administrator" in listed.output


def test_self_registration_waits_for_an_administrator(run: Run, tmp_path: Path) -> None:
    key = tmp_path / "office.key"
    assert invoke("keygen", key).exit_code == 0
    office_id = principal_id_for(public_key_of(load_key(key)))
    r = run("register", "--name", "Office", "--organisation", "Statistics Office", key=key)
    assert r.exit_code == 0, r.output
    assert office_id in r.output and "pending" in r.output and "approve-principal" in r.output
    listed = run("principals").output
    found(rf"{office_id}\s+│\s+Office\s+│\s+Statistics Office\s+│\s+applicant\s+│\s+pending", listed)
    assert run("catalogue", key=key).exit_code == 1  # not yet

    approved = run("approve-principal", office_id)
    assert approved.exit_code == 0 and f"{office_id} is active" in approved.output
    assert "active" in run("whoami", key=key).output


def test_import_then_catalogue_shows_columns_and_only_a_rounded_row_count(run: Run, tmp_path: Path) -> None:
    imported = import_census(run).output
    assert "imported adult_census" in imported and "duplicates dropped" in imported

    key = enrolled(run, tmp_path, "Bank")
    r = run("catalogue", key=key)
    assert r.exit_code == 0, r.output
    # 48,790 rows plus discrete Laplace noise of scale 10 (epsilon 0.1, one row per person) lands in
    # [48,500, 49,500) and so shows as 49,000 unless |noise| > 290, which has probability about e^-29.
    assert "adult_census" in r.output and "≈49,000 rows" in r.output
    assert "48790" not in r.output and "48,790" not in r.output
    found(r"age\s+│\s+integer\s+│\s+open\s+│\s+\[17, 90\]", r.output)
    found(r"fnlwgt\s+│\s+integer\s+│\s+internal\s+│\s+\[0, 2000000\]", r.output)
    assert "Preschool, 1st-4th" in r.output and "… (16)" in r.output  # long category lists are cut

    as_json = run("catalogue", "--json", key=key)
    [dataset] = json.loads(as_json.output)
    assert dataset["name"] == "adult_census" and dataset["approx_rows"] == 49000
    assert {"age", "education", "fnlwgt"} <= {c["name"] for c in dataset["columns"]}


def test_apply_review_approve_verify_and_revoke(run: Run, tmp_path: Path) -> None:
    import_census(run)
    bank = enrolled(run, tmp_path, "Bank")
    r = run("apply", "--title", "Income by education", "--purpose", "Publish income tables",
            "--legal-basis", "Statistics Act art. 7", "--kind", "DP_QUERY",
            "--dataset", "adult_census=age,education,sex", "--epsilon", "0.5", "--quota", "20", key=bank)
    assert r.exit_code == 0, r.output
    scenario_id = found(r"applied: (s-[0-9a-f]+)\s+status pending", r.output).group(1)

    review = run("pending")
    assert scenario_id in review.output
    for text in ("Bank (Bank Ltd)", "Income by education", "Publish income tables", "Statistics Act art. 7",
                 "DP_QUERY", "age, education, sex", "epsilon 0.5, delta 0", "20"):
        assert text in review.output, text

    approved = run("approve", scenario_id, "--columns", "adult_census=age,education", "--epsilon", "0.25",
                   "--quota", "10")
    assert approved.exit_code == 0, approved.output
    grant_id = found(r"grant (g-[0-9a-f]+): DP_QUERY, epsilon 0.25", approved.output).group(1)

    mine = run("status", key=bank)
    # Spent against the granted (narrowed) caps, not those applied for.
    found(rf"{scenario_id}\s+│\s+Income by education\s+│\s+DP_QUERY\s+│\s+approved\s+│"
          rf"\s+0 / 0.25\s+│\s+0 / 10", mine.output)
    detail = run("status", scenario_id, key=bank)
    assert detail.exit_code == 0, detail.output
    assert grant_id in detail.output and "verified against the administrators' keys" in detail.output
    assert "quota 10" in detail.output and "adult_census: age, education" in detail.output

    revoked = run("revoke", grant_id, "--reason", "purpose fulfilled")
    assert revoked.exit_code == 0 and f"scenario {scenario_id} is revoked" in revoked.output
    after = run("status", scenario_id, key=bank)
    assert f"{scenario_id}  (revoked)" in after.output and "(revoked: purpose fulfilled)" in after.output
    assert "No applications are pending." in run("pending").output


def test_apply_from_a_file_over_two_datasets_and_reject(run: Run, tmp_path: Path) -> None:
    import_census(run)
    assert run("import", SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz").exit_code == 0
    lab = enrolled(run, tmp_path, "Office", role="applicant")
    app_file = tmp_path / "application.toml"
    app_file.write_text('title = "Income model"\npurpose = "Compare ages"\nlegal_basis = "Consent"\n'
                        'kind = "DP_QUERY"\nepsilon = 2\ndays = 10\nquota = 5\n'
                        '[datasets]\nadult_census = ["age", "education_num"]\ncredit_default = ["AGE"]\n')
    r = run("apply", "--file", app_file, "--title", "Income model v2", key=lab)
    assert r.exit_code == 0, r.output
    scenario_id = found(r"s-[0-9a-f]+", r.output).group(0)
    detail = run("status", scenario_id, key=lab).output
    for text in ("Income model v2", "DP_QUERY", "epsilon 2, delta 0"):
        assert text in detail, text
    # One line per dataset in the review.
    found(r"│ adult_census \(\w+\): age, education_num\s+│\n│\s+│ credit_default \(\w+\): AGE\s+│",
                     run("pending").output)

    rejected = run("reject", scenario_id, "--reason", "no legal basis for training")
    assert rejected.exit_code == 0 and "rejected" in rejected.output
    assert "rejected: no legal basis for training" in run("status", scenario_id, key=lab).output

    bad_file = tmp_path / "bad.toml"
    bad_file.write_text('title = "x"\npurpose = "y"\nlegal_basis = "z"\nquota = "many"\n'
                        '[datasets]\nadult_census = ["age"]\n')
    bad = run("apply", "--file", bad_file, key=lab)
    assert bad.exit_code == 2 and "whole numbers" in bad.output
    no_traceback(bad)


def test_a_refused_call_prints_its_status_in_one_line_and_exits_1(run: Run, tmp_path: Path) -> None:
    bank = enrolled(run, tmp_path, "Bank")
    r = run("pending", key=bank)
    assert r.exit_code == 1
    assert r.output.startswith("refused (PERMISSION_DENIED): ") and r.output.count("\n") == 1
    no_traceback(r)

    unknown = run("status", "s-000000000000000000000000", key=bank)
    assert unknown.exit_code == 1 and "(NOT_FOUND)" in unknown.output
    no_traceback(unknown)


def test_missing_key_or_bad_input_is_a_usage_error(sandbox: Sandbox) -> None:
    r = invoke("--server", sandbox.address, "--ca", sandbox.ca, "whoami")
    assert r.exit_code == 2 and "no signing key" in r.output and "SANDBOX_KEY" in r.output
    no_traceback(r)
    r = invoke("--server", sandbox.address, "--key", sandbox.admin_key_path, "whoami")
    assert r.exit_code == 2 and "no CA certificate" in r.output

    bad = invoke("--key", sandbox.admin_key_path, "--ca", sandbox.ca, "apply", "--title", "t", "--purpose", "p",
                 "--legal-basis", "l", "--dataset", "adult_census")
    assert bad.exit_code == 2 and "NAME=col1,col2" in bad.output
    role = invoke("--key", sandbox.admin_key_path, "--ca", sandbox.ca, "enrol", "--name", "X", "--organisation", "Y",
                  "--role", "owner", "--public-key", "ab" * 32)
    assert role.exit_code == 2 and "unknown role 'owner'" in role.output
    no_traceback(role)


def test_audit_lists_entries_including_a_refused_one(run: Run, tmp_path: Path) -> None:
    bank = enrolled(run, tmp_path, "Bank")
    bank_id = principal_id_for(public_key_of(load_key(bank)))
    assert run("pending", key=bank).exit_code == 1

    r = run("audit")
    assert r.exit_code == 0, r.output
    # the principal by name and id; an empty grant column (no grant involved)
    found(rf"Bank \({bank_id}\)\s+│\s+ListPendingScenarios\s+│\s+│\s+PERMISSION_DENIED\s+│\s+WRONG_ROLE", r.output)
    found(r"EnrolPrincipal\s+│\s+│\s+OK", r.output)

    paged = run("audit", "--limit", "1")
    assert "more entries follow: --after 1" in paged.output
    head = run("audit", "--head")
    assert head.exit_code == 0 and "audit public key" in head.output
    found(r"entries\s+│\s+\d+", head.output)


def test_every_kind_of_call_has_a_deadline_even_against_a_server_that_never_answers(sandbox: Sandbox) -> None:
    """Every SDK call has a deadline (10 s unless told otherwise): a silent server cannot hang a client, whether
    the call is unary, a client stream (an HE context upload) or a server stream (watching a training job)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes TCP handshakes; nothing ever answers TLS
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    key = generate_key()
    try:
        with ResearcherClient(address, key=key, ca=sandbox.ca) as default:
            assert default.transport.timeout == 10.0
        with ResearcherClient(address, key=key, ca=sandbox.ca, timeout=0.5) as lab:
            t = lab.transport
            calls = {
                "unary": lab.whoami,
                "client stream": lambda: t.call_stream("/sandbox.v1.HeScoringService/RegisterContext",
                                                       [he_pb2.ContextChunk(profile="ckks-8192", data=b"x")],
                                                       he_pb2.RegisterContextResponse),
                "server stream": lambda: list(t.call_server_stream("/sandbox.v1.FlTrainingService/WatchTraining",
                                                                   fl_pb2.WatchTrainingRequest(job_id="j-1"),
                                                                   fl_pb2.TrainingEvent)),
            }
            for kind, call in calls.items():
                start = time.monotonic()
                with pytest.raises(DeadlineExceeded):
                    call()
                assert time.monotonic() - start < 5, kind
    finally:
        silent.close()


def test_installed_entry_point_runs() -> None:
    exe = ROOT / ".venv" / "bin" / "sandbox-client"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for command in ("keygen", "catalogue", "apply", "status", "approve", "revoke", "audit"):
        assert command in r.stdout


def test_query_estimate_run_replay_and_exhaustion(run: Run, tmp_path: Path) -> None:
    import_census(run)
    office = enrolled(run, tmp_path, "Office")
    r = run("apply", "--title", "Census", "--purpose", "Statistics", "--legal-basis", "Statistics Act",
            "--kind", "DP_QUERY", "--dataset", "adult_census=age,sex,education,hours_per_week", "--epsilon", "0.5",
            key=office)
    assert r.exit_code == 0, r.output
    scenario = found(r"(s-[0-9a-f]{24})", r.output).group(1)
    approved = run("approve", scenario)
    assert approved.exit_code == 0, approved.output
    grant = found(r"(g-[0-9a-f]{32})", run("status", scenario, key=office).output).group(1)
    base = ("query", "--grant", grant, "--dataset", "adult_census")
    est = run(*base, "--where", "age>=30", "--by", "sex", "--count", "--estimate", "--epsilon", "0.25", key=office)
    assert est.exit_code == 0, est.output
    assert "nothing was charged" in est.output and "remaining epsilon 0.5" in est.output
    vague = run(*base, "--count", "--estimate", key=office)  # at what epsilon? it must be said
    assert vague.exit_code == 2 and "--half-width" in vague.output
    q = run(*base, "--where", "age>=30", "--by", "sex", "--count", "--epsilon", "0.25", "--idempotency-key", "k1",
            key=office)
    assert q.exit_code == 0, q.output
    assert "Female" in q.output and "Male" in q.output and "95% interval" in q.output
    assert "charged epsilon 0.25; remaining epsilon 0.25" in q.output
    again = run(*base, "--where", "age>=30", "--by", "sex", "--count", "--epsilon", "0.25", "--idempotency-key", "k1",
                key=office)
    assert "stored answer" in again.output and "remaining epsilon 0.25" in again.output
    assert run(*base, "--mean", "hours_per_week", "--by", "education", "--epsilon", "0.25", key=office).exit_code == 0
    spent = run(*base, "--count", "--epsilon", "0.25", key=office)
    assert spent.exit_code == 1 and "RESOURCE_EXHAUSTED" in spent.output and "remaining epsilon 0" in spent.output
    no_traceback(spent)
    bad = run(*base, "--where", "age", "--count", "--epsilon", "0.1", key=office)
    assert bad.exit_code == 2 and "--where" in bad.output
