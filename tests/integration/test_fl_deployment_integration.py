"""Through the sandbox with Flower's deployment runtime: a SuperLink and one SuperNode process per RAND site,
or (fl_nodes = "external") the departments' own SuperNodes, which this test starts as a department would.

The runtime uses the data directory's CA and server certificate (TLS) and registers each SuperNode's key.
"""

from __future__ import annotations

import csv
import gzip
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fl_server
from clients import ResearcherClient
from fl_server.rounds import OnRound
from fl_server.runtime import TlsFiles, _Processes, free_port, node_key_pair
from sandbox.config import load_config
from sandbox.datadir import init_data_dir
from sandbox.fl_jobs import backend_for
from tests.conftest import DATA, SCHEMAS, enrol_client, start_sandbox
from tests.integration.test_fl_server_deployment import try_to_intrude


def https_call(address: str, ca: Path, method: str, path: str, body: bytes = b"") -> int:
    """The status of one HTTPS request to ``address`` (checked against ``ca``)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=60, context=ssl.create_default_context(cafile=ca))
    try:
        conn.request(method, path, body=body if method == "POST" else None,
                     headers={"Content-Type": "application/protobuf"})
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def control_through(address: str, ca: Path, work: Path) -> dict[str, object]:
    """Flower's Control API (and the Runtime API) asked through the public address: raw calls and ``flwr ls``."""
    work.mkdir()
    (work / "config.toml").write_text(f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "{address}"\n'
                                      f'root-certificates = "{ca}"\n')
    env = {**os.environ, "FLWR_HOME": str(work), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    ls = subprocess.run([str(Path(sys.executable).parent / "flwr"), "ls", "x", "--format", "json"], env=env,
                        capture_output=True, timeout=300, check=False)
    return {"flwr ls": (ls.returncode, (ls.stdout + ls.stderr).decode(errors="replace")),
            **{f"{m} {path}": https_call(address, ca, m, path) for m, path in (
                ("POST", "/v1/control/list-runs"), ("POST", "/v1/control/start-run"),
                ("POST", "/v1/control/register-node"), ("POST", "/v1/runtime/pull-messages"),
                ("GET", "/health"))}}


FEATURES = ["xage", "female", "educdec", "lfam", "coins"]


def granted_lab(sbx):  # type: ignore[no-untyped-def]
    """RAND HIE imported, a researcher with a registered plan on it, and an approved FL grant: (admin, lab, plan
    hash, grant id)."""
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    lab = enrol_client(admin, sbx, ResearcherClient, "Lab", ["researcher"])
    plan = lab.register_plan(dataset="rand_hie", features=FEATURES, label="meddol", label_threshold=35.0)  # type: ignore[attr-defined]
    s = lab.apply(title="Spending model", purpose="Predict spending", legal_basis="Research exemption",  # type: ignore[attr-defined]
                  kind="FL_TRAINING", datasets={"rand_hie": [*FEATURES, "meddol"]}, model_hash=plan,
                  epsilon=50, delta="1e-5", quota=2)
    grant = admin.approve(s.id).grant
    assert grant is not None
    return admin, lab, plan, grant.id


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
        admin, lab, plan, grant_id = granted_lab(sbx)
        job = lab.start_training(grant_id, plan, rounds=1, learning_rate=0.5)  # type: ignore[attr-defined]
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


class Department:
    """A data holder's own SuperNode, as a department runs it on its machine: its key, its CSV rows, and a
    supervisor that restarts the node when it exits (it is refused until the job's SuperLink has its key)."""

    def __init__(self, work: Path, holder: str, superlink: str, ca: Path, key: Path, rows: Path) -> None:
        self.holder, self.stopped, self.lock, self.starts = holder, False, threading.Lock(), 0
        home = work / holder
        (home / "flwr-home").mkdir(parents=True)
        bin_dir = Path(sys.executable).parent  # the department's environment, with this project installed
        env = {**os.environ, "FLWR_HOME": str(home / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
               "FLWR_DISABLE_UPDATE_CHECK": "1", "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])}
        self.procs = _Processes(env, home)
        self.log = home / "supernode.log"
        self.argv = [str(bin_dir / "flower-supernode"), "--superlink", superlink, "--root-certificates", str(ca),
                     "--auth-supernode-private-key", str(key), "--port", str(free_port("127.0.0.1")),
                     "--node-config", f"holder-id='{holder}' data-path='{rows}' cache-dir='{home / 'cache'}'"]
        self.thread = threading.Thread(target=self._supervise, daemon=True)
        self.thread.start()

    def _supervise(self) -> None:
        while True:
            with self.lock:
                if self.stopped:
                    return
                proc = self.procs.start("supernode", self.argv)
                self.starts += 1
            proc.wait()
            time.sleep(1.0)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
        self.procs.stop(grace=5.0)
        self.thread.join(timeout=60)


class RoundHold:
    """Holds a deployment run inside its report of round ``at_round`` until the test releases it.

    The backend calls ``on_round`` from the loop that follows the run, before the run's SuperLink and fleet proxy are
    stopped, so while the hold lasts they are up however fast the rounds go: what the test does meanwhile happens
    during the job. The report is published first, so a watcher sees the round. (The server runs in this process.)
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at_round: int) -> None:
        self.round, self.released = at_round, threading.Event()
        #: The nodes' address (the fleet proxy's) while the run was held, or None if it never was.
        self.address: str | None = None
        run = fl_server.DeploymentBackend.run
        hold = self

        def held_run(backend: fl_server.DeploymentBackend, plan: fl_server.TrainingPlan, partitions: Any, *,
                     on_round: OnRound, **kw: Any) -> fl_server.TrainingResult:
            def on_round_held(report: fl_server.RoundReport) -> None:
                on_round(report)
                if report.round == hold.round:
                    hold.address = backend.address
                    hold.released.wait()

            return run(backend, plan, partitions, on_round=on_round_held, **kw)

        monkeypatch.setattr(fl_server.DeploymentBackend, "run", held_run)

    def release(self) -> None:
        self.released.set()


def site_rows(path: Path, site: str) -> Path:
    """One RAND site's raw rows with the dataset's header: what that department holds."""
    with gzip.open(DATA / "rand_hie.csv.gz", "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [r for r in reader if r[header.index("site")] == site]
    with path.open("w", newline="") as out:
        csv.writer(out).writerows([header, *rows])
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)  # the SuperLink, two department SuperNodes (each with its own ClientApp processes)
def test_training_with_the_departments_own_supernodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fl_nodes = "external": the sandbox registers the keys in fl_node_keys_dir (site-1 and site-2 of RAND's six
    sites) and starts no SuperNode; the departments' nodes train on their own CSV rows; the four sites without
    a key are reported as dropped in every round; a node with an unregistered key is refused."""
    departments_dir, keys = tmp_path / "departments", tmp_path / "node-keys"
    departments_dir.mkdir()
    keys.mkdir(mode=0o700)
    private = {}
    for site in ("1", "2"):  # each department makes its key pair and sends the administrator the .pub
        private[site], public = node_key_pair(departments_dir, f"site-{site}")
        shutil.copy(public, keys / f"site-{site}.pub")
    port = free_port("127.0.0.1")
    hold = RoundHold(monkeypatch, at_round=1)  # the job stays up until the intruders have tried (rounds can be quick)
    sbx = start_sandbox(tmp_path, fl_backend="deployment", fl_nodes="external", fl_superlink_host="127.0.0.1",
                        fl_superlink_port=port, fl_node_keys_dir=str(keys))
    departments: list[Department] = []
    rogue: dict[str, object] = {}
    control: dict[str, object] = {}
    try:
        admin, lab, plan, grant_id = granted_lab(sbx)
        # The departments' nodes run before the job does: they retry until its SuperLink is up and knows them.
        departments = [Department(departments_dir, f"site-{site}", f"127.0.0.1:{port}", sbx.ca, private[site],
                                  site_rows(departments_dir / f"site-{site}.csv", site)) for site in ("1", "2")]
        # only two departments run nodes, and secure aggregation (the default for six holders) needs three a round
        job = lab.start_training(grant_id, plan, rounds=2, learning_rate=0.5,  # type: ignore[attr-defined]
                                 secure_aggregation="off")
        events = []
        for event in lab.watch_training(job, timeout=800):  # type: ignore[attr-defined]
            events.append(event)
            if event.state == "running" and event.round == 1:  # the job is held in round 1: an intruder tries
                (tmp_path / "rogue").mkdir()
                rogue.update(try_to_intrude(f"127.0.0.1:{port}", TlsFiles(sbx.ca, sbx.data_dir / "tls" / "server.pem",
                                                                          sbx.data_dir / "tls" / "server.key"),
                                            tmp_path / "rogue"))
                control.update(control_through(f"127.0.0.1:{port}", sbx.ca, tmp_path / "control"))
                hold.release()
        assert events[-1].state == "completed", (events[-1].message, [d.log.read_text()[-3000:] for d in departments])
        assert hold.address == f"127.0.0.1:{port}"  # the intruders tried while the job's proxy was up
        running = [e for e in events if e.state == "running"]
        assert [e.round for e in running] == [1, 2]
        for e in running:  # only the departments' nodes trained; the sites without a key are named every round
            assert sorted(e.participants) == ["site-1", "site-2"]
            assert sorted(e.dropped) == ["site-3", "site-4", "site-5", "site-6"]
        result = lab.training_result(job)  # type: ignore[attr-defined]
        assert all(np.all(np.isfinite(w)) for w in result.weights)
        assert 0.5 < result.metrics["accuracy"] <= 1.0
        # each department prepared its partition from its CSV rows, once for the plan (cached per plan digest)
        for d in departments:
            assert len(list((departments_dir / d.holder / "cache").glob("*.npz"))) == 1
        # intruders (a key nobody registered, no key, plaintext) were refused at the door and got no node id
        for name, (code, text) in rogue.items():  # type: ignore[misc]
            assert code == 1 and "SuperNode ID" not in text, (name, text[-2000:])
        assert "Failed to activate SuperNode" in rogue["unregistered key"][1]  # type: ignore[index]
        # the public port passes only the Fleet API: Control and Runtime calls get 404 from the proxy
        _, text = control.pop("flwr ls")  # type: ignore[misc]
        assert '"success": false' in text and "404 Not Found" in text, text[-2000:]
        assert control == {k: 404 for k in control} and len(control) == 5, control
        for c in (admin, lab):
            c.close()  # type: ignore[attr-defined]
    finally:
        hold.release()  # a failed check must not leave the job's runtime held
        for d in departments:
            d.stop()
        sbx.stop()
