"""Secure aggregation (Flower's SecAgg+) in fl_server: what the ServerApp receives, dropouts, DP, the price.

The holders are the six sites of the bundled RAND Health Insurance Experiment,
as in test_fl_server.py. A recording grid keeps every reply the ServerApp's
side of the protocol is handed, and the tests try to recover a holder's
update from it.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterable, Mapping

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fl_server import InProcessBackend, Partition, RoundReport, TrainingError, TrainingPlan, plan_cost
from fl_server.client import HOLDER_ID, SECURE_AGGREGATION, clip_update, make_client_app
from fl_server.inprocess import LocalGrid, _ensure_task_identity
from fl_server.model import evaluate, init_params, param_shapes, to_array_record, train_local
from fl_server.secagg import (
    MODULUS,
    QUANTISATION_LEVELS,
    parameters_for,
    quantisation_range,
    secure_round,
    site_clipping_norm,
)
from tests.unit.test_fl_server import PLAN, FailingFrom, load_hie, pooled, site_partitions

SECURE = dataclasses.replace(PLAN, secure_aggregation=True, min_holders=3).validate()
DP_SECURE = dataclasses.replace(SECURE, noise_multiplier=1.0, clipping_norm=0.5).validate()


@pytest.fixture(scope="module")
def partitions() -> dict[str, Partition]:
    return site_partitions(PLAN, load_hie())


class Recording(LocalGrid):
    """A LocalGrid that keeps every reply the server side pulls, and can drop a node at one protocol stage."""

    def __init__(self, parts: Mapping[str, Partition], drop: dict[str, str] | None = None) -> None:
        self.parts = dict(parts)
        super().__init__(make_client_app(lambda ctx: self.parts[str(ctx.node_config[HOLDER_ID])]),
                         [{HOLDER_ID: h} for h in parts])
        self.node = {str(ctx.node_config[HOLDER_ID]): n for n, ctx in self._contexts.items()}
        self.drop = {self.node[h]: stage for h, stage in (drop or {}).items()}
        self.received: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = configs.get(Key.STAGE) if configs is not None else None
            if stage is not None and self.drop.get(message.metadata.dst_node_id) == stage:
                ids.append("")  # the node is gone: no reply ever comes
                continue
            ids.extend(super().push_messages([message]))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.received.extend(replies)
        return replies


def true_update(plan: TrainingPlan, part: Partition, holder: str, rnd: int = 1) -> list[np.ndarray]:
    """What the holder's node computes in round ``rnd`` from the initial model (its training is seeded)."""
    start = init_params(plan)
    rng = np.random.default_rng([plan.seed, zlib.crc32(holder.encode()), rnd])
    new, _ = train_local(plan, start, part.x, part.y, rng=rng)
    if plan.dp:
        new = clip_update(new, start, site_clipping_norm(plan))
    return [n - s for n, s in zip(new, start, strict=True)]


def flat(arrays: Iterable[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays])


