"""fl_server: plan checks, data preparation, numpy models, DP accounting and noise, and the in-process runner.

The data is the bundled RAND Health Insurance Experiment: its six sites are
the six data holders, the label is above-median-ish medical spending (meddol
above a public $35), the features are scaled by the schema's public bounds.
The deployment backend (real SuperLink and SuperNode processes) is tested in
test_fl_server_deployment.py.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import gzip
import inspect
import math
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import opendp.prelude as dp
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import fl_server
from fl_server import (
    Feature,
    InProcessBackend,
    Label,
    Partition,
    PlanError,
    RoundReport,
    TrainingCancelled,
    TrainingError,
    TrainingPlan,
    Unit,
    epsilon_after_rounds,
    plan_cost,
    prepare_partition,
)
from fl_server.accounting import composed_measurement
from fl_server.client import NUM_EXAMPLES, UNIT_WEIGHT, clip_update
from fl_server.data import load_partition, save_partition
from fl_server.inprocess import LocalGrid, _ensure_task_identity
from fl_server.model import (
    auc,
    check_params,
    evaluate,
    from_array_record,
    init_params,
    param_shapes,
    to_array_record,
    train_local,
)
from fl_server.privacy import OpenDpFixedClipping
from fl_server.strategy import build_strategy

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "rand_hie.csv.gz"
SITES = ("1", "2", "3", "4", "5", "6")
#: Public scaling from data/schemas/rand_hie.toml; missing values imputed with round public constants.
FEATURES = (
    Feature("xage", 0, 70), Feature("female", 0, 1), Feature("educdec", 0, 25, impute=12.0),
    Feature("linc", 0, 11), Feature("lfam", 0, 3), Feature("disea", 0, 60), Feature("physlm", 0, 1),
    Feature("ghindx", 0, 100, impute=70.0), Feature("logc", 0, 5), Feature("idp", 0, 1),
)
PLAN = TrainingPlan(features=FEATURES, label=Label("meddol", 35.0), model="logistic", rounds=10, local_epochs=5,
                    learning_rate=0.1, batch_size=32, seed=0)


def load_hie() -> dict[str, np.ndarray]:
    with gzip.open(DATA, "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    return {h: np.array([float(r[i]) if r[i] != "" else np.nan for r in rows]) for i, h in enumerate(header)}


@pytest.fixture(scope="session")
def hie() -> dict[str, np.ndarray]:
    return load_hie()


def site_partitions(plan: TrainingPlan, hie: Mapping[str, np.ndarray],
                    sites: tuple[str, ...] = SITES) -> dict[str, Partition]:
    """One partition per site, the person key keeping each person's years on one side of the split."""
    out = {}
    for site in sites:
        rows = hie["site"] == float(site)
        out[site] = prepare_partition(plan, {k: v[rows] for k, v in hie.items()}, groups=hie["zper"][rows],
                                      holder=site)
    return out


