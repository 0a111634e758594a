"""Training jobs outlive the server process that ran them: listed and returned after a restart, a job cut off by
a stop marked failed, and a job running in another server refused with FAILED_PRECONDITION (not NOT_FOUND)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from clients import FailedPrecondition, PermissionDenied, ResearcherClient
from sandbox.config import load_config
from sandbox.fl_records import STOPPED
from sandbox.server import start_server
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox

pytestmark = pytest.mark.slow

FEATURES = ["xage", "female", "educdec", "lfam", "coins", "linc"]
LABEL, THRESHOLD = "meddol", 100.0
LONG = dict(rounds=200, clipping_norm=1.0, noise_multiplier=5.0, delta=1e-6)  # stopped long before its end


def _grant(admin, lab, plan: str) -> str:  # type: ignore[no-untyped-def]
    s = lab.apply(title="Spending model", purpose="Predict above-threshold spending", legal_basis="Research exemption",
                  kind="FL_TRAINING", datasets={"rand_hie": [*FEATURES, LABEL]}, model_hash=plan, epsilon=100,
                  delta="1e-5", quota=10)
    g = admin.approve(s.id).grant
    assert g is not None
    return str(g.id)


def _until_round(lab, job: str) -> None:  # type: ignore[no-untyped-def]
    for e in lab.watch_training(job):
        if e.state == "running":
            return
    raise AssertionError("the job ended before its first round")


def test_jobs_survive_a_restart_and_a_job_cut_off_by_the_stop_is_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
    try:
        plan = lab.register_plan(dataset="rand_hie", features=FEATURES, label=LABEL, label_threshold=THRESHOLD)  # type: ignore[attr-defined]
        g = _grant(admin, lab, plan)
        done = lab.start_training(g, plan, rounds=2, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)  # type: ignore[attr-defined]
        history = list(lab.watch_training(done))  # type: ignore[attr-defined]
        before = lab.training_result(done)  # type: ignore[attr-defined]
        cut = lab.start_training(g, plan, **LONG)  # type: ignore[attr-defined]
        _until_round(lab, cut)
        revoked_g = _grant(admin, lab, plan)
        withheld = lab.start_training(revoked_g, plan, rounds=1, clipping_norm=1.0, noise_multiplier=1.0, delta=1e-6)  # type: ignore[attr-defined]
        list(lab.watch_training(withheld))  # type: ignore[attr-defined]
        lab.close()  # type: ignore[attr-defined]
        admin.close()

        sbx.restart()  # a new server process state: nothing of the old one in memory
        admin = sbx.admin()
        lab = ResearcherClient(sbx.address, key=lab.transport.key, ca=sbx.ca)  # type: ignore[attr-defined]
        admin.revoke(revoked_g, "consent withdrawn")
        listed = {j.job_id: j for j in lab.training_jobs()}
        assert set(listed) == {str(done), str(cut), str(withheld)}
        assert (listed[str(done)].state, listed[str(done)].round, listed[str(done)].rounds) == ("completed", 2, 2)
        stopped = listed[str(cut)]
        assert stopped.state == "failed" and stopped.message == STOPPED and 1 <= stopped.round < 200
        assert {j.job_id: j.owner_id for j in admin.training_jobs()}[str(cut)] == lab.principal_id

        after = lab.training_result(done)
        assert all(np.array_equal(a, b) for a, b in zip(after.weights, before.weights, strict=True))
        assert after.named == before.named and after.metrics == before.metrics
        assert after.history == before.history and list(after.history) == history
        replay = list(lab.watch_training(cut))  # the stored rounds, then how it ended
        assert replay[-1].state == "failed" and replay[-1].message == STOPPED
        assert [e.round for e in replay if e.state == "running"] == list(range(1, stopped.round + 1))
        with pytest.raises(FailedPrecondition) as exc:
            lab.training_result(cut)
        assert exc.value.code == "JOB_NOT_COMPLETE" and "failed" in exc.value.message
        assert lab.cancel_training(cut) == "failed"
        with pytest.raises(PermissionDenied):  # the revoked grant's model stays withheld after the restart
            lab.training_result(withheld)
    finally:
        lab.close()  # type: ignore[attr-defined]
        admin.close()
        sbx.stop()


def test_a_job_running_in_another_server_is_refused_as_not_yet_never_not_found(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
    other = start_server(load_config(sbx.data_dir, flags={"port": 0}, environ={}))  # a second server, same state
    there = ResearcherClient(f"127.0.0.1:{other.port}", key=lab.transport.key, ca=sbx.ca)  # type: ignore[attr-defined]
    try:
        plan = lab.register_plan(dataset="rand_hie", features=FEATURES, label=LABEL, label_threshold=THRESHOLD)  # type: ignore[attr-defined]
        job = lab.start_training(_grant(admin, lab, plan), plan, **LONG)  # type: ignore[attr-defined]
        _until_round(lab, job)
        assert {j.job_id: j.state for j in there.training_jobs()}[str(job)] == "running"  # listed everywhere
        for refused in (lambda: list(there.watch_training(job)), lambda: there.cancel_training(job)):
            with pytest.raises(FailedPrecondition) as exc:
                refused()
            assert exc.value.code == "JOB_ELSEWHERE" and "another sandbox server" in exc.value.message
        time.sleep(0.2)
        assert {j.job_id: j.state for j in there.training_jobs()}[str(job)] == "running"  # alive: never failed
        assert lab.cancel_training(job) in ("cancelling", "cancelled")
        assert list(lab.watch_training(job))[-1].state == "cancelled"
        assert [e.state for e in there.watch_training(job)][-1] == "cancelled"  # ended: replayed from the state
    finally:
        there.close()
        other.stop(grace=1)
        lab.close()  # type: ignore[attr-defined]
        admin.close()
        sbx.stop()