def run_round(plan: TrainingPlan, parts: Mapping[str, Partition], drop: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    _ensure_task_identity()
    grid = Recording(parts, drop)
    config = {"plan": plan.canonical().decode()}
    max_weight = max(p.x.shape[0] for p in parts.values())
    outcome = secure_round(grid, plan, 1, init_params(plan), config, list(grid.get_node_ids()), timeout=60.0,
                           poll=0.01, max_weight=max_weight)
    return grid, outcome, max_weight


def masked_vectors(received: list[Message]) -> dict[int, list[np.ndarray]]:
    out = {}
    for reply in received:
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.MASKED_PARAMETERS in configs:
            out[reply.metadata.src_node_id] = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
    return out


def decoded(vector: list[np.ndarray], plan: TrainingPlan) -> np.ndarray:
    """A masked vector read as if it were a plain quantised one: the best a reader of one vector can do."""
    body = [np.mod(a, MODULUS) for a in vector[1:-1]]  # [weight factor, *update, loss]
    return flat(dequantize(body, quantisation_range(plan), QUANTISATION_LEVELS))


#: A model of 193 parameters: enough coordinates for a correlation to mean something.
MLP = {"model": "mlp", "hidden_units": 16, "local_epochs": 1}


@pytest.mark.parametrize("plan", [dataclasses.replace(SECURE, **MLP), dataclasses.replace(DP_SECURE, **MLP)],
                         ids=["plain", "dp"])
def test_the_server_side_receives_nothing_from_which_one_update_can_be_recovered(
        plan: TrainingPlan, partitions: dict[str, Partition]) -> None:
    grid, outcome, max_weight = run_round(plan, partitions)
    holders = list(partitions)
    truth = {h: flat(true_update(plan, partitions[h], h)) for h in holders}
    rows = {h: 1 if plan.dp else min(partitions[h].x.shape[0], max_weight) for h in holders}
    mean = sum(rows[h] * truth[h] for h in holders) / sum(rows.values())
    # the aggregate is the (weighted) mean of the true updates, to the quantisation's error
    step = 2 * quantisation_range(plan) / QUANTISATION_LEVELS
    bound = len(holders) * step * (max(rows.values()) if not plan.dp else 1) / sum(rows.values()) * 2
    assert outcome.halted == "" and sorted(outcome.contributors) == sorted(grid.node.values())
    assert np.max(np.abs(flat(outcome.update) - mean)) <= bound
    assert np.max(np.abs(mean)) > 1000 * bound  # the updates are far larger than that error
    # what came back: no clear update, no row count, no per-holder loss
    for reply in grid.received:
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        assert all(float(v) == 0 for record in reply.content.metric_records.values() for v in record.values())
        assert all(len(record) == 0 or name == "fitres.status" for name, record in reply.content.config_records.items()
                   if name != RECORD_KEY_CONFIGS)
    vectors = masked_vectors(grid.received)
    assert set(vectors) == set(grid.node.values())
    for h in holders:
        node = grid.node[h]
        alone = decoded(vectors[node], plan)
        # one holder's masked vector, read alone, is unrelated to its update: uniform over the whole range
        assert abs(np.corrcoef(alone, truth[h])[0, 1]) < 0.35
        assert np.std(alone) > 0.4 * quantisation_range(plan)
        # nor is the sum of everyone else's related to the aggregate without this holder
        others = [vectors[grid.node[o]] for o in holders if o != h]
        summed = [np.sum([v[i] for v in others], axis=0) for i in range(len(others[0]))]
        rest = sum(rows[o] * truth[o] for o in holders if o != h)
        assert abs(np.corrcoef(decoded(summed, plan), rest)[0, 1]) < 0.35
    # and every number the server side received in any reply is far from every holder's update
    for reply in grid.received:
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        for value in (configs or {}).values():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, bytes) and item[:6] == b"\x93NUMPY":
                    arr = np.ravel(bytes_to_ndarray(item)).astype(float)
                    for h in holders:
                        if arr.size == truth[h].size:
                            assert not np.allclose(arr, truth[h], atol=1e-3)


def test_a_holder_that_drops_after_sharing_its_keys_is_recovered(partitions: dict[str, Partition]) -> None:
    parts = {h: partitions[h] for h in ("1", "2", "3", "4", "5")}
    holders = list(parts)
    protocol = parameters_for(5)
    assert (protocol.shares, protocol.threshold, protocol.tolerated) == (5, 3, 2)
    grid, outcome, max_weight = run_round(SECURE, parts, drop={"4": Stage.COLLECT_MASKED_VECTORS})
    assert outcome.halted == "" and grid.node["4"] not in outcome.contributors
    kept = [h for h in holders if h != "4"]
    rows = {h: min(parts[h].x.shape[0], max_weight) for h in kept}
    mean = sum(rows[h] * flat(true_update(SECURE, parts[h], h)) for h in kept) / sum(rows.values())
    assert np.allclose(flat(outcome.update), mean, atol=1e-3)  # its masks were removed: the others' mean
    # a holder that fails before it shares a key simply leaves the round (Flower 1.42 would fail it)
    for stage in (Stage.SETUP, Stage.SHARE_KEYS):
        _, early, _ = run_round(SECURE, parts, drop={"2": stage})
        assert early.halted == "" and len(early.contributors) == 4
    # one that drops while the masks are being removed costs nothing either
    _, late, _ = run_round(SECURE, parts, drop={"5": Stage.UNMASK})
    assert late.halted == "" and len(late.contributors) == 5


def test_too_many_dropouts_fail_the_round_with_a_reason(partitions: dict[str, Partition]) -> None:
    parts = {h: partitions[h] for h in ("1", "2", "3")}
    _, outcome, _ = run_round(SECURE, parts, drop={"1": Stage.COLLECT_MASKED_VECTORS,
                                                   "2": Stage.COLLECT_MASKED_VECTORS})
    assert outcome.update is None
    assert "1 of 3 holders answered, the reconstruction threshold is 2" in outcome.halted


