"""One error catalogue on the server; every status it can send maps to a specific SDK exception."""

from __future__ import annotations

import grpc
import pytest

import clients
from clients import errors as client_errors
from protos.sandbox.v1 import admin_pb2, applicant_pb2, audit_pb2, dp_pb2, fl_pb2, he_pb2  # noqa: F401
from sandbox.errors import CATALOGUE, ErrorCode, SandboxError
from sandbox.servicers import METHOD_ROLES


def test_every_code_is_in_the_catalogue() -> None:
    assert set(CATALOGUE) == set(ErrorCode)


def test_public_messages_are_plain() -> None:
    for code, (status, message) in CATALOGUE.items():
        assert message and "\n" not in message and "/" not in message and "SELECT" not in message.upper(), code
        assert status is not grpc.StatusCode.OK


def test_every_server_status_maps_to_a_specific_sdk_exception() -> None:
    for code, (status, _) in CATALOGUE.items():
        cls = client_errors.STATUS_TO_ERROR.get(grpc.StatusCode[status])
        assert cls is not None and cls is not client_errors.SandboxClientError, f"{code}: {status} unmapped"


class FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode, details: str, code: str) -> None:
        self._s, self._d, self._c = status, details, code

    def code(self) -> grpc.StatusCode:
        return self._s

    def details(self) -> str:
        return self._d

    def trailing_metadata(self):  # type: ignore[no-untyped-def]
        return ((client_errors.ERROR_TRAILER, self._c),)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_sdk_translation_keeps_status_and_code(code: ErrorCode) -> None:
    err = SandboxError(code, "detail")
    status = grpc.StatusCode[err.status]  # what the boundary answers with
    translated = client_errors.from_rpc_error(FakeRpcError(status, err.public_message, code.value))
    assert translated.status == err.status and translated.code == code.value
    assert translated.message == err.public_message
    assert isinstance(translated, client_errors.STATUS_TO_ERROR[status])


def test_unknown_status_still_typed() -> None:
    e = client_errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNKNOWN, "x", ""))
    assert type(e) is client_errors.SandboxClientError and not isinstance(e, grpc.RpcError)


def _all_pb2() -> list[object]:
    import importlib
    import pkgutil

    import protos.sandbox.v1 as v1

    return [importlib.import_module(f"protos.sandbox.v1.{m.name}") for m in pkgutil.iter_modules(v1.__path__)
            if m.name.endswith("_pb2")]


def test_every_rpc_has_a_role_rule() -> None:
    methods = {
        f"/{service.full_name}/{m.name}"
        for module in _all_pb2()  # every generated module, so a new service cannot be missed
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    assert methods == set(METHOD_ROLES)


def test_public_api_is_declared() -> None:
    assert sorted(clients.__all__) == sorted(set(clients.__all__))
    for name in clients.__all__:
        assert hasattr(clients, name), name
    public = {n for n in dir(clients) if not n.startswith("_")} - {
        "client", "errors", "serde", "signing", "transport", "types", "schema_file", "cli", "cli_admin", "cli_query",
        "cli_score", "cli_train", "cli_steward", "cli_env", "cli_json", "cli_console", "cli_verify", "console", "query", "he", "witness", "verify"}
    assert public <= set(clients.__all__), public - set(clients.__all__)
