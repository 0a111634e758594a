"""The embedded backend: a Flower ServerApp and one ClientApp node per holder, all in this process, no Ray.

Flower 1.42's simulation engine needs Ray, and its ``InMemoryGrid`` only
stores messages in a LinkState for someone else to deliver. ``LocalGrid`` is
the missing piece: a Grid that delivers each message to the destination
node's ClientApp straight away (a deep copy, so nodes share no objects with
the server or each other) and keeps the reply for ``pull_messages``. A
ClientApp that raises becomes an error reply, as in Flower's runtimes; the
reason names only the exception type.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fl_server.client import HOLDER_ID, holder_of, make_client_app
from fl_server.data import Partition
from fl_server.plan import TrainingPlan
from fl_server.report import TrainingResult
from fl_server.rounds import OnRound, ShouldStop, Timing, drive
from fl_server.secagg import DEFAULT_MAX_WEIGHT, largest

log = logging.getLogger(__name__)

_SUPERLINK_NODE = 1  # Flower's node id for the server side
_FIRST_NODE = 1_000


class LocalGrid(Grid):
    """A Grid whose nodes are ClientApps in this process, each with its own Context (node config, state)."""

    def __init__(self, client_app: ClientApp, node_configs: Iterable[dict[str, str]], run_id: int = 0) -> None:
        self._app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {_FIRST_NODE + i: Context(run_id=run_id, node_id=_FIRST_NODE + i, node_config=dict(cfg),
                                                   state=RecordDict(), run_config={})
                          for i, cfg in enumerate(node_configs)}
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            context = self._contexts.get(message.metadata.dst_node_id)
            if context is None:
                ids.append("")
                continue
            delivered = copy.deepcopy(message)
            try:
                reply = self._app(delivered, context)
            except Exception as exc:  # a holder's failure is a reply, never the server's crash
                log.warning("holder %s: %s while handling a %s message", holder_of(context), type(exc).__name__,
                            message.metadata.message_type, exc_info=log.isEnabledFor(logging.DEBUG))
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=type(exc).__name__)
                reply = Message(error, reply_to=delivered)
            reply.metadata.__dict__["_src_node_id"] = context.node_id
            self._replies[message_id] = copy.deepcopy(reply)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))


def _ensure_task_identity() -> None:
    """Flower's Message() reads a process-wide task identity; give this process the server's if it has none."""
    for name, value in (("_run_id", 0), ("_node_id", _SUPERLINK_NODE), ("_task_id", 0)):
        if getattr(TaskIdentity, name) is None:
            setattr(TaskIdentity, name, value)


class InProcessBackend:
    """Trains in this process: ServerApp, strategy and one ClientApp node per holder over a LocalGrid."""

    def __init__(self, *, timing: Timing = Timing(connect_timeout=0.0)) -> None:
        self.timing = timing

    @property
    def external(self) -> bool:
        """Never: every holder's rows are a ``Partition`` in this process."""
        return False

    def run(self, plan: TrainingPlan, partitions: Mapping[str, Partition | None], *, on_round: OnRound,
            should_stop: ShouldStop, person_key: str = "") -> TrainingResult:
        """Train ``plan`` over ``partitions`` (holder id -> rows); each node reads only its own entry, per message.

        ``person_key`` is not needed here: the partitions were split by person when they were made."""
        plan.validate()
        holders = list(partitions)
        if not all(isinstance(h, str) and h for h in holders):
            raise TypeError("holder ids are non-empty strings")

        def load(context: Context) -> Partition:
            part = partitions[str(context.node_config[HOLDER_ID])]  # read per message: a holder may fail later
            if part is None:
                raise TypeError("the in-process backend trains on partitions in memory: every holder needs its rows")
            return part

        client_app = make_client_app(load)
        grid = LocalGrid(client_app, [{HOLDER_ID: h} for h in holders])
        # read once, and only when used: a holder's rows may fail (or change) between reads
        weight_cap = largest(partitions.values()) if plan.secure_aggregation else DEFAULT_MAX_WEIGHT
        server_app = ServerApp()
        outcome: list[TrainingResult] = []

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            outcome.append(drive(grid, plan, holders, on_round=on_round, should_stop=should_stop,
                                 timing=self.timing, max_weight=weight_cap))

        _ensure_task_identity()
        server_app(grid, Context(run_id=0, node_id=_SUPERLINK_NODE, node_config={}, state=RecordDict(),
                                 run_config={}))
        return outcome[0]
