"""fl_server's deployment backend: a real SuperLink and SuperNode processes on localhost, and their clean-up.

One full run (two holders, two rounds) takes about half a minute on an idle
machine, most of it Flower's own polling (a SuperNode checks for work every
3 s) and a new ClientApp process per message. The ServerApp's side of the
file protocol (rounds, model, stop) runs here over an in-process grid, and the
backend's side against a fake event file, so neither needs another runtime.

The runtime runs over TLS with node authentication; the full run also tries,
while it trains, the attacks those stop (a SuperNode with an unregistered key
or none, a plaintext SuperNode, a plaintext HTTP request), so they cost no
run of their own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.app import Context, RecordDict
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.exit import ExitCode

from fl_server import (
    DeploymentBackend,
    InProcessBackend, Partition, RoundReport, Timing, TrainingCancelled, TrainingPlan, save_partition,
)
from fl_server.app import server_app
from fl_server.client import make_client_app
from fl_server.inprocess import LocalGrid, _ensure_task_identity
from fl_server.model import evaluate
from fl_server.runtime import (
    TlsFiles, _EventReader, _Processes, descendants, free_port, node_key_pair, same_process,
)
from tests.unit.test_fl_server import PLAN, hie, pooled, site_partitions  # noqa: F401  hie is a fixture


def live_descendants() -> list[tuple[int, str]]:
    """This test process's live descendants, except those started before the test (e.g. the resource tracker
    that multiprocessing starts once for the whole process when an earlier test used a spawn pool)."""
    return [d for d in descendants([os.getpid()]) if same_process(*d) and d not in _BEFORE]


_BEFORE: set[tuple[int, str]] = set()


@pytest.fixture(autouse=True)
def _preexisting_descendants() -> None:
    _BEFORE.clear()
    _BEFORE.update(d for d in descendants([os.getpid()]) if same_process(*d))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a server certificate it signed for localhost and 127.0.0.1 (keys 0600)."""
    tls_dir = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])

    def cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.touch(mode=0o600)
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    files = TlsFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    files.ca.write_bytes(cert(ca_name, ca_key, True).public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), server_key,
                                False).public_bytes(serialization.Encoding.PEM))
    write_key(files.key, server_key)
    return files


