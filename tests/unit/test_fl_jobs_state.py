"""Training jobs in the state, without a network: a job whose server went silent is marked failed by the next
server that starts or reads it; a live job of another server is refused as FAILED_PRECONDITION; naming weights."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import fl_server
from sandbox import fl_named, fl_records
from sandbox.calls import Call
from sandbox.columns import ArrayCache
from sandbox.domain import Budget, Principal, PrincipalStatus, Role, TrainingSettings
from sandbox.errors import CATALOGUE, ErrorCode, SandboxError
from sandbox.fl_jobs import Job, JobManager
from sandbox.state import State, open_state

PLAN = fl_server.TrainingPlan(features=(fl_server.Feature("age", 18.0, 90.0),), label=fl_server.Label("y", 0.5),
                              rounds=5)
LAB = Principal("p-lab", "Lab", "Uni", frozenset({Role.RESEARCHER}), b"\x01" * 32, PrincipalStatus.ACTIVE, 0)
ADMIN = Principal("p-admin", "Bureau", "City", frozenset({Role.ADMIN}), b"\x02" * 32, PrincipalStatus.ACTIVE, 0)


@pytest.fixture()
def db() -> State:
    state = open_state("memory:")
    with state.write() as tx:
        tx.principal_insert("p-lab", "Lab", "Uni", "researcher", b"\x01" * 32, "active", 0, None)
        tx.scenario_insert("s-1", "p-lab", b"app", 1)
        tx.grant_insert("g-1", "s-1", b"terms", b"sig", "p-lab", 2)
    return state


def _job(db: State, job_id: str, server_id: str, at_ms: int) -> None:
    with db.write() as tx:
        fl_records.insert(tx, job_id=job_id, owner_id="p-lab", grant_id="g-1", plan_hash="h" * 64, dataset="ds",
                          settings=TrainingSettings(rounds=5), plan=PLAN, charged=Budget(10, 0),
                          started_at_ms=at_ms, server_id=server_id)
        fl_records.publish(tx, fl_records.end_event(job_id, None, 5, "running", ""), now_ms=at_ms)


def _in_call(db: State, fn, who: Principal = LAB):  # type: ignore[no-untyped-def]
    with db.write() as tx:
        return fn(Call(who, tx, int(time.time() * 1000)))


def test_a_silent_servers_job_is_failed_at_start_and_a_live_ones_is_refused_not_hidden(db: State,
                                                                                     tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    _job(db, "j-dead", "srv-gone", now - 120_000)  # silent for two minutes: its server stopped
    _job(db, "j-live", "srv-other", now)
    jobs = JobManager(db, ArrayCache(tmp_path))
    with db.read() as tx:
        dead, live = fl_records.get(tx, "j-dead"), fl_records.get(tx, "j-live")
        events = fl_records.events(tx, "j-dead")
    assert dead is not None and (dead.summary.state, dead.summary.message) == ("failed", fl_records.STOPPED)
    assert events[-1].state == "failed" and events[-1].message == fl_records.STOPPED
    assert live is not None and live.summary.state == "running"  # another server's, alive: left alone
    for refused in (lambda c: jobs.watch(c, "j-live"), lambda c: jobs.cancel(c, "j-live")):
        with pytest.raises(SandboxError) as exc:
            _in_call(db, refused)
        assert exc.value.code is ErrorCode.JOB_ELSEWHERE and CATALOGUE[exc.value.code][0] == "FAILED_PRECONDITION"
    with pytest.raises(SandboxError) as exc:  # another principal's job does not exist for it
        _in_call(db, lambda c: jobs.watch(c, "j-dead"), ADMIN)
    assert exc.value.code is ErrorCode.NOT_FOUND
    assert [e.state for e in _in_call(db, lambda c: jobs.watch(c, "j-dead"))] == ["running", "failed"]
    listed = _in_call(db, lambda c: jobs.jobs_for(c), ADMIN)
    assert [j.job_id for j in listed.jobs] == ["j-live", "j-dead"] and {j.owner_id for j in listed.jobs} == {"p-lab"}
    jobs.close()


def test_a_job_is_failed_on_reading_once_its_server_goes_silent_and_never_while_it_beats(db: State,
                                                                                         tmp_path: Path) -> None:
    jobs = JobManager(db, ArrayCache(tmp_path), heartbeat_s=0.05, stale_s=0.5)
    now = int(time.time() * 1000)
    _job(db, "j-other", "srv-other", now)
    _job(db, "j-mine", jobs.server_id, now)
    mine = Job("j-mine", "p-lab", "g-1", PLAN)
    jobs._live["j-mine"] = mine  # running in this process
    jobs._keep_beating()
    time.sleep(1.0)
    states = {j.job_id: (j.state, j.message) for j in _in_call(db, lambda c: jobs.jobs_for(c)).jobs}
    assert states == {"j-other": ("failed", fl_records.STOPPED), "j-mine": ("running", "")}
    jobs.close()  # a stopping server fails its own running jobs at once, and tells their watchers
    with db.read() as tx:
        stopped = fl_records.get(tx, "j-mine")
    assert stopped is not None and stopped.summary.message == fl_records.STOPPED and mine.cancel.is_set()
    assert mine.state == "failed" and mine.events[-1].message == fl_records.STOPPED


def test_an_ended_job_keeps_how_it_ended(db: State) -> None:
    _job(db, "j-1", "srv", 5)
    with db.write() as tx:
        assert fl_records.publish(tx, fl_records.end_event("j-1", None, 5, "cancelled", "by the researcher"), now_ms=6)
        assert not fl_records.publish(tx, fl_records.end_event("j-1", None, 5, "failed", "late"), now_ms=7)
        assert fl_records.abandon(tx, ["j-1"], now_ms=8) == []
    with db.read() as tx:
        job = fl_records.get(tx, "j-1")
        assert job is not None and job.summary.state == "cancelled" and len(fl_records.events(tx, "j-1")) == 2


def test_only_categorical_inputs_name_each_category_and_reproduce_the_logit() -> None:
    plan = fl_server.TrainingPlan(features=(fl_server.Feature("region", categories=("north", "south", "east")),
                                            fl_server.Feature("age", 18.0, 90.0)),
                                  label=fl_server.Label("y", 0.5), eval_fraction=0.0)  # every row kept
    rng = np.random.default_rng(3)
    params = [rng.normal(size=4), rng.normal(size=1)]
    named = fl_named.named_model(plan, params)
    assert named.inputs == ("region=north", "region=south", "region=east", "age") and named.raw_units
    region = np.array([0, 2, 1, 1])
    age = np.array([10.0, 30.0, 55.5, 120.0])  # outside the bounds: clipped, as in training
    x = fl_server.prepare_partition(plan, {"region": region, "age": age, "y": np.zeros(4)}).x
    coef = dict(named.coefficients)
    logits = [named.intercept + coef[f"region={('north', 'south', 'east')[r]}"] + coef["age"] * min(max(a, 18), 90)
              for r, a in zip(region, age, strict=True)]
    assert np.allclose(1 / (1 + np.exp(-np.array(logits))), fl_server.predict_proba(plan, params, x), rtol=1e-12)
    only = fl_server.TrainingPlan(features=(plan.features[0],), label=plan.label)
    assert fl_named.named_model(only, [params[0][:3], params[1]]).coefficients == tuple(
        (f"region={c}", w) for c, w in zip(("north", "south", "east"), params[0][:3].tolist(), strict=True))
