"""Federated training through the SDK against a real TLS server: pricing, progress, cancel, revoke, dropout."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fl_server
from clients import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResearcherClient, ResourceExhausted
from sandbox import catalogue, fl_jobs, fl_plans, ledger
from sandbox.state.sqlite import SqliteState as Database
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox
from protos.sandbox.v1 import common_pb2, fl_pb2

FEATURES = ["xage", "female", "educdec", "lfam", "coins", "linc", "disea", "physlm"]
LABEL, THRESHOLD = "meddol", 100.0


@pytest.fixture(scope="module")
def fl_env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path_factory.mktemp("fl"))
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
    plan = lab.register_plan(dataset="rand_hie", features=FEATURES, label=LABEL, label_threshold=THRESHOLD)  # type: ignore[attr-defined]

    def grant(epsilon: float = 100.0, delta: str = "1e-5", quota: int = 20) -> str:
        s = lab.apply(title="Medical spending model", purpose="Predict above-threshold medical spending",  # type: ignore[attr-defined]
                      legal_basis="Research exemption", kind="FL_TRAINING",
                      datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=plan, epsilon=epsilon, delta=delta,
                      quota=quota)
        g = admin.approve(s.id).grant
        assert g is not None
        return g.id

    yield sbx, admin, lab, plan, grant
    for c in (admin, lab):
        c.close()  # type: ignore[attr-defined]
    sbx.stop()


def test_a_researcher_lists_its_own_training_jobs(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, lab, plan, grant = fl_env
    g = grant()
    job = lab.start_training(g, plan, rounds=2, local_epochs=1, learning_rate=0.5, clipping_norm=1.0,
                             noise_multiplier=1.0, delta=1e-6)
    last = list(lab.watch_training(job))[-1]
    listed = {j.job_id: j for j in lab.training_jobs()}
    mine = listed[str(job)]
    assert (mine.grant_id, mine.plan_hash, mine.state, mine.round, mine.rounds) == (g, plan, "completed", 2, 2)
    assert mine.epsilon_spent == pytest.approx(last.epsilon_spent) and mine.settings.noise_multiplier == 1.0
    other = enrol_client(admin, sbx, ResearcherClient, "Other lab", ["researcher"])
    assert other.training_jobs() == []  # another researcher's jobs are not listed
    other.close()


def test_proposed_settings_are_priced_for_review_and_pinned_by_the_grant(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, lab, plan, _ = fl_env
    proposal = dict(rounds=2, local_epochs=1, learning_rate=0.5, clipping_norm=1.0, noise_multiplier=1.5,
                    delta=1e-6)
    s = lab.apply(title="Pinned model", purpose="Predict above-threshold medical spending",
                  legal_basis="Research exemption", kind="FL_TRAINING", datasets={"rand_hie": [*FEATURES, LABEL]},
                  model_hash=plan, epsilon=50, delta="1e-5", quota=5, training=proposal)
    assert s.training is not None and s.training.rounds == 2 and s.training.noise_multiplier == 1.5
    db = Database(sbx.data_dir / "sandbox.db")
    try:
        with db.read() as tx:
            tmpl = fl_plans.get(tx, plan)
            info = catalogue.get_dataset(tx, "rand_hie")
    finally:
        db.close()
    settings = fl_plans.TrainingSettings(**proposal)  # type: ignore[arg-type]
    expected, _ = fl_plans.price(tmpl, settings, info)
    assert float(s.training_epsilon) == pytest.approx(expected, rel=1e-6)  # the accountant's, for exactly these
    assert s.training_epsilon > 0
    pending = next(p for p in admin.pending() if p.id == s.id)
    assert pending.training == s.training and pending.training_epsilon == s.training_epsilon
    g = admin.approve(s.id).grant
    assert g is not None and g.terms.training == s.training
    with pytest.raises(PermissionDenied) as refused:  # more rounds than approved
        lab.start_training(g.id, plan, rounds=3, clipping_norm=1.0, noise_multiplier=1.5, delta=1e-6)
    assert refused.value.code == "OUTSIDE_GRANT"
    job = lab.start_training(g.id, plan)  # no settings: the pinned ones
    assert job.epsilon_reserved == s.training_epsilon
    events = list(lab.watch_training(job))
    assert [e.round for e in events if e.state == "running"] == [1, 2] and events[-1].state == "completed"
    listed = next(j for j in lab.training_jobs() if j.job_id == str(job))
    assert listed.settings == s.training
    again = lab.start_training(g.id, plan, **proposal)  # repeating them exactly is the same run
    assert again.epsilon_reserved == s.training_epsilon
    lab.cancel_training(again)


def test_a_proposal_that_is_not_valid_for_the_plan_is_refused_at_application(fl_env) -> None:  # type: ignore[no-untyped-def]
    _, _, lab, plan, _ = fl_env
    with pytest.raises(InvalidArgument):
        lab.apply(title="Bad", purpose="p", legal_basis="b", kind="FL_TRAINING",
                  datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=plan, epsilon=5, delta="1e-5",
                  training=dict(rounds=0, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6))
    with pytest.raises(InvalidArgument):  # an unknown setting is refused before anything is sent
        lab.apply(title="Bad", purpose="p", legal_basis="b", kind="FL_TRAINING",
                  datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=plan, epsilon=5, training=dict(epochs=2))


def spent(sbx, grant_id: str) -> int:  # type: ignore[no-untyped-def]
    db = Database(sbx.data_dir / "sandbox.db")
    try:
        with db.read() as conn:
            return ledger.budget_state(conn, grant_id).usage.epsilon_spent_nano
    finally:
        db.close()


def test_dp_training_charges_the_accountants_epsilon(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, lab, plan, grant = fl_env
    g = grant()
    job = lab.start_training(g, plan, rounds=3, local_epochs=1, learning_rate=0.5, clipping_norm=1.0,
                             noise_multiplier=1.0, delta=1e-6)
    events = list(lab.watch_training(job))
    assert [e.round for e in events if e.state == "running"] == [1, 2, 3]
    assert events[-1].state == "completed"
    eps = [e.epsilon_spent for e in events if e.state == "running"]
    assert eps == sorted(eps) and eps[0] > 0
    result = lab.training_result(job)
    # What the ledger charged is the accountant's price of the same plan (opendp's map), rounded up to nano.
    db = Database(sbx.data_dir / "sandbox.db")
    with db.read() as conn:
        info = catalogue.get_dataset(conn, "rand_hie")
    db.close()
    settings = common_pb2.TrainingSettings(rounds=3, local_epochs=1, learning_rate=0.5, clipping_norm=1.0,
                                       noise_multiplier=1.0, delta=1e-6)
    from sandbox import fl_plans
    template = fl_plans.PlanTemplate("rand_hie", "logistic", tuple(FEATURES), LABEL, THRESHOLD)
    expected, _ = fl_server.plan_cost(fl_plans.build_plan(template, settings, info))
    assert spent(sbx, g) == ledger.epsilon_to_nano(repr(expected), charge=True)
    assert result.epsilon_charged * 10**9 == spent(sbx, g)
    assert abs(eps[-1] - expected) < 1e-6 * max(1.0, expected)
    assert len(result.weights) >= 1 and all(np.all(np.isfinite(w)) for w in result.weights)


def test_training_without_dp_takes_the_remaining_budget_and_learns(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, lab, plan, grant = fl_env
    g = grant(epsilon=3)
    job = lab.start_training(g, plan, rounds=5, local_epochs=2, learning_rate=0.5)
    events = list(lab.watch_training(job))
    assert events[-1].state == "completed"
    assert spent(sbx, g) == 3 * 10**9
    res = lab.training_result(job)
    assert 0.55 < res.metrics["accuracy"] <= 1.0
    with pytest.raises(ResourceExhausted):
        lab.start_training(g, plan, rounds=2, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)


def test_cancel_keeps_the_charge(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, lab, plan, grant = fl_env
    g = grant()
    job = lab.start_training(g, plan, rounds=200, clipping_norm=1.0, noise_multiplier=5.0, delta=1e-6)
    charged = spent(sbx, g)
    assert charged > 0
    states = []
    for e in lab.watch_training(job):
        states.append(e.state)
        if e.state == "running" and len(states) == 1:
            assert lab.cancel_training(job) in ("cancelling", "cancelled")
    assert states[-1] == "cancelled" and len(states) < 200
    assert spent(sbx, g) == charged
    with pytest.raises(FailedPrecondition) as exc:
        lab.training_result(job)
    assert exc.value.code == "JOB_NOT_COMPLETE" and "cancelled" in exc.value.message


def test_revoking_mid_run_stops_and_withholds_the_model(fl_env) -> None:  # type: ignore[no-untyped-def]
    _, admin, lab, plan, grant = fl_env
    g = grant()
    job = lab.start_training(g, plan, rounds=200, clipping_norm=1.0, noise_multiplier=5.0, delta=1e-6)
    last = None
    for e in lab.watch_training(job):
        if e.state == "running" and e.round == 1:
            admin.revoke(g, "ethics approval withdrawn")
        last = e
    assert last is not None and last.state == "revoked" and last.round < 200
    with pytest.raises(PermissionDenied):
        lab.training_result(job)


def test_a_dropped_data_holder_is_reported(fl_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, _, lab, plan, grant = fl_env
    original = fl_jobs.JobManager._partitions

    def with_a_broken_holder(self, plan_, info, part_col):  # type: ignore[no-untyped-def]
        parts = original(self, plan_, info, part_col)
        first = sorted(parts)[0]
        parts[first] = fl_server.Partition.of(np.zeros((5, 1)), np.zeros(5))  # wrong width: its node fails
        return parts

    monkeypatch.setattr(fl_jobs.JobManager, "_partitions", with_a_broken_holder)
    job = lab.start_training(grant(), plan, rounds=2, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)
    events = list(lab.watch_training(job))
    running = [e for e in events if e.state == "running"]
    assert running and all(e.dropped for e in running) and all("dropped out" in e.message for e in running)
    assert events[-1].state == "completed" and len(running[0].participants) == 5


BAD_SETTINGS = [
    dict(rounds=0), dict(local_epochs=0), dict(learning_rate=-0.1), dict(learning_rate=1e6),
    dict(learning_rate=float("nan")), dict(noise_multiplier=-1.0, clipping_norm=1.0),
]


@pytest.mark.parametrize("settings", BAD_SETTINGS, ids=[str(s) for s in BAD_SETTINGS])
def test_bad_plans_are_invalid_and_charge_nothing(fl_env, settings) -> None:  # type: ignore[no-untyped-def]
    sbx, _, lab, plan, grant = fl_env
    g = grant()
    args = dict(rounds=2, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)
    args.update(settings)
    with pytest.raises(InvalidArgument):
        lab.start_training(g, plan, **args)
    assert spent(sbx, g) == 0


def test_over_budget_and_outside_the_grant(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, _, lab, plan, grant = fl_env
    g = grant(epsilon=0.5)
    with pytest.raises(ResourceExhausted) as exc:  # a noise multiplier that would overspend
        lab.start_training(g, plan, rounds=50, clipping_norm=1.0, noise_multiplier=0.5, delta=1e-6)
    assert "remaining epsilon 0.5" in exc.value.message and spent(sbx, g) == 0
    needs = re.search(r"this needs epsilon (\d+\.\d+), delta 0\.000001$", exc.value.message)
    assert needs is not None and float(needs.group(1)) > 0.5, exc.value.message  # what the plan would cost
    other = lab.register_plan(dataset="rand_hie", features=["xage", "female"], label=LABEL,
                              label_threshold=THRESHOLD)
    with pytest.raises(PermissionDenied):
        lab.start_training(g, other, rounds=2, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)
    with pytest.raises(NotFound):
        lab.start_training(g, "ab" * 32, rounds=2)
    with pytest.raises(InvalidArgument):  # the label must be named in the application
        lab.apply(title="t", purpose="p", legal_basis="b", kind="FL_TRAINING",
                  datasets={"rand_hie": FEATURES}, model_hash=plan, epsilon=1)
    assert spent(sbx, g) == 0


def test_no_rpc_returns_a_holders_update_or_rows() -> None:
    """The wire contract itself: training messages carry aggregates, names of holders and nothing per holder."""
    for message in (fl_pb2.TrainingEvent, fl_pb2.GetTrainingResultResponse):
        for f in message.DESCRIPTOR.fields:
            assert f.name in {"job_id", "round", "rounds", "loss", "accuracy", "epsilon_spent", "participants",
                              "dropped", "state", "message", "weights", "metrics", "history", "charged",
                              "named"}, f.name
    assert [f.name for f in fl_pb2.Tensor.DESCRIPTOR.fields] == ["shape", "values"]
    # the named model is the aggregate model's weights with public names and public scaling, nothing else
    assert {f.name for f in fl_pb2.NamedModel.DESCRIPTOR.fields} == {
        "model", "inputs", "coefficients", "intercept", "raw_units", "scaling", "label", "label_threshold", "note"}
    assert {f.name for f in fl_pb2.FeatureScaling.DESCRIPTOR.fields} == {"column", "lower", "upper", "categories"}
