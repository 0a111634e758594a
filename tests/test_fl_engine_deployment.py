"""fl_server's deployment backend: a real SuperLink and SuperNode processes on localhost, and their clean-up.

One full run (two holders, two rounds) takes about half a minute on an idle
machine, most of it Flower's own polling (a SuperNode checks for work every
3 s) and a new ClientApp process per message. The ServerApp's side of the
file protocol (rounds, model, stop) runs here over an in-process grid, and the
backend's side against a fake event file, so neither needs another runtime.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flwr.app import Context, RecordDict

from fl_server import (
    DeploymentBackend, Partition, RoundReport, Timing, TrainingCancelled, TrainingPlan, save_partition,
)
from fl_server.app import server_app
from fl_server.client import make_client_app
from fl_server.deployment import _descendants, _EventReader, _Processes, _same_process
from fl_server.inprocess import LocalGrid, _ensure_task_identity
from fl_server.model import evaluate
from tests.test_fl_engine import PLAN, hie, pooled, site_partitions  # noqa: F401  hie is a fixture


def live_descendants() -> list[tuple[int, str]]:
    return [d for d in _descendants([os.getpid()]) if _same_process(*d)]


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 30 s idle; a loaded 2-core CI machine can take several times that
def test_two_supernodes_train_a_sensible_model(tmp_path: Path, hie: dict[str, np.ndarray]) -> None:
    plan = dataclasses.replace(PLAN, rounds=2)
    parts = site_partitions(plan, hie, ("1", "4"))
    # one holder handed over as the file the sandbox writes for it, one in memory
    save_partition(tmp_path / "holder-4.npz", parts["4"])
    inputs: dict[str, Partition | Path] = {"1": parts["1"], "4": tmp_path / "holder-4.npz"}
    reports: list[RoundReport] = []
    # Start-up and connection limits well above the defaults (60 s each): they only matter when something hangs.
    backend = DeploymentBackend(timing=Timing(round_timeout=120.0, connect_timeout=240.0, poll_interval=0.2),
                                startup_timeout=240.0)
    started = time.monotonic()
    result = backend.run(plan, inputs, on_round=reports.append, should_stop=lambda: False)
    total = time.monotonic() - started
    print(f"\ndeployment: startup {backend.last_startup_seconds:.1f} s, rounds "
          f"{', '.join(f'{r.seconds:.1f}' for r in reports)} s, total {total:.1f} s")
    assert [r.round for r in reports] == [1, 2] and list(result.history) == reports
    assert all(r.participants == ("1", "4") and r.failed == () and r.aggregated for r in reports)
    _, _, x_eval, y_eval = pooled(parts)
    final = evaluate(plan, list(result.params), x_eval, y_eval)
    assert result.final.accuracy == pytest.approx(final.accuracy, abs=1e-12)
    assert final.accuracy > 0.58
    assert result.plan_digest == plan.digest and result.dropped == ()
    assert live_descendants() == [], "a runtime process outlived the run"


def run_server_app(work: Path, parts: dict[str, Partition], plan: TrainingPlan) -> list[dict[str, object]]:
    """The deployment ServerApp's main, in this process over a LocalGrid, talking through ``work`` as it would."""
    (work / "run.json").write_text(json.dumps({"plan": plan.to_dict(), "holders": list(parts),
                                               "timing": {"round_timeout": 10.0, "connect_timeout": 0.0,
                                                          "poll_interval": 0.01}}))
    _ensure_task_identity()
    client = make_client_app(lambda ctx: parts[str(ctx.node_config["holder-id"])])
    grid = LocalGrid(client, [{"holder-id": h} for h in parts])
    server_app.main(grid, Context(run_id=0, node_id=1, node_config={}, state=RecordDict(),
                                  run_config={"work-dir": str(work)}))
    return _EventReader(work / "progress.jsonl").read()


def test_server_app_writes_rounds_and_the_model_then_done(tmp_path: Path, hie: dict[str, np.ndarray]) -> None:
    plan = dataclasses.replace(PLAN, rounds=2)
    parts = site_partitions(plan, hie, ("2", "5"))
    events = run_server_app(tmp_path, parts, plan)
    assert [e["event"] for e in events] == ["started", "round", "round", "done"]
    with np.load(tmp_path / "result.npz") as z:
        assert [z[k].shape for k in sorted(z.files)] == [(plan.n_inputs,), (1,)]
    assert RoundReport.from_dict(events[2]["report"]).round == 2  # type: ignore[arg-type]