def pooled(parts: Mapping[str, Partition]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ps = list(parts.values())
    return (np.vstack([p.x for p in ps]), np.concatenate([p.y for p in ps]),
            np.vstack([p.x_eval for p in ps]), np.concatenate([p.y_eval for p in ps]))


def run_inprocess(plan: TrainingPlan, parts: Mapping[str, Partition], stop_after: int | None = None
                  ) -> tuple[fl_server.TrainingResult, list[RoundReport]]:
    reports: list[RoundReport] = []
    result = InProcessBackend().run(plan, parts, on_round=reports.append,
                                    should_stop=lambda: stop_after is not None and len(reports) >= stop_after)
    return result, reports


# --- plan ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "fragment"), [
    ({"model": "forest"}, "model is one of"),
    ({"strategy": "fedsgd"}, "strategy is one of"),
    ({"features": ()}, "at least one feature"),
    ({"features": (Feature("xage", 0, 70), Feature("xage", 0, 70))}, "distinct"),
    ({"features": (Feature("xage", 70, 0),)}, "lower < upper"),
    ({"features": (Feature("xage", 0, math.inf),)}, "lower < upper"),
    ({"features": (Feature("xage", 0, 70, impute=math.nan),)}, "imputation"),
    ({"features": (Feature("plan", categories=("1", "2"), impute=2),)}, "category code"),
    ({"features": tuple(Feature(f"c{i}", 0, 1) for i in range(65))}, "1 to 64 inputs"),
    ({"label": Label("xage", 30.0)}, "label cannot be a feature"),
    ({"label": Label("meddol", math.nan)}, "threshold is finite"),
    ({"rounds": 0}, "rounds is 1 to"),
    ({"rounds": 201}, "rounds is 1 to"),
    ({"rounds": 2.0}, "rounds is 1 to"),
    ({"local_epochs": 0}, "local_epochs is 1 to"),
    ({"local_epochs": 51}, "local_epochs is 1 to"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": 10.5}, "learning_rate"),
    ({"learning_rate": math.nan}, "learning_rate"),
    ({"learning_rate": math.inf}, "learning_rate"),
    ({"batch_size": 0}, "batch_size"),
    ({"model": "mlp", "hidden_units": 0}, "hidden units"),
    ({"model": "mlp", "hidden_units": 257}, "hidden units"),
    ({"clients_per_round": 1}, "at least min_holders"),
    ({"clients_per_round": 0.0}, "fraction in (0, 1]"),
    ({"clients_per_round": 1.5}, "fraction in (0, 1]"),
    ({"clients_per_round": True}, "fraction in (0, 1]"),
    ({"min_holders": 1}, "min_holders is at least 2"),
    ({"proximal_mu": 0.1}, "proximal_mu is for strategy fedprox"),
    ({"strategy": "fedprox", "proximal_mu": -1.0}, "proximal_mu is 0 to"),
    ({"strategy": "fedprox", "proximal_mu": 20.0, "learning_rate": 0.05}, "learning_rate * proximal_mu"),
    ({"noise_multiplier": -0.5}, "noise_multiplier"),
    ({"noise_multiplier": math.nan}, "noise_multiplier"),
    ({"clipping_norm": 0.0}, "clipping_norm"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 0.5}, "delta"),
    ({"eval_fraction": 0.9}, "eval_fraction"),
    ({"seed": -1}, "seed"),
])
def test_plan_validation_names_the_field(change: dict[str, object], fragment: str) -> None:
    with pytest.raises(PlanError) as info:
        dataclasses.replace(PLAN, **change).validate()  # type: ignore[arg-type]
    assert fragment in info.value.message
    assert info.value.message.isascii() and len(info.value.message) < 120


def test_plan_round_trips_and_its_digest_pins_every_field() -> None:
    plan = dataclasses.replace(PLAN, features=(*FEATURES, Feature("plan", categories=("1", "2", "3"), impute=0)),
                               noise_multiplier=1.0, strategy="fedprox", proximal_mu=0.5).validate()
    again = TrainingPlan.from_dict(plan.to_dict())
    assert again == plan and again.digest == plan.digest and len(plan.digest) == 64
    assert dataclasses.replace(plan, learning_rate=0.11).digest != plan.digest
    assert plan.n_inputs == len(FEATURES) + 3
    with pytest.raises(PlanError):
        TrainingPlan.from_dict({"features": [], "rounds": 3})


def test_sample_size_from_a_count_or_a_fraction() -> None:
    assert dataclasses.replace(PLAN, clients_per_round=3).sample_size(6) == 3
    assert dataclasses.replace(PLAN, clients_per_round=0.5).sample_size(6) == 3
    assert dataclasses.replace(PLAN, clients_per_round=0.1).sample_size(6) == 2  # never below min_holders
    assert PLAN.sample_size(6) == 6


# --- data ------------------------------------------------------------------------------------------

