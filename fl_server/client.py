"""The ClientApp every data holder runs: it loads only its own partition and answers with updates and metrics.

The plan travels in each message's ConfigRecord (``plan``, canonical JSON), so
a holder needs no configuration beyond where its rows are; it validates the
plan before touching them. Under DP the holder clips its own update to the
plan's norm before it leaves (the server clips again: it cannot trust that).
Replies carry one ArrayRecord (train) and one MetricRecord with the row count,
the unit weight and the metrics, as Flower's strategies expect.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_server.data import Partition
from fl_server.model import check_params, evaluate, from_array_record, to_array_record, train_local
from fl_server.plan import TrainingPlan

#: node_config key naming the holder a node serves.
HOLDER_ID = "holder-id"
PLAN_KEY = "plan"
#: message config key: the dataset's person key, for a node that prepares its own rows (held-out split by person).
PERSON_KEY = "person-key"
ROLL_CALL = "holder"
#: Metric keys every reply carries: the rows behind it, and 1 (the FedAvg weight under DP).
NUM_EXAMPLES = "num-examples"
UNIT_WEIGHT = "unit-weight"

PartitionLoader = Callable[[Context], Partition]
#: A loader that also gets the message's plan and config (a node that prepares its own raw rows per plan).
PlanPartitionLoader = Callable[[Context, TrainingPlan, ConfigRecord], Partition]


def holder_of(context: Context) -> str:
    return str(context.node_config[HOLDER_ID])


def plan_from(message: Message) -> TrainingPlan:
    return TrainingPlan.from_dict(json.loads(str(message.content["config"][PLAN_KEY]))).validate()


def clip_update(new: list[np.ndarray], start: list[np.ndarray], norm: float) -> list[np.ndarray]:
    """``start`` plus the update scaled down to L2 norm at most ``norm``."""
    deltas = [n - s for n, s in zip(new, start, strict=True)]
    length = float(np.sqrt(sum(float(np.sum(d * d)) for d in deltas)))
    scale = min(1.0, norm / length) if length > 0.0 else 1.0
    return [s + d * scale for s, d in zip(start, deltas, strict=True)]


def make_client_app(load: PartitionLoader | PlanPartitionLoader, *, with_plan: bool = False) -> ClientApp:
    """A ClientApp whose handlers call ``load(context)`` for this node's partition on every message
    (``load(context, plan, config)`` with ``with_plan``: the message's validated plan and its ConfigRecord)."""
    app = ClientApp()

    def inputs(message: Message, context: Context) -> tuple[TrainingPlan, Partition, list[np.ndarray]]:
        """The message's validated plan, this node's rows and the global model, each checked against the plan."""
        plan = plan_from(message)
        config = message.content["config"]
        part: Partition = load(context, plan, config) if with_plan else load(context)  # type: ignore[call-arg,arg-type]
        part.check(plan.n_inputs)
        params = from_array_record(message.content["arrays"])  # type: ignore[arg-type]
        if not check_params(plan, params):
            raise ValueError("the global model does not match the plan")
        return plan, part, params

    @app.query()
    def roll_call(message: Message, context: Context) -> Message:
        return Message(RecordDict({ROLL_CALL: ConfigRecord({"id": holder_of(context)})}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        plan, part, start = inputs(message, context)
        server_round = int(message.content["config"]["server-round"])  # type: ignore[arg-type]
        rng = np.random.default_rng([plan.seed, zlib.crc32(holder_of(context).encode()), server_round])
        new, loss = train_local(plan, start, part.x, part.y, rng=rng)
        if plan.dp:
            new = clip_update(new, start, plan.clipping_norm)
        metrics = MetricRecord({NUM_EXAMPLES: int(part.x.shape[0]), UNIT_WEIGHT: 1, "train-loss": loss})
        return Message(RecordDict({"arrays": to_array_record(new), "metrics": metrics}), reply_to=message)

    @app.evaluate()
    def evaluate_global(message: Message, context: Context) -> Message:
        plan, part, params = inputs(message, context)
        result = evaluate(plan, params, part.x_eval, part.y_eval)
        metrics = MetricRecord({NUM_EXAMPLES: result.n, UNIT_WEIGHT: 1, "loss": result.loss,
                                "accuracy": result.accuracy})
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    return app