class Tampering(Recording):
    """A Recording grid where one node's masked vector arrives cut short (a buggy or hostile node)."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        for reply in replies:
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and Key.MASKED_PARAMETERS in configs and reply.metadata.src_node_id == self.node["2"]:
                configs[Key.MASKED_PARAMETERS] = list(configs[Key.MASKED_PARAMETERS])[:1]  # type: ignore[arg-type]
        return replies


def test_a_malformed_masked_vector_stops_the_round_not_the_run(partitions: dict[str, Partition]) -> None:
    _ensure_task_identity()
    parts = {h: partitions[h] for h in ("1", "2", "3")}
    grid = Tampering(parts)
    outcome = secure_round(grid, SECURE, 1, init_params(SECURE), {"plan": SECURE.canonical().decode()},
                           list(grid.get_node_ids()), timeout=60.0, poll=0.01)
    assert outcome.update is None
    assert outcome.halted == "secure aggregation stopped at collecting the masked updates: a holder's reply could " \
                             "not be used"


def test_training_completes_when_one_holder_drops_mid_run(partitions: dict[str, Partition]) -> None:
    plan = dataclasses.replace(SECURE, rounds=4)
    reports: list[RoundReport] = []
    # holder 3's rows are read once for the weight cap, then it serves round 1 (one train and one evaluate read),
    # then its storage fails inside round 2's collect stage, after it has shared its keys
    result = InProcessBackend().run(plan, FailingFrom(partitions, "3", after=3), on_round=reports.append,
                                    should_stop=lambda: False)
    assert [r.failed for r in reports] == [(), ("3",), ("3",), ("3",)]
    assert all(r.aggregated for r in reports) and result.final.accuracy is not None
    assert reports[1].participants == ("1", "2", "4", "5", "6")
    # with three holders one may drop too (threshold 2): the sum of the other two's updates is released
    three = {h: partitions[h] for h in ("1", "2", "3")}
    small: list[RoundReport] = []
    InProcessBackend().run(dataclasses.replace(plan, rounds=2), FailingFrom(three, "3", after=1),
                           on_round=small.append, should_stop=lambda: False)
    assert [(r.participants, r.failed, r.aggregated) for r in small] == [(("1", "2"), ("3",), True)] * 2


def test_too_many_holders_failing_ends_the_run_with_a_clear_report(partitions: dict[str, Partition]) -> None:
    parts = {h: partitions[h] for h in ("1", "2", "3", "4")}
    bad = dict(parts)
    for h in ("2", "3"):
        bad[h] = Partition.of(np.zeros((10, 3)), np.zeros(10))  # rows that do not fit the plan: it fails in collect
    reports: list[RoundReport] = []
    with pytest.raises(TrainingError, match="no model"):
        InProcessBackend().run(dataclasses.replace(SECURE, rounds=2), bad, on_round=reports.append,
                               should_stop=lambda: False)
    assert [r.aggregated for r in reports] == [False, False]
    assert all(r.failed == ("2", "3") and r.participants == () for r in reports)
    assert all("the reconstruction threshold is 3" in r.note for r in reports)


def test_accuracy_and_price_with_and_without_secure_aggregation(partitions: dict[str, Partition]) -> None:
    _, _, x_eval, y_eval = pooled(partitions)
    # little noise, so that two runs' fresh draws move the accuracy less than the 2 points compared
    for plain in (PLAN, dataclasses.replace(PLAN, noise_multiplier=0.3, clipping_norm=0.5)):
        secure = dataclasses.replace(plain, secure_aggregation=True, min_holders=3)
        assert plan_cost(secure) == plan_cost(plain)  # the same measurement, released the same number of times
        a = InProcessBackend().run(plain, partitions, on_round=lambda r: None, should_stop=lambda: False)
        b = InProcessBackend().run(secure, partitions, on_round=lambda r: None, should_stop=lambda: False)
        assert b.epsilon == a.epsilon and [r.epsilon for r in b.history] == [r.epsilon for r in a.history]
        accuracy = [evaluate(plain, list(r.params), x_eval, y_eval).accuracy for r in (a, b)]
        print(f"\n{'DP' if plain.dp else 'no DP'}: accuracy {accuracy[0]:.4f} without, {accuracy[1]:.4f} with "
              "secure aggregation")
        assert abs(accuracy[0] - accuracy[1]) <= 0.02 and min(accuracy) > 0.6
        if not plain.dp:  # without noise the two runs differ only by the quantisation: the same model, nearly
            assert all(np.allclose(p, q, atol=1e-3) for p, q in zip(a.params, b.params, strict=True))


def test_under_dp_the_secure_sum_gets_the_noise_the_accountant_prices(partitions: dict[str, Partition]) -> None:
    """One round: the new model minus the mean of the six site-clipped updates is the noise on the sum divided by
    six; its spread is noise_multiplier * C, as round_measurement prices it (193 coordinates)."""
    plan = dataclasses.replace(DP_SECURE, **MLP, rounds=1, noise_multiplier=4.0, clipping_norm=0.5, eval_fraction=0.0)
    result = InProcessBackend().run(plan, partitions, on_round=lambda r: None, should_stop=lambda: False)
    mean = sum(flat(true_update(plan, partitions[h], h)) for h in partitions) / len(partitions)
    noise_on_sum = (flat(result.params) - flat(init_params(plan)) - mean) * len(partitions)
    sd = float(np.std(noise_on_sum))
    assert abs(float(np.mean(noise_on_sum))) < 0.25 * plan.noise_multiplier * plan.clipping_norm
    assert 0.8 < sd / (plan.noise_multiplier * plan.clipping_norm) < 1.2, sd


def test_a_site_clipped_update_stays_within_the_clipping_norm_after_quantisation() -> None:
    plan = dataclasses.replace(DP_SECURE, clipping_norm=0.5)
    dims = sum(int(np.prod(s)) for s in param_shapes(plan))
    rng = np.random.default_rng(7)
    r = quantisation_range(plan)
    worst = 0.0
    for _ in range(200):
        v = rng.normal(size=dims)
        v *= site_clipping_norm(plan) / np.linalg.norm(v)  # at the site's bound
        q = dequantize(quantize([v], r, QUANTISATION_LEVELS), r, QUANTISATION_LEVELS)[0]
        worst = max(worst, float(np.linalg.norm(q)))
    assert worst <= plan.clipping_norm
    assert site_clipping_norm(plan) < plan.clipping_norm


def _train_message(plan: TrainingPlan, node: int) -> Message:
    content = RecordDict({"arrays": to_array_record(init_params(plan)),
                          "config": ConfigRecord({"plan": plan.canonical().decode(), "server-round": 1})})
    return Message(content, dst_node_id=node, message_type="train")


def test_a_node_refuses_a_plain_update_or_a_weak_protocol_for_a_secure_plan(partitions: dict[str, Partition]) -> None:
    _ensure_task_identity()
    grid = LocalGrid(make_client_app(lambda ctx: partitions["1"]), [{HOLDER_ID: "1"}])
    node = list(grid.get_node_ids())[0]
    assert list(grid.send_and_receive([_train_message(SECURE, node)]))[0].has_error()
    assert not list(grid.send_and_receive([_train_message(PLAN, node)]))[0].has_error()
    # a department's node that requires secure aggregation refuses a plain round whatever the plan says
    strict = LocalGrid(make_client_app(lambda ctx: partitions["1"]), [{HOLDER_ID: "1", SECURE_AGGREGATION: "required"}])
    strict_node = list(strict.get_node_ids())[0]
    assert list(strict.send_and_receive([_train_message(PLAN, strict_node)]))[0].has_error()
    for sample, shares, threshold in ((2, 2, 2), (5, 5, 2), (5, 3, 2), (5, 5, 6)):
        setup = ConfigRecord({Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: sample, Key.SHARE_NUMBER: shares,
                              Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: 1.0, Key.TARGET_RANGE: 2**22,
                              Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1.0})
        message = Message(RecordDict({RECORD_KEY_CONFIGS: setup}), dst_node_id=node, message_type="train")
        assert list(grid.send_and_receive([message]))[0].has_error(), (sample, shares, threshold)


def test_a_secure_plan_needs_three_holders_a_round() -> None:
    from fl_server import PlanError

    with pytest.raises(PlanError, match="at least 3 holders"):
        dataclasses.replace(PLAN, secure_aggregation=True).validate()  # min_holders 2
    with pytest.raises(PlanError, match="at least min_holders"):
        dataclasses.replace(SECURE, clients_per_round=2).validate()
    with pytest.raises(ValueError, match="at least 3"):
        parameters_for(2)
    assert math.isclose(site_clipping_norm(DP_SECURE), 0.5 * (1 - 2 * math.sqrt(11) / 2**22))