def test_prepare_scales_imputes_drops_and_one_hots() -> None:
    plan = TrainingPlan(features=(Feature("age", 0, 50), Feature("edu", 0, 20, impute=10.0),
                                  Feature("kind", categories=("a", "b", "c"))),
                        label=Label("spend", 100.0), eval_fraction=0.0).validate()
    cols = {"age": np.array([25.0, 80.0, -5.0, 10.0, 30.0]), "edu": np.array([np.nan, 20.0, 0.0, 5.0, 5.0]),
            "kind": np.array([0, 2, 1, -1, 1]), "spend": np.array([150.0, 50.0, 100.0, 200.0, np.nan])}
    part = prepare_partition(plan, cols)
    # row 3 has no category (no imputation: dropped), row 4 no label (dropped)
    np.testing.assert_allclose(part.x, [[0.5, 0.5, 1, 0, 0], [1.0, 1.0, 0, 0, 1], [0.0, 0.0, 0, 1, 0]])
    np.testing.assert_array_equal(part.y, [1.0, 0.0, 0.0])  # above the threshold, strictly
    assert part.x_eval.shape == (0, 5)
    part.check(plan.n_inputs)
    with pytest.raises(ValueError, match="inputs"):
        part.check(4)


def test_split_keeps_a_person_on_one_side_and_is_deterministic(hie: dict[str, np.ndarray]) -> None:
    site = hie["site"] == 3.0
    cols = {k: v[site] for k, v in hie.items()}
    plan = dataclasses.replace(PLAN, features=(*FEATURES, Feature("zper", 0, 1e7)))
    a = prepare_partition(plan, cols, groups=cols["zper"], holder="3")
    b = prepare_partition(plan, cols, groups=cols["zper"], holder="3")
    np.testing.assert_array_equal(a.x_eval, b.x_eval)
    train_people = set(np.round(a.x[:, -1] * 1e7)) & set(np.round(a.x_eval[:, -1] * 1e7))
    assert not train_people
    share = a.x_eval.shape[0] / (a.x.shape[0] + a.x_eval.shape[0])
    assert 0.15 < share < 0.25
    assert not np.array_equal(prepare_partition(plan, cols, groups=cols["zper"], holder="4").x_eval, a.x_eval)


def test_partition_file_round_trips_and_is_private(tmp_path: Path, hie: dict[str, np.ndarray]) -> None:
    part = site_partitions(PLAN, hie, ("5",))["5"]
    path = tmp_path / "5.npz"
    save_partition(path, part)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = load_partition(path)
    for name in ("x", "y", "x_eval", "y_eval"):
        np.testing.assert_array_equal(getattr(back, name), getattr(part, name))


# --- model -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["logistic", "mlp"])
def test_gradients_match_finite_differences(model: str) -> None:
    from fl_server.model import _bce, _gradients, _logits

    plan = dataclasses.replace(PLAN, model=model, hidden_units=5).validate()
    rng = np.random.default_rng(3)
    x, y = rng.random((40, plan.n_inputs)), (rng.random(40) > 0.5).astype(float)
    params = [rng.normal(0, 0.5, s) for s in param_shapes(plan)]
    grads, _ = _gradients(plan, params, x, y)
    for p, g in zip(params, grads, strict=True):
        for idx in list(np.ndindex(p.shape))[:6]:
            old = p[idx]
            p[idx] = old + 1e-6
            up = _bce(_logits(plan, params, x)[0], y).mean()
            p[idx] = old - 1e-6
            down = _bce(_logits(plan, params, x)[0], y).mean()
            p[idx] = old
            assert g[idx] == pytest.approx((up - down) / 2e-6, abs=1e-6)


def test_auc_and_evaluation() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == pytest.approx(0.5)
    assert math.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))
    plan = PLAN.validate()
    params = [np.zeros(plan.n_inputs), np.array([0.0])]
    ev = evaluate(plan, params, np.zeros((4, plan.n_inputs)), np.array([0.0, 1.0, 1.0, 1.0]))
    assert ev.n == 4 and ev.loss == pytest.approx(math.log(2)) and ev.accuracy == 0.25


