"""Grids the driver hands on: a view of some of a grid's nodes, and the exchange every round step uses.

``exchange`` pushes messages and polls for replies at the driver's own interval (Flower's ``send_and_receive``
sleeps 3 s between polls on the SuperLink); ``NodeView`` shows a strategy or a workflow only the nodes of this
round.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


def exchange(grid: Grid, messages: Iterable[Message], timeout: float, poll: float) -> dict[int, Message]:
    """Push messages and collect the replies that come within ``timeout``, by the node that sent them."""
    messages = list(messages)
    if not messages:
        return {}
    destinations = [m.metadata.dst_node_id for m in messages]
    pending = {mid: node for mid, node in zip(grid.push_messages(messages), destinations, strict=True) if mid}
    replies: dict[int, Message] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is not None:
                replies[node] = reply
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies


class NodeView(Grid):
    """A grid that shows only ``nodes`` (e.g. to the strategy, the connected nodes of known holders this round)."""

    def __init__(self, grid: Grid, nodes: Sequence[int]) -> None:
        self._grid, self._nodes = grid, list(nodes)

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)
