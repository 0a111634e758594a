"""Every ``sandbox.v1`` request message, filled with arbitrary values and signed by a valid principal: no INTERNAL.

Finding 5 of the outside attack run was one out-of-range number (``after_seq`` >= 2**63) answered INTERNAL. This
property test generates every request message of every service from its descriptor (numbers at and beyond
their type's edges, NaN and infinities, unknown enum values, long and odd text and bytes, nested and repeated
fields), signs it with a principal that holds every role, sends it to a real server, and requires an answer or
a refusal with a status other than INTERNAL. Afterwards the server still serves. Examples are bounded and
derandomised so CI time stays small and a failure reproduces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import descriptor as d
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import AdminClient, InternalServerError, SandboxClientError, generate_key, public_key_of
from protos.sandbox.v1 import admin_pb2, applicant_pb2, audit_pb2, dp_pb2, fl_pb2, he_pb2, verify_pb2
from tests.conftest import DATA, SCHEMAS, start_sandbox

F = d.FieldDescriptor
_INTS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: d.FieldDescriptor) -> st.SearchStrategy:  # type: ignore[type-arg]
    if field.type in _INTS:
        lo, hi = _INTS[field.type]
        edges = [lo, hi, 0, 1, -1, 2**31, 2**53, 2**63 - 1, 2**63, 10**12]
        return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        special = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324, 1e-9]
        return st.one_of(st.sampled_from(special), st.floats(allow_nan=True, allow_infinity=True, width=64))
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return st.one_of(st.text(max_size=40), st.sampled_from(["", "*", "a" * 300, "age", "adult_census", "ID",
                                                                "g-" + "0" * 32, "p-" + "0" * 24, "../../etc"]))
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=96)
    if field.type == F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 40))
    raise AssertionError(f"unhandled field type {field.type}")


def message_strategy(desc: d.Descriptor, depth: int = 0) -> st.SearchStrategy:  # type: ignore[type-arg]
    cls = GetMessageClass(desc)
    fields: dict[str, st.SearchStrategy] = {}  # type: ignore[type-arg]
    for field in desc.fields:
        if field.type == F.TYPE_MESSAGE:
            if depth >= 3:
                continue
            one = message_strategy(field.message_type, depth + 1)
        else:
            one = _scalar(field)
        if field.is_repeated:
            fields[field.name] = st.lists(one, max_size=3)
        else:
            fields[field.name] = st.none() | one

    @st.composite
    def build(draw: st.DrawFn) -> object:
        msg = cls()
        for name, strategy in fields.items():
            value = draw(strategy)
            if value is None:
                continue
            field = desc.fields_by_name[name]
            target = getattr(msg, name)
            if field.is_repeated:
                if field.type == F.TYPE_MESSAGE:
                    for v in value:
                        target.add().CopyFrom(v)
                else:
                    target.extend(value)
            elif field.type == F.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return build()


SERVICES = [(f, name) for f, names in (
    (admin_pb2, ("AdminService", "StewardService")), (applicant_pb2, ("ApplicantService",)),
    (audit_pb2, ("AuditService",)), (dp_pb2, ("DpQueryService",)), (he_pb2, ("ModelService", "HeScoringService")), (fl_pb2, ("FlTrainingService",)),
    (verify_pb2, ("VerificationService",)))
    for name in names]
METHODS = [m for f, name in SERVICES for m in f.DESCRIPTOR.services_by_name[name].methods]


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, AdminClient]]:
    sbx = start_sandbox(tmp_path_factory.mktemp("fuzz"))
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    key = generate_key()
    admin.enrol(name="Fuzzer", organisation="Red team", roles=["admin", "applicant", "researcher", "auditor"],
                public_key=public_key_of(key))
    client = AdminClient(sbx.address, key=key, ca=sbx.ca, timeout=30)
    yield sbx, client
    client.close()
    admin.close()
    sbx.stop()


def test_every_request_method_is_fuzzed() -> None:
    """Every RPC of every service any sandbox.v1 proto module declares (read from the modules' descriptors, not
    from the list the fuzzer uses) is fuzzed."""
    import importlib
    import pkgutil

    from protos.sandbox import v1

    declared = set()
    for info in pkgutil.iter_modules(v1.__path__):
        if info.name.endswith("_pb2") and not info.name.endswith("_grpc"):
            module = importlib.import_module(f"protos.sandbox.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                declared |= {m.full_name for m in service.methods}
    assert len(declared) >= 30
    assert {m.full_name for m in METHODS} == declared


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_no_request_is_answered_internal(fuzzer, method: d.MethodDescriptor) -> None:  # type: ignore[no-untyped-def]
    sbx, client = fuzzer
    path = f"/{method.containing_service.full_name}/{method.name}"
    out_cls = GetMessageClass(method.output_type)
    t = client.transport

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(message_strategy(method.input_type), min_size=1, max_size=2))
    def run(requests: list) -> None:  # type: ignore[type-arg]
        try:
            if method.client_streaming:
                t.call_stream(path, requests, out_cls, timeout=30)
            elif method.server_streaming:
                for _ in t.call_server_stream(path, requests[0], out_cls, timeout=5):
                    break
            else:
                t.call(path, requests[0], out_cls, timeout=30)
        except InternalServerError as exc:
            raise AssertionError(f"{path} answered INTERNAL to {requests[0]!r}") from exc
        except SandboxClientError:
            pass  # refused with a status that says why: what a malformed request should get

    run()
    assert client.whoami().id == client.principal_id  # the server keeps serving
