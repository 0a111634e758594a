"""Federated training through the SDK against a real TLS server: pricing, progress, cancel, revoke, dropout."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import re

import numpy as np
import pytest

import fl_server
from clients import (
    AuditorClient, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResearcherClient, ResourceExhausted,
)
from clients.types import SecureAggregationTerms
from sandbox import catalogue, fl_jobs, fl_plans, fl_records, ledger
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


# --- jobs people can find and use: listing, named weights, persistence ------------------------------------------


def stored_model(sbx, job_id: str):  # type: ignore[no-untyped-def]
    """The engine plan and model the server stored for a job, read from its database (not through any RPC)."""
    db = Database(sbx.data_dir / "sandbox.db")
    try:
        with db.read() as tx:
            return fl_records.plan_and_model(tx, job_id)
    finally:
        db.close()


def raw_rows(n: int) -> list[dict[str, str]]:
    """The first ``n`` rows of the bundled CSV with every plan column present, as the file has them."""
    with gzip.open(DATA / "rand_hie.csv.gz", "rt", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if all(r[c] != "" for c in [*FEATURES, "plan", LABEL])]
        return rows[:n]


def scaled_inputs(plan: fl_server.TrainingPlan, rows: list[dict[str, str]]) -> np.ndarray:
    """The model inputs of ``rows`` as training prepares them (the engine's own scaling; nothing held out)."""
    columns = {}
    for f in plan.features:
        values = [r[f.column] for r in rows]
        columns[f.column] = (np.array([f.categories.index(v) for v in values]) if f.categories
                             else np.array(values, dtype=float))
    columns[plan.label.column] = np.array([r[plan.label.column] for r in rows], dtype=float)
    part = fl_server.prepare_partition(dataclasses.replace(plan, eval_fraction=0.0), columns)
    assert part.x.shape[0] == len(rows)
    return part.x


def test_listing_own_jobs_another_researchers_and_every_job_for_admins_and_auditors(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, lab, plan, grant = fl_env
    other = enrol_client(admin, sbx, ResearcherClient, "Second lab", ["researcher"])
    auditor = enrol_client(admin, sbx, AuditorClient, "Regulator", ["auditor"])
    try:
        oplan = other.register_plan(dataset="rand_hie", features=FEATURES, label=LABEL,  # type: ignore[attr-defined]
                                    label_threshold=THRESHOLD)
        s = other.apply(title="Second model", purpose="Predict spending", legal_basis="Research exemption",  # type: ignore[attr-defined]
                        kind="FL_TRAINING", datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=oplan, epsilon=50,
                        delta="1e-5", quota=3)
        og = admin.approve(s.id).grant
        theirs = other.start_training(og.id, oplan, rounds=1, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)  # type: ignore[attr-defined]
        list(other.watch_training(theirs))  # type: ignore[attr-defined]
        mine = lab.start_training(grant(), plan, rounds=1, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)
        list(lab.watch_training(mine))

        own = lab.training_jobs()
        assert str(mine) in {j.job_id for j in own} and str(theirs) not in {j.job_id for j in own}
        assert {j.owner_id for j in own} == {lab.principal_id}
        assert [j.job_id for j in other.training_jobs()] == [str(theirs)]  # type: ignore[attr-defined]
        for reader in (admin, auditor):
            every = reader.training_jobs()  # type: ignore[attr-defined]
            owners = {j.job_id: j.owner_id for j in every}
            assert owners[str(mine)] == lab.principal_id and owners[str(theirs)] == other.principal_id  # type: ignore[attr-defined]
            assert set(owners) >= {j.job_id for j in own}
            assert [j.started_at for j in every] == sorted((j.started_at for j in every), reverse=True)
            assert every[0].job_id == str(mine) and not every.more  # the newest first
        first = admin.training_jobs(limit=1)
        assert [j.job_id for j in first] == [str(mine)] and first.more
        done = next(j for j in own if j.job_id == str(mine))
        assert (done.state, done.dataset, done.message) == ("completed", "rand_hie", "training finished")
        with pytest.raises(NotFound):  # another researcher's job does not exist for this one
            other.training_result(mine)  # type: ignore[attr-defined]
    finally:
        other.close()  # type: ignore[attr-defined]
        auditor.close()  # type: ignore[attr-defined]


def test_named_weights_are_as_linears_and_reproduce_the_model_on_raw_rows(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, lab, _, grant = fl_env
    features = ["xage", "coins", "plan", "linc"]  # "plan" is categorical: one-hot over its 19 codes
    plan_hash = lab.register_plan(dataset="rand_hie", features=features, label=LABEL, label_threshold=THRESHOLD)
    s = lab.apply(title="With a category", purpose="Predict spending", legal_basis="Research exemption",
                  kind="FL_TRAINING", datasets={"rand_hie": [*features, LABEL]}, model_hash=plan_hash, epsilon=10,
                  quota=2)
    g = admin.approve(s.id).grant
    job = lab.start_training(g.id, plan_hash, rounds=3, local_epochs=2, learning_rate=0.5)  # no DP: metrics released
    assert list(lab.watch_training(job))[-1].state == "completed"
    res = lab.training_result(job)
    named = res.named
    plan, model = stored_model(sbx, job)
    assert model is not None and all(np.array_equal(a, b) for a, b in zip(res.weights, model.params, strict=True))
    categories = next(f.categories for f in plan.features if f.column == "plan")
    assert named is not None and named.model == "logistic" and named.raw_units
    assert list(named.inputs) == ["xage", "coins", *(f"plan={c}" for c in categories), "linc"]
    assert list(named.coefficients) == list(named.inputs)
    # The numeric weights are exactly the engine's conversion (fl_server.as_linear, as RegisterTrainedModel uses)
    numeric = [f for f in plan.features if not f.categories]
    at = [0, 1, 2 + len(categories)]  # xage, coins, then linc after the one-hot block
    pairs, _ = fl_server.as_linear(dataclasses.replace(plan, features=tuple(numeric)),
                                   [model.params[0][at], model.params[1]])
    assert {k: named.coefficients[k] for k, _ in pairs} == dict(pairs)
    for c, w in zip(categories, model.params[0][2:2 + len(categories)], strict=True):
        assert named.coefficients[f"plan={c}"] == w  # a one-hot input is already in raw units
    assert [(f.column, f.lower, f.upper) for f in named.scaling if not f.categories] == [
        (f.column, f.lower, f.upper) for f in numeric]
    # Raw column values through the named weights give the model's own probabilities on the scaled inputs.
    rows = raw_rows(6)
    expected = fl_server.predict_proba(plan, list(model.params), scaled_inputs(plan, rows))
    by_hand = [named.intercept + sum(
        named.coefficients[f"plan={r['plan']}"] if f.categories
        else named.coefficients[f.column] * min(max(float(r[f.column]), f.lower), f.upper)
        for f in named.scaling) for r in rows]
    assert np.allclose(1 / (1 + np.exp(-np.array(by_hand))), expected, rtol=1e-9, atol=1e-12)
    assert np.allclose([named.logit(r) for r in rows], by_hand, rtol=1e-12)
    assert res.history[-1].state == "completed" and all(e.loss is not None for e in res.history[:-1])


def test_the_result_under_dp_has_no_per_round_metrics_and_an_mlp_names_its_inputs(fl_env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, lab, _, grant = fl_env
    mlp = lab.register_plan(dataset="rand_hie", features=FEATURES[:4], label=LABEL, label_threshold=THRESHOLD,
                            model="mlp", hidden_units=3)
    s = lab.apply(title="Small mlp", purpose="Predict spending", legal_basis="Research exemption",
                  kind="FL_TRAINING", datasets={"rand_hie": [*FEATURES[:4], LABEL]}, model_hash=mlp, epsilon=50,
                  delta="1e-5", quota=2)
    g = admin.approve(s.id).grant
    job = lab.start_training(g.id, mlp, rounds=2, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)
    assert list(lab.watch_training(job))[-1].state == "completed"
    res = lab.training_result(job)
    running = [e for e in res.history if e.state == "running"]
    assert [e.round for e in running] == [1, 2] and all(e.loss is None and e.accuracy is None for e in running)
    assert res.history[-1].loss is None and "loss" not in res.metrics and "accuracy" not in res.metrics
    named = res.named
    assert named is not None and named.model == "mlp" and not named.raw_units and named.coefficients == {}
    assert list(named.inputs) == FEATURES[:4] and [f.column for f in named.scaling] == FEATURES[:4]
    assert "scaled units" in named.note and res.weights[0].shape == (4, 3)
    plan, _ = stored_model(sbx, job)
    assert [(f.lower, f.upper) for f in named.scaling] == [(f.lower, f.upper) for f in plan.features]
    with pytest.raises(ValueError):
        named.logit({f: 0 for f in FEATURES})


def test_secure_aggregation_is_on_by_default_shown_in_review_and_priced_the_same(fl_env) -> None:  # type: ignore[no-untyped-def]
    """rand_hie has six data holders: a proposal gets SecAgg+ unless it says off; the review shows how it runs;
    the price is the same either way; a job under it trains and reports every holder as a participant."""
    _, admin, lab, plan, _ = fl_env
    proposal = dict(rounds=2, local_epochs=1, learning_rate=0.5, clipping_norm=1.0, noise_multiplier=1.5, delta=1e-6)

    def propose(**extra: object):  # type: ignore[no-untyped-def]
        return lab.apply(title="Secure model", purpose="Predict above-threshold medical spending",
                         legal_basis="Research exemption", kind="FL_TRAINING",
                         datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=plan, epsilon=50, delta="1e-5",
                         quota=5, training={**proposal, **extra})

    default, off, few = propose(), propose(secure_aggregation="off"), propose(fraction_per_round=0.3)
    assert default.training_secure_aggregation == SecureAggregationTerms(6, 6, 6, 4)
    assert off.training_secure_aggregation == SecureAggregationTerms(6, 6, 0, 0)
    assert few.training_secure_aggregation == SecureAggregationTerms(6, 3, 3, 2)  # at least 3 a round under SecAgg
    assert default.training_epsilon == off.training_epsilon == few.training_epsilon > 0
    pending = next(p for p in admin.pending() if p.id == default.id)
    assert pending.training_secure_aggregation == default.training_secure_aggregation
    with pytest.raises(InvalidArgument, match="on, off"):
        propose(secure_aggregation="maybe")
    g = admin.approve(default.id).grant
    assert g is not None
    job = lab.start_training(g.id, plan)
    events = list(lab.watch_training(job, timeout=600))
    assert events[-1].state == "completed", events[-1].message
    rounds = [e for e in events if e.state == "running"]
    assert [len(e.participants) for e in rounds] == [6, 6] and all(e.dropped == () for e in rounds)
