"""The end-to-end story of the sandbox on the embedded default: SQLite, bundled data, a real TLS server.

Run with ``make demo``. Everything happens in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import fl_server  # the narrator's own evaluation uses the engine's feature scaling and AUC
from clients import (
    AdminClient, ApplicantClient, AuditorClient, FailedPrecondition, PermissionDenied, Query, ResearcherClient,
    InvalidArgument, ResourceExhausted, StewardClient, generate_key, public_key_of,
)
from clients.verify import certificate_check
from clients.witness import witness
from clients.he import sigmoid

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 110)


def chapter(n: int, title: str) -> None:
    console.print(f"\n[bold cyan]{n}. {title}[/]")


def sandbox_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          check=True)


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.cli", "serve", str(data_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r":(\d+)$", line.strip())
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, f"127.0.0.1:{match.group(1)}"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sandbox-demo-") as tmp:
        run(Path(tmp))


def run(tmp: Path) -> None:
    data_dir = tmp / "city-sandbox"
    console.print("[bold]Data available but not visible[/] (数据可用不可见): a walk through the city's sandbox.")

    chapter(1, "The city data bureau sets up its sandbox")
    sandbox_cmd("init", str(data_dir), "--admin-name", "Li Wei (data bureau)")
    proc, address = start_server(data_dir)
    ca = data_dir / "tls" / "ca.pem"
    console.print(f"`sandbox init` made a CA, a server certificate, an audit-signing key and the first "
                  f"administrator's key; the TLS server now listens on {address}.")
    try:
        story(tmp, data_dir, address, ca)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    chapter(13, "A regulator verifies the audit trail offline")
    out = sandbox_cmd("audit", "verify", str(data_dir))
    console.print(f"The server stopped gracefully (SIGTERM). `sandbox audit verify`: {out.stdout.strip()}")
    console.print("\n[bold green]Done.[/] Every row stayed inside; what left was a catalogue, a signed grant, "
                  "refusals with reasons, and an audit trail anyone with the public key can check.")


def statistics_office(admin: AdminClient, address: str, ca: Path, audit_public_key: bytes) -> None:
    chapter(7, "A statistics office asks the census questions until its budget is spent")
    key = generate_key()
    admin.enrol(name="City Statistics Office", organisation="City government", roles=["applicant"],
                public_key=public_key_of(key))
    office = ApplicantClient(address, key=key, ca=ca)
    s = office.apply(title="Labour statistics 2026", purpose="Publish work-hour and age statistics",
                     legal_basis="Statistics Act art. 7", kind="DP_QUERY",
                     datasets={"adult_census": ["age", "sex", "education", "hours_per_week"]}, epsilon=1, quota=50)
    grant = admin.approve(s.id).grant
    assert grant is not None
    q1 = Query("adult_census").where("age", ">=", 30).group_by("sex").count()
    est = office.estimate_query(grant.id, q1, epsilon=0.25)
    console.print(f"Budget epsilon 1. Before spending anything, the office asks what 'count by sex where age >= 30' "
                  f"would cost at epsilon 0.25: {est.epsilon_cost}, with a 95% half-width of "
                  f"±{est.statistics[0].half_width:.1f} people per count.")
    questions = [
        ("count by sex where age >= 30", q1),
        ("mean hours per week by education", Query("adult_census").group_by("education").mean("hours_per_week")),
        ("median age", Query("adult_census").median("age")),
        ("age histogram", Query("adult_census").histogram("age", [20, 30, 40, 50, 60, 70])),
        ("count of everyone", Query("adult_census").count()),
    ]
    for title, q in questions:
        try:
            res = office.run_query(grant.id, q, epsilon=0.25)
        except ResourceExhausted as exc:
            console.print(f"[bold]{title}[/]: [red]{exc}[/]")
            break
        table = Table("statistic", "group", "value", "95% interval", title=f"{title} (epsilon 0.25)",
                      title_justify="left")
        for st in res.statistics[:6]:
            interval = f"[{st.low:,.1f}, {st.high:,.1f}]" if st.low is not None and st.high is not None else "-"
            table.add_row(st.aggregate, " / ".join(st.group) or "all", f"{st.value:,.1f}", interval)
        if len(res.statistics) > 6:
            table.add_row("…", f"{len(res.statistics) - 6} more rows", "", "")
        console.print(table)
        console.print(f"charged {res.epsilon_charged}, remaining {res.epsilon_remaining} "
                      f"({res.statistics[0].mechanism} noise)")
        if title == questions[0][0] and res.receipt is not None:
            checked = office.verify_receipt(res.receipt, audit_public_key=audit_public_key)
            console.print(f"Its receipt: audit entry {checked.entry.seq}, which records the exact bytes the office "
                          f"received; checked against a tree head of {checked.head.size} entries signed by the "
                          "sandbox's published audit key (an inclusion proof).")
    office.close()


PUBLIC_COLUMNS = ["LIMIT_BAL", "AGE", "PAY_0", "PAY_2", "PAY_3"]
PRIVATE_FEATURES = ["bill_amt1_1e5", "pay_amt1_1e4", "pay_amt2_1e4"]


def column_bounds(admin: AdminClient, dataset: str) -> dict[str, tuple[float | None, float | None]]:
    """Each column's public clamp bounds, from the catalogue."""
    return {c.name: (c.lower, c.upper) for d in admin.catalogue() if d.name == dataset for c in d.columns}


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 400, lr: float = 0.5) -> tuple[np.ndarray, float]:
    """Plain gradient descent on standardised features; returns weights and bias on the raw scale."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-12
    z = (x - mu) / sd
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        w -= lr * z.T @ (p - y) / len(y)
        b -= lr * float(np.mean(p - y))
    return w / sd, b - float(np.sum(w * mu / sd))


def bank_scoring(admin: AdminClient, bank: ApplicantClient, address: str, ca: Path) -> None:
    chapter(8, "The bank scores 1,000 loan applicants: its features encrypted, the sandbox's columns unseen")
    with gzip.open(DATA / "credit_default.csv.gz", "rt") as fh:
        rows = list(csv.DictReader(fh))
    bounds = column_bounds(admin, "credit_default")
    public = np.array([[np.clip(float(r[c]), *bounds[c]) for c in PUBLIC_COLUMNS] for r in rows])
    private = np.array([[float(r["BILL_AMT1"]) / 1e5, float(r["PAY_AMT1"]) / 1e4, float(r["PAY_AMT2"]) / 1e4]
                        for r in rows])
    labels = np.array([int(r["default-payment-next-month"]) for r in rows])
    train = slice(1000, None)
    w, b = fit_logistic(np.hstack([public, private])[train], labels[train])
    model = bank.submit_model(name="default-risk-v1", dataset="credit_default",
                              public_features=list(zip(PUBLIC_COLUMNS, w[:5].tolist())),
                              private_features=list(zip(PRIVATE_FEATURES, w[5:].tolist())), bias=b)
    s = bank.apply(title="Default risk of loan applicants", purpose="Score applicants' default risk",
                   legal_basis="Applicants' consent; Credit Reporting Regulation art. 15", kind="HE_SCORING",
                   datasets={"credit_default": ["ID", *PUBLIC_COLUMNS]}, model_hash=model, quota=5000)
    grant = admin.approve(s.id).grant
    assert grant is not None
    console.print(f"The bank trained a logistic model elsewhere and registered it ({model[:16]}…): "
                  f"{len(PUBLIC_COLUMNS)} sandbox columns, {len(PRIVATE_FEATURES)} private features of its own. "
                  f"The reviewer saw the full spec and approved grant {grant.id}.")
    test = slice(0, 1000)
    ids = [r["ID"] for r in rows[test]]
    result = bank.score(grant.id, model, ids, private[test])
    plain = b + np.hstack([public, private])[test] @ w
    assert result.probabilities is not None
    he_auc, plain_auc = fl_server.auc(result.probabilities, labels[test]), fl_server.auc(sigmoid(plain), labels[test])
    own_auc = fl_server.auc(sigmoid(private[test] @ w[5:]), labels[test])
    review = bank.model(model).review
    assert review is not None
    secs = result.seconds
    console.print(f"1,000 people scored homomorphically in {sum(secs.values()):.1f} s (keys {secs['keygen']:.2f}, "
                  f"upload {secs['upload']:.2f}, encrypt {secs['encrypt']:.2f}, server {secs['server']:.2f}, "
                  f"decrypt {secs['decrypt']:.2f}); {result.bytes_sent / 1e6:.1f} MB sent.")
    console.print(f"The sandbox's release rule added Gaussian noise of sd {result.noise_sd:.3f} to every score "
                  f"(the model's sandbox columns span {review.contribution_range:.2f} logits), so one score carries at "
                  f"most {review.bits_per_score:.2f} bits about the sandbox's columns, and at most "
                  f"{review.bits_per_entity:.2f} bits after the {review.scores_per_entity} scores one grant may make of "
                  "one person.")
    table = Table("", "AUC on 1,000 held-out people", title="homomorphic (with the release rule) vs plaintext",
                  title_justify="left")
    table.add_row("homomorphic scores (CKKS, release rule)", f"{he_auc:.4f}")
    table.add_row("same model in plaintext", f"{plain_auc:.4f}")
    table.add_row("the bank's own features alone", f"{own_auc:.4f}")
    console.print(table)
    console.print(f"Scores minus the plaintext model: mean {float(np.mean(result.logits - plain)):+.3f}, sd "
                  f"{float(np.std(result.logits - plain)):.3f} (the noise). The sandbox never saw the bank's features "
                  "or the scores; the bank never saw the sandbox's rows.")


def bank_verification(admin: AdminClient, bank: ApplicantClient, tmp: Path, audit_public_key: bytes) -> None:
    chapter(9, "The bank verifies 200 loan applicants' declared age and repayment status (核验)")
    s = bank.apply(title="Loan applicants' declarations", purpose="Verify the age and repayment status applicants "
                   "declare", legal_basis="Applicants' consent (PIPL art. 13(1)); Credit Reporting Regulation art. 15",
                   kind="VERIFICATION", datasets={"credit_default": ["ID", "AGE", "PAY_0"]}, quota=1000,
                   verification={"id_column": "ID", "templates": {"age": "AGE == ?", "repaid": "PAY_0 == ?"}})
    grant = admin.approve(s.id).grant
    assert grant is not None and grant.terms.verification is not None
    limit = grant.terms.verification.per_entity_limit
    console.print(f"A score is not always what is needed: the bank wants exact yes/no answers to what applicants "
                  f"declare. It applied for two check templates, age (AGE == ?) and repaid (PAY_0 == ?); the "
                  f"reviewer saw them and signed grant {grant.id}: those checks only, at most {limit} checks of one "
                  "person, and each check must name the person's consent reference.")
    with gzip.open(DATA / "credit_default.csv.gz", "rt") as fh:
        everyone = list(csv.DictReader(fh))  # the narrator's copy of the records
    rows = everyone[5000:5200]  # 200 applicants
    # What the applicants declare: every 10th age is 3 years off; every 20th status is false ("paid duly", -1,
    # where the record says otherwise, 0 where it says -1).
    ages = [(r["ID"], int(r["AGE"]) + (3 if i % 10 == 9 else 0), f"AUTH-2026-{5000 + i:06d}")
            for i, r in enumerate(rows)]
    paid = [(r["ID"], (-1 if r["PAY_0"] != "-1" else 0) if i % 20 == 19 else int(r["PAY_0"]),
             f"AUTH-2026-{5000 + i:06d}") for i, r in enumerate(rows)]
    table = Table("template", "claims checked", "MATCH", "NO_MATCH", "false claims planted", "quota used",
                  title="200 applicants, each check with its consent reference", title_justify="left")
    by_age = bank.verify(grant.id, "age", ages, certificates=True)
    by_pay = bank.verify(grant.id, "repaid", paid)
    for name, expr, res, planted in (("age", "AGE == ?", by_age, 20), ("repaid", "PAY_0 == ?", by_pay, 10)):
        table.add_row(f"{name} ({expr})", str(len(res.results)), str(res.matches),
                      str(len(res.results) - res.matches), str(planted), f"{res.quota_used} / {res.quota_cap}")
    console.print(table)
    assert [r == "NO_MATCH" for r in by_age.results] == [i % 10 == 9 for i in range(200)]
    assert [r == "NO_MATCH" for r in by_pay.results] == [i % 20 == 19 for i in range(200)]
    [entry] = [e for e in admin.audit_entries(method="Verify", grant_id=grant.id, status="OK")
               if '"template":"age"' in e.request]
    console.print(f"Every false claim was caught and no true one refused. The audit entry of the age batch records "
                  f"what was asked, never an id, a claim or a consent reference: {entry.request}")
    try:
        bank.verify(grant.id, "limit", [(rows[0]["ID"], "200000", "AUTH-2026-005000")])
    except PermissionDenied as exc:
        console.print(f"A check the grant does not pin (a credit-limit template, 'limit'): [red]{exc}[/]")
    guesses = ("-2", "-1", "0", "1")
    # A fresh applicant (the 200 have had two checks each), whose status is none of the first three guesses.
    target = next(r for r in everyone[6000:] if r["PAY_0"] not in guesses[:3])
    answers = []
    for guess in guesses:
        try:
            res = bank.verify(grant.id, "repaid", [(target["ID"], guess, "AUTH-2026-006001")])
            answers.append(f"{guess}: {res.results[0]}")
        except ResourceExhausted as exc:
            answers.append(f"{guess}: [red]{exc}[/]")
    console.print(f"Someone at the bank tries to learn one applicant's repayment status by guessing it value by "
                  f"value; the per-entity limit ({limit} checks of one person per grant, whatever the template) "
                  "stops the search: " + "; ".join(answers))
    cert = by_age.certificates[0]
    path = tmp / "applicant-0-age.cert.json"
    path.write_text(cert.to_file(), encoding="utf-8")  # the bank hands it to a third party (say, a guarantor)
    entity, claim, consent = ages[0]
    ok = certificate_check(path.read_text(encoding="utf-8"), audit_public_key, entity_id=entity, claim=str(claim),
                           consent_ref=consent)
    edited = path.read_text(encoding="utf-8").replace('"result": "MATCH"', '"result": "NO_MATCH"')
    bad = certificate_check(edited, audit_public_key, entity_id=entity, claim=str(claim), consent_ref=consent)
    assert ok.valid and cert.result == "MATCH" and not bad.valid
    console.print(f"The bank asked for a certificate per age check. A guarantor given the first applicant's, with the "
                  f"id, claim and consent reference it is about, checked it offline against the sandbox's published "
                  f"audit key: [green]valid[/] ({ok.document['result']}, template {ok.document['template']}, audit "
                  f"entry {ok.document['audit_seq']}; the certificate itself holds only salted digests of them). An "
                  f"edited copy saying NO_MATCH: [red]{'; '.join(bad.problems)}[/].")


FL_FEATURES = ["xage", "female", "educdec", "lfam", "coins", "linc", "disea", "physlm"]
FL_THRESHOLD = 35.0  # dollars a year: the label is "medical spending above this public threshold"


def federated_training(admin: AdminClient, lab: ResearcherClient, steward: StewardClient
                       ) -> list[tuple[str, str, str]]:
    """Chapter 10; returns (job id, what it is, a registry name) of the three runs: DP with and without secure
    aggregation, no DP."""
    chapter(10, "A researcher trains across the six RAND sites: with and without DP, only the model leaves")
    plan = lab.register_plan(dataset="rand_hie", features=FL_FEATURES, label="meddol", label_threshold=FL_THRESHOLD)
    s = lab.apply(title="Medical spending model", purpose="Predict above-threshold medical spending",
                  legal_basis="Research exemption, Health Data Act art. 9", kind="FL_TRAINING",
                  datasets={"rand_hie": [*FL_FEATURES, "meddol"]}, epsilon=40, delta="1e-5", quota=3,
                  model_hash=plan)
    shown = admin.training_plan(plan)  # the reviewer reads the plan in full before signing
    grant = admin.approve(s.id).grant
    assert grant is not None
    console.print(f"The reviewer read plan {plan[:16]}… in full ({shown.model} model; features "
                  f"{', '.join(shown.features)}; label {shown.label} > ${shown.label_threshold:.0f}) and signed "
                  f"grant {grant.id} with epsilon 40.")
    try:
        lab.start_training(grant.id, plan, rounds=1, clipping_norm=1.0, noise_multiplier=3.0, delta=1e-6)
    except FailedPrecondition as exc:
        console.print(f"The health records belong to the Health Commission, whose policy is to co-sign every grant "
                      f"over them (谁持有谁负责). Before it does, training is refused: [red]{exc}[/]")
    cosigned = steward.cosign(grant.id)
    grant = cosigned.grant
    assert grant is not None and not grant.awaiting
    lab.verify_grant(grant)
    console.print(f"The Commission's steward read the same terms and co-signed with its own key; the lab verified "
                  f"both signatures offline ({len(grant.cosignatures)} steward co-signature, required by the "
                  "administrator-signed terms). Each site is a Flower node that reads only its own rows.")
    sa = s.training_secure_aggregation
    console.print("With six sites, training runs under secure aggregation (Flower's SecAgg+) unless the researcher "
                  "turns it off: each site masks its update, and the sandbox sees only their sum"
                  + (f" (shares {sa.shares}, threshold {sa.threshold}: up to {sa.sampled - sa.threshold} sites may "
                     "drop out of a round)." if sa is not None and sa.on else "."))
    runs = {}
    jobs = []
    dp_args = dict(clipping_norm=1.0, noise_multiplier=3.0, delta=1e-6)
    for title, args in (("with client-level DP and secure aggregation (clipping 1, noise multiplier 3)", dp_args),
                        ("with client-level DP, secure aggregation off (the sandbox sees each site's update)",
                         {**dp_args, "secure_aggregation": "off"}),
                        ("without DP (charged the whole remaining budget)", {})):
        job = lab.start_training(grant.id, plan, rounds=10, local_epochs=2, learning_rate=0.5, **args)  # type: ignore[arg-type]
        jobs.append(job)
        events = list(lab.watch_training(job))
        table = Table("round", "federated loss", "federated accuracy", "epsilon spent", "sites",
                      title=f"10 rounds {title}", title_justify="left")
        for e in events:
            if e.state == "running":
                metrics = (("withheld", "withheld") if e.loss is None or e.accuracy is None
                           else (f"{e.loss:.4f}", f"{e.accuracy:.3f}"))
                table.add_row(str(e.round), *metrics, f"{e.epsilon_spent:.2f}", str(len(e.participants)))
        console.print(table)
        runs[title] = lab.training_result(job)
        console.print(f"{events[-1].state}: charged epsilon {runs[title].epsilon_charged.normalize()}")
    # The narrator (not the researcher) can read the bundled file, to compare with centralised training.
    with gzip.open(DATA / "rand_hie.csv.gz", "rt") as fh:
        rows = list(csv.DictReader(fh))
    bounds = column_bounds(admin, "rand_hie")
    eng_plan = fl_server.TrainingPlan(
        features=tuple(fl_server.Feature(f, lower=bounds[f][0], upper=bounds[f][1]) for f in FL_FEATURES),
        label=fl_server.Label("meddol", FL_THRESHOLD), rounds=10, learning_rate=0.5)
    cols = {c: np.array([float(r[c]) if r[c] != "" else np.nan for r in rows]) for c in [*FL_FEATURES, "meddol"]}
    part = fl_server.prepare_partition(eng_plan, cols, holder="all")
    w, b = fit_logistic(part.x, part.y)
    central_p = 1 / (1 + np.exp(-(part.x_eval @ w + b)))
    table = Table("model", "accuracy", "AUC", title=f"on {len(part.y_eval):,} person-years the centralised model "
                  "did not train on", title_justify="left")
    accuracy = {}
    for title, res in runs.items():
        p = fl_server.predict_proba(eng_plan, list(res.weights), part.x_eval)
        accuracy[title] = float(np.mean((p > 0.5) == (part.y_eval > 0.5)))
        table.add_row(f"federated {title.split(' (')[0]}", f"{accuracy[title]:.3f}",
                      f"{fl_server.auc(p, part.y_eval):.3f}")
    table.add_row("centralised (all rows pooled, same model)",
                  f"{np.mean((central_p > 0.5) == (part.y_eval > 0.5)):.3f}", f"{fl_server.auc(central_p, part.y_eval):.3f}")
    console.print(table)
    (on, on_res), (off, off_res) = list(runs.items())[:2]
    assert on_res.epsilon_charged == off_res.epsilon_charged  # the same plan, the same price
    console.print(f"Secure aggregation cost no accuracy worth the name: {accuracy[on]:.3f} with it, "
                  f"{accuracy[off]:.3f} without ({abs(accuracy[on] - accuracy[off]) * 100:.1f} points apart; each DP "
                  "run draws fresh noise), at the same price, epsilon "
                  f"{on_res.epsilon_charged.normalize()}. Under DP the per-round federated metrics are withheld "
                  "(epsilon does not cover them); the researcher received each model and nothing from any single "
                  "site.")
    return [(jobs[0], "DP model", "medical-spending-dp"),
            (jobs[1], "other DP model (trained with secure aggregation off)", "medical-spending-dp"),
            (jobs[2], "model trained without DP", "medical-spending")]


FL_PRIVATE = ["linc", "lfam"]  # log income and log family size: figures an insurer holds for its own customers


def register_first_accepted(lab: ResearcherClient, jobs: list[tuple[str, str, str]],
                            private: list[str]) -> tuple[str, str, str]:
    """Register the first of ``jobs`` the release rule accepts: (model hash, job id, what it is).

    A DP model's weights carry the training noise: now and then one term dwarfs all but one or two others, and the
    rule's balance check refuses it (folding the small terms would leave too few sandbox columns). The lab then
    registers its next run; the model trained without DP has no noise and passes. Any other refusal is the demo's
    own mistake and ends it.
    """
    for job, what, name in jobs:
        try:
            model = lab.register_trained_model(job, name=name, private_features=private,
                                               description="Pilot: expected-cost bands for a supplementary plan.")
            return model, job, what
        except InvalidArgument as exc:
            if "contributions are unbalanced" not in str(exc):
                raise
            console.print(f"The registry refused the lab's {what}: [red]{exc}[/] (each DP run draws fresh noise).")
    raise SystemExit("the registry refused every model the lab trained")


def insurer_scoring(admin: AdminClient, lab: ResearcherClient, steward: StewardClient,
                    jobs: list[tuple[str, str, str]], address: str, ca: Path) -> None:
    chapter(11, "The lab's DP model goes into the registry; an insurer scores people with it under HE")
    private = list(FL_PRIVATE)
    model, job, what = register_first_accepted(lab, jobs, private)
    spec = admin.model(model)
    public = [c for c, _ in spec.public_features]
    folded = [f for f in FL_FEATURES if f not in private and f not in public]
    console.print(f"The lab registered its {what} as {model[:16]}…: weights converted to raw column units, "
                  f"{', '.join(private)} marked as features the scoring party supplies, its origin written into "
                  "the spec the reviewer reads. "
                  + (f"Terms the balance rule would refuse as too small ({', '.join(folded)}: under a tenth of the "
                     "largest term) were folded into the bias, and the spec says so."
                     if folded else "Every sandbox term was large enough for the release rule."))
    key = generate_key()
    admin.enrol(name="Riverside Mutual", organisation="Riverside Mutual Insurance", roles=["applicant"],
                public_key=public_key_of(key))
    insurer = ApplicantClient(address, key=key, ca=ca)
    s = insurer.apply(title="Expected medical cost bands", purpose="Price a supplementary health plan",
                      legal_basis="Consent of policy holders; Insurance Act art. 4", kind="HE_SCORING",
                      datasets={"rand_hie": ["zper", *public]}, model_hash=model, quota=1000)
    admin.approve(s.id)
    grant = steward.cosign(admin.scenario(s.id).grant.id).grant  # type: ignore[union-attr]  (the Commission again)
    assert grant is not None and not grant.awaiting
    with gzip.open(DATA / "rand_hie.csv.gz", "rt") as fh:
        latest = {r["zper"]: r for r in csv.DictReader(fh)}  # a person's last row is the latest study year
    people = [r for r in latest.values() if all(r[f] != "" for f in FL_FEATURES)][:500]
    bounds = column_bounds(admin, "rand_hie")
    own = np.array([[np.clip(float(r[f]), *bounds[f]) for f in private] for r in people])  # the insurer's figures
    result = insurer.score(grant.id, model, [r["zper"] for r in people], own)
    assert result.probabilities is not None
    # The narrator checks against the lab's model in plaintext, on the same people's full records.
    eng_plan = fl_server.TrainingPlan(
        features=tuple(fl_server.Feature(f, lower=bounds[f][0], upper=bounds[f][1]) for f in FL_FEATURES),
        label=fl_server.Label("meddol", FL_THRESHOLD), eval_fraction=0.0)
    cols = {c: np.array([float(r[c]) for r in people]) for c in [*FL_FEATURES, "meddol"]}
    part = fl_server.prepare_partition(eng_plan, cols)
    plain = fl_server.predict_proba(eng_plan, list(lab.training_result(job).weights), part.x)
    # The registered model in plaintext (raw units, values clipped to the column bounds as the server does): the
    # scores differ from it by the release rule's noise alone.
    registered = spec.bias + sum(w * np.clip(cols[c], *bounds[c]) for c, w in (*spec.public_features,
                                                                                *spec.private_features))
    console.print(f"Riverside Mutual scored {len(people)} people with their {' and '.join(private)} encrypted: "
                  f"mean predicted probability of above-${FL_THRESHOLD:.0f} spending "
                  f"{float(np.mean(result.probabilities)):.3f} (the lab's model in plaintext: {float(np.mean(plain)):.3f}); "
                  f"logits differ from the registered model by the release rule's noise (sd {result.noise_sd:.3f}, "
                  f"measured {float(np.std(result.logits - registered)):.3f}). No site's rows, and none of the "
                  "insurer's figures, were seen by anyone else.")
    insurer.close()


def story(tmp: Path, data_dir: Path, address: str, ca: Path) -> None:
    admin = AdminClient(address, key=data_dir / "keys" / "admin.key", ca=ca)
    keys = {name: generate_key() for name in ("reviewer", "bank", "lab", "steward")}
    admin.enrol(name="Zhang Min (reviewer)", organisation="City data bureau", roles=["admin"],
                public_key=public_key_of(keys["reviewer"]))
    bank_p = admin.enrol(name="Harbour Bank", organisation="Harbour Bank Ltd", roles=["applicant"],
                         public_key=public_key_of(keys["bank"]))
    lab_p = admin.enrol(name="Health Economics Lab", organisation="City University", roles=["researcher"],
                        public_key=public_key_of(keys["lab"]))
    steward_p = admin.enrol(name="Li Na (Health Commission data steward)", organisation="City Health Commission",
                            roles=["steward"], public_key=public_key_of(keys["steward"]))
    console.print(f"The administrator enrolled a second administrator (the reviewer), {bank_p.name} "
                  f"({bank_p.id}), {lab_p.name} ({lab_p.id}) and the Health Commission's data steward "
                  f"({steward_p.id}). Each holds its own Ed25519 key; every request is signed.")

    chapter(2, "Three public-sector tables go in, classified column by column (分类分级)")
    table = Table("dataset", "rows imported", "duplicates dropped", "version (content hash)", "levels")
    for name in ("adult_census", "credit_default", "rand_hie"):
        r = admin.import_dataset(DATA / "schemas" / f"{name}.toml", DATA / f"{name}.csv.gz")
        levels: dict[str, int] = {}
        for c in r.dataset.columns:
            levels[c.level] = levels.get(c.level, 0) + 1
        table.add_row(name, f"{r.rows_imported:,}", str(r.duplicates_dropped), r.dataset.version[:16] + "…",
                      ", ".join(f"{n} {lvl}" for lvl, n in sorted(levels.items())))
    console.print(table)
    admin.set_stewardship("rand_hie", owner="City Health Commission", stewards=[steward_p.id], policy="always")
    console.print("The health experiment's records are held by the City Health Commission: its steward must "
                  "co-sign every grant over them.")

    bank = ApplicantClient(address, key=keys["bank"], ca=ca)
    steward = StewardClient(address, key=keys["steward"], ca=ca)
    lab = ResearcherClient(address, key=keys["lab"], ca=ca)
    reviewer = AdminClient(address, key=keys["reviewer"], ca=ca)

    chapter(3, "The bank reads the catalogue: schemas and levels, a rounded row count, never a row")
    credit = next(d for d in bank.catalogue() if d.name == "credit_default")
    console.print(f"credit_default: about {credit.approx_rows:,} rows; columns include " + ", ".join(
        f"{c.name} ({c.level})" for c in credit.columns[:6]) + ", …")

    chapter(4, "One scenario, one application")
    s = bank.apply(title="Credit limit statistics", purpose="Publish default rates by credit limit band",
                   legal_basis="Consent of data subjects; Credit Reporting Regulation art. 12", kind="DP_QUERY",
                   datasets={"credit_default": ["LIMIT_BAL", "AGE", "SEX", "default-payment-next-month"]},
                   epsilon=2, delta="1e-6", quota=200, valid_for=dt.timedelta(days=90))
    console.print(f"Harbour Bank applied: scenario {s.id}, status [yellow]{s.status}[/], asking for epsilon "
                  f"{s.epsilon}, delta {s.delta}, {s.quota} calls, columns {', '.join(s.datasets[0].columns)}.")
    try:
        bank.apply(title="Everything", purpose="Look at person ids", legal_basis="none", kind="DP_QUERY",
                   datasets={"rand_hie": ["rownames", "meddol"]}, epsilon=1)
    except PermissionDenied as exc:
        console.print(f"A second application naming a core column was refused at once: [red]{exc}[/]")

    chapter(5, "One scenario, one authorisation: the reviewer narrows and signs")
    pending = reviewer.pending()
    console.print(f"The reviewer sees {len(pending)} pending application(s) with purpose and legal basis.")
    approved = reviewer.approve(s.id, epsilon=1, columns={"credit_default": ["LIMIT_BAL", "AGE",
                                                                             "default-payment-next-month"]})
    grant = approved.grant
    assert grant is not None
    terms = bank.verify_grant(grant)
    console.print(f"Approved with grant {grant.id}: epsilon narrowed to {terms.epsilon}, column SEX removed, "
                  f"signed by {terms.approver_id}. The bank verified the signature offline against the "
                  "administrators' public keys.")
    try:
        reviewer.approve(s.id)
    except Exception as exc:  # noqa: BLE001 - shown to the reader
        console.print(f"A second grant for the same scenario: [red]{exc}[/]")

    chapter(6, "Inside the grant, and outside it")
    ok = bank.check_access(grant.id, kind="DP_QUERY", dataset="credit_default", columns=["LIMIT_BAL", "AGE"])
    assert ok.usage is not None
    console.print(f"Asking for LIMIT_BAL and AGE: [green]allowed[/] ({ok.usage.quota_used}/{ok.quota} calls used).")
    for cols, what in ((["SEX"], "a column the reviewer removed"), (["BILL_AMT1"], "a sensitive column it never named")):
        try:
            bank.check_access(grant.id, kind="DP_QUERY", dataset="credit_default", columns=cols)
        except PermissionDenied as exc:
            console.print(f"Asking for {what}: [red]{exc}[/]")
    try:
        lab.check_access(grant.id, kind="DP_QUERY", dataset="credit_default", columns=["AGE"])
    except PermissionDenied as exc:
        console.print(f"The lab trying to use the bank's grant: [red]{exc}[/]")

    audit_public_key = bytes.fromhex((data_dir / "keys" / "audit_signing.pub").read_text())  # the published key
    statistics_office(admin, address, ca, audit_public_key)
    bank_scoring(admin, bank, address, ca)
    bank_verification(admin, bank, tmp, audit_public_key)

    insurer_scoring(admin, lab, steward, federated_training(admin, lab, steward), address, ca)

    chapter(12, "The bureau revokes, and everything is on the record")
    admin.revoke(grant.id, "bank's contract ended")
    try:
        bank.check_access(grant.id, kind="DP_QUERY", dataset="credit_default", columns=["AGE"])
    except PermissionDenied as exc:
        console.print(f"After revocation the bank's next call stops at once: [red]{exc}[/]")
    entries = list(admin.audit_entries())
    statuses: dict[str, int] = {}
    for e in entries:
        statuses[e.status] = statuses.get(e.status, 0) + 1
    console.print(f"The audit log holds {len(entries)} signed entries: " +
                  ", ".join(f"{n} {st}" for st, n in sorted(statuses.items())) + ".")
    key = generate_key()
    admin.enrol(name="Market regulator", organisation="City market regulator", roles=["auditor"],
                public_key=public_key_of(key))
    with AuditorClient(address, key=key, ca=ca) as regulator:
        state = tmp / "regulator-witness"  # on the regulator's own machine
        first = witness(regulator, state, audit_public_key)
        again = witness(regulator, state)
    assert first.head is not None and again.head is not None
    console.print(f"The regulator's witness checked the signed tree head of {first.head.size} entries, countersigned "
                  f"it and stored it; on its next run the head of {again.head.size} entries extended it (consistency "
                  "proof checked). Had anyone truncated or rewritten the log in between, that run would fail.")
    for client in (admin, reviewer, bank, lab):
        client.close()


if __name__ == "__main__":
    main()
