"""Through the sandbox with Flower's deployment runtime: a SuperLink and one SuperNode process per RAND site.

The runtime uses the data directory's CA and server certificate (TLS) and registers each SuperNode's key.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import fl_server
from clients import ResearcherClient
from fl_server.deployment import TlsFiles
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.fl_jobs import backend_for
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox

FEATURES = ["xage", "female", "educdec", "lfam", "coins"]


def test_the_sandbox_runtime_uses_the_data_directorys_tls_files(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path / "city").config.data_dir
    backend = backend_for(load_config(data_dir, flags={"fl_backend": "deployment"}, environ={}))
    assert isinstance(backend, fl_server.DeploymentBackend)
    tls = data_dir / "tls"
    assert backend.tls == TlsFiles(tls / "ca.pem", tls / "server.pem", tls / "server.key")
    assert (tls / "server.key").stat().st_uid == os.getuid()  # the runtime's processes run as this user
    assert isinstance(backend_for(load_config(data_dir, environ={})), fl_server.InProcessBackend)


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 45 s idle (seven runtime processes); several times that on a loaded 2-core box
def test_training_over_superlink_and_supernodes(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path, fl_backend="deployment")
    try:
        admin = sbx.admin()
        admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
        lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
        plan = lab.register_plan(dataset="rand_hie", features=FEATURES, label="meddol", label_threshold=35.0)  # type: ignore[attr-defined]
        s = lab.apply(title="Spending model", purpose="Predict spending", legal_basis="Research exemption",  # type: ignore[attr-defined]
                      kind="FL_TRAINING", datasets={"rand_hie": [*FEATURES, "meddol"]}, model_hash=plan,
                      epsilon=50, delta="1e-5", quota=2)
        grant = admin.approve(s.id).grant
        assert grant is not None
        job = lab.start_training(grant.id, plan, rounds=1, learning_rate=0.5)  # type: ignore[attr-defined]
        events = list(lab.watch_training(job, timeout=800))  # type: ignore[attr-defined]
        assert events[-1].state == "completed", events[-1].message
        running = [e for e in events if e.state == "running"]
        assert [e.round for e in running] == [1]
        assert len(running[-1].participants) == 6 and not running[-1].dropped  # six SuperNodes took part
        result = lab.training_result(job)  # type: ignore[attr-defined]
        assert all(np.all(np.isfinite(w)) for w in result.weights)
        assert 0.5 < result.metrics["accuracy"] <= 1.0
        for c in (admin, lab):
            c.close()  # type: ignore[attr-defined]
    finally:
        sbx.stop()
