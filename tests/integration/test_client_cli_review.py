"""The review commands of ``sandbox-client`` against a real TLS server: stewardship, co-signing, plans in
``pending`` and ``model``, and the audit listing's filters and requests."""

from __future__ import annotations

from pathlib import Path

from clients import ResearcherClient
from clients.signing import load_key, principal_id_for, public_key_of
from tests.conftest import DATA, ROOT, SCHEMAS, Sandbox
from tests.integration.test_client_cli import Run, enrolled, found, import_census, run  # noqa: F401 (fixture)


def _pid(key: Path) -> str:
    return principal_id_for(public_key_of(load_key(key)))


def test_a_steward_co_signs_from_the_command_line(run: Run, sandbox: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    import_census(run)
    steward = enrolled(run, tmp_path, "Bureau", role="steward")
    bank = enrolled(run, tmp_path, "Bank")
    r = run("stewardship", "adult_census", "--owner", "City Statistics Bureau", "--steward", _pid(steward),
            "--policy", "sensitive")
    assert r.exit_code == 0, r.output
    found(r"held by City Statistics Bureau; stewards p-[0-9a-f]{24}; co-signing sensitive", r.output)
    assert run("stewardship", "adult_census", "--owner", "x", "--policy", "sometimes").exit_code == 2

    r = run("apply", "--title", "Gains", "--purpose", "Capital gains statistics", "--legal-basis", "Statistics Act",
            "--dataset", "adult_census=age,capital_gain", "--epsilon", "1", key=bank)
    scenario = found(r"applied: (s-[0-9a-f]+)", r.output).group(1)
    r = run("pending")
    assert r.exit_code == 0, r.output
    found(r"capital_gain \(sensitive\)", r.output)
    found(r"adult_census: City Statistics Bureau \(sensitive\)", r.output)
    r = run("approve", scenario, "--epsilon", "0.5")
    grant = found(r"grant (g-[0-9a-f]{32})", r.output).group(1)

    r = run("query", "--grant", grant, "--dataset", "adult_census", "--count", "--epsilon", "0.1", key=bank)
    assert r.exit_code == 1 and "co-sign" in r.output, r.output
    r = run("steward-queue", key=steward)
    assert r.exit_code == 0, r.output
    found(rf"{scenario}.*awaits adult_census", r.output)
    r = run("cosign", grant, key=steward)
    assert r.exit_code == 0, r.output
    found(rf"co-signed grant {grant} .*the grant is active", r.output)
    r = run("query", "--grant", grant, "--dataset", "adult_census", "--count", "--epsilon", "0.1", key=bank)
    assert r.exit_code == 0, r.output
    r = run("cosign", grant, key=steward)
    assert r.exit_code == 1 and "already co-signed" in r.output
    r = run("cosign", grant, key=bank)  # not a steward
    assert r.exit_code == 1 and "refused (PERMISSION_DENIED)" in r.output


def test_pending_and_model_show_a_training_plan_in_full(run: Run, sandbox: Sandbox, tmp_path: Path) -> None:  # noqa: F811
    assert run("import", SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz").exit_code == 0
    lab = enrolled(run, tmp_path, "Lab", role="researcher")
    r = run("plan", "--dataset", "rand_hie", "--feature", "xage", "--feature", "female", "--label", "meddol",
            "--threshold", "100", key=lab)
    assert r.exit_code == 0, r.output
    plan = found(r"\b([0-9a-f]{64})\b", r.output).group(1)
    r = run("apply", "--title", "Spending", "--purpose", "Federated model", "--legal-basis", "Research Act",
            "--kind", "FL_TRAINING", "--dataset", "rand_hie=xage,female,meddol", "--epsilon", "2",
            "--delta", "1e-6", "--model-hash", plan, key=lab)
    assert r.exit_code == 0, r.output
    r = run("pending")
    found(r"training plan \(in full\)", r.output)
    found(r"features: xage, female", r.output)
    found(r"label: meddol > 100", r.output)
    r = run("model", plan)  # an administrator reads the plan by its hash (once NOT_FOUND)
    assert r.exit_code == 0, r.output
    found(r"logistic on rand_hie", r.output)
    with ResearcherClient(sandbox.address, key=lab, ca=sandbox.ca) as client:  # proposes its run settings
        client.apply(title="Pinned", purpose="Federated model", legal_basis="Research Act", kind="FL_TRAINING",
                     datasets={"rand_hie": ["xage", "female", "meddol"]}, epsilon=5, delta="1e-6", model_hash=plan,
                     training=dict(rounds=3, clipping_norm=1.0, noise_multiplier=2.0, delta=1e-6))
    r = run("pending")
    found(r"3 rounds x 1 local epoch\(s\)", r.output)
    found(r"client-level DP: clipping 1, noise multiplier 2, delta 1e-06", r.output)
    price = found(r"price: epsilon ([0-9.]+) per run \(the budget asked for covers (\d+) run\(s\)\)", r.output)
    assert int(price.group(2)) == int(5 // float(price.group(1)))


def test_the_audit_listing_filters_and_shows_what_was_asked(run: Run, tmp_path: Path) -> None:  # noqa: F811
    import_census(run)
    bank = enrolled(run, tmp_path, "Bank")
    assert run("catalogue", key=bank).exit_code == 0
    r = run("audit", "--principal", "bank", "--requests")
    assert r.exit_code == 0, r.output
    found(r"Bank \(p-[0-9a-f]{24}\)\s+│ ListCatalogue", r.output)
    assert "EnrolPrincipal" not in r.output and "ImportDataset" not in r.output
    r = run("audit", "--method", "ImportDataset", "--requests")
    found(r"ImportDataset", r.output)
    found(r'"csv":\{"bytes":\d+\}', r.output.replace("\n", "").replace("│", "").replace(" ", ""))
    r = run("audit", "--status", "PERMISSION_DENIED")
    assert r.exit_code == 0 and "ListCatalogue" not in r.output


def test_an_fl_application_file_proposes_settings_that_the_grant_pins(run: Run, tmp_path: Path) -> None:  # noqa: F811
    assert run("import", SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz").exit_code == 0
    lab = enrolled(run, tmp_path, "Lab", role="researcher")
    r = run("plan", "--dataset", "rand_hie", "--feature", "xage", "--feature", "female", "--feature", "educdec",
            "--feature", "lfam", "--feature", "coins", "--feature", "linc", "--feature", "disea", "--feature", "physlm",
            "--label", "meddol", "--threshold", "100", key=lab)
    plan = found(r"\b([0-9a-f]{64})\b", r.output).group(1)
    r = run("apply", "--file", ROOT / "examples" / "application-fl.toml", "--model-hash", plan, key=lab)
    scenario = found(r"applied: (s-[0-9a-f]+)", r.output).group(1)
    r = run("pending")
    found(r"10 rounds x 2 local epoch\(s\)", r.output)
    found(r"secure aggregation \(SecAgg\+\): 6 of 6 holders a round, shares 6, threshold 4", r.output)
    found(r"up to 2 may drop out", r.output)
    price = float(found(r"price: epsilon ([0-9.]+) per run", r.output).group(1))
    grant = found(r"grant (g-[0-9a-f]{32})", run("approve", scenario).output).group(1)
    r = run("train", "--grant", grant, "--plan", plan, "--rounds", "3", "--noise-multiplier", "3", key=lab)
    assert r.exit_code == 1 and "pins the training settings" in r.output, r.output
    r = run("train", "--grant", grant, "--plan", plan, key=lab)  # no setting given: the pinned ones
    assert r.exit_code == 0, r.output
    reserved = float(found(r"with the settings the grant pins \(10 rounds\); reserved epsilon ([0-9.]+)",
                           r.output).group(1))
    assert reserved == price
