"""``sandbox-client`` as a person or a script uses it: options anywhere, JSON, version, completion, example
files, suspension, confirmations, warnings and readable errors; against a real TLS server.

Commands run in-process through typer's CliRunner (``Result.stdout`` and ``Result.stderr`` apart), or as a
subprocess where the process itself matters (gRPC's C-core log, a terminal).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import pty
import shutil
import socket
import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import typer.main
from click.testing import Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from clients import ApplicantClient
from clients.cli import _APPLICATION_KEYS, app
from clients.signing import load_key, principal_id_for, public_key_of
from tests.conftest import ROOT, Sandbox
from tests.integration.test_client_cli import (  # noqa: F401  (run: the fixture)
    ENV, Run, enrolled, found, import_census, invoke, no_traceback, run,
)
from tests.integration.test_client_cli_compute import (  # noqa: F401  (fl_grant, he_grant: fixtures)
    fl_grant, he_grant, imported, write_features, write_ids,
)
from tests.integration.test_he_integration import BIAS, PRIVATE, PUBLIC, bank_features, credit_rows

EXAMPLES = ROOT / "examples"
GLOBAL = ("--server", "--key", "--ca", "--timeout")


def utc(text: str) -> dt.datetime:
    """An ISO-8601 time that must say it is UTC."""
    t = dt.datetime.fromisoformat(text)
    assert t.utcoffset() == dt.timedelta(0), text
    return t


def only_json(r: Result) -> Any:
    """The command's stdout, which must be one JSON document and nothing else."""
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def census_grant(run: Run, tmp_path: Path, epsilon: str = "0.5") -> tuple[Path, str, str]:
    """A statistics office with an approved DP_QUERY grant on the census: (key, scenario, grant)."""
    import_census(run)
    office = enrolled(run, tmp_path, "Office")
    r = run("apply", "--title", "Census", "--purpose", "Statistics", "--legal-basis", "Statistics Act",
            "--dataset", "adult_census=age,sex,education", "--epsilon", epsilon, key=office)
    assert r.exit_code == 0, r.output
    scenario = found(r"applied: (s-[0-9a-f]+)", r.output).group(1)
    approved = run("approve", scenario)
    assert approved.exit_code == 0, approved.output
    return office, scenario, found(r"grant (g-[0-9a-f]+)", approved.output).group(1)


# --- 1. global options after the command, --idempotency-key ---------------------------------------------------------


def test_global_options_work_after_the_command_and_override_the_environment(sandbox: Sandbox, tmp_path: Path) -> None:
    admin_id = principal_id_for(public_key_of(load_key(sandbox.admin_key_path)))
    opts = ("--server", sandbox.address, "--key", sandbox.admin_key_path, "--ca", sandbox.ca)
    after = invoke("whoami", *opts)
    assert after.exit_code == 0 and admin_id in after.output, after.output
    mixed = invoke("--server", sandbox.address, "whoami", "--ca", sandbox.ca, "--key", sandbox.admin_key_path)
    assert mixed.exit_code == 0 and admin_id in mixed.output, mixed.output
    head = invoke("audit", "--head", *opts)  # a sub-group's callback
    assert head.exit_code == 0 and "audit public key" in head.output, head.output

    # After the command beats before it and the environment; the environment alone still works.
    other = enrolled(lambda *a, **kw: invoke(*opts, *a), tmp_path, "Bank")
    env = {**ENV, "SANDBOX_SERVER": sandbox.address, "SANDBOX_CA": str(sandbox.ca), "SANDBOX_KEY": str(other)}
    assert "Bank (Bank Ltd)" in CliRunner().invoke(app, ["whoami"], env=env).output
    overridden = CliRunner().invoke(app, ["whoami", "--key", str(sandbox.admin_key_path)], env=env)
    assert overridden.exit_code == 0 and admin_id in overridden.output, overridden.output
    later = invoke("--key", other, "whoami", *opts)
    assert admin_id in later.output

    too_short = invoke("whoami", *opts, "--timeout", "0")
    assert too_short.exit_code == 2 and "--timeout" in too_short.output
    no_traceback(too_short)