def test_a_logistic_model_on_raw_columns_gives_the_trained_logits() -> None:
    """as_linear's weights on raw, clipped values reproduce the model's logit on scaled inputs."""
    plan = TrainingPlan(features=(Feature("age", 18, 90), Feature("income", -100, 5000), Feature("flag", 0, 1)),
                        label=Label("y", 0.5), eval_fraction=0.0).validate()
    rng = np.random.default_rng(7)
    params = [rng.normal(0, 3, 3), rng.normal(0, 1, 1)]
    raw = {"age": rng.uniform(0, 120, 500), "income": rng.uniform(-500, 6000, 500),  # beyond both bounds
           "flag": rng.integers(0, 2, 500).astype(float), "y": rng.integers(0, 2, 500).astype(float)}
    part = prepare_partition(plan, raw)
    expected = np.log(fl_server.predict_proba(plan, params, part.x) / (1 - fl_server.predict_proba(plan, params, part.x)))
    pairs, bias = fl_server.as_linear(plan, params)
    assert [c for c, _ in pairs] == ["age", "income", "flag"]
    got = np.full(500, bias)
    for (column, weight), f in zip(pairs, plan.features, strict=True):
        got += weight * np.clip(raw[column], f.lower, f.upper)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("change", "fragment"), [({"model": "mlp", "hidden_units": 4}, "mlp"),
                                                  ({"features": (Feature("k", categories=("a", "b")),)}, "one-hot")])
def test_only_a_logistic_model_on_numeric_columns_is_linear(change: dict[str, object], fragment: str) -> None:
    plan = dataclasses.replace(PLAN, **change).validate()
    with pytest.raises(fl_server.PlanError, match=fragment):
        fl_server.as_linear(plan, fl_server.init_params(plan))
    logistic = PLAN.validate()
    with pytest.raises(fl_server.PlanError, match="parameters"):
        fl_server.as_linear(logistic, [np.zeros(logistic.n_inputs + 1), np.zeros(1)])


def test_params_survive_an_array_record_and_fedprox_pulls_towards_the_start() -> None:
    plan = dataclasses.replace(PLAN, model="mlp", hidden_units=4, strategy="fedprox", proximal_mu=0.0).validate()
    params = init_params(plan)
    back = from_array_record(to_array_record(params))
    assert all(np.array_equal(a, b) for a, b in zip(params, back, strict=True)) and check_params(plan, back)
    assert not check_params(plan, back[:-1])
    rng = np.random.default_rng(0)
    x, y = rng.random((200, plan.n_inputs)), (rng.random(200) > 0.5).astype(float)

    def drift(mu: float) -> float:
        p = dataclasses.replace(plan, proximal_mu=mu, learning_rate=0.5, local_epochs=5)
        new, _ = train_local(p, params, x, y, rng=np.random.default_rng(1))
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(new, params, strict=True)))

    assert drift(1.5) < 0.5 * drift(0.0)


def test_clip_update_bounds_the_change_only() -> None:
    start = [np.ones(3), np.zeros(1)]
    new = clip_update([np.ones(3) + 3.0, np.array([4.0])], start, norm=1.0)
    change = np.concatenate([new[0] - start[0], new[1] - start[1]])
    assert np.linalg.norm(change) == pytest.approx(1.0)
    small = clip_update([np.ones(3) + 0.1, np.zeros(1)], start, norm=1.0)
    np.testing.assert_allclose(small[0], np.ones(3) + 0.1)


# --- accounting ------------------------------------------------------------------------------------

DP_PLAN = dataclasses.replace(PLAN, noise_multiplier=1.1, clipping_norm=0.5, rounds=8, delta=1e-6)


def opendp_reference(plan: TrainingPlan, rounds: int, d_in: float) -> tuple[float, float]:
    """The same cost priced from opendp's constructors directly, here in the test."""
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)
    gauss = dp.m.make_gaussian(*space, scale=plan.noise_multiplier * plan.clipping_norm)
    meas = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(dp.c.make_composition([gauss] * rounds)), plan.delta)
    eps, delta = meas.map(d_in)
    return float(eps), float(delta)


