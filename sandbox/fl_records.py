"""What the state keeps of a training job: its summary, every progress report, and, once completed, its model.

A job's row is written in the transaction that charges it, so a charge never lacks its job. The server process
running a job records its own id (``server_id``) and refreshes the job's heartbeat while it runs; a job left open
whose heartbeat is older than the staleness window belonged to a server that stopped (or crashed) and is marked
failed by the next server that reads it. An ended job's row never changes again (the database refuses it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import fl_server
from sandbox.compute_io import JobSummary, TrainingEvent, TrainingSettings
from sandbox.domain import Budget
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import Row, Tx

TERMINAL = ("completed", "failed", "cancelled", "revoked")
#: What a job whose server stopped while it ran says (its charge is never refunded).
STOPPED = "the server stopped during training; the charge stands"


@dataclass(frozen=True)
class StoredJob:
    summary: JobSummary
    charged: Budget
    server_id: str
    heartbeat_at_ms: int

    @property
    def id(self) -> str:
        return self.summary.job_id

    @property
    def open(self) -> bool:
        return self.summary.state not in TERMINAL


@dataclass(frozen=True)
class FinalModel:
    """A completed job's model and what its result reports."""

    params: tuple[np.ndarray, ...]
    metrics: tuple[tuple[str, float], ...]
    epsilon: float | None
    rounds_trained: int


def _settings_json(s: TrainingSettings) -> str:
    return json.dumps(dataclasses.asdict(s), sort_keys=True)


def _settings(text: str) -> TrainingSettings:
    """Settings as stored; a field this release does not know (or no longer has) is left out."""
    known = {f.name for f in dataclasses.fields(TrainingSettings)}
    return TrainingSettings(**{k: v for k, v in json.loads(text).items() if k in known})


def event_json(e: TrainingEvent) -> str:
    return json.dumps(dataclasses.asdict(e), sort_keys=True)


def event_from_json(text: str) -> TrainingEvent:
    d: dict[str, Any] = json.loads(text)
    return TrainingEvent(**{**d, "participants": tuple(d["participants"]), "dropped": tuple(d["dropped"])})


def _stored(row: Row) -> StoredJob:
    (job_id, owner, grant_id, plan_hash, dataset, settings, state, rnd, rounds, eps, charged_eps, charged_delta,
     started, heartbeat, server_id, message) = row
    summary = JobSummary(job_id, grant_id, plan_hash, state, int(rnd), int(rounds), float(eps), int(started),
                         _settings(settings), owner_id=owner, dataset=dataset, message=message)
    return StoredJob(summary, Budget(int(charged_eps), int(charged_delta)), server_id, int(heartbeat))


def insert(tx: Tx, *, job_id: str, owner_id: str, grant_id: str, plan_hash: str, dataset: str,
           settings: TrainingSettings, plan: fl_server.TrainingPlan, charged: Budget, started_at_ms: int,
           server_id: str) -> None:
    tx.training_job_insert(job_id, owner_id, grant_id, plan_hash, dataset, _settings_json(settings),
                           plan.canonical().decode(), plan.rounds, charged.epsilon_nano, charged.delta_atto,
                           started_at_ms, server_id)


def publish(tx: Tx, event: TrainingEvent, *, now_ms: int, model: FinalModel | None = None) -> bool:
    """Record ``event`` (its state becomes the job's) and, for a completed job, its model; False if the job had
    already ended (then nothing is written)."""
    result = None if model is None else json.dumps({
        "params": [{"shape": list(p.shape), "values": np.asarray(p, dtype=np.float64).ravel().tolist()}
                   for p in model.params],
        "metrics": [list(m) for m in model.metrics], "epsilon": model.epsilon,
        "rounds_trained": model.rounds_trained})
    if not tx.training_job_update(event.job_id, state=event.state, round=event.round, rounds=event.rounds,
                                  epsilon_spent=event.epsilon_spent, message=event.message, heartbeat_at_ms=now_ms,
                                  result=result):
        return False
    tx.training_event_append(event.job_id, event_json(event))
    return True


def get(tx: Tx, job_id: str) -> StoredJob | None:
    row = tx.training_job_get(job_id)
    return _stored(row) if row is not None else None


def listed(tx: Tx, limit: int, owner_id: str | None = None) -> tuple[list[StoredJob], bool]:
    """Up to ``limit`` jobs, newest first, and whether there were more."""
    rows = tx.training_job_list(limit + 1, owner_id)
    return [_stored(r) for r in rows[:limit]], len(rows) > limit


def events(tx: Tx, job_id: str) -> list[TrainingEvent]:
    return [event_from_json(e) for e in tx.training_events(job_id)]


def plan_and_model(tx: Tx, job_id: str) -> tuple[fl_server.TrainingPlan, FinalModel | None]:
    """The job's engine plan and, once completed, its model."""
    found = tx.training_job_plan(job_id)
    if found is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such training job")
    try:
        plan = fl_server.TrainingPlan.from_dict(json.loads(found[0]))
    except (ValueError, fl_server.PlanError) as exc:  # written by a release whose plans this one cannot read
        raise SandboxError(ErrorCode.INTERNAL, log_detail=f"job {job_id}: stored plan unreadable") from exc
    if found[1] is None:
        return plan, None
    doc = json.loads(found[1])
    params = tuple(np.asarray(p["values"], dtype=np.float64).reshape(tuple(p["shape"])) for p in doc["params"])
    return plan, FinalModel(params, tuple((str(k), float(v)) for k, v in doc["metrics"]), doc["epsilon"],
                            int(doc["rounds_trained"]))


def end_event(job_id: str, last: TrainingEvent | None, rounds: int, state: str, message: str) -> TrainingEvent:
    """A job's last event: where its last round left it, with the last released evaluation if there was one."""
    loss = accuracy = None
    if last is not None and last.loss is not None:
        loss, accuracy = last.loss, (last.accuracy if last.accuracy is not None else 0.0)
    return TrainingEvent(job_id=job_id, round=last.round if last else 0, rounds=rounds,
                         epsilon_spent=last.epsilon_spent if last else 0.0, state=state, message=message,
                         loss=loss, accuracy=accuracy)


def abandon(tx: Tx, job_ids: Sequence[str], *, now_ms: int, message: str = STOPPED) -> list[str]:
    """Mark open jobs whose server stopped as failed, each with a last event saying so; returns those marked."""
    marked = []
    for job_id in job_ids:
        job = get(tx, job_id)
        if job is None or not job.open:
            continue
        history = events(tx, job_id)
        if publish(tx, end_event(job_id, history[-1] if history else None, job.summary.rounds, "failed", message),
                   now_ms=now_ms):
            marked.append(job_id)
    return marked