def try_to_intrude(address: str, tls: TlsFiles, work: Path) -> dict[str, tuple[int | None, str]]:
    """Start SuperNodes the running SuperLink must refuse, all at once; (exit code, log) of each."""
    rogue_key, _ = node_key_pair(work, "rogue")  # a well-formed key that nobody registered
    env = {**os.environ, "FLWR_HOME": str(work), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    bin_dir = Path(sys.executable).parent
    attempts = {
        "unregistered key": ["--root-certificates", str(tls.ca), "--auth-supernode-private-key", str(rogue_key)],
        "no key": ["--root-certificates", str(tls.ca)],
        "plaintext": ["--insecure"],
    }
    started = {}
    for name, flags in attempts.items():
        log_file = work / f"{name.replace(' ', '-')}.log"
        with log_file.open("wb") as out:
            started[name] = (log_file, subprocess.Popen(
                [str(bin_dir / "flower-supernode"), *flags, "--superlink", address, "--max-retries", "2",
                 "--isolation", "process", "--host", "127.0.0.1", "--port", str(free_port("127.0.0.1")),
                 "--node-config", "holder-id='1'"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env))
    outcome: dict[str, tuple[int | None, str]] = {}
    for name, (log_file, proc) in started.items():
        try:
            code: int | None = proc.wait(timeout=300)  # Python start-up on a loaded machine, then one refusal
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        outcome[name] = (code, log_file.read_text(errors="replace"))
    return outcome


def http_get_health(address: str, ca: Path | None) -> int:
    """GET /health on the SuperLink port, over TLS checked against ``ca``, or in plaintext when ``ca`` is None."""
    host, port = address.rsplit(":", 1)
    conn = (http.client.HTTPSConnection(host, int(port), timeout=60, context=ssl.create_default_context(cafile=ca))
            if ca else http.client.HTTPConnection(host, int(port), timeout=60))
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 35 s idle; a loaded 2-core CI machine can take several times that
def test_two_supernodes_train_a_sensible_model_and_no_intruder_joins(
        tmp_path: Path, hie: dict[str, np.ndarray], tls: TlsFiles) -> None:
    plan = dataclasses.replace(PLAN, rounds=2)
    parts = site_partitions(plan, hie, ("1", "4"))
    # one holder handed over as the file the sandbox writes for it, one in memory
    save_partition(tmp_path / "holder-4.npz", parts["4"])
    inputs: dict[str, Partition | Path] = {"1": parts["1"], "4": tmp_path / "holder-4.npz"}
    reports: list[RoundReport] = []
    # Start-up and connection limits well above the defaults (60 s each): they only matter when something hangs.
    backend = DeploymentBackend(tls=tls, timing=Timing(round_timeout=120.0, connect_timeout=240.0, poll_interval=0.2),
                                startup_timeout=240.0)
    intrusions: dict[str, tuple[int | None, str]] = {}
    health: dict[str, object] = {}

    def on_round(report: RoundReport) -> None:
        reports.append(report)
        if report.round == 1:  # the SuperLink is up and the run goes on: try to get in
            assert backend.address is not None
            (tmp_path / "intruder").mkdir()
            intrusions.update(try_to_intrude(backend.address, tls, tmp_path / "intruder"))
            health["tls"] = http_get_health(backend.address, tls.ca)
            try:
                health["plaintext"] = http_get_health(backend.address, None)
            except (OSError, http.client.HTTPException) as exc:
                health["plaintext"] = exc

    started = time.monotonic()
    result = backend.run(plan, inputs, on_round=on_round, should_stop=lambda: False)
    total = time.monotonic() - started
    print(f"\ndeployment: startup {backend.last_startup_seconds:.1f} s, rounds "
          f"{', '.join(f'{r.seconds:.1f}' for r in reports)} s, total {total:.1f} s")
    assert [r.round for r in reports] == [1, 2] and list(result.history) == reports
    assert all(r.participants == ("1", "4") and r.failed == () and r.aggregated for r in reports)
    # Every intruder was refused at the door: it exited (status 1) logging Flower's connection error, no node id.
    for name, (code, text) in intrusions.items():
        assert code == 1 and f"Exit Code: {ExitCode.SUPERNODE_CONNECTION_ERROR}" in text, (name, code, text[-2000:])
        assert "SuperNode ID" not in text, name
    assert "Failed to activate SuperNode" in intrusions["unregistered key"][1]
    assert "must be registered" in intrusions["no key"][1]
    # The port speaks only TLS: a client that trusts the CA is answered, a plaintext one is not.
    assert health["tls"] == 200
    assert isinstance(health["plaintext"], (OSError, http.client.HTTPException)), health["plaintext"]
    _, _, x_eval, y_eval = pooled(parts)
    final = evaluate(plan, list(result.params), x_eval, y_eval)
    assert result.final.accuracy == pytest.approx(final.accuracy, abs=1e-12)
    assert final.accuracy > 0.58
    assert result.plan_digest == plan.digest and result.dropped == ()
    assert live_descendants() == [], "a runtime process outlived the run"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_secure_aggregation_runs_on_the_deployment_runtime_and_matches_in_process(
        hie: dict[str, np.ndarray], tls: TlsFiles) -> None:
    """Flower's SecAgg+ between three SuperNode processes over TLS: every round sums the three masked updates,
    and the model equals the in-process run's (training is seeded per holder) to the quantisation's error."""
    plan = dataclasses.replace(PLAN, rounds=1, secure_aggregation=True, min_holders=3)
    parts = site_partitions(plan, hie, ("1", "2", "5"))
    reports: list[RoundReport] = []
    backend = DeploymentBackend(tls=tls, timing=Timing(round_timeout=120.0, connect_timeout=240.0, poll_interval=0.1),
                                startup_timeout=240.0)
    result = backend.run(plan, parts, on_round=reports.append, should_stop=lambda: False)
    print(f"\ndeployment, secure aggregation: rounds {', '.join(f'{r.seconds:.1f}' for r in reports)} s")
    assert [r.round for r in reports] == [1]
    assert all(r.participants == ("1", "2", "5") and r.failed == () and r.aggregated and r.note == ""
               for r in reports)
    local = InProcessBackend().run(plan, parts, on_round=lambda r: None, should_stop=lambda: False)
    assert all(np.allclose(a, b, atol=1e-3) for a, b in zip(result.params, local.params, strict=True))
    assert result.final.accuracy == pytest.approx(local.final.accuracy, abs=0.01)
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
            DeploymentBackend(insecure=True)._follow(PLAN, tmp_path, link, time.monotonic(), lambda r: None,
                                                     should_stop)
        assert info.value.rounds_completed == 0 and (tmp_path / "stop").exists()
    finally:
        link.kill()
        link.wait()


def test_holder_ids_must_be_safe_for_a_node_config() -> None:
    with pytest.raises(TypeError, match="holder ids"):
        DeploymentBackend(insecure=True).run(PLAN, {"a' b": Partition.of(np.zeros((2, 10)), np.zeros(2))},
                                on_round=lambda r: None, should_stop=lambda: False)


def test_the_backend_refuses_to_run_without_tls_unless_told_it_is_a_test(tmp_path: Path, tls: TlsFiles) -> None:
    with pytest.raises(ValueError, match="needs TLS files"):
        DeploymentBackend()
    with pytest.raises(ValueError, match="not both"):
        DeploymentBackend(tls=tls, insecure=True)
    with pytest.raises(ValueError, match="server key"):
        DeploymentBackend(tls=TlsFiles(tls.ca, tls.cert, tmp_path / "missing.key"))
    assert DeploymentBackend(tls=tls).tls == tls and DeploymentBackend(insecure=True).tls is None


def test_node_keys_are_private_and_in_the_format_flower_reads(tmp_path: Path) -> None:
    private, public = node_key_pair(tmp_path, "node-0")
    assert private.stat().st_mode & 0o777 == 0o600
    key = serialization.load_ssh_private_key(private.read_bytes(), None)  # what flower-supernode does
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    registered = try_load_public_key(public)  # what `flwr supernode register` does
    assert registered == key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)


def test_server_app_sends_nothing_to_a_node_not_registered_for_the_run(tmp_path: Path,
                                                                          hie: dict[str, np.ndarray]) -> None:
    """A node that claims a holder's id first (e.g. registered through Flower's open Control API) gets no work."""
    parts = site_partitions(PLAN, hie, ("2", "5"))
    configs = [{"holder-id": "2"}, {"holder-id": "2"}, {"holder-id": "5"}]  # the first node is the intruder
    for pinned in (False, True):
        work = tmp_path / str(pinned)
        work.mkdir()
        asked: list[int] = []

        def partition(ctx: Context) -> Partition:
            asked.append(ctx.node_id)
            return parts[str(ctx.node_config["holder-id"])]

        grid = LocalGrid(make_client_app(partition), configs)
        intruder, genuine = list(grid.get_node_ids())[0], list(grid.get_node_ids())[1:]
        spec = {"plan": PLAN.to_dict(), "holders": list(parts),
                "timing": {"round_timeout": 10.0, "connect_timeout": 0.0, "poll_interval": 0.01}}
        if pinned:
            spec["nodes"] = dict(zip(parts, genuine))
        (work / "run.json").write_text(json.dumps(spec))
        _ensure_task_identity()
        server_app.main(grid, Context(run_id=0, node_id=1, node_config={}, state=RecordDict(),
                                      run_config={"work-dir": str(work)}))
        events = _EventReader(work / "progress.jsonl").read()
        assert events[-1]["event"] == "done"
        # unpinned, the intruder takes holder 2's place (which shows the check below can fail); pinned, it never
        # hears from the ServerApp and both genuine nodes train
        assert (intruder in asked) is not pinned
        if pinned:
            assert set(asked) == set(genuine)


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