def test_plan_cost_is_the_composed_opendp_map() -> None:
    plan = DP_PLAN.validate()
    assert plan_cost(plan) == opendp_reference(plan, plan.rounds, 2 * plan.clipping_norm)
    assert plan_cost(plan, unit=Unit.HOLDER) == opendp_reference(plan, plan.rounds, plan.clipping_norm)
    # client-level rho per round is 1 / (2 nm^2); a person's change costs four times that
    from fl_server.accounting import rho_after_rounds

    assert rho_after_rounds(plan, 1, Unit.HOLDER) == pytest.approx(1 / (2 * 1.1**2), rel=1e-12)
    assert rho_after_rounds(plan, 3, Unit.PERSON) == pytest.approx(3 * 4 / (2 * 1.1**2), rel=1e-12)
    assert plan_cost(plan, delta=1e-9)[1] == 1e-9 and plan_cost(plan, delta=1e-9)[0] > plan_cost(plan)[0]


def test_cost_holds_at_the_bound_and_not_below() -> None:
    plan = DP_PLAN.validate()
    eps, delta = plan_cost(plan)
    meas = composed_measurement(plan, plan.rounds)
    d_in = 2 * plan.clipping_norm
    assert meas.check(d_in, (eps, delta))
    assert not meas.check(d_in, (eps * (1 - 1e-6), delta))
    assert not meas.check(d_in * (1 + 1e-6), (eps, delta))


def test_epsilon_after_rounds_is_monotone_and_ends_at_plan_cost() -> None:
    plan = DP_PLAN.validate()
    eps = [epsilon_after_rounds(plan, k) for k in range(plan.rounds + 1)]
    assert eps[0] == 0.0 and all(a < b for a, b in zip(eps, eps[1:]))
    assert eps[-1] == plan_cost(plan)[0]
    assert plan_cost(PLAN) == (math.inf, PLAN.delta)  # no noise: no bound
    assert epsilon_after_rounds(dataclasses.replace(plan, noise_multiplier=1e-4, rounds=200), 200) == math.inf


# --- the DP wrapper's noise ------------------------------------------------------------------------

def _train_replies(plan: TrainingPlan, updates: list[list[np.ndarray] | None], start: list[np.ndarray]
                   ) -> tuple[OpenDpFixedClipping, list[Message]]:
    """The wrapper after configure_train, and one reply per holder (None: an error reply)."""
    _ensure_task_identity()
    strategy, inner = build_strategy(plan)
    assert isinstance(strategy, OpenDpFixedClipping)
    grid = LocalGrid(None, [{"holder-id": str(i)} for i in range(len(updates))])  # type: ignore[arg-type]
    from fl_server.strategy import set_sampling

    set_sampling(inner, len(updates), train=len(updates))
    messages = list(strategy.configure_train(1, to_array_record(start), ConfigRecord(), grid))
    replies = []
    for msg, update in zip(messages, updates, strict=True):
        msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}"
        if update is None:
            replies.append(Message(Error(code=2, reason="ValueError"), reply_to=msg))
            continue
        params = [s + u for s, u in zip(start, update, strict=True)]
        content = RecordDict({"arrays": to_array_record(params),
                              "metrics": MetricRecord({NUM_EXAMPLES: 100, UNIT_WEIGHT: 1})})
        replies.append(Message(content, reply_to=msg))
    return strategy, replies