def test_server_app_stops_between_rounds_once_the_stop_file_exists(tmp_path: Path,
                                                                    hie: dict[str, np.ndarray]) -> None:
    (tmp_path / "stop").touch()
    events = run_server_app(tmp_path, site_partitions(PLAN, hie, ("2", "5")), PLAN)
    assert [e["event"] for e in events] == ["started", "cancelled"] and events[1]["rounds_completed"] == 0
    assert not (tmp_path / "result.npz").exists()


def test_the_backend_relays_a_stop_and_the_cancellation(tmp_path: Path) -> None:
    """should_stop() -> the stop file; the ServerApp's ``cancelled`` event -> TrainingCancelled."""
    # A stand-in SuperLink that must still be running whenever _follow polls it (killed below).
    link = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        events = tmp_path / "progress.jsonl"
        events.write_text(json.dumps({"event": "started"}) + "\n")
        asked: list[bool] = []

        def should_stop() -> bool:
            if (tmp_path / "stop").exists() and len(asked) == 1:  # the ServerApp sees it and cancels
                with events.open("a") as fh:
                    fh.write(json.dumps({"event": "cancelled", "message": "training was cancelled after round 0",
                                         "rounds_completed": 0, "epsilon_spent": 0.0}) + "\n")
            asked.append(True)
            return True

        with pytest.raises(TrainingCancelled) as info:
            DeploymentBackend()._follow(PLAN, tmp_path, link, time.monotonic(), lambda r: None, should_stop)
        assert info.value.rounds_completed == 0 and (tmp_path / "stop").exists()
    finally:
        link.kill()
        link.wait()


def test_holder_ids_must_be_safe_for_a_node_config() -> None:
    with pytest.raises(TypeError, match="holder ids"):
        DeploymentBackend().run(PLAN, {"a' b": Partition.of(np.zeros((2, 10)), np.zeros(2))},
                                on_round=lambda r: None, should_stop=lambda: False)


def test_processes_and_what_they_started_are_stopped(tmp_path: Path) -> None:
    """A started process whose child detaches into its own session (as Flower's SuperExec does) leaves nothing."""
    # Both must still be alive when counted, so they sleep far longer than the wait below (stop() kills them).
    child = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
             "start_new_session=True); time.sleep(600)")
    procs = _Processes(dict(os.environ), tmp_path)
    procs.start("parent", [sys.executable, "-c", child])
    deadline = time.monotonic() + 120  # two Python start-ups; generous for a loaded machine
    while len(live_descendants()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(live_descendants()) == 2
    procs.stop(grace=2.0)
    assert live_descendants() == []


def test_event_reader_returns_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    reader = _EventReader(path)
    assert reader.read() == []
    with path.open("w") as fh:
        fh.write(json.dumps({"event": "started"}) + "\n" + '{"event": "ro')
    assert reader.read() == [{"event": "started"}]
    with path.open("a") as fh:
        fh.write('und"}\n')
    assert reader.read() == [{"event": "round"}]


def test_server_app_reports_a_bad_plan_as_an_error_event(tmp_path: Path) -> None:
    """The ServerApp never crashes silently: a bad run file becomes an ``error`` event with a public message."""
    code = (
        "import sys\n"
        "from flwr.app import Context, RecordDict\n"
        "from fl_server.app.server_app import main\n"
        "main(None, Context(run_id=0, node_id=1, node_config={}, state=RecordDict(),"
        " run_config={'work-dir': sys.argv[1]}))\n")
    (tmp_path / "run.json").write_text(json.dumps({"plan": {"rounds": 0}, "holders": [], "timing": {}}))
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, capture_output=True, timeout=240)
    events = _EventReader(tmp_path / "progress.jsonl").read()
    assert [e["event"] for e in events] == ["started", "error"]
    assert events[1]["kind"] == "PlanError" and events[1]["message"] == "malformed plan document"
