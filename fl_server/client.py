"""The ClientApp every data holder runs: it loads only its own partition and answers with updates and metrics.

The plan travels in each message's ConfigRecord (``plan``, canonical JSON), so
a holder needs no configuration beyond where its rows are; it validates the
plan before touching them. Under DP the holder clips its own update to the
plan's norm before it leaves (the server clips again: it cannot trust that).
Replies carry one ArrayRecord (train) and one MetricRecord with the row count,
the unit weight and the metrics, as Flower's strategies expect.

Under secure aggregation (``plan.secure_aggregation``) a train message comes in
Flower's SecAgg+ stages; ``secure_mod`` runs Flower's ``secaggplus_mod`` on them,
and the collect stage reaches the train handler as a legacy FitIns. The holder
then answers with its update (new minus global model; under DP clipped here, to
a norm that stays within C after quantisation, as the server can no longer clip
it) and its training loss, which the mod quantises and masks; the row count it
weights by is not sent in clear. A plain train message for such a plan is
refused, so a sandbox that skipped the protocol would get no update at all;
a node whose node config sets ``secure-aggregation = "required"`` refuses
plain train messages for any plan.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

from fl_server.data import Partition
from fl_server.model import check_params, evaluate, from_array_record, to_array_record, train_local
from fl_server.plan import TrainingPlan
from fl_server.secagg import MIN_HOLDERS, WEIGHT_CAP_KEY, masked_input, site_clipping_norm

#: node_config key naming the holder a node serves.
HOLDER_ID = "holder-id"
#: node_config key: "required" makes the node refuse to send an update outside secure aggregation, whatever the
#: plan says (a department's own node need not trust the sandbox's plan for that).
SECURE_AGGREGATION = "secure-aggregation"
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
    return plan_of(message.content["config"])  # type: ignore[arg-type]


def plan_of(config: ConfigRecord) -> TrainingPlan:
    return TrainingPlan.from_dict(json.loads(str(config[PLAN_KEY]))).validate()


#: Where Flower's legacy FitIns keeps the global model (the SecAgg+ collect stage's train message).
_FITINS_PARAMETERS = "fitins.parameters"


def secure_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` on the train messages of a SecAgg+ round; every other message as it is.

    Before it sets up, the node checks the round is one the sandbox's plans allow: at least three holders, every
    one sharing with every other, and a majority needed to recover a seed (a lower threshold would let fewer
    colluding holders unmask it).
    """
    if message.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in message.content.config_records:
        return call_next(message, context)
    configs = message.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) == Stage.SETUP:
        sample, shares, threshold = (int(configs.get(k, 0)) for k in  # type: ignore[arg-type]
                                     (Key.SAMPLE_NUMBER, Key.SHARE_NUMBER, Key.THRESHOLD))
        if sample < MIN_HOLDERS or shares != sample or not sample // 2 < threshold <= shares:
            raise ValueError("refused a secure aggregation round with weaker parameters than the plan's")
    reply = secaggplus_mod(message, context, call_next)
    counts = reply.content.metric_records.get("fitres.num_examples")
    if counts is not None:
        counts["num_examples"] = 0  # the protocol weighted by it here; the server need not see it
    return reply


def clip_update(new: list[np.ndarray], start: list[np.ndarray], norm: float) -> list[np.ndarray]:
    """``start`` plus the update scaled down to L2 norm at most ``norm``."""
    deltas = [n - s for n, s in zip(new, start, strict=True)]
    length = float(np.sqrt(sum(float(np.sum(d * d)) for d in deltas)))
    scale = min(1.0, norm / length) if length > 0.0 else 1.0
    return [s + d * scale for s, d in zip(start, deltas, strict=True)]


def make_client_app(load: PartitionLoader | PlanPartitionLoader, *, with_plan: bool = False) -> ClientApp:
    """A ClientApp whose handlers call ``load(context)`` for this node's partition on every message
    (``load(context, plan, config)`` with ``with_plan``: the message's validated plan and its ConfigRecord)."""
    app = ClientApp(mods=[secure_mod])

    def checked(config: ConfigRecord, params: list[np.ndarray],
                context: Context) -> tuple[TrainingPlan, Partition, list[np.ndarray]]:
        """The validated plan in ``config``, this node's rows and the global model, each checked against the plan."""
        plan = plan_of(config)
        part: Partition = load(context, plan, config) if with_plan else load(context)  # type: ignore[call-arg,arg-type]
        part.check(plan.n_inputs)
        if not check_params(plan, params):
            raise ValueError("the global model does not match the plan")
        return plan, part, params

    def inputs(message: Message, context: Context) -> tuple[TrainingPlan, Partition, list[np.ndarray]]:
        return checked(message.content["config"], from_array_record(message.content["arrays"]),  # type: ignore[arg-type]
                       context)

    def local_update(plan: TrainingPlan, part: Partition, start: list[np.ndarray], server_round: int,
                     context: Context, clip: float) -> tuple[list[np.ndarray], float]:
        rng = np.random.default_rng([plan.seed, zlib.crc32(holder_of(context).encode()), server_round])
        new, loss = train_local(plan, start, part.x, part.y, rng=rng)
        if plan.dp:
            new = clip_update(new, start, clip)
        return new, loss

    def secure_train(message: Message, context: Context) -> Message:
        """The collect stage of a SecAgg+ round: the update and loss for the mod to quantise and mask."""
        ins = recorddict_to_fitins(message.content, keep_input=True)
        config = ConfigRecord(ins.config)  # type: ignore[arg-type]
        plan, part, start = checked(config, [np.asarray(a, dtype=np.float64)
                                             for a in parameters_to_ndarrays(ins.parameters)], context)
        if not plan.secure_aggregation:
            raise ValueError("this plan does not train under secure aggregation")
        new, loss = local_update(plan, part, start, int(config["server-round"]),  # type: ignore[arg-type]
                                 context, site_clipping_norm(plan))
        update = [n - s for n, s in zip(new, start, strict=True)]
        rows = int(part.x.shape[0])
        weight = 1 if plan.dp else min(rows, int(config[WEIGHT_CAP_KEY]))  # type: ignore[arg-type]
        if weight < 1:
            raise ValueError("no training rows")
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(masked_input(plan, update, loss, config)),
                        num_examples=weight, metrics={})
        return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=message)

    @app.query()
    def roll_call(message: Message, context: Context) -> Message:
        return Message(RecordDict({ROLL_CALL: ConfigRecord({"id": holder_of(context)})}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if _FITINS_PARAMETERS in message.content.array_records:
            return secure_train(message, context)
        plan, part, start = inputs(message, context)
        if plan.secure_aggregation or context.node_config.get(SECURE_AGGREGATION) == "required":
            raise ValueError("this node sends its update only under secure aggregation")
        server_round = int(message.content["config"]["server-round"])  # type: ignore[arg-type]
        new, loss = local_update(plan, part, start, server_round, context, plan.clipping_norm)
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
