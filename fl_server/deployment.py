"""The deployment backend: Flower's own runtime, a SuperLink and one SuperNode per data holder, as processes.

What it starts for one run, on ``host`` (localhost by default) with free ports:

    flower-superlink --ssl-ca-certfile CA --ssl-certfile CERT --ssl-keyfile KEY --enable-supernode-auth
                     --isolation process --superexec-auth-secret-file S --host H --port P
                                      (one HTTPS port: Fleet, Control and Runtime APIs;
                                       with external nodes on 127.0.0.1, behind the fleet proxy)
    flower-superexec --runtime-api-address H:P --root-certificates CA --superexec-auth-secret-file S
                                      (takes the run's ServerApp task, starts flwr-serverapp)
    flwr supernode register NODE_i.pub sandbox          (per holder, before its node starts)
    flower-supernode --superlink H:P --root-certificates CA --auth-supernode-private-key NODE_i.key
                     --isolation process --superexec-auth-secret-file S
                     --ssl-certfile CERT --ssl-keyfile KEY --ssl-ca-certfile CA --host H --port Pi
                     --node-config "holder-id='h' data-path='.../i.npz'"
    flower-superexec --runtime-api-address H:Pi --root-certificates CA --superexec-auth-secret-file S
                                      (per holder: starts flwr-clientapp per message)
    flwr run APP sandbox --run-config run.toml --format json
                                      (submits the Flower app: a generated pyproject.toml
                                       whose components are fl_server.app.*)

What each protection does in Flower 1.42 (read in its source, not assumed):

* TLS (``--ssl-*``): the SuperLink serves HTTPS only; a plaintext client gets
  no answer. ``--ssl-ca-certfile`` is not client-certificate (mutual) TLS:
  uvicorn gets only the certificate and key. Every client here verifies the
  server against ``TlsFiles.ca`` (the flwr CLI through ``root-certificates``
  in its connection config). The same certificate serves each SuperNode's
  local Runtime API, so it must name ``host``.
* Node authentication (``--enable-supernode-auth``): the SuperLink refuses
  self-registration; a node must present the private key whose public key was
  registered through the Control API (``flwr supernode register``) and signs
  every Fleet request with it. The keys are ECDSA P-384, OpenSSH format, a
  fresh pair per holder per run in the private work directory (mode 0600). A
  node with another key or none is refused and exits. The ServerApp also
  talks only to the node ids registered here (``run.json``), so a node that
  got registered some other way gets no work.
* SuperExec secret (``--superexec-auth-secret-file``): an HMAC over the
  Runtime API's ``AcquireTask``, the call that hands out a task's token (who
  holds it acts as the ServerApp or a ClientApp). Flower honours it only with
  ``--isolation process``: a SuperLink or SuperNode in the default subprocess
  mode ignores it and starts an unauthenticated SuperExec. So this backend
  starts the SuperExecs itself, with a random 32-byte secret per run (0600).

Not covered by these flags (Flower OSS 1.42): the Control API has no account
authentication (``NoOpControlAuthnPlugin``), so a local process that reaches
the SuperLink's port (always on loopback when nodes are external, see below)
can list, stop or submit runs and register keys; and a SuperExec
passes each task's token to ``flwr-serverapp``/``flwr-clientapp`` on their
command line. Run this runtime where no untrusted local user exists (its own
host, container or user namespace).

``insecure=True`` (tests only) runs the same processes with ``--insecure``
and without node authentication (Flower allows it only over TLS).

The ServerApp (``fl_server.app.server_app``) runs the same round driver as the
in-process backend, against the SuperLink, and reports through files in a
private work directory (see that module). Each SuperNode's ClientApp reads only
the partition file its node config names. Every process started here, and
what it started, is stopped when the run ends, fails or is cancelled; the
work directory (partition copies and keys included) is removed.

Flower's update check and telemetry are switched off for these processes
(no network). Dependencies are never installed at run time.

External nodes (``node_keys_dir``): the data holders run their own SuperNodes,
on their own machines, each with its own key pair and its own raw rows (a CSV
the ClientApp prepares with the plan of each message, see
``fl_server.app.client_app``). Per run the backend starts the SuperLink on
``host``:``port`` (fixed, so the departments know it; the certificate must
name ``host``), registers ``<holder>.pub`` of each of the run's holders found
in the directory, starts no SuperNode, and pins the ServerApp to those node
ids. The ServerApp waits up to the connect timeout for them; a holder without
a key, or whose node never connects, is named as failed in every round's
report, and a run with fewer keys than ``plan.min_holders`` fails before it
starts. A node is refused until its key is registered, and Flower's SuperNode
exits on that refusal: the departments run it under a supervisor that
restarts it (systemd ``Restart=always``).

With external nodes the SuperLink itself listens on 127.0.0.1 only (a free
port, with a certificate and CA made for the run, ``loopback_tls``), and so do
its Control and Runtime APIs; the backend's ``flwr`` calls and the SuperExec
use that address. On ``host``:``port`` the backend runs, for the run's
lifetime, ``fl_server.fleet_proxy.FleetProxy``: it serves the configured
certificate and forwards only the Fleet API calls a SuperNode makes (POST to
``/v1/fleet/...``) to the SuperLink over TLS; everything else gets 404.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import fl_server
from fl_server.app.server_app import PROGRESS_FILE, RESULT_FILE, RUN_FILE, STOP_FILE
from fl_server.data import Partition, save_partition
from fl_server.errors import PlanError, TrainingCancelled, TrainingError
from fl_server.fleet_proxy import FleetProxy
from fl_server.plan import TrainingPlan
from fl_server.report import RoundReport, TrainingResult
from fl_server.rounds import OnRound, ShouldStop, Timing
from fl_server.secagg import DEFAULT_MAX_WEIGHT, largest
from fl_server.runtime import (
    TlsFiles, _accepts, _EventReader, _port_free, _private_file, _Processes, certificate_names, free_port, loopback_tls,
    node_key_pair,
)

__all__ = ["DeploymentBackend", "TlsFiles"]

log = logging.getLogger(__name__)

_HOLDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_CONNECTION = "sandbox"
_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "sandbox-fl"
version = "1.0.0"
description = "Federated training in the data sandbox (fl_server)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "dataspace-sandbox"

[tool.flwr.app.components]
serverapp = "fl_server.app.server_app:app"
clientapp = "fl_server.app.client_app:app"

[tool.flwr.app.config]
work-dir = ""
"""