def test_every_command_takes_the_global_options_and_query_names_its_idempotency_key() -> None:
    def leaves(cmd: click.Command, path: str) -> list[tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            return [(path, cmd), *(x for name, sub in cmd.commands.items() for x in leaves(sub, f"{path} {name}"))]
        return [(path, cmd)]

    commands = leaves(typer.main.get_command(app), "sandbox-client")
    assert len(commands) > 20
    for path, cmd in commands:
        flags = {opt for p in cmd.params for opt in getattr(p, "opts", ())}
        assert set(GLOBAL) <= flags, path
    query = dict(commands)["sandbox-client query"]
    by_flag = {opt: p for p in query.params for opt in getattr(p, "opts", ())}
    assert "--idempotency-key" in by_flag and "private key" in str(getattr(by_flag["--key"], "help", ""))


# --- 2. --json ------------------------------------------------------------------------------------------------------


def test_json_on_listings_and_results_is_the_only_thing_on_stdout(run: Run, sandbox: Sandbox, tmp_path: Path) -> None:
    office, scenario, grant = census_grant(run, tmp_path)
    office_id = principal_id_for(public_key_of(load_key(office)))

    me = only_json(run("whoami", "--json", key=office))
    assert me["id"] == office_id and me["public_key"] == public_key_of(load_key(office)).hex()
    utc(me["created_at"])
    people = only_json(run("principals", "--json"))
    assert {p["id"] for p in people} >= {office_id} and all(p["status"] == "active" for p in people)

    mine = only_json(run("status", "--json", key=office))
    [s] = [s for s in mine if s["id"] == scenario]
    assert s["grant"]["id"] == grant and s["grant"]["terms"]["epsilon"] == "0.5"  # a Decimal, as a string
    one = only_json(run("status", scenario, "--json", key=office))
    assert one["grant_verified"] is True and one["usage"]["epsilon_spent"] == "0"
    assert bytes.fromhex(one["grant"]["signature"]) and utc(one["grant"]["terms"]["not_after"]) > utc(one["created_at"])

    base = ("query", "--grant", grant, "--dataset", "adult_census", "--by", "sex", "--count")
    est = only_json(run(*base, "--estimate", "--epsilon", "0.25", "--json", key=office))
    assert est["epsilon_cost"] == "0.25" and est["epsilon_remaining"] == "0.5"
    assert est["statistics"][0]["aggregate"] == "count"
    answer = only_json(run(*base, "--epsilon", "0.25", "--json", key=office))
    assert {tuple(x["group"]) for x in answer["statistics"]} == {("Female",), ("Male",)}
    assert answer["epsilon_charged"] == "0.25" and answer["epsilon_remaining"] == "0.25"
    assert all(x["low"] <= x["value"] <= x["high"] for x in answer["statistics"])

    audit = only_json(run("audit", "--json", "--limit", "3"))
    assert len(audit["entries"]) == 3 and audit["more_after"] == audit["entries"][-1]["seq"]
    assert all(utc(e["time"]) for e in audit["entries"])
    assert Decimal(next(e for e in only_json(run("audit", "--json", "--limit", "1000"))["entries"]
                        if e["method"].endswith("/RunQuery"))["epsilon"]) == Decimal("0.25")
    head = only_json(run("audit", "--head", "--json"))
    assert len(bytes.fromhex(head["audit_public_key"])) == 32 and head["entries"] >= 1

    key = only_json(invoke("keygen", tmp_path / "new.key", "--json"))
    assert key["principal_id"] == principal_id_for(bytes.fromhex(key["public_key"]))
    assert key["private_key_file"] == str(tmp_path / "new.key")
    assert only_json(run("catalogue", "--json", key=office))[0]["name"] == "adult_census"


def test_json_of_the_review_commands(run: Run, tmp_path: Path) -> None:
    import_census(run)
    office = enrolled(run, tmp_path, "Office")
    applied = only_json(run("apply", "--title", "T", "--purpose", "P", "--legal-basis", "L", "--epsilon", "0.5",
                            "--dataset", "adult_census=age", "--json", key=office))
    assert applied["status"] == "pending" and applied["epsilon"] == "0.5" and applied["grant"] is None
    [waiting] = only_json(run("pending", "--json"))
    assert waiting["id"] == applied["id"] and waiting["applicant"]["name"] == "Office" and waiting["model"] is None
    approved = only_json(run("approve", applied["id"], "--epsilon", "0.25", "--json"))
    assert approved["status"] == "approved" and approved["grant"]["terms"]["epsilon"] == "0.25"
    revoked = only_json(run("revoke", approved["grant"]["id"], "--reason", "done", "--json"))
    assert revoked["status"] == "revoked" and revoked["grant"]["revoke_reason"] == "done"


# --- 3, 4. --version, completion ------------------------------------------------------------------------------------


def test_version_prints_the_installed_distribution_version() -> None:
    r = invoke("--version")
    assert r.exit_code == 0
    assert r.stdout == f"sandbox-client {importlib.metadata.version('dataspace-sandbox')} (dataspace-sandbox)\n"


def test_shell_completion_is_offered_and_completes_commands_and_options_after_them() -> None:
    helped = CliRunner().invoke(app, ["--help"], env={**ENV, "COLUMNS": "200"})
    assert "--install-completion" in helped.output and "--show-completion" in helped.output

    def complete(words: str) -> list[str]:
        r = CliRunner().invoke(app, [], prog_name="sandbox-client",
                               env={**ENV, "_SANDBOX_CLIENT_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                    "COMP_CWORD": str(len(words.split()) - 1)})
        return [line.split(",", 1)[-1] for line in r.output.splitlines()]
    assert "whoami" in complete("sandbox-client who")
    assert "--key" in complete("sandbox-client whoami --ke")


# --- 5. example applications ----------------------------------------------------------------------------------------


def test_apply_help_documents_every_key_of_the_application_file() -> None:
    r = CliRunner().invoke(app, ["apply", "--help"], env={**ENV, "COLUMNS": "200"})
    assert r.exit_code == 0
    for key in _APPLICATION_KEYS:  # one line each: the key, its type, its default (or "required"), what it is
        found(rf"(?m)^\s*\[?{key}\]?\s+(string|number or string|integer|table)\s+(required|\S+)\s+\w", r.output)
    for example in ("application-dp.toml", "application-he.toml", "application-fl.toml"):
        assert example.removeprefix("application") in r.output


def test_the_example_application_files_apply_as_written(run: Run, sandbox: Sandbox, tmp_path: Path) -> None:
    import_census(run)
    imported(run, "credit_default")
    office = enrolled(run, tmp_path, "Office")
    examples = sorted(EXAMPLES.glob("application-*.toml"))
    assert [p.name for p in examples] == ["application-dp.toml", "application-fl.toml", "application-he.toml",
                                          "application-verify.toml"]
    with ApplicantClient(sandbox.address, key=load_key(office), ca=sandbox.ca) as bank:
        model = bank.submit_model(name="default-risk", dataset="credit_default", public_features=PUBLIC,
                                  private_features=PRIVATE, bias=BIAS)
    hashes = {"HE_SCORING": model}

    imported(run, "rand_hie")
    lab = enrolled(run, tmp_path, "Lab", role="researcher")
    fl = tomllib.loads((EXAMPLES / "application-fl.toml").read_text())
    [(dataset, columns)] = fl["datasets"].items()
    plan = run("plan", "--dataset", dataset, *(a for c in columns[:-1] for a in ("--feature", c)),
               "--label", columns[-1], "--threshold", "100", "--json", key=lab)
    hashes["FL_TRAINING"] = only_json(plan)["plan_hash"]

    for path in examples:
        doc = tomllib.loads(path.read_text())
        kind = doc.get("kind", "DP_QUERY")
        extra = ("--model-hash", hashes[kind]) if kind in hashes else ()
        who = lab if kind == "FL_TRAINING" else office
        s = only_json(run("apply", "--file", path, *extra, "--json", key=who))
        assert (s["title"], s["purpose"], s["legal_basis"], s["kind"]) == (
            doc["title"], doc["purpose"], doc["legal_basis"], kind), path.name
        assert {d["name"]: sorted(d["columns"]) for d in s["datasets"]} == {
            name: sorted(cols) for name, cols in doc["datasets"].items()}, path.name
        assert Decimal(s["epsilon"]) == Decimal(str(doc.get("epsilon", 0))), path.name
        assert Decimal(s["delta"]) == Decimal(str(doc.get("delta", 0))), path.name
        assert s["quota"] == doc["quota"] and s["model_hash"] == hashes.get(kind, ""), path.name
        days = (utc(s["valid_until"]) - utc(s["created_at"])).total_seconds() / 86400
        assert abs(days - doc["days"]) < 0.01, path.name
        if kind == "VERIFICATION":  # the [verification] table as written, its templates in the file's order
            asked = s["verification"]
            assert [(x["name"], x["expression"]) for x in asked["templates"]] == list(
                doc["verification"]["templates"].items()), path.name
            assert {k: asked[k] for k in doc["verification"] if k != "templates"} == {
                k: v for k, v in doc["verification"].items() if k != "templates"}, path.name


# --- 6. suspend -----------------------------------------------------------------------------------------------------


def test_a_suspended_principal_is_refused_from_its_next_call(run: Run, tmp_path: Path) -> None:
    bank = enrolled(run, tmp_path, "Bank")
    bank_id = principal_id_for(public_key_of(load_key(bank)))
    assert run("status", key=bank).exit_code == 0

    outsider = run("suspend", bank_id, "--reason", "x", key=bank)
    assert outsider.exit_code == 1 and "refused (PERMISSION_DENIED)" in outsider.output
    r = run("suspend", bank_id, "--reason", "key reported lost")
    assert r.exit_code == 0, r.output
    assert f"{bank_id}  Bank (Bank Ltd) is suspended: key reported lost" in r.output

    refused = run("status", key=bank)
    assert refused.exit_code == 1 and refused.output.startswith("refused (PERMISSION_DENIED): ")
    assert refused.output.count("\n") == 1
    no_traceback(refused)
    listed = only_json(run("principals", "--json"))
    assert next(p for p in listed if p["id"] == bank_id)["status"] == "suspended"
    unknown = run("suspend", "p-" + "0" * 24, "--reason", "x")
    assert unknown.exit_code == 1 and "(NOT_FOUND)" in unknown.output


# --- 7. train --no-dp asks first; the training and scoring commands' JSON -------------------------------------------


def test_training_without_dp_is_refused_without_a_terminal_or_yes_and_calls_nothing(
        run: Run, sandbox: Sandbox, fl_grant: tuple[Path, str, str]) -> None:
    lab, plan, grant = fl_grant
    lab_id = principal_id_for(public_key_of(load_key(lab)))

    def lab_calls() -> list[str]:
        return [e["method"] for e in only_json(run("audit", "--json", "--limit", "1000"))["entries"]
                if e["principal_id"] == lab_id]
    before = lab_calls()
    assert before  # the fixture's plan and apply calls, so the comparison below can see a change
    r = run("train", "--grant", grant, "--plan", plan, "--rounds", "2", "--no-dp", key=lab)
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert "whole remaining budget" in r.stderr and "--yes" in r.stderr and r.stderr.count("\n") == 1
    no_traceback(r)
    # The same from a process started with no stdin at all (cron, a closed descriptor): refused, no traceback.
    closed = subprocess.run(
        [sys.executable, "-m", "clients.cli", "--server", sandbox.address, "--key", str(lab), "--ca", str(sandbox.ca),
         "train", "--grant", grant, "--plan", plan, "--rounds", "2", "--no-dp"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, preexec_fn=lambda: os.close(0),
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert closed.returncode == 1 and "--yes" in closed.stderr and "Traceback" not in closed.stderr, closed.stderr
    assert lab_calls() == before  # neither refused command called anything
    found(r"FL_TRAINING\s+│\s+approved\s+│\s+0 / 100\s", run("status", key=lab).output)


def test_training_without_dp_asks_on_a_terminal_and_a_no_starts_nothing(
        sandbox: Sandbox, run: Run, fl_grant: tuple[Path, str, str]) -> None:
    lab, plan, grant = fl_grant
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "--server", sandbox.address, "--key", str(lab), "--ca",
             str(sandbox.ca), "train", "--grant", grant, "--plan", plan, "--rounds", "2", "--no-dp"],
            stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
        os.write(leader, b"n\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 1, err
    assert "charges the grant's whole remaining budget (epsilon 100)" in err and "Start it?" in err
    assert "not started: nothing was charged" in err and "started job" not in out + err
    found(r"FL_TRAINING\s+│\s+approved\s+│\s+0 / 100\s", run("status", key=lab).output)


def test_json_of_training_scoring_and_models(run: Run, fl_grant: tuple[Path, str, str],
                                             he_grant: tuple[Path, str, str], tmp_path: Path) -> None:
    lab, plan, grant = fl_grant
    r = run("train", "--grant", grant, "--plan", plan, "--rounds", "2", "--learning-rate", "0.5", "--no-dp", "--yes",
            "--watch", "--json", key=lab)
    doc = only_json(r)  # no progress bar, no summary table: one document
    assert doc["state"] == "completed" and doc["dp"] is False and doc["epsilon_reserved"] == "100"
    assert doc["events"][-1]["round"] == doc["events"][-1]["rounds"] == 2
    assert doc["result"]["shapes"] == [[8], [1]] and doc["result"]["epsilon_charged"] == "100"
    job = doc["job_id"]
    watched = only_json(run("watch", job, "--json", key=lab))
    assert watched["state"] == "completed" and watched["events"][-1] == doc["events"][-1]
    model_file = tmp_path / "model.json"
    written = only_json(run("result", job, "--out", model_file, "--json", key=lab))
    assert written["out"] == str(model_file) and written["shapes"] == [[8], [1]]
    assert [w["shape"] for w in json.loads(model_file.read_text())["weights"]] == written["shapes"]
    assert only_json(run("cancel", job, "--json", key=lab)) == {"job_id": job, "state": "completed"}

    bank, he, model = he_grant
    spec = only_json(run("model", model, "--json", key=bank))
    assert spec["model_hash"] == model and dict(spec["public_features"]) == PUBLIC and spec["bias"] == BIAS
    picked = credit_rows()[:5]
    ids = write_ids(tmp_path / "ids.csv", [row["ID"] for row in picked])
    feats = write_features(tmp_path / "bank.csv", list(PRIVATE), bank_features(picked))
    scores = tmp_path / "scores.csv"
    scored = only_json(run("score", "--grant", he, "--model", model, "--ids", ids, "--features", feats,
                           "--out", scores, "--json", key=bank))
    assert scored["scored"] == 5 and scored["out"] == str(scores) and scored["noise_sd"] > 0
    assert len(scores.read_text().splitlines()) == 6  # the scores go to the file, never to stdout


# --- 8. an estimate beyond the budget -------------------------------------------------------------------------------


def test_an_estimate_beyond_the_remaining_budget_warns_on_stderr(run: Run, tmp_path: Path) -> None:
    office, _, grant = census_grant(run, tmp_path, epsilon="0.5")
    base = ("query", "--grant", grant, "--dataset", "adult_census", "--count")
    within = run(*base, "--estimate", "--epsilon", "0.5", key=office)
    assert within.exit_code == 0 and within.stderr == "", within.output
    over = run(*base, "--estimate", "--epsilon", "0.75", key=office)
    assert over.exit_code == 0 and "nothing was charged" in over.stdout
    assert over.stderr.startswith("warning: this query would charge epsilon 0.75 but only 0.5 remains")
    assert over.stderr.count("\n") == 1
    assert run(*base, "--epsilon", "0.4", key=office).exit_code == 0
    spent = run(*base, "--estimate", "--epsilon", "0.25", "--json", key=office)
    assert json.loads(spent.stdout)["epsilon_remaining"] == "0.1"  # the warning stays off stdout
    assert "epsilon 0.25 but only 0.1 remains" in spent.stderr


# --- 9. --where -----------------------------------------------------------------------------------------------------


def test_a_bad_where_names_what_is_wrong(run: Run, tmp_path: Path) -> None:
    office, _, grant = census_grant(run, tmp_path)
    base = ("query", "--grant", grant, "--dataset", "adult_census", "--count", "--epsilon", "0.1")
    ops = "(use one of = != < <= > >= in)"
    for where, says in (("age => 30", f"unknown operator '=>' in \"age => 30\" {ops}"),
                        ("age=<30", f"unknown operator '=<' in \"age=<30\" {ops}"),
                        ("age ~ 30", f"unknown operator '~' in \"age ~ 30\" {ops}"),
                        ("sex like Male", f"unknown operator 'like' in \"sex like Male\" {ops}"),
                        ("age = >30", f"unknown operator '= >' in \"age = >30\" {ops}"),
                        ("age 30", f"no operator in \"age 30\" {ops}"),
                        ("age >=", "no value after '>=' in \"age >=\""),
                        ("sex in Male,", "no value after 'in' in \"sex in Male,\""),
                        ("age >= thirty", "'>=' needs a finite number, not 'thirty', in \"age >= thirty\""),
                        ("30 < age", "expected COLUMN OP VALUE in \"30 < age\"")):
        r = run(*base, "--where", where, key=office)
        assert r.exit_code == 2, (where, r.output)
        assert says in " ".join(r.output.replace("│", " ").split()), (where, r.output)
        assert "finite numbers" not in r.output  # the server's complaint, which said nothing of the operator
        no_traceback(r)
    ok = run(*base, "--where", "age >= 30", "--where", "sex in Female, Male", key=office)
    assert ok.exit_code == 0, ok.output
    assert "charged epsilon 0.1" in ok.output


# --- 10. a wrong --ca -----------------------------------------------------------------------------------------------


def unrelated_ca(path: Path) -> Path:
    """A CA certificate that signed nothing the sandbox has."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Somebody else's CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_wrong_ca_says_check_ca_and_grpc_logs_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    other = unrelated_ca(tmp_path / "other-ca.pem")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "SANDBOX_"))}
    r = subprocess.run([sys.executable, "-m", "clients.cli", "whoami", "--server", sandbox.address,
                        "--key", str(sandbox.admin_key_path), "--ca", str(other)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert f"check --ca: the server's certificate was not signed by {other}" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one line, ours
    assert not any(line.startswith(("E0", "I1", "W0")) or "ssl_transport_security" in line
                   for line in r.stderr.splitlines()), r.stderr

    right = subprocess.run([sys.executable, "-m", "clients.cli", "whoami", "--server", sandbox.address,
                            "--key", str(sandbox.admin_key_path), "--ca", str(sandbox.ca)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "300"})
    assert right.returncode == 0 and "Administrator" in right.stdout, right.stderr


def test_no_server_at_the_address_says_check_server(sandbox: Sandbox) -> None:
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = invoke("whoami", "--server", f"127.0.0.1:{port}", "--key", sandbox.admin_key_path, "--ca", sandbox.ca)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == (f"failed (UNAVAILABLE): nothing answers at 127.0.0.1:{port} (connection refused): "
                        "check --server\n")


# --- 11. watch on an unknown job ------------------------------------------------------------------------------------


def test_watching_an_unknown_job_refuses_before_any_progress_bar(run: Run, tmp_path: Path) -> None:
    lab = enrolled(run, tmp_path, "Lab", role="researcher")
    r = run("watch", "j-" + "0" * 20, key=lab)
    assert r.exit_code == 1
    assert r.output.startswith("refused (NOT_FOUND): ") and r.output.count("\n") == 1, r.output
    assert not any(ch in r.output for ch in "━─╸╺") and "round" not in r.output and "0/?" not in r.output
    no_traceback(r)


# --- 12. .gitignore -------------------------------------------------------------------------------------------------


def test_the_readme_commands_leave_git_status_clean(tmp_path: Path) -> None:
    """Run the README's commands that make files, as written, in a repository with this .gitignore."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-qm", "ignore"], check=True)

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}, "PYTHONPATH": str(ROOT)}

    def sh(command: str, module: str) -> None:
        assert command in readme, command  # the test follows the README
        args = command.split()[1:]
        subprocess.run([sys.executable, "-m", module, *args], cwd=repo, env=env, check=True, capture_output=True,
                       timeout=120)

    sh("sandbox init ./city", "sandbox.cli")
    sh("sandbox audit export ./city -o log.jsonl", "sandbox.cli")
    pub = (repo / "city" / "keys" / "audit_signing.pub").read_text().strip()
    subprocess.run([sys.executable, "-m", "sandbox.cli", "backup", "./city", str(tmp_path / "backups" / "b")],
                   cwd=repo, env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "sandbox.cli", "restore", str(tmp_path / "backups" / "b"), "./city2",
                    "--public-key", pub], cwd=repo, env=env, check=True, capture_output=True, timeout=120)
    assert "./city2" in readme
    keys = set(re.findall(r'save_key\([^,]+, "([\w-]+\.key)"\)', readme))  # the README's keys, made as the CLI makes
    assert keys, "the README saves no key: update this test"      # them (+ .pub)
    for name in sorted(keys):
        subprocess.run([sys.executable, "-m", "clients.cli", "keygen", name], cwd=repo, env=env, check=True,
                       capture_output=True, timeout=120)
    # What the commands that need a server write by default (score, result), named as the CLI names them.
    commands = typer.main.get_group(app).commands
    for command in ("score", "result"):
        default = next(p.default for p in commands[command].params if "--out" in getattr(p, "opts", ()))
        assert f"-o {default}" in readme, command
        (repo / default).write_text("{}\n")

    status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=all"], capture_output=True,
                            text=True, check=True).stdout
    assert (repo / "city" / "sandbox.db").exists() and (repo / "city2" / "sandbox.toml").exists()
    assert all((repo / k).with_suffix(".pub").exists() for k in keys) and (repo / "city-audit-key").is_dir()
    assert status == "", status
