"""One round of secure aggregation with Flower's own SecAgg+ (``SecAggPlusWorkflow`` and ``secaggplus_mod``).

The ServerApp never sees a holder's update: each node masks its quantised
update with pairwise masks (agreed with its neighbours by Diffie-Hellman) and a
private mask, whose seeds it secret-shares among its neighbours; the masks
cancel in the sum, and the shares of a node that drops out after sharing its
keys let the others remove its masks. What the ServerApp receives from a node:
two public keys, encrypted shares addressed to other nodes, one masked vector
(uniform modulo 2**32), and shares of the seeds the protocol asks it to reveal.

Flower ships the workflow for its legacy ``Strategy`` API (a ``LegacyContext``
holding a strategy and a client manager, and FitIns/FitRes records on the
wire). What this module adapts, and why:

* ``_Collect``, a legacy strategy of two methods: ``configure_fit`` sends the
  round's global model and config to every node of the client manager (the
  nodes the driver sampled), and
  ``aggregate_fit`` keeps the unmasked aggregate; nothing else of the legacy
  API is used. The driver turns the aggregate into the new model (and adds the
  DP noise), exactly as it does without secure aggregation.
* What is summed is each node's *update* (new minus global model), plus its
  training loss, never the model itself: an update is small and bounded (under
  DP its norm is at most the clipping norm, which makes the quantisation range
  tight), a model is neither.
* ``SecureRound`` fixes one gap of Flower 1.42's workflow: a node that fails in
  the setup or key-sharing stage stays among the "sampled" nodes, so in the
  unmask stage every neighbour is asked for a share it never received and the
  round fails. Here such a node leaves the round before any mask depends on it
  (it gave nobody a share), which is the protocol's intent; a node that drops
  after sharing its keys is recovered from its neighbours' shares, as Flower does.
* The workflow's ``grid.send_and_receive`` polls every 3 s on the SuperLink;
  ``_Exchange`` sends each stage through the driver's own exchange (its timeout
  and poll interval), so a stage costs what its slowest node costs.
* Why a stage halted is kept (``SecureRound.halted``) for the round's report.

The node side is ``secure_mod`` (in ``fl_server.client``): Flower's
``secaggplus_mod`` on the messages that carry its stage, with the parameters the
plan implies checked first.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import parameters_to_arrayrecord
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from fl_server.data import Partition, load_partition
from fl_server.grids import NodeView, exchange
from fl_server.model import param_shapes
from fl_server.plan import TrainingPlan

log = logging.getLogger(__name__)

#: Fewer holders than this in a round and secure aggregation is refused: with two, each one's update is the
#: aggregate minus the other's.
MIN_HOLDERS = 3
#: Flower's default quantisation: 2**22 levels in [-range, range], masks modulo 2**32 (so at most 1,024 holders
#: can be summed without wrapping around).
QUANTISATION_LEVELS = 2**22
MODULUS = 2**32
#: The quantisation range of a plan without DP (its updates have no clipping norm): an update coordinate beyond it
#: is clipped to it. A round of local SGD on [0, 1]-scaled inputs moves a weight far less (on rand_hie's sites the
#: largest first-round move was 0.9 at learning rate 0.1 and 2.1 at learning rate 1 with 5 local epochs), but a plan
#: near the limits (learning rate 10, 50 epochs) could reach it.
RANGE_WITHOUT_DP = 64.0
#: Without DP an update is weighted by its holder's training rows, capped at this (the quantisation's scale).
DEFAULT_MAX_WEIGHT = 2**20
#: A node's training loss rides in its masked vector as loss * range / LOSS_MAX (losses above LOSS_MAX count as it).
LOSS_MAX = 64.0
#: Config keys the nodes read from the round's FitIns.
WEIGHT_CAP_KEY = "secagg-max-weight"
RANGE_KEY = "secagg-range"


@dataclass(frozen=True)
class Protocol:
    """The protocol's numbers for a round of ``sampled`` holders: every holder shares with every other
    (``shares``), and ``threshold`` of them (a majority) recover a dropped holder's masks."""

    sampled: int
    shares: int
    threshold: int

    @property
    def tolerated(self) -> int:
        """How many holders may drop after sharing their keys and the round still completes."""
        return self.sampled - self.threshold


