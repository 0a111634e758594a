"""One way to run a plan, two backends: the same driver and ClientApp, in this process or over Flower's runtime.

    backend.run(plan, partitions, *, on_round, should_stop) -> TrainingResult

* ``InProcessBackend``: ServerApp, strategy and one ClientApp node per holder in
  this process over a ``LocalGrid`` (no Ray, no subprocesses); a holder is a
  ``Partition`` in memory.
* ``DeploymentBackend``: a SuperLink and one SuperNode process per holder on
  localhost; a holder is a ``Partition`` (written to a private file) or the path
  of a partition file, and its SuperNode reads only that file; or, with
  ``node_keys_dir``, the holders' own SuperNodes (registered keys), each
  preparing its own rows.

``on_round`` gets each round's ``RoundReport`` as it finishes (a holder that
failed is named in it, and training goes on with the others); ``should_stop``
is asked before each round and True makes ``run`` raise ``TrainingCancelled``.
A run with no model raises ``TrainingError``. Only aggregates are returned:
nothing returns a single holder's update or metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from fl_server.data import Partition
from fl_server.deployment import DeploymentBackend
from fl_server.inprocess import InProcessBackend
from fl_server.plan import TrainingPlan
from fl_server.report import TrainingResult
from fl_server.rounds import OnRound, ShouldStop


class Backend(Protocol):
    """What the sandbox calls; both backends fit it.

    ``external``: the data holders run their own nodes, which prepare their own rows, so ``run`` needs only the
    holders' names (``partitions`` maps each to None). ``person_key``: the dataset's person key column, for a
    node that splits its own rows (each person's rows on one side of the held-out split).
    """

    @property
    def external(self) -> bool: ...

    def run(self, plan: TrainingPlan, partitions: Mapping[str, Partition | None], *, on_round: OnRound,
            should_stop: ShouldStop, person_key: str = "") -> TrainingResult: ...


__all__ = ["Backend", "DeploymentBackend", "InProcessBackend"]