class DeploymentBackend:
    """Trains with Flower's deployment runtime on this machine: one SuperNode process per holder, over TLS."""

    def __init__(self, *, tls: TlsFiles | None = None, insecure: bool = False, host: str = "127.0.0.1",
                 timing: Timing = Timing(round_timeout=120.0, connect_timeout=180.0, poll_interval=0.2),
                 startup_timeout: float = 180.0, stop_grace: float = 5.0, log_dir: Path | None = None,
                 node_keys_dir: Path | None = None, port: int = 0) -> None:
        """``tls`` is required; ``insecure=True`` instead runs plain HTTP without node authentication (tests only).

        ``log_dir``: where the runtime processes' logs go and stay (default: the work directory, removed).

        ``node_keys_dir`` switches to external nodes: the data holders run their own SuperNodes (on their own
        machines, from their own rows). The directory holds ``<holder>.pub``, each holder's OpenSSH ECDSA public
        key; for each run the backend registers the keys of that run's holders at the run's SuperLink, starts no
        SuperNode, and the ServerApp sends work only to those nodes. The nodes connect to ``host``:``port`` (a
        fixed port the departments are told; the TLS certificate must name ``host``), where a proxy passes only the
        Fleet API to the SuperLink, which listens on 127.0.0.1 (``fl_server.fleet_proxy``). One run at a time.
        """
        if tls is None and not insecure:
            raise ValueError("the deployment runtime needs TLS files (tls=TlsFiles(ca, cert, key)); "
                             "insecure=True is for tests only")
        if tls is not None and insecure:
            raise ValueError("give TLS files or insecure=True, not both")
        self.tls = tls.checked() if tls is not None else None
        self.host, self.timing, self.log_dir = host, timing, log_dir
        self.startup_timeout, self.stop_grace = startup_timeout, stop_grace
        self.port = port
        self.node_keys_dir = Path(node_keys_dir).expanduser().resolve() if node_keys_dir is not None else None
        if self.node_keys_dir is not None:
            if self.tls is None:
                raise ValueError("external nodes need TLS and node authentication (not insecure=True)")
            if not 0 < port <= 65535:
                raise ValueError("external nodes need a fixed SuperLink port (1 to 65535)")
            if not certificate_names(self.tls.cert, host):
                raise ValueError(f"the TLS certificate {self.tls.cert} does not name the SuperLink host {host}")
        self._external_lock = threading.Lock()
        self._weight_cap = DEFAULT_MAX_WEIGHT  # the run's (set by ``run``)
        #: Seconds from start until the ServerApp ran, of the last run (for benchmarks).
        self.last_startup_seconds: float | None = None
        #: host:port the nodes connect to while a run is in progress, else None (for tests and monitoring): the
        #: SuperLink's, or with external nodes the fleet proxy's.
        self.address: str | None = None
        #: host:port of the SuperLink itself while a run is in progress (with external nodes: on 127.0.0.1).
        self.superlink_address: str | None = None
        self._proxy: FleetProxy | None = None
        #: holder -> registered node id of the run in progress (set once the nodes are registered), else None.
        self.registered: dict[str, int] | None = None

    @property
    def external(self) -> bool:
        """True if the data holders run their own SuperNodes (``node_keys_dir``): ``run`` needs no partitions."""
        return self.node_keys_dir is not None

    def node_keys(self, holders: list[str]) -> dict[str, Path]:
        """The public keys in ``node_keys_dir`` of these holders (holder -> key file), each checked.

        The directory decides who may join, so it must be this user's (or root's) and writable by no one else.
        """
        assert self.node_keys_dir is not None
        d = self.node_keys_dir
        try:
            st = d.stat()
        except OSError:
            raise TrainingError("the node key directory is missing") from None
        if not d.is_dir() or st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
            raise TrainingError("the node key directory must be a directory of this user, writable by no one else")
        keys = {}
        for holder in holders:
            path = d / f"{holder}.pub"
            if not path.is_file():
                continue
            fst = path.stat()
            if fst.st_uid not in (os.getuid(), 0) or fst.st_mode & 0o022:
                raise TrainingError(f"the node key of {holder} must be writable by this user only")
            try:
                key = serialization.load_ssh_public_key(path.read_bytes())
            except (ValueError, UnsupportedAlgorithm):
                raise TrainingError(f"the node key of {holder} is not an OpenSSH public key") from None
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise TrainingError(f"the node key of {holder} is not an ECDSA key")
            keys[holder] = path
        return keys

    def run(self, plan: TrainingPlan, partitions: Mapping[str, Partition | str | os.PathLike[str] | None], *,
            on_round: OnRound, should_stop: ShouldStop, person_key: str = "") -> TrainingResult:
        """Train ``plan``; ``partitions`` maps holder id to its rows, or to an .npz file ``save_partition`` wrote
        (with external nodes only its keys count: each holder's node prepares its own rows).

        ``person_key``: the dataset's person key column, sent to the nodes with the plan (a node that prepares
        its own rows keeps each person's rows on one side of the held-out split).
        """
        plan.validate()
        holders = list(partitions)
        self._weight_cap = largest(partitions.values()) if plan.secure_aggregation else DEFAULT_MAX_WEIGHT
        if not all(isinstance(h, str) and _HOLDER_RE.match(h) for h in holders):
            raise TypeError("holder ids are 1 to 64 letters, digits, '.', '_' or '-'")
        if not self.external:
            return self._run_guarded(plan, partitions, holders, on_round, should_stop, person_key, {})
        keys = self.node_keys(holders)
        if len(keys) < plan.min_holders:
            raise TrainingError(f"only {len(keys)} of the {len(holders)} data holders have a node key; "
                                f"the plan needs {plan.min_holders}"
                                + (" (secure aggregation needs 3 a round; without it, 2 suffice)"
                                   if plan.secure_aggregation and len(keys) >= 2 else ""))
        for holder in holders:
            if holder not in keys:
                log.warning("data holder %s has no node key: it is reported as dropped", holder)
        if not self._external_lock.acquire(blocking=False):
            raise TrainingError("another training job is using the SuperLink for external nodes; try again later")
        try:
            if not _port_free(self.host, self.port):
                raise TrainingError(f"the SuperLink port {self.host}:{self.port} is in use")
            return self._run_guarded(plan, partitions, holders, on_round, should_stop, person_key, keys)
        finally:
            self._external_lock.release()

    def _run_guarded(self, plan: TrainingPlan, partitions: Mapping[str, Partition | str | os.PathLike[str] | None],
                     holders: list[str], on_round: OnRound, should_stop: ShouldStop, person_key: str,
                     keys: dict[str, Path]) -> TrainingResult:
        work = Path(tempfile.mkdtemp(prefix="fl-run-"))
        procs: _Processes | None = None
        self._proxy = None
        try:
            env = self._environment(work)
            logs = self.log_dir or work / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            procs = _Processes(env, logs)
            paths = self._write_inputs(work, plan, {} if self.external else partitions)
            return self._run(plan, holders, paths, work, procs, on_round, should_stop, person_key, keys)
        finally:
            self.address, self.superlink_address, self.registered = None, None, None
            if self._proxy is not None:
                self._proxy.stop()
                self._proxy = None
            if procs is not None:
                procs.stop(self.stop_grace)
            shutil.rmtree(work, ignore_errors=True)

    def _environment(self, work: Path) -> dict[str, str]:
        home = work / "flwr-home"
        home.mkdir()
        env = dict(os.environ)
        root = str(Path(fl_server.__file__).resolve().parent.parent)
        env.update({
            "FLWR_HOME": str(home),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # SuperExec polls for work every second by default; a round has several hops through it.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        })
        return env

    def _write_inputs(self, work: Path, plan: TrainingPlan,
                      partitions: Mapping[str, Partition | str | os.PathLike[str] | None]) -> dict[str, Path]:
        (work / "holders").mkdir(mode=0o700)
        (work / "keys").mkdir(mode=0o700)
        paths = {}
        for i, (holder, part) in enumerate(partitions.items()):
            path = work / "holders" / f"{i}.npz"
            if isinstance(part, Partition):
                save_partition(path, part)
            elif part is None:
                raise ValueError(f"holder {holder}: no partition")
            else:
                source = Path(part).resolve()
                if not source.is_file():
                    raise ValueError(f"holder {holder}: no partition file")
                path.symlink_to(source)
            paths[holder] = path
        (work / "app").mkdir()
        (work / "app" / "pyproject.toml").write_text(_PYPROJECT, encoding="utf-8")
        (work / "run.toml").write_text(f"work-dir = {json.dumps(str(work))}\n", encoding="utf-8")
        return paths

    def _write_run_file(self, work: Path, plan: TrainingPlan, holders: list[str], nodes: dict[str, int],
                        person_key: str) -> None:
        timing = {"round_timeout": self.timing.round_timeout, "connect_timeout": self.timing.connect_timeout,
                  "poll_interval": self.timing.poll_interval}
        spec: dict[str, Any] = {"plan": plan.to_dict(), "holders": holders, "timing": timing,
                                "max_weight": self._weight_cap}
        if person_key:
            spec["person_key"] = person_key
        if nodes:
            spec["nodes"] = nodes
        (work / RUN_FILE).write_text(json.dumps(spec), encoding="utf-8")

    @staticmethod
    def _client_tls(tls: TlsFiles | None) -> list[str]:
        """How a runtime client (SuperNode, SuperExec) checks the server it connects to."""
        return ["--insecure"] if tls is None else ["--root-certificates", str(tls.ca)]

    @staticmethod
    def _server_tls(tls: TlsFiles | None) -> list[str]:
        if tls is None:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]

    def _wait_for_port(self, proc: subprocess.Popen[bytes], host: str, port: int, deadline: float) -> None:
        while not _accepts(host, port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TrainingError("the federated runtime did not start")
            time.sleep(0.05)

    def _run(self, plan: TrainingPlan, holders: list[str], paths: dict[str, Path], work: Path, procs: _Processes,
             on_round: OnRound, should_stop: ShouldStop, person_key: str, keys: dict[str, Path]) -> TrainingResult:
        started = time.monotonic()
        bin_dir = Path(sys.executable).parent
        # External nodes reach the SuperLink only through the fleet proxy on host:port; the SuperLink itself (all
        # of its APIs) listens on loopback, with a certificate of its own.
        link_host = "127.0.0.1" if self.external else self.host
        tls = loopback_tls(work / "keys") if self.external else self.tls
        port = free_port(link_host) if self.external or not self.port else self.port
        address = f"{link_host}:{port}"
        trust = "insecure = true" if tls is None else f"root-certificates = {json.dumps(str(tls.ca))}"
        (work / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n'
            f'address = "{address}"\n{trust}\n', encoding="utf-8")
        # Flower checks the SuperExec secret only when it does not start the SuperExec itself (process isolation).
        secret = str(_private_file(work / "keys" / "superexec.secret", secrets.token_bytes(32)))
        isolation = ["--isolation", "process", "--superexec-auth-secret-file", secret]
        link = procs.start("superlink", [
            str(bin_dir / "flower-superlink"), *self._server_tls(tls),
            *(["--enable-supernode-auth"] if tls is not None else []), *isolation,
            "--host", link_host, "--port", str(port), "--disable-runtime-dependency-installation"])
        deadline = time.monotonic() + self.startup_timeout
        self._wait_for_port(link, link_host, port, deadline)
        self.superlink_address = address
        executor = [str(bin_dir / "flower-superexec"), *self._client_tls(tls), "--superexec-auth-secret-file", secret]
        procs.start("superexec", [*executor, "--runtime-api-address", address, "--parent-pid", str(link.pid)])
        if self.external:
            nodes = self._register_keys(bin_dir, list(keys.items()), procs.env)
            self.registered = dict(nodes)
            assert self.tls is not None and tls is not None
            try:
                self._proxy = FleetProxy((self.host, self.port), self.tls.cert, self.tls.key, (link_host, port),
                                         tls.ca, link_host, timeout=max(60.0, self.timing.round_timeout)).start()
            except OSError as exc:
                raise TrainingError(f"the SuperLink port {self.host}:{self.port} is in use") from exc
            self.address = f"{self.host}:{self.port}"
            self._write_run_file(work, plan, holders, nodes, person_key)
            self._submit(bin_dir, work, procs.env)
            return self._follow(plan, work, link, started, on_round, should_stop)
        self.address = address
        nodes = self._register_nodes(bin_dir, work, holders, procs.env) if self.tls is not None else {}
        self.registered = dict(nodes)
        started_nodes = []
        for i, holder in enumerate(holders):
            node_port = free_port(self.host)
            auth = [] if self.tls is None else ["--auth-supernode-private-key", str(work / "keys" / f"node-{i}.key")]
            runtime_tls = [] if self.tls is None else self._server_tls(self.tls)  # the node's own Runtime API
            node = procs.start(f"supernode-{i}", [
                str(bin_dir / "flower-supernode"), *self._client_tls(self.tls), *auth, "--superlink", address, *isolation,
                *runtime_tls, "--host", self.host, "--port", str(node_port),
                "--node-config", f"holder-id='{holder}' data-path='{paths[holder]}'"])
            started_nodes.append((i, node, node_port))
        # A SuperExec retries with growing back-off, so each starts once its node's Runtime API is up.
        for i, node, node_port in started_nodes:
            self._wait_for_port(node, self.host, node_port, deadline)
            procs.start(f"superexec-{i}", [*executor, "--runtime-api-address", f"{self.host}:{node_port}",
                                           "--parent-pid", str(node.pid)])
        self._write_run_file(work, plan, holders, nodes, person_key)
        self._submit(bin_dir, work, procs.env)
        return self._follow(plan, work, link, started, on_round, should_stop)

    def _register_nodes(self, bin_dir: Path, work: Path, holders: list[str], env: dict[str, str]) -> dict[str, int]:
        """A fresh key pair per holder, each public key registered at the SuperLink: holder -> its node id."""
        return self._register_keys(bin_dir, [(holder, node_key_pair(work / "keys", f"node-{i}")[1])
                                             for i, holder in enumerate(holders)], env)

    def _register_keys(self, bin_dir: Path, keys: list[tuple[str, Path]], env: dict[str, str]) -> dict[str, int]:
        """Each holder's public key registered at the SuperLink (``flwr supernode register``): holder -> node id."""
        pending = []
        for holder, public in keys:
            pending.append((holder, subprocess.Popen(
                [str(bin_dir / "flwr"), "supernode", "register", str(public), _CONNECTION, "--format", "json"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)))
        nodes = {}
        for holder, proc in pending:
            try:
                out, err = proc.communicate(timeout=self.startup_timeout)
                reply = json.loads(out.decode() or "{}")
                if proc.returncode == 0 and reply.get("success"):
                    nodes[holder] = int(reply["node-id"])
                else:
                    log.warning("flwr supernode register failed: %s", (out + err).decode(errors="replace")[-2000:])
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("flwr supernode register gave no node id")
        if len(nodes) < len(keys):
            raise TrainingError("the federated runtime did not register the data holders' nodes")
        return nodes

    def _submit(self, bin_dir: Path, work: Path, env: dict[str, str]) -> None:
        try:
            done = subprocess.run([str(bin_dir / "flwr"), "run", str(work / "app"), _CONNECTION,
                                   "--run-config", str(work / "run.toml"), "--format", "json"],
                                  env=env, capture_output=True, timeout=self.startup_timeout, check=False)
            reply = json.loads(done.stdout.decode() or "{}")
        except (subprocess.TimeoutExpired, ValueError) as exc:
            raise TrainingError("the federated runtime did not accept the run") from exc
        if done.returncode != 0 or not reply.get("success"):
            log.warning("flwr run failed: %s", done.stderr.decode(errors="replace")[-2000:])
            raise TrainingError("the federated runtime did not accept the run")
        log.info("federated run %s submitted", reply.get("run-id"))

    def _follow(self, plan: TrainingPlan, work: Path, link: subprocess.Popen[bytes], started: float,
                on_round: OnRound, should_stop: ShouldStop) -> TrainingResult:
        """Relay the ServerApp's events until it is done; ask it to stop (between rounds) when told to."""
        events = _EventReader(work / PROGRESS_FILE)
        t = self.timing
        start_by = time.monotonic() + self.startup_timeout
        roll_calls = 3 * t.round_timeout  # a silent node is asked up to three times
        finish_by = start_by + t.connect_timeout + roll_calls + plan.rounds * 2 * (t.round_timeout + 10.0) + 30.0
        history: list[RoundReport] = []
        running = False
        while True:
            for event in events.read():
                kind = event.get("event")
                if kind == "started":
                    running = True
                    self.last_startup_seconds = time.monotonic() - started
                elif kind == "round":
                    report = RoundReport.from_dict(event["report"])
                    history.append(report)
                    on_round(report)
                elif kind == "done":
                    with np.load(work / RESULT_FILE, allow_pickle=False) as z:
                        params = tuple(np.asarray(z[f"arr_{i}"]) for i in range(len(z.files)))
                    return TrainingResult(params=params, history=tuple(history), dropped=tuple(event["dropped"]),
                                          epsilon=event["epsilon"], delta=event["delta"],
                                          plan_digest=event["plan_digest"])
                elif kind == "cancelled":
                    raise TrainingCancelled(event["message"], rounds_completed=event["rounds_completed"],
                                            epsilon_spent=event["epsilon_spent"])
                elif kind == "error":
                    raise (PlanError if event.get("kind") == "PlanError" else TrainingError)(event["message"])
            if should_stop() and not (work / STOP_FILE).exists():
                (work / STOP_FILE).touch()
            now = time.monotonic()
            if link.poll() is not None:
                raise TrainingError("the federated runtime stopped during training")
            if (not running and now > start_by) or now > finish_by:
                raise TrainingError("the federated training did not finish in time")
            time.sleep(0.05)
