"""Dependencies flow one way (ARCHITECTURE.md), and the generated code matches the protos."""

from __future__ import annotations

import ast
import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protos", "wire", "sandbox", "dp_engine", "he_engine", "fl_server", "clients")
#: Which of our packages each package may import.
ALLOWED = {
    "protos": {"protos"},
    "wire": {"wire"},
    "dp_engine": {"dp_engine"},
    "he_engine": {"he_engine"},
    "fl_server": {"fl_server"},
    "clients": {"clients", "protos", "wire"},
    "sandbox": {"sandbox", "protos", "wire", "dp_engine", "he_engine", "fl_server"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in a file, including ones inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def reverse_edges(root: Path) -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for target in sorted(imported_packages(path) - ALLOWED[package]):
                bad.append(f"{path.relative_to(root)} imports {target}")
    return bad


def test_no_reverse_import_edges() -> None:
    assert reverse_edges(ROOT) == []


def test_the_checker_catches_a_reverse_edge(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "clients" / "leak.py").write_text("def f():\n    from sandbox.storage import Database\n")
    (tmp_path / "dp_engine" / "up.py").write_text("import he_engine\n")
    assert sorted(reverse_edges(tmp_path)) == ["clients/leak.py imports sandbox", "dp_engine/up.py imports he_engine"]


#: The only modules that may import gRPC, protobuf or the generated ``*_pb2`` code: the wire boundary. Everything
#: else in ``sandbox/`` works with domain types (``sandbox.domain``, ``sandbox.compute_io``).
RPC_BOUNDARY = {
    "sandbox": {
        "server.py",  # the gRPC server, health and reflection
        "interceptor.py",  # authentication, audit and error translation around every RPC
        "servicers.py",  # request message -> domain call -> response message
        "serde.py",  # the conversions themselves
        "describe.py",  # what was asked, from the request message, for its audit entry
    },
    "clients": {
        "serde.py",  # the conversions (a Query, a schema file's DatasetSchema, the HE messages <-> protobuf)
        "client.py", "transport.py",  # the calls
        "errors.py",  # grpc.RpcError -> typed SDK exception
    },
}


def _rpc_imports(path: Path) -> list[str]:
    """Imports of gRPC (grpc, grpc_health, ...), protobuf, the generated ``protos`` package or any ``*_pb2`` module."""
    def rpc(name: str) -> bool:
        parts = name.split(".")
        return (parts[0].startswith("grpc") or parts[0] == "protos" or name.startswith("google.protobuf")
                or any(p.endswith(("_pb2", "_pb2_grpc")) for p in parts))

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if rpc(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if rpc(node.module) or rpc(alias.name)]
    return found


def rpc_outside_boundary(root: Path) -> list[str]:
    bad = []
    for package, allowed in RPC_BOUNDARY.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root / package).as_posix()
            if rel not in allowed:
                bad += [f"{package}/{rel} imports {name}" for name in _rpc_imports(path)]
    return bad


def test_grpc_and_protobuf_stay_in_the_boundary_modules() -> None:
    assert rpc_outside_boundary(ROOT) == []
    for package, allowed in RPC_BOUNDARY.items():  # the list names real files (a rename must update it)
        assert {p for p in allowed if not (ROOT / package / p).exists()} == set(), package


def test_the_boundary_checker_catches_protobuf_in_a_compute_module(tmp_path: Path) -> None:
    for package in RPC_BOUNDARY:
        (tmp_path / package).mkdir()
    (tmp_path / "sandbox" / "dp_queries.py").write_text(
        "from protos.sandbox.v1 import dp_pb2\ndef f():\n    import grpc\n")
    (tmp_path / "sandbox" / "fl_jobs.py").write_text("from google.protobuf.message import Message\n")
    (tmp_path / "sandbox" / "nested").mkdir()
    (tmp_path / "sandbox" / "nested" / "x.py").write_text("import grpc_health.v1.health_pb2 as h\n")
    (tmp_path / "sandbox" / "servicers.py").write_text("import grpc\nfrom protos.sandbox.v1 import dp_pb2\n")
    (tmp_path / "clients" / "cli.py").write_text("from protos.sandbox.v1.dp_pb2 import DpQuery\n")
    (tmp_path / "clients" / "transport.py").write_text("import grpc\n")
    assert rpc_outside_boundary(tmp_path) == [
        "sandbox/dp_queries.py imports protos.sandbox.v1.dp_pb2",
        "sandbox/dp_queries.py imports grpc",
        "sandbox/fl_jobs.py imports google.protobuf.message.Message",
        "sandbox/nested/x.py imports grpc_health.v1.health_pb2",
        "clients/cli.py imports protos.sandbox.v1.dp_pb2.DpQuery",
    ]


def test_generated_protos_have_no_drift(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)], check=True,
                   capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.suffix in (".py", ".pyi"))
    assert generated, "protoc produced nothing"
    checked_in = sorted(p.relative_to(ROOT) for p in (ROOT / "protos" / "sandbox" / "v1").glob("*_pb2*"))
    assert generated == checked_in, "generated files differ from those checked in: run `make protos`"
    drifted = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert drifted == [], f"run `make protos`: {drifted}"


