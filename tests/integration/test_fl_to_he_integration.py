"""A federated model goes into the model registry and an insurer scores people with it under HE.

The lab trains a logistic model across the six RAND sites, registers it with two of its features
(log income, log family size) marked private; an insurer that holds its own figures for those
applies for an HE scenario naming the model, and its encrypted scores are the trained model's
logits on the person's latest record plus the release rule's noise (centred, of the stated sd).
"""

from __future__ import annotations

import csv
import gzip
import tomllib

import numpy as np
import pytest

from clients import (
    ApplicantClient, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResearcherClient,
)
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox

FEATURES = ["xage", "female", "educdec", "lfam", "coins", "linc", "disea", "physlm"]
PRIVATE = ["linc", "lfam"]
PUBLIC = [f for f in FEATURES if f not in PRIVATE]
LABEL, THRESHOLD = "meddol", 35.0


def bounds() -> dict[str, tuple[float, float]]:
    schema = tomllib.loads((SCHEMAS / "rand_hie.toml").read_text())
    return {c["name"]: (float(c["lower"]), float(c["upper"])) for c in schema["columns"] if "lower" in c}


def latest_rows(n: int) -> list[dict[str, str]]:
    """The last stored row of each person (the file is ordered by person and year), complete in FEATURES."""
    latest: dict[str, dict[str, str]] = {}
    with gzip.open(DATA / "rand_hie.csv.gz", "rt") as fh:
        for row in csv.DictReader(fh):
            latest[row["zper"]] = row
    complete = [r for r in latest.values() if all(r[f] != "" for f in FEATURES)]
    return complete[:: max(1, len(complete) // n)][:n]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path_factory.mktemp("fl-he"))
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
    insurer = enrol_client(admin, sbx, ApplicantClient, "Insurer", ["applicant"])
    stranger = enrol_client(admin, sbx, ApplicantClient, "Stranger", ["applicant"])

    def trained(model: str = "logistic", rounds: int = 5) -> tuple[str, str]:
        plan = lab.register_plan(dataset="rand_hie", features=FEATURES, label=LABEL,  # type: ignore[attr-defined]
                                 label_threshold=THRESHOLD, model=model, hidden_units=4 if model == "mlp" else 0)
        s = lab.apply(title="Medical spending model", purpose="Predict above-threshold medical spending",  # type: ignore[attr-defined]
                      legal_basis="Research exemption", kind="FL_TRAINING",
                      datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=plan, epsilon=3, quota=5)
        g = admin.approve(s.id).grant
        assert g is not None
        job = lab.start_training(g.id, plan, rounds=rounds, local_epochs=2, learning_rate=0.5)  # type: ignore[attr-defined]
        assert list(lab.watch_training(job))[-1].state == "completed"  # type: ignore[attr-defined]
        return job, g.id

    job, _ = trained()
    yield sbx, admin, lab, insurer, stranger, job, trained
    for c in (admin, lab, insurer, stranger):
        c.close()  # type: ignore[attr-defined]
    sbx.stop()


def test_a_trained_model_scores_under_he_as_it_predicts_in_plaintext(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, lab, insurer, stranger, job, _ = env
    model = lab.register_trained_model(job, name="spending-risk", private_features=PRIVATE,
                                       description="For premium pricing pilots.")
    with pytest.raises(NotFound):  # the SDK reads the spec first: only a grantee of the model may
        insurer.score("g-none", model, ["1"], np.zeros((1, 2)))
    s = insurer.apply(title="Spending risk scoring", purpose="Price a pilot product",
                      legal_basis="Consent; Insurance Act", kind="HE_SCORING",
                      datasets={"rand_hie": ["zper", *PUBLIC]}, model_hash=model, quota=10_000)
    review = next(p for p in admin.pending() if p.id == s.id)
    assert review.model_hash == model
    g = admin.approve(s.id).grant
    assert g is not None

    rows = latest_rows(300)
    b = bounds()
    private = np.array([[np.clip(float(r[p]), *b[p]) for p in PRIVATE] for r in rows])  # the insurer's own figures
    result = insurer.score(g.id, model, [r["zper"] for r in rows], private)

    weights = lab.training_result(job).weights
    scaled = np.array([[(np.clip(float(r[f]), *b[f]) - b[f][0]) / (b[f][1] - b[f][0]) for f in FEATURES]
                       for r in rows])
    expected = scaled @ np.asarray(weights[0]) + float(np.asarray(weights[1])[0])
    diff = result.logits - expected
    sd = insurer.model(model).review.noise_sd
    assert result.noise_sd == pytest.approx(sd)
    # 300 draws: the sample sd within 20% and the mean within 0.3 sd, each more than 5 standard errors.
    assert np.std(diff) == pytest.approx(sd, rel=0.2) and abs(np.mean(diff)) < 0.3 * sd
    assert np.corrcoef(result.logits, expected)[0, 1] > 0.5  # the model still ranks people (noise sd vs spread)
    assert result.probabilities is not None

    with pytest.raises(NotFound):  # a principal without a grant for the model cannot read its weights
        stranger.score("g-none", model, ["1"], np.zeros((1, 2)))


def test_the_registered_spec_names_its_origin_and_is_visible_to_the_grantee(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, lab, insurer, stranger, job, _ = env
    model = lab.register_trained_model(job, name="spending-risk-2", private_features=["linc"])
    again = lab.register_trained_model(job, name="spending-risk-2", private_features=["linc"])
    assert again == model  # the same conversion of the same model: the same id
    from protos.sandbox.v1 import he_pb2
    get = he_pb2.GetModelRequest(model_hash=model)

    def read(client):  # type: ignore[no-untyped-def]
        return client._t.call("/sandbox.v1.ModelService/GetModel", get, he_pb2.GetModelResponse).spec

    spec = read(admin)
    assert job in spec.description and "linc [0, 11]" in spec.description
    assert [f.name for f in spec.private_features] == ["linc"]
    # Every other feature is a sandbox column, unless the conversion folded it into the bias (too small a term for
    # the release rule: which ones depends on the trained weights); the description names each one folded.
    folded = [f for f in FEATURES if f"{f} (contribution " in spec.description]
    assert "linc" not in folded and len(spec.public_features) >= 3
    assert [f.column for f in spec.public_features] == [f for f in FEATURES if f != "linc" and f not in folded]
    for outsider in (insurer, stranger):
        with pytest.raises(NotFound):
            read(outsider)
    s = insurer.apply(title="Spending risk scoring", purpose="Price a pilot product",
                      legal_basis="Consent; Insurance Act", kind="HE_SCORING",
                      datasets={"rand_hie": ["zper", *[f for f in FEATURES if f != "linc"]]}, model_hash=model,
                      quota=10)
    with pytest.raises(NotFound):  # applying is not enough: an administrator must approve
        read(insurer)
    admin.approve(s.id)
    assert read(insurer).bias == spec.bias
    with pytest.raises(NotFound):
        read(stranger)


@pytest.mark.parametrize("private", [[], ["meddol"], ["nosuch"], ["linc", "linc"],
                                     ["xage", "female", "educdec", "lfam", "coins", "linc"]])
def test_bad_private_features_are_refused(env, private: list[str]) -> None:  # type: ignore[no-untyped-def]
    _, _, lab, _, _, job, _ = env
    with pytest.raises(InvalidArgument):  # not plan features, repeated, none, or too few public weights left
        lab.register_trained_model(job, name="bad", private_features=private)


def test_only_a_finished_logistic_model_of_ones_own_job_under_a_live_grant(env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, lab, _, _, job, trained = env
    other = enrol_client(admin, sbx, ResearcherClient, "Other lab", ["researcher"])
    try:
        with pytest.raises(NotFound):
            other.register_trained_model(job, name="stolen", private_features=PRIVATE)  # type: ignore[attr-defined]
    finally:
        other.close()  # type: ignore[attr-defined]
    with pytest.raises(NotFound):
        lab.register_trained_model("j-" + "0" * 20, name="none", private_features=PRIVATE)

    mlp_job, _ = trained(model="mlp", rounds=2)
    with pytest.raises(InvalidArgument, match="mlp"):
        lab.register_trained_model(mlp_job, name="mlp", private_features=PRIVATE)

    revoked_job, grant_id = trained(rounds=2)
    admin.revoke(grant_id, reason="consent withdrawn")
    with pytest.raises(PermissionDenied):
        lab.register_trained_model(revoked_job, name="revoked", private_features=PRIVATE)


def test_an_unfinished_job_has_no_model_to_register(env) -> None:  # type: ignore[no-untyped-def]
    _, admin, lab, _, _, _, _ = env
    plan = lab.register_plan(dataset="rand_hie", features=FEATURES, label=LABEL, label_threshold=THRESHOLD)
    s = lab.apply(title="Long run", purpose="Predict spending", legal_basis="Research exemption", kind="FL_TRAINING",
                  datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=plan, epsilon=100, delta="1e-5", quota=5)
    g = admin.approve(s.id).grant
    assert g is not None
    job = lab.start_training(g.id, plan, rounds=200, clipping_norm=1.0, noise_multiplier=5.0, delta=1e-6)
    lab.cancel_training(job)
    assert list(lab.watch_training(job))[-1].state == "cancelled"
    with pytest.raises(FailedPrecondition):
        lab.register_trained_model(job, name="cancelled", private_features=PRIVATE)
