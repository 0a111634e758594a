"""The round driver: a plan's rounds over any Flower Grid, with reporting, dropouts and cancellation.

It is ``Strategy.start`` taken apart so the engine can act between its steps:
a roll call maps Flower node ids to holder ids (each node's ClientApp knows
its holder from its node config); each round samples from the nodes connected
now, sends the strategy's train messages, keeps only usable replies (no error,
the plan's shapes, finite numbers), aggregates when at least ``min_holders``
updates came, and evaluates the new model on the held-out rows of every holder
that answered (only if the plan releases metrics). A holder that fails is named
in that round's report; training goes on with the others. ``should_stop`` is
asked before every round.

The same function runs in this process (InProcessBackend, over a LocalGrid) and
in Flower's ``flwr-serverapp`` process (DeploymentBackend, over the SuperLink).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl_server.accounting import epsilon_after_rounds, round_measurement
from fl_server.client import NUM_EXAMPLES, PLAN_KEY, ROLL_CALL
from fl_server.errors import TrainingCancelled, TrainingError
from fl_server.grids import NodeView, exchange
from fl_server.model import check_params, from_array_record, init_params, to_array_record
from fl_server.plan import TrainingPlan
from fl_server.privacy import noisy_mean_update
from fl_server.report import RoundReport, TrainingResult
from fl_server.secagg import DEFAULT_MAX_WEIGHT, MIN_HOLDERS, secure_round
from fl_server.strategy import EVAL_METRICS, TRAIN_METRICS, build_strategy, set_sampling

log = logging.getLogger(__name__)

OnRound = Callable[[RoundReport], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class Timing:
    #: How long a round's train (or evaluate) step waits for replies before counting the rest as failed.
    round_timeout: float = 600.0
    #: How long to wait before round 1 for every expected holder to connect.
    connect_timeout: float = 60.0
    #: Sleep between polls for replies (Flower's own send_and_receive sleeps 3 s).
    poll_interval: float = 0.1


class _Holders:
    """Which node serves which holder, learnt by asking each new node (a Flower "query" message).

    A node that does not answer is asked again at the next chance, up to ``ATTEMPTS`` times in all.
    """

    ATTEMPTS = 3

    def __init__(self, expected: Sequence[str]) -> None:
        self.expected = tuple(expected)
        self.node_of: dict[str, int] = {}
        self.answered: set[int] = set()
        self.attempts: dict[int, int] = {}

    def identify(self, grid: Grid, timing: Timing) -> None:
        ask = [n for n in grid.get_node_ids()
               if n not in self.answered and self.attempts.get(n, 0) < self.ATTEMPTS]
        if not ask:
            return
        for n in ask:
            self.attempts[n] = self.attempts.get(n, 0) + 1
        messages = [Message(RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type=MessageType.QUERY)
                    for n in ask]
        for node, reply in exchange(grid, messages, timing.round_timeout, timing.poll_interval).items():
            self.answered.add(node)
            if reply.has_error() or ROLL_CALL not in reply.content.config_records:
                continue
            holder = str(reply.content.config_records[ROLL_CALL].get("id", ""))
            if holder in self.expected and holder not in self.node_of:
                self.node_of[holder] = node
            else:
                log.warning("node %d claims an unknown or taken holder id; it is not used", node)

    def connected(self, grid: Grid) -> dict[int, str]:
        live = set(grid.get_node_ids())
        return {node: holder for holder, node in self.node_of.items() if node in live}


def _usable_update(plan: TrainingPlan, reply: Message | None) -> bool:
    if reply is None or reply.has_error():
        return False
    content = reply.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return False
    metrics = next(iter(content.metric_records.values()))
    return (check_params(plan, from_array_record(next(iter(content.array_records.values()))))
            and _metrics_ok(metrics, TRAIN_METRICS) and int(metrics[NUM_EXAMPLES]) >= 1)  # type: ignore[arg-type]


def _usable_evaluation(reply: Message | None) -> bool:
    if reply is None or reply.has_error() or len(reply.content.metric_records) != 1:
        return False
    metrics = next(iter(reply.content.metric_records.values()))
    return _metrics_ok(metrics, EVAL_METRICS) and 0.0 <= float(metrics["accuracy"]) <= 1.0  # type: ignore[arg-type]


def _metrics_ok(metrics: MetricRecord, keys: Sequence[str]) -> bool:
    values = [metrics.get(k) for k in (NUM_EXAMPLES, *keys)]
    return (all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
            and float(metrics[NUM_EXAMPLES]) >= 0)  # type: ignore[arg-type]


def drive(grid: Grid, plan: TrainingPlan, holders: Sequence[str], *, on_round: OnRound,
          should_stop: ShouldStop, timing: Timing = Timing(), wait_for: Sequence[str] | None = None,
          extra_config: dict[str, str] | None = None, max_weight: int = DEFAULT_MAX_WEIGHT) -> TrainingResult:
    """Run ``plan.rounds`` rounds over ``grid`` for the expected ``holders``; raise TrainingError without a model.

    Before round 1 it waits up to ``timing.connect_timeout`` for the holders in ``wait_for`` (default: all;
    a holder that cannot connect, e.g. one without a registered node, need not be waited for); every holder
    that never connects is named as failed in each round's report. ``extra_config`` goes to the nodes with
    the plan in every train and evaluate message (e.g. the person key).
    """
    plan.validate()
    registry = _Holders(holders)
    awaited = set(holders if wait_for is None else wait_for)
    deadline = time.monotonic() + timing.connect_timeout
    while True:
        registry.identify(grid, timing)
        if awaited <= set(registry.node_of) or time.monotonic() >= deadline:
            break
        if should_stop():
            raise TrainingCancelled("training was cancelled before round 1", rounds_completed=0)
        time.sleep(timing.poll_interval)
    if len(registry.node_of) < plan.min_holders:
        raise TrainingError(f"only {len(registry.node_of)} of {len(holders)} holders connected; "
                            f"the plan needs {plan.min_holders}")
    # under secure aggregation the driver adds the noise itself, with the measurement the accountant prices
    noise = round_measurement(plan) if plan.dp and plan.secure_aggregation else None
    strategy, inner = build_strategy(plan)
    config: dict[str, ConfigRecordValues] = {**(extra_config or {}), PLAN_KEY: plan.canonical().decode()}
    arrays = to_array_record(init_params(plan))
    history: list[RoundReport] = []
    dropped: set[str] = set()
    releases = 0
    for rnd in range(1, plan.rounds + 1):
        if should_stop():
            raise TrainingCancelled(f"training was cancelled after round {rnd - 1}", rounds_completed=rnd - 1,
                                    epsilon_spent=epsilon_after_rounds(plan, releases) if plan.dp else 0.0)
        started = time.monotonic()
        registry.identify(grid, timing)
        live = registry.connected(grid)
        failed = {h for h in holders if h not in live.values()}
        new_arrays, train_metrics, eval_metrics = None, None, None
        participants: list[str] = []
        note = ""
        if len(live) >= plan.min_holders and plan.secure_aggregation:
            new_arrays, train_metrics, participants, note = _secure_train(
                plan, rnd, arrays, config, grid, live, failed, timing, max_weight, noise)
        elif len(live) >= plan.min_holders:
            set_sampling(inner, len(live), train=min(plan.sample_size(len(live)), len(live)))
            new_arrays, train_metrics, participants = _train(strategy, plan, rnd, arrays, config, grid, live,
                                                             failed, timing)
        else:
            note = f"{len(live)} of {len(holders)} holders connected; a round needs {plan.min_holders}"
        if new_arrays is not None:
            arrays = new_arrays
            releases += 1
            if plan.releases_metrics:
                # a holder whose update did not come is likely down: do not wait for it twice
                answering = {node: h for node, h in live.items() if h not in failed}
                set_sampling(inner, len(answering), evaluate=len(answering))
                eval_metrics = _evaluate(strategy, plan, rnd, arrays, config, grid, answering, failed, timing)
        dropped |= failed
        report = RoundReport(
            round=rnd, rounds=plan.rounds, aggregated=new_arrays is not None,
            participants=tuple(sorted(participants)), failed=tuple(sorted(failed)),
            loss=_get(eval_metrics, "loss"), accuracy=_get(eval_metrics, "accuracy"),
            train_loss=_get(train_metrics, "train-loss") if plan.releases_metrics else None,
            epsilon=epsilon_after_rounds(plan, releases) if plan.dp else None,
            delta=plan.delta if plan.dp else None, seconds=time.monotonic() - started, note=note)
        history.append(report)
        if failed:
            log.warning("round %d: holders %s gave no usable reply", rnd, ", ".join(sorted(failed)))
        if note:
            log.warning("round %d: %s", rnd, note)
        on_round(report)
    if releases == 0:
        raise TrainingError(f"no round had usable updates from at least {plan.min_holders} holders: no model")
    return TrainingResult(params=tuple(from_array_record(arrays)), history=tuple(history),
                          dropped=tuple(sorted(dropped)), epsilon=history[-1].epsilon, delta=history[-1].delta,
                          plan_digest=plan.digest)


def _train(strategy: Strategy, plan: TrainingPlan, rnd: int, arrays: ArrayRecord,
           config: dict[str, ConfigRecordValues], grid: Grid, live: dict[int, str], failed: set[str],
           timing: Timing) -> tuple[ArrayRecord | None, MetricRecord | None, list[str]]:
    """One training step: the new global model (None unless ``min_holders`` usable updates came), the
    training metrics, and the holders in the aggregate; holders without a usable update join ``failed``."""
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(config), NodeView(grid, list(live))))
    replies = exchange(grid, messages, timing.round_timeout, timing.poll_interval)
    usable, participants = [], []
    for message in messages:
        node = message.metadata.dst_node_id
        if _usable_update(plan, replies.get(node)):
            usable.append(replies[node])
            participants.append(live[node])
        else:
            failed.add(live[node])
    if len(usable) < plan.min_holders:
        return None, None, []
    new_arrays, metrics = strategy.aggregate_train(rnd, usable)
    return new_arrays, metrics, participants if new_arrays is not None else []


def _secure_train(plan: TrainingPlan, rnd: int, arrays: ArrayRecord, config: dict[str, ConfigRecordValues],
                  grid: Grid, live: dict[int, str], failed: set[str], timing: Timing,
                  max_weight: int, noise: Callable[[list[float]], object] | None
                  ) -> tuple[ArrayRecord | None, MetricRecord | None, list[str], str]:
    """One training step under SecAgg+: as ``_train``, plus why a round made no model (its report's note).

    The ServerApp gets the mean of the contributors' updates and losses and nothing per holder; under DP the
    sum of their (site-clipped) updates is released through the round's measurement as without secure
    aggregation, so the price is the same.
    """
    asked = random.sample(sorted(live), min(plan.sample_size(len(live)), len(live)))
    if len(asked) < MIN_HOLDERS:  # a plan's min_holders keeps this from happening; never sum fewer
        return None, None, [], (f"secure aggregation needs at least {MIN_HOLDERS} holders a round; "
                                f"{len(asked)} were asked")
    start = from_array_record(arrays)
    outcome = secure_round(grid, plan, rnd, start, config, asked, timeout=timing.round_timeout,
                           poll=timing.poll_interval, max_weight=max_weight)
    contributors = set(outcome.contributors)
    failed.update(live[n] for n in asked if n not in contributors)  # after a halt: those that stopped answering
    # a round starts with min_holders (at least 3) and may end with fewer, down to the threshold, as SecAgg+
    # recovers the dropouts: what the server learns is still a sum, of at least two (never one holder's update)
    if outcome.update is None or len(contributors) < 2:
        return None, None, [], outcome.halted or f"only {len(contributors)} holders' updates were summed"
    if not all(np.all(np.isfinite(u)) for u in outcome.update):
        return None, None, [], "the secure aggregate was not finite"
    update = outcome.update
    if noise is not None:
        update = noisy_mean_update(noise, update, len(contributors))
    new = ArrayRecord([np.asarray(s + u, dtype=np.float64) for s, u in zip(start, update, strict=True)])
    metrics = MetricRecord({"train-loss": outcome.train_loss}) if outcome.train_loss is not None else None
    return new, metrics, sorted(live[n] for n in contributors), ""


def _evaluate(strategy: Strategy, plan: TrainingPlan, rnd: int, arrays: ArrayRecord,
              config: dict[str, ConfigRecordValues],
              grid: Grid, live: dict[int, str], failed: set[str], timing: Timing) -> MetricRecord | None:
    """Federated evaluation of ``arrays`` on every live holder's held-out rows; failures join ``failed``."""
    messages = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(config), NodeView(grid, list(live))))
    replies = exchange(grid, messages, timing.round_timeout, timing.poll_interval)
    usable = []
    for message in messages:
        node = message.metadata.dst_node_id
        if _usable_evaluation(replies.get(node)):
            usable.append(replies[node])
        else:
            failed.add(live[node])
    counted = [r for r in usable if _rows(r) > 0]
    if len(counted) < plan.min_holders:
        return None
    return strategy.aggregate_evaluate(rnd, counted)


def _rows(reply: Message) -> float:
    return float(next(iter(reply.content.metric_records.values()))[NUM_EXAMPLES])  # type: ignore[arg-type]


def _get(metrics: MetricRecord | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    return float(metrics[key])  # type: ignore[arg-type]
