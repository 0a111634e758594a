"""A department's own SuperNode: its ClientApp prepares the partition from the department's raw CSV rows with the
plan each message carries, exactly as the sandbox prepares the same rows; and the settings that admit such nodes.

The full run over real processes (the sandbox's SuperLink, two department SuperNodes) is in
tests/integration/test_fl_deployment_integration.py.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.app import ConfigRecord, Context, RecordDict

import fl_server
from clients.schema_file import load_schema_file
from clients.serde import schema_to_pb as sdk_schema_to_pb
from fl_server import Feature, Label, TrainingPlan, partition_from_csv
from fl_server.app import client_app, server_app
from fl_server.deployment import DeploymentBackend
from fl_server.errors import TrainingError
from fl_server.inprocess import LocalGrid, _ensure_task_identity
from fl_server.runtime import TlsFiles, certificate_names, node_key_pair
from sandbox import catalogue, serde
from sandbox.config import default_file, load_config
from sandbox.datadir import catalogue_secret, init_data_dir
from sandbox.columns import ArrayCache
from sandbox.fl_jobs import JobManager, backend_for
from sandbox.state.sqlite import SqliteState as Database
from tests.conftest import DATA, SCHEMAS

#: Numeric features with public bounds, a categorical one ("plan", 19 declared codes) and imputation.
PLAN = TrainingPlan(
    features=(Feature("xage", 0, 70), Feature("female", 0, 1), Feature("educdec", 0, 25, impute=12.0),
              Feature("coins", 0, 100), Feature("plan", categories=tuple(str(i) for i in range(1, 20)))),
    label=Label("meddol", 35.0), model="logistic", rounds=2, local_epochs=1, learning_rate=0.5, batch_size=32,
    seed=1234)


def site_csv(path: Path, site: str) -> Path:
    """The rows of one RAND site, as the department would hold them: the dataset's header, its raw text."""
    with gzip.open(DATA / "rand_hie.csv.gz", "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [r for r in reader if r[header.index("site")] == site]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobManager, object]:
    """rand_hie imported into a data directory the way the sandbox imports it; the job manager over it."""
    config = init_data_dir(tmp_path_factory.mktemp("sbx") / "city").config
    data_dir = config.data_dir
    db = Database(data_dir / "sandbox.db")
    schema = serde.schema_from_pb(sdk_schema_to_pb(load_schema_file(SCHEMAS / "rand_hie.toml")))
    report = catalogue.import_csv(db, data_dir / "datasets", schema, (DATA / "rand_hie.csv.gz").read_bytes(), imported_by="test",
                                  version_key=catalogue_secret(config.catalogue_key),
                                  count_epsilon=config.catalogue_count_epsilon, now_ms=int(time.time() * 1000))
    assert report.rejected_count == 0 and report.duplicates_dropped == 0  # so the CSV rows are the imported rows
    with db.read() as conn:
        info = catalogue.get_dataset(conn, "rand_hie")
    return JobManager(db, ArrayCache(data_dir / "datasets")), info


def assert_same(a: fl_server.Partition, b: fl_server.Partition) -> None:
    for name in ("x", "y", "x_eval", "y_eval"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("site", ["1", "4"])
def test_a_department_csv_gives_the_partition_the_sandbox_prepares(tmp_path: Path, imported, site: str) -> None:
    jobs, info = imported
    sandbox_parts = jobs._partitions(PLAN, info, "site")
    mine = partition_from_csv(PLAN, site_csv(tmp_path / f"site-{site}.csv", site), holder=f"site-{site}",
                              person_key="zper")
    assert mine.x.shape[1] == PLAN.n_inputs and mine.x_eval.shape[0] > 0
    assert_same(mine, sandbox_parts[f"site-{site}"])


def test_a_gzipped_csv_with_columns_in_another_order_reads_alike(tmp_path: Path) -> None:
    plain = site_csv(tmp_path / "s.csv", "2")
    rows = list(csv.reader(plain.open(newline="")))
    order = list(reversed(range(len(rows[0]))))
    buf = io.StringIO()
    csv.writer(buf).writerows([[r[i] for i in order] for r in rows])
    zipped = tmp_path / "s.csv.gz"
    zipped.write_bytes(gzip.compress(buf.getvalue().encode()))
    assert_same(partition_from_csv(PLAN, zipped, holder="site-2", person_key="zper"),
                partition_from_csv(PLAN, plain, holder="site-2", person_key="zper"))


def test_csv_errors_name_the_line_and_column_never_the_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("xage,female,educdec,coins,plan,meddol,zper\n40,1,12,25,3,10.5,7\n41,0,,25,secret-99,3,8\n")
    with pytest.raises(ValueError, match=r"line 3, column 'plan': not one of the plan's categories") as info:
        partition_from_csv(PLAN, bad, holder="a", person_key="zper")
    assert "secret" not in str(info.value)
    bad.write_text("xage,female,educdec,coins,plan,meddol,zper\n40,1,12,25,3,10.5,7\n4x1,0,,25,3,3,8\n")
    with pytest.raises(ValueError, match=r"line 3, column 'xage': not a finite number"):
        partition_from_csv(PLAN, bad, holder="a", person_key="zper")
    bad.write_text("xage,female,coins\n40,1,25\n")
    with pytest.raises(ValueError, match="lacks the plan's column"):
        partition_from_csv(PLAN, bad, holder="a")


def run_server_app(work: Path, configs: list[dict[str, str]], person_key: str) -> list[dict[str, object]]:
    """The deployment ServerApp over an in-process grid of the real ClientApp (``fl_server.app.client_app``)."""
    work.mkdir()
    spec = {"plan": PLAN.to_dict(), "holders": [c["holder-id"] for c in configs],
            "timing": {"round_timeout": 60.0, "connect_timeout": 0.0, "poll_interval": 0.01}}
    if person_key:
        spec["person_key"] = person_key
    (work / "run.json").write_text(json.dumps(spec))
    _ensure_task_identity()
    grid = LocalGrid(client_app.app, configs)
    server_app.main(grid, Context(run_id=0, node_id=1, node_config={}, state=RecordDict(),
                                  run_config={"work-dir": str(work)}))
    return server_app_events(work)


def server_app_events(work: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]


def test_the_client_app_trains_on_csv_rows_as_on_the_sandboxs_partition_files(tmp_path: Path, imported) -> None:
    """Same plan, same rows: a model from nodes reading raw CSV equals the one from the sandbox's .npz files."""
    jobs, info = imported
    parts = jobs._partitions(PLAN, info, "site")
    cache = tmp_path / "cache"
    csv_nodes, npz_nodes = [], []
    for site in ("3", "5"):
        name = f"site-{site}"
        csv_nodes.append({"holder-id": name, "data-path": str(site_csv(tmp_path / f"{name}.csv", site)),
                          "cache-dir": str(cache)})
        fl_server.save_partition(tmp_path / f"{name}.npz", parts[name])
        npz_nodes.append({"holder-id": name, "data-path": str(tmp_path / f"{name}.npz")})
    from_csv = run_server_app(tmp_path / "csv", csv_nodes, "zper")
    from_npz = run_server_app(tmp_path / "npz", npz_nodes, "zper")
    assert from_csv[-1]["event"] == "done" and from_npz[-1]["event"] == "done", from_csv[-1]
    with np.load(tmp_path / "csv" / "result.npz") as a, np.load(tmp_path / "npz" / "result.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    # one prepared partition per holder and plan, private to this user
    assert cache.stat().st_mode & 0o777 == 0o700
    cached = sorted(cache.glob("*.npz"))
    assert len(cached) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in cached)
    # without the person key the split differs (each row on its own): the node uses what the ServerApp sends
    no_key = client_app._load(Context(run_id=0, node_id=1, node_config=csv_nodes[0], state=RecordDict(),
                                      run_config={}), PLAN, ConfigRecord({}))
    assert not np.array_equal(no_key.y_eval, parts["site-3"].y_eval)


def test_the_client_app_does_not_use_a_cache_directory_others_can_read(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    node = {"holder-id": "site-6", "data-path": str(site_csv(tmp_path / "s.csv", "6")), "cache-dir": str(shared)}
    part = client_app._load(Context(run_id=0, node_id=1, node_config=node, state=RecordDict(), run_config={}),
                            PLAN, ConfigRecord({"person-key": "zper"}))
    assert part.x.shape[0] > 0 and list(shared.iterdir()) == []


# -- settings -----------------------------------------------------------------------------------------------------


def test_external_node_settings_are_checked_and_documented(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path / "city").config.data_dir
    cfg = load_config(data_dir, environ={})
    assert (cfg.fl_nodes, cfg.fl_superlink_host, cfg.fl_superlink_port) == ("local", "127.0.0.1", 9092)
    assert cfg.fl_cert == data_dir / "tls" / "server.pem" and cfg.fl_keys_dir == data_dir / "fl-node-keys"
    for flags, message in (({"fl_nodes": "remote"}, "fl_nodes: expected local or external"),
                           ({"fl_nodes": "external"}, 'needs fl_backend = "deployment"'),
                           ({"fl_superlink_port": 70000}, "fl_superlink_port"),
                           ({"fl_tls_cert": "/x.pem"}, "give both or neither")):
        with pytest.raises(ValueError, match=message):
            load_config(data_dir, flags=flags, environ={})
    text = default_file()
    for name in ("fl_nodes", "fl_superlink_host", "fl_superlink_port", "fl_tls_cert", "fl_tls_key",
                 "fl_node_keys_dir"):
        assert f"\n{name} = " in text
    # local nodes stay the default of the deployment backend
    local = backend_for(load_config(data_dir, flags={"fl_backend": "deployment"}, environ={}))
    assert isinstance(local, DeploymentBackend) and not local.external


def test_external_nodes_backend_from_the_settings(tmp_path: Path) -> None:
    data_dir = init_data_dir(tmp_path / "city").config.data_dir
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    backend = backend_for(load_config(data_dir, flags={
        "fl_backend": "deployment", "fl_nodes": "external", "fl_superlink_host": "localhost",
        "fl_superlink_port": 19092, "fl_node_keys_dir": str(keys)}, environ={}))
    assert isinstance(backend, DeploymentBackend) and backend.external
    assert (backend.host, backend.port, backend.node_keys_dir) == ("localhost", 19092, keys.resolve())
    # the data directory's certificate names localhost and 127.0.0.1 only
    assert certificate_names(data_dir / "tls" / "server.pem", "127.0.0.1")
    assert not certificate_names(data_dir / "tls" / "server.pem", "sandbox.city.example")
    with pytest.raises(ValueError, match="does not name the SuperLink host sandbox.city.example"):
        backend_for(load_config(data_dir, flags={"fl_backend": "deployment", "fl_nodes": "external",
                                                 "fl_superlink_host": "sandbox.city.example"}, environ={}))


def test_the_node_key_directory_decides_who_may_join(tmp_path: Path) -> None:
    tls = tmp_path / "city"
    data_dir = init_data_dir(tls).config.data_dir
    files = TlsFiles(data_dir / "tls" / "ca.pem", data_dir / "tls" / "server.pem", data_dir / "tls" / "server.key")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    backend = DeploymentBackend(tls=files, port=19093, node_keys_dir=keys)
    node_key_pair(keys, "site-1")
    node_key_pair(keys, "site-2")
    (keys / "site-1.key").unlink()  # the administrator holds public keys only
    assert backend.node_keys(["site-1", "site-2", "site-3"]) == {"site-1": keys / "site-1.pub",
                                                                 "site-2": keys / "site-2.pub"}
    # a plan that needs more holders than have keys fails before anything starts
    plan = TrainingPlan(features=PLAN.features, label=PLAN.label, min_holders=3, clients_per_round=3)
    with pytest.raises(TrainingError, match="only 2 of the 3 data holders have a node key; the plan needs 3"):
        backend.run(plan, dict.fromkeys(["site-1", "site-2", "site-3"]), on_round=lambda r: None,
                    should_stop=lambda: False)
    secure = dataclasses.replace(plan, secure_aggregation=True)  # the default with three holders: say why
    with pytest.raises(TrainingError, match=r"the plan needs 3 \(secure aggregation needs 3 a round; without it, "
                                            r"2 suffice\)"):
        backend.run(secure, dict.fromkeys(["site-1", "site-2", "site-3"]), on_round=lambda r: None,
                    should_stop=lambda: False)
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    (keys / "site-3.pub").write_bytes(other.public_bytes(serialization.Encoding.OpenSSH,
                                                          serialization.PublicFormat.OpenSSH))
    with pytest.raises(TrainingError, match="node key of site-3 is not an ECDSA key"):
        backend.node_keys(["site-3"])
    (keys / "site-3.pub").write_text("not a key\n")
    with pytest.raises(TrainingError, match="not an OpenSSH public key"):
        backend.node_keys(["site-3"])
    keys.chmod(0o770)  # someone else could add a key
    with pytest.raises(TrainingError, match="writable by no one else"):
        backend.node_keys(["site-1"])
    keys.chmod(0o700)
    with pytest.raises(ValueError, match="fixed SuperLink port"):
        DeploymentBackend(tls=files, node_keys_dir=keys)
    with pytest.raises(ValueError, match="need TLS"):
        DeploymentBackend(insecure=True, port=19093, node_keys_dir=keys)


def test_one_external_job_at_a_time_and_never_on_a_port_someone_else_holds(tmp_path: Path) -> None:
    """The departments know one port: a second job, or a listener already there, fails before anything starts."""
    import socket

    data_dir = init_data_dir(tmp_path / "city").config.data_dir
    files = TlsFiles(data_dir / "tls" / "ca.pem", data_dir / "tls" / "server.pem", data_dir / "tls" / "server.key")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for holder in ("site-1", "site-2"):
        node_key_pair(keys, holder)
    holders = dict.fromkeys(["site-1", "site-2"])
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        backend = DeploymentBackend(tls=files, port=other.getsockname()[1], node_keys_dir=keys)
        with pytest.raises(TrainingError, match="is in use"):
            backend.run(PLAN, holders, on_round=lambda r: None, should_stop=lambda: False)
    with backend._external_lock:  # as while another job runs
        with pytest.raises(TrainingError, match="another training job is using the SuperLink"):
            backend.run(PLAN, holders, on_round=lambda r: None, should_stop=lambda: False)
