"""The ServerApp the SuperLink runs (in Flower's ``flwr-serverapp`` process): the round driver over the SuperLink.

It talks to the DeploymentBackend through files in the run's work directory
(``work-dir`` in the run config): it reads ``run.json`` (plan, holders,
timing, the dataset's person key if it has one, sent to the nodes with the
plan, the secure aggregation's weight cap, and, with node authentication, the node id registered for each holder:
no other node is sent anything, and a holder without one is not waited for but
reported as failed each round), appends one JSON event per line to
``progress.jsonl`` (``round``, then ``done``, ``error`` or ``cancelled``),
writes the final model to ``result.npz`` before ``done``, and stops between
rounds once ``stop`` exists.
Only aggregates are written. Errors become an ``error`` event with the
engine's public message; anything unexpected is logged here and reported as
a fixed phrase.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_server.client import PERSON_KEY
from fl_server.errors import FlServerError, TrainingCancelled
from fl_server.plan import TrainingPlan
from fl_server.report import RoundReport
from fl_server.grids import NodeView
from fl_server.rounds import Timing, drive
from fl_server.secagg import DEFAULT_MAX_WEIGHT

log = logging.getLogger(__name__)

RUN_FILE, PROGRESS_FILE, RESULT_FILE, STOP_FILE = "run.json", "progress.jsonl", "result.npz", "stop"

app = ServerApp()


class _Events:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": event, **fields}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class _Registered(NodeView):
    """The grid limited to the nodes registered for this run's holders (as many of them as are connected)."""

    def get_node_ids(self) -> Iterable[int]:
        allowed = set(self._nodes)
        return [n for n in self._grid.get_node_ids() if n in allowed]


@app.main()
def main(grid: Grid, context: Context) -> None:
    work = Path(str(context.run_config["work-dir"]))
    events = _Events(work / PROGRESS_FILE)
    events.write("started")
    try:
        spec = json.loads((work / RUN_FILE).read_text(encoding="utf-8"))
        plan = TrainingPlan.from_dict(spec["plan"]).validate()
        wait_for = None
        if spec.get("nodes"):
            grid = _Registered(grid, [int(n) for n in spec["nodes"].values()])
            wait_for = list(spec["nodes"])  # a holder without a registered node cannot connect
        extra = {PERSON_KEY: str(spec["person_key"])} if spec.get("person_key") else None

        def on_round(report: RoundReport) -> None:
            events.write("round", report=report.to_dict())

        result = drive(grid, plan, spec["holders"], on_round=on_round,
                       should_stop=lambda: (work / STOP_FILE).exists(), timing=Timing(**spec["timing"]),
                       wait_for=wait_for, extra_config=extra, max_weight=int(spec.get("max_weight", DEFAULT_MAX_WEIGHT)))
        tmp = work / (RESULT_FILE + ".tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, *result.params)
        os.replace(tmp, work / RESULT_FILE)
        events.write("done", dropped=list(result.dropped), epsilon=result.epsilon, delta=result.delta,
                     plan_digest=result.plan_digest)
    except TrainingCancelled as exc:
        events.write("cancelled", message=exc.message, rounds_completed=exc.rounds_completed,
                     epsilon_spent=exc.epsilon_spent)
    except FlServerError as exc:
        events.write("error", kind=type(exc).__name__, message=exc.message)
    except Exception:
        log.exception("the federated training server app failed")
        events.write("error", kind="TrainingError", message="the training server failed")