@pytest.mark.parametrize("failures", [0, 2])
def test_noise_has_the_priced_scale_on_the_sum_of_the_updates_that_came(failures: int) -> None:
    dim = 4000
    feats = tuple(Feature(f"f{i}", 0, 1) for i in range(dim // 100))
    plan = TrainingPlan(features=feats, label=Label("y", 0.5), model="mlp", hidden_units=97,
                        noise_multiplier=2.0, clipping_norm=0.5).validate()
    start = [np.full(s, 0.25) for s in param_shapes(plan)]
    zero = [np.zeros(s) for s in param_shapes(plan)]
    strategy, replies = _train_replies(plan, [zero] * (6 - failures) + [None] * failures, start)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.releases == 1
    noise = np.concatenate([(a - s).ravel() for a, s in zip(from_array_record(arrays), start, strict=True)])
    expected = plan.noise_multiplier * plan.clipping_norm / (6 - failures)
    assert noise.size > 3800
    # The noise is unseeded (opendp's). Mean: 6 standard errors, exceeded by a correct release with
    # probability 2e-9 (4 standard errors was 6e-5). Sample standard deviation of about 4000 Gaussian
    # values: its relative standard error is 1/sqrt(2n) = 0.011, so 6% is about 5.4 of them (6e-8), while
    # noise divided by the planned rather than the actual number of updates is 33% off.
    assert abs(noise.mean()) < 6 * expected / math.sqrt(noise.size)
    assert np.std(noise) == pytest.approx(expected, rel=0.06)


def test_updates_are_clipped_before_they_are_averaged() -> None:
    plan = TrainingPlan(features=(Feature("a", 0, 1), Feature("b", 0, 1)), label=Label("y", 0.5),
                        noise_multiplier=1e-9, clipping_norm=1.0).validate()
    start = [np.zeros(2), np.zeros(1)]
    big = [np.array([30.0, 40.0]), np.array([0.0])]  # norm 50: clipped to 1
    small = [np.array([0.3, 0.4]), np.array([0.0])]  # norm 0.5: kept
    strategy, replies = _train_replies(plan, [big, small], start)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    w = from_array_record(arrays)[0]
    np.testing.assert_allclose(w, (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 2, atol=1e-6)


def test_a_dp_strategy_must_weigh_holders_equally() -> None:
    with pytest.raises(ValueError, match="equal weights"):
        OpenDpFixedClipping(FedAvg(), DP_PLAN)


# --- in-process runner -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def partitions(hie: dict[str, np.ndarray]) -> dict[str, Partition]:
    return site_partitions(PLAN, hie)


def test_federated_accuracy_is_within_two_points_of_centralised(partitions: dict[str, Partition]) -> None:
    result, reports = run_inprocess(PLAN, partitions)
    assert [r.round for r in reports] == list(range(1, 11)) and list(result.history) == reports
    assert all(r.participants == SITES and r.failed == () and r.aggregated for r in reports)
    assert result.dropped == () and result.epsilon is None and result.plan_digest == PLAN.digest
    x, y, x_eval, y_eval = pooled(partitions)
    federated = evaluate(PLAN, list(result.params), x_eval, y_eval)
    # the federated metric weights each site's held-out accuracy by its rows: the pooled accuracy
    assert result.final.accuracy == pytest.approx(federated.accuracy, abs=1e-12)
    assert result.final.loss == pytest.approx(federated.loss, rel=1e-9)
    # same model, features and optimiser on the pooled rows, for as many epochs
    central_plan = dataclasses.replace(PLAN, local_epochs=PLAN.rounds * PLAN.local_epochs)
    central, _ = train_local(central_plan, init_params(PLAN), x, y, rng=np.random.default_rng(PLAN.seed))
    centralised = evaluate(PLAN, central, x_eval, y_eval)
    print(f"\nfederated accuracy {federated.accuracy:.4f}, centralised {centralised.accuracy:.4f}, "
          f"{sum(r.seconds for r in reports) / len(reports):.3f} s per round")
    assert centralised.accuracy > 0.6
    assert abs(federated.accuracy - centralised.accuracy) <= 0.02


def test_mlp_and_fedprox_train_too(partitions: dict[str, Partition]) -> None:
    plan = dataclasses.replace(PLAN, model="mlp", hidden_units=8, strategy="fedprox", proximal_mu=0.01,
                               rounds=3, local_epochs=3)
    parts = {k: partitions[k] for k in ("1", "2", "3")}
    result, _ = run_inprocess(plan, parts)
    assert [p.shape for p in result.params] == param_shapes(plan)
    assert result.final.accuracy is not None and result.final.accuracy > 0.58


def test_dp_run_reports_epsilon_per_round_up_to_the_plan_cost(partitions: dict[str, Partition]) -> None:
    plan = dataclasses.replace(PLAN, rounds=4, noise_multiplier=1.0, clipping_norm=0.5, release_metrics_under_dp=True)
    result, reports = run_inprocess(plan, partitions)
    eps = [r.epsilon for r in reports]
    assert eps == [epsilon_after_rounds(plan, k) for k in range(1, 5)]
    assert eps[-1] == plan_cost(plan)[0] == result.epsilon and result.delta == plan.delta
    assert all(r.accuracy is not None for r in reports)
    # without the opt-in, the exact per-round metrics stay out of a DP run's reports
    hidden, hidden_reports = run_inprocess(dataclasses.replace(plan, release_metrics_under_dp=False), partitions)
    assert all(r.accuracy is None and r.loss is None and r.train_loss is None for r in hidden_reports)
    assert hidden.epsilon == result.epsilon
    # the noise is fresh each run (opendp's, never seeded)
    assert not np.array_equal(hidden.params[0], result.params[0])


def test_should_stop_cancels_between_rounds(partitions: dict[str, Partition]) -> None:
    plan = dataclasses.replace(PLAN, noise_multiplier=1.0, clipping_norm=0.5)
    with pytest.raises(TrainingCancelled) as info:
        run_inprocess(plan, partitions, stop_after=3)
    assert info.value.rounds_completed == 3
    assert info.value.epsilon_spent == epsilon_after_rounds(plan, 3)
    with pytest.raises(TrainingCancelled) as before:
        run_inprocess(PLAN, partitions, stop_after=0)
    assert before.value.rounds_completed == 0


class FailingFrom(Mapping[str, Partition]):
    """Partitions where one holder's data becomes unavailable after a number of reads."""

    def __init__(self, parts: Mapping[str, Partition], holder: str, after: int) -> None:
        self.parts, self.holder, self.after, self.reads = dict(parts), holder, after, 0

    def __getitem__(self, key: str) -> Partition:
        if key == self.holder:
            self.reads += 1
            if self.reads > self.after:
                raise OSError("holder storage is offline")
        return self.parts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)


def test_a_failing_holder_is_reported_and_training_goes_on(partitions: dict[str, Partition]) -> None:
    plan = dataclasses.replace(PLAN, rounds=5)
    # holder 3 serves rounds 1 and 2 (a train and an evaluate read each), then fails
    result, reports = run_inprocess(plan, FailingFrom(partitions, "3", after=4))
    assert [r.failed for r in reports] == [(), (), ("3",), ("3",), ("3",)]
    assert all(r.aggregated for r in reports)
    assert reports[2].participants == ("1", "2", "4", "5", "6")
    assert result.dropped == ("3",)
    # a holder whose rows do not fit the plan fails every round, and is named
    bad = dict(partitions)
    bad["6"] = Partition.of(np.zeros((10, 3)), np.zeros(10))
    _, bad_reports = run_inprocess(dataclasses.replace(plan, rounds=2), bad)
    assert [r.failed for r in bad_reports] == [("6",), ("6",)]


def test_no_model_without_enough_holders_is_an_error(partitions: dict[str, Partition]) -> None:
    parts = {"1": partitions["1"], "2": Partition.of(np.zeros((5, 2)), np.zeros(5))}
    reports: list[RoundReport] = []
    with pytest.raises(TrainingError, match="no model"):
        InProcessBackend().run(dataclasses.replace(PLAN, rounds=2), parts, on_round=reports.append,
                               should_stop=lambda: False)
    # one holder's update alone is never released as "the aggregate"
    assert [r.aggregated for r in reports] == [False, False]
    assert all(r.participants == () and r.accuracy is None for r in reports)
    with pytest.raises(TrainingError, match="only 1 of 1"):
        InProcessBackend().run(PLAN, {"1": partitions["1"]}, on_round=reports.append, should_stop=lambda: False)


def test_clients_per_round_samples_that_many(partitions: dict[str, Partition]) -> None:
    _, reports = run_inprocess(dataclasses.replace(PLAN, rounds=3, clients_per_round=3), partitions)
    assert [len(r.participants) for r in reports] == [3, 3, 3]
    assert all(r.failed == () for r in reports)


def test_local_grid_isolates_nodes_and_turns_exceptions_into_error_replies() -> None:
    from fl_server.client import make_client_app

    seen: list[int] = []

    def load(context: Context) -> Partition:
        seen.append(id(context))
        raise KeyError("secret-value-42")

    _ensure_task_identity()
    grid = LocalGrid(make_client_app(load), [{"holder-id": "a"}, {"holder-id": "b"}])
    plan = dataclasses.replace(PLAN, rounds=1).validate()
    content = RecordDict({"arrays": to_array_record(init_params(plan)),
                          "config": ConfigRecord({"plan": plan.canonical().decode(), "server-round": 1})})
    messages = [Message(content, dst_node_id=n, message_type="train") for n in grid.get_node_ids()]
    replies = list(grid.send_and_receive(messages))
    assert len(replies) == 2 and all(r.has_error() for r in replies)
    assert all("secret" not in str(r.error.reason) for r in replies)
    assert len(set(seen)) == 2  # one Context per node
    assert {r.metadata.src_node_id for r in replies} == set(grid.get_node_ids())


def test_reports_carry_aggregates_only() -> None:
    fields = {f.name: f.type for f in dataclasses.fields(RoundReport)}
    assert not any("ndarray" in str(t) or "Partition" in str(t) for t in fields.values())
    result_fields = {f.name for f in dataclasses.fields(fl_server.TrainingResult)}
    assert result_fields == {"params", "history", "dropped", "epsilon", "delta", "plan_digest"}


# --- API and structure -----------------------------------------------------------------------------

def test_public_api_is_exactly_all() -> None:
    exported = {name for name in dir(fl_server)
                if not name.startswith("_") and not inspect.ismodule(getattr(fl_server, name))}
    assert sorted(fl_server.__all__) == sorted(exported)


def test_fl_server_is_a_pure_library_and_needs_no_ray() -> None:
    banned = {"sandbox", "clients", "dp_engine", "he_engine", "protos", "grpc", "sqlite3", "ray"}
    for path in sorted((ROOT / "fl_server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            assert not {n.split(".")[0] for n in names} & banned, path
    code = "import sys, fl_server; assert 'ray' not in sys.modules and 'sandbox' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_a_node_checks_the_plan_before_its_rows_and_clips_its_own_update_under_dp(
        partitions: dict[str, Partition]) -> None:
    """client.py's promises: a malformed plan is refused before the node reads a row; under DP the update that
    leaves the node already has norm at most ``clipping_norm`` (the server cannot see the unclipped one)."""
    from fl_server.client import make_client_app

    reads: list[str] = []

    def load(context: Context) -> Partition:
        reads.append(str(context.node_config["holder-id"]))
        return partitions["1"]

    _ensure_task_identity()
    grid = LocalGrid(make_client_app(load), [{"holder-id": "1"}])
    node = list(grid.get_node_ids())[0]

    def train(plan_json: str, plan: TrainingPlan) -> Message:
        content = RecordDict({"arrays": to_array_record(init_params(plan)),
                              "config": ConfigRecord({"plan": plan_json, "server-round": 1})})
        return list(grid.send_and_receive([Message(content, dst_node_id=node, message_type="train")]))[0]

    bad = dataclasses.replace(PLAN, rounds=0)  # outside the limits
    assert train(bad.canonical().decode(), PLAN).has_error() and reads == []
    dp_plan = dataclasses.replace(PLAN, noise_multiplier=1.0, clipping_norm=0.01, learning_rate=1.0).validate()
    for plan, bound in ((dataclasses.replace(dp_plan, noise_multiplier=0.0), None), (dp_plan, dp_plan.clipping_norm)):
        reply = train(plan.canonical().decode(), plan)
        assert not reply.has_error() and reads
        update = from_array_record(next(iter(reply.content.array_records.values())))
        norm = math.sqrt(sum(float(np.sum((u - s) ** 2)) for u, s in zip(update, init_params(plan), strict=True)))
        if bound is None:
            assert norm > 10 * dp_plan.clipping_norm  # unclipped, the same training moves much further
        else:
            assert norm <= bound * (1 + 1e-9)