def parameters_for(sampled: int) -> Protocol:
    """Shares and threshold for a round of ``sampled`` holders: all of them, and a strict majority.

    A majority threshold means the sandbox would need more than half of a node's neighbours to collude with it
    before it could learn both of a node's seeds; it also lets ``sampled - threshold`` holders drop out.
    """
    if sampled < MIN_HOLDERS:
        raise ValueError(f"secure aggregation needs at least {MIN_HOLDERS} holders in a round")
    return Protocol(sampled=sampled, shares=sampled, threshold=sampled // 2 + 1)


def largest(partitions: Iterable[object]) -> int:
    """The most training rows of any of these partitions (in memory, or files ``save_partition`` wrote): the
    weight cap that makes the quantisation finest; ``DEFAULT_MAX_WEIGHT`` where none is known here."""
    rows = [(p if isinstance(p, Partition) else load_partition(p)).x.shape[0]  # type: ignore[arg-type]
            for p in partitions if isinstance(p, (Partition, str, os.PathLike))]
    return max(rows, default=DEFAULT_MAX_WEIGHT)


def quantisation_range(plan: TrainingPlan) -> float:
    """Each coordinate of a node's update is quantised within [-range, range]."""
    return plan.clipping_norm if plan.dp else RANGE_WITHOUT_DP


def site_clipping_norm(plan: TrainingPlan) -> float:
    """The norm a node clips its update to under DP, so that after quantisation its norm is still at most C.

    Quantising moves each coordinate by less than one step, 2C / levels; over the update's d coordinates that is
    less than sqrt(d) * 2C / levels in L2 norm, so clipping to C less that keeps the sensitivity the accountant
    prices.
    """
    dims = sum(int(np.prod(s)) for s in param_shapes(plan))
    return plan.clipping_norm * (1.0 - 2.0 * math.sqrt(dims) / QUANTISATION_LEVELS)


class _Exchange(NodeView):
    """The round's nodes, with ``send_and_receive`` through the driver's exchange (its timeout and poll)."""

    def __init__(self, grid: Grid, nodes: Sequence[int], timeout: float, poll: float) -> None:
        super().__init__(grid, nodes)
        self._timeout, self._poll = timeout, poll

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(exchange(self._grid, messages, self._timeout, self._poll).values())


class _Collect(Strategy):
    """The legacy strategy the workflow calls: the round's instructions out, the unmasked aggregate in."""

    def __init__(self, config: dict[str, Scalar]) -> None:
        self._config = config
        self.aggregate: list[np.ndarray] | None = None
        self.contributors: list[int] = []

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, FitIns(parameters, dict(self._config))) for proxy in client_manager.all().values()]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
            self.contributors = [proxy.node_id for proxy, _ in results]
        return None, {}  # the driver makes the new model

    # the rest of the legacy API is not used by the workflow
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
        return []

    def aggregate_evaluate(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        return None, {}

    def evaluate(self, server_round, parameters):  # type: ignore[no-untyped-def]
        return None


class SecureRound(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, dropping nodes that fail before sharing their keys and saying why it halted."""

    def __init__(self, protocol: Protocol, *, clipping_range: float, max_weight: float, timeout: float) -> None:
        super().__init__(protocol.shares, protocol.threshold, max_weight=max_weight, clipping_range=clipping_range,
                         quantization_range=QUANTISATION_LEVELS, modulus_range=MODULUS, timeout=timeout)
        self.protocol = protocol
        self.halted = ""
        self.answered: set[int] = set()

    def _halt(self, stage: str, state: WorkflowState) -> bool:
        self.answered = set(state.active_node_ids)
        self.halted = (f"secure aggregation stopped at {stage}: {len(state.active_node_ids)} of "
                       f"{self.protocol.sampled} holders answered, the reconstruction threshold is "
                       f"{self.protocol.threshold}")
        return False

    def _stage(self, name: str, step: Callable[[], bool], state: WorkflowState) -> bool:
        """Run one of Flower's stages; a reply it cannot use (a key, share or vector of the wrong form or shape)
        halts the round like a dropout below the threshold, never the run."""
        try:
            ok = step()
        except (ValueError, KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
            log.warning("secure aggregation, %s: %s from a holder's reply", name, type(exc).__name__)
            self.halted = f"secure aggregation stopped at {name}: a holder's reply could not be used"
            self.answered = set(state.active_node_ids)
            return False
        return ok or self._halt(name, state)

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:  # type: ignore[override]
        def step() -> bool:
            ok = super(SecureRound, self).setup_stage(grid, context, state)
            state.sampled_node_ids = set(state.active_node_ids)  # nobody holds a share of a node that never set up
            return ok

        return self._stage("key setup", step, state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext,  # type: ignore[override]
                         state: WorkflowState) -> bool:
        def step() -> bool:
            ok = super(SecureRound, self).share_keys_stage(grid, context, state)
            state.sampled_node_ids = set(state.active_node_ids)  # nor of one whose shares never went out
            return ok and self._check_threshold(state)

        return self._stage("key sharing", step, state)

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext,  # type: ignore[override]
                                     state: WorkflowState) -> bool:
        return self._stage("collecting the masked updates",
                           lambda: super(SecureRound, self).collect_masked_vectors_stage(grid, context, state), state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:  # type: ignore[override]
        return self._stage("unmasking", lambda: super(SecureRound, self).unmask_stage(grid, context, state), state)


@dataclass(frozen=True)
class SecureSum:
    """A round's outcome: the weighted mean of the contributors' updates and of their training losses."""

    update: list[np.ndarray] | None
    train_loss: float | None
    #: The nodes whose updates are in the sum; after a halt, the nodes still answering when it halted.
    contributors: list[int]
    halted: str


def secure_round(grid: Grid, plan: TrainingPlan, rnd: int, start: Sequence[np.ndarray],
                 config: dict[str, ConfigRecordValues], nodes: Sequence[int], *, timeout: float, poll: float,
                 max_weight: int = DEFAULT_MAX_WEIGHT) -> SecureSum:
    """One SecAgg+ round over ``nodes``: the mean update (weighted by each node's capped training rows, or
    equally under DP) and mean training loss, or ``update=None`` with the reason in ``halted``."""
    protocol = parameters_for(len(nodes))
    weight_cap = 1 if plan.dp else max_weight
    fit_config: dict[str, Scalar] = {**{k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))},
                                     "server-round": rnd, WEIGHT_CAP_KEY: weight_cap,
                                     RANGE_KEY: quantisation_range(plan)}
    view = _Exchange(grid, nodes, timeout, poll)
    collect = _Collect(fit_config)
    nodes_asked = SimpleClientManager()  # the workflow's client manager: exactly the nodes the driver sampled
    for node in nodes:
        nodes_asked.register(GridClientProxy(node, view, run_id=0))
    state = RecordDict({MAIN_PARAMS_RECORD: parameters_to_arrayrecord(ndarrays_to_parameters(list(start)), True),
                        MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})})
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
                            strategy=collect, client_manager=nodes_asked)
    workflow = SecureRound(protocol, clipping_range=quantisation_range(plan), max_weight=weight_cap,
                           timeout=timeout)
    workflow(view, context)
    if collect.aggregate is None:
        return SecureSum(None, None, sorted(workflow.answered),
                         workflow.halted or "secure aggregation produced no aggregate")
    *update, loss = collect.aggregate
    return SecureSum(update, float(np.ravel(loss)[0]) * LOSS_MAX / quantisation_range(plan), collect.contributors,
                     "")


def masked_input(plan: TrainingPlan, update: Sequence[np.ndarray], loss: float, config: ConfigRecord
                 ) -> list[np.ndarray]:
    """What a node puts into the protocol: its update and, scaled into the quantisation range, its loss."""
    scale = float(config[RANGE_KEY]) / LOSS_MAX  # type: ignore[arg-type]
    return [*(np.asarray(u, dtype=np.float64) for u in update),
            np.array([min(max(loss, 0.0), LOSS_MAX) * scale])]