def test_drift_check_detects_an_edited_proto(tmp_path: Path) -> None:
    """Regenerating from a changed .proto gives different code: the drift test can fail."""
    import shutil

    fake = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", fake / "protos")
    shutil.copytree(ROOT / "scripts", fake / "scripts")
    proto = fake / "protos" / "sandbox" / "v1" / "audit.proto"
    proto.write_text(proto.read_text().replace("bool more = 2;", "bool more = 2;\n  uint32 extra = 99;"))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([sys.executable, str(fake / "scripts" / "gen_protos.py"), str(out)], check=True,
                   capture_output=True)
    rel = Path("protos/sandbox/v1/audit_pb2.py")
    assert not filecmp.cmp(out / rel, ROOT / rel, shallow=False)


#: What importing each package must not load: the engines are pure libraries (no gRPC, no SQLite), and the SDK
#: never loads the server.
MUST_NOT_LOAD = {
    "dp_engine": ("grpc", "sqlite3", "sandbox", "clients", "tenseal", "flwr"),
    "he_engine": ("grpc", "sqlite3", "sandbox", "clients", "tenseal", "flwr"),  # TenSEAL only inside workers
    "fl_server": ("sqlite3", "sandbox", "clients", "tenseal", "dp_engine", "he_engine"),
    # (pymerkle's package imports its own SQLite backend, so the SDK and wire load sqlite3 but never the server)
    "clients": ("sandbox", "dp_engine", "he_engine", "fl_server"),
    "wire": ("grpc", "sandbox", "clients", "protos", "dp_engine", "he_engine", "fl_server"),
}


@pytest.mark.parametrize("package", sorted(MUST_NOT_LOAD))
def test_importing_a_package_loads_nothing_it_must_not(package: str) -> None:
    code = (f"import sys; import {package}; "
            f"print(','.join(m for m in {MUST_NOT_LOAD[package]!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"importing {package} loaded {out.stdout.strip()}"


def _fields(message, seen=None):  # type: ignore[no-untyped-def]
    """Every field of a message descriptor, nested messages included (each message type once)."""
    seen = set() if seen is None else seen
    if message.full_name in seen:
        return
    seen.add(message.full_name)
    for f in message.fields:
        yield f
        if f.message_type is not None:
            yield from _fields(f.message_type, seen)


def test_no_rpc_takes_decrypted_scores_or_a_plan_to_interpret() -> None:
    """At the protocol level: HE scoring requests carry no plaintext number at all (CKKS must never see decrypted
    results come back), and DP requests carry no bytes and no field that could hold SQL or a serialised plan."""
    from google.protobuf.descriptor import FieldDescriptor as F

    from protos.sandbox.v1 import dp_pb2, he_pb2

    he = he_pb2.DESCRIPTOR.services_by_name["HeScoringService"]
    assert len(list(he.methods)) >= 3
    for method in he.methods:
        numbers = [f.full_name for f in _fields(method.input_type) if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT)]
        assert numbers == [], (method.name, numbers)
    dp = dp_pb2.DESCRIPTOR.services_by_name["DpQueryService"]
    for method in dp.methods:
        for f in _fields(method.input_type):
            assert f.type != F.TYPE_BYTES, (method.name, f.full_name)
            assert not any(word in f.name.lower() for word in ("sql", "plan", "expr", "pickle", "code")), f.full_name
